//! `WriteToPubSub`: rows → messages (JSON or RAW payload, attributes, ordering key, the
//! `sluice_id` attribute, with `shard:` the `sluice_shard` attribute and per-shard topics),
//! published through the official client's batching publisher (one per topic).
//!
//! `write` returns [`Written::Now`] only after every message of the batch was confirmed by
//! Pub/Sub, so the runner releases the batch's acknowledgement holds after the durable write. Transient
//! failures are retried with exponential backoff; permanent ones fail the run (which then
//! acknowledges nothing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use async_trait::async_trait;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;

use super::client::{Connection, PubSubError};
use super::config::{Format, WriteConfig};
use super::shard::{SHARD_ATTRIBUTE, is_per_shard, shards, topic_for};
use crate::pipeline::operator::{EngineError, ErrorRoute, Output, Receipts, Sink, Written};
use crate::pipeline::stats::SinkStats;
use crate::record::error_record;
use crate::record::{Batch, meta};
use crate::sinks::retry::Backoff;

/// The attribute that carries every published row's deterministic id (SPEC §4).
pub const ID_ATTRIBUTE: &str = "sluice_id";

/// Publish attempts per message before the run fails. With the backoff below this spans about
/// a minute: long enough for a Pub/Sub blip or emulator restart, short enough to surface a
/// real outage.
const MAX_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Largest message data Sluice publishes. Pub/Sub accepts at most 10 MB per publish request
/// (the client batches up to 10,000,000 bytes: `publisher::constants::MAX_BYTES`), attributes
/// included (at most 100 × (256 + 1024) bytes) plus the request's framing; 9,000,000 leaves room
/// for all of that. A larger dead-letter record is cut down to this size and marked
/// ([`error_record::truncate`]); a larger output row becomes an error record.
pub const MAX_MESSAGE_BYTES: usize = 9_000_000;

/// The client's batching: Pub/Sub accepts at most 1000 messages per publish request.
const PUBLISH_BATCH: u32 = 1000;
/// A batch reaches the sink whole, so waiting longer to fill requests gains nothing.
const PUBLISH_DELAY: Duration = Duration::from_millis(5);

pub struct WriteToPubSub {
    name: String,
    pipeline: String,
    cfg: WriteConfig,
    errors: ErrorRoute,
    conn: Connection,
    /// Publishers by route: the shard with per-shard topics, else always 0.
    publishers: HashMap<u32, Publisher>,
    stats: Arc<SinkStats>,
}

impl WriteToPubSub {
    pub fn new(
        name: &str,
        pipeline: &str,
        cfg: &WriteConfig,
        errors: ErrorRoute,
        stats: Arc<SinkStats>,
    ) -> Self {
        WriteToPubSub {
            name: name.to_string(),
            pipeline: pipeline.to_string(),
            cfg: cfg.clone(),
            errors,
            conn: Connection::from_env(),
            publishers: HashMap::new(),
            stats,
        }
    }

    /// The topic of `route`: the shard's with a per-shard topic, else the one topic.
    fn topic(&self, route: u32) -> String {
        topic_for(&self.cfg.topic.value, route)
    }

    /// Makes sure a publisher exists for every route in `msgs`.
    async fn ensure_publishers(&mut self, msgs: &[(u32, Message)]) -> Result<(), EngineError> {
        for (route, _) in msgs {
            if self.publishers.contains_key(route) {
                continue;
            }
            let topic = self
                .conn
                .topic_path(&self.topic(*route))
                .map_err(|e| EngineError::config(&self.name, e.to_string()))?;
            let p = self
                .conn
                .publisher(&topic, PUBLISH_BATCH, PUBLISH_DELAY)
                .await
                .map_err(|e| EngineError::external(&self.name, "cannot create a publisher", e))?;
            self.publishers.insert(*route, p);
        }
        Ok(())
    }

