//! Arrow ⇄ BigQuery schemas, and the window columns the sink materialises.
//!
//! Arrow → BigQuery: Utf8 → STRING (JSON when the field carries the `arrow.json` extension
//! name), integers → INT64, floats → FLOAT64, Decimal128 → NUMERIC (BIGNUMERIC when it does not
//! fit NUMERIC's 29.9 digits), Boolean → BOOL, Timestamp → TIMESTAMP, Date → DATE, List → the
//! item type with mode REPEATED, Struct → RECORD. Every non-repeated column is NULLABLE, so
//! batches whose inferred nullability differs still fit one table.
//!
//! BigQuery → Arrow (reads): the reverse, with TIMESTAMP → Timestamp(µs, UTC), NUMERIC →
//! Decimal128(38, 9), DATETIME → Timestamp(µs), and TIME, GEOGRAPHY, BIGNUMERIC, INTERVAL,
//! BYTES (base64) as Utf8.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int8Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;

use crate::record::{meta, user_columns, with_column};

/// Field metadata key/value that marks a Utf8 column as BigQuery JSON.
pub const EXTENSION_KEY: &str = "ARROW:extension:name";
pub const JSON_EXTENSION: &str = "arrow.json";

/// The column names the sink gives Sluice's window metadata (see docs/bigquery.md).
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
pub const PANE_INDEX: &str = "pane_index";
pub const PANE_TIMING: &str = "pane_timing";
pub const SLUICE_ID: &str = "sluice_id";

/// The BigQuery schema for an Arrow schema.
///
/// # Errors
/// A column whose type BigQuery cannot store, named.
pub fn to_bigquery(schema: &Schema) -> Result<TableSchema, String> {
    let fields = schema
        .fields()
        .iter()
        .filter(|f| !meta::is_hidden(f.name()))
        .map(|f| field_to_bigquery(f.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TableSchema::new(fields))
}

fn field_to_bigquery(f: &Field) -> Result<TableFieldSchema, String> {
    let (ty, mode, sub) = match f.data_type() {
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            if matches!(
                item.data_type(),
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
            ) {
                return Err(format!(
                    "column `{}` is a list of lists, which BigQuery cannot store",
                    f.name()
                ));
            }
            let (ty, sub) = scalar_type(f.name(), item)?;
            (ty, "REPEATED", sub)
        }
        _ => {
            let (ty, sub) = scalar_type(f.name(), f)?;
            (ty, "NULLABLE", sub)
        }
    };
    let mut out = TableFieldSchema::new(f.name(), ty);
    out.mode = Some(mode.to_string());
    out.fields = sub;
    Ok(out)
}

fn scalar_type(
    name: &str,
    f: &Field,
) -> Result<(FieldType, Option<Vec<TableFieldSchema>>), String> {
    let t = match f.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            if f.metadata().get(EXTENSION_KEY).map(String::as_str) == Some(JSON_EXTENSION) {
                FieldType::Json
            } else {
                FieldType::String
            }
        }
        // An all-null column inferred from JSON has no type yet; STRING accepts whatever comes.
        DataType::Null => FieldType::String,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => FieldType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => FieldType::Float64,
        DataType::Decimal128(p, s)
            if (0..=9).contains(s) && i16::from(*p) - i16::from(*s) <= 29 =>
        {
            FieldType::Numeric
        }
        DataType::Decimal128(..) | DataType::Decimal256(..) => FieldType::Bignumeric,
        DataType::Boolean => FieldType::Bool,
        DataType::Timestamp(..) => FieldType::Timestamp,
        DataType::Date32 | DataType::Date64 => FieldType::Date,
        DataType::Time32(_) | DataType::Time64(_) => FieldType::Time,
        DataType::Struct(children) => {
            let sub = children
                .iter()
                .map(|c| field_to_bigquery(c.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((FieldType::Record, Some(sub)));
        }
        other => {
            return Err(format!(
                "column `{name}` has type {other}, which WriteToBigQuery does not map to a BigQuery type"
            ));
        }
    };
    Ok((t, None))
}

/// The BigQuery name of a type (`INT64`, `RECORD`, ...).
pub fn type_name(t: &FieldType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The Arrow schema for a BigQuery (table or query result) schema.
pub fn to_arrow(schema: &TableSchema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(field_to_arrow)
        .collect();
    Arc::new(Schema::new(fields))
}

fn field_to_arrow(f: &TableFieldSchema) -> Field {
    let scalar = match f.r#type {
        FieldType::Integer | FieldType::Int64 => DataType::Int64,
        FieldType::Float | FieldType::Float64 => DataType::Float64,
        FieldType::Numeric => DataType::Decimal128(38, 9),
        FieldType::Boolean | FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        FieldType::Datetime => DataType::Timestamp(TimeUnit::Microsecond, None),
        FieldType::Date => DataType::Date32,
        FieldType::Record | FieldType::Struct => DataType::Struct(Fields::from(
            f.fields
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(field_to_arrow)
                .collect::<Vec<_>>(),
        )),
        _ => DataType::Utf8,
    };
    let mut item = Field::new(&f.name, scalar, true);
    if matches!(f.r#type, FieldType::Json) {
        item = item.with_metadata(
            [(EXTENSION_KEY.to_string(), JSON_EXTENSION.to_string())]
                .into_iter()
                .collect(),
        );
    }
    if f.mode.as_deref() == Some("REPEATED") {
        Field::new(
            &f.name,
            DataType::List(Arc::new(item.with_name("item"))),
            true,
        )
    } else {
        item
    }
}

