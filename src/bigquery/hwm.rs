//! The high-water mark of `ReadFromBigQuery`'s feeder mode (Sluice extension
//! `high_water_mark: {column, state, every}`): its config, mark values and their SQL literals,
//! the commit bookkeeping ([`Tracker`]) and the durable state file ([`StateFile`]). Pure except
//! for the state file; the polling loop is in [`super::feeder`].
//!
//! A poll reads `column > mark ORDER BY column`. The mark may only move to a value `V` once
//! every row with `column <= V` was published (its batch's acknowledgement hold was released
//! without failure): batches are released in any order, so the tracker commits the latest safe
//! mark of the longest released prefix of emitted batches. Inside a query a batch's safe mark
//! is its largest value *below* its last value (rows equal to the last value may continue on
//! the next page); at the end of a query, the query's last value.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gcp_bigquery_client::model::field_type::FieldType;
use marked_yaml::Node;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::diag::{Pos, Reporter};
use crate::config::yaml::{Located, MapReader, pos_of};

/// `high_water_mark:` as written in the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct HighWaterMark {
    /// The column whose values only grow as rows are added (an update time, a sequence).
    pub column: Located<String>,
    /// The state file that keeps the committed mark across runs.
    pub state: Located<String>,
    /// Poll again after this long; `None` = one bounded run.
    pub every: Option<Duration>,
}

pub const HWM_KEYS: &[&str] = &["column", "state", "every"];

/// Reads `high_water_mark:` (a mapping).
pub fn parse(node: &Node, rep: &mut Reporter) -> Option<HighWaterMark> {
    let mut r = MapReader::new(Some(node), pos_of(node), "`high_water_mark`", HWM_KEYS, rep);
    let column = r.required_string("column", rep);
    let state = r.required_string("state", rep);
    let every = r.duration("every", rep);
    if every == Some(Duration::ZERO)
        && let Some(n) = r.node("every")
    {
        rep.error(
            pos_of(n),
            "`every` must be longer than 0",
            Some("omit `every` for one bounded run".into()),
        );
    }
    r.finish(rep);
    if let Some(s) = &state
        && s.value.trim().is_empty()
    {
        rep.error(
            s.pos,
            "`state` is empty",
            Some("a file path, e.g. /var/lib/sluice/lake-events.mark.json".into()),
        );
    }
    Some(HighWaterMark {
        column: column?,
        state: state?,
        every: every.filter(|d| !d.is_zero()),
    })
}

/// Checks `high_water_mark` against the rest of the read's config.
pub fn check(hwm: &HighWaterMark, fields: &[String], is_query: bool, at: Pos, rep: &mut Reporter) {
    if is_query {
        rep.error(
            at,
            "`high_water_mark` reads a `table`, not a `query`",
            Some("use `table:` with `row_restriction:` for the filter".into()),
        );
    }
    if !fields.is_empty() && !fields.contains(&hwm.column.value) {
        rep.error(
            hwm.column.pos,
            format!(
                "the high-water mark column `{}` is not among `fields`",
                hwm.column.value
            ),
            Some(format!("add `{}` to `fields`", hwm.column.value)),
        );
    }
}

/// The BigQuery types a mark column may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MarkKind {
    Timestamp,
    Datetime,
    Date,
    Int64,
    Numeric,
    String,
}

impl MarkKind {
    /// The mark kind of a column type.
    ///
    /// # Errors
    /// The type cannot serve as a mark (floats compare inexactly; booleans, records… do not
    /// grow).
    pub fn of(column: &str, t: &FieldType) -> Result<MarkKind, String> {
        match t {
            FieldType::Timestamp => Ok(MarkKind::Timestamp),
            FieldType::Datetime => Ok(MarkKind::Datetime),
            FieldType::Date => Ok(MarkKind::Date),
            FieldType::Integer | FieldType::Int64 => Ok(MarkKind::Int64),
            FieldType::Numeric | FieldType::Bignumeric => Ok(MarkKind::Numeric),
            FieldType::String => Ok(MarkKind::String),
            other => Err(format!(
                "the high-water mark column `{column}` is {}; use a TIMESTAMP, DATETIME, DATE, INT64, NUMERIC or STRING column",
                super::schema::type_name(other)
            )),
        }
    }
}

