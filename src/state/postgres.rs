//! The `postgres` state backend: the table `sluice_state(namespace, key, value)`, created when
//! missing, one row per key.
//!
//! Durability: a commit is one transaction (an upsert of the puts, then a delete of the
//! deletes), durable when `COMMIT` returns under the server's default `synchronous_commit`;
//! after a crash all of it or none is visible. Shared by every replica that uses the same
//! database.

use std::collections::HashSet;
use std::str::FromStr;

use async_trait::async_trait;
use deadpool_postgres::{Pool, PoolError};

use super::store::{StateError, StateStore, redact};
use crate::sinks::postgres::config::normalize_url;
use crate::sinks::postgres::sql::{Failure, classify};

pub const TABLE: &str = "sluice_state";
const CREATE: &str = "CREATE TABLE IF NOT EXISTS sluice_state (namespace text NOT NULL, \
     key text NOT NULL, value bytea NOT NULL, PRIMARY KEY (namespace, key))";
/// Serialises `CREATE TABLE IF NOT EXISTS` between replicas starting together: run
/// concurrently, two of them can both decide to create and one fails on `pg_type`'s unique
/// index. The number is arbitrary ("sluice" in ASCII), shared by every Sluice process.
const CREATE_LOCK: i64 = 0x736c_7569_6365;
/// `COLLATE "C"`: byte order, whatever the database's collation.
const LOAD: &str =
    "SELECT key, value FROM sluice_state WHERE namespace = $1 ORDER BY key COLLATE \"C\"";
const UPSERT: &str = "INSERT INTO sluice_state (namespace, key, value) \
     SELECT $1, k, v FROM unnest($2::text[], $3::bytea[]) AS t(k, v) \
     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value";
const DELETE: &str = "DELETE FROM sluice_state WHERE namespace = $1 AND key = ANY($2)";
const CREATE_LEASES: &str = "CREATE TABLE IF NOT EXISTS sluice_lease (name text PRIMARY KEY, \
     holder text NOT NULL, expires_at timestamptz NOT NULL)";
/// Takes lease $1 for holder $2 for $3 seconds when it is free, expired or already $2's; a row
/// comes back only then.
const TAKE_LEASE: &str = "INSERT INTO sluice_lease (name, holder, expires_at) \
     VALUES ($1, $2, now() + make_interval(secs => $3)) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE sluice_lease.holder = excluded.holder OR sluice_lease.expires_at < now() \
     RETURNING holder";
const LEASE_HOLDER: &str = "SELECT holder FROM sluice_lease WHERE name = $1";
const RELEASE_LEASE: &str = "DELETE FROM sluice_lease WHERE name = $1 AND holder = $2";
/// Connections: one per transform checkpointing at the same moment, up to this many (not
/// measured; commits are a few statements each, so more would mostly queue on the WAL flush).
const POOL_SIZE: usize = 4;

pub struct PostgresStore {
    pool: Pool,
    url: String,
}

fn failed(message: &str, e: tokio_postgres::Error) -> StateError {
    let (retryable, detail) = match e.as_db_error() {
        Some(db) => (
            classify(Some(db.code().code())) == Failure::Transient,
            format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        ),
        None => {
            let io = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
            (e.is_closed() || io, e.to_string())
        }
    };
    StateError::backend("postgres", format!("{message}: {detail}"), retryable, e)
}

