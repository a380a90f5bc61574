//! Builds runnable stages from the parsed spec and the resolved graph: the one `match` from
//! transform config to implementation.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::graph::Graph;
use super::operator::{EngineError, ErrorRoute, StageStats};
use super::runner::Stage;
use super::valve::Valves;
use crate::alerts::Alerter;
use crate::config::{PipelineSpec, TransformConfig};
use crate::io;
use crate::sinks;
use crate::transforms;

/// Rows per batch produced by sources unless `options.batch_size` says otherwise (DataFusion's
/// default batch size: large enough to amortise per-batch overhead, small enough for caches).
pub const DEFAULT_BATCH_SIZE: usize = 8192;

/// Test-mode replacements (`sluice test`).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Transform name → rows that replace its output.
    pub mock_outputs: Vec<(String, Vec<Value>)>,
    /// Transforms whose input is captured instead of running them.
    pub capture_inputs: Vec<String>,
}

/// What stages share with the rest of a run: the valves, where alerts go.
#[derive(Clone)]
pub struct Services {
    pub valves: Arc<Valves>,
    pub alerter: Alerter,
    /// The state store of `options.state` (persistent backends only): Combine checkpoints there.
    pub state: Option<Arc<dyn crate::state::StateStore>>,
    /// The run's failure flag (shared with its `RunControl`): nothing is checkpointed or
    /// confirmed as written once it is set.
    pub failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Services {
    /// Fresh valves; alerts are recorded, not delivered (tests, `sluice test`).
    fn default() -> Self {
        Services {
            valves: Arc::default(),
            alerter: Alerter::recording().0,
            state: None,
            failed: Arc::default(),
        }
    }
}

/// Rows collected by a capture stage.
pub type Captured = Arc<Mutex<Vec<arrow::array::RecordBatch>>>;

/// The stages of a graph, their counters, and what test captures collect.
pub struct Built {
    pub stages: Vec<Stage>,
    pub stats: Vec<Arc<StageStats>>,
    pub captures: Vec<(String, Captured)>,
}

/// Builds one stage per graph node.
///
/// # Errors
/// A node that cannot be built (for example an invalid schema or a missing mock).
pub fn build(
    spec: &PipelineSpec,
    graph: &Graph,
    overrides: &Overrides,
    services: &Services,
) -> Result<Built, EngineError> {
    let batch_size = spec.options.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    let mut stages = Vec::with_capacity(graph.nodes.len());
    let mut stats = Vec::with_capacity(graph.nodes.len());
    let mut captures = Vec::new();
    for node in &graph.nodes {
        let t = &spec.transforms[node.spec];
        let st = Arc::new(StageStats::default());
        let errors = ErrorRoute::new(&node.name, node.error_port, st.clone());
        let ports = node.ports.len();
        let name = node.name.as_str();
        if let Some((_, rows)) = overrides.mock_outputs.iter().find(|(n, _)| n == name) {
            stages.push(Stage::Source(Box::new(transforms::create::Create::new(
                name, rows,
            ))));
            stats.push(st);
            continue;
        }
        if overrides.capture_inputs.iter().any(|n| n == name)
            || matches!(t.config, TransformConfig::Capture)
        {
            let cap: Captured = Arc::default();
            captures.push((name.to_string(), cap.clone()));
            stages.push(Stage::Sink(Box::new(Capture(cap))));
            stats.push(st);
            continue;
        }
        let stage = match &t.config {
            TransformConfig::Create { elements } => {
                Stage::Source(Box::new(transforms::create::Create::new(name, elements)))
            }
            TransformConfig::ReadFromJson { path, schema } => {
                Stage::Source(Box::new(io::json::ReadFromJson::new(
                    name,
                    &path.value,
                    schema.clone(),
                    batch_size,
                    errors,
                    ports,
                )))
            }
            TransformConfig::ReadFromCsv {
                path,
                delimiter,
                schema,
            } => Stage::Source(Box::new(io::csv::ReadFromCsv {
                name: name.to_string(),
                pattern: path.value.clone(),
                delimiter: *delimiter,
                declared: schema.clone(),
                batch_size,
                errors,
                ports,
            })),
            TransformConfig::ReadFromParquet { path } => {
                Stage::Source(Box::new(io::parquet::ReadFromParquet {
                    name: name.to_string(),
                    pattern: path.value.clone(),
                    batch_size,
                }))
            }
            TransformConfig::WriteToJson(s) => Stage::Sink(Box::new(io::json::write_to_json(
                &file_sink(spec, graph, node, s),
                st.clone(),
            ))),
            TransformConfig::WriteToCsv { sink, delimiter } => Stage::Sink(Box::new(
                io::csv::write_to_csv(&file_sink(spec, graph, node, sink), *delimiter, st.clone()),
            )),
            TransformConfig::WriteToParquet(s) => Stage::Sink(Box::new(
                io::parquet::write_to_parquet(&file_sink(spec, graph, node, s), st.clone()),
            )),
            TransformConfig::WriteToPostgres(c) => Stage::Sink(Box::new(
                sinks::postgres::WriteToPostgres::new(name, c.clone(), errors, st.clone()),
            )),
            TransformConfig::WriteToRedis(c) => Stage::Sink(Box::new(
                sinks::redis::WriteToRedis::new(name, c.clone(), errors, st.clone()),
            )),
            TransformConfig::WriteToBigQuery(cfg) => {
                Stage::Sink(Box::new(crate::bigquery::sink::WriteToBigQuery::new(
                    name,
                    &spec.name,
                    cfg.clone(),
                    errors,
                    st.clone(),
                )))
            }
            TransformConfig::ReadFromBigQuery(cfg) => {
                Stage::Source(Box::new(crate::bigquery::source::ReadFromBigQuery::new(
                    name,
                    cfg.clone(),
                    batch_size,
                    errors,
                    ports,
                )))
            }
            TransformConfig::LogForTesting { prefix, level } => {
                Stage::Operator(Box::new(transforms::log::LogForTesting {
                    name: name.to_string(),
                    prefix: prefix.clone(),
                    level: transforms::log::LogForTesting::level(level),
                }))
            }
            TransformConfig::AssertEqual { elements } => Stage::Sink(Box::new(
                transforms::assert_equal::AssertEqual::new(name, elements.clone()),
            )),
            TransformConfig::MapToFields {
                fields,
                append,
                drop,
            } => Stage::Operator(Box::new(transforms::map_to_fields::MapToFields::new(
                fields
                    .iter()
                    .map(|(n, e)| (n.value.clone(), e.clone()))
                    .collect(),
                *append,
                drop.iter().map(|d| d.value.clone()).collect(),
                errors,
            ))),
            TransformConfig::Filter { keep } => Stage::Operator(Box::new(
                transforms::filter::Filter::new(keep.clone(), errors),
            )),
            TransformConfig::Explode {
                fields,
                cross_product,
            } => Stage::Operator(Box::new(transforms::explode::Explode::new(
                fields.iter().map(|f| f.value.clone()).collect(),
                *cross_product,
                errors,
            ))),
            TransformConfig::Flatten => Stage::Operator(Box::new(transforms::flatten::Flatten)),
            TransformConfig::Partition {
                by,
                outputs,
                unknown_output,
            } => {
                let outs = outputs
                    .iter()
                    .map(|o| {
                        (
                            o.value.clone(),
                            node.port(&o.value).expect("graph declared the port"),
                        )
                    })
                    .collect();
                let unknown = unknown_output.as_ref().and_then(|u| node.port(&u.value));
                Stage::Operator(Box::new(transforms::partition::Partition::new(
                    by.clone(),
                    outs,
                    unknown,
                    errors,
                )))
            }
            TransformConfig::ValidateWithSchema { schema, .. } => Stage::Operator(Box::new(
                transforms::validate_schema::ValidateWithSchema::new(schema, errors)
                    .map_err(|e| EngineError::config(name, e))?,
            )),
            TransformConfig::StripErrorMetadata => {
                Stage::Operator(Box::new(transforms::strip_errors::StripErrorMetadata {
                    errors,
                }))
            }
            TransformConfig::ReadFromPubSub(c) => Stage::Source(Box::new(
                crate::pubsub::ReadFromPubSub::new(
                    name,
                    c,
                    batch_size,
                    errors,
                    ports,
                    st.acks().clone(),
                )
                .with_dedupe(
                    &spec.name,
                    spec.options.state.dedupe_horizon,
                    services.state.clone(),
                ),
            )),
            TransformConfig::WriteToPubSub(c) => Stage::Sink(Box::new(
                crate::pubsub::WriteToPubSub::new(name, &spec.name, c, errors, st.sink().clone()),
            )),
            TransformConfig::AssignTimestamps { .. }
            | TransformConfig::WindowInto { .. }
            | TransformConfig::Combine { .. }
            | TransformConfig::ExtractWindowingInfo { .. }
            | TransformConfig::Deduplicate { .. } => {
                let durable = services.state.as_ref().map(|store| {
                    transforms::window::combine::durable::DurableConfig {
                        store: store.clone(),
                        checkpoint_interval: spec.options.state.checkpoint_interval,
                        dedupe_horizon: spec.options.state.dedupe_horizon,
                        failed: services.failed.clone(),
                    }
                });
                transforms::window::build(spec, graph, node, errors, &st, durable)?
            }
            TransformConfig::Sql { query } => {
                let windowed = node.windowing.is_windowed().then(|| {
                    let group = transforms::sql::analysis::analyze(&query.value)
                        .ok()
                        .and_then(|i| i.group_columns);
                    transforms::sql::WindowedSpec {
                        pipeline: spec.name.clone(),
                        windowing: node.windowing,
                        session_key: group.unwrap_or_default(),
                        stats: st.window().clone(),
                    }
                });
                Stage::Operator(Box::new(transforms::sql::Sql::new(
                    &query.value,
                    transforms::sql::table_names(&t.inputs),
                    graph.is_bounded(spec, graph.node(name).unwrap_or_default()),
                    batch_size,
                    errors,
                    windowed,
                )))
            }
            TransformConfig::Check(cfg) => {
                let halts = cfg.on_failure.halts();
                let op = transforms::check::Check::new(
                    name,
                    &spec.name,
                    (**cfg).clone(),
                    node.windowing.kind,
                    services.valves.clone(),
                    services.alerter.clone(),
                    st.clone(),
                );
                if halts {
                    for src in graph.upstream_sources(graph.node(name).unwrap_or_default()) {
                        services.valves.pause_source(src, &[name.to_string()]);
                    }
                }
                Stage::Operator(Box::new(op))
            }
            TransformConfig::Unsupported { reason } => {
                return Err(EngineError::config(name, reason.clone()));
            }
            TransformConfig::Capture => unreachable!("handled above"),
            TransformConfig::Invalid => {
                return Err(EngineError::config(
                    name,
                    "invalid transform (run `sluice validate`)",
                ));
            }
        };
        stages.push(stage);
        stats.push(st);
    }
    Ok(Built {
        stages,
        stats,
        captures,
    })
}

/// Test sink that records what reaches it (in memory: written at return).
struct Capture(Captured);

#[async_trait::async_trait]
impl super::operator::Sink for Capture {
    async fn write(
        &mut self,
        batch: crate::record::Batch,
        _receipts: &mut super::operator::Receipts,
        _out: &mut super::operator::Output,
    ) -> Result<super::operator::Written, EngineError> {
        self.0.lock().expect("not poisoned").push(batch.rows);
        Ok(super::operator::Written::Now)
    }
}

/// A file sink's naming and roll policy: streaming (files committed as windows end or sets fill)
/// when its input is unbounded, or the pipeline says `options.streaming: true`.
fn file_sink<'a>(
    spec: &PipelineSpec,
    graph: &Graph,
    node: &'a super::graph::Node,
    sink: &'a crate::config::components::FileSink,
) -> io::sink::FileSinkSpec<'a> {
    let index = graph
        .nodes
        .iter()
        .position(|n| std::ptr::eq(n, node))
        .expect("the node is in the graph");
    let unbounded = spec.options.streaming == Some(true)
        || graph.upstream_sources(index).into_iter().any(|s| {
            !super::graph::is_bounded_source(&spec.transforms[graph.nodes[s].spec].config)
        });
    io::sink::FileSinkSpec {
        transform: &node.name,
        path: &sink.path.value,
        num_shards: sink.num_shards,
        streaming: unbounded.then(|| io::streaming::StreamPolicy {
            kind: node.windowing.kind,
            max_file_rows: sink
                .max_file_rows
                .unwrap_or(io::streaming::DEFAULT_MAX_FILE_ROWS),
            max_file_age: sink
                .max_file_age
                .unwrap_or(io::streaming::DEFAULT_MAX_FILE_AGE),
        }),
    }
}
