//! Valves: the shared open/closed state of every `Check` that halts, and of the gates a pipeline
//! waits on (another pipeline's valves, learnt from the control topic).
//!
//! A `Check` closes its valve when a halting check fails; sources upstream of it (and, for gates,
//! every source of the pipeline) stop pulling at their next emit while any valve that pauses
//! them is closed. `/readyz`, `/metrics` and the status page read the same registry, and
//! `POST /valves/{name}/open` reopens a valve here; the `Check` notices on its next tick and
//! releases what it held. A valve in `Probing` (after `retry_after`) lets the sources pull again
//! so that the next pane can be checked.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde_json::{Value, json};
use tokio::sync::watch;

/// State of one valve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValveState {
    Open,
    /// Closed by a failed check (`reason`) at `since_ms` (wall clock).
    Closed {
        since_ms: i64,
        reason: String,
    },
    /// Closed, but letting data in so that a re-check can decide (after `retry_after`).
    Probing {
        since_ms: i64,
        reason: String,
    },
}

impl ValveState {
    pub fn is_open(&self) -> bool {
        matches!(self, ValveState::Open)
    }

    /// Whether sources behind this valve must stop pulling.
    pub fn blocks(&self) -> bool {
        matches!(self, ValveState::Closed { .. })
    }

    pub fn label(&self) -> &'static str {
        match self {
            ValveState::Open => "open",
            ValveState::Closed { .. } => "closed",
            ValveState::Probing { .. } => "probing",
        }
    }
}

/// Whose valve it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValveKind {
    /// A `Check` of this pipeline: counts for `/readyz`, can be opened over HTTP.
    Check,
    /// Another pipeline's valve this one is gated on (`options.gates`), named
    /// `pipeline/valve`; set only by control-topic messages.
    Gate,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: ValveKind,
    state: ValveState,
}

/// Why `open` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no valve named {0}")]
    Unknown(String),
    #[error("{0} is a gate on another pipeline's valve; open that valve instead")]
    Gate(String),
}

/// Every valve of a run, shared by the checks, the sources, the HTTP endpoints and the control
/// topic publisher. Changes bump a version that waiters watch.
#[derive(Debug)]
pub struct Valves {
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Source node index → valves that pause it.
    pausing: RwLock<BTreeMap<usize, Vec<String>>>,
    version: watch::Sender<u64>,
}

impl Default for Valves {
    fn default() -> Self {
        Valves {
            entries: RwLock::default(),
            pausing: RwLock::default(),
            version: watch::Sender::new(0),
        }
    }
}

impl Valves {
    /// Declares a valve (open). Declaring it again keeps its state.
    pub fn register(&self, name: &str, kind: ValveKind) {
        self.entries
            .write()
            .expect("not poisoned")
            .entry(name.to_string())
            .or_insert(Entry {
                kind,
                state: ValveState::Open,
            });
    }

    /// Source node `source` stops pulling while any of `valves` is closed.
    pub fn pause_source(&self, source: usize, valves: &[String]) {
        let mut p = self.pausing.write().expect("not poisoned");
        let list = p.entry(source).or_default();
        for v in valves {
            if !list.contains(v) {
                list.push(v.clone());
            }
        }
    }

    /// The valves that pause source node `source`.
    pub fn pausing(&self, source: usize) -> Vec<String> {
        self.pausing
            .read()
            .expect("not poisoned")
            .get(&source)
            .cloned()
            .unwrap_or_default()
    }

    fn set(&self, name: &str, state: ValveState) {
        let mut entries = self.entries.write().expect("not poisoned");
        let Some(e) = entries.get_mut(name) else {
            return;
        };
        if e.state != state {
            e.state = state;
            drop(entries);
            self.version.send_modify(|v| *v += 1);
        }
    }

    pub fn close(&self, name: &str, reason: &str) {
        self.set(
            name,
            ValveState::Closed {
                since_ms: chrono::Utc::now().timestamp_millis(),
                reason: reason.to_string(),
            },
        );
    }

    /// Lets data in for a re-check; the valve stays closed for readiness.
    pub fn probe(&self, name: &str) {
        if let Some(ValveState::Closed { reason, .. }) = self.state(name) {
            self.set(
                name,
                ValveState::Probing {
                    since_ms: chrono::Utc::now().timestamp_millis(),
                    reason,
                },
            );
        }
    }

    /// Opens a valve of this pipeline (`POST /valves/{name}/open`, a passing re-check).
    ///
    /// # Errors
    /// When there is no such valve, or it is a gate (only its own pipeline opens it).
    pub fn open(&self, name: &str) -> Result<(), OpenError> {
        match self.entries.read().expect("not poisoned").get(name) {
            None => return Err(OpenError::Unknown(name.to_string())),
            Some(e) if e.kind == ValveKind::Gate => return Err(OpenError::Gate(name.to_string())),
            Some(_) => {}
        }
        self.set(name, ValveState::Open);
        Ok(())
    }

