//! Checkpoint and restore of a `Combine`'s windows (the format and the commit protocol are in
//! `durable.rs`): fixed, sliding and global windows one store entry each, session groups in one
//! entry.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;

use super::Combine;
use super::durable::{Extra, encode, window_key, window_value};
use super::groups::{accumulator_states, merge_accumulator_states};
use super::state::{Group, key_of};
use super::windows::{WindowState, snapshot_batch};
use crate::pipeline::operator::{EngineError, Output};
use crate::time::Window;

impl Combine {
    /// Restores the checkpoint once, before the first call that touches the state; panes that
    /// were emitted but not written before the restart are emitted again into `out`.
    ///
    /// # Errors
    /// The store failed, or the checkpoint does not fit this Combine.
    pub(super) async fn restore_once(&mut self, out: &mut Output) -> Result<(), EngineError> {
        let Some(d) = self.durable.as_mut().filter(|d| !d.restored) else {
            return Ok(());
        };
        let r = d.load(&self.name).await?;
        let name = self.name.clone();
        let bad = |e: String| {
            EngineError::config(
                &name,
                format!(
                    "the checkpoint does not fit this Combine (was the pipeline changed?): {e}"
                ),
            )
        };
        if let Some(wm) = r.watermark {
            self.watermark = self.watermark.max(wm);
        }
        if let Some((keys, values)) = r.layout {
            let want_keys = self.group_by.len().max(1);
            if keys.len() != want_keys || values.len() != self.fields.len() {
                return Err(bad(format!(
                    "it has {} key and {} value columns, this Combine {want_keys} and {}",
                    keys.len(),
                    values.len(),
                    self.fields.len()
                )));
            }
            self.make_layout(keys, values)?;
        }
        let (windows, sessions) = (r.windows.len(), r.sessions.is_some());
        if let Some(layout) = &self.layout {
            for (end, start, fired, batches) in r.windows {
                let w = Window::new(start, end);
                let state = WindowState::restore(w, layout, fired, &batches).map_err(bad)?;
                self.windows.insert((end, start), state);
            }
            if let Some(batches) = r.sessions {
                self.restore_sessions(&batches).map_err(bad)?;
            }
        } else if windows > 0 || sessions {
            return Err(bad("windows without a layout".into()));
        }
        let panes = r.outputs.len();
        for (port, b) in r.outputs {
            out.emit(port, b);
        }
        tracing::info!(
            transform = %self.name,
            windows,
            sessions = self.state.len(),
            panes,
            watermark = self.watermark,
            "Restored the checkpoint"
        );
        self.publish();
        Ok(())
    }

    /// Commits a checkpoint of what changed since the last one, then lets the input it holds be
    /// acknowledged.
    ///
    /// # Errors
    /// The store failed after retries, or a state could not be exported (internal).
    pub(super) async fn checkpoint(&mut self) -> Result<(), EngineError> {
        let Some(mut d) = self.durable.take() else {
            return Ok(());
        };
        let result = self.checkpoint_with(&mut d).await;
        self.durable = Some(d);
        result
    }

    async fn checkpoint_with(
        &mut self,
        d: &mut super::durable::Durable,
    ) -> Result<(), EngineError> {
        let name = self.name.clone();
        let internal = |e: String| EngineError::internal(&name, e);
        let mut windows = Vec::new();
        if let Some(layout) = &self.layout {
            for key in &d.changed {
                if let Some(w) = self.windows.get_mut(key) {
                    let batches = w.snapshot(layout).map_err(internal)?;
                    let value = window_value(w.on_time_fired, &batches).map_err(internal)?;
                    windows.push((window_key(key.0, key.1), value));
                }
            }
        }
        let sessions = if d.sessions_changed {
            Some(if self.state.is_empty() {
                None
            } else {
                Some(self.snapshot_sessions().map_err(internal)?)
            })
        } else {
            None
        };
        let extra = Extra {
            watermark: self.watermark,
            layout: self.layout_types.clone(),
            windows,
            sessions,
        };
        d.commit(&self.name, extra).await
    }

