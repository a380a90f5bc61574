//! The `WriteToPostgres` sink: resolves the target table for each input schema (creating
//! it when asked), writes each batch as UNNEST-ed `text[]` statements of `batch_size` rows,
//! retries transient failures with backoff, and isolates rows the database refuses by halving
//! the failed statement until the offending row stands alone; that row goes to the error output
//! with the database's message while the others are written.
//!
//! `write` returns [`Written::Now`] only once every row of the batch is written or routed to the
//! error output; the runner then releases the batch's acknowledgement holds.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use deadpool_postgres::{Pool, PoolError};
use tokio_postgres::types::ToSql;

use super::config::PostgresConfig;
use super::sql::{self, Failure};
use crate::pipeline::operator::{
    EngineError, ErrorRoute, Output, Receipts, Sink, StageStats, Written,
};
use crate::record::{Batch, rows};
use crate::sinks::retry::Backoff;
use crate::sinks::values::column_text;

/// Connections per sink. `process` writes one statement at a time, so one connection is busy;
/// the second is ready when the first was killed and is being replaced.
const POOL_SIZE: usize = 2;

/// How rows reach the table.
#[derive(Debug, Clone)]
enum Plan {
    /// UNNEST insert/upsert: `columns` are input column indices in statement order, `key` the
    /// input indices of the upsert key.
    Table {
        sql: String,
        columns: Vec<usize>,
        key: Vec<usize>,
    },
    /// Beam's `write_statement`, bound with literals, one statement per row.
    Statement { template: String },
}

/// A failed database call, classified.
struct DbFailure {
    kind: Failure,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        let (kind, message) = match e.as_db_error() {
            Some(db) => {
                let mut m = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(d) = db.detail() {
                    m.push_str(&format!(": {d}"));
                }
                (sql::classify(Some(db.code().code())), m)
            }
            None => {
                let io = std::error::Error::source(&e)
                    .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
                let kind = if e.is_closed() || io {
                    Failure::Transient
                } else {
                    Failure::Fatal
                };
                (kind, e.to_string())
            }
        };
        DbFailure {
            kind,
            message,
            source: Some(Box::new(e)),
        }
    }
}

impl From<PoolError> for DbFailure {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) => DbFailure {
                kind: Failure::Transient,
                message: "timed out waiting for a connection".into(),
                source: None,
            },
            other => DbFailure {
                kind: Failure::Fatal,
                message: other.to_string(),
                source: None,
            },
        }
    }
}

pub struct WriteToPostgres {
    name: String,
    cfg: PostgresConfig,
    errors: ErrorRoute,
    stats: Arc<StageStats>,
    pool: Option<Pool>,
    plan: Option<(SchemaRef, Plan)>,
    backoff: Backoff,
}

impl WriteToPostgres {
    pub fn new(
        name: &str,
        cfg: PostgresConfig,
        errors: ErrorRoute,
        stats: Arc<StageStats>,
    ) -> Self {
        WriteToPostgres {
            name: name.to_string(),
            cfg,
            errors,
            backoff: Backoff::default().counting(stats.sink().clone()),
            stats,
            pool: None,
            plan: None,
        }
    }

    /// The application_name of this sink's sessions (visible in `pg_stat_activity`).
    pub fn application_name(transform: &str) -> String {
        format!("sluice/{transform}")
    }

    fn pool(&mut self) -> Result<Pool, EngineError> {
        if let Some(p) = &self.pool {
            return Ok(p.clone());
        }
        let pg = self
            .cfg
            .connection(&Self::application_name(&self.name))
            .map_err(|e| EngineError::config(&self.name, e))?;
        let pool = super::tls::pool(pg, POOL_SIZE).map_err(|e| {
            EngineError::external(&self.name, "cannot set up the connection pool", e)
        })?;
        self.pool = Some(pool.clone());
        Ok(pool)
    }

    fn fail(&self, f: DbFailure, what: &str) -> EngineError {
        let message = format!("{what}: {}", f.message);
        match f.kind {
            Failure::Transient => EngineError::External {
                transform: self.name.clone(),
                message: format!(
                    "{message} (gave up after {} attempts)",
                    self.backoff.attempts()
                ),
                source: f.source,
            },
            _ => EngineError::config(&self.name, message),
        }
    }

