//! Numbers arrive exactly or not at all: the checks behind [`super::json::JsonDecoder`].
//!
//! arrow-json reads a JSON number into an `Int64` field with an exact integer parse and, when
//! that fails, by parsing an `f64` and casting it, so `5.5` became `5` and
//! `-9223372036854775809` became `i64::MIN`; into a `Float64` field `1e400` became `+inf`
//! (written back as `null`). None of that may happen silently (issue #20).
//!
//! The cast only happens to a number with a fraction, an exponent or 19 digits or more, so
//! `record::screen` looks for such a number among the values of integer fields (cheap: one
//! `memmem` per integer field). A chunk without one decodes exactly as before; a chunk with one
//! is isolated line by line, and each flagged line is checked here with serde_json
//! ([`check_exact`]) before arrow decodes it: `5.0` and `1e2` are the integers 5 and 100, `5.5`
//! and anything outside `i64` are error records. Floats are checked after decoding, with one
//! vectorised pass ([`check_floats`]): any ±inf or NaN makes the chunk fail.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Fields, SchemaRef};

/// Why a number does not fit its field.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberError {
    /// The field, `a.b` for nested fields and `a[]` for list items.
    pub path: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// An integer field holds a number with a fraction (the number as written).
    Fraction(String),
    /// An integer field holds an integer outside `i64` (the number as written).
    OutOfRange(String),
    /// An integer field holds an integral number beyond 2^53 with a fraction part or exponent,
    /// which cannot be read exactly.
    Inexact(String),
    /// A float field holds ±inf or NaN (an overflowing literal like `1e400`, or text).
    NotFinite(f64),
}

impl std::fmt::Display for NumberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.path;
        match &self.problem {
            Problem::Fraction(v) => write!(
                f,
                "field `{p}`: {v} is not an integer (the field's type is integer)"
            ),
            Problem::OutOfRange(v) => {
                write!(f, "field `{p}`: {v} is out of range for a 64-bit integer")
            }
            Problem::Inexact(v) => write!(
                f,
                "field `{p}`: {v} cannot be read exactly as an integer; write it as plain digits"
            ),
            Problem::NotFinite(v) if v.is_nan() => write!(f, "field `{p}`: NaN is not a number"),
            Problem::NotFinite(_) => write!(
                f,
                "field `{p}`: the number is out of range for a 64-bit float (about ±1.8e308)"
            ),
        }
    }
}

/// Whether `schema` has a float field [`check_floats`] must look at.
pub fn has_float_fields(schema: &SchemaRef) -> bool {
    fn walk(dt: &DataType) -> bool {
        match dt {
            DataType::Float64 => true,
            DataType::Struct(fs) => fs.iter().any(|f| walk(f.data_type())),
            DataType::List(item) => walk(item.data_type()),
            _ => false,
        }
    }
    schema.fields().iter().any(|f| walk(f.data_type()))
}

/// Checks that every float of `batch` (at any depth) is finite.
///
/// # Errors
/// The first field holding ±inf or NaN.
pub fn check_floats(batch: &RecordBatch) -> Result<(), NumberError> {
    batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .try_for_each(|(c, f)| check_array(c, f.name()))
}

fn check_array(a: &ArrayRef, path: &str) -> Result<(), NumberError> {
    match a.data_type() {
        DataType::Float64 => {
            let f = a.as_primitive::<arrow::datatypes::Float64Type>();
            // One vectorised pass answers the common case; nulls hold 0.
            if f.values().iter().all(|v| v.is_finite()) {
                return Ok(());
            }
            match f.iter().flatten().find(|v| !v.is_finite()) {
                Some(v) => Err(NumberError {
                    path: path.to_string(),
                    problem: Problem::NotFinite(v),
                }),
                None => Ok(()),
            }
        }
        DataType::Struct(fields) => a
            .as_struct()
            .columns()
            .iter()
            .zip(fields)
            .try_for_each(|(c, f)| check_array(c, &format!("{path}.{}", f.name()))),
        DataType::List(_) => check_array(a.as_list::<i32>().values(), &format!("{path}[]")),
        _ => Ok(()),
    }
}

