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
use super::ledger::{self, Expected, Ledger, Seen, parse_store_key, store_key};
use crate::pipeline::operator::{EngineError, ErrorRoute, Output, Source, SourceSink};
use crate::pipeline::stats::AckStats;
use crate::record::{Ack, AckSet, AckToken, Batch, Releaser};
use crate::state::StateStore;
use crate::transforms::window::combine::durable::retry;

/// How often an idle source wakes to check for stop requests, idleness and `--until-idle`.
const POLL: Duration = Duration::from_millis(100);

/// How long after a dead worker's leases ran out its messages are surely redelivered to a
/// live subscriber with room under flow control (the emulator and the service send them with
/// the next streaming-pull response, within a second here).
const REDELIVERY_MARGIN: Duration = Duration::from_secs(5);

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
    /// Message ids seen within the dedupe horizon.
    ledger: Ledger,
    /// With durable state: where the ids are committed (`pubsub::ledger`).
    durable: Option<DurableIds>,
}

/// The durable part of the ledger: the store and this source's namespace in it.
struct DurableIds {
    store: Arc<dyn StateStore>,
    namespace: String,
    /// Ids pulled by the previous worker and not acknowledged: the watermark is held until
    /// they came back and `hold_at_least` passed, or until `hold_until`.
    expected: Expected,
    hold_until: Option<Instant>,
    /// When every lease of the previous worker has run out (its messages are redelivered by
    /// then, also those it had pulled but not yet emitted, which the ledger does not know).
    hold_at_least: Option<Instant>,
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
            ledger: Ledger::new(crate::state::config::DEFAULT_DEDUPE_HORIZON),
            durable: None,
        }
    }

    /// Deduplicates ids within `horizon`; with a `store`, durably (namespace
    /// `{pipeline}/{name}`), and holds the watermark of a restarted worker.
    pub fn with_dedupe(
        mut self,
        pipeline: &str,
        horizon: Duration,
        store: Option<Arc<dyn StateStore>>,
    ) -> Self {
        self.ledger = Ledger::new(horizon);
        self.durable = store.map(|store| DurableIds {
            store,
            namespace: format!("{pipeline}/{}", self.name),
            expected: Expected::default(),
            hold_until: None,
            hold_at_least: None,
        });
        self
    }

    /// Reads this source's ids from the store: acknowledged ones are dropped when they come
    /// again, pulled-but-unacknowledged ones are awaited with the watermark held.
    async fn restore_ids(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let Some(d) = &mut self.durable else {
            return Ok(());
        };
        let entries = retry(&self.name, &d.store, || {
            let (store, ns) = (d.store.clone(), d.namespace.clone());
            async move { store.load(&ns).await }
        })
        .await?;
        let now = now_ms();
        let mut expected = std::collections::HashSet::new();
        let mut stale = Vec::new();
        for (k, v) in entries {
            match parse_store_key(&k) {
                Some(('d', key)) => {
                    let expiry = v
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, i64::from_le_bytes);
                    if expiry > now {
                        self.ledger.insert_settled(key, expiry);
                    } else {
                        stale.push(k);
                    }
                }
                Some(('p', key)) => {
                    expected.insert(key);
                }
                _ => stale.push(k),
            }
        }
        if !stale.is_empty() {
            let (store, ns) = (d.store.clone(), d.namespace.clone());
            retry(&self.name, &d.store, || {
                let (store, ns, stale) = (store.clone(), ns.clone(), stale.clone());
                async move { store.commit(&ns, Vec::new(), stale).await }
            })
            .await?;
        }
        if !expected.is_empty() {
            // The predecessor died with messages in flight. Its leases run out within
            // `lease_extension` of its death, then the server redelivers them: hold at least
            // that long (plus a margin for the redelivery), so that also what it had pulled but
            // not yet emitted (in the client's buffers: not in the ledger) comes back first;
            // give up on ids still missing after twice that (acknowledged after all).
            let lease = self.cfg.flow_control.lease_extension;
            let now = Instant::now();
            tracing::info!(
                transform = %self.name,
                messages = expected.len(),
                at_least = ?(lease + REDELIVERY_MARGIN),
                "Holding the watermark until the messages pulled before the restart come back"
            );
            d.expected = Expected::new(expected);
            d.hold_at_least = Some(now + lease + REDELIVERY_MARGIN);
            d.hold_until = Some(now + lease * 2 + REDELIVERY_MARGIN * 2);
            sink.hold(true).await?;
        }
        Ok(())
    }

    /// Ends the watermark hold of a restarted worker when every awaited message came back, or
    /// when its time ran out.
    async fn release_hold(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let Some(d) = &mut self.durable else {
            return Ok(());
        };
        let Some(until) = d.hold_until else {
            return Ok(());
        };
        if d.hold_at_least.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        if !d.expected.is_empty() {
            if Instant::now() < until {
                return Ok(());
            }
            tracing::warn!(
                transform = %self.name,
                missing = d.expected.len(),
                "Messages pulled before the restart did not come back in time (acknowledged already, or expired): releasing the watermark"
            );
            d.expected.clear();
        } else {
            tracing::info!(transform = %self.name, "Every message pulled before the restart came back: releasing the watermark");
        }
        d.hold_until = None;
        d.hold_at_least = None;
        sink.hold(false).await
    }

    /// Drops the copies in `pending` of messages seen within the horizon (a copy joins the hold
    /// of its original, or is settled at once when that was released). Returns the first
    /// copies with their ledger keys, and the handlers of copies of those in the same pull.
    fn dedupe(
        &mut self,
        pending: Vec<(Incoming, Handler)>,
        failed: &Arc<std::sync::atomic::AtomicBool>,
    ) -> (Vec<(Incoming, Handler, u128)>, Vec<Handler>) {
        let now = now_ms();
        let mut firsts: Vec<(Incoming, Handler, u128)> = Vec::with_capacity(pending.len());
        let mut in_batch = std::collections::HashSet::with_capacity(pending.len());
        let mut copies = Vec::new();
        for (m, h) in pending {
            let id = self
                .cfg
                .id_attribute
                .as_ref()
                .and_then(|a| m.attributes.get(a))
                .unwrap_or(&m.message_id);
            let key = ledger::key(id);
            if !in_batch.insert(key) {
                self.acks.duplicate(None);
                copies.push(h);
                continue;
            }
            match self.ledger.seen(key, now) {
                Seen::New => firsts.push((m, h, key)),
                Seen::Held(original) => match original.adopt(Box::new(h)) {
                    Ok(()) => self.acks.duplicate(None),
                    Err(h) => settle(
                        h,
                        &self.acks,
                        failed.load(std::sync::atomic::Ordering::SeqCst),
                    ),
                },
                Seen::Settled => {
                    settle(
                        Box::new(h),
                        &self.acks,
                        failed.load(std::sync::atomic::Ordering::SeqCst),
                    );
                }
            }
        }
        (firsts, copies)
    }

    /// Commits the ids about to be emitted (`p/`) and moves those released since the last
    /// commit (`d/` when acknowledged), before the batch goes downstream.
    async fn commit_ids(&mut self, keys: &[u128]) -> Result<(), EngineError> {
        let now = now_ms();
        let expired = self.ledger.expire(now);
        let released = self.ledger.take_released();
        let expiry = self.ledger.expiry_from(now);
        let Some(d) = &mut self.durable else {
            return Ok(());
        };
        for k in keys {
            d.expected.arrived(*k);
        }
        commit_ledger(
            &self.name,
            &d.store,
            &d.namespace,
            keys,
            &expired,
            released,
            expiry,
        )
        .await
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
        &mut self,
        decoder: &mut MessageDecoder,
        (pending, received_ms): (Vec<(Incoming, Handler)>, i64),
        releaser: &Releaser,
        watermark: &mut Watermark,
        sink: &mut dyn SourceSink,
    ) -> Result<(), EngineError> {
        if pending.is_empty() {
            return Ok(());
        }
        let (firsts, copies) = self.dedupe(pending, releaser.failed());
        if firsts.is_empty() {
            return self.commit_ids(&[]).await;
        }
        let mut msgs = Vec::with_capacity(firsts.len());
        let mut handlers: Vec<Box<dyn Ackable>> = Vec::with_capacity(firsts.len() + copies.len());
        let mut keys = Vec::with_capacity(firsts.len());
        for (m, h, k) in firsts {
            msgs.push(m);
            handlers.push(Box::new(h));
            keys.push(k);
        }
        // Copies of a message of this pull are settled with it.
        handlers.extend(copies.into_iter().map(|h| Box::new(h) as Box<dyn Ackable>));
        let mut acks = MessageAcks::new(handlers, self.acks.clone(), received_ms);
        if self.durable.is_some() {
            acks = acks.with_ids(keys.clone(), self.ledger.released());
        }
        let now = now_ms();
        for k in &keys {
            self.ledger.insert(*k, acks.handlers(), now);
        }
        let token: AckToken = Ack::new(acks, releaser);
        if let Err(e) = self.commit_ids(&keys).await {
            // Nothing was emitted: the messages must come back, not be acknowledged.
            token.fail();
            return Err(e);
        }
        let (rows, bad) = decoder.decode(&msgs);
        let mut out = Output::new(self.ports);
        let origin = Batch {
            rows: arrow::array::RecordBatch::new_empty(ErrorRoute::schema()),
            acks: AckSet::one(token.clone()),
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
                acks: AckSet::one(token.clone()),
            };
            if let Some(times) = batch.event_times() {
                decoder.range.observe(times, now, &self.errors);
            }
            max_ts = batch.event_times().and_then(arrow::compute::max);
            out.main(batch);
        }
        drop(origin);
        drop(token);
        for (port, batch) in out.drain() {
            sink.emit(port, batch).await?;
        }
        if let Some(t) = max_ts {
            watermark.observe(t);
        }
        self.release_hold(sink).await?;
        // While held, the watermark waits for the messages pulled before the restart.
        if !self.holding() && watermark.current() > crate::pipeline::EventTime::MIN {
            sink.watermark(watermark.current()).await?;
        }
        Ok(())
    }

    fn holding(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.hold_until.is_some())
    }
}

