//! Durable state of a `Combine` (`options.state` with a persistent backend; docs/guarantees.md).
//!
//! Without it, a Combine keeps the acknowledgement holds of everything it absorbed until the
//! window's panes are written, so a window can live no longer than Pub/Sub keeps the messages
//! leased. With it, the Combine checkpoints every `checkpoint_interval`, in one atomic commit
//! of the state store:
//! - the open windows that changed (their group keys, pane bookkeeping and accumulator states),
//! - the panes emitted but not yet written by every sink (re-emitted after a restart; sinks
//!   write them idempotently by their deterministic row id),
//! - the ids of the messages absorbed (`__sluice_id`), remembered for `dedupe_horizon`,
//! - the watermark and the layout (key and value types) the states were built with,
//!
//! and only then releases the holds of the input absorbed since the previous checkpoint, so the
//! messages are acknowledged. A message redelivered after that (a crash between commit and
//! acknowledgement, an expired lease, a router that republished it) has its id in the state and
//! is dropped; one absorbed after the last commit was never acknowledged and is absorbed again
//! into the restored state. Either way it is counted once.
//!
//! Keys in the namespace `{pipeline}/{transform}`: `meta`, `w/{end}/{start}` (one window),
//! `s` (all session groups), `o/{seq}` (an unwritten batch of panes or error records: its output
//! port, then the batch), `d/{id}` (a message id; the
//! value is its expiry in Unix milliseconds).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::pipeline::operator::{EngineError, EventTime};
use crate::record::{Ack, AckSet, AckStatus, AckToken, Batch, Hold, Releaser, meta};
use crate::sinks::retry::Backoff;
use crate::state::StateStore;

const META: &str = "meta";
const SESSIONS: &str = "s";
/// Bumped when the checkpoint format changes; a restore refuses another version.
const FORMAT: &str = "1";

/// How a Combine checkpoints: the store, and the run's failure flag (nothing is committed or
/// confirmed once the run failed).
#[derive(Clone)]
pub struct DurableConfig {
    pub store: Arc<dyn StateStore>,
    pub checkpoint_interval: Duration,
    pub dedupe_horizon: Duration,
    pub failed: Arc<AtomicBool>,
}

/// A checkpoint's content besides windows: what the Combine tells [`Durable::commit`].
pub struct Extra {
    pub watermark: EventTime,
    /// Key and value types the state was built with (`None` before the first batch).
    pub layout: Option<(Vec<DataType>, Vec<DataType>)>,
    pub windows: Vec<(String, Vec<u8>)>,
    pub sessions: Option<Option<Vec<u8>>>,
}

/// What a restore found.
#[derive(Default)]
pub struct Restored {
    pub watermark: Option<EventTime>,
    pub layout: Option<(Vec<DataType>, Vec<DataType>)>,
    /// (window end, start, on-time fired, state batches).
    pub windows: Vec<(EventTime, EventTime, bool, Vec<RecordBatch>)>,
    pub sessions: Option<Vec<RecordBatch>>,
    /// Unwritten panes and error records (output port, batch), to emit again.
    pub outputs: Vec<(usize, Batch)>,
}

pub struct Durable {
    cfg: DurableConfig,
    namespace: String,
    pub restored: bool,
    committed_watermark: Option<EventTime>,
    /// Holds of the input absorbed since the last commit.
    held: AckSet,
    /// Releases pane holds ([`Written`]: in-memory bookkeeping) where their last clone drops.
    releaser: Releaser,
    /// Message ids absorbed → expiry (Unix ms); `order` lists them by expiry for eviction.
    seen: HashMap<Arc<str>, i64>,
    order: VecDeque<(i64, Arc<str>)>,
    new_ids: Vec<(Arc<str>, i64)>,
    /// Windows (end, start) changed or dropped since the last commit.
    pub changed: BTreeSet<(EventTime, EventTime)>,
    pub sessions_changed: bool,
    /// Panes emitted since the last commit and not yet written.
    outputs: BTreeMap<u64, (u8, RecordBatch)>,
    /// Panes in the store, not yet confirmed written.
    persisted: BTreeSet<u64>,
    confirmed: Arc<Mutex<Vec<u64>>>,
    next_seq: u64,
    /// Rows dropped because their message id was absorbed before.
    pub duplicates: u64,
}

