//! Numbers arrive exactly or not at all: the checks behind [`super::json::JsonDecoder`].
//!
//! arrow-json reads a JSON number into an `Int64` field by falling back to `f64` and casting, so
//! `5.5` became `5` and `-9223372036854775809` became `i64::MIN`; into a `Float64` field `1e400`
//! became `+inf` (written back as `null`). None of that may happen silently (issue #20).
//!
//! The decoder therefore reads every `Int64` field (at any depth) as `Decimal128(38, 18)`, which
//! keeps 20 integer and 18 fraction digits exactly, and [`narrow`] converts it back, failing when
//! a value has a fraction or does not fit 64 bits; `Float64` values must be finite. Both checks
//! are whole-array loops, so a clean chunk stays on the vectorised path.
//!
//! arrow's decimal parser mishandles two rare shapes (it counts digits in a `u8` and exponents
//! in an `i16`, with wrapping or panicking arithmetic, and reads `1e-19` as 0): numbers in
//! exponent notation and numbers with more than 38 digits. [`has_risky_number`] finds them in a
//! chunk; the decoder then checks those lines with serde_json first ([`check_exact`]), which
//! rejects such a number in an integer field before arrow's decimal parser ever sees it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef, Fields, Schema, SchemaRef};

/// Fraction digits kept while decoding integers: 38 − 18 = 20 integer digits, enough for any
/// `i64` (19 digits) with its sign.
const SCALE: i8 = 18;
const ONE: i128 = 1_000_000_000_000_000_000;

/// Why a number does not fit its field.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberError {
    /// The field, `a.b` for nested fields and `a[]` for list items.
    pub path: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// An integer field holds a number with a fraction (the number as text).
    Fraction(String),
    /// An integer field holds an integer outside `i64` (the number as text).
    OutOfRange(String),
    /// A float field holds ±inf or NaN (from an overflowing literal like `1e400`, or text).
    NotFinite(f64),
    /// An integer field holds a number in exponent notation or with more than 38 digits.
    Notation,
    /// A Sluice bug (columns that do not match the schema).
    Internal(String),
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
            Problem::NotFinite(v) if v.is_nan() => {
                write!(f, "field `{p}`: NaN is not a number")
            }
            Problem::NotFinite(_) => write!(
                f,
                "field `{p}`: the number is out of range for a 64-bit float (about ±1.8e308)"
            ),
            Problem::Notation => write!(
                f,
                "field `{p}`: an integer must be written as plain digits, not in exponent notation or with more than 38 digits"
            ),
            Problem::Internal(e) => write!(f, "field `{p}`: internal error: {e}"),
        }
    }
}

/// `v / 10^18` as plain decimal text, trailing fraction zeros removed.
fn decimal_text(v: i128) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let abs = v.unsigned_abs();
    let (int, frac) = (abs / ONE as u128, abs % ONE as u128);
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let frac = format!("{frac:018}");
    format!("{sign}{int}.{}", frac.trim_end_matches('0'))
}

/// The type arrow-json decodes `dt` as: `Int64` becomes `Decimal128(38, 18)`, at any depth.
fn decode_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Int64 => DataType::Decimal128(38, SCALE),
        DataType::Struct(fields) => DataType::Struct(decode_fields(fields)),
        DataType::List(item) => DataType::List(Arc::new(decode_field(item))),
        other => other.clone(),
    }
}

fn decode_field(f: &FieldRef) -> Field {
    f.as_ref()
        .clone()
        .with_data_type(decode_type(f.data_type()))
}

fn decode_fields(fields: &Fields) -> Fields {
    fields.iter().map(decode_field).collect()
}

/// The schema to decode `schema` with; equal to it when it has no `Int64` field.
pub fn decode_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        decode_fields(schema.fields()),
        schema.metadata().clone(),
    ))
}