fn pool_failed(message: &str, e: PoolError) -> StateError {
    match e {
        PoolError::Backend(e) => failed(message, e),
        other => {
            let retryable = matches!(other, PoolError::Timeout(_));
            StateError::backend("postgres", format!("{message}: {other}"), retryable, other)
        }
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://`, `postgresql://` or `jdbc:postgresql://`; the user
    /// defaults to `postgres`) and creates the table if missing.
    ///
    /// # Errors
    /// `Config` for a malformed URL; `Backend` (retryable when the server cannot be reached)
    /// when the table cannot be created.
    pub async fn open(url: &str) -> Result<PostgresStore, StateError> {
        let url = normalize_url(url).map_err(|(message, _)| StateError::Config(message))?;
        let mut pg = tokio_postgres::Config::from_str(&url)
            .map_err(|e| StateError::Config(format!("invalid Postgres URL: {e}")))?;
        if pg.get_user().is_none() {
            pg.user("postgres");
        }
        if pg.get_application_name().is_none() {
            pg.application_name("sluice/state");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(std::time::Duration::from_secs(10));
        }
        let pool = crate::sinks::postgres::tls::pool(pg, POOL_SIZE)
            .map_err(|e| StateError::backend("postgres", e.to_string(), false, e))?;
        let store = PostgresStore { pool, url };
        store.create_table().await?;
        Ok(store)
    }

    async fn create_table(&self) -> Result<(), StateError> {
        let what = format!("cannot create {TABLE} in {}", redact(&self.url));
        let mut client = self.pool.get().await.map_err(|e| pool_failed(&what, e))?;
        let tx = client.transaction().await.map_err(|e| failed(&what, e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
            .await
            .map_err(|e| failed(&what, e))?;
        tx.batch_execute(CREATE)
            .await
            .map_err(|e| failed(&what, e))?;
        tx.batch_execute(CREATE_LEASES)
            .await
            .map_err(|e| failed(&what, e))?;
        tx.commit().await.map_err(|e| failed(&what, e))
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn load(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| pool_failed("cannot read", e))?;
        let stmt = client
            .prepare_cached(LOAD)
            .await
            .map_err(|e| failed("cannot read", e))?;
        let rows = client
            .query(&stmt, &[&namespace])
            .await
            .map_err(|e| failed("cannot read", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn apply(
        &self,
        namespace: &str,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), StateError> {
        // One upsert may not touch a row twice: keep each key's last value.
        let mut seen = HashSet::with_capacity(puts.len());
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (k, v) in puts.into_iter().rev() {
            if seen.insert(k.clone()) {
                keys.push(k);
                values.push(v);
            }
        }
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| pool_failed("cannot commit", e))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed("cannot commit", e))?;
        if !keys.is_empty() {
            let stmt = tx
                .prepare_cached(UPSERT)
                .await
                .map_err(|e| failed("cannot commit", e))?;
            tx.execute(&stmt, &[&namespace, &keys, &values])
                .await
                .map_err(|e| failed("cannot commit", e))?;
        }
        if !deletes.is_empty() {
            let stmt = tx
                .prepare_cached(DELETE)
                .await
                .map_err(|e| failed("cannot commit", e))?;
            tx.execute(&stmt, &[&namespace, &deletes])
                .await
                .map_err(|e| failed("cannot commit", e))?;
        }
        // An error above drops `tx`, which rolls back: nothing is applied.
        tx.commit().await.map_err(|e| failed("cannot commit", e))
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, StateError> {
        let what = "cannot take the lease";
        let client = self.pool.get().await.map_err(|e| pool_failed(what, e))?;
        let taken = client
            .query_opt(TAKE_LEASE, &[&name, &holder, &ttl.as_secs_f64()])
            .await
            .map_err(|e| failed(what, e))?;
        if taken.is_some() {
            return Ok(None);
        }
        let row = client
            .query_opt(LEASE_HOLDER, &[&name])
            .await
            .map_err(|e| failed(what, e))?;
        // Gone between the two statements (released): the next call takes it.
        Ok(Some(row.map_or_else(|| "nobody".to_string(), |r| r.get(0))))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StateError> {
        let what = "cannot release the lease";
        let client = self.pool.get().await.map_err(|e| pool_failed(what, e))?;
        client
            .execute(RELEASE_LEASE, &[&name, &holder])
            .await
            .map(|_| ())
            .map_err(|e| failed(what, e))
    }

    fn describe(&self) -> String {
        format!("postgres {}", redact(&self.url))
    }
}
