//! Vectorised state of `Combine` for fixed, sliding and global windows: one [`WindowState`] per
//! open window, holding a group table (arrow-row key → group index) and one vectorised
//! accumulator per aggregation for all groups of that window ([`GroupAcc`]).
//!
//! A batch costs, per window it touches: one hash-table probe per row to find its group index,
//! one `take` per input column when the batch spans several windows, and one `update_batch` per
//! aggregation. A window's state is dropped as a whole once the watermark passes its end plus
//! the allowed lateness.
//!
//! Pane bookkeeping: pane index and "data since the last pane" are per group, as in the
//! per-group state (`state.rs`); whether the ON_TIME pane fired and the acknowledgement holds
//! are per window. That is exact because every firing of a window emits all of its groups with
//! new data (early: window still open; on time: watermark past its end; late: after it), so the
//! holds of a window are released together.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Int8Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow::compute::take;
use arrow::row::Rows;

use super::groups::GroupAcc;
use super::state::{AckSet, Layout, PaneTiming, row_id};
use crate::pipeline::operator::EventTime;
use crate::time::Window;

/// Hasher for keys that are already hashes (xxh3 of the key row).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

const NO_GROUP: u32 = u32::MAX;

/// Which groups of a window a firing emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Groups with data since their last pane.
    Dirty,
    /// Every group (ON_TIME panes in accumulating mode).
    All,
}

pub struct WindowState {
    pub window: Window,
    /// Hash of the key row → the first group with that hash; `chain` links further groups with
    /// the same hash (collisions), ending in `NO_GROUP`.
    index: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    chain: Vec<u32>,
    /// Key rows (arrow-row) by group index.
    keys: Rows,
    accs: Vec<GroupAcc>,
    pane_index: Vec<i64>,
    dirty: Vec<bool>,
    dirty_count: usize,
    pub on_time_fired: bool,
    acks: AckSet,
    /// Estimated bytes, refreshed by [`WindowState::recount`].
    pub bytes: usize,
}

impl WindowState {
    pub fn new(
        window: Window,
        layout: &Layout,
        on_time_fired: bool,
    ) -> Result<WindowState, String> {
        let accs = layout
            .specs
            .iter()
            .map(GroupAcc::new)
            .collect::<Result<_, _>>()?;
        let mut w = WindowState {
            window,
            index: HashMap::default(),
            chain: Vec::new(),
            keys: layout.converter.empty_rows(0, 0),
            accs,
            pane_index: Vec::new(),
            dirty: Vec::new(),
            dirty_count: 0,
            on_time_fired,
            acks: AckSet::new(),
            bytes: 0,
        };
        w.recount();
        Ok(w)
    }

    pub fn groups(&self) -> usize {
        self.pane_index.len()
    }

    pub fn has_dirty(&self) -> bool {
        self.dirty_count > 0
    }

    /// The group index of each of `rows` (indices into `key_rows`, with `hashes` the xxh3 of
    /// each key row), creating groups for new keys.
    pub fn group_indices(
        &mut self,
        key_rows: &Rows,
        hashes: &[u64],
        rows: &[u32],
        out: &mut Vec<usize>,
    ) {
        out.clear();
        out.reserve(rows.len());
        for &r in rows {
            let r = r as usize;
            let row = key_rows.row(r);
            let h = hashes[r];
            let mut g = self.index.get(&h).copied().unwrap_or(NO_GROUP);
            let mut last = NO_GROUP;
            while g != NO_GROUP && self.keys.row(g as usize) != row {
                last = g;
                g = self.chain[g as usize];
            }
            if g == NO_GROUP {
                g = self.pane_index.len() as u32;
                self.keys.push(row);
                self.chain.push(NO_GROUP);
                self.pane_index.push(0);
                self.dirty.push(false);
                if last == NO_GROUP {
                    self.index.insert(h, g);
                } else {
                    self.chain[last as usize] = g;
                }
            }
            out.push(g as usize);
        }
    }

    /// Adds one input column per aggregation (rows aligned with `groups`) and the batch's
    /// acknowledgement holds.
    pub fn update(
        &mut self,
        inputs: &[ArrayRef],
        groups: &[usize],
        acks: &AckSet,
    ) -> Result<(), String> {
        let total = self.groups();
        for (acc, input) in self.accs.iter_mut().zip(inputs) {
            acc.update(input, groups, total)?;
        }
        for &g in groups {
            if !self.dirty[g] {
                self.dirty[g] = true;
                self.dirty_count += 1;
            }
        }
        self.acks.extend_from(acks);
        Ok(())
    }

