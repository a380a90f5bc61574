//! Arrow batches → Storage Write API proto rows.
//!
//! The writer schema is a proto2 `DescriptorProto` made from the *table's* BigQuery schema (one
//! field per column, numbered in column order, RECORD columns as nested message types flattened
//! into the root, as BigQuery's own `ProtoSchemaConverter` does). Each input column is first cast,
//! with Arrow's vectorised kernels, to the Arrow type that carries the column's proto
//! representation (INT64 → Int64, TIMESTAMP → Timestamp(µs) sent as int64 µs, DATE → Date32 sent
//! as int32 days, NUMERIC/BIGNUMERIC/DATETIME/TIME/JSON → their canonical strings, ...). Values
//! that do not convert (text in an INT64 column, a timestamp outside 0001–9999, invalid JSON, a
//! NULL in a REQUIRED column or inside an array, a field the table lacks) reject their row with a
//! reason before anything is sent. The rows are then written column by column into one byte
//! buffer per row: no JSON, no per-value allocation.
//!
//! Decimals are never rounded here: a Decimal column is sent at its own scale and BigQuery
//! decides (a NUMERIC with more than 9 fractional digits is refused by the server).

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array,
    RecordBatch, StringArray, new_null_array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};

/// The largest encoded row sent: a request holds at most 10 MB, and the request envelope (stream
/// name, writer schema) needs some room.
pub const MAX_ROW_BYTES: usize = 9 * 1024 * 1024;

/// BigQuery's TIMESTAMP range, in µs since the epoch: 0001-01-01 00:00:00 to
/// 9999-12-31 23:59:59.999999 UTC.
const MIN_TIMESTAMP_US: i64 = -62_135_596_800_000_000;
const MAX_TIMESTAMP_US: i64 = 253_402_300_799_999_999;
/// BigQuery's DATE range in days since the epoch: 0001-01-01 to 9999-12-31.
const MIN_DATE: i32 = -719_162;
const MAX_DATE: i32 = 2_932_896;

/// How a column travels on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int64,
    Double,
    Bool,
    Str,
    Json,
    Numeric,
    Timestamp,
    Date,
    Datetime,
    Time,
    Bytes,
    Record,
}

#[derive(Debug, Clone)]
struct ProtoField {
    name: String,
    number: u32,
    kind: Kind,
    bq_type: &'static str,
    repeated: bool,
    required: bool,
    children: Vec<ProtoField>,
}

/// The writer schema of one table and the recipe to encode batches for it.
#[derive(Debug, Clone)]
pub struct RowSchema {
    descriptor: DescriptorProto,
    fields: Vec<ProtoField>,
}

