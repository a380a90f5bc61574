//! Acknowledgement holds for pulled messages, and the source watermark: pure bookkeeping, no I/O.
//!
//! [`MessageAcks`] is the [`Hold`] a `ReadFromPubSub` batch carries (wrapped in an
//! [`AckToken`](crate::record::AckToken)). Every batch derived from those messages holds a
//! clone; when the last one is gone (written by every sink, filtered out, or committed to a
//! Combine's state), the runner's release task calls [`Hold::release`] with the final status:
//! delivered acknowledges the messages, failed (the run failed, or output was kept unwritten)
//! nacks them, so they are redelivered and nothing unwritten is acknowledged.

use std::sync::{Arc, Mutex, Weak};

use crate::pipeline::EventTime;
use crate::pipeline::stats::AckStats;
use crate::record::{AckStatus, Hold};

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

/// The handlers of one emitted batch. Copies of its messages pulled later join them until the
/// batch is released ([`Handlers::adopt`]); the source's ledger keeps a `Weak` to find them.
#[derive(Default)]
pub struct Handlers(Mutex<Option<Vec<Box<dyn Ackable>>>>);

impl Handlers {
    fn new(handlers: Vec<Box<dyn Ackable>>) -> Self {
        Handlers(Mutex::new(Some(handlers)))
    }

    /// Adds the handler of a duplicate copy of a held message: it is acknowledged (or nacked)
    /// with this batch. Gives the handler back when the batch was already released.
    pub fn adopt(&self, handler: Box<dyn Ackable>) -> Result<(), Box<dyn Ackable>> {
        match self.0.lock() {
            Ok(mut h) => match h.as_mut() {
                Some(h) => {
                    h.push(handler);
                    Ok(())
                }
                None => Err(handler),
            },
            Err(_) => Err(handler),
        }
    }

    fn take(&self) -> Vec<Box<dyn Ackable>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }
}

/// The acknowledgement hold of one emitted batch of messages. It also keeps the source's
/// message counters: received when created, acknowledged or nacked (by the batch's size) when
/// released, and the batch's receive time until then (for the oldest unacknowledged age).
pub struct MessageAcks {
    handlers: Arc<Handlers>,
    stats: Arc<AckStats>,
    /// The batch's key in `stats` (its receive time).
    received: EventTime,
    /// The message ids (ledger keys) of the batch and where to report their release, for the
    /// source's durable ledger (`pubsub::ledger`).
    ids: Option<(Vec<u128>, super::ledger::Released)>,
}

impl Hold for MessageAcks {
    fn release(self: Box<Self>, status: AckStatus) {
        let handlers = self.handlers.take();
        let n = handlers.len();
        let acked = status == AckStatus::Delivered;
        if let Some((ids, released)) = self.ids {
            released
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(ids.into_iter().map(|id| (id, acked)));
        }
        if acked {
            handlers.into_iter().for_each(|h| h.ack());
        } else {
            tracing::debug!(
                messages = n,
                "Run failed or output kept unwritten: nacking held messages"
            );
            handlers.into_iter().for_each(|h| h.nack());
        }
        self.stats.released(self.received, n, acked);
    }
}

impl MessageAcks {
    /// Holds `handlers`, received at `received_ms` (when the batch's first message arrived).
    pub fn new(
        handlers: Vec<Box<dyn Ackable>>,
        stats: Arc<AckStats>,
        received_ms: EventTime,
    ) -> Self {
        let received = stats.received(handlers.len(), received_ms);
        MessageAcks {
            handlers: Arc::new(Handlers::new(handlers)),
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

    /// Where copies of these messages join them, for the ledger (gone once released).
    pub fn handlers(&self) -> Weak<Handlers> {
        Arc::downgrade(&self.handlers)
    }

    #[cfg(test)]
    pub fn for_test() -> Self {
        MessageAcks::new(Vec::new(), Arc::default(), 0)
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
    use std::sync::atomic::AtomicBool;
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

    use std::sync::atomic::Ordering;

    fn counted_token(
        log: &Arc<Mutex<Vec<&'static str>>>,
        failed: &Arc<AtomicBool>,
        stats: &Arc<AckStats>,
        received_ms: EventTime,
        messages: usize,
    ) -> crate::record::AckToken {
        crate::record::Ack::new(
            MessageAcks::new(
                (0..messages)
                    .map(|_| Box::new(Probe(log.clone())) as Box<dyn Ackable>)
                    .collect(),
                stats.clone(),
                received_ms,
            ),
            &crate::record::Releaser::inline(failed.clone()),
        )
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
        crate::record::AckSet::one(copy.clone()).abandon();
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
