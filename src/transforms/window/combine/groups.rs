//! Vectorised accumulators for all groups of one window: each aggregation keeps one state for
//! every group (indexed 0..n) and is updated once per batch with a group index per row.
//!
//! - DataFusion's `GroupsAccumulator` where it has one (sum, count, min, max, mean, all/any,
//!   concat, approx_count_distinct for most types).
//! - [`DistinctCounts`] for exact `count_distinct` of integers and strings: one hash set of
//!   (group, value id) pairs per window, strings interned once per window (DataFusion's
//!   `ArrowBytesMap`), so a row costs two hash probes and no allocation.
//! - [`PerGroup`] otherwise (`quantile`, `count_distinct` of other types): one DataFusion
//!   `Accumulator` per group, fed one `take` per group and batch (DataFusion's
//!   `GroupsAccumulatorAdapter` strategy, with a non-destructive evaluate).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array, new_empty_array};
use arrow::compute::{cast, take};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};
use datafusion::physical_expr_common::binary_map::{ArrowBytesMap, OutputType};

use super::super::aggregate::AggSpec;

/// One aggregation's state for all groups of a window.
pub enum GroupAcc {
    Native(Box<dyn GroupsAccumulator>),
    Distinct(Box<DistinctCounts>),
    PerGroup(PerGroup),
}

impl GroupAcc {
    /// The fastest exact implementation for `spec`.
    ///
    /// # Errors
    /// DataFusion refused the arguments (an internal error after `AggSpec::new` succeeded).
    pub fn new(spec: &AggSpec) -> Result<GroupAcc, String> {
        if spec.is_count_distinct()
            && let Some(kind) = DistinctKind::of(spec.input_type())
        {
            return Ok(GroupAcc::Distinct(Box::new(DistinctCounts::new(kind))));
        }
        if let Some(acc) = spec.groups_accumulator()? {
            return Ok(GroupAcc::Native(acc));
        }
        Ok(GroupAcc::PerGroup(PerGroup::new(spec.clone())))
    }

    /// Adds `values` (one per row) to the groups `groups` (one per row); `total` groups exist.
    ///
    /// # Errors
    /// An accumulator failed (an internal error).
    pub fn update(
        &mut self,
        values: &ArrayRef,
        groups: &[usize],
        total: usize,
    ) -> Result<(), String> {
        match self {
            GroupAcc::Native(acc) => acc
                .update_batch(std::slice::from_ref(values), groups, None, total)
                .map_err(|e| e.to_string()),
            GroupAcc::Distinct(d) => d.update(values, groups, total),
            GroupAcc::PerGroup(p) => p.update(values, groups, total),
        }
    }

    /// The value of every group (`total` of them, in group order). `reset` starts every group
    /// afresh (discarding panes); otherwise the state is kept (accumulating panes).
    ///
    /// # Errors
    /// An accumulator failed (an internal error).
    pub fn evaluate(
        &mut self,
        spec: &AggSpec,
        total: usize,
        reset: bool,
    ) -> Result<ArrayRef, String> {
        if total == 0 {
            return Ok(new_empty_array(&spec.output_type()));
        }
        let array = match self {
            GroupAcc::Native(acc) => {
                // Size the state for every group, also those that saw no row since a reset.
                let empty = new_empty_array(spec.input_type());
                acc.update_batch(&[empty], &[], None, total)
                    .map_err(|e| e.to_string())?;
                if reset {
                    acc.evaluate(EmitTo::All).map_err(|e| e.to_string())?
                } else {
                    // GroupsAccumulator::evaluate consumes the state: take it out as
                    // intermediate state, put it back, and evaluate a copy.
                    let state = acc.state(EmitTo::All).map_err(|e| e.to_string())?;
                    let all: Vec<usize> = (0..total).collect();
                    acc.merge_batch(&state, &all, total)
                        .map_err(|e| e.to_string())?;
                    let Some(mut copy) = spec.groups_accumulator()? else {
                        return Err("internal: groups accumulator vanished".into());
                    };
                    copy.merge_batch(&state, &all, total)
                        .map_err(|e| e.to_string())?;
                    copy.evaluate(EmitTo::All).map_err(|e| e.to_string())?
                }
            }
            GroupAcc::Distinct(d) => d.evaluate(total, reset),
            GroupAcc::PerGroup(p) => p.evaluate(total, reset)?,
        };
        if array.len() != total {
            return Err(format!(
                "internal: accumulator gave {} values for {total} groups",
                array.len()
            ));
        }
        spec.finish_array(array)
    }

