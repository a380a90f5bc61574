//! `Partition`: routes each row to the output named by `by`; unmatched rows go to
//! `unknown_output`, or to the error output when there is none.

use arrow::array::{Array, BooleanArray, StringArray};
use arrow::compute::kernels::boolean::{and_not, or};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use async_trait::async_trait;

use super::CompiledFor;
use crate::config::ExprSpec;
use crate::pipeline::operator::{EngineError, ErrorRoute, Operator, Output};
use crate::record::{Batch, rows};

pub struct Partition {
    by: CompiledFor,
    /// (output name, port)
    outputs: Vec<(String, usize)>,
    unknown_port: Option<usize>,
    errors: ErrorRoute,
}

impl Partition {
    pub fn new(
        by: ExprSpec,
        outputs: Vec<(String, usize)>,
        unknown_port: Option<usize>,
        errors: ErrorRoute,
    ) -> Self {
        Partition {
            by: CompiledFor::new(vec![by]),
            outputs,
            unknown_port,
            errors,
        }
    }
}

#[async_trait]
impl Operator for Partition {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let name = self.errors.transform().to_string();
        let internal = |e: arrow::error::ArrowError| EngineError::internal(&name, e.to_string());
        let evaluated = self.by.evaluate(&batch, &self.errors, out)?;
        let input = &evaluated.rows;
        let keys = cast(&evaluated.values[0], &DataType::Utf8).map_err(internal)?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let mut matched = BooleanArray::from(vec![false; input.num_rows()]);
        for (output, port) in &self.outputs {
            let mask = eq(keys, &StringArray::new_scalar(output.as_str())).map_err(internal)?;
            // null keys compare as null: treat them as unmatched
            let mask = if mask.null_count() > 0 {
                arrow::compute::prep_null_mask_filter(&mask)
            } else {
                mask
            };
            matched = or(&matched, &mask).map_err(internal)?;
            out.emit(
                *port,
                batch.derive(filter_record_batch(input, &mask).map_err(internal)?),
            );
        }
        let unmatched = and_not(&BooleanArray::from(vec![true; input.num_rows()]), &matched)
            .map_err(internal)?;
        if unmatched.true_count() == 0 {
            return Ok(());
        }
        let rest = filter_record_batch(input, &unmatched).map_err(internal)?;
        match self.unknown_port {
            Some(port) => out.emit(port, batch.derive(rest)),
            None => {
                let rest_keys = arrow::compute::filter(keys, &unmatched).map_err(internal)?;
                let rest_keys = rest_keys
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("filtered Utf8");
                let names: Vec<&str> = self.outputs.iter().map(|(o, _)| o.as_str()).collect();
                let failures = (0..rest.num_rows())
                    .map(|i| {
                        let key = if rest_keys.is_null(i) { "null".to_string() } else { format!("`{}`", rest_keys.value(i)) };
                        (rows::row_json(&rest, i), format!("partition key {key} is not one of the outputs [{}] and no `unknown_output` is declared", names.join(", ")))
                    })
                    .collect();
                self.errors.report(out, &batch, failures);
            }
        }
        Ok(())
    }
}
