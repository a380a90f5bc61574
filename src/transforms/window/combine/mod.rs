//! `Combine`: grouped, windowed aggregation with incremental accumulators.
//!
//! Each batch is bucketed by (window, group key) and every bucket updates that group's
//! accumulators with one `update_batch` call. Windows fire on the watermark (ON_TIME), on a
//! processing-time timer (EARLY, `trigger.early_every`) and after late data (LATE, one pane per
//! batch and group); state is dropped once the watermark passes window end + allowed lateness.
//! Session windows merge accumulator states (`state` → `merge_batch`) when an element bridges
//! or overlaps them. Output rows hold only the group-by fields and the aggregates (Beam), plus
//! the hidden window, pane, event time (window end − 1 ms) and row id columns.

mod absorb;
mod checkpoint;
pub mod durable;
mod groups;
mod state;
mod windows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field};
use arrow::row::OwnedRow;
use async_trait::async_trait;

use state::{Group, GroupKey, Layout, StateBytes, emit_panes, key_of};
pub use state::{PaneTiming, row_id};
use windows::{Pick, WindowState, Windows, hash_rows};

use super::aggregate::AggSpec;
use super::lateness;
use crate::config::components::CombineField;
use crate::config::window::Windowing;
use crate::expr;
use crate::pipeline::operator::{
    END_OF_TIME, EngineError, ErrorRoute, EventTime, Operator, Output,
};
use crate::pipeline::stats::WindowStats;
use crate::record::{Batch, rows};
use crate::time::{SessionMerge, Window, assign_into, session_merge};
use crate::transforms::CompiledFor;

pub struct Combine {
    name: String,
    pipeline: String,
    group_by: Vec<String>,
    fields: Vec<CombineField>,
    /// Index into the compiled value expressions, per combine field (`None`: count of rows).
    value_index: Vec<Option<usize>>,
    values: CompiledFor,
    windowing: Windowing,
    errors: ErrorRoute,
    layout: Option<Layout>,
    state: BTreeMap<GroupKey, Group>,
    /// Fixed, sliding and global windows: vectorised state per open window.
    windows: Windows,
    /// Session windows per key (sessions only), to find the ones a new element merges with.
    sessions: HashMap<OwnedRow, BTreeSet<Window>>,
    watermark: EventTime,
    /// Estimated size of `state`, published with the group count to `/metrics`.
    bytes: StateBytes,
    stats: Arc<WindowStats>,
    /// Key and value types the layout was made from (checkpointed with the state).
    layout_types: Option<(Vec<DataType>, Vec<DataType>)>,
    /// Checkpointing to a state store (`options.state` with a persistent backend).
    durable: Option<durable::Durable>,
    next_early: Option<tokio::time::Instant>,
    next_checkpoint: Option<tokio::time::Instant>,
}

impl Combine {
    pub fn new(
        pipeline: &str,
        group_by: Vec<String>,
        fields: Vec<CombineField>,
        windowing: Windowing,
        errors: ErrorRoute,
        stats: Arc<WindowStats>,
    ) -> Self {
        let mut specs = Vec::new();
        let value_index = fields
            .iter()
            .map(|f| {
                f.value.as_ref().map(|v| {
                    specs.push(v.clone());
                    specs.len() - 1
                })
            })
            .collect();
        Combine {
            name: errors.transform().to_string(),
            pipeline: pipeline.to_string(),
            group_by,
            fields,
            value_index,
            values: CompiledFor::new(specs),
            windowing,
            errors,
            layout: None,
            state: BTreeMap::new(),
            windows: Windows::new(),
            sessions: HashMap::new(),
            watermark: EventTime::MIN,
            bytes: StateBytes::default(),
            stats,
            layout_types: None,
            durable: None,
            next_early: None,
            next_checkpoint: None,
        }
    }

    /// Checkpoints the state to `cfg.store` and lets the input be acknowledged once it is
    /// checkpointed (see `durable.rs`).
    pub fn with_durable(mut self, cfg: durable::DurableConfig) -> Self {
        self.durable = Some(durable::Durable::new(cfg, &self.pipeline, &self.name));
        self
    }

    /// Rows dropped because their message was already absorbed (durable state only).
    pub fn duplicates(&self) -> u64 {
        self.durable.as_ref().map_or(0, |d| d.duplicates)
    }

