//! Alerting: where alerts go (`alert:` targets), what an alert says, and the delivery task that
//! posts them to Slack incoming webhooks and generic webhooks with dedup, rate limits and retries.
//! Also the dead-letter rate monitor behind `error_handling.alert` (SPEC §3).

pub mod alert;
pub mod dead_letter;
pub mod deliver;
pub mod gate;
pub mod payload;
pub mod targets;

pub use alert::{Alert, AlertKind, Finding};
pub use deliver::{AlertStats, Alerter, RetryPolicy};
pub use targets::{AlertTargets, TARGET_KEYS, parse_targets};

#[cfg(test)]
mod tests;
