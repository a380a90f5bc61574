//! The `embedded` state backend: one redb file, `state.redb` in the configured directory, with
//! one table whose keys are `namespace\0key`.
//!
//! Durability: a commit is one redb write transaction with redb's default `Durability::
//! Immediate`, so it is on disk (fsync) when `commit` returns, and after a crash either the whole
//! transaction or none of it is visible. The file is locked by the process that has it open:
//! one replica per persistent volume. redb is synchronous; every call runs on
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::store::{StateError, StateStore};

/// The file inside the configured directory.
pub const FILE_NAME: &str = "state.redb";
/// The one table: `namespace\0key` → value.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("sluice_state");

pub struct EmbeddedStore {
    db: Arc<Database>,
    dir: PathBuf,
}

fn failed(message: &str, e: impl Into<redb::Error>) -> StateError {
    let e: redb::Error = e.into();
    // A second process (a replica starting before the old one has exited) holds the file's
    // lock; it is released when that process exits. Every other redb error leaves the database
    // unusable until it is reopened.
    let retryable = matches!(e, redb::Error::DatabaseAlreadyOpen);
    let message = if retryable {
        format!(
            "{message}: another process has the file open (embedded state is for one replica per volume)"
        )
    } else {
        format!("{message}: {e}")
    };
    StateError::backend("embedded", message, retryable, e)
}

/// Runs redb's blocking I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StateError::backend("embedded", "the state task panicked", false, e))?
}

/// Keys of `namespace` are `namespace\0key`, so they sort by key and lie in
/// `namespace\0 .. namespace\x01`.
fn prefix(namespace: &str) -> Result<String, StateError> {
    if namespace.contains('\0') {
        return Err(StateError::Config(format!(
            "state namespace {namespace:?} contains NUL"
        )));
    }
    Ok(format!("{namespace}\0"))
}

impl EmbeddedStore {
    /// Creates `dir` and `dir/state.redb` if missing, and opens it.
    ///
    /// # Errors
    /// `Config` when the directory cannot be created; `Backend` when the file cannot be opened
    /// (retryable when another process has it open).
    pub async fn open(dir: &str) -> Result<EmbeddedStore, StateError> {
        let dir = PathBuf::from(dir);
        let path = dir.join(FILE_NAME);
        let db = blocking({
            let dir = dir.clone();
            move || {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StateError::Config(format!("cannot create {}: {e}", dir.display()))
                })?;
                let db = Database::create(&path)
                    .map_err(|e| failed(&format!("cannot open {}", path.display()), e))?;
                // Create the table once, so reads never meet a missing table.
                let tx = db.begin_write().map_err(|e| failed("cannot write", e))?;
                tx.open_table(TABLE)
                    .map_err(|e| failed("cannot create the table", e))?;
                tx.commit().map_err(|e| failed("cannot commit", e))?;
                Ok(db)
            }
        })
        .await?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn load(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let start = prefix(namespace)?;
        let end = format!("{namespace}\u{1}");
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_read().map_err(|e| failed("cannot read", e))?;
            let table = tx.open_table(TABLE).map_err(|e| failed("cannot read", e))?;
            let range = table
                .range(start.as_str()..end.as_str())
                .map_err(|e| failed("cannot read", e))?;
            let mut out = Vec::new();
            for entry in range {
                let (k, v) = entry.map_err(|e| failed("cannot read", e))?;
                out.push((k.value()[start.len()..].to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn apply(
        &self,
        namespace: &str,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), StateError> {
        let prefix = prefix(namespace)?;
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write().map_err(|e| failed("cannot write", e))?;
            {
                let mut table = tx
                    .open_table(TABLE)
                    .map_err(|e| failed("cannot write", e))?;
                let mut key = prefix.clone();
                for (k, v) in &puts {
                    key.truncate(prefix.len());
                    key.push_str(k);
                    table
                        .insert(key.as_str(), v.as_slice())
                        .map_err(|e| failed("cannot write", e))?;
                }
                for k in &deletes {
                    key.truncate(prefix.len());
                    key.push_str(k);
                    table
                        .remove(key.as_str())
                        .map_err(|e| failed("cannot write", e))?;
                }
            }
            // Dropping `tx` on an error above aborts the transaction: nothing is applied.
            tx.commit().map_err(|e| failed("cannot commit", e))
        })
        .await
    }

    fn describe(&self) -> String {
        format!("embedded {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Backend, StateConfig};

    #[tokio::test]
    async fn keeps_the_contract_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let config = StateConfig {
            backend: Backend::Embedded,
            path: Some(dir.path().join("nested/state").display().to_string()),
            ..StateConfig::default()
        };
        super::super::contract::check_durable(&config, "t/").await;
        assert!(dir.path().join("nested/state").join(FILE_NAME).is_file());
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        let first = EmbeddedStore::open(&path).await.unwrap();
        let err = EmbeddedStore::open(&path).await.err().expect("locked");
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .contains("another process has the file open"),
            "{err}"
        );
        drop(first);
        EmbeddedStore::open(&path).await.unwrap();
    }

    #[tokio::test]
    async fn namespaces_with_nul_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().display().to_string())
            .await
            .unwrap();
        let err = store.load("a\0b").await.unwrap_err();
        assert!(matches!(err, StateError::Config(_)), "{err}");
        assert_eq!(
            store.describe(),
            format!("embedded {}", dir.path().display())
        );
    }
}
