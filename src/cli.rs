//! The `sluice` command line: run, validate, test, explain, setup, demo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::config::{self, Diagnostics, PipelineSpec};
use std::sync::Arc;

use crate::pipeline::runner::{self, RunControl, RunReport};
use crate::pipeline::valve::Valves;
use crate::pipeline::{self, Graph, build::Overrides, build::Services};
use crate::telemetry::logging;
use crate::telemetry::metrics::PipelineMetrics;
use tracing::Level;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "A Dataflow-style stream processor: Beam YAML pipelines on Arrow batches"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline.
    Run {
        pipeline: PathBuf,
        /// Template variable KEY=VALUE (repeatable).
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Streaming sources end after no message arrived for this long (e.g. 30s).
        #[arg(long, value_parser = config::duration::parse_duration)]
        until_idle: Option<Duration>,
        /// Serve health, readiness and metrics on ADDR.
        #[arg(long)]
        http: Option<String>,
    },
    /// Check pipelines; print every problem as file:line:col.
    Validate {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Run the `tests:` section of pipelines.
    Test {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Print the resolved graph: windowing, what each source reads and each sink writes,
    /// valves, gates and the state backend.
    Explain {
        pipeline: PathBuf,
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// `text`, or `mermaid` for a Mermaid flowchart of the graph.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
    /// Create the topics, subscriptions and tables a pipeline declares.
    Setup {
        pipeline: PathBuf,
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
    },
    /// Run the embedded quickstart on shipped sample data.
    Demo {
        /// Where to write the demo's files.
        #[arg(long, default_value = "sluice-demo")]
        out: PathBuf,
    },
}

/// The output of `sluice explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    Text,
    Mermaid,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

/// Exit codes of the contract.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;

fn load(path: &Path, vars: &[(String, String)]) -> Result<(PipelineSpec, Graph), Diagnostics> {
    let vars: BTreeMap<String, String> = vars.iter().cloned().collect();
    pipeline::load_and_validate(path, &vars)
}

pub async fn main(cli: Cli) -> u8 {
    match cli.command {
        Command::Validate { pipelines, vars } => {
            let mut code = EXIT_OK;
            for p in &pipelines {
                match load(p, &vars) {
                    Ok((spec, graph)) => {
                        println!("{}: valid", p.display());
                        for h in pipeline::check::hints(&spec, &graph) {
                            eprintln!("{h}");
                        }
                    }
                    Err(d) => {
                        eprintln!("{d}");
                        code = EXIT_INVALID;
                    }
                }
            }
            code
        }
        Command::Explain {
            pipeline,
            vars,
            format,
        } => match load(&pipeline, &vars) {
            Ok((spec, graph)) => {
                match format {
                    ExplainFormat::Text => print!("{}", crate::explain::text(&spec, &graph)),
                    ExplainFormat::Mermaid => print!("{}", crate::explain::mermaid(&spec, &graph)),
                }
                EXIT_OK
            }
            Err(d) => {
                eprintln!("{d}");
                EXIT_INVALID
            }
        },
        Command::Test { pipelines, vars } => test(&pipelines, &vars).await,
        Command::Run {
            pipeline,
            vars,
            until_idle,
            http,
        } => {
            let json = logging::json_format();
            let (spec, graph) = match load(&pipeline, &vars) {
                Ok(x) => x,
                Err(d) if json => {
                    logging::write_entry(&Level::ERROR, &d.to_string(), Default::default());
                    return EXIT_INVALID;
                }
                Err(d) => {
                    eprintln!("{d}");
                    return EXIT_INVALID;
                }
            };
            match run(&spec, &graph, until_idle, http.as_deref()).await {
                Ok(report) if json => {
                    for (level, message, fields) in summary_entries(&report) {
                        logging::write_entry(&level, &message, fields);
                    }
                    EXIT_OK
                }
                Ok(report) => {
                    eprint!("{}", summary(&report));
                    EXIT_OK
                }
                Err(e) if json => {
                    let mut fields = serde_json::Map::new();
                    fields.insert("error".into(), e.to_string().into());
                    if let Some(pos) = config_position(&spec, &e) {
                        fields.insert("file".into(), spec.file.clone().into());
                        fields.insert("line".into(), pos.line.into());
                        fields.insert("column".into(), pos.col.into());
                    }
                    logging::write_entry(&Level::ERROR, "Pipeline failed", fields);
                    EXIT_FAILED
                }
                Err(e) => {
                    // An ERROR log line for log collectors, and the plain line for a terminal.
                    tracing::error!(error = %e, "Pipeline failed");
                    eprintln!("sluice: pipeline failed: {}", located(&spec, &e));
                    EXIT_FAILED
                }
            }
        }
        Command::Setup { pipeline, vars } => match load(&pipeline, &vars) {
            Ok((spec, _)) => setup(&pipeline, &spec).await,
            Err(d) => {
                eprintln!("{d}");
                EXIT_INVALID
            }
        },
        Command::Demo { out } => crate::demo::run(&out).await,
    }
}

/// Where in the pipeline file a run-time problem of the definition is: the expression's
/// position when the error carries one, else the transform's.
pub fn config_position(
    spec: &PipelineSpec,
    e: &pipeline::EngineError,
) -> Option<crate::config::Pos> {
    let (transform, at) = e.config_location()?;
    at.or_else(|| spec.transform(transform).map(|t| t.pos))
        .filter(|p| p.line > 0)
}

/// The error as `file:line:col: transform: message` when it is a problem of the definition.
pub fn located(spec: &PipelineSpec, e: &pipeline::EngineError) -> String {
    match config_position(spec, e) {
        Some(pos) => format!("{}:{}:{}: {e}", spec.file, pos.line, pos.col),
        None => e.to_string(),
    }
}

/// `sluice setup`: creates the Pub/Sub topics and subscriptions the pipeline declares.
async fn setup(path: &Path, spec: &PipelineSpec) -> u8 {
    use crate::pubsub::setup;
    let conn = crate::pubsub::Connection::from_env();
    let resources = match setup::declared(spec, &conn) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return EXIT_INVALID;
        }
    };
    if resources.is_empty() {
        println!(
            "{}: declares no Pub/Sub resources; nothing to create",
            path.display()
        );
        return EXIT_OK;
    }
    match setup::create(&conn, &resources).await {
        Ok(done) => {
            for (name, outcome) in done {
                match outcome {
                    setup::Outcome::Created => println!("created {name}"),
                    setup::Outcome::Exists => println!("exists  {name}"),
                }
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("sluice: setup failed: {e}");
            EXIT_FAILED
        }
    }
}

/// Runs a pipeline until its sources end; SIGINT/SIGTERM ask sources to stop and drain. With
/// `until_idle`, streaming sources end after no message arrived for that long, then every window
/// fires and the outputs are flushed. With `http`, serves the operations endpoints meanwhile.
///
/// # Errors
/// The first stage failure, or an address that cannot be bound.
pub async fn run(
    spec: &PipelineSpec,
    graph: &Graph,
    until_idle: Option<Duration>,
    http: Option<&str>,
) -> Result<RunReport, pipeline::EngineError> {
    for h in pipeline::check::hints(spec, graph) {
        tracing::warn!(file = %h.file, line = h.pos.line, column = h.pos.col, hint = h.hint.as_deref().unwrap_or_default(), "{}", h.message);
    }
    // The bound `--http` address replaces this default once known (port 0, 0.0.0.0).
    let status_url = std::env::var("SLUICE_STATUS_URL").ok();
    let state = match spec.options.state.backend {
        crate::state::Backend::Memory => None,
        _ => Some(
            crate::state::open(&spec.options.state)
                .await
                .map_err(|e| pipeline::EngineError::config("options.state", e.to_string()))?,
        ),
    };
    let services = Services {
        valves: Arc::new(Valves::default()),
        alerter: crate::alerts::Alerter::start(status_url),
        state,
        failed: Arc::default(),
    };
    let valves = services.valves.clone();
    let built = pipeline::build::build(spec, graph, &Overrides::default(), &services)?;
    let alerter = services.alerter.clone();
    let monitors = crate::alerts::dead_letter::spawn_monitors(spec, graph, &built.stats, &alerter);
    let gates: Vec<String> = spec.options.gates.iter().map(|g| g.value.clone()).collect();
    for src in graph.sources() {
        valves.pause_source(src, &gates);
    }
    let metrics = Arc::new(PipelineMetrics {
        pipeline: spec.name.clone(),
        stages: graph
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .zip(built.stats.iter().cloned())
            .collect(),
        checks: spec
            .transforms
            .iter()
            .filter(|t| matches!(t.config, config::TransformConfig::Check(_)))
            .map(|t| t.name.clone())
            .collect(),
        valves: valves.clone(),
        alerts: Some(alerter.clone()),
    });
    crate::telemetry::otel::export_metrics(&metrics);
    let status = crate::http::Status::new(metrics, graph);
    if let Some(addr) = http {
        let bound = crate::http::serve(addr, status.clone())
            .await
            .map_err(|e| {
                pipeline::EngineError::config("--http", format!("cannot listen on {addr}: {e}"))
            })?;
        tracing::info!(address = %bound, "Serving /healthz, /readyz, /metrics and the status page");
        alerter.default_status_url(format!("http://{bound}/"));
    }
    let follower = control_topic(spec, &valves, gates).await?;
    let (tx, stop) = watch::channel(false);
    let on_signal = status.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stop requested; draining");
        on_signal.running.store(false, Ordering::Relaxed);
        let _ = tx.send(true);
    });
    // Replicas sharing the state store: one is active, the others stand by (docs/scaling.md).
    let lease = services
        .state
        .as_ref()
        .map(|store| crate::state::lease::Lease::new(store.clone(), &spec.name));
    if let Some(lease) = &lease
        && !lease.acquire(&status.standby, &mut stop.clone()).await
    {
        tracing::info!("Stopped while standing by");
        return Ok(RunReport {
            stats: graph
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .zip(built.stats)
                .collect(),
        });
    }
    status.running.store(true, Ordering::Relaxed);
    let control = RunControl::new(stop)
        .with_failed(services.failed.clone())
        .with_durable_state(services.state.is_some())
        .with_until_idle(until_idle)
        .with_valves(valves)
        .with_drain(
            spec.options.drain,
            Some(
                spec.options
                    .drain_timeout
                    .unwrap_or(config::spec::DEFAULT_DRAIN_TIMEOUT),
            ),
        );
    let failed = services.failed.clone();
    let run = runner::run(graph, built.stages, built.stats, control);
    let result = match &lease {
        None => run.await,
        Some(lease) => tokio::select! {
            result = run => result,
            why = lease.keep() => {
                // Another replica may be running already: nothing more is acknowledged here.
                failed.store(true, Ordering::SeqCst);
                Err(pipeline::EngineError::external(
                    "options.state",
                    format!("lost the pipeline's lease ({why}); stopping so that one replica is active"),
                    std::io::Error::other(why),
                ))
            }
        },
    };
    if let Some(lease) = &lease {
        lease.release().await;
    }
    status.running.store(false, Ordering::Relaxed);
    if let Some(f) = follower {
        f.close().await;
    }
    monitors.finish().await;
    result
}

