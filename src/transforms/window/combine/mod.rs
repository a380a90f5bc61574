//! `Combine`: grouped, windowed aggregation with incremental accumulators.
//!
//! Each batch is bucketed by (window, group key) and every bucket updates that group's
//! accumulators with one `update_batch` call. Windows fire on the watermark (ON_TIME), on a
//! processing-time timer (EARLY, `trigger.early_every`) and after late data (LATE, one pane per
//! batch and group); state is dropped once the watermark passes window end + allowed lateness.
//! Session windows merge accumulator states (`state` → `merge_batch`) when an element bridges
//! or overlaps them. Output rows hold only the group-by fields and the aggregates (Beam), plus
//! the hidden window, pane, event time (window end − 1 ms) and row id columns.

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
use crate::config::window::{WindowKind, Windowing};
use crate::expr;
use crate::pipeline::operator::{
    END_OF_TIME, EngineError, ErrorRoute, EventTime, Operator, Output,
};
use crate::pipeline::stats::WindowStats;
use crate::record::{Batch, rows};
use crate::time::{SessionMerge, Window, assign, assign_into, session_merge};
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
        }
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
        let synthetic = self.group_by.is_empty();
        let key_fields = if synthetic {
            vec![Field::new("__key", DataType::Boolean, true)]
        } else {
            self.group_by
                .iter()
                .zip(keys)
                .map(|(n, k)| Field::new(n, k.data_type().clone(), true))
                .collect()
        };
        let mut specs = Vec::with_capacity(self.fields.len());
        for (f, vi) in self.fields.iter().zip(&self.value_index) {
            let ty = vi
                .and_then(|i| values.get(i))
                .map_or(DataType::Int64, |v| v.data_type().clone());
            let spec = AggSpec::new(f.func, &ty)
                .map_err(|e| self.config_err(format!("`{}`: {e}", f.output)))?;
            specs.push(spec);
        }
        let outputs = self.fields.iter().map(|f| f.output.clone()).collect();
        self.layout =
            Some(Layout::new(key_fields, synthetic, specs, outputs).map_err(|e| self.internal(e))?);
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
        if let Some((rows, acks)) = emitted {
            out.main(Batch::merged(rows, acks));
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
        let mut acks = Vec::new();
        for w in self.windows.values_mut() {
            let Some((timing, which)) = pick(w) else {
                continue;
            };
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
        out.main(Batch::merged(rows, acks));
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
        for (w, idx) in buckets {
            let key = (w.end, w.start);
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
            state
                .update(&parts, &groups, &r.batch.acks)
                .map_err(internal)?;
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
    into.acks.append(&mut other.acks);
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
        let global = self.windowing.kind == WindowKind::Global;
        let exprs = self
            .values
            .get(&batch.schema())
            .map_err(|e| EngineError::config(&self.name, e))?
            .to_vec();
        let evaluated = expr::evaluate_isolating(&exprs, &batch.rows);
        let mut failures: Vec<(String, String)> = evaluated
            .failed
            .iter()
            .map(|(i, e)| (rows::row_json(&batch.rows, *i), e.clone()))
            .collect();
        let rows = evaluated.rows;
        let n = rows.num_rows();
        if n == 0 {
            self.errors.report(out, &batch, failures);
            return Ok(());
        }
        let keys = self.key_columns(&rows)?;
        self.ensure_layout(&keys, &evaluated.values)?;
        let layout = self
            .layout
            .as_ref()
            .ok_or_else(|| self.internal("no layout"))?;
        // Inputs per aggregation; rows whose value cannot be converted are errors.
        let mut inputs = Vec::with_capacity(layout.specs.len());
        let mut ok = vec![true; n];
        for (spec, vi) in layout.specs.iter().zip(&self.value_index) {
            let values = vi.and_then(|i| evaluated.values.get(i));
            match spec.prepare(values, n) {
                Ok(a) => inputs.push(a),
                Err(e) => {
                    let Some(values) = values else {
                        return Err(self.internal(e));
                    };
                    let mut parts = Vec::with_capacity(n);
                    for (i, okay) in ok.iter_mut().enumerate() {
                        match spec.prepare(Some(&values.slice(i, 1)), 1) {
                            Ok(a) => parts.push(a),
                            Err(e) => {
                                *okay = false;
                                failures.push((rows::row_json(&rows, i), e));
                                parts.push(arrow::array::new_null_array(spec.input_type(), 1));
                            }
                        }
                    }
                    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                    inputs.push(arrow::compute::concat(&refs).map_err(|e| self.internal(e))?);
                }
            }
        }
        let key_cols: Vec<ArrayRef> = layout
            .key_fields
            .iter()
            .zip(&keys)
            .map(|(f, k)| {
                if k.data_type() == f.data_type() {
                    Ok(k.clone())
                } else {
                    arrow::compute::cast(k, f.data_type()).map_err(|e| {
                        self.config_err(format!(
                            "group_by field `{}` changed type from {} to {}: {e}",
                            f.name(),
                            f.data_type(),
                            k.data_type()
                        ))
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        let key_rows = layout
            .converter
            .convert_columns(&key_cols)
            .map_err(|e| self.internal(e))?;
        let times: Option<Vec<EventTime>> =
            match rows.column_by_name(crate::record::meta::EVENT_TIME) {
                Some(c) => c
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .map(|a| {
                        (0..n)
                            .map(|i| {
                                if a.is_null(i) {
                                    EventTime::MIN
                                } else {
                                    a.value(i)
                                }
                            })
                            .collect()
                    }),
                None => None,
            };
        let times = match times {
            Some(t) => t,
            None if global => vec![EventTime::MIN; n],
            None => {
                return Err(self.config_err(
                    "windowed Combine needs event times: add `AssignTimestamps` before it",
                ));
            }
        };

        if !matches!(self.windowing.kind, WindowKind::Sessions { .. }) {
            let rows = Prepared {
                batch: &batch,
                rows: &rows,
                inputs: &inputs,
                ok: &ok,
                keys: &key_rows,
                times: &times,
            };
            return self.process_windows(rows, failures, out);
        }

        // Session windows: (row, window) pairs; rows with no acceptable window are late errors.
        let mut pairs: Vec<(u32, Window)> = Vec::with_capacity(n);
        let mut late_rows: Vec<(usize, String)> = Vec::new();
        {
            let mut by_key: BTreeMap<OwnedRow, Vec<usize>> = BTreeMap::new();
            for i in (0..n).filter(|&i| ok[i]) {
                by_key.entry(key_rows.row(i).owned()).or_default().push(i);
            }
            for (key, idx) in by_key {
                let mut live = Vec::with_capacity(idx.len());
                let mut protos = Vec::with_capacity(idx.len());
                for i in idx {
                    let w = assign(&self.windowing.kind, times[i])[0];
                    if self.rejects(&w) {
                        late_rows.push((i, self.late_message(times[i], &w)));
                    } else {
                        live.push(i);
                        protos.push(w);
                    }
                }
                if live.is_empty() {
                    continue;
                }
                let targets = self.merge_into_sessions(&key, &protos)?;
                pairs.extend(live.into_iter().zip(targets).map(|(i, w)| (i as u32, w)));
            }
        }
        for (i, msg) in late_rows {
            failures.push((rows::row_json(&rows, i), msg));
        }
        self.errors.report(out, &batch, failures);

        // Bucket by (window, key) and update each bucket with one call per aggregation.
        let mut buckets: BTreeMap<(Window, arrow::row::Row<'_>), Vec<u32>> = BTreeMap::new();
        for (i, w) in pairs {
            buckets
                .entry((w, key_rows.row(i as usize)))
                .or_default()
                .push(i);
        }
        let layout = self
            .layout
            .as_ref()
            .ok_or_else(|| self.internal("no layout"))?;
        let mut touched_late = false;
        for ((w, key), idx) in buckets {
            let gk = key_of(w, key.owned());
            if !self.state.contains_key(&gk) {
                let accs = layout.new_accumulators().map_err(|e| self.internal(e))?;
                self.state.insert(
                    gk.clone(),
                    Group {
                        accs,
                        pane_index: 0,
                        on_time_fired: w.end <= self.watermark,
                        dirty: false,
                        acks: Vec::new(),
                        bytes: 0,
                    },
                );
                if let WindowKind::Sessions { .. } = self.windowing.kind {
                    self.sessions.entry(gk.2.clone()).or_default().insert(w);
                }
            }
            let group = self
                .state
                .get_mut(&gk)
                .ok_or_else(|| EngineError::internal(&self.name, "missing group"))?;
            let indices = UInt32Array::from(idx);
            for (acc, input) in group.accs.iter_mut().zip(&inputs) {
                let part = take(input.as_ref(), &indices, None)
                    .map_err(|e| EngineError::internal(&self.name, e.to_string()))?;
                acc.update_batch(&[part])
                    .map_err(|e| EngineError::internal(&self.name, e.to_string()))?;
            }
            group.dirty = true;
            touched_late |= group.on_time_fired;
            for a in &batch.acks {
                if !group.acks.iter().any(|b| Arc::ptr_eq(a, b)) {
                    group.acks.push(a.clone());
                }
            }
            self.bytes.update(&gk, group);
        }
        if touched_late && self.windowing.late_panes {
            self.fire(out, |_, g| {
                (g.dirty && g.on_time_fired).then_some(PaneTiming::Late)
            })?;
        }
        self.publish();
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> Result<(), EngineError> {
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
        self.on_watermark(END_OF_TIME, out).await
    }

    async fn on_drain_keep(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        // Open windows are not fired: their input is nacked and the next worker reads it again.
        let open = self.state.len()
            + self
                .windows
                .values()
                .map(WindowState::groups)
                .sum::<usize>();
        for g in self.state.values() {
            crate::record::abandon(&g.acks);
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
        self.windowing.early_every
    }

    async fn on_timer(
        &mut self,
        _now: tokio::time::Instant,
        out: &mut Output,
    ) -> Result<(), EngineError> {
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
