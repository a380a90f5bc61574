//! Combine's aggregations, built on DataFusion's `Accumulator` implementations (sum, avg,
//! count, min/max, bool_and/bool_or, approx_distinct, approx_percentile_cont, array_agg), so
//! that state can be updated per batch, merged (session windows) and evaluated per pane.
//!
//! Output types follow Beam: `count` → Int64, `sum`/`min`/`max` keep the input type (integers
//! sum as Int64), `mean` → Float64, `any`/`all` → Boolean (by truthiness: 0, "" and false are
//! false), `count_distinct`/`approx_count_distinct` → Int64, `quantile` → Float64, `concat` →
//! the concatenated list (or string).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, ListArray, StringArray, new_null_array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::approx_percentile_cont::ApproxPercentileAccumulator;
use datafusion::functions_aggregate::{
    approx_distinct, array_agg, average, bool_and_or, count, min_max, sum,
};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, GroupsAccumulator, function::AccumulatorArgs,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;

use crate::config::components::AggFn;

/// One `combine` output: how to prepare its input column and make accumulators.
#[derive(Debug, Clone)]
pub struct AggSpec {
    pub func: AggFn,
    /// The type fed to the accumulator (after `prepare`).
    input: FieldRef,
    /// The value's type before preparation (decides `concat`'s flattening).
    value_type: DataType,
    udaf: Option<Arc<AggregateUDF>>,
    distinct: bool,
    return_field: Option<FieldRef>,
}

