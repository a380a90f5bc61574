//! `ReadFromPubSub`: streaming pull through the official client, batches of up to `batch_size`
//! messages or `max_batch_delay`, an acknowledgement hold per batch, and the watermark.
//!
//! The client library keeps the leases of held messages extended (modifyAckDeadline) up to
//! `max_lease` and enforces flow control (`max_outstanding_messages/bytes`): while sinks hold
//! batches, the server stops sending. When `emit` waits (backpressure), the source pulls nothing.
//! The run ends on SIGINT/SIGTERM or after `--until-idle`; then the source emits watermark +∞
//! and defers the stream's shutdown until every stage finished, so the last acknowledgements are
//! sent before `sluice` exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use google_cloud_pubsub::subscriber::handler::Handler;

use super::ack::{Ackable, MessageAcks, Watermark};
use super::client::{Connection, PubSubError};
use super::config::{ReadConfig, ReadFrom};
use super::connectivity;
use super::decode::{Incoming, MessageDecoder};
use crate::pipeline::operator::{EngineError, ErrorRoute, Output, Source, SourceSink};
use crate::pipeline::stats::AckStats;
use crate::record::{AckToken, Batch};

/// How often an idle source wakes to check for stop requests, idleness and `--until-idle`.
const POLL: Duration = Duration::from_millis(100);

/// Upper bound on waiting for the last acknowledgements at the end of a run (they normally take
/// one round trip; a lost connection must not keep the process alive forever).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ReadFromPubSub {
    name: String,
    cfg: ReadConfig,
    batch_size: usize,
    errors: ErrorRoute,
    ports: usize,
    conn: Connection,
    acks: Arc<AckStats>,
}

impl ReadFromPubSub {
    pub fn new(
        name: &str,
        cfg: &ReadConfig,
        batch_size: usize,
        errors: ErrorRoute,
        ports: usize,
        acks: Arc<AckStats>,
    ) -> Self {
        ReadFromPubSub {
            name: name.to_string(),
            cfg: cfg.clone(),
            batch_size: batch_size.max(1),
            errors,
            ports,
            conn: Connection::from_env(),
            acks,
        }
    }

    fn external(&self, what: &str, e: PubSubError) -> EngineError {
        EngineError::external(&self.name, format!("{what}: {e}"), e)
    }

    /// The subscription to pull from; with `topic:`, one created for this run.
    async fn subscription(&self) -> Result<(String, Option<String>), EngineError> {
        match &self.cfg.from {
            ReadFrom::Subscription(s) => self
                .conn
                .subscription_path(&s.value)
                .map(|p| (p, None))
                .map_err(|e| EngineError::config(&self.name, e.to_string())),
            ReadFrom::Topic(t) => {
                let topic = self
                    .conn
                    .topic_path(&t.value)
                    .map_err(|e| EngineError::config(&self.name, e.to_string()))?;
                let project = topic.split('/').nth(1).unwrap_or_default().to_string();
                let id = format!(
                    "sluice-{}-{:016x}",
                    sanitize(&self.name),
                    xxhash_rust::xxh3::xxh3_64(
                        format!("{topic}{}{:?}", std::process::id(), Instant::now()).as_bytes()
                    )
                );
                let path = format!("projects/{project}/subscriptions/{id}");
                let admin = self
                    .conn
                    .subscription_admin()
                    .await
                    .map_err(|e| self.external("cannot create a client", e))?;
                admin
                    .create_subscription()
                    .set_name(path.clone())
                    .set_topic(topic.clone())
                    .send()
                    .await
                    .map_err(|e| {
                        self.external(
                            &format!("cannot create a subscription to {topic}"),
                            e.into(),
                        )
                    })?;
                tracing::info!(subscription = %path, topic = %topic, "Created a subscription for this run");
                Ok((path.clone(), Some(path)))
            }
        }
    }

