//! `Sql` per window: a query that needs more than one row (GROUP BY, aggregates, joins,
//! ORDER BY, LIMIT, window functions) over windowed input runs once per pane, over the rows of
//! that window — Beam SQL's behaviour (aggregation per window of the input's windowing).
//!
//! Rows are bucketed by window (and, for session windows, by the query's `GROUP BY` columns,
//! since sessions are per key) and buffered; state is bounded by the open windows. Panes fire
//! exactly as `Combine`'s: ON_TIME when the watermark reaches the window end, EARLY on the
//! `trigger.early_every` timer, LATE for data within the allowed lateness; data past it goes
//! to the error output. In discarding mode a pane sees the rows that arrived since the window's
//! last pane, in accumulating mode all of them. Before the query runs, each table's rows are
//! sorted by (event time, row content) and the query runs on one partition, so the result does
//! not depend on batch boundaries or arrival order. Output rows carry the window and pane
//! columns, event time window end − 1 ms, and a row id from (pipeline, transform, window,
//! key, pane) where the key is the session key and the output row's content.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionConfig;

mod output;

use super::operator::align;
use super::{clean, register, sql_options};
use crate::config::window::{WindowKind, Windowing};
use crate::pipeline::operator::{END_OF_TIME, EngineError, ErrorRoute, EventTime, Output};
use crate::pipeline::stats::WindowStats;
use crate::record::{AckSet, Batch, meta, rows, user_columns};
use crate::time::{SessionMerge, Window, assign, session_merge};
use crate::transforms::window::combine::PaneTiming;
use crate::transforms::window::lateness;

/// What a `Sql` transform on windowed input needs besides its query.
#[derive(Clone)]
pub struct WindowedSpec {
    /// The pipeline's name (part of every row id).
    pub pipeline: String,
    pub windowing: Windowing,
    /// Columns that key session windows (the query's `GROUP BY` columns); unused otherwise.
    pub session_key: Vec<String>,
    pub stats: Arc<WindowStats>,
}

/// (window end, window start, session key bytes): ordered by end, so that firing on a watermark
/// walks a prefix.
type PaneKey = (EventTime, EventTime, Vec<u8>);

/// The buffered rows of one window (and session key).
struct WindowRows {
    /// Per table: user columns plus event time, not yet in a pane (discarding) or all
    /// (accumulating).
    tables: BTreeMap<String, Vec<RecordBatch>>,
    pane_index: i64,
    on_time_fired: bool,
    /// Rows arrived since the last pane.
    dirty: bool,
    /// Acknowledgement holds of the rows not yet in an emitted pane.
    acks: AckSet,
    bytes: usize,
}

impl WindowRows {
    fn absorb(&mut self, mut other: WindowRows) {
        for (table, mut batches) in std::mem::take(&mut other.tables) {
            self.tables.entry(table).or_default().append(&mut batches);
        }
        self.pane_index = self.pane_index.max(other.pane_index);
        self.dirty |= other.dirty;
        self.on_time_fired |= other.on_time_fired;
        self.bytes += other.bytes;
        self.acks.merge(other.acks);
    }
}

/// Why a pane's query produced no rows.
enum QueryFailure {
    /// The query does not plan against the input (a configuration error).
    Plan(String),
    /// It failed while running on this pane's rows (bad data).
    Run(String),
}

pub struct PerWindow {
    name: String,
    pipeline: String,
    query: String,
    /// Distinct table names.
    names: Vec<String>,
    windowing: Windowing,
    session_key: Vec<String>,
    batch_size: usize,
    errors: ErrorRoute,
    state: BTreeMap<PaneKey, WindowRows>,
    /// Session windows per key (sessions only), to find the ones a new element merges with.
    sessions: HashMap<Vec<u8>, BTreeSet<Window>>,
    /// Last schema seen per table: a table with no rows in a pane is registered empty with it.
    schemas: BTreeMap<String, SchemaRef>,
    key_converter: Option<RowConverter>,
    watermark: EventTime,
    bytes: usize,
    stats: Arc<WindowStats>,
}

impl PerWindow {
    pub fn new(
        spec: WindowedSpec,
        query: &str,
        names: Vec<String>,
        batch_size: usize,
        errors: ErrorRoute,
    ) -> Self {
        PerWindow {
            name: errors.transform().to_string(),
            pipeline: spec.pipeline,
            query: query.to_string(),
            names,
            windowing: spec.windowing,
            session_key: spec.session_key,
            batch_size,
            errors,
            state: BTreeMap::new(),
            sessions: HashMap::new(),
            schemas: BTreeMap::new(),
            key_converter: None,
            watermark: EventTime::MIN,
            bytes: 0,
            stats: spec.stats,
        }
    }

