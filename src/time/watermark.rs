//! Watermark generation with bounded out-of-orderness (Flink's strategy, SPEC §4).
//!
//! A watermark `W` promises that no more data with event time `< W` is expected. The generator
//! tracks the largest event time seen and emits `max_seen − max_delay`; when no data arrived for
//! `idle_timeout` of processing time it advances to `max_seen`, so that an idle source does not
//! hold windows open forever. Processing time is injected (`tokio::time::Instant`), so tests run
//! on a paused clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::pipeline::operator::EventTime;

/// Default `max_delay`: how far out of order data may arrive before it counts as late.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct BoundedOutOfOrderness {
    max_delay_ms: i64,
    idle_timeout: Option<Duration>,
    max_seen: Option<EventTime>,
    /// The generated watermark; never decreases.
    current: EventTime,
    last_data: Option<Instant>,
}

impl BoundedOutOfOrderness {
    pub fn new(max_delay: Duration, idle_timeout: Option<Duration>) -> Self {
        BoundedOutOfOrderness {
            max_delay_ms: i64::try_from(max_delay.as_millis()).unwrap_or(i64::MAX),
            idle_timeout,
            max_seen: None,
            current: EventTime::MIN,
            last_data: None,
        }
    }

    /// Records the event times of a batch that arrived at `now`; returns the new watermark.
    pub fn observe(&mut self, max_in_batch: Option<EventTime>, now: Instant) -> EventTime {
        self.last_data = Some(now);
        if let Some(m) = max_in_batch {
            let seen = self.max_seen.map_or(m, |s| s.max(m));
            self.max_seen = Some(seen);
            self.current = self.current.max(seen.saturating_sub(self.max_delay_ms));
        }
        self.current
    }

    /// Called periodically: when idle for `idle_timeout`, advances to the largest event time seen.
    pub fn on_idle_check(&mut self, now: Instant) -> EventTime {
        if let (Some(timeout), Some(last), Some(seen)) =
            (self.idle_timeout, self.last_data, self.max_seen)
            && now.saturating_duration_since(last) >= timeout
        {
            self.current = self.current.max(seen);
        }
        self.current
    }

    pub fn current(&self) -> EventTime {
        self.current
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_trails_the_max_event_time_by_max_delay() {
        let now = Instant::now();
        let mut g = BoundedOutOfOrderness::new(Duration::from_secs(10), None);
        assert_eq!(g.current(), EventTime::MIN);
        assert_eq!(g.observe(Some(100_000), now), 90_000);
        // Out-of-order data does not move it back.
        assert_eq!(g.observe(Some(50_000), now), 90_000);
        assert_eq!(g.observe(None, now), 90_000);
        assert_eq!(g.observe(Some(125_500), now), 115_500);
    }

    #[test]
    fn idle_sources_advance_to_the_max_event_time() {
        let t0 = Instant::now();
        let mut g =
            BoundedOutOfOrderness::new(Duration::from_secs(10), Some(Duration::from_secs(30)));
        g.observe(Some(100_000), t0);
        assert_eq!(g.on_idle_check(t0 + Duration::from_secs(29)), 90_000);
        assert_eq!(g.on_idle_check(t0 + Duration::from_secs(30)), 100_000);
        // Without a timeout nothing moves.
        let mut g = BoundedOutOfOrderness::new(Duration::from_secs(10), None);
        g.observe(Some(100_000), t0);
        assert_eq!(g.on_idle_check(t0 + Duration::from_secs(3600)), 90_000);
    }
}
