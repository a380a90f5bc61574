//! Can this run reach Pub/Sub? The client's streaming pull retries connection errors silently
//! and forever, so a subscriber pointed at a closed port would look like an idle stream. The
//! source therefore asks for its subscription (`GetSubscription`) before pulling, and again
//! every [`PROBE_INTERVAL`] while it runs, with a bounded budget: unreachable past the budget
//! fails the run (exit 1, messages nacked). While it fails, the endpoint is listed in the run's
//! [`Endpoints`], so `/readyz` answers 503, and the first failure is logged at ERROR.
//!
//! Any answer from the service counts as reachable: PERMISSION_DENIED (a worker with only
//! `roles/pubsub.subscriber` may not read subscription metadata) lets the pull go on; NOT_FOUND
//! fails at once (the pull would fail the same way).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::options::RequestOptionsBuilder as _;

use super::client::{Connection, PubSubError};
use crate::pipeline::operator::EngineError;
use crate::sinks::retry::Backoff;
use crate::telemetry::health;

/// How long one `GetSubscription` may take before it counts as failed (an answering service
/// replies in milliseconds; a black-holed address would otherwise hang for minutes).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before giving up: waits of 200 ms doubling to 5 s, 8 attempts, about 17 s of
/// retrying plus the attempts themselves; long enough for an emulator or a network blip to
/// come back, short enough that a wrong endpoint fails the run within half a minute.
const ATTEMPTS: u32 = 8;
const FIRST_WAIT: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(5);
/// How often a running source re-checks reachability (one cheap RPC).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// What one check found.
enum Probe {
    Reachable,
    /// The service answered that the subscription does not exist.
    Missing(PubSubError),
    Unreachable(String),
}

/// The endpoint clients use: the emulator's, or Google's.
pub fn endpoint(conn: &Connection) -> String {
    conn.emulator
        .clone()
        .unwrap_or_else(|| "https://pubsub.googleapis.com".to_string())
}

async fn probe(conn: &Connection, subscription: &str) -> Probe {
    let admin = match conn.subscription_admin().await {
        Ok(a) => a,
        Err(e) => return Probe::Unreachable(e.to_string()),
    };
    let call = admin
        .get_subscription()
        .set_subscription(subscription.to_string())
        .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
        .with_attempt_timeout(ATTEMPT_TIMEOUT)
        .send();
    match tokio::time::timeout(ATTEMPT_TIMEOUT + Duration::from_secs(1), call).await {
        Err(_) => Probe::Unreachable(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        Ok(Ok(_)) => Probe::Reachable,
        Ok(Err(e)) => {
            let e = PubSubError::from(e);
            match e.code() {
                Some(Code::NotFound) => Probe::Missing(e),
                _ if e.is_retryable() => Probe::Unreachable(e.to_string()),
                // The service answered (PERMISSION_DENIED and the like): it is reachable.
                _ => Probe::Reachable,
            }
        }
    }
}

/// Checks, with bounded retries, that Pub/Sub answers for `subscription`.
///
/// # Errors
/// The subscription does not exist, or the endpoint did not answer within the budget; the
/// message names the endpoint.
pub async fn check(conn: &Connection, subscription: &str, transform: &str) -> Result<(), String> {
    let endpoints = health::endpoints();
    let at = endpoint(conn);
    let mut backoff = Backoff::with_schedule(FIRST_WAIT, MAX_WAIT, ATTEMPTS);
    loop {
        match probe(conn, subscription).await {
            Probe::Reachable => {
                endpoints.reachable("Pub/Sub", &at);
                return Ok(());
            }
            Probe::Missing(e) => {
                endpoints.reachable("Pub/Sub", &at);
                return Err(format!("subscription {subscription} at {at}: {e}"));
            }
            Probe::Unreachable(e) => {
                endpoints.failing("Pub/Sub", &at, &e);
                let Some(wait) = backoff.next_delay() else {
                    return Err(format!(
                        "Pub/Sub at {at} unreachable after {ATTEMPTS} attempts: {e}"
                    ));
                };
                tracing::warn!(transform, endpoint = %at, attempt = backoff.attempts(), error = %e, "Pub/Sub unreachable; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Checks, with bounded retries, that Pub/Sub answers for `subscription`, then keeps checking
/// every [`PROBE_INTERVAL`] in the background until the returned [`Watch`] is dropped.
///
/// # Errors
/// As [`check`], as an external error of `transform`.
pub async fn start(
    conn: &Connection,
    subscription: &str,
    transform: &str,
) -> Result<Watch, EngineError> {
    check(conn, subscription, transform)
        .await
        .map_err(|message| external(transform, message))?;
    let gave_up: Arc<Mutex<Option<String>>> = Arc::default();
    let (conn, subscription, name, flag) = (
        conn.clone(),
        subscription.to_string(),
        transform.to_string(),
        gave_up.clone(),
    );
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if let Err(e) = check(&conn, &subscription, &name).await {
                if let Ok(mut g) = flag.lock() {
                    *g = Some(e);
                }
                return;
            }
        }
    });
    Ok(Watch {
        transform: transform.to_string(),
        gave_up,
        task,
    })
}

fn external(transform: &str, message: String) -> EngineError {
    EngineError::External {
        transform: transform.to_string(),
        message,
        source: None,
    }
}

/// The background check of a running source; stops when dropped.
pub struct Watch {
    transform: String,
    gave_up: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// The error to end the run with, once a check exhausted its budget.
    pub fn gave_up(&self) -> Option<EngineError> {
        let reason = self.gave_up.lock().ok()?.take()?;
        Some(external(&self.transform, reason))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