/// The rows a sink writes: the user columns plus, when present and not already taken by a user
/// column, `window_start`/`window_end` (TIMESTAMP), `pane_index` (INT64), `pane_timing`
/// (EARLY/ON_TIME/LATE) and `sluice_id`, made from Sluice's hidden columns.
pub fn rows_to_write(rows: &RecordBatch) -> RecordBatch {
    let mut out = user_columns(rows);
    let taken = |out: &RecordBatch, name: &str| out.schema().column_with_name(name).is_some();
    let ms = |name: &str| {
        rows.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .cloned()
    };
    let add = |out: &mut RecordBatch, name: &str, array: Option<ArrayRef>| {
        if let Some(a) = array
            && !taken(out, name)
            && let Ok(b) = with_column(out, name, a)
        {
            *out = b;
        }
    };
    let ts = |a: Int64Array| -> ArrayRef {
        Arc::new(
            TimestampMillisecondArray::new(a.values().clone(), a.nulls().cloned())
                .with_timezone("UTC"),
        )
    };
    add(&mut out, WINDOW_START, ms(meta::WINDOW_START).map(ts));
    add(&mut out, WINDOW_END, ms(meta::WINDOW_END).map(ts));
    add(
        &mut out,
        PANE_INDEX,
        ms(meta::PANE_INDEX).map(|a| Arc::new(a) as ArrayRef),
    );
    let timing = rows
        .column_by_name(meta::PANE_TIMING)
        .and_then(|c| c.as_any().downcast_ref::<Int8Array>())
        .map(|a| {
            Arc::new(
                a.iter()
                    .map(|v| v.map(pane_timing_name))
                    .collect::<StringArray>(),
            ) as ArrayRef
        });
    add(&mut out, PANE_TIMING, timing);
    add(
        &mut out,
        SLUICE_ID,
        rows.column_by_name(meta::ROW_ID).cloned(),
    );
    out
}

/// Pane timing codes as the windowing operators write them (Early = 0, OnTime = 1, Late = 2).
fn pane_timing_name(code: i8) -> &'static str {
    match code {
        0 => "EARLY",
        1 => "ON_TIME",
        2 => "LATE",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_to_bigquery_types() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int32, false),
            Field::new("f", DataType::Float64, true),
            Field::new("n", DataType::Decimal128(10, 2), true),
            Field::new("b", DataType::Boolean, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("d", DataType::Date32, true),
            Field::new("j", DataType::Utf8, true).with_metadata(
                [(EXTENSION_KEY.to_string(), JSON_EXTENSION.to_string())]
                    .into_iter()
                    .collect(),
            ),
            Field::new_list("l", Field::new("item", DataType::Int64, true), true),
            Field::new_struct("r", vec![Field::new("x", DataType::Utf8, true)], true),
            Field::new(meta::EVENT_TIME, DataType::Int64, true),
        ]);
        let bq = to_bigquery(&schema).unwrap();
        let got: Vec<(String, String, String)> = bq
            .fields
            .unwrap()
            .into_iter()
            .map(|f| (f.name, type_name(&f.r#type), f.mode.unwrap()))
            .collect();
        let n = |s: &str| s.to_string();
        assert_eq!(
            got,
            vec![
                (n("s"), n("STRING"), n("NULLABLE")),
                (n("i"), n("INT64"), n("NULLABLE")),
                (n("f"), n("FLOAT64"), n("NULLABLE")),
                (n("n"), n("NUMERIC"), n("NULLABLE")),
                (n("b"), n("BOOL"), n("NULLABLE")),
                (n("t"), n("TIMESTAMP"), n("NULLABLE")),
                (n("d"), n("DATE"), n("NULLABLE")),
                (n("j"), n("JSON"), n("NULLABLE")),
                (n("l"), n("INT64"), n("REPEATED")),
                (n("r"), n("RECORD"), n("NULLABLE")),
            ]
        );
        let nested = Schema::new(vec![Field::new_list(
            "ll",
            Field::new_list("item", Field::new("item", DataType::Int64, true), true),
            true,
        )]);
        assert!(to_bigquery(&nested).unwrap_err().contains("list of lists"));
    }

    #[test]
    fn window_metadata_becomes_columns() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(meta::WINDOW_START, DataType::Int64, true),
            Field::new(meta::PANE_TIMING, DataType::Int8, true),
            Field::new(meta::ROW_ID, DataType::Utf8, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(Int64Array::from(vec![60_000])),
                Arc::new(Int8Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["id1"])),
            ],
        )
        .unwrap();
        let out = rows_to_write(&rows);
        let names: Vec<&str> = out
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, vec!["k", WINDOW_START, PANE_TIMING, SLUICE_ID]);
        assert_eq!(
            out.column(1).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        let timing = out
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(timing.value(0), "ON_TIME");
    }
}
