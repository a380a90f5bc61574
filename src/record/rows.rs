//! Arrow rows as JSON values: for error records, `AssertEqual` and `tests:` comparisons.
//!
//! These conversions allocate per row and are used only off the hot path (error rows, tests).

use arrow::array::RecordBatch;
use arrow::json::writer::{JsonArray, WriterBuilder};
use serde_json::{Map, Value};

use super::batch::user_columns;

/// The user columns of `rows` as JSON objects (nulls written out explicitly).
pub fn to_json_rows(rows: &RecordBatch) -> Vec<Map<String, Value>> {
    let user = user_columns(rows);
    if user.num_rows() == 0 {
        return Vec::new();
    }
    let mut buf = Vec::new();
    {
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut buf);
        if w.write(&user).and_then(|_| w.finish()).is_err() {
            return fallback(&user);
        }
    }
    match serde_json::from_slice::<Vec<Map<String, Value>>>(&buf) {
        Ok(v) => v,
        Err(_) => fallback(&user),
    }
}

/// One row as a JSON object text (an error record's `element`).
pub fn row_json(rows: &RecordBatch, i: usize) -> String {
    let one = rows.slice(i, 1);
    to_json_rows(&one)
        .into_iter()
        .next()
        .map(|m| Value::Object(m).to_string())
        .unwrap_or_else(|| "{}".into())
}

/// Types the JSON writer refuses are rendered with Arrow's display formatter.
fn fallback(rows: &RecordBatch) -> Vec<Map<String, Value>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let opts = FormatOptions::default();
    let schema = rows.schema();
    let fmts: Vec<_> = rows
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect();
    (0..rows.num_rows())
        .map(|i| {
            schema
                .fields()
                .iter()
                .zip(&fmts)
                .zip(rows.columns())
                .map(|((f, fmt), col)| {
                    let v = match fmt {
                        Ok(fmt) if !col.is_null(i) => Value::String(fmt.value(i).to_string()),
                        _ => Value::Null,
                    };
                    (f.name().clone(), v)
                })
                .collect()
        })
        .collect()
}

/// Compares rows as multisets, with numbers compared numerically (1 == 1.0) and floats to a
/// relative 1e-9, and returns what is missing and what is unexpected.
pub fn multiset_diff(expected: &[Value], actual: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let mut unmatched: Vec<&Value> = actual.iter().collect();
    let mut missing = Vec::new();
    for e in expected {
        match unmatched.iter().position(|a| values_equal(e, a)) {
            Some(i) => {
                unmatched.swap_remove(i);
            }
            None => missing.push(e.clone()),
        }
    }
    (missing, unmatched.into_iter().cloned().collect())
}

/// Loose equality for test expectations; see [`multiset_diff`].
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
            }
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            // A key absent on one side equals an explicit null on the other.
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().all(|k| {
                values_equal(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn multisets_count_duplicates_and_compare_numbers_numerically() {
        let exp = vec![json!({"a": 1}), json!({"a": 1}), json!({"b": 2.0})];
        let act = vec![json!({"a": 1}), json!({"b": 2}), json!({"c": null, "a": 3})];
        let (missing, extra) = multiset_diff(&exp, &act);
        assert_eq!(missing, vec![json!({"a": 1})]);
        assert_eq!(extra, vec![json!({"c": null, "a": 3})]);
        assert!(values_equal(&json!({"x": null}), &json!({})));
    }
}
