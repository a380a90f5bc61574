//! `sluice setup` for Pub/Sub: creates, idempotently, the topics and subscriptions a pipeline
//! declares (`WriteToPubSub.topic`, `ReadFromPubSub.topic`, and `ReadFromPubSub.subscription`
//! with its `subscription_settings`: topic, ack deadline, retention, filter, ordering,
//! dead-letter topic and policy; a sharded `WriteToPubSub` topic with `{shard}` is one topic per
//! shard). Existing resources are left as they are and reported.

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model::DeadLetterPolicy;

use super::client::{Connection, PubSubError};
use super::config::{ReadConfig, ReadFrom, WriteConfig};
use super::shard::{is_per_shard, topic_for};
use crate::config::{PipelineSpec, TransformConfig};

/// A Pub/Sub resource a pipeline declares.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Topic(String),
    Subscription {
        path: String,
        topic: String,
        settings: Box<ReadConfig>,
    },
}

/// What happened to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Exists,
}

/// The resources `spec` declares, topics first (subscriptions need them), without duplicates.
///
/// # Errors
/// A name that cannot be resolved, or a subscription whose topic is not declared.
pub fn declared(spec: &PipelineSpec, conn: &Connection) -> Result<Vec<Resource>, String> {
    let mut topics: Vec<String> = Vec::new();
    let mut subs = Vec::new();
    let mut add_topic = |t: String| {
        if !topics.contains(&t) {
            topics.push(t);
        }
    };
    if let Some(ct) = &spec.options.control_topic {
        add_topic(conn.topic_path(&ct.value).map_err(|e| e.to_string())?);
    }
    for t in &spec.transforms {
        match &t.config {
            TransformConfig::WriteToPubSub(w) => {
                let w: &WriteConfig = w;
                match &w.shard {
                    Some(s) if is_per_shard(&w.topic.value) => {
                        for k in 0..s.count {
                            let t = topic_for(&w.topic.value, k);
                            add_topic(conn.topic_path(&t).map_err(|e| e.to_string())?);
                        }
                    }
                    _ => add_topic(conn.topic_path(&w.topic.value).map_err(|e| e.to_string())?),
                }
            }
            TransformConfig::ReadFromPubSub(r) => {
                let s = &r.subscription_settings;
                if let Some(d) = &s.dead_letter {
                    add_topic(conn.topic_path(&d.topic.value).map_err(|e| e.to_string())?);
                }
                match &r.from {
                    ReadFrom::Topic(topic) => {
                        add_topic(conn.topic_path(&topic.value).map_err(|e| e.to_string())?)
                    }
                    ReadFrom::Subscription(sub) => {
                        let Some(topic) = &s.topic else {
                            return Err(format!(
                                "`{}` reads subscription `{}` but names no topic for it: add `subscription_settings: {{topic: ...}}` so `sluice setup` can create it",
                                t.name, sub.value
                            ));
                        };
                        let topic = conn.topic_path(&topic.value).map_err(|e| e.to_string())?;
                        add_topic(topic.clone());
                        subs.push(Resource::Subscription {
                            path: conn
                                .subscription_path(&sub.value)
                                .map_err(|e| e.to_string())?,
                            topic,
                            settings: r.clone(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let mut all: Vec<Resource> = topics.into_iter().map(Resource::Topic).collect();
    all.extend(subs);
    Ok(all)
}

fn already_exists(e: &PubSubError) -> bool {
    e.code() == Some(Code::AlreadyExists)
}

fn duration(d: std::time::Duration) -> wkt::Duration {
    wkt::Duration::clamp(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0)
}

/// Creates `resources` in order.
///
/// # Errors
/// The first failure other than "already exists".
pub async fn create(
    conn: &Connection,
    resources: &[Resource],
) -> Result<Vec<(String, Outcome)>, PubSubError> {
    let mut done = Vec::new();
    if resources.is_empty() {
        return Ok(done);
    }
    let topics = conn.topic_admin().await?;
    let subs = conn.subscription_admin().await?;
    for r in resources {
        let (name, res) = match r {
            Resource::Topic(t) => (
                format!("topic {t}"),
                topics
                    .create_topic()
                    .set_name(t.clone())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(PubSubError::from),
            ),
            Resource::Subscription {
                path,
                topic,
                settings,
            } => {
                let s = &settings.subscription_settings;
                let mut req = subs
                    .create_subscription()
                    .set_name(path.clone())
                    .set_topic(topic.clone())
                    .set_retain_acked_messages(s.retain_acked_messages)
                    .set_enable_message_ordering(s.enable_message_ordering);
                if let Some(d) = s.ack_deadline {
                    req = req.set_ack_deadline_seconds(i32::try_from(d.as_secs()).unwrap_or(600));
                }
                if let Some(d) = s.retention {
                    req = req.set_message_retention_duration(duration(d));
                }
                if let Some(f) = &s.filter {
                    req = req.set_filter(f.clone());
                }
                if let Some(dl) = &s.dead_letter {
                    let dl_topic = conn.topic_path(&dl.topic.value)?;
                    req = req.set_dead_letter_policy(
                        DeadLetterPolicy::new()
                            .set_dead_letter_topic(dl_topic)
                            .set_max_delivery_attempts(dl.max_delivery_attempts),
                    );
                }
                (
                    format!("subscription {path}"),
                    req.send().await.map(|_| ()).map_err(PubSubError::from),
                )
            }
        };
        match res {
            Ok(()) => done.push((name, Outcome::Created)),
            Err(e) if already_exists(&e) => done.push((name, Outcome::Exists)),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_shard_topic_declares_one_topic_per_shard() {
        let text = "pipeline:\n  transforms:\n    - type: ReadFromPubSub\n      name: In\n      config:\n        subscription: in-sub\n        format: RAW\n        subscription_settings: {topic: in, filter: 'attributes.k = \"1\"'}\n    - type: WriteToPubSub\n      name: Out\n      input: In\n      config:\n        topic: out-{shard}\n        shard: {by: [payload], count: 3}\n";
        let spec = crate::config::parse("p.yaml", text, &Default::default()).unwrap();
        let conn = Connection {
            emulator: None,
            project: Some("p".into()),
        };
        let names: Vec<String> = declared(&spec, &conn)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Resource::Topic(t) => t,
                Resource::Subscription { path, settings, .. } => format!(
                    "{path} {}",
                    settings.subscription_settings.filter.unwrap_or_default()
                ),
            })
            .collect();
        assert_eq!(
            names,
            [
                "projects/p/topics/in",
                "projects/p/topics/out-0",
                "projects/p/topics/out-1",
                "projects/p/topics/out-2",
                "projects/p/subscriptions/in-sub attributes.k = \"1\"",
            ]
        );
    }
}
