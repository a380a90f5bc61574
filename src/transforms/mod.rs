//! Element-wise and testing transforms, one per file.

pub mod assert_equal;
pub mod check;
pub mod create;
pub mod explode;
pub mod filter;
pub mod flatten;
pub mod log;
pub mod map_to_fields;
pub mod partition;
pub mod sql;
pub mod strip_errors;
pub mod validate_schema;
pub mod window;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::config::ExprSpec;
use crate::expr::{self, Compiled, Evaluated};
use crate::pipeline::operator::{EngineError, ErrorRoute, Output};
use crate::record::{Batch, rows};

/// Expressions compiled for the schema of the last batch seen; recompiled when it changes (a
/// source with an inferred schema may change it between files).
pub struct CompiledFor {
    specs: Vec<ExprSpec>,
    schema: Option<SchemaRef>,
    compiled: Vec<Compiled>,
}

impl CompiledFor {
    pub fn new(specs: Vec<ExprSpec>) -> Self {
        CompiledFor {
            specs,
            schema: None,
            compiled: Vec::new(),
        }
    }

    /// The compiled expressions for `schema`.
    ///
    /// # Errors
    /// The first expression that does not compile against `schema`.
    pub fn get(&mut self, schema: &SchemaRef) -> Result<&[Compiled], String> {
        let same = self
            .schema
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, schema) || s == schema);
        if !same {
            self.compiled = self
                .specs
                .iter()
                .map(|s| expr::compile(s, schema))
                .collect::<Result<_, _>>()?;
            self.schema = Some(schema.clone());
        }
        Ok(&self.compiled)
    }

    /// Compiles for `batch`'s schema and evaluates with per-row isolation; rows that fail go to
    /// `errors` with their row as JSON. What every expression-driven transform does first.
    ///
    /// # Errors
    /// An expression that does not compile against the batch's schema (a config error).
    pub fn evaluate(
        &mut self,
        batch: &Batch,
        errors: &ErrorRoute,
        out: &mut Output,
    ) -> Result<Evaluated, EngineError> {
        let exprs = self
            .get(&batch.schema())
            .map_err(|e| EngineError::config(errors.transform(), e))?;
        let evaluated = expr::evaluate_isolating(exprs, &batch.rows);
        errors.report(out, batch, row_failures(&batch.rows, &evaluated.failed));
        Ok(evaluated)
    }
}

/// `(row as JSON, message)` for failed rows of `rows`, as `ErrorRoute::report` takes them.
pub fn row_failures(
    rows: &arrow::array::RecordBatch,
    failed: &[(usize, String)],
) -> Vec<(String, String)> {
    failed
        .iter()
        .map(|(i, e)| (rows::row_json(rows, *i), e.clone()))
        .collect()
}