    /// Publishes the state's size (after every call that may have changed it).
    fn publish(&self) {
        debug_assert_eq!(
            self.bytes.0,
            StateBytes::recount(&self.state),
            "running state size drifted"
        );
        let (groups, bytes) = self
            .windows
            .values()
            .fold((0, 0), |(g, b), w| (g + w.groups(), b + w.bytes));
        self.stats
            .set(self.state.len() + groups, self.bytes.0 + bytes);
    }

    fn config_err(&self, msg: impl Into<String>) -> EngineError {
        EngineError::config(&self.name, msg)
    }

    fn internal(&self, msg: impl std::fmt::Display) -> EngineError {
        EngineError::internal(&self.name, msg.to_string())
    }

    /// Key columns of `rows` (a constant column when `group_by` is empty).
    fn key_columns(&self, rows: &RecordBatch) -> Result<Vec<ArrayRef>, EngineError> {
        if self.group_by.is_empty() {
            return Ok(vec![Arc::new(BooleanArray::from(vec![
                true;
                rows.num_rows()
            ]))]);
        }
        self.group_by
            .iter()
            .map(|g| {
                rows.column_by_name(g).cloned().ok_or_else(|| {
                    self.config_err(format!(
                        "group_by: {}",
                        expr::unknown_field(g, &rows.schema())
                    ))
                })
            })
            .collect()
    }

    fn ensure_layout(&mut self, keys: &[ArrayRef], values: &[ArrayRef]) -> Result<(), EngineError> {
        if self.layout.is_some() {
            return Ok(());
        }
        let key_types = keys.iter().map(|k| k.data_type().clone()).collect();
        let value_types = self
            .value_index
            .iter()
            .map(|vi| {
                vi.and_then(|i| values.get(i))
                    .map_or(DataType::Int64, |v| v.data_type().clone())
            })
            .collect();
        self.make_layout(key_types, value_types)
    }

    /// The layout for keys and values (one type per combine field) of these types.
    fn make_layout(
        &mut self,
        key_types: Vec<DataType>,
        value_types: Vec<DataType>,
    ) -> Result<(), EngineError> {
        let synthetic = self.group_by.is_empty();
        let key_fields = if synthetic {
            vec![Field::new("__key", DataType::Boolean, true)]
        } else {
            self.group_by
                .iter()
                .zip(&key_types)
                .map(|(n, t)| Field::new(n, t.clone(), true))
                .collect()
        };
        let mut specs = Vec::with_capacity(self.fields.len());
        for (f, ty) in self.fields.iter().zip(&value_types) {
            let spec = AggSpec::new(f.func, ty)
                .map_err(|e| self.config_err(format!("`{}`: {e}", f.output)))?;
            specs.push(spec);
        }
        let outputs = self.fields.iter().map(|f| f.output.clone()).collect();
        self.layout =
            Some(Layout::new(key_fields, synthetic, specs, outputs).map_err(|e| self.internal(e))?);
        self.layout_types = Some((key_types, value_types));
        Ok(())
    }

    fn is_expired(&self, w: &Window) -> bool {
        lateness::is_expired(&self.windowing, self.watermark, w)
    }

    fn rejects(&self, w: &Window) -> bool {
        lateness::rejects(&self.windowing, self.watermark, w)
    }

    fn late_message(&self, ts: EventTime, w: &Window) -> String {
        lateness::late_message(&self.windowing, self.watermark, ts, w)
    }