/// Checks a line that [`super::screen::Screen`] flagged against `schema` with serde_json: an
/// integer field must hold an integer in `i64` range, written so that it can be read exactly.
///
/// # Errors
/// The first value that does not fit, or serde_json's message when the line is not JSON.
pub fn check_exact(line: &[u8], schema: &SchemaRef) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        if e.to_string().starts_with("number out of range") {
            format!(
                "the number at column {} is out of range (beyond ±1.8e308)",
                e.column()
            )
        } else {
            e.to_string()
        }
    })?;
    check_fields(line, &value, schema.fields(), "").map_err(|e| e.to_string())
}

fn check_fields(
    line: &[u8],
    v: &serde_json::Value,
    fields: &Fields,
    prefix: &str,
) -> Result<(), NumberError> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for f in fields {
        if let Some(x) = obj.get(f.name()) {
            let path = if prefix.is_empty() {
                f.name().clone()
            } else {
                format!("{prefix}.{}", f.name())
            };
            check_value(line, x, f.data_type(), &path)?;
        }
    }
    Ok(())
}

fn check_value(
    line: &[u8],
    v: &serde_json::Value,
    dt: &DataType,
    path: &str,
) -> Result<(), NumberError> {
    use serde_json::Value;
    match (dt, v) {
        (DataType::Int64, Value::Number(n)) if n.as_i64().is_none() => {
            // The number as written (a top-level field), else as serde_json prints it.
            let text = super::screen::value_text(line, path).map_or_else(
                || n.to_string(),
                |t| String::from_utf8_lossy(t).into_owned(),
            );
            let problem = match n.as_f64() {
                _ if n.is_u64() => Problem::OutOfRange(text),
                Some(f) if f.fract() != 0.0 => Problem::Fraction(text),
                Some(f) if f.abs() >= 9.223_372_036_854_775e18 => Problem::OutOfRange(text),
                // Above 2^53 an f64 is not exact: `9007199254740993.0` would become …992.
                Some(f) if f.abs() > 9_007_199_254_740_992.0 => Problem::Inexact(text),
                _ => return Ok(()),
            };
            Err(NumberError {
                path: path.to_string(),
                problem,
            })
        }
        (DataType::Struct(fs), _) => check_fields(line, v, fs, path),
        (DataType::List(item), Value::Array(items)) => {
            let p = format!("{path}[]");
            items
                .iter()
                .try_for_each(|x| check_value(line, x, item.data_type(), &p))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                true,
            ),
        ]))
    }

    #[test]
    fn integers_must_be_exact_and_in_range() {
        let s = schema();
        assert_eq!(check_exact(br#"{"n": 5.0}"#, &s), Ok(()));
        assert_eq!(check_exact(br#"{"n": 1e2}"#, &s), Ok(()));
        assert_eq!(check_exact(br#"{"n": -9223372036854775808}"#, &s), Ok(()));
        assert_eq!(
            check_exact(br#"{"n": 5.5}"#, &s).unwrap_err(),
            "field `n`: 5.5 is not an integer (the field's type is integer)"
        );
        assert_eq!(
            check_exact(br#"{"n": -9223372036854775809}"#, &s).unwrap_err(),
            "field `n`: -9223372036854775809 is out of range for a 64-bit integer"
        );
        assert_eq!(
            check_exact(br#"{"n": 9223372036854775808}"#, &s).unwrap_err(),
            "field `n`: 9223372036854775808 is out of range for a 64-bit integer"
        );
        assert_eq!(
            check_exact(br#"{"n": 9007199254740993.0}"#, &s).unwrap_err(),
            "field `n`: 9007199254740993.0 cannot be read exactly as an integer; write it as plain digits"
        );
        assert_eq!(
            check_exact(br#"{"tags": [1, 2.5]}"#, &s).unwrap_err(),
            "field `tags[]`: 2.5 is not an integer (the field's type is integer)"
        );
        assert!(
            check_exact(br#"{"n": 1e400}"#, &s)
                .unwrap_err()
                .ends_with("is out of range (beyond ±1.8e308)")
        );
    }
}
