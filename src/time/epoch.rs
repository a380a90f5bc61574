//! Numeric event times: one rule for every place a number becomes an event time
//! (`AssignTimestamps`, `ReadFromPubSub`'s `timestamp_attribute`), and the warning for event
//! times that are implausibly far from now.
//!
//! The rule (docs/windowing.md, "Numbers as event times"): a declared unit (`s`, `ms`, `us`,
//! `ns`) is used as declared; without one (`auto`) a number whose magnitude is below 10^11 is
//! seconds and any other is milliseconds. 10^11 seconds is the year 5138 and 10^11 milliseconds
//! is 1973-03-03, so every present-day time reads correctly in either unit; only milliseconds
//! before March 1973 (and seconds after 5138) need the unit declared.

use std::time::{Duration, Instant};

use arrow::array::Int64Array;

use crate::pipeline::operator::ErrorRoute;

/// The unit of a numeric event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EpochUnit {
    /// Seconds below 10^11 in magnitude, milliseconds otherwise.
    #[default]
    Auto,
    Seconds,
    Millis,
    Micros,
    Nanos,
}

/// Magnitude from which `auto` reads milliseconds (see the module docs).
pub const AUTO_MILLIS_FROM: f64 = 1e11;

impl EpochUnit {
    /// The names accepted in pipeline files.
    pub const NAMES: &'static str = "auto, s, ms, us, ns";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => EpochUnit::Auto,
            "s" => EpochUnit::Seconds,
            "ms" => EpochUnit::Millis,
            "us" => EpochUnit::Micros,
            "ns" => EpochUnit::Nanos,
            _ => return None,
        })
    }

    /// Milliseconds per unit of `v` (`auto` decided by its magnitude).
    fn millis_per_unit(self, magnitude: f64) -> f64 {
        match self {
            EpochUnit::Auto if magnitude < AUTO_MILLIS_FROM => 1000.0,
            EpochUnit::Auto | EpochUnit::Millis => 1.0,
            EpochUnit::Seconds => 1000.0,
            EpochUnit::Micros => 1e-3,
            EpochUnit::Nanos => 1e-6,
        }
    }

    /// `v` in epoch milliseconds, rounded to the millisecond; `None` when it does not fit.
    pub fn float_to_millis(self, v: f64) -> Option<i64> {
        let ms = (v * self.millis_per_unit(v.abs())).round();
        (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64)
    }

    /// `v` in epoch milliseconds, exactly (sub-millisecond units truncated toward −∞); `None`
    /// when it does not fit.
    pub fn int_to_millis(self, v: i64) -> Option<i64> {
        match self {
            EpochUnit::Auto if (v.unsigned_abs() as f64) < AUTO_MILLIS_FROM => v.checked_mul(1000),
            EpochUnit::Auto | EpochUnit::Millis => Some(v),
            EpochUnit::Seconds => v.checked_mul(1000),
            EpochUnit::Micros => Some(v.div_euclid(1000)),
            EpochUnit::Nanos => Some(v.div_euclid(1_000_000)),
        }
    }
}

/// How far from now an event time may be before it is reported: 100 years of 365.25 days.
pub const PLAUSIBLE_MS: i64 = 36_525 * 86_400_000;

/// At most one WARN per this interval per transform; the count covers the quiet time.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Counts event times more than [`PLAUSIBLE_MS`] from now (`sluice_event_time_out_of_range`)
/// and logs a rate-limited WARN. The rows are processed as usual: a time far from now is
/// suspicious (usually a wrong unit), not necessarily wrong, and windowing it is what the data
/// says. docs/windowing.md explains how to route them elsewhere.
#[derive(Debug, Default)]
pub struct RangeGuard {
    last_warn: Option<Instant>,
    unreported: u64,
}

