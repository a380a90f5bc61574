//! File sinks on unbounded input: complete files as the stream goes, not one set at the end.
//!
//! - **Windowed input** (fixed, sliding or aggregated session windows): one file set per window
//!   pane, `PATH-START-END-PANE-SSSSS-of-NNNNN` (Beam Java's `FileIO` default naming, with the
//!   pane index always present). A window's set is committed when the sink's input watermark
//!   passes the window end: every pane an upstream aggregation fired for it arrived before that
//!   watermark. Rows that arrive for a window after its set was committed (LATE panes) start the
//!   next pane index and are committed at the next watermark advance or timer tick.
//! - **The global window**: the stream is cut into sets `PATH-N-SSSSS-of-NNNNN`, N = 0, 1, …,
//!   each committed when it holds `max_file_rows` rows or its first row is `max_file_age` old.
//!
//! Every method here does blocking file I/O; the operator ([`super::sink`]) runs them on tokio's
//! blocking pool. Committing hands back the rows' acknowledgement holds ([`Committed`]), which
//! the sink returns to the runner as delivered after the rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};

use super::files::{Committed, OpenWriter, ShardedFiles};
use crate::config::window::WindowKind;
use crate::pipeline::operator::{EngineError, EventTime};
use crate::pipeline::stats::SinkStats;
use crate::record::{Batch, meta, user_columns};
use crate::time::window::{Window, assign_into};

/// Rows per file set in the global window unless `max_file_rows` says otherwise: large enough
/// that a busy stream does not make thousands of small files, small enough to read in one go
/// (about 100-500 MB of JSON for typical events of 100-500 bytes).
pub const DEFAULT_MAX_FILE_ROWS: u64 = 1_000_000;
/// How long a global-window file set stays open unless `max_file_age` says otherwise: what a
/// reader waits at most for a row to appear (and Pub/Sub for its acknowledgement; leases are
/// extended meanwhile).
pub const DEFAULT_MAX_FILE_AGE: Duration = Duration::from_secs(300);

/// What a streaming file sink needs to know about its input and roll policy.
#[derive(Debug, Clone, Copy)]
pub struct StreamPolicy {
    pub kind: WindowKind,
    pub max_file_rows: u64,
    pub max_file_age: Duration,
}

/// Where and how a sink writes: shared by every set it opens.
struct Target {
    transform: String,
    path: String,
    num_shards: usize,
    open: Arc<OpenWriter>,
    stats: Arc<SinkStats>,
}

impl Target {
    fn set(&self, prefix: &str) -> ShardedFiles {
        ShardedFiles::new(
            &self.transform,
            prefix,
            self.num_shards,
            self.open.clone(),
            self.stats.clone(),
        )
    }
}

/// The state of a file sink on unbounded input.
pub struct StreamFiles {
    target: Target,
    mode: Mode,
}

enum Mode {
    Windowed(Panes),
    Rolling(Rolling),
}

/// Windowed input: one open set per window; pane numbers of windows that may still get rows.
struct Panes {
    kind: WindowKind,
    watermark: EventTime,
    open: BTreeMap<Window, ShardedFiles>,
    /// Sets committed per window, for the most recent [`REMEMBERED_WINDOWS`] windows: a late
    /// pane (or its replay) in this process gets the next index without a directory scan.
    committed: BTreeMap<Window, u64>,
}

/// Windows whose committed pane count a sink remembers: about 5 MB, 70 days of one-minute
/// windows; older windows are looked up on disk when late rows arrive for them.
const REMEMBERED_WINDOWS: usize = 100_000;

/// The global window: the current set, when its first row came, and the next set's number.
struct Rolling {
    max_rows: u64,
    max_age: Duration,
    current: Option<(ShardedFiles, Instant)>,
    /// `None` until the first set opens and the directory was scanned.
    next: Option<u64>,
}