    /// Estimated bytes held.
    pub fn size(&self) -> usize {
        match self {
            GroupAcc::Native(acc) => acc.size(),
            GroupAcc::Distinct(d) => d.size(),
            GroupAcc::PerGroup(p) => p.size(),
        }
    }
}

impl GroupAcc {
    /// The state of all `total` groups as columns, for a checkpoint; the accumulator keeps it.
    /// Native and per-group states have one row per group; exact distinct counts have one row
    /// per (group, value) pair. [`GroupAcc::restore`] on a fresh accumulator reverses it.
    ///
    /// # Errors
    /// An accumulator failed to export its state (an internal error).
    pub fn snapshot(&mut self, spec: &AggSpec, total: usize) -> Result<Vec<ArrayRef>, String> {
        match self {
            GroupAcc::Native(acc) => {
                let empty = new_empty_array(spec.input_type());
                acc.update_batch(&[empty], &[], None, total)
                    .map_err(|e| e.to_string())?;
                let state = acc.state(EmitTo::All).map_err(|e| e.to_string())?;
                let all: Vec<usize> = (0..total).collect();
                acc.merge_batch(&state, &all, total)
                    .map_err(|e| e.to_string())?;
                Ok(state)
            }
            GroupAcc::Distinct(d) => d.snapshot(),
            GroupAcc::PerGroup(p) => {
                p.grow(total)?;
                accumulator_states(&mut p.accs)
            }
        }
    }

    /// Loads a [`GroupAcc::snapshot`] of `total` groups into this fresh accumulator.
    ///
    /// # Errors
    /// The columns do not fit the accumulator (a checkpoint from another pipeline version).
    pub fn restore(&mut self, columns: &[ArrayRef], total: usize) -> Result<(), String> {
        match self {
            GroupAcc::Native(acc) => {
                let all: Vec<usize> = (0..total).collect();
                acc.merge_batch(columns, &all, total)
                    .map_err(|e| e.to_string())
            }
            GroupAcc::Distinct(d) => {
                let [groups, values] = columns else {
                    return Err("a distinct-count checkpoint has two columns".into());
                };
                let groups: Vec<usize> = groups
                    .as_primitive_opt::<arrow::datatypes::UInt32Type>()
                    .ok_or("distinct-count groups are not UInt32")?
                    .values()
                    .iter()
                    .map(|&g| g as usize)
                    .collect();
                d.update(values, &groups, total)
            }
            GroupAcc::PerGroup(p) => {
                p.grow(total)?;
                merge_accumulator_states(&mut p.accs, columns)?;
                p.bytes = p.accs.iter().map(|a| a.size()).sum();
                Ok(())
            }
        }
    }
}

/// The intermediate state of every accumulator in `accs`, one column per state field with one
/// row per accumulator (DataFusion's `Accumulator::state`, which leaves the state in place).
///
/// # Errors
/// An accumulator failed to export its state.
pub fn accumulator_states(accs: &mut [Box<dyn Accumulator>]) -> Result<Vec<ArrayRef>, String> {
    let mut fields: Vec<Vec<ScalarValue>> = Vec::new();
    for acc in accs.iter_mut() {
        let state = acc.state().map_err(|e| e.to_string())?;
        if fields.is_empty() {
            fields = state.iter().map(|_| Vec::new()).collect();
        }
        for (f, v) in fields.iter_mut().zip(state) {
            f.push(v);
        }
    }
    fields
        .into_iter()
        .map(|f| ScalarValue::iter_to_array(f).map_err(|e| e.to_string()))
        .collect()
}

