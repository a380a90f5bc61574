//! Stateless queries (`SELECT … FROM t WHERE …`) compiled once per input schema into a list of
//! filter and projection steps of DataFusion physical expressions, then evaluated vectorised on
//! each batch, with no DataFusion execution plan per batch.
//!
//! Hidden `__sluice_*` columns are not visible to the query, but they stay aligned with the rows
//! a filter keeps and are appended to the output, so event time and windows survive the query.
//! A batch whose evaluation fails is evaluated row by row to route exactly the failing rows to
//! the error output (as `MapToFields` does).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use super::{clean, sql_options};
use crate::record::meta;

/// Why a query could not be compiled into steps.
#[derive(Debug)]
pub enum CompileError {
    /// The query needs more than one row at a time; names the plan node.
    NotStateless(String),
    /// The query is wrong for this schema (unknown column, type error).
    Invalid(String),
}

enum Step {
    Filter(Arc<dyn PhysicalExpr>),
    Project(Vec<(String, Arc<dyn PhysicalExpr>)>),
}

/// A stateless query compiled for one input schema (user columns only).
pub struct Steps {
    input: SchemaRef,
    steps: Vec<Step>,
}

impl Steps {
    /// Compiles `query`, whose tables (`names`) all denote one input of schema `input`.
    ///
    /// # Errors
    /// See [`CompileError`].
    pub async fn compile(
        query: &str,
        names: &[String],
        input: SchemaRef,
    ) -> Result<Steps, CompileError> {
        let ctx = crate::expr::bounded::session(datafusion::prelude::SessionConfig::new());
        for name in names {
            let table = MemTable::try_new(input.clone(), vec![Vec::new()])
                .map_err(|e| CompileError::Invalid(clean(e)))?;
            super::register(&ctx, name, Arc::new(table)).map_err(CompileError::Invalid)?;
        }
        let plan = ctx
            .state()
            .create_logical_plan(query)
            .await
            .map_err(|e| CompileError::Invalid(clean(e)))?;
        sql_options()
            .verify_plan(&plan)
            .map_err(|e| CompileError::Invalid(clean(e)))?;
        let mut steps = Vec::new();
        collect(&ctx, &plan, &mut steps)?;
        Ok(Steps { input, steps })
    }

    /// The user columns `query` outputs over one input of schema `input`, when DataFusion can
    /// plan it (for `validate`'s type checks; the plan needs no data and does no I/O).
    pub fn output_schema(query: &str, names: &[String], input: SchemaRef) -> Option<SchemaRef> {
        let ctx = crate::expr::bounded::session(datafusion::prelude::SessionConfig::new());
        for name in names {
            let table = MemTable::try_new(input.clone(), vec![Vec::new()]).ok()?;
            super::register(&ctx, name, Arc::new(table)).ok()?;
        }
        let plan = futures::executor::block_on(ctx.state().create_logical_plan(query)).ok()?;
        sql_options().verify_plan(&plan).ok()?;
        Some(Arc::new(plan.schema().as_arrow().clone()))
    }

    /// The user schema this was compiled for.
    pub fn input(&self) -> &SchemaRef {
        &self.input
    }

    /// Runs the steps on `user` (the user columns of a batch) keeping `hidden` (its hidden
    /// columns) aligned; returns the output rows with the hidden columns appended.
    ///
    /// # Errors
    /// The first evaluation error (e.g. a failed cast).
    pub fn apply(&self, user: &RecordBatch, hidden: &RecordBatch) -> Result<RecordBatch, String> {
        let mut rows = user.clone();
        let mut hidden = hidden.clone();
        for step in &self.steps {
            match step {
                Step::Filter(pred) => {
                    let mask = eval(pred, &rows)?;
                    let mask = mask
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| {
                            format!("WHERE must be a boolean, not {}", mask.data_type())
                        })?;
                    let mask = if mask.null_count() > 0 {
                        prep_null_mask_filter(mask)
                    } else {
                        mask.clone()
                    };
                    rows = filter_record_batch(&rows, &mask).map_err(|e| e.to_string())?;
                    hidden = filter_record_batch(&hidden, &mask).map_err(|e| e.to_string())?;
                }
                Step::Project(exprs) => {
                    let mut fields = Vec::with_capacity(exprs.len());
                    let mut columns = Vec::with_capacity(exprs.len());
                    for (name, e) in exprs {
                        let values = eval(e, &rows)?;
                        fields.push(Field::new(name, values.data_type().clone(), true));
                        columns.push(values);
                    }
                    rows = batch(fields, columns, rows.num_rows())?;
                }
            }
        }
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (f, c) in rows
            .schema()
            .fields()
            .iter()
            .zip(rows.columns())
            .chain(hidden.schema().fields().iter().zip(hidden.columns()))
        {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
        batch(fields, columns, rows.num_rows())
    }
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch, String> {
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| e.to_string())
}

