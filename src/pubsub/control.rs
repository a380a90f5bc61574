//! The control topic (`options.control_topic`): how pipelines see each other's valves.
//!
//! A pipeline with halting `Check`s publishes the state of each valve there on every change and
//! every [`HEARTBEAT`] (so a pipeline that starts later learns it within one period). A pipeline
//! with `options.gates` reads the topic through a subscription of its own for the run, and
//! pauses its sources while any gate's valve is not open. A gate it has heard nothing about is
//! open: a missing upstream must not stop a pipeline forever (docs/checks.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use serde::{Deserialize, Serialize};

use super::client::{Connection, PubSubError};
use crate::pipeline::valve::{ValveKind, ValveState, Valves};

/// How often valve states are published even when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// One valve's state on the control topic (the payload, as JSON; also in attributes
/// `sluice_pipeline`, `sluice_valve`, `sluice_state` for subscription filters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValveMessage {
    pub pipeline: String,
    pub valve: String,
    /// `open`, `closed` or `probing`.
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// When it was published (ms); older messages than the last one seen are ignored.
    pub at_ms: i64,
}

impl ValveMessage {
    pub fn new(pipeline: &str, valve: &str, state: &ValveState, at_ms: i64) -> Self {
        let (reason, since_ms) = match state {
            ValveState::Open => (None, None),
            ValveState::Closed { since_ms, reason } | ValveState::Probing { since_ms, reason } => {
                (Some(reason.clone()), Some(*since_ms))
            }
        };
        ValveMessage {
            pipeline: pipeline.to_string(),
            valve: valve.to_string(),
            state: state.label().to_string(),
            reason,
            since_ms,
            at_ms,
        }
    }

    /// The gate's state in the following pipeline: anything but `open` pauses it.
    pub fn gate_state(&self) -> ValveState {
        if self.state == "open" {
            ValveState::Open
        } else {
            ValveState::Closed {
                since_ms: self.since_ms.unwrap_or(self.at_ms),
                reason: format!(
                    "{}/{} is {}: {}",
                    self.pipeline,
                    self.valve,
                    self.state,
                    self.reason.as_deref().unwrap_or("")
                ),
            }
        }
    }

    fn to_message(&self) -> Message {
        Message::new()
            .set_data(serde_json::to_vec(self).expect("plain struct serializes"))
            .set_attributes([
                ("sluice_pipeline", self.pipeline.as_str()),
                ("sluice_valve", self.valve.as_str()),
                ("sluice_state", self.state.as_str()),
            ])
    }
}

/// Gates' last known messages; applies newer ones to `valves`.
#[derive(Debug, Default)]
pub struct GateBook {
    last: BTreeMap<String, i64>,
}

impl GateBook {
    /// Applies `payload` when it is about one of `gates` and newer than what was seen. Returns
    /// the gate it changed.
    pub fn apply(&mut self, payload: &[u8], gates: &[String], valves: &Valves) -> Option<String> {
        let msg: ValveMessage = serde_json::from_slice(payload).ok()?;
        let name = format!("{}/{}", msg.pipeline, msg.valve);
        if !gates.contains(&name) {
            return None;
        }
        let last = self.last.entry(name.clone()).or_insert(i64::MIN);
        if msg.at_ms < *last {
            return None;
        }
        *last = msg.at_ms;
        valves.set_gate(&name, msg.gate_state());
        Some(name)
    }
}

