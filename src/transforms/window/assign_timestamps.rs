//! `AssignTimestamps`: evaluates `timestamp` per batch and stores the event time (ms) in the
//! hidden `__sluice_ts` column; generates watermarks with bounded out-of-orderness.
//!
//! Accepted values: Arrow timestamps and dates, RFC 3339 strings (Beam accepts these only when
//! its pandas reader already parsed them; Sluice accepts them directly), and numbers in the
//! declared `unit`, by default seconds below 10^11 and milliseconds above (`time::epoch`;
//! fractions kept to the millisecond). Rows whose value is null or cannot be read go to the
//! error output. Event times more than 100 years from now are counted and logged
//! (`time::epoch::RangeGuard`) and processed as given.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;

use crate::config::ExprSpec;
use crate::config::components::WatermarkSpec;
use crate::expr;
use crate::pipeline::operator::{
    END_OF_TIME, EngineError, ErrorRoute, EventTime, Operator, Output,
};
use crate::record::{Batch, meta, rows};
use crate::time::epoch::{EpochUnit, RangeGuard};
use crate::time::{BoundedOutOfOrderness, rfc3339};
use crate::transforms::CompiledFor;

pub struct AssignTimestamps {
    timestamp: CompiledFor,
    errors: ErrorRoute,
    /// `None`: the watermark is the input's (bounded pipelines without a `watermark:` key, so
    /// that nothing is late, as on Beam's batch runner).
    generator: Option<BoundedOutOfOrderness>,
    /// The pipeline declared `watermark:`: the generated watermark replaces the input's.
    owns: bool,
    /// The unit of numeric timestamps.
    unit: EpochUnit,
    range: RangeGuard,
}

impl AssignTimestamps {
    /// `watermark`: the generator settings, or `None` to pass the input watermark through.
    /// `owns`: the settings were declared (`watermark:`), so the generated watermark replaces
    /// the input's; otherwise (defaults on a stream) it only raises it, Beam's rule.
    pub fn new(
        timestamp: ExprSpec,
        watermark: Option<WatermarkSpec>,
        owns: bool,
        errors: ErrorRoute,
    ) -> Self {
        AssignTimestamps {
            timestamp: CompiledFor::new(vec![timestamp]),
            errors,
            generator: watermark.map(|w| BoundedOutOfOrderness::new(w.max_delay, w.idle_timeout)),
            owns,
            unit: EpochUnit::Auto,
            range: RangeGuard::default(),
        }
    }

    /// Reads numeric timestamps in `unit` (default `auto`).
    pub fn with_unit(mut self, unit: EpochUnit) -> Self {
        self.unit = unit;
        self
    }
}

/// Converts timestamp values to epoch milliseconds, numbers in `unit`; `Err` per row that
/// cannot be read.
pub fn to_millis(values: &ArrayRef, unit: EpochUnit) -> (Int64Array, Vec<(usize, String)>) {
    let n = values.len();
    let ms_type = DataType::Timestamp(TimeUnit::Millisecond, None);
    let converted: Result<Int64Array, String> = match values.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => cast(values, &ms_type)
            .and_then(|a| cast(&a, &DataType::Int64))
            .map_err(|e| e.to_string())
            .and_then(|a| downcast_i64(&a)),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            match rfc3339::column_millis(values) {
                // Every value has the canonical UTC form (time/rfc3339.rs); nulls stay null.
                Some(ms) => Ok(ms),
                // Arrow's RFC 3339 parsing; unparseable values become null and are reported.
                None => cast(
                    values,
                    &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                )
                .and_then(|a| cast(&a, &DataType::Int64))
                .map_err(|e| e.to_string())
                .and_then(|a| downcast_i64(&a)),
            }
        }
        DataType::Int64 => values
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| {
                a.iter()
                    .map(|v| v.and_then(|v| unit.int_to_millis(v)))
                    .collect()
            })
            .ok_or_else(|| "internal: Int64 column of another type".to_string()),
        t if t.is_numeric() => match cast(values, &DataType::Float64) {
            Ok(f) => {
                let f = f
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .cloned()
                    .unwrap_or_else(|| Float64Array::from(vec![None; n]));
                Ok(f.iter()
                    .map(|v| v.and_then(|s| unit.float_to_millis(s)))
                    .collect())
            }
            Err(e) => Err(e.to_string()),
        },
        other => Err(format!(
            "cannot interpret a value of type {other} as a timestamp; expected a timestamp, an RFC 3339 string or an epoch number"
        )),
    };
    match converted {
        Ok(ms) => {
            let failed = (0..n)
                .filter(|&i| ms.is_null(i))
                .map(|i| {
                    let msg = if values.is_null(i) {
                        "the timestamp is null".to_string()
                    } else {
                        "cannot interpret the value as a timestamp (expected an RFC 3339 string like 2026-01-01T00:00:05Z, an epoch number within ±2.9e8 years, or a timestamp)".to_string()
                    };
                    (i, msg)
                })
                .collect();
            (ms, failed)
        }
        Err(msg) => (
            Int64Array::from(vec![None; n]),
            (0..n).map(|i| (i, msg.clone())).collect(),
        ),
    }
}

fn downcast_i64(a: &ArrayRef) -> Result<Int64Array, String> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| "internal: cast to Int64 gave another type".to_string())
}