/// One ledger commit: `pulled` ids as `p/`, `released` ones moved from `p/` to `d/` (until
/// `expiry`) when acknowledged, `expired` ones forgotten.
async fn commit_ledger(
    name: &str,
    store: &Arc<dyn StateStore>,
    namespace: &str,
    pulled: &[u128],
    expired: &[u128],
    released: Vec<(u128, bool)>,
    expiry: i64,
) -> Result<(), EngineError> {
    let mut puts: Vec<(String, Vec<u8>)> = pulled
        .iter()
        .map(|k| (store_key('p', *k), Vec::new()))
        .collect();
    let mut deletes: Vec<String> = expired.iter().map(|k| store_key('d', *k)).collect();
    let expiry = expiry.to_le_bytes().to_vec();
    for (k, acked) in released {
        deletes.push(store_key('p', k));
        if acked {
            puts.push((store_key('d', k), expiry.clone()));
        }
    }
    if puts.is_empty() && deletes.is_empty() {
        return Ok(());
    }
    // A key both put and deleted would be gone: an id released and pulled again in one step
    // (a redelivery) stays pulled.
    if !pulled.is_empty() {
        let put: std::collections::HashSet<&str> = puts.iter().map(|(k, _)| k.as_str()).collect();
        deletes.retain(|k| !put.contains(k.as_str()));
    }
    retry(name, store, || {
        let (store, p, d) = (store.clone(), puts.clone(), deletes.clone());
        async move { store.commit(namespace, p, d).await }
    })
    .await
}

