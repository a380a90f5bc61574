//! Window assignment (fixed, sliding, sessions, global) and session merging, on event times in
//! milliseconds. Semantics follow Beam (verified on the DirectRunner, see
//! `tools/beam-reference/NOTES.md`): fixed and sliding windows are aligned on the epoch plus
//! `offset`; sliding windows start before the data; session windows merge only when they overlap
//! (windows that merely touch stay separate).

use crate::config::window::WindowKind;
use crate::pipeline::operator::{END_OF_TIME, EventTime};

/// A window `[start, end)` in milliseconds. The global window is `[i64::MIN, i64::MAX)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub start: EventTime,
    pub end: EventTime,
}

impl Window {
    pub const GLOBAL: Window = Window {
        start: EventTime::MIN,
        end: END_OF_TIME,
    };

    pub fn new(start: EventTime, end: EventTime) -> Self {
        Window { start, end }
    }

    pub fn is_global(&self) -> bool {
        *self == Window::GLOBAL
    }

    /// The largest timestamp inside the window (Beam's `max_timestamp`): what aggregated output
    /// rows carry as event time.
    pub fn max_timestamp(&self) -> EventTime {
        self.end.saturating_sub(1)
    }

    /// Whether the windows share at least one instant (touching windows do not).
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }

    pub fn span(&self, other: &Window) -> Window {
        Window::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// Start of the window of `size` (aligned on `offset`) that contains `ts`.
fn aligned_start(ts: EventTime, size: i64, offset: i64) -> EventTime {
    // rem_euclid keeps the alignment right for timestamps before the epoch.
    ts - (ts - offset).rem_euclid(size)
}

/// The windows `ts` belongs to, in increasing order of start. Sessions give the proto-window
/// `[ts, ts + gap)`, to be merged with [`merge_sessions`].
pub fn assign(kind: &WindowKind, ts: EventTime) -> Vec<Window> {
    let mut out = Vec::with_capacity(1);
    assign_into(kind, ts, &mut out);
    out
}

/// [`assign`] into a reused buffer (cleared first): no allocation per element on hot paths.
pub fn assign_into(kind: &WindowKind, ts: EventTime, out: &mut Vec<Window>) {
    out.clear();
    match *kind {
        WindowKind::Global => out.push(Window::GLOBAL),
        WindowKind::Fixed { size_ms, offset_ms } => {
            let start = aligned_start(ts, size_ms, offset_ms);
            out.push(Window::new(start, start.saturating_add(size_ms)));
        }
        WindowKind::Sliding {
            size_ms,
            period_ms,
            offset_ms,
        } => {
            let last = aligned_start(ts, period_ms, offset_ms);
            let mut start = last;
            while start > ts.saturating_sub(size_ms) {
                out.push(Window::new(start, start.saturating_add(size_ms)));
                start -= period_ms;
            }
            out.reverse();
        }
        WindowKind::Sessions { gap_ms } => out.push(Window::new(ts, ts.saturating_add(gap_ms))),
    }
}

/// Merges overlapping windows (Beam's `MergeOverlappingIntervalWindows`): returns the merged
/// windows and, for each, the indices of the input windows it covers. Sorted by start.
pub fn merge_sessions(windows: &[Window]) -> Vec<(Window, Vec<usize>)> {
    let mut idx: Vec<usize> = (0..windows.len()).collect();
    idx.sort_by_key(|&i| windows[i]);
    let mut out: Vec<(Window, Vec<usize>)> = Vec::new();
    for i in idx {
        let w = windows[i];
        match out.last_mut() {
            Some((cur, members)) if cur.overlaps(&w) => {
                *cur = cur.span(&w);
                members.push(i);
            }
            _ => out.push((w, vec![i])),
        }
    }
    out
}

/// Merging new windows of one key into its existing sessions.
pub struct SessionMerge {
    /// Per new window, the session it now belongs to.
    pub target: Vec<Window>,
    /// Each session that is new or grew, with the existing sessions it absorbed (none for a
    /// brand-new session). Sessions left as they were are not listed.
    pub changed: Vec<(Window, Vec<Window>)>,
}

/// Merges the session proto-windows `protos` of one key into its `existing` sessions; both
/// `Combine` and windowed `Sql` then move their state from the absorbed sessions to the merged one.
pub fn session_merge(existing: &[Window], protos: &[Window]) -> SessionMerge {
    let mut all = existing.to_vec();
    all.extend_from_slice(protos);
    let mut target = vec![Window::GLOBAL; protos.len()];
    let mut changed = Vec::new();
    for (w, members) in merge_sessions(&all) {
        let olds: Vec<Window> = members
            .iter()
            .filter(|&&i| i < existing.len())
            .map(|&i| existing[i])
            .collect();
        for &i in &members {
            if i >= existing.len() {
                target[i - existing.len()] = w;
            }
        }
        if !(olds.len() == 1 && olds[0] == w) {
            changed.push((w, olds));
        }
    }
    SessionMerge { target, changed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn new_windows_join_grow_or_open_sessions_and_unchanged_ones_are_not_listed() {
        let w = Window::new;
        let existing = [w(0, 10), w(100, 110)];
        let m = session_merge(&existing, &[w(5, 15), w(30, 40), w(102, 108)]);
        assert_eq!(m.target, vec![w(0, 15), w(30, 40), w(100, 110)]);
        assert_eq!(
            m.changed,
            vec![(w(0, 15), vec![w(0, 10)]), (w(30, 40), vec![])]
        );
        // A bridge between two sessions absorbs both.
        let m = session_merge(&[w(0, 10), w(12, 20)], &[w(8, 14)]);
        assert_eq!(m.target, vec![w(0, 20)]);
        assert_eq!(m.changed, vec![(w(0, 20), vec![w(0, 10), w(12, 20)])]);
    }

    #[test]
    fn fixed_windows_align_on_the_epoch_and_offset() {
        let k = WindowKind::Fixed {
            size_ms: MIN,
            offset_ms: 0,
        };
        assert_eq!(assign(&k, 59_999), vec![Window::new(0, MIN)]);
        assert_eq!(assign(&k, 60_000), vec![Window::new(MIN, 2 * MIN)]);
        assert_eq!(assign(&k, -1), vec![Window::new(-MIN, 0)]);
        let k = WindowKind::Fixed {
            size_ms: MIN,
            offset_ms: 10_000,
        };
        assert_eq!(assign(&k, 5_000), vec![Window::new(-50_000, 10_000)]);
        assert_eq!(assign(&k, 10_000), vec![Window::new(10_000, 70_000)]);
    }

    #[test]
    fn sliding_windows_start_before_the_data() {
        let k = WindowKind::Sliding {
            size_ms: MIN,
            period_ms: 30_000,
            offset_ms: 0,
        };
        // 2026-01-01T00:00:05Z is in [23:59:30, 00:00:30) and [00:00:00, 00:01:00).
        let t0 = 1_767_225_600_000;
        assert_eq!(
            assign(&k, t0 + 5_000),
            vec![
                Window::new(t0 - 30_000, t0 + 30_000),
                Window::new(t0, t0 + MIN)
            ]
        );
        assert_eq!(
            assign(&k, t0 + 30_000),
            vec![
                Window::new(t0, t0 + MIN),
                Window::new(t0 + 30_000, t0 + 90_000)
            ]
        );
        // Period larger than size: some timestamps fall in no window.
        let gaps = WindowKind::Sliding {
            size_ms: 10,
            period_ms: 30,
            offset_ms: 0,
        };
        assert_eq!(assign(&gaps, 5), vec![Window::new(0, 10)]);
        assert!(assign(&gaps, 15).is_empty());
    }

    #[test]
    fn sessions_merge_only_when_overlapping() {
        let w = |s| Window::new(s, s + 30);
        // Touching windows [42,72) and [72,102) stay apart.
        let merged = merge_sessions(&[w(42), w(72)]);
        assert_eq!(merged.len(), 2);
        // An element between two sessions bridges them: 5, 50, then 34 → [5, 80).
        let merged = merge_sessions(&[w(5), w(50), w(34)]);
        assert_eq!(merged, vec![(Window::new(5, 80), vec![0, 2, 1])]);
    }

    #[test]
    fn global_window_has_no_end() {
        assert_eq!(assign(&WindowKind::Global, 42), vec![Window::GLOBAL]);
        assert!(Window::GLOBAL.is_global());
        assert_eq!(Window::new(0, MIN).max_timestamp(), MIN - 1);
    }
}
