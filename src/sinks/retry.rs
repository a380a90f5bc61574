//! Exponential backoff for store writes: how long to wait before the next attempt and when to
//! give up. The sinks decide *whether* an error is worth retrying (from its type or SQLSTATE);
//! this module only decides *when*.

use std::time::Duration;

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
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(MAX_ATTEMPTS)
    }
}

impl Backoff {
    pub fn new(max_attempts: u32) -> Self {
        Backoff {
            attempt: 0,
            next: INITIAL_BACKOFF,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Records a failed attempt: the wait before the next one, or `None` when the budget is
    /// spent. Doubling, capped at [`MAX_BACKOFF`].
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.attempt += 1;
        if self.attempt >= self.max_attempts {
            return None;
        }
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        Some(d)
    }

    /// Records a success: the next failure starts from the initial wait again.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.next = INITIAL_BACKOFF;
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
    fn default_budget_is_about_a_minute() {
        let mut b = Backoff::default();
        let total: Duration = std::iter::from_fn(|| b.next_delay()).sum();
        assert!(total > Duration::from_secs(45) && total < Duration::from_secs(75));
    }
}
