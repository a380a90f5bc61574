//! `ValidateWithSchema`: rows that violate a JSON Schema go to the error output with the
//! validator's message; valid rows pass on unchanged.

use arrow::array::BooleanBuilder;
use arrow::compute::filter_record_batch;
use async_trait::async_trait;

use crate::pipeline::operator::{EngineError, ErrorRoute, Operator, Output};
use crate::record::{Batch, rows};

pub struct ValidateWithSchema {
    validator: jsonschema::Validator,
    errors: ErrorRoute,
}

impl ValidateWithSchema {
    /// # Errors
    /// When `schema` is not a valid JSON Schema.
    pub fn new(schema: &serde_json::Value, errors: ErrorRoute) -> Result<Self, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(ValidateWithSchema { validator, errors })
    }
}

#[async_trait]
impl Operator for ValidateWithSchema {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let values = rows::to_json_rows(&batch.rows);
        let mut keep = BooleanBuilder::with_capacity(values.len());
        let mut failures = Vec::new();
        for row in values {
            let row = serde_json::Value::Object(row);
            let problems: Vec<String> = self
                .validator
                .iter_errors(&row)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            keep.append_value(problems.is_empty());
            if !problems.is_empty() {
                failures.push((row.to_string(), problems.join("; ")));
            }
        }
        self.errors.report(out, &batch, failures);
        let kept = filter_record_batch(&batch.rows, &keep.finish())
            .map_err(|e| EngineError::internal(self.errors.transform(), e.to_string()))?;
        out.main(batch.derive(kept));
        Ok(())
    }
}
