//! Alerts (temporary stand-in for the alerts branch: records instead of delivering).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::diag::Reporter;
use crate::config::yaml::MapReader;

#[derive(Debug, Clone, PartialEq)]
pub struct AlertTargets {
    pub slack_webhook: Option<String>,
    pub webhook: Option<String>,
    pub repeat_after: Duration,
}

pub const TARGET_KEYS: &[&str] = &["slack_webhook", "webhook", "repeat_after"];

pub fn parse_targets(r: &mut MapReader<'_>, rep: &mut Reporter) -> Option<AlertTargets> {
    Some(AlertTargets {
        slack_webhook: r.string("slack_webhook", rep).map(|s| s.value),
        webhook: r.string("webhook", rep).map(|s| s.value),
        repeat_after: r
            .duration("repeat_after", rep)
            .unwrap_or(Duration::from_secs(600)),
    })
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    CheckFailed,
    ValveReopened,
    DeadLetterRate,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    pub rule: String,
    pub observed: String,
    pub expected: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    pub pipeline: String,
    pub source: String,
    pub kind: AlertKind,
    pub summary: String,
    pub window_start_ms: Option<i64>,
    pub window_end_ms: Option<i64>,
    pub findings: Vec<Finding>,
    pub valve: Option<String>,
    pub dedup_key: String,
    pub at_ms: i64,
}

#[derive(Clone, Default)]
pub struct Alerter {
    log: Arc<Mutex<Vec<Alert>>>,
}

impl Alerter {
    pub fn start(_status_url: Option<String>) -> Alerter {
        Alerter::default()
    }

    pub fn recording() -> (Alerter, Arc<Mutex<Vec<Alert>>>) {
        let a = Alerter::default();
        let log = a.log.clone();
        (a, log)
    }

    pub fn send(&self, _targets: &AlertTargets, alert: Alert) {
        self.log.lock().expect("not poisoned").push(alert);
    }
}