    /// Emits one pane row per picked group (ordered by key bytes) and advances their pane
    /// state; the window's acknowledgement holds move to `acks`. `None` when no group is picked.
    ///
    /// # Errors
    /// An accumulator failed to evaluate (an internal error).
    pub fn emit(
        &mut self,
        layout: &Layout,
        pick: Pick,
        timing: PaneTiming,
        ids: (&str, &str),
        discarding: bool,
        acks: &mut AckSet,
    ) -> Result<Option<RecordBatch>, String> {
        let total = self.groups();
        let mut picked: Vec<u32> = (0..total as u32)
            .filter(|&g| pick == Pick::All || self.dirty[g as usize])
            .collect();
        if picked.is_empty() {
            return Ok(None);
        }
        picked.sort_unstable_by(|&a, &b| self.keys.row(a as usize).cmp(&self.keys.row(b as usize)));
        let n = picked.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(layout.schema.fields().len());
        if !layout.synthetic_key {
            columns = layout
                .converter
                .convert_rows(picked.iter().map(|&g| self.keys.row(g as usize)))
                .map_err(|e| e.to_string())?;
        }
        let identity = n == total && picked.iter().enumerate().all(|(i, &g)| i == g as usize);
        let take_idx = (!identity).then(|| UInt32Array::from(picked.clone()));
        for (acc, spec) in self.accs.iter_mut().zip(&layout.specs) {
            let all = acc.evaluate(spec, total, discarding)?;
            columns.push(match &take_idx {
                Some(idx) => take(all.as_ref(), idx, None).map_err(|e| e.to_string())?,
                None => all,
            });
        }
        let w = self.window;
        let mut panes = Vec::with_capacity(n);
        let mut row_ids = Vec::with_capacity(n);
        for &g in &picked {
            let g = g as usize;
            let pane = self.pane_index[g];
            panes.push(pane);
            row_ids.push(row_id(ids, w, self.keys.row(g).as_ref(), pane));
            self.pane_index[g] = pane + 1;
            if self.dirty[g] {
                self.dirty[g] = false;
                self.dirty_count -= 1;
            }
        }
        if timing == PaneTiming::OnTime {
            self.on_time_fired = true;
        }
        acks.merge(std::mem::take(&mut self.acks));
        columns.push(Arc::new(Int64Array::from(vec![w.max_timestamp(); n])));
        columns.push(Arc::new(Int64Array::from(vec![w.start; n])));
        columns.push(Arc::new(Int64Array::from(vec![w.end; n])));
        columns.push(Arc::new(Int64Array::from(panes)));
        columns.push(Arc::new(Int8Array::from(vec![timing as i8; n])));
        columns.push(Arc::new(StringArray::from(row_ids)));
        let batch =
            RecordBatch::try_new(layout.schema.clone(), columns).map_err(|e| e.to_string())?;
        Ok(Some(batch))
    }

    /// The window's state as record batches for a checkpoint: first the groups (key columns,
    /// `pane_index`, `dirty`), then one batch per aggregation ([`GroupAcc::snapshot`]).
    ///
    /// # Errors
    /// An accumulator failed to export its state (an internal error).
    pub fn snapshot(&mut self, layout: &Layout) -> Result<Vec<RecordBatch>, String> {
        let total = self.groups();
        let mut columns = layout
            .converter
            .convert_rows((0..total).map(|g| self.keys.row(g)))
            .map_err(|e| e.to_string())?;
        columns.push(Arc::new(Int64Array::from(self.pane_index.clone())));
        columns.push(Arc::new(arrow::array::BooleanArray::from(
            self.dirty.clone(),
        )));
        let mut batches = vec![snapshot_batch(columns, total)?];
        for (acc, spec) in self.accs.iter_mut().zip(&layout.specs) {
            let cols = acc.snapshot(spec, total)?;
            let rows = cols.first().map_or(0, |c| c.len());
            batches.push(snapshot_batch(cols, rows)?);
        }
        Ok(batches)
    }

    /// Rebuilds a window from its [`WindowState::snapshot`].
    ///
    /// # Errors
    /// The batches do not fit `layout` (a checkpoint of another pipeline version).
    pub fn restore(
        window: Window,
        layout: &Layout,
        on_time_fired: bool,
        batches: &[RecordBatch],
    ) -> Result<WindowState, String> {
        let mut w = WindowState::new(window, layout, on_time_fired)?;
        let (groups, accs) = batches.split_first().ok_or("an empty window checkpoint")?;
        let nkeys = layout.key_fields.len();
        if groups.num_columns() != nkeys + 2 || accs.len() != w.accs.len() {
            return Err("the window checkpoint does not match the Combine's fields".into());
        }
        let total = groups.num_rows();
        let keys = layout
            .converter
            .convert_columns(&groups.columns()[..nkeys])
            .map_err(|e| e.to_string())?;
        let rows: Vec<u32> = (0..total as u32).collect();
        let mut indices = Vec::new();
        w.group_indices(&keys, &hash_rows(&keys), &rows, &mut indices);
        if w.groups() != total {
            return Err("the window checkpoint repeats a key".into());
        }
        let panes = groups
            .column(nkeys)
            .as_primitive_opt::<arrow::datatypes::Int64Type>();
        let dirty = groups.column(nkeys + 1).as_boolean_opt();
        let (Some(panes), Some(dirty)) = (panes, dirty) else {
            return Err("the window checkpoint's pane columns have the wrong types".into());
        };
        w.pane_index = panes.values().to_vec();
        w.dirty = dirty.iter().map(|d| d.unwrap_or(false)).collect();
        w.dirty_count = w.dirty.iter().filter(|&&d| d).count();
        for (acc, batch) in w.accs.iter_mut().zip(accs) {
            acc.restore(batch.columns(), total)?;
        }
        w.recount();
        Ok(w)
    }