impl StreamFiles {
    pub fn new(
        transform: &str,
        path: &str,
        num_shards: usize,
        open: Arc<OpenWriter>,
        stats: Arc<SinkStats>,
        policy: StreamPolicy,
    ) -> Self {
        let mode = if policy.kind == WindowKind::Global {
            Mode::Rolling(Rolling {
                max_rows: policy.max_file_rows.max(1),
                max_age: policy.max_file_age,
                current: None,
                next: None,
            })
        } else {
            Mode::Windowed(Panes {
                kind: policy.kind,
                watermark: EventTime::MIN,
                open: BTreeMap::new(),
                committed: BTreeMap::new(),
            })
        };
        StreamFiles {
            target: Target {
                transform: transform.to_string(),
                path: path.to_string(),
                num_shards: num_shards.max(1),
                open,
                stats,
            },
            mode,
        }
    }

    /// How often [`StreamFiles::tick`] should run.
    pub fn tick_interval(&self) -> Duration {
        match &self.mode {
            // A tenth of the age (at most a second late), at least 10 ms.
            Mode::Rolling(r) => (r.max_age / 10).clamp(Duration::from_millis(10), SECOND),
            Mode::Windowed(_) => SECOND,
        }
    }

    /// Writes `batch`; commits the sets it fills (global window).
    ///
    /// # Errors
    /// A file could not be written or committed, or rows in session windows are not aggregated.
    pub fn write(&mut self, batch: Batch, now: Instant) -> Result<Committed, EngineError> {
        let mut done = Committed::empty();
        match &mut self.mode {
            Mode::Windowed(p) => p.write(&self.target, batch)?,
            Mode::Rolling(r) => r.write(&self.target, batch, now, &mut done)?,
        }
        Ok(done)
    }

    /// The input watermark advanced: commits every window that ended.
    ///
    /// # Errors
    /// A set could not be committed.
    pub fn advance(&mut self, watermark: EventTime) -> Result<Committed, EngineError> {
        let mut done = Committed::empty();
        if let Mode::Windowed(p) = &mut self.mode {
            p.watermark = p.watermark.max(watermark);
            p.commit_ended(&mut done)?;
        }
        Ok(done)
    }

    /// A processing-time tick: commits a global-window set older than `max_file_age`, and the
    /// late panes of windows that already ended.
    ///
    /// # Errors
    /// A set could not be committed.
    pub fn tick(&mut self, now: Instant) -> Result<Committed, EngineError> {
        let mut done = Committed::empty();
        match &mut self.mode {
            Mode::Windowed(p) => p.commit_ended(&mut done)?,
            Mode::Rolling(r) => {
                if r.current
                    .as_ref()
                    .is_some_and(|(_, opened)| now.saturating_duration_since(*opened) >= r.max_age)
                {
                    r.commit(&mut done)?;
                }
            }
        }
        Ok(done)
    }

    /// A stop with `options.drain: keep`: open windows are left for the next run. Their sets are
    /// removed unwritten and their holds handed back, to be released as not written (so the
    /// messages are redelivered and the next run writes the whole window). A global-window set
    /// has no window to wait for: it is committed.
    ///
    /// # Errors
    /// A global-window set could not be committed.
    pub fn keep_open(&mut self) -> Result<(Committed, crate::record::AckSet), EngineError> {
        match &mut self.mode {
            Mode::Windowed(p) => {
                let mut abandoned = crate::record::AckSet::new();
                for (_, mut set) in std::mem::take(&mut p.open) {
                    abandoned.merge(set.discard());
                }
                Ok((Committed::empty(), abandoned))
            }
            Mode::Rolling(r) => {
                let mut done = Committed::empty();
                r.commit(&mut done)?;
                Ok((done, crate::record::AckSet::new()))
            }
        }
    }

    /// The input ended: commits every open set.
    ///
    /// # Errors
    /// A set could not be committed.
    pub fn finish(&mut self) -> Result<Committed, EngineError> {
        let mut done = Committed::empty();
        match &mut self.mode {
            Mode::Windowed(p) => {
                p.watermark = crate::pipeline::END_OF_TIME;
                p.commit_ended(&mut done)?;
            }
            Mode::Rolling(r) => r.commit(&mut done)?,
        }
        Ok(done)
    }
}

const SECOND: Duration = Duration::from_secs(1);

