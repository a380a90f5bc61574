//! `Filter`: keeps the rows for which `keep` is true (null counts as false).

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use async_trait::async_trait;

use super::CompiledFor;
use crate::config::ExprSpec;
use crate::pipeline::operator::{EngineError, ErrorRoute, Operator, Output};
use crate::record::Batch;

pub struct Filter {
    keep: CompiledFor,
    errors: ErrorRoute,
}

impl Filter {
    pub fn new(keep: ExprSpec, errors: ErrorRoute) -> Self {
        Filter {
            keep: CompiledFor::new(vec![keep]),
            errors,
        }
    }
}

#[async_trait]
impl Operator for Filter {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let name = self.errors.transform().to_string();
        let evaluated = self.keep.evaluate(&batch, &self.errors, out)?;
        let Some(mask) = evaluated.values[0].as_any().downcast_ref::<BooleanArray>() else {
            if evaluated.rows.num_rows() == 0 {
                return Ok(());
            }
            return Err(EngineError::config_at(
                &name,
                self.keep.pos(0).unwrap_or_default(),
                format!(
                    "`keep` must be a boolean expression, found {}",
                    evaluated.values[0].data_type()
                ),
            ));
        };
        let kept = filter_record_batch(&evaluated.rows, mask)
            .map_err(|e| EngineError::internal(&name, e.to_string()))?;
        out.main(batch.derive(kept));
        Ok(())
    }
}