    /// Fires the groups selected by `pick` with `timing` into `out`.
    fn fire(
        &mut self,
        out: &mut Output,
        pick: impl Fn(&GroupKey, &Group) -> Option<PaneTiming>,
    ) -> Result<(), EngineError> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        let fired: Vec<(GroupKey, PaneTiming)> = self
            .state
            .iter()
            .filter_map(|(k, g)| pick(k, g).map(|t| (k.clone(), t)))
            .collect();
        let discarding = !self.windowing.accumulating;
        let emitted = emit_panes(
            layout,
            &mut self.state,
            &fired,
            (&self.pipeline, &self.name),
            discarding,
        )
        .map_err(|e| EngineError::internal(&self.name, e))?;
        for (k, _) in &fired {
            if let Some(g) = self.state.get_mut(k) {
                self.bytes.update(k, g);
            }
        }
        if let Some((rows, mut acks)) = emitted {
            if let Some(d) = &mut self.durable {
                d.sessions_changed = true;
                acks.insert(d.emitted(0, &rows));
            }
            out.main(Batch { rows, acks });
        }
        Ok(())
    }

    /// Fires the windows (fixed, sliding, global) selected by `pick` into `out`, as one batch
    /// ordered by window end, start and key bytes.
    fn fire_windows(
        &mut self,
        out: &mut Output,
        pick: impl Fn(&WindowState) -> Option<(PaneTiming, Pick)>,
    ) -> Result<(), EngineError> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        let discarding = !self.windowing.accumulating;
        let mut batches = Vec::new();
        let mut acks = crate::record::AckSet::new();
        for (key, w) in self.windows.iter_mut() {
            let Some((timing, which)) = pick(w) else {
                continue;
            };
            if let Some(d) = &mut self.durable {
                d.changed.insert(*key);
            }
            let ids = (self.pipeline.as_str(), self.name.as_str());
            if let Some(b) = w
                .emit(layout, which, timing, ids, discarding, &mut acks)
                .map_err(|e| EngineError::internal(&self.name, e))?
            {
                batches.push(b);
            }
            w.recount();
        }
        let rows = match batches.len() {
            0 => return Ok(()),
            1 => batches.swap_remove(0),
            _ => arrow::compute::concat_batches(&layout.schema, &batches)
                .map_err(|e| EngineError::internal(&self.name, e.to_string()))?,
        };
        if let Some(d) = &mut self.durable {
            acks.insert(d.emitted(0, &rows));
        }
        out.main(Batch { rows, acks });
        Ok(())
    }

    /// The vectorised path (all but session windows): rows are bucketed by window, each
    /// window's group table gives every row its group index, and every aggregation is updated
    /// once per window and batch.
    fn process_windows(
        &mut self,
        r: Prepared<'_>,
        mut failures: Vec<(String, String)>,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let n = r.rows.num_rows();
        // Rows per window, windows in order of first appearance.
        let mut buckets: Vec<(Window, Vec<u32>)> = Vec::new();
        let mut slot: HashMap<Window, usize> = HashMap::new();
        let mut last = usize::MAX;
        let mut ws = Vec::with_capacity(4);
        for i in (0..n).filter(|&i| r.ok[i]) {
            assign_into(&self.windowing.kind, r.times[i], &mut ws);
            let mut any = false;
            for w in &ws {
                if self.rejects(w) {
                    continue;
                }
                any = true;
                if last >= buckets.len() || buckets[last].0 != *w {
                    last = *slot.entry(*w).or_insert_with(|| {
                        buckets.push((*w, Vec::new()));
                        buckets.len() - 1
                    });
                }
                buckets[last].1.push(i as u32);
            }
            if !any && let Some(w) = ws.last() {
                failures.push((rows::row_json(r.rows, i), self.late_message(r.times[i], w)));
            }
        }
        self.errors.report(out, r.batch, failures);

        let hashes = hash_rows(r.keys);
        let layout = self
            .layout
            .as_ref()
            .ok_or_else(|| EngineError::internal(&self.name, "no layout"))?;
        let internal = |e: String| EngineError::internal(&self.name, e);
        let mut groups = Vec::new();
        let mut touched_late = false;
        // With durable state the checkpoint holds the input, not the windows.
        let none = crate::record::AckSet::new();
        let acks: &crate::record::AckSet = if self.durable.is_some() {
            &none
        } else {
            &r.batch.acks
        };
        for (w, idx) in buckets {
            let key = (w.end, w.start);
            if let Some(d) = &mut self.durable {
                d.changed.insert(key);
            }
            let state = match self.windows.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(
                    WindowState::new(w, layout, w.end <= self.watermark).map_err(internal)?,
                ),
            };
            state.group_indices(r.keys, &hashes, &idx, &mut groups);
            let parts: Vec<ArrayRef> = if idx.len() == n {
                r.inputs.to_vec()
            } else {
                let idx = UInt32Array::from(idx);
                r.inputs
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None).map_err(|e| internal(e.to_string())))
                    .collect::<Result<_, _>>()?
            };
            state.update(&parts, &groups, acks).map_err(internal)?;
            state.recount();
            touched_late |= state.on_time_fired;
        }
        if touched_late && self.windowing.late_panes {
            self.fire_windows(out, |s| {
                (s.on_time_fired && s.has_dirty()).then_some((PaneTiming::Late, Pick::Dirty))
            })?;
        }
        self.publish();
        Ok(())
    }

    /// Drops the state of windows past their allowed lateness.
    fn collect_garbage(&mut self) {
        let expired: Vec<(EventTime, EventTime)> = self
            .windows
            .iter()
            .take_while(|(k, _)| k.0 <= self.watermark)
            .filter(|(_, w)| self.is_expired(&w.window))
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            self.windows.remove(&k);
            if let Some(d) = &mut self.durable {
                d.changed.insert(k);
            }
        }
        let expired: Vec<GroupKey> = self
            .state
            .keys()
            .take_while(|k| k.0 <= self.watermark)
            .filter(|k| self.is_expired(&state::window_of(k)))
            .cloned()
            .collect();
        for k in expired {
            if let Some(g) = self.state.remove(&k) {
                self.bytes.remove(&g);
                if let Some(d) = &mut self.durable {
                    d.sessions_changed = true;
                }
            }
            if let Some(set) = self.sessions.get_mut(&k.2) {
                set.remove(&state::window_of(&k));
                if set.is_empty() {
                    self.sessions.remove(&k.2);
                }
            }
        }
    }

    /// Merges the session windows of `key` that `proto` windows touch; returns, per proto
    /// window, the merged window it now belongs to.
    fn merge_into_sessions(
        &mut self,
        key: &OwnedRow,
        protos: &[Window],
    ) -> Result<Vec<Window>, EngineError> {
        let existing: Vec<Window> = self
            .sessions
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let SessionMerge { target, changed } = session_merge(&existing, protos);
        for (w, olds) in changed {
            // A new or grown session: merge the states of the windows it absorbed.
            let mut group: Option<Group> = None;
            for old in &olds {
                let Some(g) = self.state.remove(&key_of(*old, key.clone())) else {
                    continue;
                };
                self.bytes.remove(&g);
                group = Some(match group {
                    None => g,
                    Some(mut acc) => {
                        merge_group(&mut acc, g)
                            .map_err(|e| EngineError::internal(&self.name, e))?;
                        acc
                    }
                });
            }
            let set = self.sessions.entry(key.clone()).or_default();
            for old in &olds {
                set.remove(old);
            }
            set.insert(w);
            if let Some(mut g) = group {
                g.on_time_fired = g.on_time_fired && w.end <= self.watermark;
                let gk = key_of(w, key.clone());
                g.bytes = 0;
                self.bytes.update(&gk, &mut g);
                self.state.insert(gk, g);
            }
        }
        Ok(target)
    }
}