    /// Publishes `msgs` (each with its route), retrying the transiently failed ones.
    async fn publish_all(&self, msgs: Vec<(u32, Message)>) -> Result<(), EngineError> {
        let mut todo = msgs;
        let mut backoff = Backoff::with_schedule(FIRST_BACKOFF, MAX_BACKOFF, MAX_ATTEMPTS)
            .counting(self.stats.clone());
        let publisher = |route: &u32| {
            self.publishers
                .get(route)
                .expect("ensure_publishers made one for every route")
        };
        loop {
            let started = std::time::Instant::now();
            let futures: Vec<_> = todo
                .iter()
                .map(|(route, m)| publisher(route).publish(m.clone()))
                .collect();
            let results = futures::future::join_all(futures).await;
            self.stats.observe_write(started);
            let mut retry = Vec::new();
            let mut last: Option<PubSubError> = None;
            for ((route, m), r) in todo.into_iter().zip(results) {
                if let Err(e) = r {
                    let e = PubSubError::Publish(e);
                    if !e.is_retryable() {
                        backoff.fail_permanently();
                        return Err(EngineError::external(
                            &self.name,
                            format!("publishing to {} failed", self.topic(route)),
                            e,
                        ));
                    }
                    if !m.ordering_key.is_empty() {
                        publisher(&route).resume_publish(m.ordering_key.clone());
                    }
                    retry.push((route, m));
                    last = Some(e);
                }
            }
            let Some(e) = last else { return Ok(()) };
            let Some(delay) = backoff.next_delay() else {
                return Err(EngineError::external(
                    &self.name,
                    format!(
                        "publishing to {} failed after {MAX_ATTEMPTS} attempts",
                        self.cfg.topic.value
                    ),
                    e,
                ));
            };
            let attempt = backoff.attempts();
            tracing::warn!(transform = %self.name, failed = retry.len(), attempt, error = %e, "Publish failed; retrying");
            tokio::time::sleep(delay).await;
            todo = retry;
        }
    }
}

/// A column as text per row (null stays `None`), for attributes and ordering keys.
fn text_column(rows: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, String> {
    let col = rows
        .column_by_name(name)
        .ok_or_else(|| format!("field `{name}` is not in the input"))?;
    let text = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
    let text = text.as_string::<i32>();
    Ok((0..text.len())
        .map(|i| (!text.is_null(i)).then(|| text.value(i).to_string()))
        .collect())
}

/// Deterministic row ids: `__sluice_id` when present, else a hash of (pipeline, transform,
/// payload). Equal input rows published by a rerun get equal ids.
pub fn row_ids(
    rows: &RecordBatch,
    pipeline: &str,
    transform: &str,
    payloads: &[Vec<u8>],
) -> Vec<String> {
    if let Some(ids) = rows
        .column_by_name(meta::ROW_ID)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    {
        return (0..ids.len())
            .map(|i| {
                if ids.is_null(i) {
                    content_id(pipeline, transform, &payloads[i])
                } else {
                    ids.value(i).to_string()
                }
            })
            .collect();
    }
    payloads
        .iter()
        .map(|p| content_id(pipeline, transform, p))
        .collect()
}

fn content_id(pipeline: &str, transform: &str, payload: &[u8]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(pipeline.as_bytes());
    h.update(&[0]);
    h.update(transform.as_bytes());
    h.update(&[0]);
    h.update(payload);
    format!("{:032x}", h.digest128())
}

/// Payloads of `rows` (user columns minus those published as attributes).
fn payloads(rows: &RecordBatch, format: Format) -> Result<Vec<Option<Vec<u8>>>, String> {
    match format {
        Format::Json => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                w.write(rows).map_err(|e| e.to_string())?;
                w.finish().map_err(|e| e.to_string())?;
            }
            let lines: Vec<Option<Vec<u8>>> = buf
                .split(|b| *b == b'\n')
                .take(rows.num_rows())
                .map(|l| Some(l.to_vec()))
                .collect();
            if lines.len() != rows.num_rows() {
                return Err("JSON encoding produced fewer lines than rows".into());
            }
            Ok(lines)
        }
        Format::Raw => {
            if rows.num_columns() != 1 {
                return Err(format!(
                    "`format: RAW` needs exactly one payload field besides the attributes, found {}",
                    rows.num_columns()
                ));
            }
            let col = rows.column(0);
            match col.data_type() {
                DataType::Binary => {
                    let a = col.as_binary::<i32>();
                    Ok((0..a.len())
                        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_vec()))
                        .collect())
                }
                _ => {
                    let text =
                        arrow::compute::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
                    let a = text.as_string::<i32>();
                    Ok((0..a.len())
                        .map(|i| (!a.is_null(i)).then(|| a.value(i).as_bytes().to_vec()))
                        .collect())
                }
            }
        }
    }
}

