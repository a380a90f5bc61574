//! The `Sql` operator.
//!
//! A query over one table that compiles to projections and filters ([`Steps`]) runs on every
//! batch as it arrives, bounded or unbounded input alike; failing rows go to the error output.
//! Any other query (GROUP BY, aggregates, joins, ORDER BY, LIMIT, window functions) needs the
//! whole input: on bounded input the batches are buffered per table and the query runs once at
//! the end over in-memory tables, its result emitted then. Such a query that fails at run time
//! (say a cast inside an aggregate) cannot be traced to input rows, so it fails the pipeline
//! with the query's error; `validate` refuses these queries on unbounded, unwindowed input.
//! On windowed input such a query runs once per pane over the window's rows
//! ([`super::windowed`]), bounded or unbounded input alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::stateless::{self, CompileError, Steps};
use super::windowed::{PerWindow, WindowedSpec};
use crate::config::InputRef;
use crate::pipeline::operator::{EngineError, ErrorRoute, EventTime, Operator, Output};
use crate::record::{Batch, rows};

/// The table each input is known by in the query: `PCOLLECTION` for unnamed inputs, else the
/// `input:` key. (Unnamed inputs listed together are all `PCOLLECTION`: their union.)
pub fn table_names(inputs: &[InputRef]) -> Vec<String> {
    inputs
        .iter()
        .map(|i| i.alias.clone().unwrap_or_else(|| "PCOLLECTION".into()))
        .collect()
}

/// Only queries: no DDL, DML or `SET` even if `validate` was bypassed.
pub(super) fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Registers `table` as `name` and, as unquoted identifiers are lowercased by the planner, as
/// its lowercase form too: `FROM PCOLLECTION` and `FROM "PCOLLECTION"` both find it.
pub(super) fn register(
    ctx: &SessionContext,
    name: &str,
    table: Arc<dyn TableProvider>,
) -> Result<(), String> {
    let lower = name.to_lowercase();
    if lower != name {
        ctx.register_table(TableReference::bare(lower), table.clone())
            .map_err(clean)?;
    }
    ctx.register_table(TableReference::bare(name), table)
        .map_err(clean)?;
    Ok(())
}

/// DataFusion's message without its category prefixes.
pub(super) fn clean(e: impl std::fmt::Display) -> String {
    let mut s = e.to_string();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Arrow error: ",
        "Execution error: ",
        "External error: ",
    ] {
        s = s.replace(prefix, "");
    }
    s
}

enum Mode {
    /// No batch seen yet: the first input schema decides whether the query is stateless.
    Undecided,
    /// Compiled steps, one per input schema seen (schemas rarely change).
    Stateless(Vec<Steps>),
    /// Batches kept per table until the input ends.
    Buffered(BTreeMap<String, Vec<Batch>>),
    /// Rows kept per window, the query run per pane.
    Windowed(Box<PerWindow>),
}

pub struct Sql {
    name: String,
    query: String,
    /// Table name of each input.
    tables: Vec<String>,
    bounded: bool,
    batch_size: usize,
    errors: ErrorRoute,
    /// Set when the input is windowed: a query that needs more than one row runs per window.
    windowed: Option<WindowedSpec>,
    mode: Mode,
}

impl Sql {
    /// `tables[i]` is input `i`'s table name; `bounded` is whether every input ends;
    /// `windowed` is set when the input is windowed (see `Windowing::is_windowed`).
    pub fn new(
        query: &str,
        tables: Vec<String>,
        bounded: bool,
        batch_size: usize,
        errors: ErrorRoute,
        windowed: Option<WindowedSpec>,
    ) -> Self {
        let mut sql = Sql {
            name: errors.transform().to_string(),
            query: query.to_string(),
            tables,
            bounded,
            batch_size,
            errors,
            windowed,
            mode: Mode::Undecided,
        };
        if sql.distinct_tables().len() > 1 {
            sql.mode = sql.stateful_mode();
        }
        sql
    }

    fn distinct_tables(&self) -> Vec<String> {
        let mut distinct = self.tables.clone();
        distinct.sort();
        distinct.dedup();
        distinct
    }

