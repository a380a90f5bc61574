//! The body of `Combine::process`: one batch evaluated, keyed, assigned to windows and added to
//! the accumulators (vectorised per window for fixed, sliding and global windows; per group for
//! sessions, which merge).

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::row::OwnedRow;

use super::state::{Group, key_of};
use super::{Combine, PaneTiming, Prepared};
use crate::config::window::WindowKind;
use crate::expr;
use crate::pipeline::operator::{EngineError, EventTime, Output};
use crate::record::{Batch, rows};
use crate::time::{Window, assign};

impl Combine {
    /// Aggregates one batch (the body of `process`).
    pub(super) fn absorb(&mut self, batch: Batch, out: &mut Output) -> Result<(), EngineError> {
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
                        acks: crate::record::AckSet::new(),
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
            match &mut self.durable {
                Some(d) => d.sessions_changed = true,
                None => {
                    group.acks.extend_from(&batch.acks);
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
}
