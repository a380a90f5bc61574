//! The `sluice` binary: logging set-up and the CLI; everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

/// Stack of each runtime worker: the main thread's 8 MiB rather than tokio's 2 MiB. Planning
/// and evaluating an expression recurse per level of its tree (up to
/// `expr::functions::MAX_EXPR_DEPTH`, 128); at 126 levels a debug build overflowed 2 MiB.
/// Untouched stack pages cost no memory.
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> ExitCode {
    sluice::telemetry::logging::init();
    let cli = sluice::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::from(sluice::cli::EXIT_FAILED);
        }
    };
    let code = runtime.block_on(sluice::cli::main(cli));
    drop(runtime);
    sluice::telemetry::otel::shutdown();
    ExitCode::from(code)
}
