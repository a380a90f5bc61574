//! The BigQuery client: `gcp-bigquery-client` pointed at the emulator or at Google, the error
//! type sinks classify retries by, and the backoff loop.
//!
//! With `BIGQUERY_EMULATOR_HOST=host:port` the REST base is `http://host:port/bigquery/v2` and
//! a dummy bearer token is sent (the crate has no anonymous mode; the emulator ignores the
//! header). Otherwise Application Default Credentials (or Workload Identity on GKE) are used.

use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::stats::SinkStats;
use crate::telemetry::health;

use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;

/// The REST emulator, `host:port` (SPEC §2).
pub const EMULATOR_ENV: &str = "BIGQUERY_EMULATOR_HOST";
/// The default project when a table spec names none.
pub const PROJECT_ENV: &str = "GOOGLE_CLOUD_PROJECT";

/// What went wrong talking to BigQuery, classified for retries.
#[derive(Debug, thiserror::Error)]
pub enum BqError {
    /// BigQuery answered with an HTTP error status.
    #[error("BigQuery answered {status}: {message}")]
    Status {
        status: i64,
        reason: String,
        message: String,
    },
    /// The request did not get an answer (connection refused or reset, timeout).
    #[error("cannot reach BigQuery: {0}")]
    Transport(#[source] BQError),
    /// The answer could not be read (a proxy's HTML error page, a truncated body).
    #[error("unreadable answer from BigQuery: {0}")]
    Decode(#[source] BQError),
    /// No credentials, or another problem retrying will not fix.
    #[error("{0}")]
    Other(#[source] BQError),
    /// The job finished with errors (a bad query, a missing table).
    #[error("BigQuery job failed: {0}")]
    Job(String),
}

impl BqError {
    /// Whether the same request may succeed later: 5xx, 429 (rate limits), and requests that got
    /// no readable answer. Decided from the status and error kind, never from message text.
    pub fn is_retryable(&self) -> bool {
        match self {
            BqError::Status { status, .. } => *status == 429 || *status >= 500,
            BqError::Transport(_) | BqError::Decode(_) => true,
            BqError::Other(_) | BqError::Job(_) => false,
        }
    }

    /// 404 `notFound`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, BqError::Status { status: 404, .. })
    }

    /// 409 `duplicate` (the dataset or table exists).
    pub fn is_duplicate(&self) -> bool {
        matches!(self, BqError::Status { status: 409, .. })
    }
}

impl From<BQError> for BqError {
    fn from(e: BQError) -> Self {
        match e {
            BQError::ResponseError { error } => BqError::Status {
                status: error.error.code,
                reason: error
                    .error
                    .errors
                    .first()
                    .and_then(|m| m.get("reason").cloned())
                    .unwrap_or_default(),
                message: error.error.message,
            },
            BQError::RequestError(ref r) if r.is_decode() => BqError::Decode(e),
            BQError::RequestError(ref r) if r.is_status() => {
                let status = r.status().map_or(500, |s| i64::from(s.as_u16()));
                BqError::Status {
                    status,
                    reason: String::new(),
                    message: e.to_string(),
                }
            }
            BQError::RequestError(_) | BQError::TonicTransportError(_) => BqError::Transport(e),
            other => BqError::Other(other),
        }
    }
}

/// A fixed token: the emulator accepts any `Authorization` header.
#[derive(Clone)]
struct EmulatorToken;

#[async_trait::async_trait]
impl Authenticator for EmulatorToken {
    async fn access_token(&self) -> Result<String, BQError> {
        Ok("sluice-emulator".into())
    }
}

/// Per-request timeout: a hung connection becomes a retryable transport error instead of a
/// stuck sink. BigQuery's own `jobs.query` waits at most 10 s by default, so 60 s is ample.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The REST base URL when the emulator is configured.
pub fn emulator_base() -> Option<String> {
    std::env::var(EMULATOR_ENV)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .map(|h| {
            let h = h.trim().trim_end_matches('/');
            let h = h
                .strip_prefix("http://")
                .or_else(|| h.strip_prefix("https://"))
                .unwrap_or(h);
            format!("http://{h}/bigquery/v2")
        })
}

/// The REST endpoint calls go to (for logs and `/readyz`).
pub fn endpoint() -> String {
    emulator_base().unwrap_or_else(|| "https://bigquery.googleapis.com/bigquery/v2".into())
}

/// The default project: `GOOGLE_CLOUD_PROJECT`.
///
/// # Errors
/// When the variable is unset and a table spec needs it.
pub fn default_project() -> Result<String, String> {
    std::env::var(PROJECT_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            format!("the table names no project and {PROJECT_ENV} is not set; write `project.dataset.table`")
        })
}

/// Connects to the emulator or to BigQuery.
///
/// # Errors
/// When Application Default Credentials cannot be found or read.
pub async fn connect() -> Result<Client, BqError> {
    let http = reqwest_client();
    let mut builder = ClientBuilder::new();
    if let Some(base) = emulator_base() {
        builder.with_v2_base_url(base);
        if let Some(c) = http {
            builder.with_client(c);
        }
        return builder
            .build_from_authenticator(Arc::new(EmulatorToken))
            .await
            .map_err(BqError::from);
    }
    if let Some(c) = http {
        builder.with_client(c);
    }
    builder
        .build_from_application_default_credentials()
        .await
        .map_err(BqError::Other)
}

/// A reqwest client with a timeout and no idle-connection reuse surprises: the emulator resets
/// keep-alive connections after an internal error, so idle connections are dropped quickly.
fn reqwest_client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .ok()
}