/// One batch, prepared for aggregation (rows that failed evaluation removed).
struct Prepared<'a> {
    batch: &'a Batch,
    rows: &'a RecordBatch,
    /// One prepared input column per aggregation.
    inputs: &'a [ArrayRef],
    /// Rows whose inputs converted (the others are already error rows).
    ok: &'a [bool],
    keys: &'a arrow::row::Rows,
    times: &'a [EventTime],
}

/// Folds `other`'s accumulator states into `into` (session merging).
fn merge_group(into: &mut Group, mut other: Group) -> Result<(), String> {
    for (a, b) in into.accs.iter_mut().zip(other.accs.iter_mut()) {
        let state: Vec<ArrayRef> = b
            .state()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|s| s.to_array())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        a.merge_batch(&state).map_err(|e| e.to_string())?;
    }
    into.pane_index = into.pane_index.max(other.pane_index);
    into.dirty |= other.dirty;
    into.on_time_fired |= other.on_time_fired;
    into.acks.merge(std::mem::take(&mut other.acks));
    Ok(())
}

#[async_trait]
impl Operator for Combine {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.restore_once(out).await?;
        let Some(d) = &mut self.durable else {
            return self.absorb(batch, out);
        };
        let batch = d.admit(&self.name, batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let result = self.absorb(batch, out);
        // Error records are checkpointed like panes: the input's id is in the checkpoint, so a
        // redelivery is dropped, and the record must not be lost if the worker dies first.
        if let Some(d) = &mut self.durable {
            out.for_each_mut(|port, b| {
                if port != 0 {
                    b.acks.insert(d.emitted(port, &b.rows));
                }
            });
        }
        result
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.restore_once(out).await?;
        self.watermark = self.watermark.max(watermark);
        let wm = self.watermark;
        let accumulating = self.windowing.accumulating;
        self.fire(out, |k, g| {
            (k.0 <= wm && !g.on_time_fired && (g.dirty || accumulating))
                .then_some(PaneTiming::OnTime)
        })?;
        let which = if accumulating { Pick::All } else { Pick::Dirty };
        self.fire_windows(out, |w| {
            (w.window.end <= wm && !w.on_time_fired).then_some((PaneTiming::OnTime, which))
        })?;
        for w in self.windows.values_mut() {
            if w.window.end > wm {
                break;
            }
            w.on_time_fired = true;
        }
        // Windows that closed without new data since an early pane still count as fired.
        for (k, g) in self.state.iter_mut() {
            if k.0 > wm {
                break;
            }
            g.on_time_fired = true;
        }
        self.collect_garbage();
        self.publish();
        Ok(())
    }