impl Durable {
    pub fn new(cfg: DurableConfig, pipeline: &str, transform: &str) -> Self {
        Durable {
            releaser: Releaser::inline(cfg.failed.clone()),
            cfg,
            namespace: format!("{pipeline}/{transform}"),
            restored: false,
            committed_watermark: None,
            held: AckSet::new(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            new_ids: Vec::new(),
            changed: BTreeSet::new(),
            sessions_changed: false,
            outputs: BTreeMap::new(),
            persisted: BTreeSet::new(),
            confirmed: Arc::default(),
            next_seq: 0,
            duplicates: 0,
        }
    }

    pub fn interval(&self) -> Duration {
        self.cfg.checkpoint_interval
    }

    /// Keeps the holds of `batch` until the next commit and drops its rows whose message id
    /// was absorbed before (rows of one message that arrive together, e.g. from `Explode`, are
    /// all kept). Rows without ids (file sources) are all kept.
    ///
    /// # Errors
    /// The row filter failed (an internal error).
    pub fn admit(&mut self, transform: &str, mut batch: Batch) -> Result<Batch, EngineError> {
        self.held.merge(std::mem::take(&mut batch.acks));
        let Some(ids) = batch
            .rows
            .column_by_name(meta::ROW_ID)
            .and_then(|c| c.as_string_opt::<i32>())
            .cloned()
        else {
            return Ok(batch);
        };
        let keep: BooleanArray = ids
            .iter()
            .map(|id| Some(id.is_none_or(|id| !self.seen.contains_key(id))))
            .collect();
        let expiry = now_ms().saturating_add(millis(self.cfg.dedupe_horizon));
        // One allocation per new id, shared by the set, the eviction queue and the next commit.
        for (id, kept) in ids.iter().zip(keep.values().iter()) {
            if let Some(id) = id.filter(|_| kept)
                && !self.seen.contains_key(id)
            {
                let id: Arc<str> = Arc::from(id);
                self.seen.insert(id.clone(), expiry);
                self.order.push_back((expiry, id.clone()));
                self.new_ids.push((id, expiry));
            }
        }
        let dropped = keep.false_count();
        if dropped == 0 {
            return Ok(batch);
        }
        self.duplicates += dropped as u64;
        tracing::debug!(
            transform,
            rows = dropped,
            "Dropped rows of messages already counted"
        );
        batch.rows = filter_record_batch(&batch.rows, &keep)
            .map_err(|e| EngineError::internal(transform, e.to_string()))?;
        Ok(batch)
    }

    /// A hold for an emitted pane batch: the pane is remembered (and checkpointed) until every
    /// sink wrote it, when the hold is released as delivered.
    pub fn emitted(&mut self, port: usize, rows: &RecordBatch) -> AckToken {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outputs
            .insert(seq, (u8::try_from(port).unwrap_or(u8::MAX), rows.clone()));
        self.written(seq)
    }

    fn written(&self, seq: u64) -> AckToken {
        Ack::new(
            Written {
                seq,
                confirmed: self.confirmed.clone(),
            },
            &self.releaser,
        )
    }

    /// Reads the checkpoint of this Combine (empty when there is none).
    ///
    /// # Errors
    /// The store failed after retries, or the checkpoint is unreadable.
    pub async fn load(&mut self, transform: &str) -> Result<Restored, EngineError> {
        let entries = retry(transform, &self.cfg.store, || {
            let store = self.cfg.store.clone();
            let ns = self.namespace.clone();
            async move { store.load(&ns).await }
        })
        .await?;
        self.restored = true;
        let bad = |what: &str, e: String| {
            EngineError::config(
                transform,
                format!(
                    "the checkpoint in {} ({what}) cannot be read: {e}; delete namespace `{}` to start afresh",
                    self.cfg.store.describe(),
                    self.namespace
                ),
            )
        };
        let mut r = Restored::default();
        let now = now_ms();
        let mut ids: Vec<(i64, Arc<str>)> = Vec::new();
        for (key, value) in entries {
            if key == META {
                let batches = decode(&value).map_err(|e| bad("meta", e))?;
                let schema = batches
                    .first()
                    .map(|b| b.schema())
                    .ok_or_else(|| bad("meta", "empty".into()))?;
                let md = schema.metadata();
                if md.get("format").map(String::as_str) != Some(FORMAT) {
                    return Err(bad(
                        "meta",
                        format!("format {:?}, expected {FORMAT}", md.get("format")),
                    ));
                }
                r.watermark = md.get("watermark").and_then(|w| w.parse().ok());
                let next = md.get("next_seq").and_then(|s| s.parse().ok()).unwrap_or(0);
                self.next_seq = self.next_seq.max(next);
                let types = |prefix: char| -> Vec<DataType> {
                    schema
                        .fields()
                        .iter()
                        .filter(|f| f.name().starts_with(prefix))
                        .map(|f| f.data_type().clone())
                        .collect()
                };
                if md.contains_key("layout") {
                    r.layout = Some((types('k'), types('a')));
                }
            } else if let Some(rest) = key.strip_prefix("w/") {
                let (end, start) = rest
                    .split_once('/')
                    .and_then(|(e, s)| Some((e.parse().ok()?, s.parse().ok()?)))
                    .ok_or_else(|| bad(&key, "not w/END/START".into()))?;
                let (flag, body) = value
                    .split_first()
                    .ok_or_else(|| bad(&key, "empty".into()))?;
                r.windows.push((
                    end,
                    start,
                    *flag == 1,
                    decode(body).map_err(|e| bad(&key, e))?,
                ));
            } else if key == SESSIONS {
                r.sessions = Some(decode(&value).map_err(|e| bad(&key, e))?);
            } else if let Some(seq) = key.strip_prefix("o/") {
                let seq: u64 = seq.parse().map_err(|_| bad(&key, "not o/SEQ".into()))?;
                // Already stored under `seq`: emitted again, and deleted once written.
                let (port, body) = value
                    .split_first()
                    .ok_or_else(|| bad(&key, "empty".into()))?;
                for rows in decode(body).map_err(|e| bad(&key, e))? {
                    let acks = AckSet::one(self.written(seq));
                    r.outputs.push((usize::from(*port), Batch { rows, acks }));
                }
                self.persisted.insert(seq);
                self.next_seq = self.next_seq.max(seq + 1);
            } else if let Some(id) = key.strip_prefix("d/") {
                let expiry = value
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i64::from_le_bytes);
                if expiry > now {
                    ids.push((expiry, Arc::from(id)));
                } else {
                    self.new_ids.push((Arc::from(id), i64::MIN));
                }
            }
        }
        ids.sort_unstable();
        for (expiry, id) in ids {
            self.seen.insert(id.clone(), expiry);
            self.order.push_back((expiry, id));
        }
        Ok(r)
    }