/// Acknowledges (or, when the run failed, nacks) the handler of a duplicate at once.
fn settle(h: Box<dyn Ackable>, stats: &AckStats, failing: bool) {
    if failing {
        h.nack();
    } else {
        h.ack();
    }
    stats.duplicate(Some(!failing));
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
        self.restore_ids(sink).await?;
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
        // The last acknowledgements come after the stages finished: move their ids to `d/`
        // then, so the next run does not wait for messages that will never come back.
        let ledger = self.durable.as_ref().map(|d| {
            (
                d.store.clone(),
                d.namespace.clone(),
                self.ledger.released(),
                self.ledger.expiry_from(0),
            )
        });
        sink.defer(Box::pin(async move {
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, token.shutdown()).await.is_err() {
                tracing::warn!(transform = %name, "Acknowledgements not confirmed in time; unacknowledged messages will be redelivered");
            }
            if let Some((store, ns, released, horizon)) = ledger {
                let released = std::mem::take(&mut *released.lock().unwrap_or_else(|p| p.into_inner()));
                let expiry = now_ms().saturating_add(horizon);
                if let Err(e) = commit_ledger(&name, &store, &ns, &[], &[], released, expiry).await {
                    tracing::warn!(transform = %name, error = %e, "Cannot record the last acknowledged ids; the next run waits for them");
                }
            }
            puller.abort();
            if let Some(sub) = temporary {
                delete_subscription(&conn, &sub, &name).await;
            }
        }));
        let releaser = sink.releaser();
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
                            .emit(&mut decoder, batch, &releaser, &mut watermark, sink)
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
                            .emit(&mut decoder, batch, &releaser, &mut watermark, sink)
                            .await
                        {
                            break Err(e);
                        }
                        last_message = Instant::now();
                        continue;
                    }
                    // Quiet: record what was acknowledged meanwhile (the ledger's `d/`).
                    if let Err(e) = self.commit_ids(&[]).await {
                        break Err(e);
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
                    if let Err(e) = self.release_hold(sink).await {
                        break Err(e);
                    }
                    if let Some(t) = self.cfg.watermark.idle_timeout
                        && idle >= t
                        && !self.holding()
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
            self.emit(&mut decoder, batch, &releaser, &mut watermark, sink)
                .await?;
        }
        // Messages pulled but not emitted are nacked when their handlers drop.
        if !pending.is_empty() {
            self.acks.nacked_unbatched(pending.len());
        }
        drop(pending);
        result?;
        if self.holding() {
            sink.hold(false).await?;
        }
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