    async fn on_end(&mut self, out: &mut Output) -> Result<(), EngineError> {
        if self.durable.is_some() && self.watermark < END_OF_TIME {
            // A streaming run stopped (a drain, `--until-idle`), its input did not end: the
            // open windows stay in the store and the next run goes on with them.
            self.restore_once(out).await?;
            return self.checkpoint().await;
        }
        self.on_watermark(END_OF_TIME, out).await?;
        self.checkpoint().await
    }

    async fn on_drain_keep(&mut self, out: &mut Output) -> Result<(), EngineError> {
        if self.durable.is_some() {
            // The open windows stay in the store; the next worker restores them.
            self.restore_once(out).await?;
            return self.checkpoint().await;
        }
        // Open windows are not fired: their input is nacked and the next worker reads it again.
        let open = self.state.len()
            + self
                .windows
                .values()
                .map(WindowState::groups)
                .sum::<usize>();
        for g in self.state.values() {
            g.acks.abandon();
        }
        for w in self.windows.values() {
            w.abandon();
        }
        self.state.clear();
        self.windows.clear();
        self.sessions.clear();
        tracing::info!(transform = %self.name, windows = open, "Drain (keep): open windows left for redelivery");
        Ok(())
    }

    fn timer_interval(&self) -> Option<Duration> {
        let checkpoints = self.durable.as_ref().map(durable::Durable::interval);
        match (self.windowing.early_every, checkpoints) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn on_timer(
        &mut self,
        now: tokio::time::Instant,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        self.restore_once(out).await?;
        // The timer ticks at the shorter of the two periods; with both, each keeps its own.
        let checkpoints = self.durable.as_ref().map(durable::Durable::interval);
        let both = checkpoints.is_some() && self.windowing.early_every.is_some();
        if let Some(every) = checkpoints
            && (!both || due(&mut self.next_checkpoint, now, every))
        {
            self.checkpoint().await?;
        }
        match self.windowing.early_every {
            Some(every) if !both || due(&mut self.next_early, now, every) => self.fire_early(out),
            _ => Ok(()),
        }
    }
}

/// Whether a periodic action scheduled at `next` is due at `now`; schedules the next one.
fn due(
    next: &mut Option<tokio::time::Instant>,
    now: tokio::time::Instant,
    every: Duration,
) -> bool {
    match next {
        Some(t) if now < *t => false,
        _ => {
            *next = Some(now + every);
            true
        }
    }
}

impl Combine {
    /// EARLY panes of every window with data since its last pane.
    fn fire_early(&mut self, out: &mut Output) -> Result<(), EngineError> {
        let wm = self.watermark;
        self.fire(out, |k, g| {
            (g.dirty && !g.on_time_fired && k.0 > wm).then_some(PaneTiming::Early)
        })?;
        self.fire_windows(out, |w| {
            (w.has_dirty() && !w.on_time_fired && w.window.end > wm)
                .then_some((PaneTiming::Early, Pick::Dirty))
        })?;
        self.publish();
        Ok(())
    }
}