    /// Decodes and emits one batch of messages (the first received at `received_ms`) with its
    /// acknowledgement hold.
    async fn emit(
        &self,
        decoder: &mut MessageDecoder,
        (pending, received_ms): (Vec<(Incoming, Handler)>, i64),
        failed: &Arc<std::sync::atomic::AtomicBool>,
        watermark: &mut Watermark,
        sink: &mut dyn SourceSink,
    ) -> Result<(), EngineError> {
        if pending.is_empty() {
            return Ok(());
        }
        let (msgs, handlers): (Vec<Incoming>, Vec<Handler>) = pending.into_iter().unzip();
        let token: AckToken = Arc::new(MessageAcks::new(
            handlers
                .into_iter()
                .map(|h| Box::new(h) as Box<dyn Ackable>)
                .collect(),
            failed.clone(),
            self.acks.clone(),
            received_ms,
        ));
        let (rows, bad) = decoder.decode(&msgs);
        let mut out = Output::new(self.ports);
        let origin = Batch {
            rows: arrow::array::RecordBatch::new_empty(ErrorRoute::schema()),
            acks: vec![token.clone()],
        };
        self.errors.report_elements(
            &mut out,
            &origin,
            bad.into_iter()
                .map(|(i, e)| (msgs[i].element(), e))
                .collect(),
        );
        let mut max_ts = None;
        if let Some(rows) = rows {
            let batch = Batch {
                rows,
                acks: vec![token.clone()],
            };
            max_ts = batch.event_times().and_then(arrow::compute::max);
            out.main(batch);
        }
        drop(origin);
        drop(token);
        for (port, batch) in out.drain() {
            sink.emit(port, batch).await?;
        }
        if let Some(wm) = max_ts.and_then(|t| watermark.observe(t)) {
            sink.watermark(wm).await?;
        }
        Ok(())
    }
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    s
}