    /// Sets a gate's state from a control message (registering it when new).
    pub fn set_gate(&self, name: &str, state: ValveState) {
        self.register(name, ValveKind::Gate);
        self.set(name, state);
    }

    pub fn state(&self, name: &str) -> Option<ValveState> {
        self.entries
            .read()
            .expect("not poisoned")
            .get(name)
            .map(|e| e.state.clone())
    }

    /// This pipeline's valves that are not open (gates excluded): `/readyz` fails while any is.
    pub fn closed_checks(&self) -> Vec<String> {
        self.entries
            .read()
            .expect("not poisoned")
            .iter()
            .filter(|(_, e)| e.kind == ValveKind::Check && !e.state.is_open())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// `(name, kind, state)` of every valve, in name order.
    pub fn list(&self) -> Vec<(String, ValveKind, ValveState)> {
        self.entries
            .read()
            .expect("not poisoned")
            .iter()
            .map(|(n, e)| (n.clone(), e.kind, e.state.clone()))
            .collect()
    }

    /// Whether any of `names` is closed (not probing).
    pub fn blocks(&self, names: &[String]) -> bool {
        let entries = self.entries.read().expect("not poisoned");
        names
            .iter()
            .any(|n| entries.get(n).is_some_and(|e| e.state.blocks()))
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits while any of `names` is closed, or until `stop` turns true.
    pub async fn wait_flowing(&self, names: &[String], stop: &mut watch::Receiver<bool>) {
        if names.is_empty() {
            return;
        }
        let mut changes = self.subscribe();
        let mut logged = false;
        while self.blocks(names) && !*stop.borrow() {
            if !logged {
                tracing::info!(valves = ?names, "Valve closed: pausing the source");
                logged = true;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = stop.changed() => if r.is_err() { return },
            }
        }
        if logged {
            tracing::info!(valves = ?names, "Valves open: the source resumes");
        }
    }

    /// The status page's view: name → `{kind, state, reason, since_ms}`.
    pub fn snapshot(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (name, kind, state) in self.list() {
            let (reason, since) = match &state {
                ValveState::Open => (None, None),
                ValveState::Closed { since_ms, reason }
                | ValveState::Probing { since_ms, reason } => {
                    (Some(reason.clone()), Some(*since_ms))
                }
            };
            m.insert(
                name,
                json!({
                    "kind": match kind { ValveKind::Check => "check", ValveKind::Gate => "gate" },
                    "open": state.is_open(),
                    "state": state.label(),
                    "reason": reason,
                    "since_ms": since,
                }),
            );
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn closing_blocks_probing_does_not_and_gates_cannot_be_opened_here() {
        let v = Valves::default();
        v.register("Volume", ValveKind::Check);
        v.register("up/Gate", ValveKind::Gate);
        let names = vec!["Volume".to_string()];
        assert!(!v.blocks(&names));
        v.close("Volume", "row_count 3 < 10");
        assert!(v.blocks(&names));
        assert_eq!(v.closed_checks(), vec!["Volume".to_string()]);
        v.probe("Volume");
        assert!(!v.blocks(&names));
        assert_eq!(
            v.closed_checks(),
            vec!["Volume".to_string()],
            "probing is not open"
        );
        assert_eq!(v.open("Volume"), Ok(()));
        assert!(v.closed_checks().is_empty());
        assert_eq!(
            v.open("up/Gate"),
            Err(OpenError::Gate("up/Gate".to_string()))
        );
        assert_eq!(v.open("Nope"), Err(OpenError::Unknown("Nope".to_string())));
        v.set_gate(
            "up/Gate",
            ValveState::Closed {
                since_ms: 1,
                reason: "x".into(),
            },
        );
        assert!(v.closed_checks().is_empty(), "gates do not fail readiness");
        assert!(v.blocks(&["up/Gate".to_string()]));
    }

    #[tokio::test]
    async fn a_paused_source_resumes_when_the_valve_opens() {
        let v = Arc::new(Valves::default());
        v.register("C", ValveKind::Check);
        v.close("C", "failed");
        let (_stop_tx, stop) = watch::channel(false);
        let waiter = {
            let v = v.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move { v.wait_flowing(&["C".to_string()], &mut stop).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        v.open("C").expect("open");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("resumed")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_stop_request_ends_the_wait() {
        let v = Valves::default();
        v.register("C", ValveKind::Check);
        v.close("C", "failed");
        let (stop_tx, mut stop) = watch::channel(false);
        stop_tx.send(true).expect("receiver alive");
        v.wait_flowing(&["C".to_string()], &mut stop).await;
    }
}