fn map_entries(rows: &RecordBatch, name: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let col = rows
        .column_by_name(name)
        .ok_or_else(|| format!("field `{name}` is not in the input"))?;
    let DataType::Map(_, _) = col.data_type() else {
        return Err(format!("`attributes_map` field `{name}` is not a map"));
    };
    let map = col.as_map();
    let keys = arrow::compute::cast(map.keys(), &DataType::Utf8).map_err(|e| e.to_string())?;
    let values = arrow::compute::cast(map.values(), &DataType::Utf8).map_err(|e| e.to_string())?;
    let (keys, values) = (keys.as_string::<i32>(), values.as_string::<i32>());
    let offsets = map.value_offsets();
    Ok((0..map.len())
        .map(|i| {
            if map.is_null(i) {
                return Vec::new();
            }
            (offsets[i] as usize..offsets[i + 1] as usize)
                .filter(|&j| !values.is_null(j))
                .map(|j| (keys.value(j).to_string(), values.value(j).to_string()))
                .collect()
        })
        .collect())
}

/// The messages of a batch with their routes (see `WriteToPubSub::publishers`), and the rows
/// that could not become one as `(row, reason)`.
type Messages = (Vec<(u32, Message)>, Vec<(usize, String)>);

impl WriteToPubSub {
    /// Builds the messages of `batch`; rows that cannot become a message are returned as
    /// `(row, reason)`.
    fn messages(&self, batch: &Batch) -> Result<Messages, String> {
        let user = batch.user_rows();
        let mut exclude: Vec<&str> = self.cfg.attributes.iter().map(String::as_str).collect();
        exclude.extend(self.cfg.attributes_map.as_deref());
        let keep: Vec<usize> = user
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !exclude.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let payload_rows = user.project(&keep).map_err(|e| e.to_string())?;
        let payloads = payloads(&payload_rows, self.cfg.format)?;
        let n = user.num_rows();
        let attrs: Vec<(String, Vec<Option<String>>)> = self
            .cfg
            .attributes
            .iter()
            .map(|a| text_column(&user, a).map(|v| (a.clone(), v)))
            .collect::<Result<_, _>>()?;
        let map = match &self.cfg.attributes_map {
            Some(m) => Some(map_entries(&user, m)?),
            None => None,
        };
        let keys = match &self.cfg.ordering_key {
            Some(k) => Some(text_column(&user, k)?),
            None => None,
        };
        let shard = match &self.cfg.shard {
            Some(s) => Some(shards(&user, &s.fields(), s.count)?),
            None => None,
        };
        let per_shard = is_per_shard(&self.cfg.topic.value);
        let full: Vec<Vec<u8>> = payloads
            .iter()
            .map(|p| p.clone().unwrap_or_default())
            .collect();
        let ids = row_ids(&batch.rows, &self.pipeline, &self.name, &full);
        let times = batch.event_times();
        let mut msgs = Vec::with_capacity(n);
        let mut bad = Vec::new();
        let dead_letters = error_record::is_error_schema(&payload_rows.schema());
        for (i, payload) in payloads.into_iter().enumerate() {
            let Some(mut payload) = payload else {
                bad.push((i, "the payload field is null".to_string()));
                continue;
            };
            let mut attributes: HashMap<String, String> = HashMap::new();
            if payload.len() > MAX_MESSAGE_BYTES {
                match self.cut(&payload_rows, i, payload.len(), dead_letters) {
                    Ok(t) => {
                        payload = t.payload.clone();
                        attributes.extend(t.attributes());
                    }
                    Err(e) => {
                        bad.push((i, e));
                        continue;
                    }
                }
            }
            if let Some(m) = &map {
                attributes.extend(m[i].iter().cloned());
            }
            for (a, v) in &attrs {
                if let Some(v) = &v[i] {
                    attributes.insert(a.clone(), v.clone());
                }
            }
            attributes.insert(ID_ATTRIBUTE.to_string(), ids[i].clone());
            if let Some(a) = &self.cfg.id_attribute {
                attributes.insert(a.clone(), ids[i].clone());
            }
            if let (Some(a), Some(t)) = (&self.cfg.timestamp_attribute, times)
                && !t.is_null(i)
            {
                attributes.insert(a.clone(), t.value(i).to_string());
            }
            let row_shard = shard.as_ref().map(|s| s[i]);
            if let Some(k) = row_shard {
                attributes.insert(SHARD_ATTRIBUTE.to_string(), k.to_string());
            }
            let mut m = Message::new().set_data(payload).set_attributes(attributes);
            if let Some(Some(k)) = keys.as_ref().map(|k| &k[i]) {
                m = m.set_ordering_key(k.clone());
            }
            let route = if per_shard { row_shard.unwrap_or(0) } else { 0 };
            msgs.push((route, m));
        }
        Ok((msgs, bad))
    }
}

