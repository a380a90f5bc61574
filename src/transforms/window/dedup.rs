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

use super::combine::durable::DurableConfig;
use super::dedup_state::DedupState;
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
    /// Checkpointed keys (`options.state` with a persistent backend).
    durable: Option<DedupState>,
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
            durable: None,
        }
    }

    /// Keeps the keys in a state store, so duplicates are dropped across restarts too.
    pub fn with_durable(mut self, cfg: DurableConfig, pipeline: &str) -> Self {
        self.durable = Some(DedupState::new(cfg, pipeline, &self.name));
        self
    }

    async fn restore_once(&mut self) -> Result<(), EngineError> {
        if let Some(d) = &mut self.durable {
            for (k, t) in d.restore(&self.name).await? {
                self.seen.entry(k).or_insert(t);
            }
        }
        Ok(())
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
        self.restore_once().await?;
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
        let mut kept_keys = Vec::new();
        for i in 0..rows.num_rows() {
            let t = ts.map_or(0, |a| if a.is_null(i) { 0 } else { a.value(i) });
            let key = keys.row(i);
            let dup = self
                .seen
                .get(key.as_ref())
                .is_some_and(|&t0| t.abs_diff(t0) < self.within_ms.unsigned_abs());
            if !dup {
                self.seen.insert(key.as_ref().to_vec(), t);
                if self.durable.is_some() {
                    kept_keys.push((key.as_ref().to_vec(), t));
                }
            }
            keep.push(!dup);
        }
        let kept = filter_record_batch(rows, &BooleanArray::from(keep))
            .map_err(|e| EngineError::internal(&self.name, e.to_string()))?;
        let mut kept = batch.derive(kept);
        if let Some(d) = &self.durable
            && !kept_keys.is_empty()
        {
            kept.acks.insert(d.kept(kept_keys));
        }
        out.main(kept);
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        self.restore_once().await?;
        let horizon = watermark.saturating_sub(self.within_ms);
        match &mut self.durable {
            None => self.seen.retain(|_, t| *t >= horizon),
            Some(d) => self.seen.retain(|k, t| {
                let live = *t >= horizon;
                if !live {
                    d.evict(k.clone());
                }
                live
            }),
        }
        Ok(())
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        self.durable.as_ref().map(DedupState::interval)
    }

    async fn on_timer(
        &mut self,
        now: tokio::time::Instant,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        self.restore_once().await?;
        if let Some(d) = &mut self.durable {
            d.checkpoint(&self.name, Some(now), &self.seen).await?;
        }
        Ok(())
    }

    async fn on_end(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        if let Some(d) = &mut self.durable {
            d.checkpoint(&self.name, None, &self.seen).await?;
        }
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

    #[tokio::test]
    async fn durable_keys_survive_a_restart_once_their_rows_were_written() {
        let store = crate::state::open(&crate::state::StateConfig::default())
            .await
            .unwrap();
        let cfg = DurableConfig {
            store,
            checkpoint_interval: std::time::Duration::from_secs(1),
            dedupe_horizon: std::time::Duration::from_secs(600),
            failed: Arc::default(),
        };
        let worker = || Deduplicate::new("Once", Vec::new(), 60_000).with_durable(cfg.clone(), "p");
        let now = tokio::time::Instant::now();
        let mut out = Output::new(1);
        let mut first = worker();
        first
            .process(0, batch(&[(1, "m1", 0), (2, "m2", 1_000)]), &mut out)
            .await
            .unwrap();
        assert_eq!(
            kept(&mut out),
            vec![1, 2],
            "written (the batch was dropped)"
        );
        first.on_timer(now, &mut out).await.unwrap();
        first
            .process(0, batch(&[(3, "m3", 2_000)]), &mut out)
            .await
            .unwrap();
        let unwritten: Vec<Batch> = out.drain().map(|(_, b)| b).collect();
        first
            .on_timer(now + std::time::Duration::from_secs(2), &mut out)
            .await
            .unwrap();
        drop(first);
        drop(unwritten);

        // Restarted: m1 and m2 were written and checkpointed, so their redelivery is dropped;
        // m3's row was never written, so it is kept again.
        let mut second = worker();
        second
            .process(
                0,
                batch(&[(4, "m1", 0), (5, "m2", 1_000), (6, "m3", 2_000)]),
                &mut out,
            )
            .await
            .unwrap();
        assert_eq!(kept(&mut out), vec![6]);
    }
}
