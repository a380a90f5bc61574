//! Per-(window, key) aggregation state of `Combine` and the panes it emits.
//!
//! State is a `BTreeMap` ordered by window end, so firing on a watermark walks a prefix, and
//! output order is deterministic (window end, start, key bytes). Each group holds its
//! accumulators, its pane count, whether its ON_TIME pane fired, whether data arrived since the
//! last pane, and the acknowledgement holds of the input that is not yet in an emitted pane.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter};
use datafusion::logical_expr::Accumulator;

use super::super::aggregate::AggSpec;
use crate::pipeline::operator::EventTime;
use crate::record::meta;
use crate::time::Window;

/// The holds of `record::Batch::acks`.
pub use crate::record::AckSet;

/// When a pane fired, as in Beam's `PaneInfo.timing` (the Int8 in `__sluice_pane_timing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaneTiming {
    Early = 0,
    OnTime = 1,
    Late = 2,
}

impl PaneTiming {
    pub fn name(code: i8) -> &'static str {
        match code {
            0 => "EARLY",
            1 => "ON_TIME",
            2 => "LATE",
            _ => "UNKNOWN",
        }
    }
}

/// Key of a group: ordered by window end so that firing walks a prefix of the map.
pub type GroupKey = (EventTime, EventTime, OwnedRow);

pub struct Group {
    pub accs: Vec<Box<dyn Accumulator>>,
    pub pane_index: i64,
    pub on_time_fired: bool,
    /// Data arrived since the last pane.
    pub dirty: bool,
    pub acks: AckSet,
    /// This group's share of [`StateBytes`], as last estimated.
    pub bytes: usize,
}

/// Map overhead per group beyond the key and `Group` themselves: a B-tree node holds up to 11
/// entries plus bookkeeping, about a quarter more than the entries.
const ENTRY_OVERHEAD: usize = (std::mem::size_of::<GroupKey>() + std::mem::size_of::<Group>()) / 4;

/// Estimated bytes of one group: key, accumulators (DataFusion's `Accumulator::size`, which
/// counts their allocations), holds, and the map entry.
pub fn group_bytes(key: &GroupKey, g: &Group) -> usize {
    std::mem::size_of::<GroupKey>()
        + std::mem::size_of::<Group>()
        + ENTRY_OVERHEAD
        + key.2.row().as_ref().len()
        + g.accs.iter().map(|a| a.size()).sum::<usize>()
        + g.acks.heap_bytes()
}

/// The estimated bytes of all groups, kept up to date per changed group (never by walking the
/// whole state on the hot path).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateBytes(pub usize);

impl StateBytes {
    /// `g` (at `key`) was created or changed: re-estimate its share.
    pub fn update(&mut self, key: &GroupKey, g: &mut Group) {
        let new = group_bytes(key, g);
        self.0 = self.0.saturating_sub(g.bytes) + new;
        g.bytes = new;
    }

    /// `g` left the state.
    pub fn remove(&mut self, g: &Group) {
        self.0 = self.0.saturating_sub(g.bytes);
    }

    /// The estimate computed from scratch (to check the running total in debug builds).
    pub fn recount(state: &BTreeMap<GroupKey, Group>) -> usize {
        state.iter().map(|(k, g)| group_bytes(k, g)).sum()
    }
}

pub fn window_of(key: &GroupKey) -> Window {
    Window::new(key.1, key.0)
}

pub fn key_of(w: Window, row: OwnedRow) -> GroupKey {
    (w.end, w.start, row)
}

/// What a Combine's output looks like, fixed by the first batch's schema.
pub struct Layout {
    pub key_fields: Vec<Field>,
    /// True when `group_by` is empty and a constant key stands in.
    pub synthetic_key: bool,
    pub converter: RowConverter,
    pub specs: Vec<AggSpec>,
    pub schema: SchemaRef,
}

