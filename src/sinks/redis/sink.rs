//! The `WriteToRedis` sink: renders each batch into commands, sends them as pipelines over
//! a `ConnectionManager` (which reconnects after a dropped connection), retries the whole
//! pipeline on connection failures (every command is idempotent, so a partly applied pipeline
//! is safe to resend), and routes rows that Redis refuses or that cannot be rendered to the
//! error output. `write` returns [`Written::Now`] after Redis confirmed every command of the
//! batch.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, RetryMethod, Value};

use super::commands::{Compiled, RowWrite};
use super::config::RedisConfig;
use crate::pipeline::operator::{
    EngineError, ErrorRoute, Output, Receipts, Sink, StageStats, Written,
};
use crate::record::{Batch, rows};
use crate::sinks::retry::Backoff;

/// Rows per pipeline: bounds the request buffer (a few MB for typical rows) while amortising
/// round trips; above ~1,000 commands per pipeline the gain is under 5% on loopback.
const ROWS_PER_PIPELINE: usize = 1000;
/// How long one pipeline may wait for its replies before it counts as a lost connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WriteToRedis {
    name: String,
    cfg: RedisConfig,
    errors: ErrorRoute,
    stats: Arc<StageStats>,
    conn: Option<ConnectionManager>,
    compiled: Option<(SchemaRef, Compiled)>,
    backoff: Backoff,
}

/// Whether a failed request may succeed when sent again (by type, never by message).
pub(crate) fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        )
}

impl WriteToRedis {
    pub fn new(name: &str, cfg: RedisConfig, errors: ErrorRoute, stats: Arc<StageStats>) -> Self {
        WriteToRedis {
            name: name.to_string(),
            cfg,
            errors,
            backoff: Backoff::default().counting(stats.sink().clone()),
            stats,
            conn: None,
            compiled: None,
        }
    }

    /// The CLIENT SETNAME of this sink's connections (visible in `CLIENT LIST`).
    pub fn client_name(transform: &str) -> String {
        let safe: String = transform
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        format!("sluice/{safe}")
    }

    async fn connection(&mut self) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let client = redis::Client::open(self.cfg.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        self.stats
            .outputs
            .lock()
            .expect("not poisoned")
            .push(format!("redis {}", redact(&self.cfg.url)));
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    fn compiled(&mut self, schema: &SchemaRef) -> Result<Compiled, EngineError> {
        if let Some((s, c)) = &self.compiled
            && s == schema
        {
            return Ok(c.clone());
        }
        let c = Compiled::new(&self.cfg, schema).map_err(|e| EngineError::config(&self.name, e))?;
        self.compiled = Some((schema.clone(), c.clone()));
        Ok(c)
    }

    /// Sends one pipeline of rows; the per-command outcome of each row on success.
    async fn send(&mut self, writes: &[RowWrite]) -> RedisResult<Vec<Option<RedisError>>> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // The name goes first on every pipeline so it survives the manager's reconnects.
        pipe.cmd("CLIENT")
            .arg("SETNAME")
            .arg(Self::client_name(&self.name));
        for w in writes {
            for c in &w.cmds {
                pipe.add_command(c.clone());
            }
        }
        let replies: Vec<RedisResult<Value>> = pipe.query_async(&mut conn).await?;
        let mut per_row: Vec<Option<RedisError>> = (0..writes.len()).map(|_| None).collect();
        let mut reply = replies.into_iter().skip(1);
        for (i, w) in writes.iter().enumerate() {
            for _ in &w.cmds {
                if let Some(Err(e)) = reply.next() {
                    if transient(&e) {
                        return Err(e);
                    }
                    per_row[i].get_or_insert(e);
                }
            }
        }
        Ok(per_row)
    }
}

/// The URL without its password, for logs and the run summary.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[async_trait]
impl Sink for WriteToRedis {
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
        let compiled = self.compiled(&user.schema())?;
        let (writes, mut rejected) = compiled
            .render(&user)
            .map_err(|e| EngineError::config(&self.name, e))?;
        for chunk in writes.chunks(ROWS_PER_PIPELINE) {
            loop {
                let started = std::time::Instant::now();
                let res = self.send(chunk).await;
                self.stats.sink().observe_write(started);
                match res {
                    Ok(outcome) => {
                        self.backoff.reset();
                        for (w, e) in chunk.iter().zip(outcome) {
                            if let Some(e) = e {
                                rejected.push((rows::row_json(&user, w.row), e.to_string()));
                            }
                        }
                        break;
                    }
                    Err(e) if transient(&e) => match self.backoff.next_delay() {
                        Some(d) => {
                            tracing::warn!(
                                transform = %self.name,
                                error = %e,
                                retry_in_ms = d.as_millis() as u64,
                                "Redis write failed; retrying"
                            );
                            tokio::time::sleep(d).await;
                        }
                        None => {
                            return Err(EngineError::external(
                                &self.name,
                                format!(
                                    "cannot write to Redis (gave up after {} attempts)",
                                    self.backoff.attempts()
                                ),
                                e,
                            ));
                        }
                    },
                    Err(e) => {
                        self.backoff.fail_permanently();
                        return Err(EngineError::external(
                            &self.name,
                            "cannot write to Redis",
                            e,
                        ));
                    }
                }
            }
        }
        self.errors.report(out, &batch, rejected);
        // Redis confirmed: the runner releases the batch's holds.
        Ok(Written::Now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://u:secret@host:6379/0"),
            "redis://…@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            WriteToRedis::client_name("Top Recipes"),
            "sluice/Top_Recipes"
        );
    }
}
