//! What a pane of `Sql` per window looks like: the canonical order of a window's rows before
//! the query runs, and the result rows with Sluice's window, pane and row id columns.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int64Array, RecordBatch, StringBuilder, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::row::{RowConverter, SortField};

use crate::record::{meta, user_columns};
use crate::time::Window;
use crate::transforms::window::combine::{PaneTiming, row_id};

/// The query's result rows plus event time, window, pane and row id columns; `ids_of` is
/// (pipeline, transform).
///
/// # Errors
/// The columns do not form a batch (an internal error).
pub fn pane_rows(
    ids_of: (&str, &str),
    result: &RecordBatch,
    w: Window,
    key: &[u8],
    pane: i64,
    timing: PaneTiming,
) -> Result<RecordBatch, String> {
    let user = user_columns(result);
    let n = user.num_rows();
    let mut ids = StringBuilder::with_capacity(n, n * 32);
    // The key of a row id: the session key and the row's content (plus its occurrence
    // among identical rows); by position when a column type has no row encoding.
    let content = RowConverter::new(
        user.schema()
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .and_then(|c| c.convert_columns(user.columns()))
    .ok();
    let mut seen: HashMap<&[u8], u32> = HashMap::new();
    let mut buf = Vec::new();
    for i in 0..n {
        buf.clear();
        buf.extend_from_slice(&(key.len() as u64).to_be_bytes());
        buf.extend_from_slice(key);
        match &content {
            Some(rows) => {
                let row = rows.row(i);
                let occurrence = seen.entry(row.data()).or_insert(0);
                buf.extend_from_slice(row.data());
                buf.extend_from_slice(&occurrence.to_be_bytes());
                *occurrence += 1;
            }
            None => buf.extend_from_slice(&(i as u64).to_be_bytes()),
        }
        ids.append_value(row_id(ids_of, w, &buf, pane));
    }
    let schema = user.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = user.columns().to_vec();
    fields.push(Field::new(meta::EVENT_TIME, DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(vec![w.max_timestamp(); n])));
    fields.push(Field::new(meta::WINDOW_START, DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(vec![w.start; n])));
    fields.push(Field::new(meta::WINDOW_END, DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(vec![w.end; n])));
    fields.push(Field::new(meta::PANE_INDEX, DataType::Int64, true));
    columns.push(Arc::new(Int64Array::from(vec![pane; n])));
    fields.push(Field::new(meta::PANE_TIMING, DataType::Int8, true));
    columns.push(Arc::new(Int8Array::from(vec![timing as i8; n])));
    fields.push(Field::new(meta::ROW_ID, DataType::Utf8, true));
    columns.push(Arc::new(ids.finish()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Sorts rows by event time, then every column (arrow-row order), so that a pane's query sees
/// the same rows in the same order however they arrived. Rows whose columns have no row
/// encoding keep their arrival order.
pub fn canonical_order(batch: RecordBatch) -> RecordBatch {
    let schema = batch.schema();
    let mut order: Vec<usize> = Vec::with_capacity(schema.fields().len());
    if let Ok(i) = schema.index_of(meta::EVENT_TIME) {
        order.push(i);
    }
    order
        .extend((0..schema.fields().len()).filter(|&i| schema.field(i).name() != meta::EVENT_TIME));
    let fields = order
        .iter()
        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    let columns: Vec<ArrayRef> = order.iter().map(|&i| batch.column(i).clone()).collect();
    let Ok(rows) = RowConverter::new(fields).and_then(|c| c.convert_columns(&columns)) else {
        return batch;
    };
    let mut idx: Vec<u32> = (0..batch.num_rows() as u32).collect();
    idx.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    if idx.iter().enumerate().all(|(i, &v)| v as usize == i) {
        return batch;
    }
    take_record_batch(&batch, &UInt32Array::from(idx)).unwrap_or(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    #[test]
    fn canonical_order_is_event_time_then_content() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(meta::EVENT_TIME, DataType::Int64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["b", "a", "c", "a"])),
                Arc::new(Int64Array::from(vec![5, 9, 1, 5])),
            ],
        )
        .unwrap();
        let sorted = canonical_order(b);
        let k = sorted
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            k.iter().flatten().collect::<Vec<_>>(),
            vec!["c", "a", "b", "a"]
        );
    }
}