impl Layout {
    pub fn new(
        key_fields: Vec<Field>,
        synthetic_key: bool,
        specs: Vec<AggSpec>,
        outputs: Vec<String>,
    ) -> Result<Layout, String> {
        let converter = RowConverter::new(
            key_fields
                .iter()
                .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
        let mut fields: Vec<Field> = if synthetic_key {
            Vec::new()
        } else {
            key_fields
                .iter()
                .map(|f| f.clone().with_nullable(true))
                .collect()
        };
        for (name, spec) in outputs.iter().zip(&specs) {
            fields.push(Field::new(name, spec.output_type(), true));
        }
        fields.push(Field::new(meta::EVENT_TIME, DataType::Int64, true));
        fields.push(Field::new(meta::WINDOW_START, DataType::Int64, true));
        fields.push(Field::new(meta::WINDOW_END, DataType::Int64, true));
        fields.push(Field::new(meta::PANE_INDEX, DataType::Int64, true));
        fields.push(Field::new(meta::PANE_TIMING, DataType::Int8, true));
        fields.push(Field::new(meta::ROW_ID, DataType::Utf8, true));
        Ok(Layout {
            key_fields,
            synthetic_key,
            converter,
            specs,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    pub fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>, String> {
        self.specs.iter().map(AggSpec::accumulator).collect()
    }
}

/// Builds one pane batch from `fired` groups (each evaluated), advancing their pane state.
/// Returns the rows and the acknowledgement holds they release.
///
/// # Errors
/// An accumulator failed to evaluate (an internal error).
pub fn emit_panes(
    layout: &Layout,
    state: &mut BTreeMap<GroupKey, Group>,
    fired: &[(GroupKey, PaneTiming)],
    ids: (&str, &str),
    discarding: bool,
) -> Result<Option<(RecordBatch, AckSet)>, String> {
    if fired.is_empty() {
        return Ok(None);
    }
    let n = fired.len();
    let mut values: Vec<Vec<datafusion::common::ScalarValue>> =
        layout.specs.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut ts = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut ends = Vec::with_capacity(n);
    let mut panes = Vec::with_capacity(n);
    let mut timings = Vec::with_capacity(n);
    let mut row_ids = Vec::with_capacity(n);
    let mut acks = AckSet::new();
    for (key, timing) in fired {
        let Some(group) = state.get_mut(key) else {
            return Err("internal: fired group has no state".into());
        };
        for (acc, out) in group.accs.iter_mut().zip(values.iter_mut()) {
            out.push(acc.evaluate().map_err(|e| e.to_string())?);
        }
        let w = window_of(key);
        ts.push(w.max_timestamp());
        starts.push(w.start);
        ends.push(w.end);
        panes.push(group.pane_index);
        timings.push(*timing as i8);
        row_ids.push(row_id(ids, w, key.2.row().as_ref(), group.pane_index));
        group.pane_index += 1;
        group.dirty = false;
        if *timing == PaneTiming::OnTime {
            group.on_time_fired = true;
        }
        acks.merge(std::mem::take(&mut group.acks));
        if discarding {
            group.accs = layout.new_accumulators()?;
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::new();
    if !layout.synthetic_key {
        columns = layout
            .converter
            .convert_rows(fired.iter().map(|(k, _)| k.2.row()))
            .map_err(|e| e.to_string())?;
    }
    for (spec, vals) in layout.specs.iter().zip(values) {
        let array = spec.finish(vals)?;
        let want = spec.output_type();
        if array.data_type() != &want {
            columns.push(arrow::compute::cast(&array, &want).map_err(|e| e.to_string())?);
        } else {
            columns.push(array);
        }
    }
    columns.push(Arc::new(Int64Array::from(ts)));
    columns.push(Arc::new(Int64Array::from(starts)));
    columns.push(Arc::new(Int64Array::from(ends)));
    columns.push(Arc::new(Int64Array::from(panes)));
    columns.push(Arc::new(Int8Array::from(timings)));
    columns.push(Arc::new(StringArray::from(row_ids)));
    let batch = RecordBatch::try_new(layout.schema.clone(), columns).map_err(|e| e.to_string())?;
    Ok(Some((batch, acks)))
}

/// Deterministic row id of an aggregated row: (pipeline, transform, window, key, pane).
pub fn row_id(ids: (&str, &str), w: Window, key: &[u8], pane: i64) -> String {
    let mut buf = Vec::with_capacity(ids.0.len() + ids.1.len() + key.len() + 26);
    buf.extend_from_slice(ids.0.as_bytes());
    buf.push(0);
    buf.extend_from_slice(ids.1.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&w.start.to_be_bytes());
    buf.extend_from_slice(&w.end.to_be_bytes());
    buf.extend_from_slice(&pane.to_be_bytes());
    buf.extend_from_slice(key);
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf))
}