#[async_trait]
impl Operator for AssignTimestamps {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let name = self.errors.transform().to_string();
        let exprs = self
            .timestamp
            .get(&batch.schema())
            .map_err(|e| EngineError::config(&name, e))?;
        let evaluated = expr::evaluate_isolating(exprs, &batch.rows);
        let mut failures = crate::transforms::row_failures(&batch.rows, &evaluated.failed);
        let Some(values) = evaluated.values.first() else {
            return Ok(());
        };
        let (ms, bad) = to_millis(values, self.unit);
        failures.extend(
            bad.iter()
                .map(|(i, e)| (rows::row_json(&evaluated.rows, *i), e.clone())),
        );
        self.errors.report(out, &batch, failures);
        let mut rows = evaluated.rows;
        let mut ts: ArrayRef = Arc::new(ms);
        if !bad.is_empty() {
            let keep = arrow::compute::is_not_null(&ts)
                .map_err(|e| EngineError::internal(&name, e.to_string()))?;
            rows = arrow::compute::filter_record_batch(&rows, &keep)
                .map_err(|e| EngineError::internal(&name, e.to_string()))?;
            ts = arrow::compute::filter(&ts, &keep)
                .map_err(|e| EngineError::internal(&name, e.to_string()))?;
        }
        let times = ts.as_any().downcast_ref::<Int64Array>();
        if let Some(t) = times {
            self.range
                .observe(t, chrono::Utc::now().timestamp_millis(), &self.errors);
        }
        let max = times.and_then(arrow::compute::max);
        let with_ts = Batch::new(rows)
            .with_column(meta::EVENT_TIME, ts)
            .map_err(|e| EngineError::internal(&name, e.to_string()))?;
        if let Some(g) = &mut self.generator {
            g.observe(max, tokio::time::Instant::now());
        }
        out.main(batch.derive(with_ts.rows));
        Ok(())
    }

    /// With `watermark:` this transform owns the watermark downstream (Flink's
    /// `assignTimestampsAndWatermarks`): it is generated from the assigned times alone, and the
    /// upstream watermark (a Pub/Sub source's publish times, now while the payload says two days
    /// ago) no longer applies. Only the end of time passes through, so a finished input still
    /// fires every window.
    fn output_watermark(&self, input_wm: EventTime) -> EventTime {
        match &self.generator {
            Some(_) if input_wm == END_OF_TIME => END_OF_TIME,
            Some(g) if self.owns => g.current(),
            Some(g) => input_wm.max(g.current()),
            None => input_wm,
        }
    }

    fn timer_interval(&self) -> Option<Duration> {
        // A quarter of the timeout: an idle source is noticed within 1.25 × idle_timeout.
        self.generator
            .as_ref()
            .and_then(|g| g.idle_timeout())
            .map(|d| (d / 4).max(Duration::from_millis(10)))
    }

    async fn on_timer(
        &mut self,
        now: tokio::time::Instant,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        if let Some(g) = &mut self.generator {
            g.on_idle_check(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    #[test]
    fn strings_numbers_and_nulls_convert_to_millis() {
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("2026-01-01T00:00:05.250Z"),
            Some("not a time"),
            None,
        ]));
        let (ms, bad) = to_millis(&s, EpochUnit::Auto);
        assert_eq!(ms.value(0), 1_767_225_605_250);
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(bad[1].1.contains("null"));
        let f: ArrayRef = Arc::new(Float64Array::from(vec![1_767_225_659.999, 1_767_225_600.0]));
        let (ms, bad) = to_millis(&f, EpochUnit::Auto);
        assert!(bad.is_empty());
        assert_eq!(ms.values(), &[1_767_225_659_999, 1_767_225_600_000]);
        let i: ArrayRef = Arc::new(Int64Array::from(vec![1_767_225_660]));
        assert_eq!(to_millis(&i, EpochUnit::Auto).0.value(0), 1_767_225_660_000);
        // Issue #20: epoch milliseconds are not read as seconds (year 57971).
        let i: ArrayRef = Arc::new(Int64Array::from(vec![1_767_225_600_123]));
        assert_eq!(to_millis(&i, EpochUnit::Auto).0.value(0), 1_767_225_600_123);
        assert_eq!(
            to_millis(&i, EpochUnit::Seconds).0.value(0),
            1_767_225_600_123_000
        );
    }

    /// Issue #16: event times two days old from the payload of a stream published now. With
    /// `watermark:` the source's watermark (publish time, now) no longer applies downstream.
    #[tokio::test]
    async fn with_a_watermark_the_assigned_times_own_it() {
        let spec = |watermark: Option<WatermarkSpec>| {
            let owns = watermark.is_some();
            AssignTimestamps::new(
                ExprSpec {
                    kind: crate::config::exprs::ExprKind::Field("ts".into()),
                    pos: Default::default(),
                },
                watermark,
                owns,
                ErrorRoute::new("Stamp", None, Arc::default()),
            )
        };
        let now = 1_767_225_600_000;
        let two_days_ago = now - 2 * 86_400_000;
        let rows = arrow::array::RecordBatch::try_from_iter([(
            "ts",
            Arc::new(Int64Array::from(vec![two_days_ago / 1000 + 30])) as ArrayRef,
        )])
        .unwrap();
        let mut owned = spec(Some(WatermarkSpec {
            max_delay: Duration::from_secs(10),
            idle_timeout: None,
        }));
        let mut out = Output::new(1);
        owned
            .process(0, Batch::new(rows.clone()), &mut out)
            .await
            .unwrap();
        assert_eq!(owned.output_watermark(now), two_days_ago + 20_000);
        assert_eq!(owned.output_watermark(END_OF_TIME), END_OF_TIME);
        let mut passing = spec(None);
        passing
            .process(0, Batch::new(rows), &mut out)
            .await
            .unwrap();
        assert_eq!(
            passing.output_watermark(now),
            now,
            "Beam's rule without `watermark:`"
        );
    }
}