impl Panes {
    fn write(&mut self, target: &Target, batch: Batch) -> Result<(), EngineError> {
        let parts = split_by_window(&batch.rows, &self.kind)
            .map_err(|m| EngineError::config(&target.transform, m))?;
        for (window, rows) in parts {
            if !self.open.contains_key(&window) {
                let pane = self.pane_of(target, window)?;
                let prefix = pane_prefix(&target.path, window, pane);
                self.open.insert(window, target.set(&prefix));
            }
            let set = self.open.get_mut(&window).expect("inserted above");
            set.write(&user_columns(&rows))?;
            set.hold(batch.acks.clone());
        }
        Ok(())
    }

    /// The pane index of a new set for `window`: 0 while the window is open; after its end, one
    /// more than the sets committed for it (found on disk once this sink forgot them, e.g.
    /// after a restart), so a late pane never replaces a committed one.
    fn pane_of(&self, target: &Target, window: Window) -> Result<u64, EngineError> {
        if let Some(n) = self.committed.get(&window) {
            return Ok(*n);
        }
        if window.end > self.watermark {
            return Ok(0);
        }
        let stem = pane_stem(&target.path, window);
        Ok(highest_index(&target.path, &stem)
            .map_err(|e| scan_err(target, e))?
            .map_or(0, |n| n + 1))
    }

    fn commit_ended(&mut self, done: &mut Committed) -> Result<(), EngineError> {
        while let Some(entry) = self.open.first_entry() {
            // Sets are ordered by start, which for fixed and sliding windows (one size) is the
            // order of their ends; sessions differ in size and are scanned below.
            if entry.key().end > self.watermark {
                break;
            }
            let (window, mut set) = entry.remove_entry();
            done.extend(set.finish()?);
            *self.committed.entry(window).or_insert(0) += 1;
        }
        if matches!(self.kind, WindowKind::Sessions { .. }) {
            let ended: Vec<Window> = self
                .open
                .keys()
                .filter(|w| w.end <= self.watermark)
                .copied()
                .collect();
            for window in ended {
                if let Some(mut set) = self.open.remove(&window) {
                    done.extend(set.finish()?);
                    *self.committed.entry(window).or_insert(0) += 1;
                }
            }
        }
        while self.committed.len() > REMEMBERED_WINDOWS {
            self.committed.pop_first();
        }
        Ok(())
    }
}

impl Rolling {
    fn write(
        &mut self,
        target: &Target,
        batch: Batch,
        now: Instant,
        done: &mut Committed,
    ) -> Result<(), EngineError> {
        let rows = user_columns(&batch.rows);
        let mut offset = 0;
        while offset < rows.num_rows() {
            if self.current.is_none() {
                let n = match self.next {
                    Some(n) => n,
                    None => highest_index(&target.path, &target.path)
                        .map_err(|e| scan_err(target, e))?
                        .map_or(0, |n| n + 1),
                };
                self.next = Some(n + 1);
                self.current = Some((target.set(&format!("{}-{n}", target.path)), now));
            }
            let (set, _) = self.current.as_mut().expect("opened above");
            let room =
                usize::try_from(self.max_rows.saturating_sub(set.rows())).unwrap_or(usize::MAX);
            let len = room.min(rows.num_rows() - offset);
            set.write(&rows.slice(offset, len))?;
            set.hold(batch.acks.clone());
            offset += len;
            if set.rows() >= self.max_rows {
                self.commit(done)?;
            }
        }
        Ok(())
    }

    fn commit(&mut self, done: &mut Committed) -> Result<(), EngineError> {
        if let Some((mut set, _)) = self.current.take() {
            done.extend(set.finish()?);
        }
        Ok(())
    }
}

fn scan_err(target: &Target, e: std::io::Error) -> EngineError {
    EngineError::external(
        &target.transform,
        format!("cannot list the files of `{}`", target.path),
        e,
    )
}

/// An instant as Beam Java's `Instant.toString()` writes it: `2026-01-01T00:00:00.000Z`.
fn instant(ms: EventTime) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// `PATH-START-END`: the names of every pane of `window` start with it.
fn pane_stem(path: &str, window: Window) -> String {
    format!("{path}-{}-{}", instant(window.start), instant(window.end))
}