    /// How a query that needs more than one row runs: per window on windowed input, else over
    /// the whole (bounded) input.
    fn stateful_mode(&self) -> Mode {
        match &self.windowed {
            Some(spec) => Mode::Windowed(Box::new(PerWindow::new(
                spec.clone(),
                &self.query,
                self.distinct_tables(),
                self.batch_size,
                self.errors.clone(),
            ))),
            None => Mode::Buffered(BTreeMap::new()),
        }
    }

    fn config_err(&self, msg: impl std::fmt::Display) -> EngineError {
        EngineError::config(
            &self.name,
            format!("query: {}", crate::expr::clean(msg.to_string())),
        )
    }

    async fn steps_for(&mut self, schema: &SchemaRef) -> Result<Option<usize>, EngineError> {
        if let Mode::Stateless(cached) = &self.mode
            && let Some(i) = cached.iter().position(|s| s.input() == schema)
        {
            return Ok(Some(i));
        }
        let names = vec![self.tables[0].clone()];
        match Steps::compile(&self.query, &names, schema.clone()).await {
            Ok(steps) => {
                if !matches!(self.mode, Mode::Stateless(_)) {
                    self.mode = Mode::Stateless(Vec::new());
                }
                let Mode::Stateless(cached) = &mut self.mode else {
                    unreachable!("set above")
                };
                cached.push(steps);
                Ok(Some(cached.len() - 1))
            }
            Err(CompileError::NotStateless(node))
                if (self.bounded || self.windowed.is_some())
                    && matches!(self.mode, Mode::Undecided) =>
            {
                tracing::debug!(transform = %self.name, plan = %node, per_window = self.windowed.is_some(), "Query needs more than one row; buffering its input");
                self.mode = self.stateful_mode();
                Ok(None)
            }
            Err(CompileError::NotStateless(node)) => Err(self.config_err(format!(
                "`{node}` needs the whole input, but the input is unbounded; only SELECT … WHERE … runs on unbounded input"
            ))),
            Err(CompileError::Invalid(msg)) => Err(self.config_err(msg)),
        }
    }

    async fn run_buffered(
        &self,
        tables: &BTreeMap<String, Vec<Batch>>,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let config = SessionConfig::new().with_batch_size(self.batch_size);
        let ctx = crate::expr::bounded::session(config);
        let mut acks = crate::record::AckSet::new();
        let mut empty = Vec::new();
        let mut names = self.tables.clone();
        names.sort();
        names.dedup();
        for name in &names {
            let batches = tables.get(name).map(Vec::as_slice).unwrap_or(&[]);
            for b in batches {
                acks.extend_from(&b.acks);
            }
            let user: Vec<RecordBatch> = batches.iter().map(Batch::user_rows).collect();
            if user.is_empty() {
                empty.push(name.clone());
            }
            let (schema, user) = align(&user).map_err(|e| {
                self.config_err(format!(
                    "the rows of table `{name}` do not share one schema: {e}"
                ))
            })?;
            let table =
                MemTable::try_new(schema, vec![user]).map_err(|e| self.config_err(clean(e)))?;
            register(&ctx, name, Arc::new(table)).map_err(|e| self.config_err(e))?;
        }
        let frame = match ctx.sql_with_options(&self.query, sql_options()).await {
            Ok(f) => f,
            Err(e) if !empty.is_empty() => {
                // A table that received no rows has no schema, so the query cannot be planned;
                // with no input there is nothing to compute.
                tracing::warn!(transform = %self.name, tables = ?empty, error = %clean(e), "Sql inputs received no rows; the query produced no output");
                return Ok(());
            }
            Err(e) => return Err(self.config_err(clean(e))),
        };
        let results = frame.collect().await.map_err(|e| {
            self.config_err(format!(
                "{}; a failure inside a query that aggregates, joins or sorts cannot be traced to input rows, so the run stops (clean or cast the rows first, e.g. with MapToFields and error_handling)",
                clean(e)
            ))
        })?;
        for rows in results {
            out.main(Batch {
                rows,
                acks: acks.clone(),
            });
        }
        Ok(())
    }
}

