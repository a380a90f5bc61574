//! Functions whose output size is set by an argument (`repeat(s, n)`, `lpad(s, n)`,
//! `array_repeat(x, n)`, `range(a, b)`…) run with a bound: a call that would make more than
//! [`max_output`] bytes for one batch fails instead of allocating it. The expression's usual
//! error handling then evaluates the batch row by row, so only the rows that alone would exceed
//! the bound go to the error output (issue #20: `repeat(name, 1e9)` used to abort the worker).
//!
//! Every session that evaluates user SQL comes from [`session`], which replaces DataFusion's
//! versions of these functions with bounded ones of the same name and signature.

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, FieldRef, IntervalUnit, TimeUnit};
use datafusion::common::{Result, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::{SessionConfig, SessionContext};

/// Default of [`max_output`]: 64 MiB.
const DEFAULT_MAX_OUTPUT: u128 = 64 << 20;

/// Bytes one call of a bounded function may produce for one batch: `SLUICE_MAX_FUNCTION_OUTPUT`
/// (bytes), or 64 MiB.
pub fn max_output() -> u128 {
    static MAX: OnceLock<u128> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("SLUICE_MAX_FUNCTION_OUTPUT")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MAX_OUTPUT)
    })
}

/// A session for compiling user SQL, with the bounded functions.
pub fn session(config: SessionConfig) -> SessionContext {
    let ctx = SessionContext::new_with_config(config);
    for (name, size) in BOUNDED {
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, size: *size }));
        }
    }
    ctx
}

/// The functions bounded, and how their output size is estimated.
const BOUNDED: &[(&str, Size)] = &[
    ("repeat", Size::Repeat),
    ("lpad", Size::Pad),
    ("rpad", Size::Pad),
    ("replace", Size::Replace),
    ("regexp_replace", Size::Replace),
    ("array_repeat", Size::Elements),
    ("array_resize", Size::Elements),
    ("range", Size::Range),
    ("generate_series", Size::Range),
];

/// An upper estimate of a call's output in bytes, from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `repeat(s, n)`: Σ len(s) · n.
    Repeat,
    /// `lpad(s, n[, fill])`: Σ n characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: Σ len(s) · max(len(to), 1).
    Replace,
    /// `array_repeat(x, n)`, `array_resize(a, n[, v])`: Σ n elements of 8 bytes.
    Elements,
    /// `range([start,] end[, step])`: Σ (end − start) / step elements of 8 bytes.
    Range,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    size: Size,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // An estimate that cannot be made (an unexpected type) leaves the call to the function.
        if let Some(bytes) = estimate(self.size, &args.args, args.number_rows)
            && bytes > max_output()
        {
            return exec_err!(
                "{}() would produce about {} MiB for {} row(s), more than the limit of {} MiB (SLUICE_MAX_FUNCTION_OUTPUT)",
                self.name(),
                bytes >> 20,
                args.number_rows,
                max_output() >> 20
            );
        }
        self.inner.invoke_with_args(args)
    }
}

fn estimate(size: Size, args: &[ColumnarValue], rows: usize) -> Option<u128> {
    let arg = |i: usize| args.get(i).and_then(|a| a.to_array(rows).ok());
    match size {
        Size::Repeat => Some(dot(&lengths(&arg(0)?)?, &ints(&arg(1)?)?, 1)),
        Size::Pad => Some(sum(&ints(&arg(1)?)?, 4)),
        Size::Replace => {
            let to = lengths(&arg(2)?)?;
            let at_least_one: Int64Array = to.iter().map(|v| Some(v.unwrap_or(0).max(1))).collect();
            Some(dot(&lengths(&arg(0)?)?, &at_least_one, 1))
        }
        Size::Elements => Some(sum(&ints(&arg(1)?)?, 8)),
        Size::Range => range_elements(args, rows).map(|n| n.saturating_mul(8)),
    }
}

/// Σ max(a·b, 0) · unit over the rows (nulls count 0).
fn dot(a: &Int64Array, b: &Int64Array, unit: u128) -> u128 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| {
            let (x, y) = (x.unwrap_or(0).max(0) as u128, y.unwrap_or(0).max(0) as u128);
            x.saturating_mul(y).saturating_mul(unit)
        })
        .fold(0u128, u128::saturating_add)
}

fn sum(a: &Int64Array, unit: u128) -> u128 {
    a.iter()
        .map(|x| (x.unwrap_or(0).max(0) as u128).saturating_mul(unit))
        .fold(0u128, u128::saturating_add)
}

/// Byte lengths of a string (or binary) column, as Int64.
fn lengths(a: &ArrayRef) -> Option<Int64Array> {
    let len = arrow::compute::kernels::length::length(a).ok()?;
    ints(&len)
}