/// One value of the mark column, as [`super::source::row_to_json`] gives it (TIMESTAMP as int64
/// µs, INT64 as a number, the others as text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    #[serde(rename = "type")]
    pub kind: MarkKind,
    pub value: Value,
}

impl Mark {
    /// The value as a standard-SQL literal of the column's type.
    ///
    /// # Errors
    /// The value does not fit the kind (a corrupt state file).
    pub fn literal(&self) -> Result<String, String> {
        let text = || match &self.value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("mark {other} is not a {:?} value", self.kind)),
        };
        let quoted = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        Ok(match self.kind {
            MarkKind::Timestamp => {
                let us = self
                    .value
                    .as_i64()
                    .ok_or_else(|| format!("mark {} is not microseconds", self.value))?;
                format!("TIMESTAMP {}", quoted(&rfc3339_micros(us)?))
            }
            MarkKind::Int64 => {
                let n = self
                    .value
                    .as_i64()
                    .ok_or_else(|| format!("mark {} is not an integer", self.value))?;
                n.to_string()
            }
            MarkKind::Datetime => format!("DATETIME {}", quoted(&text()?)),
            MarkKind::Date => format!("DATE {}", quoted(&text()?)),
            MarkKind::Numeric => format!("NUMERIC {}", quoted(&text()?)),
            MarkKind::String => quoted(&text()?),
        })
    }

    /// The value for people (progress line, logs).
    pub fn display(&self) -> String {
        match (self.kind, self.value.as_i64()) {
            (MarkKind::Timestamp, Some(us)) => {
                rfc3339_micros(us).unwrap_or_else(|_| self.value.to_string())
            }
            _ => match &self.value {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            },
        }
    }
}

fn rfc3339_micros(us: i64) -> Result<String, String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .replace('T', " ")
        })
        .ok_or_else(|| format!("timestamp {us} µs is out of range"))
}

/// The `WHERE … ORDER BY` part of a poll: rows past `mark` (all non-null ones on the first
/// poll), in mark order, within `restriction`.
pub fn poll_sql(
    select: &str,
    column: &str,
    mark: Option<&Mark>,
    restriction: Option<&str>,
) -> Result<String, String> {
    let col = format!("`{}`", column.replace('`', ""));
    let mut conds = Vec::new();
    if let Some(r) = restriction.filter(|r| !r.trim().is_empty()) {
        conds.push(format!("({r})"));
    }
    match mark {
        Some(m) => conds.push(format!("{col} > {}", m.literal()?)),
        None => conds.push(format!("{col} IS NOT NULL")),
    }
    Ok(format!(
        "{select} WHERE {} ORDER BY {col}",
        conds.join(" AND ")
    ))
}

/// The mark a batch allows once it and every earlier batch were published: its largest value
/// below its last one (rows equal to the last value may continue on the next page). `values`
/// are the batch's mark values in query order (ascending).
pub fn safe_within_query(values: &[Value]) -> Option<Value> {
    let last = values.last()?;
    values.iter().rev().find(|v| *v != last).cloned()
}

/// What a batch released from the pipeline tells the tracker.
#[derive(Debug)]
struct Entry {
    seq: u64,
    /// The mark this batch allows (see [`safe_within_query`]); `None` = no progress.
    safe: Option<Value>,
    rows: u64,
    released: bool,
}

/// Commit bookkeeping: which emitted batches were released, and the mark their longest
/// released prefix allows. A failed or abandoned release stops commits for the rest of the run
/// (what follows may depend on what was not published).
#[derive(Debug, Default)]
pub struct Tracker {
    next_seq: u64,
    pending: VecDeque<Entry>,
    committed: Option<Value>,
    poisoned: bool,
    /// Rows of the released prefix (for progress).
    pub published: u64,
}

impl Tracker {
    pub fn new(committed: Option<Value>) -> Self {
        Tracker {
            next_seq: 0,
            pending: VecDeque::new(),
            committed,
            poisoned: false,
            published: 0,
        }
    }

