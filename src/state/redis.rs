//! The `redis` state backend: one hash per namespace, `sluice:state:{namespace}`, field = key.
//!
//! Durability: a commit is one `MULTI`/`EXEC` of `HSET` and `HDEL`, so no client ever sees half
//! of it and, with the AOF on, a restarted server replays all of it or none (a torn transaction
//! at the end of the AOF is dropped). How much survives a server crash is the server's
//! `appendonly`/`appendfsync` setting (docs/state.md); with persistence off, nothing does.
//! Shared by every replica that uses the same server.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::store::{StateError, StateStore, redact};
use crate::sinks::redis::sink::transient;

/// The prefix of every hash this backend writes.
pub const KEY_PREFIX: &str = "sluice:state:";
/// How long one request may wait for its reply before it counts as a lost connection; a 5 MB
/// value takes about 10 ms on loopback.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisStore {
    conn: ConnectionManager,
    url: String,
}

fn failed(message: &str, e: RedisError) -> StateError {
    let retryable = transient(&e);
    StateError::backend("redis", format!("{message}: {e}"), retryable, e)
}

/// The hash holding `namespace`.
pub fn hash_key(namespace: &str) -> String {
    format!("{KEY_PREFIX}{namespace}")
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`).
    ///
    /// # Errors
    /// `Config` for a malformed URL; a retryable `Backend` error when the server cannot be
    /// reached.
    pub async fn open(url: &str) -> Result<RedisStore, StateError> {
        let client = redis::Client::open(url)
            .map_err(|e| StateError::Config(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| failed(&format!("cannot connect to {}", redact(url)), e))?;
        Ok(RedisStore {
            conn,
            url: url.to_string(),
        })
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn load(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut conn = self.conn.clone();
        // A BTreeMap of bytes is sorted in the contract's order (byte order of the UTF-8 keys).
        let fields: BTreeMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
            .arg(hash_key(namespace))
            .query_async(&mut conn)
            .await
            .map_err(|e| failed("cannot read", e))?;
        let mut out = Vec::with_capacity(fields.len());
        for (k, v) in fields {
            let k = String::from_utf8(k).map_err(|e| {
                StateError::backend(
                    "redis",
                    format!("{} has a field that is not UTF-8", hash_key(namespace)),
                    false,
                    e,
                )
            })?;
            out.push((k, v));
        }
        Ok(out)
    }

    async fn apply(
        &self,
        namespace: &str,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), StateError> {
        let key = hash_key(namespace);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !puts.is_empty() {
            // HSET with repeated fields keeps the last value, as the contract wants.
            let hset = pipe.cmd("HSET").arg(&key);
            for (k, v) in &puts {
                hset.arg(k).arg(v);
            }
            hset.ignore();
        }
        if !deletes.is_empty() {
            pipe.cmd("HDEL").arg(&key).arg(&deletes).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| failed("cannot commit", e))
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StateError> {
        let mut conn = self.conn.clone();
        redis::cmd("EVAL")
            .arg(TAKE_LEASE)
            .arg(1)
            .arg(lease_key(name))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| failed("cannot take the lease", e))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        redis::cmd("EVAL")
            .arg(RELEASE_LEASE)
            .arg(1)
            .arg(lease_key(name))
            .arg(holder)
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| failed("cannot release the lease", e))
    }

    fn describe(&self) -> String {
        format!("redis {}", redact(&self.url))
    }
}

/// Takes the lease KEYS[1] for ARGV[1] for ARGV[2] ms when it is free or already ARGV[1]'s
/// (nil); otherwise returns its holder. One script, so no other client runs in between.
const TAKE_LEASE: &str = "local cur = redis.call('GET', KEYS[1]) \
    if (not cur) or cur == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
    return false end return cur";
/// Deletes the lease KEYS[1] if ARGV[1] holds it.
const RELEASE_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    redis.call('DEL', KEYS[1]) end return 0";

/// The key of lease `name`: its value is the holder, its TTL the lease's.
pub fn lease_key(name: &str) -> String {
    format!("sluice:lease:{name}")
}
