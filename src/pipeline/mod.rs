//! The engine: the resolved graph, operators, and the runner that connects them with bounded
//! channels.

pub mod build;
pub mod check;
pub mod check_types;
pub mod graph;
pub mod operator;
pub mod runner;
mod sink_stage;
pub mod stats;
pub mod valve;

pub use graph::{Graph, Node};
pub use operator::{
    END_OF_TIME, EngineError, EventTime, Operator, Output, Receipts, Sink, Source, SourceSink,
    Written,
};

use crate::config::PipelineSpec;
use crate::config::diag::{Diagnostics, Reporter};

/// Resolves and checks `spec`: the graph if it is valid, else every problem found.
///
/// # Errors
/// All diagnostics, each with position and hint.
pub fn validate(spec: &PipelineSpec) -> Result<Graph, Diagnostics> {
    let mut rep = Reporter::new(spec.file.clone());
    let graph = check_into(spec, &mut rep);
    rep.finish(graph)
}

/// The graph and expression checks, reporting into `rep`.
pub fn check_into(spec: &PipelineSpec, rep: &mut Reporter) -> Graph {
    let graph = Graph::build(spec, rep);
    check::check_expressions(spec, rep);
    check::check_sql(spec, &graph, rep);
    check::check_deduplicate(spec, &graph, rep);
    check::check_shard_keys(spec, &graph, rep);
    check_types::check_keep(spec, &graph, rep);
    graph
}

/// Loads a file and runs every check, so one run reports all problems of the file.
///
/// # Errors
/// All diagnostics found.
pub fn load_and_validate(
    path: &std::path::Path,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<(PipelineSpec, Graph), Diagnostics> {
    let mut rep = Reporter::new(path.display().to_string());
    let spec = crate::config::spec::load_into(path, vars, &mut rep);
    let graph = check_into(&spec, &mut rep);
    rep.finish((spec, graph))
}

/// Builds and runs a validated pipeline.
///
/// # Errors
/// The first stage failure.
pub async fn execute(
    spec: &PipelineSpec,
    graph: &Graph,
    overrides: &build::Overrides,
    control: runner::RunControl,
) -> Result<(runner::RunReport, Vec<(String, build::Captured)>), EngineError> {
    let services = build::Services {
        valves: control.valves.clone(),
        ..build::Services::default()
    };
    execute_with(spec, graph, overrides, &services, control).await
}

/// [`execute`] with the run's services given (valves shared with the caller, an alerter).
///
/// # Errors
/// The first stage failure.
pub async fn execute_with(
    spec: &PipelineSpec,
    graph: &Graph,
    overrides: &build::Overrides,
    services: &build::Services,
    control: runner::RunControl,
) -> Result<(runner::RunReport, Vec<(String, build::Captured)>), EngineError> {
    let build::Built {
        stages,
        stats,
        captures,
    } = build::build(spec, graph, overrides, services)?;
    let control = control
        .with_valves(services.valves.clone())
        .with_failed(services.failed.clone())
        .with_durable_state(services.state.is_some());
    let report = runner::run(graph, stages, stats, control).await?;
    Ok((report, captures))
}