/// A batch encoded for `AppendRows`: `(row index in the batch, serialized row)` for the rows
/// that could be encoded, and `(row index, reason)` for the others.
#[derive(Debug, Default)]
pub struct Encoded {
    pub rows: Vec<(usize, Vec<u8>)>,
    pub rejected: Vec<(usize, String)>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn kind_of(t: &FieldType) -> (Kind, Type, &'static str) {
    match t {
        FieldType::String | FieldType::Geography | FieldType::Interval => {
            (Kind::Str, Type::String, "STRING")
        }
        FieldType::Json => (Kind::Json, Type::String, "JSON"),
        FieldType::Bytes => (Kind::Bytes, Type::Bytes, "BYTES"),
        FieldType::Integer | FieldType::Int64 => (Kind::Int64, Type::Int64, "INT64"),
        FieldType::Float | FieldType::Float64 => (Kind::Double, Type::Double, "FLOAT64"),
        FieldType::Numeric => (Kind::Numeric, Type::String, "NUMERIC"),
        FieldType::Bignumeric => (Kind::Numeric, Type::String, "BIGNUMERIC"),
        FieldType::Boolean | FieldType::Bool => (Kind::Bool, Type::Bool, "BOOL"),
        FieldType::Timestamp => (Kind::Timestamp, Type::Int64, "TIMESTAMP"),
        FieldType::Date => (Kind::Date, Type::Int32, "DATE"),
        FieldType::Datetime => (Kind::Datetime, Type::String, "DATETIME"),
        FieldType::Time => (Kind::Time, Type::String, "TIME"),
        FieldType::Record | FieldType::Struct => (Kind::Record, Type::Message, "RECORD"),
    }
}

/// Builds the fields of one message; RECORD types are appended to `nested` (all at the root,
/// named by their path of field numbers, so names never clash with columns or each other).
fn build(
    fields: &[TableFieldSchema],
    path: &str,
    type_path: &str,
    nested: &mut Vec<DescriptorProto>,
) -> Result<(Vec<FieldDescriptorProto>, Vec<ProtoField>), String> {
    let mut fds = Vec::with_capacity(fields.len());
    let mut pfs = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let full = format!("{path}{}", f.name);
        if !is_ident(&f.name) {
            return Err(format!(
                "column `{full}` is not a protobuf identifier (letters, digits and _), which the \
                 Storage Write API needs; use `method: insert_all` for this table"
            ));
        }
        let number = u32::try_from(i + 1).map_err(|_| "too many columns".to_string())?;
        let mode = f.mode.as_deref().unwrap_or("NULLABLE").to_ascii_uppercase();
        let (kind, ty, bq_type) = kind_of(&f.r#type);
        let (label, repeated, required) = match mode.as_str() {
            "REPEATED" => (Label::Repeated, true, false),
            "REQUIRED" => (Label::Required, false, true),
            _ => (Label::Optional, false, false),
        };
        let mut fd = FieldDescriptorProto {
            name: Some(f.name.clone()),
            number: Some(number as i32),
            label: Some(label as i32),
            r#type: Some(ty as i32),
            ..Default::default()
        };
        let mut children = Vec::new();
        if kind == Kind::Record {
            let type_name = format!("{type_path}_{number}");
            let (sub_fds, sub_pfs) = build(
                f.fields.as_deref().unwrap_or_default(),
                &format!("{full}."),
                &type_name,
                nested,
            )?;
            nested.push(DescriptorProto {
                name: Some(type_name.clone()),
                field: sub_fds,
                ..Default::default()
            });
            fd.type_name = Some(type_name);
            children = sub_pfs;
        }
        fds.push(fd);
        pfs.push(ProtoField {
            name: f.name.clone(),
            number,
            kind,
            bq_type,
            repeated,
            required,
            children,
        });
    }
    Ok((fds, pfs))
}

impl RowSchema {
    /// The writer schema for a table with these columns.
    ///
    /// # Errors
    /// A column name that cannot be a proto field name.
    pub fn from_table(fields: &[TableFieldSchema]) -> Result<RowSchema, String> {
        let mut nested = Vec::new();
        let (field, fields) = build(fields, "", "SluiceRecord", &mut nested)?;
        Ok(RowSchema {
            descriptor: DescriptorProto {
                name: Some("SluiceRow".into()),
                field,
                nested_type: nested,
                ..Default::default()
            },
            fields,
        })
    }

    pub fn descriptor(&self) -> &DescriptorProto {
        &self.descriptor
    }

