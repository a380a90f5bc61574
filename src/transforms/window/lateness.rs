//! Which data is too late for a window, and how that is said: shared by the windowed
//! aggregations (`Combine`, and `Sql` per window).
//!
//! A window `[start, end)` closes when the watermark reaches `end` (its ON_TIME pane fires) and
//! expires when the watermark passes `end + allowed_lateness` (its state is dropped). Data for a
//! closed window is a LATE pane when late panes are on; data for an expired window, or for a
//! closed one without late panes, is rejected to the error output.

use crate::config::window::Windowing;
use crate::pipeline::operator::{END_OF_TIME, EventTime};
use crate::time::Window;

/// The window's state is past `end + allowed_lateness` (the global window never expires).
pub fn is_expired(windowing: &Windowing, watermark: EventTime, w: &Window) -> bool {
    !w.is_global() && w.end.saturating_add(windowing.allowed_lateness_ms) <= watermark
}

/// The watermark reached the window's end: its ON_TIME pane fired.
pub fn is_closed(watermark: EventTime, w: &Window) -> bool {
    w.end <= watermark
}

/// Too late for `w`: past the allowed lateness, or its window fired and late panes are off.
pub fn rejects(windowing: &Windowing, watermark: EventTime, w: &Window) -> bool {
    is_expired(windowing, watermark, w) || (is_closed(watermark, w) && !windowing.late_panes)
}

/// The error message for a row at `ts` rejected from `w`.
pub fn late_message(
    windowing: &Windowing,
    watermark: EventTime,
    ts: EventTime,
    w: &Window,
) -> String {
    format!(
        "late data: event time {} is in window [{}, {}), which closed at watermark {} (allowed lateness {}ms{}); the row was dropped",
        fmt_time(ts),
        fmt_time(w.start),
        fmt_time(w.end),
        fmt_time(watermark),
        windowing.allowed_lateness_ms,
        if windowing.late_panes {
            ""
        } else {
            ", late panes off"
        }
    )
}

/// RFC 3339 with milliseconds; `-∞` / `+∞` for the ends of time.
pub fn fmt_time(ms: EventTime) -> String {
    if ms == EventTime::MIN {
        return "-∞".into();
    }
    if ms == END_OF_TIME {
        return "+∞".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}
