//! Metrics, logs and traces.

pub mod health;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod progress;