impl AggSpec {
    /// # Errors
    /// An aggregation that does not apply to `value_type` (a user error).
    pub fn new(func: AggFn, value_type: &DataType) -> Result<AggSpec, String> {
        let (input_type, udaf, distinct) = match func {
            AggFn::Sum => (value_type.clone(), Some(sum::sum_udaf()), false),
            AggFn::Min => (value_type.clone(), Some(min_max::min_udaf()), false),
            AggFn::Max => (value_type.clone(), Some(min_max::max_udaf()), false),
            AggFn::Mean => (DataType::Float64, Some(average::avg_udaf()), false),
            AggFn::Count => (DataType::Int64, Some(count::count_udaf()), false),
            AggFn::CountDistinct => (value_type.clone(), Some(count::count_udaf()), true),
            AggFn::ApproxCountDistinct => (
                value_type.clone(),
                Some(approx_distinct::approx_distinct_udaf()),
                false,
            ),
            AggFn::All => (DataType::Boolean, Some(bool_and_or::bool_and_udaf()), false),
            AggFn::Any => (DataType::Boolean, Some(bool_and_or::bool_or_udaf()), false),
            AggFn::Concat => (value_type.clone(), Some(array_agg::array_agg_udaf()), false),
            AggFn::Quantile(_) => (DataType::Float64, None, false),
        };
        if matches!(func, AggFn::Sum | AggFn::Mean | AggFn::Quantile(_))
            && !value_type.is_numeric()
            && *value_type != DataType::Null
        {
            return Err(format!(
                "{} needs a numeric value, found {value_type}",
                name(func)
            ));
        }
        let input: FieldRef = Arc::new(Field::new("value", input_type, true));
        let return_field = match &udaf {
            Some(u) => Some(
                u.return_field(std::slice::from_ref(&input))
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let spec = AggSpec {
            func,
            input,
            value_type: value_type.clone(),
            udaf,
            distinct,
            return_field,
        };
        spec.accumulator()?;
        Ok(spec)
    }

    /// Converts a batch's value column (`None`: `count` of rows) to the accumulator's input.
    ///
    /// # Errors
    /// A value that cannot be converted (for example a string where a number is needed).
    pub fn prepare(&self, values: Option<&ArrayRef>, rows: usize) -> Result<ArrayRef, String> {
        let Some(values) = values else {
            return Ok(Arc::new(Int64Array::from(vec![1_i64; rows])));
        };
        match self.func {
            // Beam's count counts elements, nulls included.
            AggFn::Count => Ok(Arc::new(Int64Array::from(vec![1_i64; values.len()]))),
            AggFn::All | AggFn::Any => truthiness(values),
            _ if values.data_type() == self.input.data_type() => Ok(values.clone()),
            _ => cast(values, self.input.data_type()).map_err(|e| e.to_string()),
        }
    }

    /// Calls `f` with DataFusion's accumulator arguments for this spec (`None` for `quantile`,
    /// which has no UDAF).
    fn with_args<R>(&self, f: impl FnOnce(&AggregateUDF, AccumulatorArgs<'_>) -> R) -> Option<R> {
        let (Some(udaf), Some(return_field)) = (&self.udaf, &self.return_field) else {
            return None;
        };
        let schema = Schema::new(vec![self.input.clone()]);
        let expr: Arc<dyn PhysicalExpr> = Arc::new(Column::new("value", 0));
        Some(f(
            udaf,
            AccumulatorArgs {
                return_field: return_field.clone(),
                schema: &schema,
                ignore_nulls: false,
                order_bys: &[],
                is_reversed: false,
                name: "value",
                is_distinct: self.distinct,
                exprs: &[expr],
                expr_fields: std::slice::from_ref(&self.input),
            },
        ))
    }

    /// A fresh accumulator.
    ///
    /// # Errors
    /// DataFusion refused the arguments (an internal error after `new` succeeded).
    pub fn accumulator(&self) -> Result<Box<dyn Accumulator>, String> {
        if let AggFn::Quantile(q) = self.func {
            return Ok(Box::new(ApproxPercentileAccumulator::new(
                q,
                DataType::Float64,
            )));
        }
        self.with_args(|udaf, args| udaf.accumulator(args).map_err(|e| e.to_string()))
            .unwrap_or_else(|| Err("no accumulator".into()))
    }

    /// DataFusion's vectorised accumulator for all groups at once (`GroupsAccumulator`), when
    /// it has one for this function and input type; `None` otherwise.
    ///
    /// # Errors
    /// DataFusion refused the arguments (an internal error after `new` succeeded).
    pub fn groups_accumulator(&self) -> Result<Option<Box<dyn GroupsAccumulator>>, String> {
        self.with_args(|udaf, args| {
            if !udaf.groups_accumulator_supported(args.clone()) {
                return Ok(None);
            }
            udaf.create_groups_accumulator(args)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .unwrap_or(Ok(None))
    }

    /// Whether this is an exact `count_distinct` (Combine counts those itself).
    pub fn is_count_distinct(&self) -> bool {
        self.func == AggFn::CountDistinct
    }

    /// The output column for evaluated accumulator values (one per group).
    ///
    /// # Errors
    /// Values that do not form one array (an internal error).
    pub fn finish(&self, values: Vec<ScalarValue>) -> Result<ArrayRef, String> {
        if values.is_empty() {
            return Ok(new_null_array(&self.output_type(), 0));
        }
        let array = ScalarValue::iter_to_array(values).map_err(|e| e.to_string())?;
        self.finish_array(array)
    }

    /// The output column for an array of evaluated values (one per group), as [`Self::finish`].
    ///
    /// # Errors
    /// A cast or list flattening failed (an internal error).
    pub fn finish_array(&self, array: ArrayRef) -> Result<ArrayRef, String> {
        let array = match self.func {
            AggFn::ApproxCountDistinct => {
                cast(&array, &DataType::Int64).map_err(|e| e.to_string())?
            }
            AggFn::Concat => concat_lists(&array, &self.value_type)?,
            _ => array,
        };
        let want = self.output_type();
        if array.data_type() == &want {
            Ok(array)
        } else {
            cast(&array, &want).map_err(|e| e.to_string())
        }
    }

    /// The type `prepare` produces.
    pub fn input_type(&self) -> &DataType {
        self.input.data_type()
    }

    pub fn output_type(&self) -> DataType {
        match self.func {
            AggFn::ApproxCountDistinct => DataType::Int64,
            AggFn::Quantile(_) => DataType::Float64,
            AggFn::Concat => match &self.value_type {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                other => other.clone(),
            },
            _ => self
                .return_field
                .as_ref()
                .map_or(DataType::Null, |f| f.data_type().clone()),
        }
    }
}

fn name(f: AggFn) -> &'static str {
    match f {
        AggFn::Sum => "sum",
        AggFn::Mean => "mean",
        AggFn::Quantile(_) => "quantile",
        _ => "this aggregation",
    }
}

/// Python truthiness, as Beam's `any`/`all`: numbers ≠ 0, non-empty strings, booleans.
fn truthiness(values: &ArrayRef) -> Result<ArrayRef, String> {
    match values.data_type() {
        DataType::Boolean => Ok(values.clone()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = cast(values, &DataType::Utf8).map_err(|e| e.to_string())?;
            let s = s
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or("internal: cast to Utf8 gave another type")?;
            Ok(Arc::new(
                s.iter()
                    .map(|v| v.map(|v| !v.is_empty()))
                    .collect::<BooleanArray>(),
            ))
        }
        t if t.is_numeric() || *t == DataType::Null => {
            cast(values, &DataType::Boolean).map_err(|e| e.to_string())
        }
        other => Err(format!(
            "any/all need booleans, numbers or strings, found {other}"
        )),
    }
}

/// `array_agg` gives a list of values per group: strings are joined, lists flattened.
fn concat_lists(array: &ArrayRef, value_type: &DataType) -> Result<ArrayRef, String> {
    let outer = array
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or("internal: array_agg did not return a list")?;
    match value_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let mut out = Vec::with_capacity(outer.len());
            for i in 0..outer.len() {
                if outer.is_null(i) {
                    out.push(None);
                    continue;
                }
                let v = cast(&outer.value(i), &DataType::Utf8).map_err(|e| e.to_string())?;
                let v = v
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or("internal: cast to Utf8 gave another type")?;
                out.push(Some(v.iter().flatten().collect::<String>()));
            }
            Ok(Arc::new(StringArray::from(out)))
        }
        DataType::List(inner_field) => {
            let mut flats: Vec<ArrayRef> = Vec::with_capacity(outer.len());
            for i in 0..outer.len() {
                let group = outer.value(i);
                let inner = group
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .ok_or("internal: concat of lists gave another type")?;
                let offs = inner.value_offsets();
                let (first, last) = (offs[0] as usize, offs[offs.len() - 1] as usize);
                flats.push(inner.values().slice(first, last - first));
            }
            let refs: Vec<&dyn Array> = flats.iter().map(|a| a.as_ref()).collect();
            let values = if refs.is_empty() {
                new_null_array(inner_field.data_type(), 0)
            } else {
                arrow::compute::concat(&refs).map_err(|e| e.to_string())?
            };
            let offsets = OffsetBuffer::from_lengths(flats.iter().map(|a| a.len()));
            Ok(Arc::new(
                ListArray::try_new(inner_field.clone(), offsets, values, None)
                    .map_err(|e| e.to_string())?,
            ))
        }
        _ => Ok(array.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(func: AggFn, values: ArrayRef) -> ArrayRef {
        let spec = AggSpec::new(func, values.data_type()).unwrap();
        let mut acc = spec.accumulator().unwrap();
        let input = spec.prepare(Some(&values), values.len()).unwrap();
        acc.update_batch(&[input]).unwrap();
        spec.finish(vec![acc.evaluate().unwrap()]).unwrap()
    }

    #[test]
    fn aggregations_have_beams_output_types() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(30), None, Some(0), Some(30)]));
        let sum = run(AggFn::Sum, ints.clone());
        assert_eq!(
            sum.as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            60
        );
        let count = run(AggFn::Count, ints.clone());
        assert_eq!(
            count
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            4
        );
        let distinct = run(AggFn::CountDistinct, ints.clone());
        assert_eq!(
            distinct
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            2
        );
        assert_eq!(
            run(AggFn::Mean, ints.clone()).data_type(),
            &DataType::Float64
        );
        let all = run(AggFn::All, ints.clone());
        assert!(
            !all.as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap()
                .value(0)
        );
        let any = run(AggFn::Any, ints.clone());
        assert!(
            any.as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap()
                .value(0)
        );
        let approx = run(AggFn::ApproxCountDistinct, ints);
        assert_eq!(
            approx
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            2
        );
        let s: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
        let c = run(AggFn::Concat, s);
        assert_eq!(
            c.as_any().downcast_ref::<StringArray>().unwrap().value(0),
            "ab"
        );
        assert!(AggSpec::new(AggFn::Sum, &DataType::Utf8).is_err());
    }

    #[test]
    fn states_merge_across_accumulators() {
        let spec = AggSpec::new(AggFn::Mean, &DataType::Int64).unwrap();
        let mut a = spec.accumulator().unwrap();
        let mut b = spec.accumulator().unwrap();
        let v = |x: Vec<i64>| -> ArrayRef {
            let a: ArrayRef = Arc::new(Int64Array::from(x));
            spec.prepare(Some(&a), a.len()).unwrap()
        };
        a.update_batch(&[v(vec![1, 2])]).unwrap();
        b.update_batch(&[v(vec![6])]).unwrap();
        let state: Vec<ArrayRef> = b
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        a.merge_batch(&state).unwrap();
        assert_eq!(a.evaluate().unwrap(), ScalarValue::Float64(Some(3.0)));
    }
}