fn ints(a: &ArrayRef) -> Option<Int64Array> {
    let a = cast(a, &DataType::Int64).ok()?;
    Some(a.as_primitive::<arrow::datatypes::Int64Type>().clone())
}

/// Σ elements `range`/`generate_series` would make: integers, or dates and timestamps stepped by
/// an interval (a month counted as 28 days, so the estimate is never low).
fn range_elements(args: &[ColumnarValue], rows: usize) -> Option<u128> {
    let arrays: Vec<ArrayRef> = args
        .iter()
        .map(|a| a.to_array(rows).ok())
        .collect::<Option<_>>()?;
    let temporal = matches!(
        arrays.first()?.data_type(),
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    );
    if !temporal {
        let (start, end, step) = match &arrays[..] {
            [end] => (None, ints(end)?, None),
            [start, end] => (Some(ints(start)?), ints(end)?, None),
            [start, end, step] => (Some(ints(start)?), ints(end)?, Some(ints(step)?)),
            _ => return None,
        };
        return Some(
            (0..rows)
                .map(|i| {
                    let s = start.as_ref().map_or(0, |a| a.value(i));
                    let st = step.as_ref().map_or(1, |a| a.value(i));
                    span(s, end.value(i), st)
                })
                .fold(0u128, u128::saturating_add),
        );
    }
    let [start, end, step] = &arrays[..] else {
        return None;
    };
    let nanos = |a: &ArrayRef| -> Option<Int64Array> {
        let ts = cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None)).ok()?;
        ints(&cast(&ts, &DataType::Int64).ok()?)
    };
    let (start, end) = (nanos(start)?, nanos(end)?);
    let step = cast(step, &DataType::Interval(IntervalUnit::MonthDayNano)).ok()?;
    let step = step.as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>();
    const DAY: i128 = 86_400_000_000_000;
    Some(
        (0..rows)
            .map(|i| {
                let v = step.value(i);
                let ns = i128::from(v.months) * 28 * DAY
                    + i128::from(v.days) * DAY
                    + i128::from(v.nanoseconds);
                let ns = i64::try_from(ns.abs().max(1)).unwrap_or(i64::MAX);
                span(start.value(i), end.value(i), ns)
            })
            .fold(0u128, u128::saturating_add),
    )
}

/// Elements from `start` to `end` by `step` (at least 1 in size).
fn span(start: i64, end: i64, step: i64) -> u128 {
    let width = (i128::from(end) - i128::from(start)).unsigned_abs();
    width / u128::from(step.unsigned_abs().max(1)) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::common::DFSchema;

    fn eval(sql: &str, batch: &RecordBatch) -> Result<ArrayRef> {
        let ctx = session(SessionConfig::new());
        let schema = DFSchema::try_from(batch.schema().as_ref().clone())?;
        let e = ctx.parse_sql_expr(sql, &schema)?;
        let e = ctx.create_physical_expr(e, &schema)?;
        e.evaluate(batch)?.into_array(batch.num_rows())
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("s", DataType::Utf8, true),
                Field::new("n", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("ab"), None, Some("xyz")])),
                Arc::new(Int64Array::from(vec![
                    Some(3),
                    Some(1_000_000_000),
                    Some(2),
                ])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn small_calls_give_datafusions_results() {
        let b = batch();
        let out = eval("repeat(s, n)", &b).unwrap();
        let out = cast(&out, &DataType::Utf8).unwrap();
        let out: Vec<Option<&str>> = out.as_string::<i32>().iter().collect();
        assert_eq!(out, vec![Some("ababab"), None, Some("xyzxyz")]);
        let out = eval("lpad(s, 4, '.')", &b).unwrap();
        let out = cast(&out, &DataType::Utf8).unwrap();
        let out: Vec<Option<&str>> = out.as_string::<i32>().iter().collect();
        assert_eq!(out, vec![Some("..ab"), None, Some(".xyz")]);
        let out = eval("cardinality(range(0, 10, 3))", &b).unwrap();
        assert_eq!(ints(&out).unwrap().values(), &[4, 4, 4]);
    }

    #[test]
    fn calls_that_would_allocate_gigabytes_fail_with_the_limit() {
        let b = batch();
        for sql in [
            "repeat(s, 1000000000)",
            "repeat('x', n)",
            "lpad(s, 2000000000)",
            "rpad(s, n * 1000, 'ab')",
            "array_repeat(1, n)",
            "array_resize(make_array(1), n)",
            "range(0, n * 1000)",
            "generate_series(1, 10000000000)",
            "range(DATE '1900-01-01', DATE '2100-01-01', INTERVAL '1 second')",
        ] {
            let err = eval(sql, &b).expect_err(sql).to_string();
            assert!(
                err.contains("more than the limit of 64 MiB (SLUICE_MAX_FUNCTION_OUTPUT)"),
                "{sql}: {err}"
            );
        }
    }
}
