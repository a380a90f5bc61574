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

enum Exactness {
    Fraction,
    OutOfRange,
}

/// The integer a JSON number token denotes, computed from its digits (no floating point):
/// `5.0`, `1e2` and `1500e-1` are integers, `5.5` and `1e-19` are not.
fn exact_integer(t: &[u8]) -> Result<i64, Exactness> {
    let (negative, t) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(e) => (&t[..e], &t[e + 1..]),
        None => (t, &b""[..]),
    };
    let (exp_negative, exp_digits) = match exp.first() {
        Some(b'-') => (true, &exp[1..]),
        Some(b'+') => (false, &exp[1..]),
        _ => (false, exp),
    };
    // Saturates: an exponent past 10^6 is as good as infinite here.
    let exp = exp_digits
        .iter()
        .filter(|b| b.is_ascii_digit())
        .fold(0i64, |acc, b| {
            (acc * 10 + i64::from(b - b'0')).min(1_000_000)
        });
    let exp = if exp_negative { -exp } else { exp };
    let (int, frac) = match mantissa.iter().position(|b| *b == b'.') {
        Some(p) => (&mantissa[..p], &mantissa[p + 1..]),
        None => (mantissa, &b""[..]),
    };
    // value = digits × 10^shift, digits = int ++ frac
    let shift = exp - frac.len() as i64;
    let digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let kept = if shift < 0 {
        let cut = usize::try_from(-shift).unwrap_or(usize::MAX);
        let (head, tail) = digits.split_at(digits.len().saturating_sub(cut));
        if tail.iter().any(|b| *b != b'0') {
            return Err(Exactness::Fraction);
        }
        head
    } else {
        &digits[..]
    };
    let Some(first) = kept.iter().position(|b| *b != b'0') else {
        return Ok(0);
    };
    let significant = &kept[first..];
    if significant.len() as i64 + shift.max(0) > 19 {
        return Err(Exactness::OutOfRange);
    }
    let mut v = significant
        .iter()
        .fold(0i128, |acc, b| acc * 10 + i128::from(b - b'0'));
    for _ in 0..shift.max(0) {
        v *= 10;
    }
    i64::try_from(if negative { -v } else { v }).map_err(|_| Exactness::OutOfRange)
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
            // The number as written decides (serde_json's f64 can be one ULP off, enough to
            // turn 922337203685477.9 into an integer). arrow reads such a number through a
            // correctly rounded f64, so an integer is kept only when that f64 holds it exactly.
            // Nested values, which the text lookup does not reach, use the f64 with a margin.
            let texts = super::screen::value_texts(line, path);
            let problem = match texts.is_empty() {
                // Every occurrence must be exact (arrow keeps the last of duplicate keys; an
                // occurrence in a nested object may be checked too, which can only reject more).
                false => texts.iter().find_map(|t| {
                    let text = String::from_utf8_lossy(t).into_owned();
                    match exact_integer(t) {
                        Ok(v) if (v as f64) as i64 == v && v != i64::MAX => None,
                        Ok(_) => Some(Problem::Inexact(text)),
                        Err(Exactness::Fraction) => Some(Problem::Fraction(text)),
                        Err(Exactness::OutOfRange) => Some(Problem::OutOfRange(text)),
                    }
                }),
                true => {
                    let text = n.to_string();
                    match n.as_f64() {
                        _ if n.is_u64() => Some(Problem::OutOfRange(text)),
                        Some(f) if f.fract() != 0.0 => Some(Problem::Fraction(text)),
                        Some(f) if f.abs() >= 9.223_372_036_854_775e18 => {
                            Some(Problem::OutOfRange(text))
                        }
                        // Above 2^50 the f64 may not be exact.
                        Some(f) if f.abs() >= 1_125_899_906_842_624.0 => {
                            Some(Problem::Inexact(text))
                        }
                        _ => None,
                    }
                }
            };
            let Some(problem) = problem else {
                return Ok(());
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
    fn exact_integers_from_their_digits() {
        let ok = |t: &str| exact_integer(t.as_bytes()).ok();
        assert_eq!(ok("5.0"), Some(5));
        assert_eq!(ok("1e2"), Some(100));
        assert_eq!(ok("1500e-1"), Some(150));
        assert_eq!(ok("-0.0e5"), Some(0));
        assert_eq!(ok("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(ok("-9223372036854775808.000"), Some(i64::MIN));
        assert!(matches!(exact_integer(b"5.5"), Err(Exactness::Fraction)));
        assert!(matches!(exact_integer(b"1e-19"), Err(Exactness::Fraction)));
        // Found by tests/fuzz_corpus.rs: serde_json reads this as the integer …478.
        assert!(matches!(
            exact_integer(b"-922337203685477.9"),
            Err(Exactness::Fraction)
        ));
        assert!(matches!(
            exact_integer(b"-9223372036854775809"),
            Err(Exactness::OutOfRange)
        ));
        assert!(matches!(
            exact_integer(b"1e999999999"),
            Err(Exactness::OutOfRange)
        ));
        assert!(matches!(exact_integer(b"1e19"), Err(Exactness::OutOfRange)));
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
            check_exact(br#"{"n": -922337203685477.9}"#, &s).unwrap_err(),
            "field `n`: -922337203685477.9 is not an integer (the field's type is integer)"
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
