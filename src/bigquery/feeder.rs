//! The feeder: `ReadFromBigQuery` with `high_water_mark`, reading the rows of a lake table that
//! are newer than a durable mark, once (bounded) or every `every` (periodic), so they can be
//! published (e.g. by `WriteToPubSub`) exactly in the effectively-once sense.
//!
//! Each poll runs `SELECT … WHERE column > mark ORDER BY column` ([`hwm::poll_sql`]). Every
//! emitted batch carries an acknowledgement hold ([`BatchHold`]); the runner releases it from the
//! sinks' outcomes, so its release as delivered means "published". The [`Tracker`] turns releases into the
//! largest mark whose rows were all published, and [`StateFile`] saves it atomically, under
//! the tracker's lock so saves happen in order. The next poll of the same run starts at what
//! was *read* (batches may still be in flight); a new run starts at what was *saved*. Rows
//! published after the last save are read again by the next run and get the same ids
//! ([`RowIds`]), which `WriteToPubSub` sends as the `sluice_id` attribute.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, StringArray};
use gcp_bigquery_client::Client;
use serde_json::Value;

use super::client::{self};
use super::config::ReadSource;
use super::hwm::{self, HighWaterMark, Mark, MarkKind, StateFile, Tracker};
use super::source::{Pager, ReadFromBigQuery, RowDecoder, table_sql};
use crate::pipeline::operator::{END_OF_TIME, EngineError, ErrorRoute, Output, SourceSink};
use crate::record::{Ack, AckSet, AckStatus, AckToken, Batch, Hold, Releaser, meta};
use crate::telemetry::progress::{self, ProgressLine};

/// How often a periodic feeder that waits for its next poll checks for a stop request.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// What the holds, the polling loop and the progress line share.
struct Shared {
    name: String,
    tracker: Mutex<Tracker>,
    kind: OnceLock<MarkKind>,
    state: StateFile,
    /// The last failed save (the run fails at its next poll; a bounded run logs it).
    save_error: Mutex<Option<String>>,
    read: AtomicU64,
    /// Rows the queries so far reported (for the bar of a bounded run).
    total: AtomicU64,
    /// A query answered (its row count is in `total`, possibly 0).
    answered: AtomicBool,
    periodic: bool,
}

impl Shared {
    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batch `seq` was released; saves the mark when that moved it.
    fn released(&self, seq: u64, ok: bool) {
        let mut t = self.tracker();
        if let Some(v) = t.released(seq, ok) {
            self.save(v);
        }
    }

    /// A query's last row had mark `last`.
    fn query_ended(&self, last: Value) {
        let mut t = self.tracker();
        if let Some(v) = t.query_ended(last) {
            self.save(v);
        }
    }