impl WriteToPubSub {
    /// A message of `size` bytes made from row `i`: a dead letter is cut down to
    /// [`MAX_MESSAGE_BYTES`] (and marked); any other row is refused with the reason.
    fn cut(
        &self,
        payload_rows: &RecordBatch,
        i: usize,
        size: usize,
        dead_letters: bool,
    ) -> Result<error_record::Truncated, String> {
        let too_large = format!(
            "the message is {size} bytes; Pub/Sub accepts at most {MAX_MESSAGE_BYTES} (10 MB per publish request)"
        );
        if !dead_letters || self.cfg.format != Format::Json {
            return Err(too_large);
        }
        let row = crate::record::rows::to_json_rows(&payload_rows.slice(i, 1));
        let record = row.into_iter().next().ok_or_else(|| too_large.clone())?;
        let t = error_record::truncate(&record, MAX_MESSAGE_BYTES)
            .map_err(|e| format!("{too_large}; {e}"))?;
        tracing::warn!(
            transform = %self.name,
            original_bytes = t.original_bytes,
            message_bytes = size,
            sha256 = %t.sha256,
            "Dead-letter record too large for Pub/Sub: publishing it truncated"
        );
        Ok(t)
    }
}

#[async_trait]
impl Sink for WriteToPubSub {
    async fn write(
        &mut self,
        batch: Batch,
        _receipts: &mut Receipts,
        out: &mut Output,
    ) -> Result<Written, EngineError> {
        let (msgs, bad) = self
            .messages(&batch)
            .map_err(|e| EngineError::config(&self.name, e))?;
        if !bad.is_empty() {
            let rows = crate::record::rows::to_json_rows(&batch.user_rows());
            let failures = bad
                .into_iter()
                .map(|(i, e)| {
                    let element = rows
                        .get(i)
                        .map(|r| serde_json::Value::Object(r.clone()).to_string())
                        .unwrap_or_default();
                    (element, e)
                })
                .collect();
            self.errors.report(out, &batch, failures);
        }
        if msgs.is_empty() {
            return Ok(Written::Now);
        }
        self.ensure_publishers(&msgs).await?;
        self.publish_all(msgs).await?;
        // Every message is confirmed: the runner releases the batch's holds.
        Ok(Written::Now)
    }