    /// Commits the checkpoint and then releases the holds of the input it contains.
    ///
    /// # Errors
    /// The store failed after retries: the run fails and what was not committed is redelivered.
    pub async fn commit(&mut self, transform: &str, extra: Extra) -> Result<(), EngineError> {
        if self.cfg.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut extra = extra;
        if extra.watermark == crate::pipeline::END_OF_TIME {
            // A drained input (`--until-idle`) fired every window; the next run is a new input
            // and must not find everything late: keep the last watermark of this one.
            extra.watermark = self.committed_watermark.unwrap_or(EventTime::MIN);
        }
        let meta = self
            .meta(&extra)
            .map_err(|e| EngineError::internal(transform, e))?;
        let mut puts = extra.windows;
        let mut deletes = Vec::new();
        for seq in std::mem::take(&mut *self.confirmed.lock().unwrap_or_else(|p| p.into_inner())) {
            if self.outputs.remove(&seq).is_none() && self.persisted.remove(&seq) {
                deletes.push(format!("o/{seq}"));
            }
        }
        for (seq, (port, rows)) in std::mem::take(&mut self.outputs) {
            let mut value = vec![port];
            value.extend(encode(&[rows]).map_err(|e| EngineError::internal(transform, e))?);
            puts.push((format!("o/{seq}"), value));
            self.persisted.insert(seq);
        }
        match extra.sessions {
            Some(Some(blob)) => puts.push((SESSIONS.into(), blob)),
            Some(None) => deletes.push(SESSIONS.into()),
            None => {}
        }
        for (id, expiry) in self.new_ids.drain(..) {
            if expiry == i64::MIN {
                deletes.push(format!("d/{id}"));
            } else {
                puts.push((format!("d/{id}"), expiry.to_le_bytes().to_vec()));
            }
        }
        let now = now_ms();
        while self.order.front().is_some_and(|(e, _)| *e <= now) {
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
                deletes.push(format!("d/{id}"));
            }
        }
        // Windows that were dropped since the last commit.
        for (end, start) in std::mem::take(&mut self.changed) {
            let key = window_key(end, start);
            if !puts.iter().any(|(k, _)| *k == key) {
                deletes.push(key);
            }
        }
        self.sessions_changed = false;
        // An idle pipeline writes nothing (the meta entry only changes with the watermark).
        if puts.is_empty()
            && deletes.is_empty()
            && self.held.is_empty()
            && self.committed_watermark == Some(extra.watermark)
        {
            return Ok(());
        }
        puts.push((META.into(), meta));
        let held = std::mem::take(&mut self.held);
        retry(transform, &self.cfg.store, || {
            let store = self.cfg.store.clone();
            let ns = self.namespace.clone();
            let (p, d) = (puts.clone(), deletes.clone());
            async move { store.commit(&ns, p, d).await }
        })
        .await?;
        self.committed_watermark = Some(extra.watermark);
        // Only now may the input absorbed into this checkpoint be acknowledged.
        held.release(AckStatus::Delivered);
        Ok(())
    }

    fn meta(&self, extra: &Extra) -> Result<Vec<u8>, String> {
        let mut fields = Vec::new();
        let mut md = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("watermark".to_string(), extra.watermark.to_string()),
            ("next_seq".to_string(), self.next_seq.to_string()),
        ]);
        if let Some((keys, values)) = &extra.layout {
            md.insert("layout".into(), "1".into());
            fields.extend(
                keys.iter()
                    .enumerate()
                    .map(|(i, t)| Field::new(format!("k{i}"), t.clone(), true)),
            );
            fields.extend(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Field::new(format!("a{i}"), t.clone(), true)),
            );
        }
        let schema = Arc::new(Schema::new_with_metadata(fields, md));
        encode(&[RecordBatch::new_empty(schema)])
    }
}

