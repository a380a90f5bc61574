//! The counters of stages that read, acknowledge, write or hold window state, beside the
//! per-stage [`StageStats`](super::operator::StageStats) every stage has. Each is created on
//! first use (`StageStats::source()`, `acks()`, `sink()`, `window()`), so `/metrics` exports a
//! family only for stages of that kind. Everything here is bumped once per batch (or per
//! request to an external system), never per row, and read at scrape time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::operator::EventTime;

/// What every source reports: time spent waiting in `SourceSink::emit`.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Nanoseconds `emit` waited for room in full downstream inboxes (backpressure).
    throttled_nanos: AtomicU64,
    /// Nanoseconds `emit` waited for a closed valve or gate to open.
    paused_nanos: AtomicU64,
}

impl SourceStats {
    pub fn add_throttled(&self, d: Duration) {
        self.throttled_nanos.fetch_add(nanos(d), Relaxed);
    }

    pub fn add_paused(&self, d: Duration) {
        self.paused_nanos.fetch_add(nanos(d), Relaxed);
    }

    pub fn throttled_seconds(&self) -> f64 {
        self.throttled_nanos.load(Relaxed) as f64 / 1e9
    }

    pub fn paused_seconds(&self) -> f64 {
        self.paused_nanos.load(Relaxed) as f64 / 1e9
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Most distinct receive times [`Unacked`] keeps. Each tracked batch holds at least one message,
/// and flow control (`max_outstanding_messages`, 1000 by default) bounds the messages held, so
/// this is rarely reached; beyond it a batch is filed under an earlier time kept, which can only
/// overstate the oldest age, never hide an old message. 1024 entries are ~40 KB at most.
const MAX_TRACKED: usize = 1024;

/// The receive times (ms since the epoch) of batches not yet acknowledged or nacked, with how
/// many batches share each: the oldest is the first key. Pure bookkeeping, O(log n) per batch.
#[derive(Debug, Default)]
pub struct Unacked {
    batches: BTreeMap<EventTime, u32>,
}

impl Unacked {
    /// Tracks a batch received at `received_ms`; returns the key to [`release`](Self::release)
    /// it with. When full, a new time is filed under the newest time kept before it.
    pub fn insert(&mut self, received_ms: EventTime) -> EventTime {
        let key = if self.batches.len() >= MAX_TRACKED {
            // The newest time kept that is not after `received_ms` (normally the newest).
            self.batches
                .range(..=received_ms)
                .next_back()
                .map_or(received_ms, |(&k, _)| k)
        } else {
            received_ms
        };
        *self.batches.entry(key).or_insert(0) += 1;
        key
    }

    /// The batch filed under `key` was acknowledged or nacked.
    pub fn release(&mut self, key: EventTime) {
        if let Some(n) = self.batches.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.batches.remove(&key);
            }
        }
    }

