//! Exponential backoff for store writes: how long to wait before the next attempt and when to
//! give up. The sinks decide *whether* an error is worth retrying (from its type or SQLSTATE);
//! this module only decides *when*. It is also where retries and failed attempts are counted
//! for `/metrics` (`sluice_sink_retries_total`, `sluice_sink_failures_total`), when the sink
//! hands it its [`SinkStats`].

use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::stats::SinkStats;

/// First wait after a transient failure. Long enough for a pooled connection to be replaced,
/// short enough that a killed connection costs well under a second of latency.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest single wait: a store restarting (Postgres fast shutdown + start, Redis restart) takes
/// a few seconds, so waits beyond that only add latency.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts before the sink fails the run: 100ms·2^k capped at 5s gives about 60s of retrying,
/// which covers a failover or a restart; longer outages stop the pipeline (exit 1) so that an
/// orchestrator restarts it and unacknowledged input is redelivered.
pub const MAX_ATTEMPTS: u32 = 16;

/// The retry state of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    next: Duration,
    max_attempts: u32,
    initial: Duration,
    max: Duration,
    stats: Option<Arc<SinkStats>>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(MAX_ATTEMPTS)
    }
}

impl Backoff {
    pub fn new(max_attempts: u32) -> Self {
        Backoff::with_schedule(INITIAL_BACKOFF, MAX_BACKOFF, max_attempts)
    }

    /// Waits from `initial`, doubling up to `max`, for at most `max_attempts` attempts.
    pub fn with_schedule(initial: Duration, max: Duration, max_attempts: u32) -> Self {
        Backoff {
            attempt: 0,
            next: initial,
            max_attempts: max_attempts.max(1),
            initial,
            max,
            stats: None,
        }
    }

    /// Counts failed attempts and retries into `stats`.
    pub fn counting(mut self, stats: Arc<SinkStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Records a failed attempt: the wait before the next one, or `None` when the budget is
    /// spent. Doubling, capped at the schedule's maximum ([`MAX_BACKOFF`] by default).
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.attempt += 1;
        if let Some(s) = &self.stats {
            s.failed();
        }
        if self.attempt >= self.max_attempts {
            return None;
        }
        if let Some(s) = &self.stats {
            s.retried();
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }

    /// Records a failed attempt that is not retried (the error is permanent).
    pub fn fail_permanently(&self) {
        if let Some(s) = &self.stats {
            s.failed();
        }
    }

    /// Records a success: the next failure starts from the initial wait again.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_gives_up() {
        let mut b = Backoff::new(10);
        let waits: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(waits.len(), 9);
        assert_eq!(waits[0], Duration::from_millis(100));
        assert_eq!(waits[1], Duration::from_millis(200));
        assert_eq!(waits[5], Duration::from_millis(3200));
        assert_eq!(waits[6], MAX_BACKOFF);
        assert_eq!(waits[8], MAX_BACKOFF);
        b.reset();
        assert_eq!(b.next_delay(), Some(INITIAL_BACKOFF));
    }

    #[test]
    fn counts_failed_attempts_and_retries() {
        let stats = Arc::new(SinkStats::default());
        let mut b =
            Backoff::with_schedule(Duration::from_millis(200), Duration::from_millis(500), 4)
                .counting(stats.clone());
        let waits: Vec<_> = std::iter::from_fn(|| b.next_delay()).collect();
        assert_eq!(
            waits,
            [200, 400, 500].map(Duration::from_millis).to_vec(),
            "capped at the schedule's maximum"
        );
        // Four failed attempts, three of them retried; then one permanent failure.
        assert_eq!((stats.retries(), stats.failures()), (3, 4));
        b.fail_permanently();
        assert_eq!((stats.retries(), stats.failures()), (3, 5));
        b.reset();
        assert_eq!(b.next_delay(), Some(Duration::from_millis(200)));
    }

    #[test]
    fn default_budget_is_about_a_minute() {
        let mut b = Backoff::default();
        let total: Duration = std::iter::from_fn(|| b.next_delay()).sum();
        assert!(total > Duration::from_secs(45) && total < Duration::from_secs(75));
    }
}