#[async_trait]
impl Source for ReadFromPubSub {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let mut decoder =
            MessageDecoder::new(&self.cfg).map_err(|e| EngineError::config(&self.name, e))?;
        let (path, temporary) = self.subscription().await?;
        // The streaming pull retries a dead endpoint silently: check first, then keep checking.
        let reachability = connectivity::start(&self.conn, &path, &self.name).await?;
        let subscriber = self
            .conn
            .subscriber()
            .await
            .map_err(|e| self.external("cannot create a subscriber", e))?;
        let fc = self.cfg.flow_control;
        let mut stream = subscriber
            .subscribe(path.clone())
            .set_max_outstanding_messages(fc.max_outstanding_messages)
            .set_max_outstanding_bytes(fc.max_outstanding_bytes)
            .set_max_lease(fc.max_lease)
            .set_max_lease_extension(fc.lease_extension)
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        // The stream's shutdown completes once every handler (held by batches downstream) was
        // acked or nacked and those calls were sent: the runner awaits it after the stages
        // finished, or were dropped on failure, so `sluice` exits only after that.
        let token = stream.shutdown_token();
        // `MessageStream::next` is not cancel-safe (a response taken off the wire and put under
        // lease management is lost if the call is dropped, and its lease kept extended), so a
        // task owns the stream and hands messages over a channel the loop below can time out
        // on. The shutdown token ends the task.
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.batch_size.clamp(1, 1024));
        let puller = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        let conn = self.conn.clone();
        let name = self.name.clone();
        sink.defer(Box::pin(async move {
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, token.shutdown()).await.is_err() {
                tracing::warn!(transform = %name, "Acknowledgements not confirmed in time; unacknowledged messages will be redelivered");
            }
            puller.abort();
            if let Some(sub) = temporary {
                delete_subscription(&conn, &sub, &name).await;
            }
        }));
        let failed = sink.failed_flag();
        let until_idle = sink.until_idle();
        let mut watermark = Watermark::new(self.cfg.watermark.max_delay);
        let mut last_message = Instant::now();
        let mut pending: Vec<(Incoming, Handler)> = Vec::new();
        let mut batch_started = Instant::now();
        let mut batch_started_ms = 0;
        tracing::info!(subscription = %path, transform = %self.name, "Pulling");
        let result: Result<(), EngineError> = loop {
            if sink.stopping() {
                tracing::info!(transform = %self.name, "Stop requested: ending the stream");
                break Ok(());
            }
            let wait = if pending.is_empty() {
                POLL
            } else {
                fc.max_batch_delay.saturating_sub(batch_started.elapsed())
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(Ok((m, h)))) => {
                    if pending.is_empty() {
                        batch_started = Instant::now();
                        batch_started_ms = chrono::Utc::now().timestamp_millis();
                    }
                    last_message = Instant::now();
                    let attempt = h.delivery_attempt();
                    pending.push((Incoming::from_message(m, attempt), h));
                    if pending.len() >= self.batch_size {
                        let batch = (std::mem::take(&mut pending), batch_started_ms);
                        if let Err(e) = self
                            .emit(&mut decoder, batch, &failed, &mut watermark, sink)
                            .await
                        {
                            break Err(e);
                        }
                        // `emit` waits while a valve is closed: that is not idleness.
                        last_message = Instant::now();
                    }
                }
                Ok(Some(Err(e))) => {
                    // The client retries transient stream errors itself; what reaches here is
                    // permanent (missing subscription, no permission).
                    break Err(
                        self.external(&format!("streaming pull from {path} failed"), e.into())
                    );
                }
                Ok(None) => break Ok(()),
                Err(_elapsed) => {
                    if let Some(e) = reachability.gave_up() {
                        break Err(e);
                    }
                    if !pending.is_empty() {
                        let batch = (std::mem::take(&mut pending), batch_started_ms);
                        if let Err(e) = self
                            .emit(&mut decoder, batch, &failed, &mut watermark, sink)
                            .await
                        {
                            break Err(e);
                        }
                        last_message = Instant::now();
                        continue;
                    }
                    if sink.paused() {
                        // Not pulling while a valve is closed: neither idle nor advancing.
                        last_message = Instant::now();
                        continue;
                    }
                    let idle = last_message.elapsed();
                    if let Some(limit) = until_idle
                        && idle >= limit
                    {
                        tracing::info!(transform = %self.name, idle = ?idle, "No message for the --until-idle period: ending");
                        break Ok(());
                    }
                    if let Some(t) = self.cfg.watermark.idle_timeout
                        && idle >= t
                    {
                        // Idle: the watermark follows the clock so windows still close.
                        let now = chrono::Utc::now().timestamp_millis();
                        if let Some(wm) = watermark.idle(now)
                            && let Err(e) = sink.watermark(wm).await
                        {
                            break Err(e);
                        }
                    }
                }
            }
        };
        if result.is_ok() && !pending.is_empty() {
            let batch = (std::mem::take(&mut pending), batch_started_ms);
            self.emit(&mut decoder, batch, &failed, &mut watermark, sink)
                .await?;
        }
        // Messages pulled but not emitted are nacked when their handlers drop.
        if !pending.is_empty() {
            self.acks.nacked_unbatched(pending.len());
        }
        drop(pending);
        result?;
        sink.stopped().await?;
        // Dropping the receiver stops the hand-over; messages in the channel are nacked. The
        // lease loop keeps extending the leases of messages still held downstream until they
        // are acked (ShutdownBehavior::WaitForProcessing).
        drop(rx);
        Ok(())
    }
}

async fn delete_subscription(conn: &Connection, path: &str, name: &str) {
    let res = match conn.subscription_admin().await {
        Ok(admin) => admin
            .delete_subscription()
            .set_subscription(path.to_string())
            .send()
            .await
            .map_err(PubSubError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        tracing::warn!(transform = %name, subscription = %path, error = %e, "Could not delete the subscription created for this run");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subscription_ids_are_valid() {
        assert_eq!(super::sanitize("Read Events_1"), "read-events-1");
    }
}
