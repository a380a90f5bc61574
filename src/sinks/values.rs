//! Arrow columns rendered as one text value per row: the form both stores receive.
//!
//! Postgres parses text with each column type's input function (so a value the column cannot
//! hold fails for that row alone, with the database's message), and Redis stores bytes anyway.
//! Scalars go through Arrow's `cast` kernel to Utf8 (one pass per column); nested values
//! (lists, structs, maps) become JSON text; binary becomes Postgres' `\x` hex form.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};

use crate::record::rows;

/// One column as text: `None` for nulls.
///
/// # Errors
/// A type Arrow cannot render as text (the message names it).
pub fn column_text(array: &ArrayRef) -> Result<Vec<Option<String>>, String> {
    match array.data_type() {
        DataType::Utf8 => Ok(array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let bin = cast(array, &DataType::LargeBinary).map_err(|e| e.to_string())?;
            Ok(bin.as_binary::<i64>().iter().map(|v| v.map(hex)).collect())
        }
        t if is_nested(t) => Ok(json_text(array)),
        t => {
            let text = cast(array, &DataType::Utf8)
                .map_err(|e| format!("cannot write values of type {t}: {e}"))?;
            Ok(text
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect())
        }
    }
}

/// Whether values of this type are written as JSON (`jsonb` in Postgres).
pub fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::ListView(_)
            | DataType::Struct(_)
            | DataType::Map(..)
    )
}

fn json_text(array: &ArrayRef) -> Vec<Option<String>> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        array.data_type().clone(),
        true,
    )]));
    let Ok(batch) = RecordBatch::try_new(schema, vec![array.clone()]) else {
        return vec![None; array.len()];
    };
    rows::to_json_rows(&batch)
        .into_iter()
        .map(|mut m| match m.remove("v") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.to_string()),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, BooleanArray, Float64Array, Int64Array, ListArray};
    use arrow::datatypes::Int64Type;

    #[test]
    fn renders_scalars_nested_and_binary() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)]));
        assert_eq!(
            column_text(&ints).unwrap(),
            vec![Some("1".into()), None, Some("-3".into())]
        );
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.5, 0.1]));
        assert_eq!(
            column_text(&floats).unwrap(),
            vec![Some("1.5".into()), Some("0.1".into())]
        );
        let bools: ArrayRef = Arc::new(BooleanArray::from(vec![true, false]));
        assert_eq!(
            column_text(&bools).unwrap(),
            vec![Some("true".into()), Some("false".into())]
        );
        let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]));
        assert_eq!(
            column_text(&list).unwrap(),
            vec![Some("[1,2]".into()), None]
        );
        let bin: ArrayRef = Arc::new(BinaryArray::from(vec![&b"\x01\xff"[..]]));
        assert_eq!(column_text(&bin).unwrap(), vec![Some("\\x01ff".into())]);
    }
}
