//! Event time and windowing transforms: `AssignTimestamps`, `WindowInto`, `Combine`,
//! `ExtractWindowingInfo` and Sluice's `Deduplicate`. Window math lives in `crate::time`.

pub mod aggregate;
pub mod assign_timestamps;
pub mod combine;
pub mod dedup;
mod dedup_state;
pub mod extract_info;
pub mod lateness;
pub mod window_into;

use crate::config::{PipelineSpec, TransformConfig};
use crate::pipeline::graph::{Graph, Node};
use crate::pipeline::operator::{EngineError, ErrorRoute, StageStats};
use crate::pipeline::runner::Stage;

/// Builds the stage of a windowing transform (the `match` arms of `pipeline::build` for them).
///
/// # Errors
/// A config error found only when building.
pub fn build(
    spec: &PipelineSpec,
    graph: &Graph,
    node: &Node,
    errors: ErrorRoute,
    stats: &StageStats,
    durable: Option<combine::durable::DurableConfig>,
) -> Result<Stage, EngineError> {
    let t = &spec.transforms[node.spec];
    let name = node.name.as_str();
    let op: Box<dyn crate::pipeline::Operator> = match &t.config {
        TransformConfig::AssignTimestamps {
            timestamp,
            watermark,
            unit,
        } => {
            // A declared `watermark:` owns the watermark downstream. Without the key, bounded
            // pipelines keep the input watermark (nothing is late, as on Beam's batch runner);
            // streaming ones generate one with the defaults that only raises the input's.
            let owns = watermark.is_some();
            let watermark = watermark.or_else(|| {
                is_streaming(spec, graph).then_some(crate::config::components::WatermarkSpec {
                    max_delay: crate::time::watermark::DEFAULT_MAX_DELAY,
                    idle_timeout: None,
                })
            });
            Box::new(
                assign_timestamps::AssignTimestamps::new(
                    timestamp.clone(),
                    watermark,
                    owns,
                    errors,
                )
                .with_unit(*unit),
            )
        }
        TransformConfig::WindowInto { .. } => Box::new(window_into::WindowInto),
        TransformConfig::Combine { group_by, combine } => {
            let c = combine::Combine::new(
                &spec.name,
                group_by.iter().map(|g| g.value.clone()).collect(),
                combine.clone(),
                node.windowing,
                errors,
                stats.window().clone(),
            );
            Box::new(match durable {
                Some(cfg) => c.with_durable(cfg),
                None => c,
            })
        }
        TransformConfig::ExtractWindowingInfo { fields } => Box::new(
            extract_info::ExtractWindowingInfo::new(name, fields.clone(), node.windowing),
        ),
        TransformConfig::Deduplicate { by, within_ms } => {
            let d = dedup::Deduplicate::new(
                name,
                by.iter().map(|b| b.value.clone()).collect(),
                *within_ms,
            );
            Box::new(match durable {
                Some(cfg) => d.with_durable(cfg, &spec.name),
                None => d,
            })
        }
        _ => {
            return Err(EngineError::internal(name, "not a windowing transform"));
        }
    };
    Ok(Stage::Operator(op))
}

/// Whether the pipeline reads an unbounded source (or says `options.streaming: true`).
fn is_streaming(spec: &PipelineSpec, graph: &Graph) -> bool {
    spec.options.streaming == Some(true)
        || graph.nodes.iter().any(|n| n.type_name == "ReadFromPubSub")
}