    async fn on_end(&mut self, _receipts: &mut Receipts) -> Result<(), EngineError> {
        for p in self.publishers.values() {
            p.flush().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ids_are_deterministic_and_prefer_the_hidden_column() {
        let a = content_id("p", "w", b"{\"x\":1}");
        assert_eq!(a, content_id("p", "w", b"{\"x\":1}"));
        assert_ne!(a, content_id("p", "w2", b"{\"x\":1}"));
        let rows = RecordBatch::try_from_iter(vec![(
            meta::ROW_ID,
            Arc::new(StringArray::from(vec![Some("m-1"), None])) as _,
        )])
        .unwrap();
        let ids = row_ids(&rows, "p", "w", &[b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(ids[0], "m-1");
        assert_eq!(ids[1], content_id("p", "w", b"b"));
    }

    fn sink(config: &str) -> WriteToPubSub {
        let text = format!(
            "pipeline:\n  transforms:\n    - type: Create\n      name: In\n      config: {{elements: [{{recipe_id: r}}]}}\n    - type: WriteToPubSub\n      name: Out\n      input: In\n      config:\n{config}\n"
        );
        let spec = crate::config::parse("p.yaml", &text, &Default::default()).unwrap();
        let crate::config::TransformConfig::WriteToPubSub(c) = &spec.transforms[1].config else {
            panic!("{:?}", spec.transforms[1].config)
        };
        let errors = ErrorRoute::new("Out", None, Arc::default());
        WriteToPubSub::new("Out", "p", c, errors, Arc::default())
    }

    /// r0001..r0003 over 3 shards: 0, 2, 1 (pinned in `shard::tests`).
    fn batch() -> Batch {
        Batch::new(
            RecordBatch::try_from_iter(vec![
                (
                    "recipe_id",
                    Arc::new(StringArray::from(vec!["r0001", "r0002", "r0003"])) as _,
                ),
                (
                    meta::ROW_ID,
                    Arc::new(StringArray::from(vec!["m-1", "m-2", "m-3"])) as _,
                ),
            ])
            .unwrap(),
        )
    }

    fn attr<'a>(m: &'a Message, k: &str) -> &'a str {
        m.attributes.get(k).map(String::as_str).unwrap_or("-")
    }

    #[test]
    fn sharded_messages_carry_their_shard_and_id_on_one_topic() {
        let w = sink("        topic: t\n        shard: {by: [recipe_id], count: 3}");
        let (msgs, bad) = w.messages(&batch()).unwrap();
        assert!(bad.is_empty());
        let got: Vec<(u32, &str, &str)> = msgs
            .iter()
            .map(|(r, m)| (*r, attr(m, SHARD_ATTRIBUTE), attr(m, ID_ATTRIBUTE)))
            .collect();
        assert_eq!(got, [(0, "0", "m-1"), (0, "2", "m-2"), (0, "1", "m-3")]);
        assert_eq!(w.topic(2), "t");
    }

    #[test]
    fn per_shard_topics_route_each_message_to_its_shard() {
        let w = sink("        topic: out-{shard}\n        shard: {by: [recipe_id], count: 3}");
        let (msgs, _) = w.messages(&batch()).unwrap();
        let got: Vec<(u32, &str, String)> = msgs
            .iter()
            .map(|(r, m)| (*r, attr(m, SHARD_ATTRIBUTE), w.topic(*r)))
            .collect();
        assert_eq!(
            got,
            [
                (0, "0", "out-0".to_string()),
                (2, "2", "out-2".to_string()),
                (1, "1", "out-1".to_string())
            ]
        );
        // A key field the input lacks (unknown to `validate` here: Create has `recipe_id`
        // only in this test's YAML, not in the batch) fails the batch with the field named.
        let w = sink("        topic: out\n        shard: {by: [recipe_id], count: 3}");
        let other = Batch::new(
            RecordBatch::try_from_iter(vec![(
                "recipe",
                Arc::new(StringArray::from(vec!["r0001"])) as _,
            )])
            .unwrap(),
        );
        let e = w.messages(&other).unwrap_err();
        assert_eq!(
            e,
            "shard key `recipe_id` is not in the input (its fields: recipe)"
        );
    }
}