/// The store key of window `[start, end)`.
pub fn window_key(end: EventTime, start: EventTime) -> String {
    format!("w/{end}/{start}")
}

/// Encodes a window's state: its on-time flag, then its batches.
pub fn window_value(on_time_fired: bool, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut v = vec![u8::from(on_time_fired)];
    v.extend(encode(batches)?);
    Ok(v)
}

/// Batches as a sequence of length-prefixed Arrow IPC streams (one per batch, since the
/// batches of one checkpoint entry have different schemas).
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for b in batches {
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &b.schema()).map_err(|e| e.to_string())?;
            w.write(b).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
        }
        out.extend((buf.len() as u64).to_le_bytes());
        out.extend(buf);
    }
    Ok(out)
}

/// Reverses [`encode`].
pub fn decode(mut bytes: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_at_checked(8).ok_or("truncated length")?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| "bad length")?) as usize;
        let (body, rest) = rest.split_at_checked(len).ok_or("truncated batch")?;
        let mut reader =
            StreamReader::try_new(Cursor::new(body), None).map_err(|e| e.to_string())?;
        let schema = reader.schema();
        match reader.next() {
            Some(b) => out.push(b.map_err(|e| e.to_string())?),
            None => out.push(RecordBatch::new_empty(schema)),
        }
        bytes = rest;
    }
    Ok(out)
}

/// Confirms pane `seq` when every sink wrote it (released as delivered), unless the run failed
/// or the pane was given up: then it stays in the store and is emitted again after a restart.
/// In-memory only: the next commit deletes the pane.
struct Written {
    seq: u64,
    confirmed: Arc<Mutex<Vec<u64>>>,
}

impl Hold for Written {
    fn release(self: Box<Self>, status: AckStatus) {
        if status == AckStatus::Delivered {
            self.confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.seq);
        }
    }
}

pub(crate) async fn retry<T, F, Fut>(
    transform: &str,
    store: &Arc<dyn StateStore>,
    mut op: F,
) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::state::StateError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => match backoff.next_delay() {
                Some(d) => {
                    tracing::warn!(transform, store = %store.describe(), error = %e, "State store failed; retrying");
                    tokio::time::sleep(d).await;
                }
                None => {
                    return Err(EngineError::external(
                        transform,
                        format!("state store {} failed", store.describe()),
                        e,
                    ));
                }
            },
            Err(e) => return Err(EngineError::config(transform, e.to_string())),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;

    use super::*;

    #[test]
    fn entries_round_trip_batches_of_different_schemas_including_empty_ones() {
        let a = RecordBatch::try_from_iter([(
            "c0",
            Arc::new(Int64Array::from(vec![1, -2, i64::MAX])) as _,
        )])
        .unwrap();
        let b = RecordBatch::try_from_iter([(
            "c0",
            Arc::new(StringArray::from(vec![Some("x"), None])) as _,
        )])
        .unwrap();
        let empty = RecordBatch::new_empty(Arc::new(Schema::new(vec![Field::new(
            "k0",
            DataType::Utf8,
            true,
        )])));
        let bytes = encode(&[a.clone(), empty.clone(), b.clone()]).unwrap();
        assert_eq!(decode(&bytes).unwrap(), vec![a, empty, b]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        assert_eq!(window_key(120_000, 60_000), "w/120000/60000");
    }
}