/// Merges row `i` of `columns` (an [`accumulator_states`] export) into `accs[i]`.
///
/// # Errors
/// The columns do not fit the accumulators.
pub fn merge_accumulator_states(
    accs: &mut [Box<dyn Accumulator>],
    columns: &[ArrayRef],
) -> Result<(), String> {
    if columns.first().is_some_and(|c| c.len() != accs.len()) {
        return Err(format!(
            "checkpoint holds {} accumulator states for {} groups",
            columns.first().map_or(0, |c| c.len()),
            accs.len()
        ));
    }
    for (i, acc) in accs.iter_mut().enumerate() {
        let row: Vec<ArrayRef> = columns.iter().map(|c| c.slice(i, 1)).collect();
        acc.merge_batch(&row).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Hasher for keys that are already well mixed or small integers: murmur3's 64-bit finaliser
/// over the words written.
#[derive(Default)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub type MixBuild = BuildHasherDefault<MixHasher>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistinctKind {
    /// Any integer type, counted by its value as i64 (u64 above i64::MAX by its bits).
    Int,
    /// Utf8, LargeUtf8, Utf8View: interned as Utf8.
    Str,
}

impl DistinctKind {
    fn of(t: &DataType) -> Option<DistinctKind> {
        match t {
            t if t.is_integer() => Some(DistinctKind::Int),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(DistinctKind::Str),
            _ => None,
        }
    }
}

/// The (group, value id) pairs of a [`DistinctCounts`]. Interned string ids fit in 32 bits, so
/// a string pair packs into one `u64` (8 bytes a pair instead of 16: half the memory and the
/// rehashing of the largest table in the standard workload).
enum Seen {
    Packed(HashSet<u64, MixBuild>),
    Wide(HashSet<(u32, u64), MixBuild>),
}

impl Seen {
    fn new(kind: DistinctKind) -> Seen {
        match kind {
            DistinctKind::Str => Seen::Packed(HashSet::default()),
            DistinctKind::Int => Seen::Wide(HashSet::default()),
        }
    }

    /// Whether the pair is new. `id` is below 2^32 for `Packed` (an interned id).
    fn insert(&mut self, group: u32, id: u64) -> bool {
        match self {
            Seen::Packed(s) => s.insert(u64::from(group) << 32 | (id & 0xffff_ffff)),
            Seen::Wide(s) => s.insert((group, id)),
        }
    }

    fn pairs(&self) -> Vec<(u32, u64)> {
        match self {
            Seen::Packed(s) => s
                .iter()
                .map(|&p| ((p >> 32) as u32, p & 0xffff_ffff))
                .collect(),
            Seen::Wide(s) => s.iter().copied().collect(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Seen::Packed(s) => s.capacity() * (std::mem::size_of::<u64>() + 1),
            Seen::Wide(s) => s.capacity() * (std::mem::size_of::<(u32, u64)>() + 1),
        }
    }
}

/// Exact `count_distinct` per group (nulls not counted, as DataFusion's and SQL's).
pub struct DistinctCounts {
    kind: DistinctKind,
    /// (group, value id) pairs seen; the value id is the integer itself or the interned id.
    seen: Seen,
    counts: Vec<i64>,
    /// Distinct strings of this window → id (insertion order).
    strings: ArrowBytesMap<i32, u32>,
    next_id: u32,
    /// Scratch: value id per row of the current batch.
    ids: Vec<u64>,
}

impl DistinctCounts {
    pub fn new(kind: DistinctKind) -> DistinctCounts {
        DistinctCounts {
            kind,
            seen: Seen::new(kind),
            counts: Vec::new(),
            strings: ArrowBytesMap::new(OutputType::Utf8),
            next_id: 0,
            ids: Vec::new(),
        }
    }

    fn update(&mut self, values: &ArrayRef, groups: &[usize], total: usize) -> Result<(), String> {
        if self.counts.len() < total {
            self.counts.resize(total, 0);
        }
        self.ids.clear();
        match self.kind {
            DistinctKind::Int => {
                let v = if values.data_type() == &DataType::Int64 {
                    values.clone()
                } else if values.data_type() == &DataType::UInt64 {
                    // Reinterpret the bits: distinctness is preserved, no overflow error.
                    let u = values.as_primitive::<arrow::datatypes::UInt64Type>();
                    Arc::new(u.unary::<_, arrow::datatypes::Int64Type>(|x| x as i64))
                } else {
                    cast(values, &DataType::Int64).map_err(|e| e.to_string())?
                };
                let v = v.as_primitive::<arrow::datatypes::Int64Type>();
                self.ids.extend(v.values().iter().map(|&x| x as u64));
            }
            DistinctKind::Str => {
                let v = if values.data_type() == &DataType::Utf8 {
                    values.clone()
                } else {
                    cast(values, &DataType::Utf8).map_err(|e| e.to_string())?
                };
                let next = &mut self.next_id;
                let ids = &mut self.ids;
                // `observe` runs once per row, in row order (after `make` for a new value).
                self.strings.insert_if_new(
                    &v,
                    |_| {
                        let id = *next;
                        *next += 1;
                        id
                    },
                    |id| ids.push(u64::from(id)),
                );
            }
        }
        if self.ids.len() != groups.len() {
            return Err("internal: distinct ids do not match the rows".into());
        }
        let nulls = values.logical_nulls();
        for (i, (&g, &id)) in groups.iter().zip(&self.ids).enumerate() {
            if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                continue;
            }
            if self.seen.insert(g as u32, id) {
                self.counts[g] += 1;
            }
        }
        Ok(())
    }

    /// (group, value) pairs seen, as a UInt32 and an Int64 or Utf8 column.
    fn snapshot(&mut self) -> Result<Vec<ArrayRef>, String> {
        let mut pairs: Vec<(u32, u64)> = self.seen.pairs();
        pairs.sort_unstable();
        let groups: ArrayRef = Arc::new(UInt32Array::from_iter_values(pairs.iter().map(|p| p.0)));
        let values: ArrayRef = match self.kind {
            DistinctKind::Int => Arc::new(Int64Array::from_iter_values(
                pairs.iter().map(|p| p.1 as i64),
            )),
            DistinctKind::Str => {
                // Interned ids are insertion order: the map's state array is indexed by id. Take
                // it out and insert it back in the same order, so the ids stay the same.
                let strings =
                    std::mem::replace(&mut self.strings, ArrowBytesMap::new(OutputType::Utf8));
                let all = strings.into_state();
                let mut n = 0u32;
                self.strings.insert_if_new(
                    &all,
                    |_| {
                        let id = n;
                        n += 1;
                        id
                    },
                    |_| {},
                );
                let idx = UInt32Array::from_iter_values(pairs.iter().map(|p| p.1 as u32));
                take(all.as_ref(), &idx, None).map_err(|e| e.to_string())?
            }
        };
        Ok(vec![groups, values])
    }

    fn evaluate(&mut self, total: usize, reset: bool) -> ArrayRef {
        let mut counts = if reset {
            let c = std::mem::take(&mut self.counts);
            self.seen = Seen::new(self.kind);
            self.strings = ArrowBytesMap::new(OutputType::Utf8);
            self.next_id = 0;
            c
        } else {
            self.counts.clone()
        };
        counts.resize(total, 0);
        Arc::new(Int64Array::from(counts))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.seen.size()
            + self.counts.capacity() * 8
            + self.strings.size()
            + self.ids.capacity() * 8
    }
}

/// One DataFusion `Accumulator` per group (functions without a `GroupsAccumulator`).
pub struct PerGroup {
    spec: AggSpec,
    accs: Vec<Box<dyn Accumulator>>,
    bytes: usize,
}

impl PerGroup {
    fn new(spec: AggSpec) -> PerGroup {
        PerGroup {
            spec,
            accs: Vec::new(),
            bytes: 0,
        }
    }

    fn grow(&mut self, total: usize) -> Result<(), String> {
        while self.accs.len() < total {
            let acc = self.spec.accumulator()?;
            self.bytes += acc.size();
            self.accs.push(acc);
        }
        Ok(())
    }

    fn update(&mut self, values: &ArrayRef, groups: &[usize], total: usize) -> Result<(), String> {
        self.grow(total)?;
        // Rows ordered by group (stable: arrival order within a group, for `concat`).
        let mut order: Vec<u32> = (0..groups.len() as u32).collect();
        order.sort_by_key(|&i| groups[i as usize]);
        let mut start = 0;
        while start < order.len() {
            let g = groups[order[start] as usize];
            let mut end = start + 1;
            while end < order.len() && groups[order[end] as usize] == g {
                end += 1;
            }
            let idx = UInt32Array::from(order[start..end].to_vec());
            let part = take(values.as_ref(), &idx, None).map_err(|e| e.to_string())?;
            let acc = &mut self.accs[g];
            let before = acc.size();
            acc.update_batch(&[part]).map_err(|e| e.to_string())?;
            self.bytes = self.bytes.saturating_sub(before) + acc.size();
            start = end;
        }
        Ok(())
    }

    fn evaluate(&mut self, total: usize, reset: bool) -> Result<ArrayRef, String> {
        self.grow(total)?;
        let values: Vec<ScalarValue> = self
            .accs
            .iter_mut()
            .map(|a| a.evaluate().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        if reset {
            self.accs.clear();
            self.bytes = 0;
        }
        ScalarValue::iter_to_array(values).map_err(|e| e.to_string())
    }

    fn size(&self) -> usize {
        self.bytes + self.accs.capacity() * std::mem::size_of::<Box<dyn Accumulator>>()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringArray};

    use super::*;
    use crate::config::components::AggFn;

    fn ints(a: &ArrayRef) -> Vec<i64> {
        a.as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn distinct_strings_are_exact_per_group_and_ignore_nulls() {
        let spec = AggSpec::new(AggFn::CountDistinct, &DataType::Utf8).unwrap();
        let mut acc = GroupAcc::new(&spec).unwrap();
        assert!(matches!(acc, GroupAcc::Distinct(_)));
        let v: ArrayRef = Arc::new(StringArray::from(vec![
            Some("u1"),
            Some("u2"),
            Some("u1"),
            None,
            Some("a rather long user id"),
            Some("u1"),
        ]));
        acc.update(&v, &[0, 0, 0, 1, 1, 2], 3).unwrap();
        // A second batch: repeats, one new value in group 0, a new group 3 with no values yet.
        let w: ArrayRef = Arc::new(StringArray::from(vec![
            Some("u2"),
            Some("u3"),
            Some("a rather long user id"),
        ]));
        acc.update(&w, &[0, 0, 1], 4).unwrap();
        assert_eq!(ints(&acc.evaluate(&spec, 4, false).unwrap()), [3, 1, 1, 0]);
        // Accumulating evaluation kept the state; a reset starts every group afresh.
        assert_eq!(ints(&acc.evaluate(&spec, 4, true).unwrap()), [3, 1, 1, 0]);
        acc.update(&w, &[3, 3, 3], 4).unwrap();
        assert_eq!(ints(&acc.evaluate(&spec, 4, true).unwrap()), [0, 0, 0, 3]);
    }

    #[test]
    fn distinct_integers_count_values_not_rows() {
        let spec = AggSpec::new(AggFn::CountDistinct, &DataType::Int64).unwrap();
        let mut acc = GroupAcc::new(&spec).unwrap();
        let v: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(7),
            Some(-7),
            Some(7),
            None,
            Some(i64::MIN),
        ]));
        acc.update(&v, &[0, 0, 0, 0, 1], 2).unwrap();
        assert_eq!(ints(&acc.evaluate(&spec, 2, false).unwrap()), [2, 1]);
    }

    #[test]
    fn accumulating_evaluation_keeps_native_state() {
        let spec = AggSpec::new(AggFn::Mean, &DataType::Int64).unwrap();
        let mut acc = GroupAcc::new(&spec).unwrap();
        assert!(matches!(acc, GroupAcc::Native(_)));
        let prep = |x: Vec<i64>| {
            let a: ArrayRef = Arc::new(Int64Array::from(x));
            spec.prepare(Some(&a), a.len()).unwrap()
        };
        acc.update(&prep(vec![1, 2, 10]), &[0, 0, 1], 2).unwrap();
        let mean = |a: ArrayRef| {
            a.as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        assert_eq!(mean(acc.evaluate(&spec, 2, false).unwrap()), [1.5, 10.0]);
        acc.update(&prep(vec![6]), &[0], 2).unwrap();
        assert_eq!(mean(acc.evaluate(&spec, 2, false).unwrap()), [3.0, 10.0]);
        // Discarding: the values, then only what came after (group 0 has no data and is not
        // emitted by a pane).
        assert_eq!(mean(acc.evaluate(&spec, 2, true).unwrap()), [3.0, 10.0]);
        acc.update(&prep(vec![4]), &[1], 2).unwrap();
        let after = acc.evaluate(&spec, 2, true).unwrap();
        assert_eq!(
            after
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .value(1),
            4.0
        );
    }

    #[test]
    fn functions_without_a_groups_accumulator_keep_one_per_group() {
        let spec = AggSpec::new(AggFn::Quantile(0.5), &DataType::Int64).unwrap();
        let mut acc = GroupAcc::new(&spec).unwrap();
        assert!(matches!(acc, GroupAcc::PerGroup(_)));
        let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 100, 2, 3, 200]));
        let v = spec.prepare(Some(&a), a.len()).unwrap();
        acc.update(&v, &[0, 1, 0, 0, 1], 2).unwrap();
        let out = acc.evaluate(&spec, 2, false).unwrap();
        let out = out.as_any().downcast_ref::<Float64Array>().unwrap();
        // The same as one accumulator per group fed that group's rows.
        for (g, rows) in [(0, vec![1_i64, 2, 3]), (1, vec![100, 200])] {
            let mut single = spec.accumulator().unwrap();
            let a: ArrayRef = Arc::new(Int64Array::from(rows));
            single
                .update_batch(&[spec.prepare(Some(&a), a.len()).unwrap()])
                .unwrap();
            assert_eq!(
                single.evaluate().unwrap(),
                ScalarValue::Float64(Some(out.value(g)))
            );
        }
    }
}