fn eval(e: &Arc<dyn PhysicalExpr>, rows: &RecordBatch) -> Result<ArrayRef, String> {
    e.evaluate(rows)
        .and_then(|v| v.into_array(rows.num_rows()))
        .map_err(clean)
}

/// Walks the unoptimised logical plan: only projections, filters, aliases and the scan of the
/// one input may appear.
fn collect(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    steps: &mut Vec<Step>,
) -> Result<(), CompileError> {
    let physical = |e: &datafusion::logical_expr::Expr, input: &LogicalPlan| {
        ctx.create_physical_expr(e.clone(), input.schema())
            .map_err(|e| CompileError::Invalid(clean(e)))
    };
    match plan {
        LogicalPlan::TableScan(scan)
            if scan.projection.is_none() && scan.filters.is_empty() && scan.fetch.is_none() =>
        {
            Ok(())
        }
        LogicalPlan::SubqueryAlias(a) => collect(ctx, &a.input, steps),
        LogicalPlan::Filter(f) => {
            collect(ctx, &f.input, steps)?;
            steps.push(Step::Filter(physical(&f.predicate, &f.input)?));
            Ok(())
        }
        LogicalPlan::Projection(p) => {
            collect(ctx, &p.input, steps)?;
            let exprs = p
                .expr
                .iter()
                .zip(p.schema.fields())
                .map(|(e, f)| Ok((f.name().clone(), physical(e, &p.input)?)))
                .collect::<Result<Vec<_>, CompileError>>()?;
            steps.push(Step::Project(exprs));
            Ok(())
        }
        other => Err(CompileError::NotStateless(
            other
                .display()
                .to_string()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string(),
        )),
    }
}

/// The output of a batch evaluated with row isolation.
pub struct Evaluated {
    pub rows: Option<RecordBatch>,
    /// Rows of the input that failed, with the error.
    pub failed: Vec<(usize, String)>,
}

/// Evaluates `steps` on `rows` (a whole batch, hidden columns included); when that fails, row by
/// row to find the failing rows, then the others together.
pub fn evaluate_isolating(steps: &Steps, rows: &RecordBatch) -> Evaluated {
    let (user, hidden) = split(rows);
    if let Ok(out) = steps.apply(&user, &hidden) {
        return Evaluated {
            rows: Some(out),
            failed: Vec::new(),
        };
    }
    let mut keep = Vec::with_capacity(rows.num_rows());
    let mut failed = Vec::new();
    for i in 0..rows.num_rows() {
        match steps.apply(&user.slice(i, 1), &hidden.slice(i, 1)) {
            Ok(_) => keep.push(true),
            Err(e) => {
                keep.push(false);
                failed.push((i, e));
            }
        }
    }
    let mask = BooleanArray::from(keep);
    let good = (
        filter_record_batch(&user, &mask),
        filter_record_batch(&hidden, &mask),
    );
    match good {
        (Ok(u), Ok(h)) => match steps.apply(&u, &h) {
            Ok(out) => Evaluated {
                rows: Some(out),
                failed,
            },
            Err(e) => Evaluated {
                rows: None,
                failed: (0..rows.num_rows()).map(|i| (i, e.clone())).collect(),
            },
        },
        (Err(e), _) | (_, Err(e)) => Evaluated {
            rows: None,
            failed: (0..rows.num_rows()).map(|i| (i, e.to_string())).collect(),
        },
    }
}

/// Splits a batch into its user columns and its hidden columns.
pub fn split(rows: &RecordBatch) -> (RecordBatch, RecordBatch) {
    let schema = rows.schema();
    let (hidden, user): (Vec<usize>, Vec<usize>) =
        (0..schema.fields().len()).partition(|&i| meta::is_hidden(schema.field(i).name()));
    let project = |idx: &[usize]| {
        rows.project(idx)
            .expect("indices come from the batch's own schema")
    };
    (project(&user), project(&hidden))
}
