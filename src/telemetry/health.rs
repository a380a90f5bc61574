//! Reachability of the external services a run talks to (Pub/Sub, BigQuery): connectors report
//! each endpoint's failures and recoveries here, and `/readyz` answers 503 while any endpoint is
//! unreachable. The transition to unreachable is logged at ERROR once; recovery at INFO.
//!
//! The registry is per process ([`endpoints`]): a `sluice` process runs one pipeline, and the
//! connectors that report here (Pub/Sub source, BigQuery calls) need no handle threaded
//! through the builder.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The process's registry.
pub fn endpoints() -> &'static Endpoints {
    static ENDPOINTS: std::sync::OnceLock<Endpoints> = std::sync::OnceLock::new();
    ENDPOINTS.get_or_init(Endpoints::default)
}

/// Endpoints currently failing, with the last error.
#[derive(Debug, Default)]
pub struct Endpoints {
    failing: Mutex<BTreeMap<String, String>>,
}

impl Endpoints {
    /// Records that `endpoint` (e.g. `http://127.0.0.1:8085`) could not be reached.
    pub fn failing(&self, service: &str, endpoint: &str, error: &str) {
        let mut f = self.failing.lock().expect("not poisoned");
        if f.insert(endpoint.to_string(), error.to_string()).is_none() {
            tracing::error!(
                service,
                endpoint,
                error,
                "Cannot reach {service} at {endpoint}"
            );
        }
    }

    /// Records that `endpoint` answered.
    pub fn reachable(&self, service: &str, endpoint: &str) {
        let mut f = self.failing.lock().expect("not poisoned");
        if f.remove(endpoint).is_some() {
            tracing::info!(
                service,
                endpoint,
                "{service} at {endpoint} is reachable again"
            );
        }
    }

    /// `endpoint: error` of every failing endpoint (empty when all are reachable).
    pub fn unreachable(&self) -> Vec<String> {
        let f = self.failing.lock().expect("not poisoned");
        f.iter().map(|(e, err)| format!("{e}: {err}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_endpoints_are_listed_until_they_answer() {
        let e = Endpoints::default();
        assert!(e.unreachable().is_empty());
        e.failing("Pub/Sub", "http://127.0.0.1:1", "connection refused");
        e.failing("Pub/Sub", "http://127.0.0.1:1", "connection refused again");
        assert_eq!(
            e.unreachable(),
            vec!["http://127.0.0.1:1: connection refused again".to_string()]
        );
        e.reachable("Pub/Sub", "http://127.0.0.1:1");
        assert!(e.unreachable().is_empty());
    }
}
