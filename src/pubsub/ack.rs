//! Acknowledgement holds for pulled messages, and the source watermark: pure bookkeeping, no I/O.
//!
//! [`MessageAcks`] is the [`AckToken`](crate::record::AckToken) a `ReadFromPubSub` batch
//! carries. Every batch derived from those messages holds a clone, and sinks drop theirs only
//! after the durable write, so the last drop means "everything derived from these messages was
//! written" and acknowledges them. If the run failed, the runner set the shared `failed` flag
//! first, and the drop nacks instead: the messages are redelivered, nothing unwritten is acked.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::pipeline::EventTime;
use crate::pipeline::stats::AckStats;

/// Something that can be acknowledged or rejected once: a message handler of the client library
/// (a trait so the bookkeeping is tested without a server).
pub trait Ackable: Send {
    fn ack(self: Box<Self>);
    fn nack(self: Box<Self>);
}

impl Ackable for google_cloud_pubsub::subscriber::handler::Handler {
    fn ack(self: Box<Self>) {
        google_cloud_pubsub::subscriber::handler::Handler::ack(*self);
    }
    fn nack(self: Box<Self>) {
        google_cloud_pubsub::subscriber::handler::Handler::nack(*self);
    }
}

/// The acknowledgement hold of one emitted batch of messages. It also keeps the source's
/// message counters: received when created, acknowledged or nacked (by the batch's size) when
/// released, and the batch's receive time until then (for the oldest unacknowledged age).
pub struct MessageAcks {
    handlers: Mutex<Vec<Box<dyn Ackable>>>,
    failed: Arc<AtomicBool>,
    /// Some output derived from these messages will never be written: nack on release.
    abandoned: AtomicBool,
    stats: Arc<AckStats>,
    /// The batch's key in `stats` (its receive time).
    received: EventTime,
    /// The message ids (ledger keys) of the batch and where to report their release, for the
    /// source's durable ledger (`pubsub::ledger`).
    ids: Option<(Vec<u128>, super::ledger::Released)>,
}

impl crate::record::Hold for MessageAcks {
    fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

impl MessageAcks {
    /// Holds `handlers`, received at `received_ms` (when the batch's first message arrived).
    pub fn new(
        handlers: Vec<Box<dyn Ackable>>,
        failed: Arc<AtomicBool>,
        stats: Arc<AckStats>,
        received_ms: EventTime,
    ) -> Self {
        let received = stats.received(handlers.len(), received_ms);
        MessageAcks {
            handlers: Mutex::new(handlers),
            failed,
            abandoned: AtomicBool::new(false),
            stats,
            received,
            ids: None,
        }
    }

    /// Reports the batch's message `ids` to `released` when the hold is released.
    pub fn with_ids(mut self, ids: Vec<u128>, released: super::ledger::Released) -> Self {
        self.ids = Some((ids, released));
        self
    }

    /// Adds the handler of a duplicate copy of a held message: it is acknowledged (or nacked)
    /// with this batch. Gives the handler back when the hold was already released.
    pub fn adopt(&self, handler: Box<dyn Ackable>) -> Result<(), Box<dyn Ackable>> {
        match self.handlers.lock() {
            Ok(mut h) => {
                h.push(handler);
                Ok(())
            }
            Err(_) => Err(handler),
        }
    }

    /// Whether released holds of this run nack (the run failed).
    pub fn failing(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub fn for_test() -> Self {
        MessageAcks::new(Vec::new(), Arc::default(), Arc::default(), 0)
    }
}

impl Drop for MessageAcks {
    fn drop(&mut self) {
        let handlers = match self.handlers.get_mut() {
            Ok(h) => std::mem::take(h),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        let n = handlers.len();
        let acked = !(self.failed.load(Ordering::SeqCst) || self.abandoned.load(Ordering::SeqCst));
        if let Some((ids, released)) = self.ids.take() {
            released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(ids.into_iter().map(|id| (id, acked)));
        }
        if !acked {
            tracing::debug!(
                messages = n,
                "Run failed or output kept unwritten: nacking held messages"
            );
            handlers.into_iter().for_each(|h| h.nack());
            self.stats.released(self.received, n, false);
        } else {
            handlers.into_iter().for_each(|h| h.ack());
            self.stats.released(self.received, n, true);
        }
    }
}

/// The watermark of one source: max event time seen − `max_delay`, never going back.
#[derive(Debug, Clone)]
pub struct Watermark {
    max_delay_ms: i64,
    max_event: Option<EventTime>,
    current: EventTime,
}

impl Watermark {
    pub fn new(max_delay: std::time::Duration) -> Self {
        Watermark {
            max_delay_ms: i64::try_from(max_delay.as_millis()).unwrap_or(i64::MAX),
            max_event: None,
            current: EventTime::MIN,
        }
    }