/// Gives all batches one schema: the union of their fields by name (first-seen order), all
/// nullable, missing columns filled with nulls.
///
/// # Errors
/// A field that has different types in different batches.
pub(super) fn align(batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let mut fields: Vec<Field> = Vec::new();
    for b in batches {
        for f in b.schema().fields() {
            match fields.iter().find(|g| g.name() == f.name()) {
                Some(g) if g.data_type() != f.data_type() => {
                    return Err(format!(
                        "field `{}` is {} in some rows and {} in others",
                        f.name(),
                        g.data_type(),
                        f.data_type()
                    ));
                }
                Some(_) => {}
                None => fields.push(f.as_ref().clone().with_nullable(true)),
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let aligned = batches
        .iter()
        .map(|b| {
            let columns: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| {
                    b.column_by_name(f.name())
                        .cloned()
                        .unwrap_or_else(|| new_null_array(f.data_type(), b.num_rows()))
                })
                .collect();
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((schema, aligned))
}

#[async_trait]
impl Operator for Sql {
    async fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        match self.mode {
            Mode::Windowed(_) => {}
            Mode::Buffered(_) if !self.bounded => {
                return Err(self.config_err(
                    "a query over several inputs needs them all to end, but an input is unbounded",
                ));
            }
            Mode::Buffered(_) => {}
            Mode::Undecided | Mode::Stateless(_) => {
                let schema = batch.user_rows().schema();
                if let Some(i) = self.steps_for(&schema).await? {
                    let Mode::Stateless(cached) = &self.mode else {
                        unreachable!("steps_for returned an index")
                    };
                    let evaluated = stateless::evaluate_isolating(&cached[i], &batch.rows);
                    if !evaluated.failed.is_empty() {
                        let failures = evaluated
                            .failed
                            .iter()
                            .map(|(i, e)| (rows::row_json(&batch.rows, *i), e.clone()))
                            .collect();
                        self.errors.report(out, &batch, failures);
                    }
                    if let Some(rows) = evaluated.rows {
                        out.main(batch.derive(rows));
                    }
                    return Ok(());
                }
            }
        }
        let table = self.tables.get(input).cloned().unwrap_or_default();
        match &mut self.mode {
            Mode::Buffered(tables) => tables.entry(table).or_default().push(batch),
            Mode::Windowed(w) => w.process(&table, batch, out).await?,
            _ => {}
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        if let Mode::Windowed(w) = &mut self.mode {
            w.on_watermark(watermark, out).await?;
        }
        Ok(())
    }

    async fn on_end(&mut self, out: &mut Output) -> Result<(), EngineError> {
        let mode = std::mem::replace(&mut self.mode, Mode::Undecided);
        let mode = match mode {
            Mode::Buffered(tables) => {
                self.run_buffered(&tables, out).await?;
                Mode::Buffered(tables)
            }
            Mode::Windowed(mut w) => {
                w.on_end(out).await?;
                Mode::Windowed(w)
            }
            // No rows at all: an aggregate still answers (`COUNT(*)` is 0). Per window, no
            // rows means no window and no pane.
            Mode::Undecided if self.bounded && self.windowed.is_none() => {
                self.run_buffered(&BTreeMap::new(), out).await?;
                Mode::Undecided
            }
            other => other,
        };
        self.mode = mode;
        Ok(())
    }

    async fn on_drain_keep(&mut self, out: &mut Output) -> Result<(), EngineError> {
        match &mut self.mode {
            Mode::Windowed(w) => {
                w.drain_keep();
                Ok(())
            }
            _ => self.on_end(out).await,
        }
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        self.windowed.as_ref().and_then(|w| w.windowing.early_every)
    }

    async fn on_timer(
        &mut self,
        _now: tokio::time::Instant,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        if let Mode::Windowed(w) = &mut self.mode {
            w.on_timer(out).await?;
        }
        Ok(())
    }
}
