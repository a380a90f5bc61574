//! `StripErrorMetadata`: turns error records back into the original elements (the `element`
//! payload, parsed as JSON), dropping `msg` and `transform`.

use arrow::array::{Array, StringArray};
use async_trait::async_trait;

use crate::pipeline::operator::{EngineError, ErrorRoute, Operator, Output};
use crate::record::{Batch, json};

pub struct StripErrorMetadata {
    pub errors: ErrorRoute,
}

#[async_trait]
impl Operator for StripErrorMetadata {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let Some(elements) = batch
            .rows
            .column_by_name("element")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        else {
            return Err(EngineError::config(
                self.errors.transform(),
                "input has no `element` column; StripErrorMetadata reads an error output",
            ));
        };
        let mut lines = Vec::with_capacity(elements.len() * 64);
        for v in elements.iter().flatten() {
            lines.extend_from_slice(v.as_bytes());
            lines.push(b'\n');
        }
        let schema = json::infer_schema(lines.split(|b| *b == b'\n'), usize::MAX)
            .map_err(|e| EngineError::internal(self.errors.transform(), e.to_string()))?;
        let mut decoder = json::JsonDecoder::new(schema)
            .map_err(|e| EngineError::internal(self.errors.transform(), e.to_string()))?;
        let (rows, bad) = decoder.decode_lines(&lines);
        if let Some(rows) = rows {
            out.main(batch.derive(rows));
        }
        let failures = bad
            .into_iter()
            .map(|b| {
                (
                    b.element(),
                    format!("element is not a JSON object: {}", b.error),
                )
            })
            .collect();
        self.errors.report_elements(out, &batch, failures);
        Ok(())
    }
}
