//! The `memory` state backend: namespaces of sorted maps behind one mutex, in the process.
//!
//! Durability: none. A commit is atomic for concurrent readers (it is applied under the lock),
//! and everything is lost when the process exits. For tests and bounded runs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::store::{StateError, StateStore};

#[derive(Debug, Default)]
pub struct MemoryStore {
    namespaces: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let namespaces = self
            .namespaces
            .lock()
            .expect("no panic while the lock is held");
        Ok(namespaces
            .get(namespace)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    async fn apply(
        &self,
        namespace: &str,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<(), StateError> {
        let mut namespaces = self
            .namespaces
            .lock()
            .expect("no panic while the lock is held");
        let map = namespaces.entry(namespace.to_string()).or_default();
        map.extend(puts);
        for k in &deletes {
            map.remove(k);
        }
        if map.is_empty() {
            namespaces.remove(namespace);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_contract() {
        let store = MemoryStore::default();
        super::super::contract::check(&store, "mem/").await;
    }

    #[tokio::test]
    async fn empty_namespaces_are_dropped() {
        let store = MemoryStore::default();
        store
            .commit("n", vec![("k".into(), b"v".to_vec())], vec![])
            .await
            .unwrap();
        store.commit("n", vec![], vec!["k".into()]).await.unwrap();
        assert!(store.namespaces.lock().unwrap().is_empty());
    }
}
