//! The [`StateStore`] contract every backend implements, its error type, and [`open`], the one
//! place a backend is chosen from a [`StateConfig`].

use std::sync::Arc;

use async_trait::async_trait;

use super::config::{Backend, StateConfig};

/// A state operation that failed, classified by whose fault it is and whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The configuration is wrong (a bad path or URL, a namespace the backend cannot hold): the
    /// user's fault; retrying does not help.
    #[error("state config: {0}")]
    Config(String),
    /// The backend refused or failed the operation. `retryable` says whether the same call may
    /// succeed later (a dropped connection, a locked file, a serialization failure).
    #[error("{backend} state: {message}")]
    Backend {
        backend: &'static str,
        message: String,
        retryable: bool,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StateError {
    /// Whether the same call may succeed when made again. A commit that failed retryably may
    /// or may not have been applied; every commit is idempotent, so sending it again is safe.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StateError::Backend {
                retryable: true,
                ..
            }
        )
    }

    pub(crate) fn backend(
        backend: &'static str,
        message: impl Into<String>,
        retryable: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StateError::Backend {
            backend,
            message: message.into(),
            retryable,
            source: Some(Box::new(source)),
        }
    }
}

/// A namespaced key-value store with atomic commits.
///
/// Keys are UTF-8 strings compared by bytes; values are opaque bytes. Namespaces keep
/// transforms (and pipelines sharing one Redis or Postgres) apart. Neither namespaces nor keys
/// may contain NUL: the embedded backend uses it as the separator and Postgres `text` refuses it.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every (key, value) in `namespace`, sorted by key (byte order). An unknown namespace is
    /// empty.
    ///
    /// # Errors
    /// The backend could not be read.
    async fn load(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;

    /// Applies `puts` then `deletes` to `namespace` atomically: after a crash either all of them
    /// or none are visible. A key put twice keeps its last value; a key both put and deleted is
    /// gone. Empty `puts` and `deletes` return at once without touching the backend.
    ///
    /// # Errors
    /// Nothing was applied, or (when [`StateError::is_retryable`]) it is unknown whether the
    /// commit was applied; committing the same batch again is safe.
    async fn commit(
        &self,
        namespace: &str,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), StateError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        self.apply(namespace, puts, deletes).await
    }

    /// The backend's part of [`StateStore::commit`], which calls it only with something to
    /// apply.
    ///
    /// # Errors
    /// As [`StateStore::commit`].
    async fn apply(
        &self,
        namespace: &str,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), StateError>;

    /// Takes or renews the lease `name` for `holder` for `ttl` (docs/scaling.md: one active
    /// replica per pipeline). `Ok(None)`: `holder` holds it now; `Ok(Some(other))`: another
    /// holder's lease is still running. Backends no other process shares (memory; embedded,
    /// whose file is locked by the process that opened it) always grant it.
    ///
    /// # Errors
    /// The backend could not be asked.
    async fn lease(
        &self,
        _name: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<String>, StateError> {
        Ok(None)
    }

    /// Gives up the lease `name` if `holder` holds it (a clean exit), so a standby takes over
    /// at once instead of after the lease ran out.
    ///
    /// # Errors
    /// The backend could not be asked.
    async fn release_lease(&self, _name: &str, _holder: &str) -> Result<(), StateError> {
        Ok(())
    }

    /// For logs and errors, e.g. `embedded /data/state` or `redis redis://…@host:6379/0`:
    /// passwords are never shown.
    fn describe(&self) -> String;
}

/// Opens the configured backend: for `embedded`, creates the directory and its `state.redb`;
/// for `postgres`, creates the table `sluice_state` if missing; for `redis`, connects.
///
/// # Errors
/// [`StateError::Config`] for a missing or malformed path or URL; a retryable
/// [`StateError::Backend`] when the server cannot be reached (yet) or the embedded file is
/// held by another process.
pub async fn open(config: &StateConfig) -> Result<Arc<dyn StateStore>, StateError> {
    let path = || {
        config.path.as_deref().ok_or_else(|| {
            StateError::Config(format!(
                "the {} state backend needs `path`",
                config.backend.name()
            ))
        })
    };
    Ok(match config.backend {
        Backend::Memory => Arc::new(super::memory::MemoryStore::default()),
        Backend::Embedded => Arc::new(super::embedded::EmbeddedStore::open(path()?).await?),
        Backend::Redis => Arc::new(super::redis::RedisStore::open(path()?).await?),
        Backend::Postgres => Arc::new(super::postgres::PostgresStore::open(path()?).await?),
    })
}

/// The URL without its password (and user), for [`StateStore::describe`].
pub(crate) fn redact(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_and_query() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/app?password=x"),
            "postgres://…@db:5432/app"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn only_backend_failures_can_be_retryable() {
        let io = std::io::Error::other("reset");
        assert!(StateError::backend("redis", "down", true, io).is_retryable());
        assert!(!StateError::Config("bad".into()).is_retryable());
    }
}
