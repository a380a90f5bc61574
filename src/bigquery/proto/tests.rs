//! Unit tests of the proto encoding: descriptors, exact wire bytes, records, rejections.
use super::*;
use std::sync::Arc;

use arrow::array::{
    Decimal128Array, Int32Array, ListArray, StructArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Field, Int32Type, Schema};

fn f(name: &str, t: FieldType, mode: &str) -> TableFieldSchema {
    let mut f = TableFieldSchema::new(name, t);
    f.mode = Some(mode.into());
    f
}

fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

#[test]
fn descriptor_numbers_columns_and_flattens_records() {
    let mut rec = f("r", FieldType::Record, "NULLABLE");
    rec.fields = Some(vec![
        f("w", FieldType::Int64, "REQUIRED"),
        f("tags", FieldType::String, "REPEATED"),
    ]);
    let s = RowSchema::from_table(&[
        f("a", FieldType::String, "NULLABLE"),
        rec,
        f("t", FieldType::Timestamp, "NULLABLE"),
    ])
    .unwrap();
    let d = s.descriptor();
    let got: Vec<(&str, i32, i32, i32, &str)> = d
        .field
        .iter()
        .map(|x| {
            (
                x.name(),
                x.number(),
                x.label.unwrap_or(0),
                x.r#type.unwrap_or(0),
                x.type_name(),
            )
        })
        .collect();
    let (o, r) = (Label::Optional as i32, Label::Repeated as i32);
    assert_eq!(
        got,
        vec![
            ("a", 1, o, Type::String as i32, ""),
            ("r", 2, o, Type::Message as i32, "SluiceRecord_2"),
            ("t", 3, o, Type::Int64 as i32, ""),
        ]
    );
    assert_eq!(d.nested_type.len(), 1);
    let sub = &d.nested_type[0];
    assert_eq!(sub.name(), "SluiceRecord_2");
    assert_eq!(sub.field[0].label, Some(Label::Required as i32));
    assert_eq!(sub.field[1].label, Some(r));
    assert!(RowSchema::from_table(&[f("a-b", FieldType::String, "NULLABLE")]).is_err());
}

#[test]
fn rows_are_encoded_as_proto_wire_format() {
    let s = RowSchema::from_table(&[
        f("i", FieldType::Int64, "NULLABLE"),
        f("s", FieldType::String, "NULLABLE"),
        f("x", FieldType::Float64, "NULLABLE"),
        f("b", FieldType::Bool, "NULLABLE"),
        f("d", FieldType::Date, "NULLABLE"),
        f("l", FieldType::Int64, "REPEATED"),
    ])
    .unwrap();
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
        Some(vec![Some(1), Some(300)]),
        None,
    ]);
    let rows = batch(vec![
        ("i", Arc::new(Int64Array::from(vec![Some(1), Some(-1)]))),
        ("s", Arc::new(StringArray::from(vec![Some("a"), None]))),
        ("x", Arc::new(Float64Array::from(vec![Some(1.5), None]))),
        ("b", Arc::new(BooleanArray::from(vec![Some(true), None]))),
        ("d", Arc::new(Date32Array::from(vec![Some(-1), None]))),
        ("l", Arc::new(list)),
    ]);
    let e = s.encode(&rows);
    assert!(e.rejected.is_empty(), "{:?}", e.rejected);
    let mut row0 = vec![0x08, 0x01, 0x12, 0x01, b'a', 0x19];
    row0.extend_from_slice(&1.5f64.to_le_bytes());
    row0.extend_from_slice(&[0x20, 0x01, 0x28]);
    row0.extend_from_slice(&[0xff; 9]);
    row0.extend_from_slice(&[0x01, 0x30, 0x01, 0x30, 0xac, 0x02]);
    let mut row1 = vec![0x08];
    row1.extend_from_slice(&[0xff; 9]);
    row1.push(0x01);
    assert_eq!(e.rows, vec![(0, row0), (1, row1)]);
}

