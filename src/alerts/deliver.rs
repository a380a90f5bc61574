//! The [`Alerter`]: admits alerts (dedup, rate limit), queues them and delivers them from a
//! background task with retries, so a slow or dead receiver never blocks the data path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use super::alert::Alert;
use super::gate::Gate;
use super::payload;
use super::targets::AlertTargets;

/// Alerts waiting for delivery. A check alerts once per pane at most and the gate admits at
/// most 20 a minute per URL, so 256 is minutes of backlog against a receiver that hangs for the
/// full timeout on every attempt; past that, dropping (counted, logged) beats unbounded memory.
pub const QUEUE_CAPACITY: usize = 256;
/// Deliveries in flight at once: one slow target must not hold up the others.
const CONCURRENT_DELIVERIES: usize = 4;
/// The longest `Retry-After` honoured; a receiver asking for more gets the normal backoff.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How deliveries are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure. A 429's `Retry-After`
    /// (seconds, up to 60) replaces it for that wait.
    pub initial_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 0.5 s doubling (0.5 + 1 + 2 + 4 = 7.5 s of waiting), 10 s timeout: rides out
    /// a receiver restart or a Slack hiccup without holding an alert for minutes.
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Counters for `/metrics`. Each counts deliveries: one alert to one URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// Delivered (a 2xx answer); in recording mode, recorded.
    pub sent: u64,
    /// Given up on after the retries (or a non-retryable answer).
    pub failed: u64,
    /// Not sent: same dedup key within `repeat_after`, or the URL's rate limit.
    pub suppressed: u64,
    /// Not queued: the delivery queue was full.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    suppressed: AtomicU64,
    dropped: AtomicU64,
    /// Queued or being delivered; [`Alerter::flush`] waits for it to reach 0.
    in_flight: AtomicU64,
}

/// Sends alerts to Slack and generic webhooks. Cheap to clone; every clone shares the queue,
/// the dedup state and the counters.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

struct Inner {
    gate: Mutex<Gate>,
    mode: Mode,
    status_url: RwLock<Option<String>>,
    counters: Arc<Counters>,
}

enum Mode {
    Deliver(mpsc::Sender<Job>),
    Record(Arc<Mutex<Vec<Alert>>>),
}

/// One delivery: a body for one URL.
#[derive(Debug)]
struct Job {
    url: String,
    body: Value,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver answered with a non-2xx status.
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, timeout, TLS, an invalid URL.
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
}

impl DeliveryError {
    /// Timeouts, connection failures, 408, 429 and 5xx may succeed later; other 4xx (a revoked
    /// Slack webhook answers 403/404, bad blocks 400) will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeliveryError::Status { status, .. } => {
                matches!(status, 408 | 429) || (500..600).contains(status)
            }
            DeliveryError::Request(e) => !e.is_builder(),
        }
    }
}