    /// Registers an emitted batch of `rows` rows; returns its sequence number.
    pub fn emitted(&mut self, safe: Option<Value>, rows: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Entry {
            seq,
            safe,
            rows,
            released: false,
        });
        seq
    }

    /// A query ended after its last row had mark `last`: once everything emitted so far is
    /// released, the mark may move to `last`.
    pub fn query_ended(&mut self, last: Value) -> Option<Value> {
        let seq = self.emitted(Some(last), 0);
        self.released(seq, true)
    }

    /// Batch `seq` was released: published (`ok`) or not (the run failed, or output was kept
    /// unwritten). Returns the mark to commit when the released prefix moved it.
    pub fn released(&mut self, seq: u64, ok: bool) -> Option<Value> {
        if !ok {
            self.poisoned = true;
        }
        if let Some(e) = self.pending.iter_mut().find(|e| e.seq == seq) {
            e.released = true;
        }
        let mut best = None;
        while self.pending.front().is_some_and(|e| e.released) {
            let e = self.pending.pop_front().expect("front exists");
            self.published += e.rows;
            if e.safe.is_some() {
                best = e.safe;
            }
        }
        if self.poisoned {
            return None;
        }
        let best = best.filter(|b| self.committed.as_ref() != Some(b))?;
        self.committed = Some(best.clone());
        Some(best)
    }

    /// Batches emitted and not yet released.
    pub fn outstanding(&self) -> usize {
        self.pending.iter().filter(|e| !e.released).count()
    }

    pub fn committed(&self) -> Option<&Value> {
        self.committed.as_ref()
    }
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// `project.dataset.table` the mark belongs to.
    pub table: String,
    pub column: String,
    pub mark: Mark,
    /// When it was saved (RFC 3339), for people.
    pub saved_at: String,
}

/// The committed mark on disk: JSON, replaced atomically (write a temporary file in the same
/// directory, fsync it, rename it over the old one, fsync the directory), so a crash leaves
/// either the old or the new mark, never a torn one.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    table: String,
    column: String,
}

impl StateFile {
    pub fn new(path: &Path, table: &str, column: &str) -> Self {
        StateFile {
            path: path.to_path_buf(),
            table: table.to_string(),
            column: column.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved mark; `None` when there is no state file yet (the first run reads everything).
    ///
    /// # Errors
    /// The file is unreadable, not a Sluice mark, or belongs to another table or column.
    pub fn load(&self) -> Result<Option<Mark>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let saved: Saved = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a high-water mark file: {e}", self.path.display()))?;
        if saved.table != self.table || saved.column != self.column {
            return Err(format!(
                "{} holds the mark of {} column `{}`, not of {} column `{}`",
                self.path.display(),
                saved.table,
                saved.column,
                self.table,
                self.column
            ));
        }
        saved.mark.literal()?;
        Ok(Some(saved.mark))
    }

    /// Checks, before anything is read, that the mark can be saved (the directory exists or can
    /// be created, and is writable).
    ///
    /// # Errors
    /// Why not.
    pub fn check_writable(&self) -> Result<(), String> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let probe = self.tmp_path();
        std::fs::write(&probe, b"")
            .map_err(|e| format!("cannot write {}: {e}", probe.display()))?;
        std::fs::remove_file(&probe).map_err(|e| format!("cannot remove {}: {e}", probe.display()))
    }

