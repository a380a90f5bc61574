//! `Flatten`: the union of its inputs, passed through unchanged.

use async_trait::async_trait;

use crate::pipeline::operator::{EngineError, Operator, Output};
use crate::record::Batch;

pub struct Flatten;

#[async_trait]
impl Operator for Flatten {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        out.main(batch);
        Ok(())
    }
}
