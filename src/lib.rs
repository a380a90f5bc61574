//! Sluice: a Dataflow-style stream processor. Beam YAML pipelines run on Arrow record batches.

pub mod cli;
pub mod config;
pub mod demo;
pub mod expr;
pub mod io;
pub mod pipeline;
pub mod record;
pub mod sinks;
pub mod testing;
pub mod time;
pub mod transforms;
