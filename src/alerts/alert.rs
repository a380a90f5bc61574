//! What an alert says: the pipeline and component it is about, a one-line summary, the failed
//! rules (observed vs expected) and the key alerts are deduplicated by.

use serde::Serialize;

/// Why an alert was raised.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A `Check` failed (its valve may have closed).
    CheckFailed,
    /// A valve closed by a `Check` opened again.
    ValveReopened,
    /// A transform's dead-letter rate went above its alarm's `rate_above`.
    DeadLetterRate,
}

impl AlertKind {
    /// What `Alert::source` names for this kind ("Check" or "Transform"), for message labels.
    pub fn source_label(&self) -> &'static str {
        match self {
            AlertKind::CheckFailed | AlertKind::ValveReopened => "Check",
            AlertKind::DeadLetterRate => "Transform",
        }
    }
}

/// One failed rule: what was observed and what was expected, both as display text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub rule: String,
    pub observed: String,
    pub expected: String,
}

/// One alert, as the generic webhook receives it (plus `status_url` and `suppressed`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub pipeline: String,
    /// The Check's or the transform's name.
    pub source: String,
    pub kind: AlertKind,
    /// One line, human readable.
    pub summary: String,
    pub window_start_ms: Option<i64>,
    pub window_end_ms: Option<i64>,
    /// Observed vs expected per failed rule.
    pub findings: Vec<Finding>,
    /// `"closed"` / `"open"` when a valve is involved.
    pub valve: Option<String>,
    /// Alerts with the same key within `repeat_after` are suppressed (and counted).
    pub dedup_key: String,
    pub at_ms: i64,
}
