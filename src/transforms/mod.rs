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

use crate::config::{ExprSpec, Pos};
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
    /// The first expression that does not compile against `schema`, with its position.
    pub fn get(&mut self, schema: &SchemaRef) -> Result<&[Compiled], String> {
        self.get_at(schema).map_err(|(pos, e)| {
            format!("{e} (expression at line {}, column {})", pos.line, pos.col)
        })
    }

    /// Like [`CompiledFor::get`], with the failing expression's position apart.
    ///
    /// # Errors
    /// The position and message of the first expression that does not compile.
    pub fn get_at(&mut self, schema: &SchemaRef) -> Result<&[Compiled], (Pos, String)> {
        let same = self
            .schema
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, schema) || s == schema);
        if !same {
            self.compiled = self
                .specs
                .iter()
                .map(|s| expr::compile(s, schema).map_err(|e| (s.pos, e)))
                .collect::<Result<_, _>>()?;
            self.schema = Some(schema.clone());
        }
        Ok(&self.compiled)
    }

    /// The position of the `i`th expression in the pipeline file.
    pub fn pos(&self, i: usize) -> Option<Pos> {
        self.specs.get(i).map(|s| s.pos)
    }

    /// Compiles for `batch`'s schema and evaluates with per-row isolation; rows that fail go to
    /// `errors` with their row as JSON. What every expression-driven transform does first.
    ///
    /// # Errors
    /// An expression that does not compile against the batch's schema (a config error, with
    /// the expression's position).
    pub fn evaluate(
        &mut self,
        batch: &Batch,
        errors: &ErrorRoute,
        out: &mut Output,
    ) -> Result<Evaluated, EngineError> {
        let exprs = self
            .get_at(&batch.schema())
            .map_err(|(pos, e)| EngineError::config_at(errors.transform(), pos, e))?;
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
