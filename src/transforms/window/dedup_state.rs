//! Durable keys of a `Deduplicate` (`options.state` with a persistent backend): a key is
//! checkpointed once the row kept for it was written by every sink (a hold on the output batch
//! reports that), and deleted when the watermark evicts it. After a restart the keys are
//! restored, so a message delivered again, or the same event published again, is still dropped.
//! A key whose row was not yet written when the worker died is not in the store: its row is
//! kept again and rewritten under the same row id (sinks write it idempotently).
//!
//! Keys live in the namespace `{pipeline}/{transform}` as `k/{hex of the key}` with the kept
//! row's event time (8 bytes, little endian).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::pipeline::operator::{EngineError, EventTime};
use crate::record::{Ack, AckStatus, AckToken, Hold, Releaser};
use crate::transforms::window::combine::durable::{DurableConfig, retry};

/// Keys (arrow-row bytes) with the event time of their kept row.
type Keys = Vec<(Vec<u8>, EventTime)>;

pub struct DedupState {
    cfg: DurableConfig,
    namespace: String,
    restored: bool,
    /// Keys whose rows were written, not yet checkpointed.
    written: Arc<Mutex<Keys>>,
    /// Keys evicted since the last checkpoint.
    evicted: Vec<Vec<u8>>,
    next: Option<tokio::time::Instant>,
}

impl DedupState {
    pub fn new(cfg: DurableConfig, pipeline: &str, transform: &str) -> Self {
        DedupState {
            cfg,
            namespace: format!("{pipeline}/{transform}"),
            restored: false,
            written: Arc::default(),
            evicted: Vec::new(),
            next: None,
        }
    }

    pub fn interval(&self) -> std::time::Duration {
        self.cfg.checkpoint_interval
    }

    /// The checkpointed keys, once (empty after the first call).
    ///
    /// # Errors
    /// The store failed after retries.
    pub async fn restore(
        &mut self,
        transform: &str,
    ) -> Result<HashMap<Vec<u8>, EventTime>, EngineError> {
        if self.restored {
            return Ok(HashMap::new());
        }
        let store = self.cfg.store.clone();
        let ns = self.namespace.clone();
        let entries = retry(transform, &store, || {
            let (store, ns) = (store.clone(), ns.clone());
            async move { store.load(&ns).await }
        })
        .await?;
        self.restored = true;
        Ok(entries
            .into_iter()
            .filter_map(|(k, v)| {
                let key = hex::decode(k.strip_prefix("k/")?).ok()?;
                let t = i64::from_le_bytes(v.get(..8)?.try_into().ok()?);
                Some((key, t))
            })
            .collect())
    }

    /// A hold for an output batch keeping `keys`: released as delivered (written), they are
    /// checkpointed.
    pub fn kept(&self, keys: Keys) -> AckToken {
        Ack::new(
            KeysWritten {
                keys,
                to: self.written.clone(),
            },
            &Releaser::inline(self.cfg.failed.clone()),
        )
    }

    pub fn evict(&mut self, key: Vec<u8>) {
        self.evicted.push(key);
    }

    /// Commits the written and evicted keys when a checkpoint is due at `now`.
    ///
    /// # Errors
    /// The store failed after retries.
    pub async fn checkpoint(
        &mut self,
        transform: &str,
        now: Option<tokio::time::Instant>,
        live: &HashMap<Vec<u8>, EventTime>,
    ) -> Result<(), EngineError> {
        if let Some(now) = now {
            if self.next.is_some_and(|t| now < t) {
                return Ok(());
            }
            self.next = Some(now + self.cfg.checkpoint_interval);
        }
        if self.cfg.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let written = std::mem::take(&mut *self.written.lock().unwrap_or_else(|p| p.into_inner()));
        let puts: Vec<(String, Vec<u8>)> = written
            .into_iter()
            .filter(|(k, _)| live.contains_key(k))
            .map(|(k, t)| (format!("k/{}", hex::encode(k)), t.to_le_bytes().to_vec()))
            .collect();
        let deletes: Vec<String> = self
            .evicted
            .drain(..)
            .map(|k| format!("k/{}", hex::encode(k)))
            .collect();
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let store = self.cfg.store.clone();
        let ns = self.namespace.clone();
        retry(transform, &store, || {
            let (store, ns, p, d) = (store.clone(), ns.clone(), puts.clone(), deletes.clone());
            async move { store.commit(&ns, p, d).await }
        })
        .await
    }
}

/// Reports the keys of one output batch as written when it is released as delivered (not if
/// the run failed or the batch was given up). In-memory only: the next checkpoint commits them.
struct KeysWritten {
    keys: Keys,
    to: Arc<Mutex<Keys>>,
}

impl Hold for KeysWritten {
    fn release(self: Box<Self>, status: AckStatus) {
        if status == AckStatus::Delivered {
            self.to
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(self.keys);
        }
    }
}