    /// Saves `mark` atomically.
    ///
    /// # Errors
    /// An I/O error, with the path.
    pub fn save(&self, mark: &Mark) -> Result<(), String> {
        use std::io::Write;
        let saved = Saved {
            table: self.table.clone(),
            column: self.column.clone(),
            mark: mark.clone(),
            saved_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let text = serde_json::to_string_pretty(&saved).map_err(|e| e.to_string())?;
        let tmp = self.tmp_path();
        let fail =
            |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| fail("create", &tmp, e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .map_err(|e| fail("write", &tmp, e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| fail("replace", &self.path, e))?;
        // The rename is durable once the directory is synced (best effort: not every
        // filesystem lets a directory be opened for it).
        if let Ok(d) = std::fs::File::open(self.dir()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn tmp_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map_or_else(|| "mark".into(), |n| n.to_string_lossy().into_owned());
        self.dir()
            .join(format!(".{name}.tmp-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(v: i64) -> Mark {
        Mark {
            kind: MarkKind::Timestamp,
            value: json!(v),
        }
    }

    #[test]
    fn literals_per_type() {
        assert_eq!(
            ts(1_767_323_045_123_456).literal().unwrap(),
            "TIMESTAMP '2026-01-02 03:04:05.123456Z'"
        );
        let m = |kind, value| Mark { kind, value };
        assert_eq!(m(MarkKind::Int64, json!(42)).literal().unwrap(), "42");
        assert_eq!(
            m(MarkKind::Date, json!("2026-01-02")).literal().unwrap(),
            "DATE '2026-01-02'"
        );
        assert_eq!(
            m(MarkKind::String, json!("it's \\ here"))
                .literal()
                .unwrap(),
            r"'it\'s \\ here'"
        );
        assert_eq!(
            m(MarkKind::Numeric, json!("1.50")).literal().unwrap(),
            "NUMERIC '1.50'"
        );
        assert!(m(MarkKind::Int64, json!("x")).literal().is_err());
    }

    #[test]
    fn poll_queries() {
        let select = "SELECT * FROM `p.d.t`";
        assert_eq!(
            poll_sql(select, "at", None, None).unwrap(),
            "SELECT * FROM `p.d.t` WHERE `at` IS NOT NULL ORDER BY `at`"
        );
        assert_eq!(
            poll_sql(select, "at", Some(&ts(0)), Some("x > 1")).unwrap(),
            "SELECT * FROM `p.d.t` WHERE (x > 1) AND `at` > TIMESTAMP '1970-01-01 00:00:00.000000Z' ORDER BY `at`"
        );
    }

    #[test]
    fn a_batch_is_safe_below_its_last_value() {
        let v = |xs: &[i64]| xs.iter().map(|x| json!(x)).collect::<Vec<_>>();
        assert_eq!(safe_within_query(&v(&[1, 2, 2, 3, 3])), Some(json!(2)));
        assert_eq!(safe_within_query(&v(&[3, 3])), None);
        assert_eq!(safe_within_query(&v(&[])), None);
    }

    #[test]
    fn commits_follow_the_released_prefix() {
        let mut t = Tracker::new(None);
        let a = t.emitted(Some(json!(2)), 3);
        let b = t.emitted(None, 2);
        let c = t.emitted(Some(json!(5)), 2);
        // c before a and b: nothing may be committed yet.
        assert_eq!(t.released(c, true), None);
        assert_eq!(t.released(a, true), Some(json!(2)));
        assert_eq!(t.released(b, true), Some(json!(5)));
        assert_eq!(t.published, 7);
        // The end of the query allows its last value once everything before it is released.
        let d = t.emitted(None, 1);
        assert_eq!(t.query_ended(json!(6)), None);
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.released(d, true), Some(json!(6)));
        assert_eq!(t.outstanding(), 0);
        // The same mark again is not a new commit.
        assert_eq!(t.query_ended(json!(6)), None);
    }

    #[test]
    fn a_failed_release_stops_commits() {
        let mut t = Tracker::new(Some(json!(1)));
        let a = t.emitted(Some(json!(2)), 1);
        let b = t.emitted(Some(json!(3)), 1);
        assert_eq!(t.released(b, false), None);
        assert_eq!(t.released(a, true), None);
        assert_eq!(t.committed(), Some(&json!(1)));
    }

    #[test]
    fn state_file_round_trip_and_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/mark.json");
        let f = StateFile::new(&path, "p.d.t", "at");
        assert_eq!(f.load().unwrap(), None);
        f.check_writable().unwrap();
        f.save(&ts(7)).unwrap();
        assert_eq!(f.load().unwrap(), Some(ts(7)));
        f.save(&ts(9)).unwrap();
        assert_eq!(f.load().unwrap(), Some(ts(9)));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["mark.json"], "no temporary file left");
        let other = StateFile::new(&path, "p.d.other", "at");
        let e = other.load().unwrap_err();
        assert!(e.contains("not of p.d.other"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(
            f.load()
                .unwrap_err()
                .contains("is not a high-water mark file")
        );
    }
}