    /// Gives up the acknowledgement holds (drain keep: redelivered later).
    pub fn abandon(&self) {
        self.acks.abandon();
    }

    /// Re-estimates [`WindowState::bytes`]: the group table, key rows, accumulators (their own
    /// `size`) and holds.
    pub fn recount(&mut self) {
        self.bytes = std::mem::size_of::<WindowState>()
            + self.index.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.chain.capacity() * 4
            + self.keys.size()
            + self.accs.iter().map(GroupAcc::size).sum::<usize>()
            + self.pane_index.capacity() * 8
            + self.dirty.capacity()
            + self.acks.heap_bytes();
    }
}

/// Open windows ordered by (end, start): firing on a watermark walks a prefix.
pub type Windows = std::collections::BTreeMap<(EventTime, EventTime), WindowState>;

/// xxh3 of every key row.
/// A batch of anonymous columns `c0, c1, …` with `rows` rows (also when there are none).
pub fn snapshot_batch(columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch, String> {
    let fields: Vec<arrow::datatypes::Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new_with_options(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| e.to_string())
}

pub fn hash_rows(rows: &Rows) -> Vec<u64> {
    (0..rows.num_rows())
        .map(|i| xxhash_rust::xxh3::xxh3_64(rows.row(i).as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type};

    use super::*;
    use crate::config::components::AggFn;
    use crate::transforms::window::aggregate::AggSpec;

    fn layout() -> Layout {
        Layout::new(
            vec![Field::new("k", DataType::Utf8, true)],
            false,
            vec![AggSpec::new(AggFn::Sum, &DataType::Int64).unwrap()],
            vec!["total".into()],
        )
        .unwrap()
    }

    #[test]
    fn colliding_hashes_still_separate_keys_and_panes_follow_the_keys() {
        let layout = layout();
        let keys: ArrayRef = Arc::new(StringArray::from(vec!["b", "a", "b", "c", "a"]));
        let rows = layout.converter.convert_columns(&[keys]).unwrap();
        let mut w = WindowState::new(Window::new(0, 60_000), &layout, false).unwrap();
        // Every key gets the same hash: lookups must compare the key bytes.
        let hashes = vec![42_u64; 5];
        let mut groups = Vec::new();
        w.group_indices(&rows, &hashes, &[0, 1, 2, 3, 4], &mut groups);
        assert_eq!(groups, [0, 1, 0, 2, 1]);
        let values: ArrayRef = Arc::new(Int64Array::from(vec![1, 10, 100, 1000, 10000]));
        w.update(&[values], &groups, &AckSet::new()).unwrap();
        let mut acks = AckSet::new();
        let pane = w
            .emit(
                &layout,
                Pick::Dirty,
                PaneTiming::Early,
                ("p", "t"),
                false,
                &mut acks,
            )
            .unwrap()
            .unwrap();
        // Ordered by key bytes, one row per key.
        let k = pane.column(0).as_string::<i32>();
        assert_eq!(k.iter().flatten().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(
            pane.column(1).as_primitive::<Int64Type>().values().to_vec(),
            [10010, 101, 1000]
        );
        assert!(!w.has_dirty());
        // Only "c" gets more data: the next dirty pane has it alone, as its pane 1.
        let more: ArrayRef = Arc::new(StringArray::from(vec!["c"]));
        let more = layout.converter.convert_columns(&[more]).unwrap();
        w.group_indices(&more, &[42], &[0], &mut groups);
        assert_eq!(groups, [2]);
        let values: ArrayRef = Arc::new(Int64Array::from(vec![5]));
        w.update(&[values], &groups, &AckSet::new()).unwrap();
        let pane = w
            .emit(
                &layout,
                Pick::Dirty,
                PaneTiming::OnTime,
                ("p", "t"),
                false,
                &mut acks,
            )
            .unwrap()
            .unwrap();
        assert_eq!(pane.num_rows(), 1);
        assert_eq!(
            pane.column(1).as_primitive::<Int64Type>().value(0),
            1005,
            "accumulating: the pane holds everything so far"
        );
        let pane_index = pane
            .column_by_name(crate::record::meta::PANE_INDEX)
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0);
        assert_eq!(pane_index, 1);
        assert!(w.on_time_fired);
        assert!(pane.column(0).is_valid(0));
    }
}