    /// Receive time of the oldest batch still held.
    pub fn oldest(&self) -> Option<EventTime> {
        self.batches.first_key_value().map(|(&k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Messages of a source that acknowledges its input (Pub/Sub): counted per batch when the
/// batch is formed and when its acknowledgement hold is released.
#[derive(Debug, Default)]
pub struct AckStats {
    received: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    /// Messages dropped at the source as copies of one seen within the dedupe horizon.
    duplicates: AtomicU64,
    unacked: Mutex<Unacked>,
}

/// A snapshot of [`AckStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AckCounts {
    pub received: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Received, not yet acknowledged or nacked.
    pub outstanding: u64,
}

impl AckStats {
    /// `n` messages received together at `received_ms` now wait for their acknowledgement;
    /// returns the key to pass to [`released`](Self::released).
    pub fn received(&self, n: usize, received_ms: EventTime) -> EventTime {
        let key = self.lock().insert(received_ms);
        self.received.fetch_add(n as u64, Relaxed);
        key
    }

    /// The `n` messages of the batch received under `key` were acknowledged (or nacked).
    pub fn released(&self, key: EventTime, n: usize, acked: bool) {
        let counter = if acked { &self.acked } else { &self.nacked };
        counter.fetch_add(n as u64, Relaxed);
        self.lock().release(key);
    }

    /// A message was dropped as a duplicate. `settled`: acknowledged (`Some(true)`) or nacked
    /// at once; `None` when it joined its original's hold (counted when that is released).
    pub fn duplicate(&self, settled: Option<bool>) {
        self.received.fetch_add(1, Relaxed);
        self.duplicates.fetch_add(1, Relaxed);
        match settled {
            Some(true) => self.acked.fetch_add(1, Relaxed),
            Some(false) => self.nacked.fetch_add(1, Relaxed),
            None => 0,
        };
    }

    /// Messages dropped at the source as duplicates so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Relaxed)
    }

    /// `n` messages were pulled but nacked before they formed a batch (the run stopped).
    pub fn nacked_unbatched(&self, n: usize) {
        self.received.fetch_add(n as u64, Relaxed);
        self.nacked.fetch_add(n as u64, Relaxed);
    }

    pub fn counts(&self) -> AckCounts {
        // Settled counts first: a batch released between the loads then shows as outstanding
        // for one scrape instead of making `outstanding` negative.
        let acked = self.acked.load(Relaxed);
        let nacked = self.nacked.load(Relaxed);
        let received = self.received.load(Relaxed);
        AckCounts {
            received,
            acked,
            nacked,
            outstanding: received.saturating_sub(acked + nacked),
        }
    }

    /// Seconds since the oldest message still waiting for its acknowledgement was received
    /// (0 when none waits).
    pub fn oldest_unacked_seconds(&self, now_ms: EventTime) -> f64 {
        self.lock()
            .oldest()
            .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Unacked> {
        // The map stays consistent whatever panicked while it was held.
        self.unacked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What every sink reports about its writes to the external system (a file, a store, a topic).
#[derive(Debug)]
pub struct SinkStats {
    /// Time of one write attempt: a request, statement, pipeline or publish round (file sinks:
    /// one batch written to a shard, and the final flush and rename).
    pub write_seconds: Histogram,
    /// Write attempts repeated after a transient failure.
    retries: AtomicU64,
    /// Write attempts that failed (transient or permanent; rows the target rejected as invalid
    /// are data errors, counted in `sluice_errors_total`, not here).
    failures: AtomicU64,
}

impl Default for SinkStats {
    fn default() -> Self {
        SinkStats {
            // 0.5 ms to ~33 s: a local file write or a loopback store answers in well under a
            // millisecond to a few ms, a cloud API in 10-500 ms, and a stalled request runs into
            // the clients' timeouts (10-30 s).
            write_seconds: Histogram::new(exponential_buckets(0.0005, 4.0, 9)),
            retries: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl SinkStats {
    pub fn observe_write(&self, started: std::time::Instant) {
        self.write_seconds.observe(started.elapsed().as_secs_f64());
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }
}

/// The state a windowed aggregation holds, published after every call that changed it.
#[derive(Debug, Default)]
pub struct WindowStats {
    /// (window, key) groups held: windows not yet expired, per key.
    pub groups: AtomicU64,
    /// Estimated bytes of that state (accumulators, keys, holds, map overhead).
    pub state_bytes: AtomicU64,
}

impl WindowStats {
    pub fn set(&self, groups: usize, bytes: usize) {
        self.groups.store(groups as u64, Relaxed);
        self.state_bytes.store(bytes as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_received_acked_nacked_and_outstanding_per_batch() {
        let s = AckStats::default();
        let a = s.received(3, 1_000);
        let b = s.received(2, 1_500);
        let c = s.received(4, 2_000);
        assert_eq!(
            s.counts(),
            AckCounts {
                received: 9,
                acked: 0,
                nacked: 0,
                outstanding: 9
            }
        );
        s.released(b, 2, true);
        s.released(c, 4, false);
        s.nacked_unbatched(1);
        assert_eq!(
            s.counts(),
            AckCounts {
                received: 10,
                acked: 2,
                nacked: 5,
                outstanding: 3
            }
        );
        s.released(a, 3, true);
        assert_eq!(s.counts().outstanding, 0);
        assert_eq!(s.counts().acked, 5);
    }

    #[test]
    fn oldest_unacked_age_follows_the_oldest_batch_still_held() {
        let s = AckStats::default();
        assert_eq!(s.oldest_unacked_seconds(10_000), 0.0);
        let a = s.received(1, 1_000);
        let b = s.received(1, 4_000);
        let b2 = s.received(1, 4_000);
        assert_eq!(s.oldest_unacked_seconds(10_000), 9.0);
        // A newer batch acknowledged first leaves the age alone.
        s.released(b, 1, true);
        assert_eq!(s.oldest_unacked_seconds(10_000), 9.0);
        s.released(a, 1, true);
        assert_eq!(s.oldest_unacked_seconds(10_500), 6.5);
        s.released(b2, 1, false);
        assert_eq!(s.oldest_unacked_seconds(10_500), 0.0);
        // A clock behind the receive time reads 0, not a negative age.
        let _ = s.received(1, 20_000);
        assert_eq!(s.oldest_unacked_seconds(19_000), 0.0);
    }

    #[test]
    fn unacked_is_bounded_and_only_overstates_ages_when_full() {
        let mut u = Unacked::default();
        let keys: Vec<EventTime> = (0..MAX_TRACKED as i64).map(|t| u.insert(t)).collect();
        assert_eq!(u.len(), MAX_TRACKED);
        // Full: a new time is filed under the newest kept (older than it).
        let newest = MAX_TRACKED as i64 - 1;
        assert_eq!(u.insert(50_000), newest);
        // A time already kept is still counted under itself.
        assert_eq!(u.insert(7), 7);
        assert_eq!(u.len(), MAX_TRACKED);
        for k in keys {
            u.release(k);
        }
        u.release(7);
        assert_eq!(u.oldest(), Some(newest));
        u.release(newest);
        assert!(u.is_empty());
        // Releasing an unknown key is harmless.
        u.release(3);
        assert_eq!(u.oldest(), None);
    }

    #[test]
    fn source_and_sink_counters() {
        let s = SourceStats::default();
        s.add_throttled(Duration::from_millis(1500));
        s.add_throttled(Duration::from_millis(250));
        s.add_paused(Duration::from_secs(2));
        assert_eq!(s.throttled_seconds(), 1.75);
        assert_eq!(s.paused_seconds(), 2.0);
        let k = SinkStats::default();
        k.retried();
        k.failed();
        k.failed();
        assert_eq!((k.retries(), k.failures()), (1, 2));
    }
}
