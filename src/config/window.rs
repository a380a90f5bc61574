//! `windowing:` specs: Beam YAML's fixed / sliding / sessions / global windows, plus Sluice's
//! lateness, trigger and accumulation extensions.

use std::time::Duration;

use marked_yaml::Node;

use super::diag::{Reporter, suggest};
use super::yaml::{Located, MapReader, pos_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Global,
    /// Tumbling windows `[offset + k*size, offset + (k+1)*size)`.
    Fixed {
        size_ms: i64,
        offset_ms: i64,
    },
    /// Windows of `size` starting every `period`.
    Sliding {
        size_ms: i64,
        period_ms: i64,
        offset_ms: i64,
    },
    /// Per-key activity windows that merge when closer than `gap`.
    Sessions {
        gap_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    pub kind: WindowKind,
    pub allowed_lateness_ms: i64,
    /// Fire EARLY panes at this processing-time interval while a window is open.
    pub early_every: Option<Duration>,
    /// Fire a LATE pane for data that arrives within the allowed lateness.
    pub late_panes: bool,
    /// Later panes include earlier data (accumulating) or only the new data (discarding).
    pub accumulating: bool,
}

impl Windowing {
    pub fn global() -> Self {
        Windowing {
            kind: WindowKind::Global,
            allowed_lateness_ms: 0,
            early_every: None,
            late_panes: true,
            accumulating: false,
        }
    }

    /// Whether an aggregation over this windowing emits per window, before its input ends:
    /// windows other than the global one, or the global window with early panes. (The global
    /// window without triggers fires once, at the end: the whole input.)
    pub fn is_windowed(&self) -> bool {
        self.kind != WindowKind::Global || self.early_every.is_some()
    }
}

const KEYS: &[&str] = &[
    "type",
    "size",
    "period",
    "offset",
    "gap",
    "allowed_lateness",
    "trigger",
    "accumulation",
];
const TYPES: &[&str] = &["fixed", "sliding", "sessions", "global"];

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn parse_windowing(node: &Node, rep: &mut Reporter) -> Option<Located<Windowing>> {
    let pos = pos_of(node);
    let mut r = MapReader::new(Some(node), pos, "`windowing`", KEYS, rep);
    let ty = r.required_string("type", rep);
    let size = r.duration("size", rep).map(ms);
    let period = r.duration("period", rep).map(ms);
    let offset = r.duration("offset", rep).map(ms).unwrap_or(0);
    let gap = r.duration("gap", rep).map(ms);
    let lateness = r.duration("allowed_lateness", rep).map(ms).unwrap_or(0);
    let mut w = Windowing {
        allowed_lateness_ms: lateness,
        late_panes: lateness > 0,
        ..Windowing::global()
    };
    if let Some(t) = r.node("trigger") {
        let mut tr = MapReader::new(
            Some(t),
            pos_of(t),
            "`trigger`",
            &["early_every", "late"],
            rep,
        );
        w.early_every = tr.duration("early_every", rep);
        w.late_panes = tr.bool("late", w.late_panes, rep);
        tr.finish(rep);
    }
    if let Some(a) = r.string("accumulation", rep) {
        w.accumulating = match a.value.as_str() {
            "accumulating" => true,
            "discarding" => false,
            other => {
                rep.error(
                    a.pos,
                    format!("unknown accumulation mode `{other}`"),
                    Some(suggest(other, &["accumulating", "discarding"])),
                );
                false
            }
        };
    }
    let ty = ty?;
    let ty_name = ty.value.clone();
    let need = |v: Option<i64>, key: &str, rep: &mut Reporter| -> i64 {
        match v {
            Some(v) if v > 0 => v,
            Some(_) => {
                rep.error(pos, format!("`{key}` must be greater than zero"), None);
                1
            }
            None => {
                rep.error(pos, format!("{ty_name} windows need `{key}`"), None);
                1
            }
        }
    };
    w.kind = match ty.value.as_str() {
        "global" => WindowKind::Global,
        "fixed" => WindowKind::Fixed {
            size_ms: need(size, "size", rep),
            offset_ms: offset,
        },
        "sliding" => {
            let size_ms = need(size, "size", rep);
            let period_ms = need(period, "period", rep);
            WindowKind::Sliding {
                size_ms,
                // An invalid period (already reported) counts as one window per element, so
                // the windows-per-element limit does not report it a second time.
                period_ms: if matches!(period, Some(p) if p > 0) {
                    period_ms
                } else {
                    size_ms
                },
                offset_ms: offset,
            }
        }
        "sessions" => WindowKind::Sessions {
            gap_ms: need(gap, "gap", rep),
        },
        other => {
            rep.error(
                ty.pos,
                format!("unknown window type `{other}`"),
                Some(suggest(other, TYPES)),
            );
            return None;
        }
    };
    let allowed = match ty.value.as_str() {
        "global" => &[][..],
        "fixed" => &["size", "offset"][..],
        "sliding" => &["size", "period", "offset"][..],
        _ => &["gap"][..],
    };
    for key in ["size", "period", "offset", "gap"] {
        if r.has(key) && !allowed.contains(&key) {
            rep.error(
                pos,
                format!("`{key}` does not apply to {} windows", ty.value),
                None,
            );
        }
    }
    r.finish(rep);
    Some(Located::new(w, pos))
}