/// `PATH-START-END-PANE`; [`ShardedFiles`] appends `-SSSSS-of-NNNNN`.
pub fn pane_prefix(path: &str, window: Window, pane: u64) -> String {
    format!("{}-{pane}", pane_stem(path, window))
}

/// The highest N among files named `STEM-N-SSSSS-of-NNNNN` next to `path`, if any.
fn highest_index(path: &str, stem: &str) -> std::io::Result<Option<u64>> {
    let stem_path = Path::new(stem);
    let dir = match Path::new(path).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(stem_name) = stem_path.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut best = None;
    for entry in entries {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(stem_name))
            .and_then(index_of_name)
        {
            best = best.max(Some(n));
        }
    }
    Ok(best)
}

/// `-N-SSSSS-of-NNNNN` → N.
fn index_of_name(rest: &str) -> Option<u64> {
    let rest = rest.strip_prefix('-')?;
    let (n, shard) = rest.split_once('-')?;
    let digits = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    let (s, of) = shard.split_once("-of-")?;
    (digits(s, 5) && digits(of, 5) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Splits `rows` by window, in window order, keeping input order within a window: by the hidden
/// window columns of aggregated rows, else by the windows of each row's event time (a sliding
/// window's row goes to each of its windows, as in Beam).
///
/// # Errors
/// Rows without window columns in session windows (their sessions are known only after a
/// merge), or without event times.
pub fn split_by_window(
    rows: &RecordBatch,
    kind: &WindowKind,
) -> Result<Vec<(Window, RecordBatch)>, String> {
    let n = rows.num_rows();
    if n == 0 {
        return Ok(Vec::new());
    }
    let col = |name: &str| {
        rows.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
    };
    // Rows aggregated in the global window and windowed again afterwards (`WindowInto` passes
    // rows through) are placed by their event time, as Beam re-windows them.
    let aggregated = match (col(meta::WINDOW_START), col(meta::WINDOW_END)) {
        (Some(s), Some(e)) if !Window::new(s.value(0), e.value(0)).is_global() => Some((s, e)),
        _ => None,
    };
    let (starts, ends, idx): (Int64Array, Int64Array, UInt32Array) = match aggregated {
        Some((s, e)) => {
            let first = Window::new(s.value(0), e.value(0));
            if (1..n).all(|i| s.value(i) == first.start && e.value(i) == first.end) {
                return Ok(vec![(first, rows.clone())]);
            }
            (
                s.clone(),
                e.clone(),
                UInt32Array::from_iter_values(0..n as u32),
            )
        }
        None => {
            if matches!(kind, WindowKind::Sessions { .. }) {
                return Err(
                    "a file sink on a stream in session windows writes aggregated \
                         rows only (sessions are known after a Combine or Sql); aggregate \
                         first, or write the rows in fixed or global windows"
                        .into(),
                );
            }
            let ts = col(meta::EVENT_TIME).ok_or(
                "windowed rows reached a file sink without event times (assign them with \
                     AssignTimestamps or the source's timestamp_attribute)",
            )?;
            let (mut s, mut e, mut ix) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let mut buf = Vec::with_capacity(1);
            for i in 0..n {
                assign_into(kind, ts.value(i), &mut buf);
                for w in &buf {
                    s.push(w.start);
                    e.push(w.end);
                    ix.push(i as u32);
                }
            }
            (s.into(), e.into(), ix.into())
        }
    };
    let sorted = lexsort_to_indices(
        &[
            SortColumn {
                values: Arc::new(starts.clone()),
                options: None,
            },
            SortColumn {
                values: Arc::new(ends.clone()),
                options: None,
            },
            SortColumn {
                values: Arc::new(idx.clone()),
                options: None,
            },
        ],
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut run_start = 0;
    let window_at = |k: usize| {
        let i = sorted.value(k) as usize;
        Window::new(starts.value(i), ends.value(i))
    };
    for k in 1..=sorted.len() {
        if k < sorted.len() && window_at(k) == window_at(run_start) {
            continue;
        }
        let rows_of_run = UInt32Array::from_iter_values(
            (run_start..k).map(|j| idx.value(sorted.value(j) as usize)),
        );
        let part = take_record_batch(rows, &rows_of_run).map_err(|e| e.to_string())?;
        out.push((window_at(run_start), part));
        run_start = k;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(ids: &[&str], times: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new(meta::EVENT_TIME, DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
                Arc::new(Int64Array::from(times.to_vec())),
            ],
        )
        .unwrap()
    }

    fn ids(b: &RecordBatch) -> Vec<String> {
        let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        a.iter().map(|v| v.unwrap().to_string()).collect()
    }

    fn split(b: &RecordBatch, kind: WindowKind) -> Vec<(Window, Vec<String>)> {
        split_by_window(b, &kind)
            .unwrap()
            .iter()
            .map(|(w, r)| (*w, ids(r)))
            .collect()
    }

    #[test]
    fn rows_split_by_the_window_of_their_event_time_in_window_then_input_order() {
        let b = rows(
            &["a", "b", "c", "d", "e"],
            &[61_000, 5_000, -1, 59_999, 60_000],
        );
        let fixed = WindowKind::Fixed {
            size_ms: 60_000,
            offset_ms: 0,
        };
        assert_eq!(
            split(&b, fixed),
            vec![
                (Window::new(-60_000, 0), vec!["c".to_string()]),
                (Window::new(0, 60_000), vec!["b".into(), "d".into()]),
                (Window::new(60_000, 120_000), vec!["a".into(), "e".into()]),
            ]
        );
        let sliding = WindowKind::Sliding {
            size_ms: 60_000,
            period_ms: 30_000,
            offset_ms: 0,
        };
        let got = split(&rows(&["x"], &[45_000]), sliding);
        assert_eq!(
            got,
            vec![
                (Window::new(0, 60_000), vec!["x".to_string()]),
                (Window::new(30_000, 90_000), vec!["x".to_string()]),
            ]
        );
        assert!(split_by_window(&b, &WindowKind::Sessions { gap_ms: 1000 }).is_err());
    }

    #[test]
    fn aggregated_rows_split_by_their_window_columns() {
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new(meta::WINDOW_START, DataType::Int64, false),
                Field::new(meta::WINDOW_END, DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
                Arc::new(Int64Array::from(vec![0, 0, 0])),
                Arc::new(Int64Array::from(vec![10, 7, 10])),
            ],
        )
        .unwrap();
        // Session windows differ in end: ordered by start, then end.
        assert_eq!(
            split(&b, WindowKind::Sessions { gap_ms: 5 }),
            vec![
                (Window::new(0, 7), vec!["b".to_string()]),
                (Window::new(0, 10), vec!["a".into(), "c".into()]),
            ]
        );
        let one = b.slice(0, 1);
        assert_eq!(split_by_window(&one, &WindowKind::Global).unwrap().len(), 1);
    }

    #[test]
    fn names_follow_beams_windowed_naming_and_indices_parse_back() {
        let w = Window::new(1_767_225_600_000, 1_767_225_660_000);
        assert_eq!(
            pane_prefix("out/counts", w, 2),
            "out/counts-2026-01-01T00:00:00.000Z-2026-01-01T00:01:00.000Z-2"
        );
        assert_eq!(index_of_name("-12-00000-of-00001"), Some(12));
        assert_eq!(index_of_name("-00000-of-00001"), None, "bounded naming");
        assert_eq!(index_of_name("-3-00000-of-00001.inprogress"), None);
        assert_eq!(
            index_of_name("-2026-01-01T00:00:00.000Z-2026-01-01T00:01:00.000Z-0-00000-of-00001"),
            None,
            "a window pane is not a global-window set"
        );
    }

    #[test]
    fn the_highest_committed_index_is_found_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all");
        let path = path.to_str().unwrap();
        assert_eq!(highest_index(path, path).unwrap(), None);
        for name in [
            "all-0-00000-of-00001",
            "all-7-00000-of-00001",
            "all-9-00000-of-00001.inprogress",
            "all-00000-of-00001",
            "allx-8-00000-of-00001",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(highest_index(path, path).unwrap(), Some(7));
    }
}