/// Whether `schema` has a field [`narrow`] checks (an `Int64` or `Float64`, at any depth).
pub fn has_checked_fields(schema: &SchemaRef) -> bool {
    fn walk(dt: &DataType) -> bool {
        match dt {
            DataType::Int64 | DataType::Float64 => true,
            DataType::Struct(fs) => fs.iter().any(|f| walk(f.data_type())),
            DataType::List(item) => walk(item.data_type()),
            _ => false,
        }
    }
    schema.fields().iter().any(|f| walk(f.data_type()))
}

/// Whether `schema` has an `Int64` field at any depth (decoded through decimals).
pub fn has_integer_fields(schema: &SchemaRef) -> bool {
    decode_schema(schema).as_ref() != schema.as_ref()
}

/// Converts `batch`, decoded with [`decode_schema`]`(schema)`, to `schema`.
///
/// # Errors
/// The first value that is not an integer in `i64` range, or not a finite float.
pub fn narrow(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, NumberError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| narrow_array(c, f.data_type(), f.name()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| NumberError {
        path: String::new(),
        problem: Problem::Internal(e.to_string()),
    })
}

fn narrow_array(a: &ArrayRef, target: &DataType, path: &str) -> Result<ArrayRef, NumberError> {
    let err = |problem| NumberError {
        path: path.to_string(),
        problem,
    };
    match (a.data_type(), target) {
        (DataType::Decimal128(_, _), DataType::Int64) => {
            let dec = a.as_primitive::<Decimal128Type>();
            let mut out = Vec::with_capacity(dec.len());
            for (i, &v) in dec.values().iter().enumerate() {
                match exact_i64(v) {
                    Ok(n) => out.push(n),
                    // A null slot holds 0 or garbage nobody reads.
                    Err(_) if dec.is_null(i) => out.push(0),
                    Err(p) => return Err(err(p)),
                }
            }
            Ok(Arc::new(Int64Array::new(out.into(), dec.nulls().cloned())))
        }
        (DataType::Float64, DataType::Float64) => {
            let f = a.as_primitive::<arrow::datatypes::Float64Type>();
            if f.values().iter().all(|v| v.is_finite()) {
                return Ok(a.clone());
            }
            match f.iter().flatten().find(|v| !v.is_finite()) {
                Some(v) => Err(err(Problem::NotFinite(v))),
                None => Ok(a.clone()),
            }
        }
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = a.as_struct();
            let children = s
                .columns()
                .iter()
                .zip(fields)
                .map(|(c, f)| narrow_array(c, f.data_type(), &format!("{path}.{}", f.name())))
                .collect::<Result<Vec<_>, _>>()?;
            StructArray::try_new(fields.clone(), children, s.nulls().cloned())
                .map(|s| Arc::new(s) as ArrayRef)
                .map_err(|e| err(Problem::Internal(e.to_string())))
        }
        (DataType::List(_), DataType::List(item)) => {
            let l = a.as_list::<i32>();
            let values = narrow_array(l.values(), item.data_type(), &format!("{path}[]"))?;
            ListArray::try_new(
                item.clone(),
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )
            .map(|l| Arc::new(l) as ArrayRef)
            .map_err(|e| err(Problem::Internal(e.to_string())))
        }
        _ => Ok(a.clone()),
    }
}

/// `v / 10^18` when it is an integer in `i64` range.
fn exact_i64(v: i128) -> Result<i64, Problem> {
    // Fast path: below 2^53 the f64 quotient rounds to the exact integer, if there is one, and
    // one multiplication confirms it.
    let guess = (v as f64 / 1e18).round();
    if guess.abs() < 9.0e15 {
        let q = guess as i64;
        if i128::from(q) * ONE == v {
            return Ok(q);
        }
    }
    if v % ONE != 0 {
        return Err(Problem::Fraction(decimal_text(v)));
    }
    i64::try_from(v / ONE).map_err(|_| Problem::OutOfRange(decimal_text(v)))
}