    /// Encodes the rows of `rows` (the sink's output columns) for this table.
    pub fn encode(&self, rows: &RecordBatch) -> Encoded {
        let n = rows.num_rows();
        let mut reasons: Vec<Option<String>> = vec![None; n];
        let mut reject = |bad: Vec<(usize, String)>| {
            for (i, msg) in bad {
                if let Some(slot) = reasons.get_mut(i)
                    && slot.is_none()
                {
                    *slot = Some(msg);
                }
            }
        };
        let schema = rows.schema();
        for (f, col) in schema.fields().iter().zip(rows.columns()) {
            if !self
                .fields
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(f.name()))
            {
                reject(
                    valid_rows(col.as_ref(), None)
                        .map(|i| (i, format!("no such field `{}` in the table", f.name())))
                        .collect(),
                );
            }
        }
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); n];
        for pf in &self.fields {
            let src = schema
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(&pf.name))
                .map(|i| rows.column(i));
            let (col, bad) = match src {
                Some(a) => coerce_field(a, pf, &pf.name),
                None => (Col::Null, missing(pf, &pf.name, n, None)),
            };
            reject(bad);
            for (i, buf) in bufs.iter_mut().enumerate() {
                col.write(i, pf.number, buf);
            }
        }
        let mut out = Encoded::default();
        for (i, (reason, buf)) in reasons.into_iter().zip(bufs).enumerate() {
            match reason {
                Some(r) => out.rejected.push((i, r)),
                None if buf.len() > MAX_ROW_BYTES => out.rejected.push((
                    i,
                    format!(
                        "the row is {} bytes encoded; a Storage Write API request holds at most 10 MB",
                        buf.len()
                    ),
                )),
                None => out.rows.push((i, buf)),
            }
        }
        out
    }
}

/// Rows `i` where `a` is valid (and `parent`, when given, is valid too).
fn valid_rows<'a>(
    a: &'a dyn Array,
    parent: Option<&'a NullBuffer>,
) -> impl Iterator<Item = usize> + 'a {
    (0..a.len()).filter(move |&i| a.is_valid(i) && parent.is_none_or(|p| p.is_valid(i)))
}

/// The rejections for a column the input lacks: none unless it is REQUIRED.
fn missing(
    pf: &ProtoField,
    path: &str,
    len: usize,
    parent: Option<&NullBuffer>,
) -> Vec<(usize, String)> {
    if !pf.required {
        return Vec::new();
    }
    (0..len)
        .filter(|&i| parent.is_none_or(|p| p.is_valid(i)))
        .map(|i| (i, format!("missing value for REQUIRED column `{path}`")))
        .collect()
}

/// A column in its wire form.
enum Col {
    Null,
    Int64(Int64Array),
    Int32(Date32Array),
    Double(Float64Array),
    Bool(BooleanArray),
    Str(StringArray),
    Bytes(BinaryArray),
    /// Encoded sub-messages, one per row.
    Msg(Vec<Vec<u8>>, Option<NullBuffer>),
    /// Row `i` holds elements `offsets[i]..offsets[i + 1]` of `values`.
    List(Vec<usize>, Option<NullBuffer>, Box<Col>),
}

fn varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn tag(number: u32, wire: u8, buf: &mut Vec<u8>) {
    varint((u64::from(number) << 3) | u64::from(wire), buf);
}

fn bytes_field(number: u32, b: &[u8], buf: &mut Vec<u8>) {
    tag(number, 2, buf);
    varint(b.len() as u64, buf);
    buf.extend_from_slice(b);
}

impl Col {
    /// Appends element `i` (all of row `i`'s elements for a list) as field `number`; nothing
    /// for NULL, which proto2 reads as "not set" and BigQuery stores as NULL.
    fn write(&self, i: usize, number: u32, buf: &mut Vec<u8>) {
        match self {
            Col::Null => {}
            Col::Int64(a) if a.is_valid(i) => {
                tag(number, 0, buf);
                varint(a.value(i) as u64, buf);
            }
            // int32 is sign-extended to 64 bits on the wire.
            Col::Int32(a) if a.is_valid(i) => {
                tag(number, 0, buf);
                varint(i64::from(a.value(i)) as u64, buf);
            }
            Col::Double(a) if a.is_valid(i) => {
                tag(number, 1, buf);
                buf.extend_from_slice(&a.value(i).to_le_bytes());
            }
            Col::Bool(a) if a.is_valid(i) => {
                tag(number, 0, buf);
                varint(u64::from(a.value(i)), buf);
            }
            Col::Str(a) if a.is_valid(i) => bytes_field(number, a.value(i).as_bytes(), buf),
            Col::Bytes(a) if a.is_valid(i) => bytes_field(number, a.value(i), buf),
            Col::Msg(rows, nulls) if nulls.as_ref().is_none_or(|n| n.is_valid(i)) => {
                bytes_field(number, &rows[i], buf);
            }
            Col::List(offsets, nulls, values) if nulls.as_ref().is_none_or(|n| n.is_valid(i)) => {
                for j in offsets[i]..offsets[i + 1] {
                    values.write(j, number, buf);
                }
            }
            _ => {}
        }
    }
}

