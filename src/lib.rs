//! Sluice: a Dataflow-style stream processor. Beam YAML pipelines run on Arrow record batches.

pub mod alerts;
pub mod bigquery;
pub mod cli;
pub mod config;
pub mod demo;
pub mod explain;
pub mod expr;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod io;
pub mod pipeline;
pub mod pubsub;
pub mod record;
pub mod sinks;
pub mod state;
pub mod telemetry;
pub mod testing;
pub mod time;
pub mod transforms;
