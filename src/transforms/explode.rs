//! `Explode`: one output row per element of list fields. With `cross_product: true` (Beam's
//! default) several fields give the cartesian product; with `false` they are zipped and the
//! shorter lists padded with null (what Beam's DirectRunner does). Empty or null lists give no
//! rows. Implemented with `take` over computed indices: no per-row allocation.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Builder};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;

use crate::pipeline::operator::{EngineError, ErrorRoute, Operator, Output};
use crate::record::Batch;

pub struct Explode {
    fields: Vec<String>,
    cross_product: bool,
    errors: ErrorRoute,
}

impl Explode {
    pub fn new(fields: Vec<String>, cross_product: bool, errors: ErrorRoute) -> Self {
        Explode {
            fields,
            cross_product,
            errors,
        }
    }
}

/// (offsets, values) of a list column, whatever its offset width.
fn list_parts(col: &ArrayRef) -> Option<(Vec<usize>, ArrayRef)> {
    match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            Some((
                l.value_offsets().iter().map(|o| *o as usize).collect(),
                l.values().clone(),
            ))
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            Some((
                l.value_offsets().iter().map(|o| *o as usize).collect(),
                l.values().clone(),
            ))
        }
        _ => None,
    }
}

/// Zips the list columns at `idx`, padding shorter lists with null.
fn explode_zip(rows: &RecordBatch, idx: &[usize]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let lists: Vec<(Vec<usize>, ArrayRef, bool)> = idx
        .iter()
        .map(|&i| {
            let col = rows.column(i);
            let (offsets, values) = list_parts(col).expect("checked to be a list");
            let nulls = col.logical_nulls();
            (offsets, values, nulls.is_some())
        })
        .collect();
    let n = rows.num_rows();
    let len = |f: usize, row: usize| -> usize {
        let col = rows.column(idx[f]);
        if col.is_null(row) {
            0
        } else {
            lists[f].0[row + 1] - lists[f].0[row]
        }
    };
    let mut row_take = UInt32Builder::new();
    let mut value_take: Vec<UInt32Builder> = idx.iter().map(|_| UInt32Builder::new()).collect();
    for row in 0..n {
        let width = (0..idx.len()).map(|f| len(f, row)).max().unwrap_or(0);
        for j in 0..width {
            row_take.append_value(row as u32);
            for (f, b) in value_take.iter_mut().enumerate() {
                if j < len(f, row) {
                    b.append_value((lists[f].0[row] + j) as u32);
                } else {
                    b.append_null();
                }
            }
        }
    }
    let row_take = row_take.finish();
    let schema = rows.schema();
    let mut fields: Vec<Arc<Field>> = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        match idx.iter().position(|&x| x == i) {
            Some(k) => {
                let values = take(lists[k].1.as_ref(), &value_take[k].finish(), None)?;
                fields.push(Arc::new(Field::new(
                    f.name(),
                    values.data_type().clone(),
                    true,
                )));
                columns.push(values);
            }
            None => {
                fields.push(f.clone());
                columns.push(take(rows.column(i).as_ref(), &row_take, None)?);
            }
        }
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(row_take.len())),
    )
}

#[async_trait]
impl Operator for Explode {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let name = self.errors.transform().to_string();
        let schema = batch.schema();
        let mut idx = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let i = schema
                .index_of(f)
                .map_err(|_| EngineError::config(&name, crate::expr::unknown_field(f, &schema)))?;
            // A field that is not a list explodes to itself (one element), as a scalar would.
            if list_parts(batch.rows.column(i)).is_some() {
                idx.push(i);
            }
        }
        if idx.is_empty() {
            out.main(batch);
            return Ok(());
        }
        let internal = |e: arrow::error::ArrowError| EngineError::internal(&name, e.to_string());
        let rows = if self.cross_product {
            let mut rows = batch.rows.clone();
            for &i in &idx {
                rows = explode_zip(&rows, &[i]).map_err(internal)?;
            }
            rows
        } else {
            explode_zip(&batch.rows, &idx).map_err(internal)?
        };
        out.main(batch.derive(rows));
        Ok(())
    }
}
