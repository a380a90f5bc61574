//! `WindowInto`: sets the windowing of its output (the graph records it per node); rows pass
//! through. Window bounds left by an upstream aggregation are dropped, so that later
//! `ExtractWindowingInfo` and `Combine` use the new windowing.

use async_trait::async_trait;

use crate::pipeline::operator::{EngineError, Operator, Output};
use crate::record::{Batch, meta};

pub struct WindowInto;

/// Hidden columns that describe a previous windowing.
const STALE: &[&str] = &[
    meta::WINDOW_START,
    meta::WINDOW_END,
    meta::PANE_INDEX,
    meta::PANE_TIMING,
];

#[async_trait]
impl Operator for WindowInto {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let schema = batch.schema();
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| !STALE.contains(&schema.field(i).name().as_str()))
            .collect();
        if keep.len() == schema.fields().len() {
            out.main(batch);
        } else {
            let rows = batch
                .rows
                .project(&keep)
                .map_err(|e| EngineError::internal("WindowInto", e.to_string()))?;
            out.main(batch.derive(rows));
        }
        Ok(())
    }
}
