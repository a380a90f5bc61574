//! One active replica per pipeline (docs/scaling.md). Replicas that share a Redis or Postgres
//! state store (a Deployment an HPA scaled, a rollout's surge pod) would split one
//! subscription's messages between them and count each window twice, half in each. So a
//! replica runs only while it holds the pipeline's lease in the store; the others stand by,
//! say so in `/readyz` and the logs, and take over when the lease lapses (the holder died) or
//! is released (the holder exited).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::StateStore;

/// How long a lease lasts without renewal: a dead holder's replacement waits at most this long.
/// Renewed every third of it, so two lost renewals in a row (a Redis failover, a long GC pause
/// of the server) do not yet lose it.
pub const TTL: Duration = Duration::from_secs(15);

/// The lease of one pipeline in one store.
pub struct Lease {
    store: Arc<dyn StateStore>,
    name: String,
    holder: String,
    ttl: Duration,
}

/// What a replica is doing about the lease, for `/readyz`.
pub type Standby = Arc<std::sync::Mutex<Option<String>>>;

impl Lease {
    /// The lease of `pipeline`, for this replica: `SLUICE_REPLICA_ID`, else the host name (a
    /// pod's name on GKE). A restarted container of the same pod is the same replica and takes
    /// its lease back at once; another pod waits until it lapses.
    pub fn new(store: Arc<dyn StateStore>, pipeline: &str) -> Self {
        let holder = std::env::var("SLUICE_REPLICA_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "sluice".into());
        Lease::with(store, pipeline, holder, TTL)
    }

    pub fn with(store: Arc<dyn StateStore>, pipeline: &str, holder: String, ttl: Duration) -> Self {
        Lease {
            store,
            name: pipeline.to_string(),
            holder,
            ttl,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Waits until this process holds the lease, standing by meanwhile (the reason in
    /// `standby`). Returns false when a stop was requested first.
    pub async fn acquire(&self, standby: &Standby, stop: &mut watch::Receiver<bool>) -> bool {
        let mut said: Option<String> = None;
        loop {
            if *stop.borrow() {
                return false;
            }
            let why = match self.store.lease(&self.name, &self.holder, self.ttl).await {
                Ok(None) => {
                    set(standby, None);
                    if said.is_some() {
                        tracing::info!(pipeline = %self.name, holder = %self.holder, "Took over the pipeline's lease: active");
                    } else {
                        tracing::info!(pipeline = %self.name, holder = %self.holder, store = %self.store.describe(), "Holding the pipeline's lease: active");
                    }
                    return true;
                }
                Ok(Some(other)) => format!(
                    "standing by: pipeline `{}` is active in another replica ({other}); taking over when its lease lapses",
                    self.name
                ),
                Err(e) => format!("standing by: cannot take the lease of `{}`: {e}", self.name),
            };
            if said.as_deref() != Some(why.as_str()) {
                tracing::warn!(pipeline = %self.name, reason = %why, "Standing by");
                said = Some(why.clone());
            }
            set(standby, Some(why));
            tokio::select! {
                () = tokio::time::sleep(self.ttl / 3) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews the lease every third of its TTL; completes, with the reason, when it was lost
    /// (another replica took it, or the store could not be reached for a whole TTL).
    pub async fn keep(&self) -> String {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.store.lease(&self.name, &self.holder, self.ttl).await {
                Ok(None) => last_ok = tokio::time::Instant::now(),
                Ok(Some(other)) => return format!("replica {other} took the lease"),
                Err(e) => {
                    if last_ok.elapsed() >= self.ttl {
                        return format!("the lease could not be renewed for {:?}: {e}", self.ttl);
                    }
                    tracing::warn!(pipeline = %self.name, error = %e, "Cannot renew the pipeline's lease; retrying");
                }
            }
        }
    }

    /// Gives the lease up (a clean exit): a standby takes over at its next try.
    pub async fn release(&self) {
        if let Err(e) = self.store.release_lease(&self.name, &self.holder).await {
            tracing::warn!(pipeline = %self.name, error = %e, "Cannot release the pipeline's lease; it lapses by itself");
        }
    }
}

fn set(standby: &Standby, why: Option<String>) {
    *standby.lock().unwrap_or_else(|p| p.into_inner()) = why;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_no_one_shares_grants_the_lease_at_once() {
        let store: Arc<dyn StateStore> = Arc::new(crate::state::memory::MemoryStore::default());
        let lease = Lease::with(store, "p", "me".into(), Duration::from_secs(3));
        let standby = Standby::default();
        let (_tx, mut stop) = watch::channel(false);
        assert!(lease.acquire(&standby, &mut stop).await);
        assert_eq!(*standby.lock().unwrap(), None);
    }
}
