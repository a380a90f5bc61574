//! `ExtractWindowingInfo`: adds window and pane information as ordinary fields.
//!
//! Aggregated rows (from `Combine`) carry their window and pane in hidden columns. Other rows
//! get the window computed from their event time and the node's windowing: one output row per
//! window, so a sliding window of size 60s and period 30s doubles the rows; a session element
//! gets its own `[t, t + gap)` (merging happens only in aggregations, as in Beam), and its pane
//! is Beam's `NO_FIRING` (index 0, timing `UNKNOWN`). `window_start`, `window_end` and
//! `timestamp` are `Timestamp(ms, UTC)`; bounds of the global window are null.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int8Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use async_trait::async_trait;

use super::combine::PaneTiming;
use crate::config::window::Windowing;
use crate::pipeline::operator::{END_OF_TIME, EngineError, EventTime, Operator, Output};
use crate::record::{Batch, meta};
use crate::time::{Window, assign};

pub struct ExtractWindowingInfo {
    name: String,
    /// (output field, parameter).
    fields: Vec<(String, String)>,
    windowing: Windowing,
}

impl ExtractWindowingInfo {
    pub fn new(name: &str, fields: Vec<(String, String)>, windowing: Windowing) -> Self {
        ExtractWindowingInfo {
            name: name.to_string(),
            fields,
            windowing,
        }
    }
}

fn bound(ms: EventTime) -> Option<i64> {
    (ms != EventTime::MIN && ms != END_OF_TIME).then_some(ms)
}

/// Beam's `str(IntervalWindow)`: epoch seconds as Python floats.
fn window_string(w: Window) -> String {
    if w.is_global() {
        return "GlobalWindow".into();
    }
    format!(
        "[{:?}, {:?})",
        w.start as f64 / 1000.0,
        w.end as f64 / 1000.0
    )
}

#[async_trait]
impl Operator for ExtractWindowingInfo {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let rows = &batch.rows;
        let n = rows.num_rows();
        let ts_col = batch.event_times().cloned();
        let ts = |i: usize| -> Option<EventTime> {
            ts_col
                .as_ref()
                .and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
        };
        // One (row, window, pane index, pane timing) per output row.
        let mut take_idx: Vec<u32> = Vec::with_capacity(n);
        let mut windows: Vec<Window> = Vec::with_capacity(n);
        let mut panes: Vec<i64> = Vec::with_capacity(n);
        let mut timings: Vec<i8> = Vec::with_capacity(n);
        let starts = batch.column_i64(meta::WINDOW_START);
        let ends = batch.column_i64(meta::WINDOW_END);
        if let (Some(starts), Some(ends)) = (starts, ends) {
            let pane_idx = batch.column_i64(meta::PANE_INDEX);
            let pane_timing = rows
                .column_by_name(meta::PANE_TIMING)
                .and_then(|c| c.as_any().downcast_ref::<Int8Array>());
            for i in 0..n {
                take_idx.push(i as u32);
                windows.push(Window::new(starts.value(i), ends.value(i)));
                panes.push(pane_idx.map_or(0, |p| p.value(i)));
                timings.push(pane_timing.map_or(-1, |p| p.value(i)));
            }
        } else {
            for i in 0..n {
                let ws = match ts(i) {
                    Some(t) => assign(&self.windowing.kind, t),
                    None => vec![Window::GLOBAL],
                };
                for w in ws {
                    take_idx.push(i as u32);
                    windows.push(w);
                    panes.push(0);
                    timings.push(-1);
                }
            }
        }
        let indices = UInt32Array::from(take_idx);
        let base = if indices.len() == n
            && indices
                .values()
                .iter()
                .enumerate()
                .all(|(i, v)| *v as usize == i)
        {
            rows.clone()
        } else {
            arrow::compute::take_record_batch(rows, &indices)
                .map_err(|e| EngineError::internal(&self.name, e.to_string()))?
        };
        let ts_out: Vec<Option<i64>> = indices.values().iter().map(|&i| ts(i as usize)).collect();
        let schema = base.schema();
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        let mut columns: Vec<ArrayRef> = base.columns().to_vec();
        let tstype = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        for (out_name, param) in &self.fields {
            if schema.index_of(out_name).is_ok() {
                return Err(EngineError::config(
                    &self.name,
                    format!("field `{out_name}` already exists in the input; choose another name"),
                ));
            }
            let (ty, col): (DataType, ArrayRef) = match param.as_str() {
                "window_start" | "window_end" | "timestamp" => {
                    let vals: Vec<Option<i64>> = match param.as_str() {
                        "window_start" => windows.iter().map(|w| bound(w.start)).collect(),
                        "window_end" => windows.iter().map(|w| bound(w.end)).collect(),
                        _ => ts_out.clone(),
                    };
                    (
                        tstype.clone(),
                        Arc::new(TimestampMillisecondArray::from(vals).with_timezone("UTC")),
                    )
                }
                "pane_index" => (DataType::Int64, Arc::new(Int64Array::from(panes.clone()))),
                "pane_timing" => (
                    DataType::Utf8,
                    Arc::new(StringArray::from(
                        timings
                            .iter()
                            .map(|&t| PaneTiming::name(t))
                            .collect::<Vec<_>>(),
                    )),
                ),
                "window_string" => (
                    DataType::Utf8,
                    Arc::new(StringArray::from(
                        windows
                            .iter()
                            .map(|w| window_string(*w))
                            .collect::<Vec<_>>(),
                    )),
                ),
                "window_type" => (
                    DataType::Utf8,
                    Arc::new(StringArray::from(
                        windows
                            .iter()
                            .map(|w| {
                                if w.is_global() {
                                    "GlobalWindow"
                                } else {
                                    "IntervalWindow"
                                }
                            })
                            .collect::<Vec<_>>(),
                    )),
                ),
                other => {
                    return Err(EngineError::config(
                        &self.name,
                        format!("unknown windowing info `{other}`"),
                    ));
                }
            };
            // Insert before the hidden columns, so user columns keep their order.
            let at = fields
                .iter()
                .position(|f| meta::is_hidden(f.name()))
                .unwrap_or(fields.len());
            fields.insert(at, Arc::new(Field::new(out_name, ty, true)));
            columns.insert(at, col);
        }
        let out_rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| EngineError::internal(&self.name, e.to_string()))?;
        out.main(batch.derive(out_rows));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_strings_match_beams_repr() {
        assert_eq!(
            window_string(Window::new(1_767_225_600_000, 1_767_225_660_000)),
            "[1767225600.0, 1767225660.0)"
        );
        assert_eq!(window_string(Window::new(500, 1500)), "[0.5, 1.5)");
        assert_eq!(window_string(Window::GLOBAL), "GlobalWindow");
    }
}