    /// Records the largest event time of a batch; returns the new watermark if it advanced.
    pub fn observe(&mut self, max_event_time: EventTime) -> Option<EventTime> {
        let max = self
            .max_event
            .map_or(max_event_time, |m| m.max(max_event_time));
        self.max_event = Some(max);
        self.advance_to(max.saturating_sub(self.max_delay_ms))
    }

    /// The source was idle: advance to wall-clock `now_ms` − `max_delay` (never backwards).
    pub fn idle(&mut self, now_ms: EventTime) -> Option<EventTime> {
        self.advance_to(now_ms.saturating_sub(self.max_delay_ms))
    }

    fn advance_to(&mut self, wm: EventTime) -> Option<EventTime> {
        (wm > self.current).then(|| {
            self.current = wm;
            wm
        })
    }

    pub fn current(&self) -> EventTime {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Probe(Arc<Mutex<Vec<&'static str>>>);
    impl Ackable for Probe {
        fn ack(self: Box<Self>) {
            self.0.lock().unwrap().push("ack");
        }
        fn nack(self: Box<Self>) {
            self.0.lock().unwrap().push("nack");
        }
    }

    fn token(
        log: &Arc<Mutex<Vec<&'static str>>>,
        failed: &Arc<AtomicBool>,
    ) -> crate::record::AckToken {
        counted_token(log, failed, &Arc::default(), 0, 2)
    }

    fn counted_token(
        log: &Arc<Mutex<Vec<&'static str>>>,
        failed: &Arc<AtomicBool>,
        stats: &Arc<AckStats>,
        received_ms: EventTime,
        messages: usize,
    ) -> crate::record::AckToken {
        Arc::new(MessageAcks::new(
            (0..messages)
                .map(|_| Box::new(Probe(log.clone())) as Box<dyn Ackable>)
                .collect(),
            failed.clone(),
            stats.clone(),
            received_ms,
        ))
    }

    #[test]
    fn counts_messages_per_released_batch() {
        let log = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let stats: Arc<AckStats> = Arc::default();
        let first = counted_token(&log, &failed, &stats, 1_000, 3);
        let second = counted_token(&log, &failed, &stats, 2_000, 2);
        let held = first.clone();
        assert_eq!(stats.counts().received, 5);
        assert_eq!(stats.counts().outstanding, 5);
        assert_eq!(stats.oldest_unacked_seconds(5_000), 4.0);
        drop(first);
        assert_eq!(
            stats.counts().outstanding,
            5,
            "a clone still holds the batch"
        );
        drop(second);
        let c = stats.counts();
        assert_eq!((c.acked, c.nacked, c.outstanding), (2, 0, 3));
        assert_eq!(stats.oldest_unacked_seconds(5_000), 4.0);
        failed.store(true, Ordering::SeqCst);
        drop(held);
        let c = stats.counts();
        assert_eq!((c.received, c.acked, c.nacked, c.outstanding), (5, 2, 3, 0));
        assert_eq!(stats.oldest_unacked_seconds(5_000), 0.0);
        assert_eq!(log.lock().unwrap().len(), 5);
    }

    #[test]
    fn acks_when_the_last_hold_is_released() {
        let log = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let t = token(&log, &failed);
        let copy = t.clone();
        drop(t);
        assert!(log.lock().unwrap().is_empty());
        drop(copy);
        assert_eq!(*log.lock().unwrap(), vec!["ack", "ack"]);
    }

    #[test]
    fn a_failed_run_nacks() {
        let log = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let t = token(&log, &failed);
        failed.store(true, Ordering::SeqCst);
        drop(t);
        assert_eq!(*log.lock().unwrap(), vec!["nack", "nack"]);
    }

    #[test]
    fn an_abandoned_hold_nacks_when_its_last_clone_is_released() {
        let log = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let t = token(&log, &failed);
        let copy = t.clone();
        crate::record::abandon(std::slice::from_ref(&copy));
        drop(copy);
        assert!(log.lock().unwrap().is_empty());
        drop(t);
        assert_eq!(*log.lock().unwrap(), vec!["nack", "nack"]);
    }

    #[test]
    fn watermark_trails_max_event_time() {
        let mut w = Watermark::new(Duration::from_secs(10));
        assert_eq!(w.observe(100_000), Some(90_000));
        assert_eq!(w.observe(50_000), None);
        assert_eq!(w.observe(95_000), None);
        assert_eq!(w.observe(101_000), Some(91_000));
        assert_eq!(w.idle(50_000), None);
        assert_eq!(w.idle(200_000), Some(190_000));
        assert_eq!(w.current(), 190_000);
    }
}
