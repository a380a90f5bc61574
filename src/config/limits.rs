//! `options.limits` (Sluice extension): bounds on what one pipeline file may ask for, checked by
//! `validate` with the position of the setting. Each has a default a user can raise.
//!
//! Before these, `windowing: {type: sliding, size: 1d, period: 1ms}` passed `validate` and a run
//! over two rows aborted on a 1.6 GB allocation (every element is copied into each of its 86.4
//! million windows), and `WriteToJson` with `num_shards: 10000000` wrote 78,000 empty files in 30
//! seconds. (The pipeline file's own size is bounded in `config::source`.)

use marked_yaml::Node;

use super::components::{FileSink, TransformConfig};
use super::diag::{Pos, Reporter};
use super::window::WindowKind;
use super::yaml::{Located, MapReader};
use super::{TransformSpec, Windowing};

/// Default `max_windows_per_element`. A sliding window of 1h every 5s puts an element in 720
/// windows; at 1,000, one source batch (8,192 rows) becomes at most 8.2 million windowed rows.
pub const DEFAULT_MAX_WINDOWS_PER_ELEMENT: u64 = 1_000;

/// Default `max_shards` for file sinks: the bound `WriteToPubSub`'s `shard.count` has
/// (`pubsub::config::MAX_SHARDS`). Every shard is a file per window pane, written even when
/// empty (as Beam does).
pub const DEFAULT_MAX_SHARDS: u64 = 1_024;

const KEYS: &[&str] = &["max_windows_per_element", "max_shards"];

/// The limits in force for one pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most windows one element may be assigned to (sliding windows: ⌈size / period⌉).
    pub max_windows_per_element: u64,
    /// The most files a file sink may write per window pane (`num_shards`).
    pub max_shards: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_windows_per_element: DEFAULT_MAX_WINDOWS_PER_ELEMENT,
            max_shards: DEFAULT_MAX_SHARDS,
        }
    }
}

/// Reads `options.limits`; unset keys keep their defaults.
pub fn parse(node: Option<&Node>, fallback: Pos, rep: &mut Reporter) -> Limits {
    let mut limits = Limits::default();
    if node.is_none() {
        return limits;
    }
    let mut r = MapReader::new(node, fallback, "`options.limits`", KEYS, rep);
    if let Some(v) = r.u64("max_windows_per_element", rep) {
        limits.max_windows_per_element = v.max(1);
    }
    if let Some(v) = r.u64("max_shards", rep) {
        limits.max_shards = v.max(1);
    }
    r.finish(rep);
    limits
}

/// How many windows one element is assigned to.
pub fn windows_per_element(kind: &WindowKind) -> u64 {
    match *kind {
        WindowKind::Sliding {
            size_ms, period_ms, ..
        } if size_ms > 0 && period_ms > 0 => (size_ms as u64).div_ceil(period_ms as u64),
        _ => 1,
    }
}

/// Reports every transform whose windowing or sink exceeds `limits`.
pub fn check(transforms: &[TransformSpec], limits: &Limits, rep: &mut Reporter) {
    for t in transforms {
        if let Some(w) = &t.windowing {
            check_windowing(w, limits, rep);
        }
        match &t.config {
            TransformConfig::WindowInto { windowing } => check_windowing(windowing, limits, rep),
            TransformConfig::WriteToJson(s) | TransformConfig::WriteToParquet(s) => {
                check_sink(s, limits, rep)
            }
            TransformConfig::WriteToCsv { sink, .. } => check_sink(sink, limits, rep),
            _ => {}
        }
    }
}

fn check_windowing(w: &Located<Windowing>, limits: &Limits, rep: &mut Reporter) {
    let n = windows_per_element(&w.value.kind);
    if n <= limits.max_windows_per_element {
        return;
    }
    let WindowKind::Sliding {
        size_ms, period_ms, ..
    } = w.value.kind
    else {
        return;
    };
    rep.error(
        w.pos,
        format!(
            "sliding windows of {} every {} put each element in {n} windows, more than the limit of {}",
            millis(size_ms),
            millis(period_ms),
            limits.max_windows_per_element
        ),
        Some(format!(
            "each element is copied into every window it belongs to (size / period); use a longer `period` or a shorter `size`, or raise `options.limits.max_windows_per_element` (at least {n})"
        )),
    );
}

fn check_sink(s: &FileSink, limits: &Limits, rep: &mut Reporter) {
    if s.num_shards as u64 <= limits.max_shards {
        return;
    }
    rep.error(
        s.num_shards_pos.unwrap_or(s.path.pos),
        format!(
            "`num_shards: {}` is more than the limit of {} files per window pane",
            s.num_shards, limits.max_shards
        ),
        Some(format!(
            "every shard is a file, written even when empty; a few shards per writer are plenty (or leave `num_shards` out: 1), or raise `options.limits.max_shards` (at least {})",
            s.num_shards
        )),
    );
}

/// A duration in the units a user wrote it in, e.g. `1d`, `90s`, `1ms`.
fn millis(ms: i64) -> String {
    const UNITS: &[(i64, &str)] = &[
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (unit, name) in UNITS {
        if ms >= *unit && ms % unit == 0 {
            return format!("{}{name}", ms / unit);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_count_size_over_period_rounded_up() {
        let sliding = |size_ms, period_ms| WindowKind::Sliding {
            size_ms,
            period_ms,
            offset_ms: 0,
        };
        assert_eq!(windows_per_element(&sliding(86_400_000, 1)), 86_400_000);
        assert_eq!(windows_per_element(&sliding(3_600_000, 5_000)), 720);
        assert_eq!(windows_per_element(&sliding(10, 3)), 4);
        assert_eq!(windows_per_element(&sliding(10, 30)), 1);
        assert_eq!(millis(86_400_000), "1d");
        assert_eq!(millis(90_000), "90s");
        assert_eq!(millis(1), "1ms");
    }
}