    /// Waits before retrying a transient failure; the error when the budget is spent.
    async fn back_off(&mut self, f: DbFailure, what: &str) -> Result<(), EngineError> {
        match self.backoff.next_delay() {
            Some(d) => {
                tracing::warn!(
                    transform = %self.name,
                    error = %f.message,
                    retry_in_ms = d.as_millis() as u64,
                    "Postgres write failed; retrying"
                );
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Err(self.fail(f, what)),
        }
    }

    /// The plan for `schema`, resolved (with retries) when the schema changes.
    async fn plan_for(&mut self, schema: &SchemaRef) -> Result<Plan, EngineError> {
        if let Some((s, p)) = &self.plan
            && s == schema
        {
            return Ok(p.clone());
        }
        let plan = loop {
            match self.resolve(schema).await {
                Ok(p) => break p,
                Err(Ok(f)) if f.kind != Failure::Fatal => {
                    self.back_off(f, "cannot prepare the table").await?
                }
                Err(Ok(f)) => {
                    self.backoff.fail_permanently();
                    return Err(self.fail(f, "cannot prepare the table"));
                }
                Err(Err(e)) => return Err(e),
            }
        };
        self.backoff.reset();
        self.plan = Some((schema.clone(), plan.clone()));
        Ok(plan)
    }

    /// Reads the table's columns (creating the table first when missing and allowed).
    async fn resolve(
        &mut self,
        schema: &SchemaRef,
    ) -> Result<Plan, Result<DbFailure, EngineError>> {
        let name = self.name.clone();
        let config = |m: String| Err(EngineError::config(&name, m));
        if let Some(w) = &self.cfg.write_statement {
            let n = sql::count_placeholders(w);
            if n != schema.fields().len() {
                return Err(config(format!(
                    "`write_statement` has {n} `?` placeholders but the input has {} fields ({})",
                    schema.fields().len(),
                    field_names(schema)
                )));
            }
            return Ok(Plan::Statement {
                template: w.clone(),
            });
        }
        let table = self.cfg.table.clone().unwrap_or_default();
        let parts = sql::qualified_name(&table).map_err(&config)?;
        let quoted = sql::quoted_table(&parts);
        let mut key = Vec::new();
        for k in &self.cfg.upsert_key {
            match schema.index_of(k) {
                Ok(i) => key.push(i),
                Err(_) => {
                    return Err(config(format!(
                        "`upsert_key` field `{k}` is not in the input (fields: {})",
                        field_names(schema)
                    )));
                }
            }
        }
        let pool = self.pool().map_err(Err)?;
        let client = pool.get().await.map_err(|e| Ok(e.into()))?;
        let columns_sql = "SELECT a.attname::text, format_type(a.atttypid, NULL) \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
        let mut cols = client
            .query(columns_sql, &[&quoted])
            .await
            .map_err(|e| Ok(e.into()))?;
        if cols.is_empty() {
            if !self.cfg.create_table {
                return Err(config(format!(
                    "table {table} does not exist (set `create_table: true` to create it from the input schema)"
                )));
            }
            // Replicas (shard owners) may start together: concurrent CREATE TABLE IF NOT EXISTS
            // can fail on Postgres' catalog (a unique violation in pg_type), so creators take
            // a transaction-scoped advisory lock on the table's name first.
            let ddl = format!(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext('sluice create table ' || '{}')); {}; COMMIT;",
                quoted.replace('\'', "''"),
                sql::create_table(&quoted, schema, &self.cfg.upsert_key)
            );
            tracing::info!(transform = %self.name, table = %table, "Creating table");
            if let Err(e) = client.batch_execute(&ddl).await {
                // Leave no aborted transaction on the pooled connection.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(Ok(e.into()));
            }
            cols = client
                .query(columns_sql, &[&quoted])
                .await
                .map_err(|e| Ok(e.into()))?;
        }
        let types: HashMap<String, String> = cols
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let missing: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|n| !types.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(config(format!(
                "table {table} has no column for input field(s) {}",
                missing.join(", ")
            )));
        }
        let columns: Vec<(String, String)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), types[f.name()].clone()))
            .collect();
        self.stats
            .outputs
            .lock()
            .expect("not poisoned")
            .push(format!("postgres table {table}"));
        Ok(Plan::Table {
            sql: sql::unnest_insert(&quoted, &columns, &self.cfg.upsert_key),
            columns: (0..columns.len()).collect(),
            key,
        })
    }

    /// One attempt at writing `rows` (indices into `texts`' rows).
    async fn exec(
        &mut self,
        plan: &Plan,
        texts: &[Vec<Option<String>>],
        rows: &[usize],
    ) -> Result<(), DbFailure> {
        let pool = self.pool().map_err(|e| DbFailure {
            kind: Failure::Fatal,
            message: e.to_string(),
            source: None,
        })?;
        let client = pool.get().await?;
        match plan {
            Plan::Table { sql, columns, .. } => {
                let arrays: Vec<Vec<Option<&str>>> = columns
                    .iter()
                    .map(|&c| rows.iter().map(|&r| texts[c][r].as_deref()).collect())
                    .collect();
                let params: Vec<&(dyn ToSql + Sync)> =
                    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                let stmt = client.prepare_cached(sql).await?;
                client.execute(&stmt, &params).await?;
            }
            Plan::Statement { template } => {
                let mut script = String::new();
                for &r in rows {
                    let values: Vec<Option<&str>> = texts.iter().map(|c| c[r].as_deref()).collect();
                    let stmt =
                        sql::bind_placeholders(template, &values).map_err(|m| DbFailure {
                            kind: Failure::Fatal,
                            message: m,
                            source: None,
                        })?;
                    script.push_str(&stmt);
                    script.push_str(";\n");
                }
                // A multi-statement simple query runs as one implicit transaction.
                client.batch_execute(&script).await?;
            }
        }
        Ok(())
    }

    /// Writes every row of `rows`, returning the (row JSON, reason) of rows refused.
    async fn write_rows(
        &mut self,
        user: &RecordBatch,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let plan = self.plan_for(&user.schema()).await?;
        let mut texts = Vec::with_capacity(user.num_columns());
        for (f, c) in user.schema().fields().iter().zip(user.columns()) {
            texts.push(column_text(c).map_err(|e| {
                EngineError::config(&self.name, format!("field `{}`: {e}", f.name()))
            })?);
        }
        let mut rejected = Vec::new();
        let mut todo: Vec<usize> = (0..user.num_rows()).collect();
        if let Plan::Table { key, .. } = &plan
            && !key.is_empty()
        {
            let (keep, bad) = latest_per_key(&texts, key, user.num_rows());
            for (r, field) in bad {
                rejected.push((
                    rows::row_json(user, r),
                    format!(
                        "upsert key field `{}` is null",
                        user.schema().field(field).name()
                    ),
                ));
            }
            todo = keep;
        }
        let mut pending: Vec<Vec<usize>> = todo
            .chunks(self.cfg.batch_size)
            .rev()
            .map(<[usize]>::to_vec)
            .collect();
        while let Some(chunk) = pending.pop() {
            let started = std::time::Instant::now();
            let res = self.exec(&plan, &texts, &chunk).await;
            self.stats.sink().observe_write(started);
            match res {
                Ok(()) => self.backoff.reset(),
                Err(f) => match f.kind {
                    Failure::Transient => {
                        self.back_off(f, "cannot write").await?;
                        pending.push(chunk);
                    }
                    Failure::Rejected if chunk.len() == 1 => {
                        rejected.push((rows::row_json(user, chunk[0]), f.message));
                    }
                    Failure::Rejected => {
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        pending.push(b.to_vec());
                        pending.push(a.to_vec());
                    }
                    Failure::Fatal => {
                        self.backoff.fail_permanently();
                        return Err(self.fail(f, "cannot write"));
                    }
                },
            }
        }
        Ok(rejected)
    }
}