    /// Saves `value` (called with the tracker locked, so saves happen in commit order).
    fn save(&self, value: Value) {
        let Some(kind) = self.kind.get().copied() else {
            return;
        };
        let mark = Mark { kind, value };
        match self.state.save(&mark) {
            Ok(()) => {
                tracing::debug!(transform = %self.name, mark = %mark.display(), "Saved high-water mark")
            }
            Err(e) => {
                tracing::error!(transform = %self.name, error = %e, "Cannot save the high-water mark; the next run re-reads from the last saved one");
                *self.save_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
    }

    fn save_error(&self) -> Option<String> {
        self.save_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn mark_text(&self, t: &Tracker) -> String {
        match (t.committed(), self.kind.get()) {
            (Some(v), Some(kind)) => Mark {
                kind: *kind,
                value: v.clone(),
            }
            .display(),
            _ => "none yet".into(),
        }
    }

    fn progress_line(&self) -> String {
        let t = self.tracker();
        let published = t.published;
        let mark = self.mark_text(&t);
        let read = self.read.load(Ordering::Relaxed);
        if self.periodic {
            format!(
                "{}: {} rows published, {} in flight, mark {mark}",
                self.name,
                progress::thousands(published),
                progress::thousands(read.saturating_sub(published)),
            )
        } else {
            let total = self.total.load(Ordering::Relaxed).max(read);
            if !self.answered.load(Ordering::Relaxed) {
                return format!("{}: querying, mark {mark}", self.name);
            }
            format!(
                "{}: {} {}/{} rows published, mark {mark}",
                self.name,
                progress::bar(published, total, 24),
                progress::thousands(published),
                progress::thousands(total),
            )
        }
    }
}

/// The acknowledgement hold of one emitted batch: its release tells the tracker, which may save
/// the mark (an fsync, on the runner's release task, never in `Drop`).
struct BatchHold {
    seq: u64,
    shared: Arc<Shared>,
}

impl Hold for BatchHold {
    fn release(self: Box<Self>, status: AckStatus) {
        self.shared
            .released(self.seq, status == AckStatus::Delivered);
    }
}

/// Deterministic row ids: the hex xxh3-128 of (table, the row as JSON, how many identical rows
/// with the same mark value came before it). Rows are read in mark order and a re-read starts
/// at a mark boundary, so a re-read gives every row the id it had; identical rows are told
/// apart by their occurrence, and the map of seen rows is emptied at each new mark value.
pub struct RowIds {
    table: String,
    value: Option<Value>,
    seen: HashMap<u128, u32>,
}

impl RowIds {
    pub fn new(table: &str) -> Self {
        RowIds {
            table: table.to_string(),
            value: None,
            seen: HashMap::new(),
        }
    }

    /// The ids of `lines` (rows as JSON) with mark values `marks`.
    pub fn ids(&mut self, lines: &[Vec<u8>], marks: &[Value]) -> Vec<String> {
        lines
            .iter()
            .zip(marks)
            .map(|(line, mark)| {
                if self.value.as_ref() != Some(mark) {
                    self.value = Some(mark.clone());
                    self.seen.clear();
                }
                let n = self
                    .seen
                    .entry(xxhash_rust::xxh3::xxh3_128(line))
                    .or_insert(0);
                let occurrence = *n;
                *n += 1;
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(self.table.as_bytes());
                h.update(&[0]);
                h.update(line);
                h.update(&[0]);
                h.update(&occurrence.to_le_bytes());
                format!("{:032x}", h.digest128())
            })
            .collect()
    }
}

/// Runs the feeder until its input ends (bounded), a stop, or `--until-idle` (periodic).
///
/// # Errors
/// A configuration problem (no table, an unusable mark column or state file), a query that
/// fails, or a mark that could not be saved (periodic runs; the next poll reports it).
pub async fn run(
    src: &ReadFromBigQuery,
    hwm: &HighWaterMark,
    sink: &mut dyn SourceSink,
) -> Result<(), EngineError> {
    let name = src.name.as_str();
    let config = |e: String| EngineError::config(name, e);
    let ReadSource::Table(t) = &src.cfg.source else {
        return Err(config("`high_water_mark` reads a `table`".into()));
    };
    let project = match &t.project {
        Some(p) => p.clone(),
        None => client::default_project().map_err(config)?,
    };
    let table = format!("{project}.{}.{}", t.dataset, t.table);
    let state = StateFile::new(Path::new(&hwm.state.value), &table, &hwm.column.value);
    state.check_writable().map_err(config)?;
    let saved = state.load().map_err(config)?;
    let c = client::connect()
        .await
        .map_err(|e| EngineError::external(name, "cannot connect to BigQuery", e))?;
    let shared = Arc::new(Shared {
        name: name.to_string(),
        tracker: Mutex::new(Tracker::new(saved.as_ref().map(|m| m.value.clone()))),
        kind: OnceLock::new(),
        state,
        save_error: Mutex::default(),
        read: AtomicU64::new(0),
        total: AtomicU64::new(0),
        answered: AtomicBool::new(false),
        periodic: hwm.every.is_some(),
    });
    if let Some(m) = &saved {
        let _ = shared.kind.set(m.kind);
    }
    tracing::info!(
        transform = %name,
        table = %table,
        column = %hwm.column.value,
        mark = %saved.as_ref().map_or_else(|| "none (reading everything)".into(), Mark::display),
        state = %hwm.state.value,
        "Feeding rows past the high-water mark"
    );
    let progress = ProgressLine::start({
        let s = shared.clone();
        move || s.progress_line()
    });
    let mut poller = Poller {
        src,
        hwm,
        client: &c,
        project: &project,
        select: table_sql(&project, t, &src.cfg.fields, None),
        mark: saved,
        ids: RowIds::new(&table),
        shared: shared.clone(),
        releaser: sink.releaser(),
    };
    let outcome = poll_until_done(&mut poller, hwm, sink).await;
    let s = shared.clone();
    sink.defer(Box::pin(async move {
        if let Some(p) = progress {
            p.finish().await;
        }
        let t = s.tracker();
        tracing::info!(
            transform = %s.name,
            published = t.published,
            unreleased = t.outstanding(),
            mark = %s.mark_text(&t),
            "Feeder finished"
        );
        if let Some(e) = s.save_error() {
            tracing::error!(transform = %s.name, error = %e, "The last high-water mark was not saved");
        }
    }));
    outcome?;
    sink.watermark(END_OF_TIME).await
}

async fn poll_until_done(
    p: &mut Poller<'_>,
    hwm: &HighWaterMark,
    sink: &mut dyn SourceSink,
) -> Result<(), EngineError> {
    let mut last_rows = Instant::now();
    loop {
        if sink.stopping() {
            return Ok(());
        }
        let n = p.poll(sink).await?;
        if n > 0 {
            last_rows = Instant::now();
        }
        if let Some(e) = p.shared.save_error() {
            return Err(EngineError::External {
                transform: p.shared.name.clone(),
                message: format!("cannot save the high-water mark: {e}"),
                source: None,
            });
        }
        let Some(every) = hwm.every else {
            return Ok(());
        };
        if let Some(idle) = sink.until_idle()
            && n == 0
            && last_rows.elapsed() >= idle
        {
            return Ok(());
        }
        let next = Instant::now() + every;
        while Instant::now() < next {
            if sink.stopping() {
                return Ok(());
            }
            tokio::time::sleep(STOP_CHECK.min(next - Instant::now())).await;
        }
    }
}

/// One feeder's polling state.
struct Poller<'a> {
    src: &'a ReadFromBigQuery,
    hwm: &'a HighWaterMark,
    client: &'a Client,
    project: &'a str,
    select: String,
    /// Where the next poll starts: the last value read (not necessarily saved yet).
    mark: Option<Mark>,
    ids: RowIds,
    shared: Arc<Shared>,
    releaser: Releaser,
}

impl Poller<'_> {
    fn name(&self) -> &str {
        &self.src.name
    }

    /// The mark column's name in the result and its kind.
    fn mark_column(&self, pager: &Pager<'_>) -> Result<(String, MarkKind), EngineError> {
        let want = &self.hwm.column.value;
        let f = pager
            .fields()
            .iter()
            .find(|f| &f.name == want)
            .or_else(|| {
                pager
                    .fields()
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case(want))
            })
            .ok_or_else(|| {
                EngineError::config(
                    self.name(),
                    format!("the high-water mark column `{want}` is not in the table"),
                )
            })?;
        if f.mode.as_deref() == Some("REPEATED") {
            return Err(EngineError::config(
                self.name(),
                format!("the high-water mark column `{want}` is REPEATED"),
            ));
        }
        let kind =
            MarkKind::of(want, &f.r#type).map_err(|e| EngineError::config(self.name(), e))?;
        let known = *self.shared.kind.get_or_init(|| kind);
        if known != kind {
            return Err(EngineError::config(
                self.name(),
                format!(
                    "{} holds a {known:?} mark but column `{want}` is {kind:?}; delete the file to read everything again",
                    self.hwm.state.value
                ),
            ));
        }
        Ok((f.name.clone(), kind))
    }

    /// One query: emits every row past the mark, in mark order. Returns the rows read.
    async fn poll(&mut self, sink: &mut dyn SourceSink) -> Result<u64, EngineError> {
        let sql = hwm::poll_sql(
            &self.select,
            &self.hwm.column.value,
            self.mark.as_ref(),
            self.src.cfg.row_restriction.as_deref(),
        )
        .map_err(|e| EngineError::config(self.name(), e))?;
        let src = self.src;
        let fail = |e| src.query_failed(e, &sql);
        let mut pager = Pager::start(self.client, self.project, &sql, src.page_size())
            .await
            .map_err(fail)?;
        let mut decoder: Option<(RowDecoder, String, MarkKind)> = None;
        let mut counted_total = false;
        let mut last: Option<Value> = None;
        let mut n = 0u64;
        let mut out = Output::new(self.src.ports);
        while let Some(page) = pager.next().await.map_err(fail)? {
            if !counted_total && let Some(total) = pager.total_rows {
                self.shared.total.fetch_add(total, Ordering::Relaxed);
                self.shared.answered.store(true, Ordering::Relaxed);
                counted_total = true;
            }
            if page.rows.is_empty() {
                continue;
            }
            let (d, column, _) = match &mut decoder {
                Some(d) => d,
                None => {
                    let (column, kind) = self.mark_column(&pager)?;
                    let d = RowDecoder::new(pager.fields())
                        .map_err(|e| EngineError::internal(self.name(), e))?;
                    decoder.insert((d, column, kind))
                }
            };
            let decoded = d.decode(&page.rows, Some(column));
            let rows = page.rows.len() as u64;
            let ids = self.ids.ids(&decoded.lines, &decoded.marks);
            let seq = self
                .shared
                .tracker()
                .emitted(hwm::safe_within_query(&decoded.marks), rows);
            let hold: AckToken = Ack::new(
                BatchHold {
                    seq,
                    shared: self.shared.clone(),
                },
                &self.releaser,
            );
            let origin = Batch {
                rows: RecordBatch::new_empty(ErrorRoute::schema()),
                acks: AckSet::one(hold.clone()),
            };
            self.src.errors.report(&mut out, &origin, decoded.failures);
            drop(origin);
            if let Some(batch) = decoded.rows {
                let kept: StringArray = ids
                    .into_iter()
                    .zip(&decoded.good)
                    .filter(|(_, good)| **good)
                    .map(|(id, _)| Some(id))
                    .collect();
                let batch = crate::record::with_column(&batch, meta::ROW_ID, Arc::new(kept))
                    .map_err(|e| EngineError::internal(self.name(), e.to_string()))?;
                out.main(Batch {
                    rows: batch,
                    acks: AckSet::one(hold),
                });
            }
            crate::io::files::forward(&mut out, sink).await?;
            if let Some(v) = decoded.marks.last() {
                last = Some(v.clone());
            }
            n += rows;
            self.shared.read.fetch_add(rows, Ordering::Relaxed);
            if sink.stopping() {
                // A partly read query allows no more than its released batches do.
                return Ok(n);
            }
        }
        if let (Some(last), Some((_, _, kind))) = (last, decoder) {
            self.shared.query_ended(last.clone());
            self.mark = Some(Mark { kind, value: last });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn row_ids_are_stable_and_tell_identical_rows_apart() {
        let lines = |xs: &[&str]| xs.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        let rows = lines(&[r#"{"a":1,"t":1}"#, r#"{"a":1,"t":1}"#, r#"{"a":2,"t":2}"#]);
        let marks = vec![json!(1), json!(1), json!(2)];
        let first = RowIds::new("p.d.t").ids(&rows, &marks);
        assert_ne!(first[0], first[1], "identical rows get different ids");
        assert_eq!(
            first.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
        // Read again in other batches: the same ids.
        let mut again = RowIds::new("p.d.t");
        let mut ids = again.ids(&rows[..1], &marks[..1]);
        ids.extend(again.ids(&rows[1..], &marks[1..]));
        assert_eq!(ids, first);
        // A re-read from the mark boundary (value 2) gives row 3 its id again.
        assert_eq!(
            RowIds::new("p.d.t").ids(&rows[2..], &marks[2..]),
            first[2..]
        );
        // Another table, other ids.
        assert_ne!(RowIds::new("p.d.u").ids(&rows, &marks), first);
        assert_eq!(first[0].len(), 32);
    }
}
