//! `Deduplicate` (Sluice extension, SPEC §3): keeps the first row per `by` key within `within`
//! of event time and drops the others.
//!
//! A row is a duplicate when a kept row with the same key has an event time less than `within`
//! away. State is one entry per key (the event time of the kept row) and is bounded: keys whose
//! kept row is older than watermark − `within` are evicted, since no row that could duplicate
//! them can still arrive on time. Without event times (no `AssignTimestamps`), rows count as
//! time 0: duplicates are removed over the whole (bounded) run.

use std::collections::HashMap;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;

use crate::expr;
use crate::pipeline::operator::{EngineError, EventTime, Operator, Output};
use crate::record::Batch;

pub struct Deduplicate {
    name: String,
    by: Vec<String>,
    within_ms: i64,
    converter: Option<RowConverter>,
    /// Key bytes (arrow-row encoding) → event time of the kept row.
    seen: HashMap<Vec<u8>, EventTime>,
}

impl Deduplicate {
    pub fn new(name: &str, by: Vec<String>, within_ms: i64) -> Self {
        Deduplicate {
            name: name.to_string(),
            by,
            within_ms,
            converter: None,
            seen: HashMap::new(),
        }
    }

    /// Number of keys remembered (for tests of the state bound).
    pub fn keys(&self) -> usize {
        self.seen.len()
    }
}

#[async_trait]
impl Operator for Deduplicate {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let rows = &batch.rows;
        let cols = self
            .by
            .iter()
            .map(|f| {
                rows.column_by_name(f).cloned().ok_or_else(|| {
                    EngineError::config(
                        &self.name,
                        format!("by: {}", expr::unknown_field(f, &rows.schema())),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.converter.is_none() {
            let fields = cols
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            self.converter = Some(
                RowConverter::new(fields)
                    .map_err(|e| EngineError::internal(&self.name, e.to_string()))?,
            );
        }
        let converter = self.converter.as_ref().expect("set above");
        let keys = converter.convert_columns(&cols).map_err(|e| {
            EngineError::config(&self.name, format!("`by` fields changed type: {e}"))
        })?;
        let ts = batch.event_times();
        let mut keep = Vec::with_capacity(rows.num_rows());
        for i in 0..rows.num_rows() {
            let t = ts.map_or(0, |a| if a.is_null(i) { 0 } else { a.value(i) });
            let key = keys.row(i);
            let dup = self
                .seen
                .get(key.as_ref())
                .is_some_and(|&t0| t.abs_diff(t0) < self.within_ms.unsigned_abs());
            if !dup {
                self.seen.insert(key.as_ref().to_vec(), t);
            }
            keep.push(!dup);
        }
        let kept = filter_record_batch(rows, &BooleanArray::from(keep))
            .map_err(|e| EngineError::internal(&self.name, e.to_string()))?;
        out.main(batch.derive(kept));
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        let horizon = watermark.saturating_sub(self.within_ms);
        self.seen.retain(|_, t| *t >= horizon);
        Ok(())
    }
}