fn type_error(
    src: &dyn Array,
    path: &str,
    bq: &str,
    parent: Option<&NullBuffer>,
) -> Vec<(usize, String)> {
    valid_rows(src, parent)
        .map(|i| {
            (
                i,
                format!(
                    "`{path}`: a {} value cannot be written to a {bq} column",
                    src.data_type()
                ),
            )
        })
        .collect()
}

/// Casts `src` to `to`; rows whose value did not convert are returned with a reason.
fn cast_checked(
    src: &ArrayRef,
    to: &DataType,
    path: &str,
    bq: &str,
) -> (ArrayRef, Vec<(usize, String)>) {
    match cast_with_options(src, to, &CastOptions::default()) {
        Ok(out) => {
            let bad_rows: Vec<usize> = (0..src.len())
                .filter(|&i| src.is_valid(i) && out.is_null(i))
                .collect();
            (out, invalid_values(src, &bad_rows, path, bq))
        }
        Err(_) => (
            new_null_array(to, src.len()),
            type_error(src.as_ref(), path, bq, None),
        ),
    }
}

/// "`path`: `value` is not a valid TYPE" for each of `rows`.
fn invalid_values(src: &ArrayRef, rows: &[usize], path: &str, bq: &str) -> Vec<(usize, String)> {
    if rows.is_empty() {
        return Vec::new();
    }
    let fmt = ArrayFormatter::try_new(src.as_ref(), &FormatOptions::default()).ok();
    rows.iter()
        .map(|&i| {
            let v = fmt
                .as_ref()
                .map_or_else(String::new, |f| f.value(i).to_string());
            (i, format!("`{path}`: `{v}` is not a valid {bq}"))
        })
        .collect()
}

fn as_f64(a: &ArrayRef) -> Float64Array {
    match cast_with_options(a, &DataType::Float64, &CastOptions::default()) {
        Ok(f) => f.as_primitive::<Float64Type>().clone(),
        Err(_) => Float64Array::new_null(a.len()),
    }
}

fn utf8(a: &ArrayRef) -> StringArray {
    match cast_with_options(a, &DataType::Utf8, &CastOptions::default()) {
        Ok(s) => s.as_string::<i32>().clone(),
        Err(_) => StringArray::new_null(a.len()),
    }
}

