//! `MapToFields`: computes output fields from expressions (`fields`), optionally keeping the
//! input fields (`append`) minus `drop`. Rows whose expressions fail go to the error output.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema};
use async_trait::async_trait;

use super::CompiledFor;
use crate::config::ExprSpec;
use crate::pipeline::operator::{EngineError, ErrorRoute, Operator, Output};
use crate::record::{Batch, meta};

pub struct MapToFields {
    names: Vec<String>,
    exprs: CompiledFor,
    append: bool,
    drop: Vec<String>,
    errors: ErrorRoute,
}

impl MapToFields {
    pub fn new(
        fields: Vec<(String, ExprSpec)>,
        append: bool,
        drop: Vec<String>,
        errors: ErrorRoute,
    ) -> Self {
        let (names, specs) = fields.into_iter().unzip();
        MapToFields {
            names,
            exprs: CompiledFor::new(specs),
            append,
            drop,
            errors,
        }
    }
}

#[async_trait]
impl Operator for MapToFields {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let schema = batch.schema();
        let evaluated = self.exprs.evaluate(&batch, &self.errors, out)?;
        let input = &evaluated.rows;
        let mut fields: Vec<Arc<Field>> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (f, c) in schema.fields().iter().zip(input.columns()) {
            let keep = meta::is_hidden(f.name())
                || (self.append && !self.drop.contains(f.name()) && !self.names.contains(f.name()));
            if keep {
                fields.push(f.clone());
                columns.push(c.clone());
            }
        }
        for (name, values) in self.names.iter().zip(evaluated.values) {
            fields.push(Arc::new(Field::new(name, values.data_type().clone(), true)));
            columns.push(values);
        }
        let rows = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(input.num_rows())),
        )
        .map_err(|e| EngineError::internal(self.errors.transform(), e.to_string()))?;
        out.main(batch.derive(rows));
        Ok(())
    }
}