/// `options.control_topic`: publishes this pipeline's valves there, and follows its gates.
async fn control_topic(
    spec: &PipelineSpec,
    valves: &Arc<Valves>,
    gates: Vec<String>,
) -> Result<Option<crate::pubsub::control::GateFollower>, pipeline::EngineError> {
    use crate::pubsub::control;
    let Some(topic) = &spec.options.control_topic else {
        return Ok(None);
    };
    let conn = crate::pubsub::Connection::from_env();
    let topic = conn
        .topic_path(&topic.value)
        .map_err(|e| pipeline::EngineError::config("options.control_topic", e.to_string()))?;
    if !valves.list().is_empty() {
        control::spawn_publisher(
            conn.clone(),
            topic.clone(),
            spec.name.clone(),
            valves.clone(),
        );
    }
    if gates.is_empty() {
        return Ok(None);
    }
    control::follow_gates(conn, topic.clone(), &spec.name, gates, valves.clone())
        .await
        .map(Some)
        .map_err(|e| {
            pipeline::EngineError::external(
                "options.gates",
                format!("cannot follow the control topic {topic}"),
                e,
            )
        })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn test(pipelines: &[PathBuf], vars: &[(String, String)]) -> u8 {
    let mut code = EXIT_OK;
    let (mut passed, mut failed) = (0, 0);
    for p in pipelines {
        let (spec, _) = match load(p, vars) {
            Ok(x) => x,
            Err(d) => {
                eprintln!("{d}");
                return EXIT_INVALID;
            }
        };
        if spec.tests.is_empty() {
            println!("{}: no tests", p.display());
            continue;
        }
        for outcome in crate::testing::run_tests(&spec).await {
            if outcome.passed() {
                passed += 1;
                println!("PASS {} :: {}", p.display(), outcome.name);
            } else {
                failed += 1;
                code = EXIT_FAILED;
                println!("FAIL {} :: {}", p.display(), outcome.name);
                for f in &outcome.failures {
                    println!("  {}", f.replace('\n', "\n  "));
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    code
}

/// [`summary`] as structured log entries (`SLUICE_LOG_FORMAT=json`): one INFO `Run summary`
/// with `stages` (`transform`, `rows_in`, `rows_out`, `errors`) and `outputs`, and one WARNING
/// per transform whose records failed without an error output, with `failed` and `examples`.
pub fn summary_entries(
    report: &RunReport,
) -> Vec<(Level, String, serde_json::Map<String, serde_json::Value>)> {
    use serde_json::{Map, Value, json};
    let mut stages = Vec::new();
    let mut outputs: Vec<Value> = Vec::new();
    let mut warnings = Vec::new();
    for (name, st) in &report.stats {
        let errors = st.errors.load(Ordering::Relaxed);
        stages.push(json!({
            "transform": name,
            "rows_in": st.rows_in.load(Ordering::Relaxed),
            "rows_out": st.rows_out.load(Ordering::Relaxed),
            "errors": errors,
        }));
        outputs.extend(
            st.outputs
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|o| Value::from(o.to_string())),
        );
        let ex = st.unhandled_examples.lock().expect("not poisoned");
        if !ex.is_empty() {
            let mut f = Map::new();
            f.insert("transform".into(), Value::from(name.clone()));
            f.insert("failed".into(), Value::from(errors));
            f.insert("examples".into(), Value::from(ex.clone()));
            warnings.push((
                Level::WARN,
                format!("{errors} records failed in `{name}`, which declares no error output"),
                f,
            ));
        }
    }
    let mut f = Map::new();
    f.insert("stages".into(), Value::from(stages));
    f.insert("outputs".into(), Value::from(outputs));
    let mut entries = vec![(Level::INFO, "Run summary".to_string(), f)];
    entries.extend(warnings);
    entries
}

/// The end-of-run report: rows per transform, errors, unhandled error examples, outputs.
pub fn summary(report: &RunReport) -> String {
    use std::fmt::Write;
    let mut s = String::from("transform                      rows in   rows out   errors\n");
    let mut outputs = Vec::new();
    let mut unhandled = Vec::new();
    for (name, st) in &report.stats {
        let _ = writeln!(
            s,
            "{:<28} {:>9} {:>10} {:>8}",
            name,
            st.rows_in.load(Ordering::Relaxed),
            st.rows_out.load(Ordering::Relaxed),
            st.errors.load(Ordering::Relaxed)
        );
        outputs.extend(st.outputs.lock().expect("not poisoned").clone());
        let ex = st.unhandled_examples.lock().expect("not poisoned");
        if !ex.is_empty() {
            unhandled.push((name.clone(), st.errors.load(Ordering::Relaxed), ex.clone()));
        }
    }
    for (name, count, examples) in unhandled {
        let _ = writeln!(
            s,
            "warning: {count} records failed in `{name}`, which declares no error output; examples:"
        );
        for e in examples {
            let _ = writeln!(s, "  {e}");
        }
    }
    for o in outputs {
        let _ = writeln!(s, "wrote {o}");
    }
    s
}