#[test]
fn records_are_nested_messages() {
    let mut rec = f("r", FieldType::Record, "NULLABLE");
    rec.fields = Some(vec![f("w", FieldType::Int64, "NULLABLE")]);
    let s = RowSchema::from_table(&[rec]).unwrap();
    let st = StructArray::from(vec![(
        Arc::new(Field::new("w", DataType::Int32, true)),
        Arc::new(Int32Array::from(vec![Some(2), None])) as ArrayRef,
    )]);
    let e = s.encode(&batch(vec![("r", Arc::new(st))]));
    assert_eq!(
        e.rows,
        vec![(0, vec![0x0a, 0x02, 0x08, 0x02]), (1, vec![0x0a, 0x00])]
    );
}

#[test]
fn values_that_do_not_fit_reject_their_row_with_a_reason() {
    let s = RowSchema::from_table(&[
        f("n", FieldType::Int64, "NULLABLE"),
        f("j", FieldType::Json, "NULLABLE"),
        f("t", FieldType::Timestamp, "NULLABLE"),
        f("k", FieldType::String, "REQUIRED"),
        f("m", FieldType::Numeric, "NULLABLE"),
    ])
    .unwrap();
    let rows = batch(vec![
        (
            "n",
            Arc::new(StringArray::from(vec!["1", "x", "3", "4", "5", "6"])),
        ),
        (
            "j",
            Arc::new(StringArray::from(vec![
                r#"{"a": 1}"#,
                "{}",
                "{oops",
                "[]",
                "1",
                "2",
            ])),
        ),
        (
            "t",
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(1_767_323_045_000_000),
                    None,
                    None,
                    Some(MAX_TIMESTAMP_US + 1),
                    None,
                    None,
                ])
                .with_timezone("UTC"),
            ),
        ),
        (
            "k",
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("b"),
                Some("c"),
                Some("d"),
                None,
                Some("f"),
            ])),
        ),
        (
            "m",
            Arc::new(
                Decimal128Array::from(vec![Some(125), None, None, None, None, Some(1)])
                    .with_precision_and_scale(12, 10)
                    .unwrap(),
            ),
        ),
        (
            "extra",
            Arc::new(StringArray::from(vec![
                None,
                None,
                None,
                None,
                None,
                Some("z"),
            ])),
        ),
    ]);
    let e = s.encode(&rows);
    let kept: Vec<usize> = e.rows.iter().map(|(i, _)| *i).collect();
    assert_eq!(kept, vec![0]);
    assert_eq!(
        e.rejected,
        vec![
            (1, "`n`: `x` is not a valid INT64".to_string()),
            (2, "`j`: `{oops` is not a valid JSON".to_string()),
            (
                3,
                "`t`: timestamp outside BigQuery's range (years 1 to 9999)".to_string()
            ),
            (4, "missing value for REQUIRED column `k`".to_string()),
            (5, "no such field `extra` in the table".to_string()),
        ]
    );
    // The decimal keeps its own scale (BigQuery judges the extra digits).
    let row0 = &e.rows[0].1;
    let text = b"0.0000000125";
    assert!(row0.windows(text.len()).any(|w| w == text), "{row0:?}");
}

#[test]
fn floats_with_a_fraction_are_not_truncated_into_int64() {
    let s = RowSchema::from_table(&[f("n", FieldType::Int64, "NULLABLE")]).unwrap();
    let rows = batch(vec![(
        "n",
        Arc::new(Float64Array::from(vec![Some(2.0), Some(1.5), None])),
    )]);
    let e = s.encode(&rows);
    assert_eq!(e.rows, vec![(0, vec![0x08, 0x02]), (2, Vec::new())]);
    assert_eq!(
        e.rejected,
        vec![(1, "`n`: `1.5` is not a valid INT64".to_string())]
    );
}
