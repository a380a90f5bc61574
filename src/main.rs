//! The `sluice` binary: logging set-up and the CLI; everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    sluice::telemetry::logging::init();
    let cli = sluice::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