/// Coerces one column (or RECORD child) for field `pf`, REPEATED included.
fn coerce_field(src: &ArrayRef, pf: &ProtoField, path: &str) -> (Col, Vec<(usize, String)>) {
    if !pf.repeated {
        let (col, mut bad) = coerce_value(src, pf, path);
        if pf.required {
            bad.extend(
                (0..src.len())
                    .filter(|&i| src.is_null(i))
                    .map(|i| (i, format!("missing value for REQUIRED column `{path}`"))),
            );
        }
        return (col, bad);
    }
    let (offsets, nulls, values): (Vec<usize>, Option<NullBuffer>, ArrayRef) = match src.data_type()
    {
        DataType::List(_) => {
            let l = src.as_list::<i32>();
            let o = l.offsets().iter().map(|&o| o as usize).collect();
            (o, l.nulls().cloned(), l.values().clone())
        }
        DataType::LargeList(_) => {
            let l = src.as_list::<i64>();
            let o = l.offsets().iter().map(|&o| o as usize).collect();
            (o, l.nulls().cloned(), l.values().clone())
        }
        DataType::FixedSizeList(_, size) => {
            let l = src.as_fixed_size_list();
            let size = *size as usize;
            let o = (0..=l.len()).map(|i| i * size).collect();
            (o, l.nulls().cloned(), l.values().clone())
        }
        _ => {
            let bad = valid_rows(src.as_ref(), None)
                .map(|i| {
                    (
                        i,
                        format!(
                            "`{path}` is REPEATED; a {} value cannot be written to it",
                            src.data_type()
                        ),
                    )
                })
                .collect();
            return (Col::Null, bad);
        }
    };
    let (vcol, vbad) = coerce_value(&values, pf, path);
    let row_valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
    let mut bad = Vec::new();
    // Map element positions back to rows (both ascending).
    let mut vbad = vbad.into_iter().peekable();
    for row in 0..src.len() {
        let (start, end) = (offsets[row], offsets[row + 1]);
        let mut reason = None;
        while let Some((j, _)) = vbad.peek() {
            if *j >= end {
                break;
            }
            let (j, msg) = vbad.next().expect("peeked");
            if j >= start && reason.is_none() {
                reason = Some(msg);
            }
        }
        if !row_valid(row) {
            continue;
        }
        if (start..end).any(|j| values.is_null(j)) {
            bad.push((
                row,
                format!("`{path}` holds a NULL element, which BigQuery arrays cannot"),
            ));
        } else if let Some(r) = reason {
            bad.push((row, r));
        }
    }
    (Col::List(offsets, nulls, Box::new(vcol)), bad)
}

/// Coerces the values of a (non-repeated view of a) field.
fn coerce_value(src: &ArrayRef, pf: &ProtoField, path: &str) -> (Col, Vec<(usize, String)>) {
    let bq = pf.bq_type;
    match pf.kind {
        Kind::Int64 => {
            let (a, mut bad) = cast_checked(src, &DataType::Int64, path, bq);
            if src.data_type().is_floating() {
                // Arrow truncates 1.5 to 1; BigQuery would refuse it, and so does Sluice.
                let f = as_f64(src);
                let fractional: Vec<usize> = (0..f.len())
                    .filter(|&i| f.is_valid(i) && f.value(i).fract() != 0.0)
                    .collect();
                bad.extend(invalid_values(src, &fractional, path, bq));
            }
            (Col::Int64(a.as_primitive::<Int64Type>().clone()), bad)
        }
        Kind::Double => {
            let (a, bad) = cast_checked(src, &DataType::Float64, path, bq);
            (Col::Double(a.as_primitive::<Float64Type>().clone()), bad)
        }
        Kind::Bool => {
            let (a, bad) = cast_checked(src, &DataType::Boolean, path, bq);
            (Col::Bool(a.as_boolean().clone()), bad)
        }
        Kind::Bytes => {
            let (a, bad) = cast_checked(src, &DataType::Binary, path, bq);
            (Col::Bytes(a.as_binary::<i32>().clone()), bad)
        }
        Kind::Str => {
            let (a, bad) = cast_checked(src, &DataType::Utf8, path, bq);
            (Col::Str(a.as_string::<i32>().clone()), bad)
        }
        Kind::Json => {
            let (a, mut bad) = cast_checked(src, &DataType::Utf8, path, bq);
            let s = a.as_string::<i32>().clone();
            let invalid: Vec<usize> = (0..s.len())
                .filter(|&i| {
                    s.is_valid(i)
                        && serde_json::from_str::<serde::de::IgnoredAny>(s.value(i)).is_err()
                })
                .collect();
            bad.extend(invalid_values(src, &invalid, path, bq));
            (Col::Str(s), bad)
        }
        Kind::Numeric => coerce_numeric(src, path, bq),
        Kind::Timestamp => {
            let to = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            let (a, mut bad) = cast_checked(src, &to, path, bq);
            let ts = a.as_primitive::<TimestampMicrosecondType>();
            let out: Vec<usize> = (0..ts.len())
                .filter(|&i| {
                    ts.is_valid(i) && !(MIN_TIMESTAMP_US..=MAX_TIMESTAMP_US).contains(&ts.value(i))
                })
                .collect();
            bad.extend(out.into_iter().map(|i| {
                (
                    i,
                    format!("`{path}`: timestamp outside BigQuery's range (years 1 to 9999)"),
                )
            }));
            let us = Int64Array::new(ts.values().clone(), ts.nulls().cloned());
            (Col::Int64(us), bad)
        }
        Kind::Date => {
            let (a, mut bad) = cast_checked(src, &DataType::Date32, path, bq);
            let d = a.as_primitive::<Date32Type>().clone();
            bad.extend(
                (0..d.len())
                    .filter(|&i| d.is_valid(i) && !(MIN_DATE..=MAX_DATE).contains(&d.value(i)))
                    .map(|i| {
                        (
                            i,
                            format!("`{path}`: date outside BigQuery's range (years 1 to 9999)"),
                        )
                    }),
            );
            (Col::Int32(d), bad)
        }
        Kind::Datetime | Kind::Time => {
            let to = if pf.kind == Kind::Time {
                DataType::Time64(TimeUnit::Microsecond)
            } else {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            };
            let (a, bad) = cast_checked(src, &to, path, bq);
            (Col::Str(utf8(&a)), bad)
        }
        Kind::Record => coerce_record(src, pf, path),
    }
}

