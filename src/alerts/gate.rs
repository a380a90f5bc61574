//! Which alerts go out: dedup by `dedup_key` within `repeat_after`, and a rate limit per target
//! URL. Pure bookkeeping on injected instants, so it is tested without clocks or sockets.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most this many alerts per target URL within [`RATE_WINDOW`]. Slack allows about one
/// message per second per incoming webhook with short bursts; 20 a minute stays well inside
/// that and is already more than anyone reads in a channel.
pub const RATE_LIMIT: usize = 20;
/// The sliding window of [`RATE_LIMIT`].
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What to do with one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The URLs to deliver to now.
    pub send_to: Vec<String>,
    /// How many deliveries (alert × URL) were suppressed by this decision.
    pub suppressed: u64,
    /// Alerts with this key suppressed since the last one was sent (reported with this one).
    pub suppressed_before: u64,
}

/// Dedup and rate-limit state, shared by every alert of a process.
#[derive(Debug, Default)]
pub struct Gate {
    /// When an alert with this key was last sent. Keys name a Check or a transform, so the
    /// map stays as small as the pipeline.
    last_sent: HashMap<String, Instant>,
    /// Alerts with this key suppressed since one was last sent.
    pending: HashMap<String, u64>,
    /// Send times per URL within the last [`RATE_WINDOW`].
    recent: HashMap<String, VecDeque<Instant>>,
}

impl Gate {
    /// Decides about an alert with `key` for `urls` at `now`, and records the decision.
    pub fn admit(
        &mut self,
        now: Instant,
        key: &str,
        repeat_after: Duration,
        urls: &[&str],
    ) -> Admission {
        let deduped = self
            .last_sent
            .get(key)
            .is_some_and(|&at| now.saturating_duration_since(at) < repeat_after);
        if deduped {
            *self.pending.entry(key.to_string()).or_default() += 1;
            return Admission {
                send_to: Vec::new(),
                suppressed: urls.len() as u64,
                suppressed_before: 0,
            };
        }
        let mut send_to = Vec::new();
        for &url in urls {
            let times = self.recent.entry(url.to_string()).or_default();
            while times
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= RATE_WINDOW)
            {
                times.pop_front();
            }
            if times.len() < RATE_LIMIT {
                times.push_back(now);
                send_to.push(url.to_string());
            }
        }
        let suppressed = (urls.len() - send_to.len()) as u64;
        if send_to.is_empty() {
            *self.pending.entry(key.to_string()).or_default() += 1;
            return Admission {
                send_to,
                suppressed,
                suppressed_before: 0,
            };
        }
        self.last_sent.insert(key.to_string(), now);
        Admission {
            send_to,
            suppressed,
            suppressed_before: self.pending.remove(key).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn same_key_within_repeat_after_is_suppressed_and_counted_on_the_next_send() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        let a = g.admit(t0, "k", 10 * MIN, &["u"]);
        assert_eq!(
            (a.send_to, a.suppressed, a.suppressed_before),
            (vec!["u".to_string()], 0, 0)
        );
        for s in [1, 5, 9] {
            let a = g.admit(t0 + s * MIN, "k", 10 * MIN, &["u"]);
            assert_eq!((a.send_to.len(), a.suppressed), (0, 1));
        }
        // Another key is independent.
        assert_eq!(
            g.admit(t0 + MIN, "other", 10 * MIN, &["u"]).send_to.len(),
            1
        );
        let a = g.admit(t0 + 10 * MIN, "k", 10 * MIN, &["u"]);
        assert_eq!((a.send_to.len(), a.suppressed_before), (1, 3));
        // The count restarts after it was reported.
        let a = g.admit(t0 + 21 * MIN, "k", 10 * MIN, &["u"]);
        assert_eq!((a.send_to.len(), a.suppressed_before), (1, 0));
    }

    #[test]
    fn each_url_takes_at_most_the_rate_limit_per_window() {
        let t0 = Instant::now();
        let mut g = Gate::default();
        let ms = Duration::from_millis;
        for i in 0..RATE_LIMIT as u64 {
            let a = g.admit(t0 + ms(i), &format!("k{i}"), MIN, &["slack", "hook"]);
            assert_eq!(a.send_to.len(), 2);
        }
        // "slack" is full; a fresh URL is not.
        let a = g.admit(t0 + ms(100), "k-extra", MIN, &["slack", "fresh"]);
        assert_eq!((a.send_to, a.suppressed), (vec!["fresh".to_string()], 1));
        let a = g.admit(t0 + ms(200), "k-late", MIN, &["slack"]);
        assert_eq!((a.send_to.len(), a.suppressed), (0, 1));
        // A minute after the first send one slot is free again; the limited key reports itself.
        let a = g.admit(t0 + MIN, "k-late", MIN, &["slack"]);
        assert_eq!((a.send_to.len(), a.suppressed_before), (1, 1));
        let a = g.admit(t0 + MIN, "k-next", MIN, &["slack"]);
        assert_eq!(a.send_to.len(), 0, "slot 2 frees only at t0 + 1min + 1ms");
    }
}