/// Backoff schedule: first retry after 200 ms, doubling up to 30 s between tries (Google's
/// recommended truncated exponential backoff for streaming inserts), for at most `MAX_ELAPSED`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After this long failing, the sink gives up and the pipeline fails (exit 1): the input stays
/// unacknowledged and is redelivered on restart. Ten minutes covers BigQuery's documented
/// transient outages and rate-limit windows without hiding a real outage forever.
pub const MAX_ELAPSED: Duration = Duration::from_secs(600);

/// Runs `op` until it succeeds, fails with a non-retryable error, or `max_elapsed` has passed.
///
/// # Errors
/// The last error.
pub async fn with_retries<T, F, Fut>(what: &str, max_elapsed: Duration, op: F) -> Result<T, BqError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BqError>>,
{
    with_retries_counted(what, max_elapsed, None, op).await
}

/// [`with_retries`] for a sink's writes: each attempt's duration, each failed attempt and each
/// retry are counted into `stats`.
///
/// # Errors
/// The last error.
pub async fn with_retries_counted<T, F, Fut>(
    what: &str,
    max_elapsed: Duration,
    stats: Option<&SinkStats>,
    mut op: F,
) -> Result<T, BqError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BqError>>,
{
    let start = tokio::time::Instant::now();
    let mut delay = FIRST_BACKOFF;
    loop {
        let attempt = std::time::Instant::now();
        let result = op().await;
        if let Some(s) = stats {
            s.observe_write(attempt);
            if result.is_err() {
                s.failed();
            }
        }
        // Reachability for `/readyz`: no answer at all marks the endpoint failing (logged at
        // ERROR once); any answer, even an error status, marks it reachable.
        match &result {
            Err(e @ BqError::Transport(_)) => {
                health::endpoints().failing("BigQuery", &endpoint(), &e.to_string());
            }
            _ => health::endpoints().reachable("BigQuery", &endpoint()),
        }
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && start.elapsed() + delay <= max_elapsed => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Retrying BigQuery {what}");
                if let Some(s) = stats {
                    s.retried();
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i64) -> BqError {
        BqError::Status {
            status: code,
            reason: String::new(),
            message: String::new(),
        }
    }

    #[test]
    fn retry_classification_by_status() {
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(status(404).is_not_found());
        assert!(status(409).is_duplicate());
        assert!(!BqError::Job("x".into()).is_retryable());
    }

    #[tokio::test]
    async fn retries_until_success_with_backoff() {
        let mut calls = 0;
        let start = tokio::time::Instant::now();
        let r: Result<u32, BqError> = with_retries("test", MAX_ELAPSED, || {
            calls += 1;
            let c = calls;
            async move { if c < 4 { Err(status(503)) } else { Ok(c) } }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        // 200 + 400 + 800 ms of backoff.
        assert!(start.elapsed() >= Duration::from_millis(1400));
    }

    #[tokio::test]
    async fn counts_attempts_failures_and_retries() {
        let stats = SinkStats::default();
        let mut calls = 0;
        let r: Result<u32, BqError> =
            with_retries_counted("test", MAX_ELAPSED, Some(&stats), || {
                calls += 1;
                let c = calls;
                async move { if c < 3 { Err(status(503)) } else { Ok(c) } }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!((stats.failures(), stats.retries()), (2, 2));
        let r: Result<(), BqError> =
            with_retries_counted("test", MAX_ELAPSED, Some(&stats), || async {
                Err(status(400))
            })
            .await;
        assert!(r.is_err());
        assert_eq!((stats.failures(), stats.retries()), (3, 2));
    }

    #[tokio::test]
    async fn gives_up_on_permanent_errors_and_after_max_elapsed() {
        let mut calls = 0;
        let r: Result<(), BqError> = with_retries("test", MAX_ELAPSED, || {
            calls += 1;
            async { Err(status(400)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        let r: Result<(), BqError> = with_retries("test", Duration::from_secs(5), || async {
            Err(status(500))
        })
        .await;
        assert!(matches!(r, Err(BqError::Status { status: 500, .. })));
    }
}