    /// All session groups as one entry: a batch of (end, start, key columns, pane index,
    /// on-time fired, dirty), then one batch of accumulator states per aggregation.
    fn snapshot_sessions(&mut self) -> Result<Vec<u8>, String> {
        let layout = self.layout.as_ref().ok_or("no layout")?;
        let n = self.state.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(self.state.keys().map(|k| k.0))),
            Arc::new(Int64Array::from_iter_values(self.state.keys().map(|k| k.1))),
        ];
        columns.extend(
            layout
                .converter
                .convert_rows(self.state.keys().map(|k| k.2.row()))
                .map_err(|e| e.to_string())?,
        );
        columns.push(Arc::new(Int64Array::from_iter_values(
            self.state.values().map(|g| g.pane_index),
        )));
        columns.push(Arc::new(BooleanArray::from_iter(
            self.state.values().map(|g| Some(g.on_time_fired)),
        )));
        columns.push(Arc::new(BooleanArray::from_iter(
            self.state.values().map(|g| Some(g.dirty)),
        )));
        let mut batches = vec![snapshot_batch(columns, n)?];
        for j in 0..layout.specs.len() {
            let mut accs: Vec<Box<dyn datafusion::logical_expr::Accumulator>> =
                Vec::with_capacity(n);
            for g in self.state.values_mut() {
                accs.push(std::mem::replace(
                    &mut g.accs[j],
                    layout.specs[j].accumulator()?,
                ));
            }
            let states = accumulator_states(&mut accs);
            for (g, acc) in self.state.values_mut().zip(accs) {
                g.accs[j] = acc;
            }
            batches.push(snapshot_batch(states?, n)?);
        }
        encode(&batches)
    }

    fn restore_sessions(&mut self, batches: &[RecordBatch]) -> Result<(), String> {
        let layout = self.layout.as_ref().ok_or("no layout")?;
        let (groups, accs) = batches.split_first().ok_or("empty sessions checkpoint")?;
        let nkeys = layout.key_fields.len();
        let n = groups.num_rows();
        if groups.num_columns() != nkeys + 5 || accs.len() != layout.specs.len() {
            return Err("the sessions checkpoint does not match the Combine's fields".into());
        }
        let int = |i: usize| {
            groups
                .column(i)
                .as_primitive_opt::<Int64Type>()
                .ok_or("not Int64")
        };
        let flag = |i: usize| groups.column(i).as_boolean_opt().ok_or("not Boolean");
        let (ends, starts, panes) = (int(0)?, int(1)?, int(nkeys + 2)?);
        let (fired, dirty) = (flag(nkeys + 3)?, flag(nkeys + 4)?);
        let keys = layout
            .converter
            .convert_columns(&groups.columns()[2..2 + nkeys])
            .map_err(|e| e.to_string())?;
        let mut per_acc = Vec::with_capacity(accs.len());
        for (spec, batch) in layout.specs.iter().zip(accs) {
            let mut a = (0..n)
                .map(|_| spec.accumulator())
                .collect::<Result<Vec<_>, _>>()?;
            merge_accumulator_states(&mut a, batch.columns())?;
            per_acc.push(a.into_iter());
        }
        for i in 0..n {
            let w = Window::new(starts.value(i), ends.value(i));
            let row = keys.row(i).owned();
            let accs = per_acc
                .iter_mut()
                .map(|it| it.next().ok_or("too few states"))
                .collect::<Result<Vec<_>, _>>()?;
            let mut g = Group {
                accs,
                pane_index: panes.value(i),
                on_time_fired: fired.value(i),
                dirty: dirty.value(i),
                acks: crate::record::AckSet::new(),
                bytes: 0,
            };
            let key = key_of(w, row.clone());
            self.bytes.update(&key, &mut g);
            self.sessions.entry(row).or_default().insert(w);
            self.state.insert(key, g);
        }
        Ok(())
    }
}