    fn config_err(&self, msg: impl std::fmt::Display) -> EngineError {
        EngineError::config(
            &self.name,
            format!("query: {}", crate::expr::clean(msg.to_string())),
        )
    }

    fn internal(&self, msg: impl std::fmt::Display) -> EngineError {
        EngineError::internal(&self.name, msg.to_string())
    }

    fn publish(&self) {
        self.stats.set(self.state.len(), self.bytes);
    }

    fn is_sessions(&self) -> bool {
        matches!(self.windowing.kind, WindowKind::Sessions { .. })
    }

    /// Session keys of `rows` (the `GROUP BY` columns).
    fn session_keys(&mut self, rows: &RecordBatch) -> Result<Rows, EngineError> {
        let columns: Vec<ArrayRef> = self
            .session_key
            .iter()
            .map(|c| {
                rows.column_by_name(c).cloned().ok_or_else(|| {
                    self.config_err(format!(
                        "session windows are keyed by the GROUP BY columns, but `{c}` is not a column of the input ({})",
                        crate::expr::unknown_field(c, &rows.schema())
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if self.key_converter.is_none() {
            let fields = columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            self.key_converter = Some(RowConverter::new(fields).map_err(|e| self.config_err(e))?);
        }
        let converter = self.key_converter.as_ref().expect("set above");
        converter
            .convert_columns(&columns)
            .map_err(|e| self.config_err(format!("a GROUP BY column changed type: {e}")))
    }

    /// Buffers `batch` (a batch of table `table`) in its windows; fires LATE panes.
    ///
    /// # Errors
    /// No event times on a non-global windowing; a session key column missing.
    pub async fn process(
        &mut self,
        table: &str,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let kind = self.windowing.kind;
        let times: Vec<EventTime> = match batch.event_times() {
            Some(a) => (0..n)
                .map(|i| {
                    if a.is_null(i) {
                        EventTime::MIN
                    } else {
                        a.value(i)
                    }
                })
                .collect(),
            None if kind == WindowKind::Global => vec![EventTime::MIN; n],
            None => {
                return Err(self.config_err(
                    "a query per window needs event times: add `AssignTimestamps` before the Sql transform",
                ));
            }
        };
        // User columns and event time: what a pane's query and its canonical order need.
        let keep: Vec<usize> = batch
            .rows
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| !meta::is_hidden(f.name()) || f.name() == meta::EVENT_TIME)
            .map(|(i, _)| i)
            .collect();
        let rows = batch.rows.project(&keep).map_err(|e| self.internal(e))?;
        self.schemas.insert(table.to_string(), rows.schema());

        let mut failures: Vec<(String, String)> = Vec::new();
        let keys = if self.is_sessions() {
            Some(self.session_keys(&rows)?)
        } else {
            None
        };
        // (window, session key bytes) → rows.
        let mut buckets: BTreeMap<(Window, &[u8]), Vec<u32>> = BTreeMap::new();
        if let Some(keys) = &keys {
            let mut by_key: BTreeMap<arrow::row::Row<'_>, Vec<usize>> = BTreeMap::new();
            for i in 0..n {
                by_key.entry(keys.row(i)).or_default().push(i);
            }
            for (key, idx) in by_key {
                let mut live = Vec::with_capacity(idx.len());
                let mut protos = Vec::with_capacity(idx.len());
                for i in idx {
                    let w = assign(&kind, times[i])[0];
                    if lateness::rejects(&self.windowing, self.watermark, &w) {
                        failures.push((
                            rows::row_json(&rows, i),
                            lateness::late_message(&self.windowing, self.watermark, times[i], &w),
                        ));
                    } else {
                        live.push(i);
                        protos.push(w);
                    }
                }
                if live.is_empty() {
                    continue;
                }
                let targets = self.merge_into_sessions(key.data(), &protos);
                for (i, w) in live.into_iter().zip(targets) {
                    buckets.entry((w, key.data())).or_default().push(i as u32);
                }
            }
        } else {
            for (i, &t) in times.iter().enumerate() {
                let ws = assign(&kind, t);
                let mut any = false;
                for w in &ws {
                    if !lateness::rejects(&self.windowing, self.watermark, w) {
                        buckets.entry((*w, &[][..])).or_default().push(i as u32);
                        any = true;
                    }
                }
                if !any && let Some(w) = ws.last() {
                    failures.push((
                        rows::row_json(&rows, i),
                        lateness::late_message(&self.windowing, self.watermark, t, w),
                    ));
                }
            }
        }
        self.errors.report(out, &batch, failures);

        let wm = self.watermark;
        let mut touched_late = false;
        for ((w, key), idx) in buckets {
            let part = if idx.len() == n {
                rows.clone()
            } else {
                take_record_batch(&rows, &UInt32Array::from(idx)).map_err(|e| self.internal(e))?
            };
            let size = part.get_array_memory_size();
            let entry = self
                .state
                .entry((w.end, w.start, key.to_vec()))
                .or_insert_with(|| WindowRows {
                    tables: BTreeMap::new(),
                    pane_index: 0,
                    on_time_fired: w.end <= wm,
                    dirty: false,
                    acks: AckSet::new(),
                    bytes: 0,
                });
            entry
                .tables
                .entry(table.to_string())
                .or_default()
                .push(part);
            entry.dirty = true;
            entry.bytes += size;
            self.bytes += size;
            touched_late |= entry.on_time_fired;
            entry.acks.extend_from(&batch.acks);
        }
        if touched_late && self.windowing.late_panes {
            self.fire(out, |_, r| {
                (r.dirty && r.on_time_fired).then_some(PaneTiming::Late)
            })
            .await?;
        }
        self.publish();
        Ok(())
    }

    /// Merges the session windows of `key` that `protos` overlap; returns, per proto window,
    /// the merged window it now belongs to.
    fn merge_into_sessions(&mut self, key: &[u8], protos: &[Window]) -> Vec<Window> {
        let existing: Vec<Window> = self
            .sessions
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let SessionMerge { target, changed } = session_merge(&existing, protos);
        for (w, olds) in changed {
            // A new or grown session: it takes over the rows of the sessions it absorbed.
            let mut merged: Option<WindowRows> = None;
            for old in &olds {
                let Some(r) = self.state.remove(&(old.end, old.start, key.to_vec())) else {
                    continue;
                };
                merged = Some(match merged {
                    None => r,
                    Some(mut acc) => {
                        acc.absorb(r);
                        acc
                    }
                });
            }
            let set = self.sessions.entry(key.to_vec()).or_default();
            for old in &olds {
                set.remove(old);
            }
            set.insert(w);
            if let Some(mut r) = merged {
                r.on_time_fired = r.on_time_fired && w.end <= self.watermark;
                self.state.insert((w.end, w.start, key.to_vec()), r);
            }
        }
        target
    }

    /// Fires the windows selected by `pick`, in window order: runs the query over each one's
    /// rows and emits the result with the window and pane columns.
    async fn fire(
        &mut self,
        out: &mut Output,
        pick: impl Fn(&PaneKey, &WindowRows) -> Option<PaneTiming>,
    ) -> Result<(), EngineError> {
        let fired: Vec<(PaneKey, PaneTiming)> = self
            .state
            .iter()
            .filter_map(|(k, r)| pick(k, r).map(|t| (k.clone(), t)))
            .collect();
        let discarding = !self.windowing.accumulating;
        for (key, timing) in fired {
            let Some(r) = self.state.get_mut(&key) else {
                return Err(EngineError::internal(
                    &self.name,
                    "fired window has no state",
                ));
            };
            let pane = r.pane_index;
            r.pane_index += 1;
            r.dirty = false;
            if timing == PaneTiming::OnTime {
                r.on_time_fired = true;
            }
            let acks = std::mem::take(&mut r.acks);
            let tables = if discarding {
                self.bytes -= r.bytes;
                r.bytes = 0;
                std::mem::take(&mut r.tables)
            } else {
                r.tables.clone()
            };
            let w = Window::new(key.1, key.0);
            match self.run_query(&tables).await {
                Ok(Some(results)) => {
                    for result in results {
                        let rows = output::pane_rows(
                            (&self.pipeline, &self.name),
                            &result,
                            w,
                            &key.2,
                            pane,
                            timing,
                        )
                        .map_err(|e| self.internal(e))?;
                        out.main(Batch {
                            rows,
                            acks: acks.clone(),
                        });
                    }
                }
                Ok(None) => {}
                Err(QueryFailure::Plan(e)) => return Err(self.config_err(e)),
                Err(QueryFailure::Run(e)) => {
                    let msg = format!(
                        "the query failed on window [{}, {}) pane {pane}: {e}; every row of the pane was sent here",
                        lateness::fmt_time(w.start),
                        lateness::fmt_time(w.end),
                    );
                    let mut failures = Vec::new();
                    for batches in tables.values() {
                        for b in batches {
                            for i in 0..b.num_rows() {
                                failures.push((rows::row_json(b, i), msg.clone()));
                            }
                        }
                    }
                    let origin = Batch::merged(RecordBatch::new_empty(ErrorRoute::schema()), acks);
                    self.errors.report(out, &origin, failures);
                }
            }
        }
        Ok(())
    }

    /// Runs the query over one pane's tables. `Ok(None)`: a table has never received a row, so
    /// its schema (and the query's) is unknown.
    async fn run_query(
        &self,
        tables: &BTreeMap<String, Vec<RecordBatch>>,
    ) -> Result<Option<Vec<RecordBatch>>, QueryFailure> {
        let config = SessionConfig::new()
            .with_batch_size(self.batch_size)
            .with_target_partitions(1);
        let ctx = crate::expr::bounded::session(config);
        for name in &self.names {
            let batches = tables.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let (schema, data) = if batches.is_empty() {
                let Some(schema) = self.schemas.get(name) else {
                    tracing::warn!(transform = %self.name, table = %name, "Sql input received no rows yet; the pane produced no output");
                    return Ok(None);
                };
                let empty = RecordBatch::new_empty(schema.clone());
                let user = user_columns(&empty);
                (user.schema(), Vec::new())
            } else {
                let (schema, aligned) = align(batches).map_err(|e| {
                    QueryFailure::Plan(format!(
                        "the rows of table `{name}` do not share one schema: {e}"
                    ))
                })?;
                let all = concat_batches(&schema, &aligned)
                    .map_err(|e| QueryFailure::Plan(e.to_string()))?;
                let user = user_columns(&output::canonical_order(all));
                (user.schema(), vec![user])
            };
            let table =
                MemTable::try_new(schema, vec![data]).map_err(|e| QueryFailure::Plan(clean(e)))?;
            register(&ctx, name, Arc::new(table)).map_err(QueryFailure::Plan)?;
        }
        let frame = ctx
            .sql_with_options(&self.query, sql_options())
            .await
            .map_err(|e| QueryFailure::Plan(clean(e)))?;
        let results = frame
            .collect()
            .await
            .map_err(|e| QueryFailure::Run(clean(e)))?;
        Ok(Some(results))
    }

    /// Drops the state of windows past their allowed lateness.
    fn collect_garbage(&mut self) {
        let expired: Vec<PaneKey> = self
            .state
            .keys()
            .take_while(|k| k.0 <= self.watermark)
            .filter(|k| {
                lateness::is_expired(&self.windowing, self.watermark, &Window::new(k.1, k.0))
            })
            .cloned()
            .collect();
        for k in expired {
            if let Some(r) = self.state.remove(&k) {
                self.bytes -= r.bytes;
            }
            if let Some(set) = self.sessions.get_mut(&k.2) {
                set.remove(&Window::new(k.1, k.0));
                if set.is_empty() {
                    self.sessions.remove(&k.2);
                }
            }
        }
    }

    /// The input watermark advanced: ON_TIME panes for the windows it closed.
    pub async fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.watermark = self.watermark.max(watermark);
        let wm = self.watermark;
        let accumulating = self.windowing.accumulating;
        self.fire(out, |k, r| {
            (k.0 <= wm && !r.on_time_fired && (r.dirty || accumulating))
                .then_some(PaneTiming::OnTime)
        })
        .await?;
        // Windows that closed without new data since an early pane still count as fired.
        for (k, r) in self.state.iter_mut() {
            if k.0 > wm {
                break;
            }
            r.on_time_fired = true;
        }
        self.collect_garbage();
        self.publish();
        Ok(())
    }

    /// The early-pane timer: EARLY panes for open windows with new rows.
    pub async fn on_timer(&mut self, out: &mut Output) -> Result<(), EngineError> {
        let wm = self.watermark;
        self.fire(out, |k, r| {
            (r.dirty && !r.on_time_fired && k.0 > wm).then_some(PaneTiming::Early)
        })
        .await?;
        self.publish();
        Ok(())
    }

    pub async fn on_end(&mut self, out: &mut Output) -> Result<(), EngineError> {
        self.on_watermark(END_OF_TIME, out).await
    }

    /// `options.drain: keep`: open windows are not fired; their input is left for redelivery.
    pub fn drain_keep(&mut self) {
        let open = self.state.len();
        for r in self.state.values() {
            r.acks.abandon();
        }
        self.state.clear();
        self.sessions.clear();
        self.bytes = 0;
        self.publish();
        tracing::info!(transform = %self.name, windows = open, "Drain (keep): open windows left for redelivery");
    }
}