/// Whether `chunk` holds a number, bare or as a string, that arrow's decimal parser could
/// mishandle ([`risky_token`]).
///
/// One pass over the bytes; strings are skipped with `memchr`. Strings are delimited exactly as
/// arrow's tape decoder delimits them (a raw newline does not end one), so the scan sees the
/// same tokens the decoder parses.
pub fn has_risky_number(chunk: &[u8]) -> bool {
    let n = chunk.len();
    let mut i = 0;
    while i < n {
        match chunk[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < n {
                    match memchr::memchr2(b'"', b'\\', &chunk[j..]) {
                        Some(k) if chunk[j + k] == b'\\' => {
                            escaped = true;
                            j += k + 2;
                        }
                        Some(k) => {
                            j += k;
                            break;
                        }
                        None => j = n,
                    }
                }
                let end = j.min(n);
                if risky_string(&chunk[start..end], escaped) {
                    return true;
                }
                i = end + 1;
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => {
                let start = i;
                while i < n && is_number_byte(chunk[i]) {
                    i += 1;
                }
                if risky_token(&chunk[start..i]) {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

fn is_number_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// A string's raw content (between the quotes); `escaped` when it holds a backslash, in which
/// case the text arrow sees is the unescaped one (`"\u0031e99999"` is `1e99999`).
fn risky_string(raw: &[u8], escaped: bool) -> bool {
    if !escaped {
        return risky_token(raw);
    }
    // arrow's parser rejects at once a text that does not end in a digit or `.`; an escaped
    // text can only end in one if its raw form ends in one or in a `\uXXXX` hex digit.
    if !raw
        .last()
        .is_some_and(|b| b.is_ascii_hexdigit() || *b == b'.')
    {
        return false;
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    match serde_json::from_slice::<String>(&quoted) {
        Ok(text) => risky_token(text.as_bytes()),
        // Not valid JSON text (a raw control character, which arrow's tape decoder accepts):
        // let serde_json judge the line.
        Err(_) => true,
    }
}

/// Whether arrow's decimal parser could mishandle `t` (`arrow_cast::parse::parse_decimal`, as
/// of arrow 59): it counts digits in a `u8` and the exponent in an `i16` with panicking (debug)
/// or wrapping (release) arithmetic, and reads tiny exponents like `1e-19` as 0. Risky: more
/// than 38 leading digits; a text made only of number bytes with an exponent; or an exponent
/// whose digits reach 1000 before the parser stops, whatever follows.
pub fn risky_token(t: &[u8]) -> bool {
    // The parser rejects at once a text that does not end in a digit or `.`.
    if !t.last().is_some_and(|b| b.is_ascii_digit() || *b == b'.') {
        return false;
    }
    let body = match t.first() {
        Some(b'-' | b'+') => &t[1..],
        _ => t,
    };
    let lead = body
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(body.len());
    if body[..lead].iter().filter(|b| b.is_ascii_digit()).count() > 38 {
        return true;
    }
    if !matches!(body.get(lead), Some(b'e' | b'E')) {
        return false;
    }
    if t.iter().all(|&b| is_number_byte(b)) {
        return true;
    }
    // Replay the exponent loop: digits, and one sign anywhere among them (arrow accepts
    // `1e99-9`), until any other byte.
    let mut exp: u32 = 0;
    let mut signed = false;
    for &b in &body[lead + 1..] {
        match b {
            b'0'..=b'9' => {
                exp = exp * 10 + u32::from(b - b'0');
                if exp >= 1000 {
                    return true;
                }
            }
            b'-' | b'+' if !signed => signed = true,
            _ => return false,
        }
    }
    false
}

/// Checks a line that [`has_risky_number`] flagged against `schema` with serde_json: an
/// integer field must hold a plain integer in `i64` range, a float field a finite number.
///
/// # Errors
/// The first value that does not fit, or serde_json's message when the line is not JSON.
pub fn check_exact(line: &[u8], schema: &SchemaRef) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        if e.to_string().starts_with("number out of range") {
            format!(
                "the number at column {} is out of range for a 64-bit float (about ±1.8e308)",
                e.column()
            )
        } else {
            e.to_string()
        }
    })?;
    check_fields(&value, schema.fields(), "").map_err(|e| e.to_string())
}

fn check_fields(v: &serde_json::Value, fields: &Fields, prefix: &str) -> Result<(), NumberError> {
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
            check_value(x, f.data_type(), &path)?;
        }
    }
    Ok(())
}

fn check_value(v: &serde_json::Value, dt: &DataType, path: &str) -> Result<(), NumberError> {
    use serde_json::Value;
    let err = |problem| NumberError {
        path: path.to_string(),
        problem,
    };
    match (dt, v) {
        (DataType::Int64, Value::Number(n)) if n.as_i64().is_none() => Err(err(match n.as_f64() {
            Some(f) if f.fract() != 0.0 => Problem::Fraction(n.to_string()),
            Some(f) if f.abs() >= 9.223_372_036_854_775e18 => Problem::OutOfRange(n.to_string()),
            _ => Problem::Notation,
        })),
        (DataType::Int64, Value::String(s)) if risky_token(s.as_bytes()) => {
            Err(err(Problem::Notation))
        }
        (DataType::Float64, Value::Number(n)) if n.as_f64().is_none_or(|f| !f.is_finite()) => {
            Err(err(Problem::NotFinite(f64::INFINITY)))
        }
        (DataType::Struct(fs), _) => check_fields(v, fs, path),
        (DataType::List(item), Value::Array(items)) => {
            let p = format!("{path}[]");
            items
                .iter()
                .try_for_each(|x| check_value(x, item.data_type(), &p))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_integers_only() {
        assert_eq!(exact_i64(5 * ONE), Ok(5));
        assert_eq!(exact_i64(-5 * ONE), Ok(-5));
        assert_eq!(exact_i64(i128::from(i64::MIN) * ONE), Ok(i64::MIN));
        assert_eq!(exact_i64(i128::from(i64::MAX) * ONE), Ok(i64::MAX));
        assert_eq!(
            exact_i64((i128::from(i64::MIN) - 1) * ONE),
            Err(Problem::OutOfRange("-9223372036854775809".into()))
        );
        assert_eq!(
            exact_i64(55 * ONE / 10),
            Err(Problem::Fraction("5.5".into()))
        );
        // 2^53 + 1 with a tiny fraction: not representable as f64, still caught.
        let v = (9_007_199_254_740_993_i128) * ONE + 1;
        assert_eq!(
            exact_i64(v),
            Err(Problem::Fraction(
                "9007199254740993.000000000000000001".into()
            ))
        );
        assert_eq!(decimal_text(55 * ONE / 10), "5.5");
        assert_eq!(decimal_text(-ONE / 4), "-0.25");
    }

    #[test]
    fn risky_numbers_are_found_outside_and_inside_strings_but_not_in_words() {
        assert!(!has_risky_number(br#"{"a": 1, "b": 2.5, "id": "3e5f-aa"}"#));
        assert!(!has_risky_number(br#"{"note": "see 1e5 \" 2e3"}"#));
        assert!(has_risky_number(br#"{"a": 1e5}"#));
        assert!(has_risky_number(br#"{"a": -2.5E-3}"#));
        assert!(has_risky_number(br#"{"a": "1e99999"}"#));
        assert!(has_risky_number(
            format!("{{\"a\": {}}}", "9".repeat(39)).as_bytes()
        ));
        assert!(!has_risky_number(
            format!("{{\"a\": {}}}", "9".repeat(38)).as_bytes()
        ));
        // A string over two lines is one string to arrow's tape decoder.
        assert!(has_risky_number(b"{\"n\": \"1e99992}\r\n9\"}\n"));
        // Found by tests/fuzz_corpus.rs: the exponent overflows before the parser stops.
        assert!(has_risky_number(br#"{"n": "1e9999+01:009"}"#));
        assert!(has_risky_number(br#"{"n": "1e999+01:0099"}"#));
        assert!(has_risky_number(br#"{"n": "1e99-92233720368%4775808999"}"#));
        assert!(has_risky_number(br#"{"n": "\u0031e99999"}"#));
        assert!(!has_risky_number(br#"{"s": "caf\u00e9", "id": "3e5f"}"#));
    }
}
