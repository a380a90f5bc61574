//! `Deduplicate` (Sluice extension, SPEC §3): keeps the first row per `by` key within `within`
//! of event time and drops the others. Without `by`, the key is the source message id: the
//! hidden `__sluice_id` column that `ReadFromPubSub` fills with the `id_attribute` value, else
//! the Pub/Sub message id, and that element-wise transforms carry along (`validate` refuses an
//! input that has none).
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
use crate::record::{Batch, meta};

pub struct Deduplicate {
    name: String,
    /// Key columns; `[__sluice_id]` when deduplicating by message id.
    by: Vec<String>,
    by_message_id: bool,
    within_ms: i64,
    converter: Option<RowConverter>,
    /// Key bytes (arrow-row encoding) → event time of the kept row.
    seen: HashMap<Vec<u8>, EventTime>,
}

impl Deduplicate {
    /// `by` empty: by source message id.
    pub fn new(name: &str, by: Vec<String>, within_ms: i64) -> Self {
        let by_message_id = by.is_empty();
        let by = if by_message_id {
            vec![meta::ROW_ID.to_string()]
        } else {
            by
        };
        Deduplicate {
            name: name.to_string(),
            by,
            by_message_id,
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
                    let msg = if self.by_message_id {
                        "the rows carry no message id (without `by`, Deduplicate keys on the id ReadFromPubSub gives each row); name the key fields with `by`".to_string()
                    } else {
                        format!("by: {}", expr::unknown_field(f, &rows.schema()))
                    };
                    EngineError::config(&self.name, msg)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// Rows (n, message id, event time ms).
    fn batch(rows: &[(i64, &str, i64)]) -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new(meta::ROW_ID, DataType::Utf8, false),
            Field::new(meta::EVENT_TIME, DataType::Int64, false),
        ]));
        Batch::new(
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                    )),
                ],
            )
            .unwrap(),
        )
    }

    fn kept(out: &mut Output) -> Vec<i64> {
        out.drain()
            .flat_map(|(_, b)| {
                let n = b
                    .rows
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                n.values().to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn without_by_rows_are_deduplicated_by_message_id_within_the_duration() {
        let mut d = Deduplicate::new("Once", Vec::new(), 10_000);
        let mut out = Output::new(1);
        // m1 twice in one batch, m2 once; then m1 again within 10 s (dropped), m3 (kept).
        d.process(
            0,
            batch(&[(1, "m1", 0), (2, "m2", 1_000), (3, "m1", 2_000)]),
            &mut out,
        )
        .await
        .unwrap();
        d.process(0, batch(&[(4, "m1", 9_999), (5, "m3", 3_000)]), &mut out)
            .await
            .unwrap();
        assert_eq!(kept(&mut out), vec![1, 2, 5]);
        // 10 s after the kept m1 it counts as new; the watermark then evicts old keys.
        d.process(0, batch(&[(6, "m1", 10_000)]), &mut out)
            .await
            .unwrap();
        assert_eq!(kept(&mut out), vec![6]);
        assert_eq!(d.keys(), 3);
        d.on_watermark(13_001, &mut out).await.unwrap();
        assert_eq!(d.keys(), 1, "only m1 (kept at 10 s) is still within reach");
    }

    #[tokio::test]
    async fn without_by_rows_without_message_ids_are_a_config_error() {
        let mut d = Deduplicate::new("Once", Vec::new(), 10_000);
        let mut out = Output::new(1);
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        let err = d.process(0, Batch::new(rows), &mut out).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "Once: the rows carry no message id (without `by`, Deduplicate keys on the id ReadFromPubSub gives each row); name the key fields with `by`"
        );
    }
}