/// NUMERIC/BIGNUMERIC travel as decimal strings. Decimals keep their own scale (BigQuery
/// decides about extra digits), text is checked to be a number and sent as written, integers
/// are exact, floats are rounded to 9 decimal places (NUMERIC's scale).
fn coerce_numeric(src: &ArrayRef, path: &str, bq: &str) -> (Col, Vec<(usize, String)>) {
    match src.data_type() {
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => {
            let (a, bad) = cast_checked(src, &DataType::Utf8, path, bq);
            (Col::Str(a.as_string::<i32>().clone()), bad)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let (_, bad) = cast_checked(src, &DataType::Decimal256(76, 38), path, bq);
            (Col::Str(utf8(src)), bad)
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let (d, bad) = cast_checked(src, &DataType::Decimal128(38, 9), path, bq);
            (Col::Str(utf8(&d)), bad)
        }
        t if t.is_integer() => (Col::Str(utf8(src)), Vec::new()),
        DataType::Null => (Col::Null, Vec::new()),
        _ => (Col::Null, type_error(src.as_ref(), path, bq, None)),
    }
}

fn coerce_record(src: &ArrayRef, pf: &ProtoField, path: &str) -> (Col, Vec<(usize, String)>) {
    if matches!(src.data_type(), DataType::Null) {
        return (Col::Null, Vec::new());
    }
    let Some(st) = src.as_struct_opt() else {
        return (Col::Null, type_error(src.as_ref(), path, "RECORD", None));
    };
    let parent = st.nulls();
    let mut bad = Vec::new();
    for (cf, carr) in st.fields().iter().zip(st.columns()) {
        if !pf
            .children
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(cf.name()))
        {
            bad.extend(valid_rows(carr.as_ref(), parent).map(|i| {
                (
                    i,
                    format!("no such field `{path}.{}` in the table", cf.name()),
                )
            }));
        }
    }
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); st.len()];
    for child in &pf.children {
        let cpath = format!("{path}.{}", child.name);
        let carr = st
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(&child.name))
            .map(|i| st.column(i));
        let (ccol, cbad) = match carr {
            Some(a) => coerce_field(a, child, &cpath),
            None => (Col::Null, missing(child, &cpath, st.len(), parent)),
        };
        // A child's problem matters only where the record itself is not NULL.
        bad.extend(
            cbad.into_iter()
                .filter(|(i, _)| parent.is_none_or(|p| p.is_valid(*i))),
        );
        for (i, buf) in bufs.iter_mut().enumerate() {
            ccol.write(i, child.number, buf);
        }
    }
    (Col::Msg(bufs, parent.cloned()), bad)
}

#[cfg(test)]
mod tests;