impl Alerter {
    /// Spawns the delivery task on the current tokio runtime. `status_url` (the status page,
    /// e.g. from env `SLUICE_STATUS_URL` or `http://<--http addr>/`) is linked from every alert.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(status_url: Option<String>) -> Alerter {
        Self::start_with(status_url, RetryPolicy::default())
    }

    /// [`Alerter::start`] with a custom retry policy (tests use millisecond backoffs).
    pub fn start_with(status_url: Option<String>, retry: RetryPolicy) -> Alerter {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        tokio::spawn(deliver_all(rx, retry, counters.clone()));
        Self::new(Mode::Deliver(tx), status_url, counters)
    }

    /// For tests and `sluice test`: delivers nothing, records every alert that would be sent
    /// (after dedup and rate limit).
    pub fn recording() -> (Alerter, Arc<Mutex<Vec<Alert>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let alerter = Self::new(Mode::Record(log.clone()), None, Arc::default());
        (alerter, log)
    }

    fn new(mode: Mode, status_url: Option<String>, counters: Arc<Counters>) -> Alerter {
        Alerter {
            inner: Arc::new(Inner {
                gate: Mutex::default(),
                mode,
                status_url: RwLock::new(status_url),
                counters,
            }),
        }
    }

    /// Sets the status page URL unless one was given to [`Alerter::start`] (the `--http`
    /// address is known only once bound).
    pub fn default_status_url(&self, url: String) {
        let mut current = self.inner.status_url.write().expect("not poisoned");
        if current.is_none() {
            *current = Some(url);
        }
    }

    /// Never blocks and never fails: dedup + rate limit, then queue (bounded); a full queue
    /// drops the alert with a warning and a counter.
    pub fn send(&self, targets: &AlertTargets, alert: Alert) {
        let slack = targets.slack_webhook.as_deref();
        let hook = targets.webhook.as_deref();
        let urls: Vec<&str> = slack.into_iter().chain(hook).collect();
        let admission = self.inner.gate.lock().expect("not poisoned").admit(
            Instant::now(),
            &alert.dedup_key,
            targets.repeat_after,
            &urls,
        );
        let c = &self.inner.counters;
        c.suppressed.fetch_add(admission.suppressed, Relaxed);
        if admission.send_to.is_empty() {
            tracing::debug!(key = %alert.dedup_key, "Alert suppressed");
            return;
        }
        let queue = match &self.inner.mode {
            Mode::Record(log) => {
                c.sent.fetch_add(admission.send_to.len() as u64, Relaxed);
                log.lock().expect("not poisoned").push(alert);
                return;
            }
            Mode::Deliver(queue) => queue,
        };
        let status_url = self.inner.status_url.read().expect("not poisoned").clone();
        let n = admission.suppressed_before;
        let status_url = status_url.as_deref();
        let mut jobs = Vec::new();
        for url in admission.send_to {
            let body = if Some(url.as_str()) == slack {
                payload::slack(&alert, n, status_url)
            } else {
                payload::webhook(&alert, n, status_url)
            };
            jobs.push((url, body));
        }
        for (url, body) in jobs {
            c.in_flight.fetch_add(1, Relaxed);
            let target = redacted(&url);
            if let Err(e) = queue.try_send(Job { url, body }) {
                c.in_flight.fetch_sub(1, Relaxed);
                c.dropped.fetch_add(1, Relaxed);
                tracing::warn!(
                    key = %alert.dedup_key,
                    target = %target,
                    error = %e,
                    "Alert dropped: the delivery queue is full"
                );
            }
        }
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> AlertStats {
        let c = &self.inner.counters;
        AlertStats {
            sent: c.sent.load(Relaxed),
            failed: c.failed.load(Relaxed),
            suppressed: c.suppressed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
        }
    }

    /// Waits until every queued alert was delivered or given up on, at most `timeout`; the run
    /// calls it before exiting so the last alerts are not lost with the runtime. Returns
    /// whether the queue drained.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.counters.in_flight.load(Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// Scheme and host of a URL: Slack webhook paths are secrets and must not reach the logs.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "(invalid URL)".into(),
    }
}

async fn deliver_all(mut rx: mpsc::Receiver<Job>, retry: RetryPolicy, counters: Arc<Counters>) {
    let client = reqwest::Client::new();
    let slots = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
    while let Some(job) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, retry, counters) = (client.clone(), retry.clone(), counters.clone());
        tokio::spawn(async move {
            match deliver(&client, &retry, &job).await {
                Ok(()) => counters.sent.fetch_add(1, Relaxed),
                Err(e) => {
                    tracing::warn!(
                        target = %redacted(&job.url),
                        attempts = retry.attempts,
                        error = %e,
                        "Alert delivery failed"
                    );
                    counters.failed.fetch_add(1, Relaxed)
                }
            };
            counters.in_flight.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
}

/// Posts one job, retrying per `retry`.
async fn deliver(
    client: &reqwest::Client,
    retry: &RetryPolicy,
    job: &Job,
) -> Result<(), DeliveryError> {
    let mut backoff = retry.initial_backoff;
    let mut attempt = 1;
    loop {
        let err = match post(client, retry.timeout, job).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if attempt >= retry.attempts || !err.is_retryable() {
            return Err(err);
        }
        let wait = match &err {
            DeliveryError::Status {
                retry_after: Some(d),
                ..
            } if *d <= MAX_RETRY_AFTER => *d,
            _ => backoff,
        };
        tracing::warn!(target = %redacted(&job.url), attempt, error = %err, wait_ms = wait.as_millis() as u64, "Alert delivery failed; retrying");
        tokio::time::sleep(wait).await;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

async fn post(client: &reqwest::Client, timeout: Duration, job: &Job) -> Result<(), DeliveryError> {
    let resp = client
        .post(&job.url)
        .timeout(timeout)
        .json(&job.body)
        .send()
        .await
        .map_err(DeliveryError::Request)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = (status.as_u16() == 429)
        .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(body.floor_char_boundary(200));
    Err(DeliveryError::Status {
        status: status.as_u16(),
        body,
        retry_after,
    })
}