impl RangeGuard {
    /// Checks `times` (epoch ms) against `now_ms`; returns how many were out of range.
    pub fn observe(&mut self, times: &Int64Array, now_ms: i64, errors: &ErrorRoute) -> usize {
        let (lo, hi) = (
            now_ms.saturating_sub(PLAUSIBLE_MS),
            now_ms.saturating_add(PLAUSIBLE_MS),
        );
        // Two vectorised passes answer the common case (all plausible).
        match (arrow::compute::min(times), arrow::compute::max(times)) {
            (Some(min), Some(max)) if min >= lo && max <= hi => return 0,
            (None, _) | (_, None) => return 0,
            _ => {}
        }
        let mut example = None;
        let mut n = 0;
        for t in times.iter().flatten().filter(|t| *t < lo || *t > hi) {
            example.get_or_insert(t);
            n += 1;
        }
        errors
            .stats()
            .event_time_out_of_range
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.unreported += n as u64;
        let due = self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if due && let Some(ms) = example {
            let when = chrono::DateTime::from_timestamp_millis(ms)
                .map_or_else(|| "beyond chrono's range".to_string(), |t| t.to_rfc3339());
            tracing::warn!(
                transform = errors.transform(),
                count = self.unreported,
                example_ms = ms,
                example = %when,
                "Event times more than 100 years from now; they are processed as given. A numeric timestamp in an unexpected unit is the usual cause: declare `unit` (AssignTimestamps) or `timestamp_unit` (ReadFromPubSub)"
            );
            self.last_warn = Some(Instant::now());
            self.unreported = 0;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_reads_present_day_seconds_and_milliseconds_alike() {
        let u = EpochUnit::Auto;
        assert_eq!(u.int_to_millis(1_767_225_600), Some(1_767_225_600_000));
        assert_eq!(u.int_to_millis(1_767_225_600_123), Some(1_767_225_600_123));
        assert_eq!(u.int_to_millis(-5), Some(-5000));
        assert_eq!(u.float_to_millis(1_767_225_659.5), Some(1_767_225_659_500));
        assert_eq!(
            u.float_to_millis(1_767_225_600_123.4),
            Some(1_767_225_600_123)
        );
        // The boundary: 10^11 − 1 is seconds (year 5138), 10^11 is milliseconds (1973).
        assert_eq!(u.int_to_millis(99_999_999_999), Some(99_999_999_999_000));
        assert_eq!(u.int_to_millis(100_000_000_000), Some(100_000_000_000));
    }

    #[test]
    fn declared_units_are_exact() {
        assert_eq!(EpochUnit::Millis.int_to_millis(60_000), Some(60_000));
        assert_eq!(EpochUnit::Seconds.int_to_millis(i64::MAX), None);
        assert_eq!(
            EpochUnit::Micros.int_to_millis(1_767_225_600_123_999),
            Some(1_767_225_600_123)
        );
        assert_eq!(EpochUnit::Micros.int_to_millis(-1), Some(-1));
        assert_eq!(EpochUnit::Nanos.int_to_millis(1_500_000), Some(1));
        assert_eq!(EpochUnit::Seconds.float_to_millis(f64::INFINITY), None);
        assert_eq!(EpochUnit::parse("ms"), Some(EpochUnit::Millis));
        assert_eq!(EpochUnit::parse("minutes"), None);
    }

    #[test]
    fn times_beyond_a_century_from_now_are_counted_and_kept() {
        let stats = std::sync::Arc::new(crate::pipeline::operator::StageStats::default());
        let errors = ErrorRoute::new("Stamp", None, stats.clone());
        let now = 1_767_225_600_000;
        let mut g = RangeGuard::default();
        let fine = Int64Array::from(vec![Some(0), None, Some(now + PLAUSIBLE_MS)]);
        assert_eq!(g.observe(&fine, now, &errors), 0);
        // Milliseconds read as seconds: year 57971.
        let far = Int64Array::from(vec![now, now * 1000, now - PLAUSIBLE_MS - 1]);
        assert_eq!(g.observe(&far, now, &errors), 2);
        assert_eq!(
            g.observe(&far, now, &errors),
            2,
            "rate-limited logs, every row counted"
        );
        assert_eq!(
            stats
                .event_time_out_of_range
                .load(std::sync::atomic::Ordering::Relaxed),
            4
        );
    }
}