/// Publishes the state of this pipeline's valves on `topic` (a full name) on every change and
/// every heartbeat, until the process exits. Failures are logged and retried at the next tick.
pub fn spawn_publisher(conn: Connection, topic: String, pipeline: String, valves: Arc<Valves>) {
    tokio::spawn(async move {
        let publisher = match conn.publisher(&topic, 100, Duration::from_millis(5)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(topic = %topic, error = %e, "Cannot publish valve states: no publisher");
                return;
            }
        };
        let mut changes = valves.subscribe();
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            let pending: Vec<_> = valves
                .list()
                .into_iter()
                .filter(|(_, k, _)| *k == ValveKind::Check)
                .map(|(name, _, state)| {
                    let m = ValveMessage::new(&pipeline, &name, &state, now);
                    publisher.publish(m.to_message())
                })
                .collect();
            for r in futures::future::join_all(pending).await {
                if let Err(e) = r {
                    tracing::warn!(topic = %topic, error = %e, "Publishing a valve state failed; retrying at the next heartbeat");
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    });
}

/// Follows `gates` on `topic` through a subscription created for this run (deleted by the
/// returned guard's [`GateFollower::close`]).
///
/// # Errors
/// When the subscription cannot be created.
pub async fn follow_gates(
    conn: Connection,
    topic: String,
    pipeline: &str,
    gates: Vec<String>,
    valves: Arc<Valves>,
) -> Result<GateFollower, PubSubError> {
    let project = topic.split('/').nth(1).unwrap_or_default().to_string();
    let id = format!(
        "sluice-gates-{}-{:012x}",
        pipeline
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            })
            .take(30)
            .collect::<String>(),
        xxhash_rust::xxh3::xxh3_64(
            format!(
                "{topic}{}{:?}",
                std::process::id(),
                std::time::Instant::now()
            )
            .as_bytes()
        ) & 0xffff_ffff_ffff
    );
    let path = format!("projects/{project}/subscriptions/{id}");
    conn.subscription_admin()
        .await?
        .create_subscription()
        .set_name(path.clone())
        .set_topic(topic.clone())
        .set_ack_deadline_seconds(10)
        .send()
        .await?;
    for g in &gates {
        valves.register(g, ValveKind::Gate);
    }
    tracing::info!(subscription = %path, topic = %topic, gates = ?gates, "Following gates");
    let subscriber = conn.subscriber().await?;
    let task_path = path.clone();
    let task = tokio::spawn(async move {
        let mut stream = subscriber.subscribe(task_path).build();
        let mut book = GateBook::default();
        while let Some(item) = stream.next().await {
            match item {
                Ok((m, h)) => {
                    if let Some(g) = book.apply(&m.data, &gates, &valves) {
                        tracing::info!(gate = %g, state = ?valves.state(&g).map(|s| s.label()), "Gate state");
                    }
                    h.ack();
                }
                Err(e) => {
                    tracing::error!(error = %e, "Following the control topic failed; gates keep their last state");
                    return;
                }
            }
        }
    });
    Ok(GateFollower {
        conn,
        subscription: path,
        task,
    })
}

/// The running gate follower.
pub struct GateFollower {
    conn: Connection,
    subscription: String,
    task: tokio::task::JoinHandle<()>,
}

impl GateFollower {
    /// Stops following and deletes the run's subscription.
    pub async fn close(self) {
        self.task.abort();
        let res = match self.conn.subscription_admin().await {
            Ok(admin) => admin
                .delete_subscription()
                .set_subscription(self.subscription.clone())
                .send()
                .await
                .map_err(PubSubError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::warn!(subscription = %self.subscription, error = %e, "Could not delete the gates' subscription");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_messages_about_our_gates_set_them_older_and_foreign_ones_do_not() {
        let valves = Valves::default();
        let gates = vec!["up/Volume".to_string()];
        let mut book = GateBook::default();
        let closed = ValveMessage::new(
            "up",
            "Volume",
            &ValveState::Closed {
                since_ms: 5,
                reason: "row_count".into(),
            },
            100,
        );
        let open = ValveMessage::new("up", "Volume", &ValveState::Open, 50);
        let other = ValveMessage::new("up", "Other", &ValveState::Open, 200);
        let bytes = |m: &ValveMessage| serde_json::to_vec(m).unwrap();
        assert_eq!(
            book.apply(&bytes(&closed), &gates, &valves),
            Some("up/Volume".to_string())
        );
        assert!(valves.blocks(&gates));
        assert_eq!(book.apply(&bytes(&open), &gates, &valves), None, "older");
        assert!(valves.blocks(&gates));
        assert_eq!(book.apply(&bytes(&other), &gates, &valves), None);
        assert_eq!(book.apply(b"not json", &gates, &valves), None);
        let reopened = ValveMessage::new("up", "Volume", &ValveState::Open, 300);
        book.apply(&bytes(&reopened), &gates, &valves);
        assert!(!valves.blocks(&gates));
        let probing = ValveMessage::new(
            "up",
            "Volume",
            &ValveState::Probing {
                since_ms: 1,
                reason: "x".into(),
            },
            400,
        );
        book.apply(&bytes(&probing), &gates, &valves);
        assert!(valves.blocks(&gates), "probing upstream is not open");
    }
}