/// Rows to write when upserting: the last row of each key (a later pane of the same window and
/// key replaces the earlier one, and one statement may not update a row twice), in input order;
/// and rows whose key has a null field (row, field index).
fn latest_per_key(
    texts: &[Vec<Option<String>>],
    key: &[usize],
    n: usize,
) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut last: HashMap<Vec<&str>, usize> = HashMap::with_capacity(n);
    let mut bad = Vec::new();
    // Rows index every key column at once, so a range loop is the clear form here.
    #[allow(clippy::needless_range_loop)]
    'rows: for r in 0..n {
        let mut k = Vec::with_capacity(key.len());
        for &c in key {
            match texts[c][r].as_deref() {
                Some(v) => k.push(v),
                None => {
                    bad.push((r, c));
                    continue 'rows;
                }
            }
        }
        last.insert(k, r);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    (keep, bad)
}

fn field_names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Sink for WriteToPostgres {
    async fn write(
        &mut self,
        batch: Batch,
        _receipts: &mut Receipts,
        out: &mut Output,
    ) -> Result<Written, EngineError> {
        let user = batch.user_rows();
        if user.num_rows() == 0 {
            return Ok(Written::Now);
        }
        let rejected = self.write_rows(&user).await?;
        self.errors.report(out, &batch, rejected);
        // Committed: the runner releases the batch's holds.
        Ok(Written::Now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_row_per_key_and_rejects_null_keys() {
        let s = |v: &str| Some(v.to_string());
        let texts = vec![
            vec![s("a"), s("b"), s("a"), None],
            vec![s("1"), s("2"), s("3"), s("4")],
        ];
        let (keep, bad) = latest_per_key(&texts, &[0], 4);
        assert_eq!(keep, vec![1, 2]);
        assert_eq!(bad, vec![(3, 0)]);
    }
}
