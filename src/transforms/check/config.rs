//! `Check`'s configuration (Sluice extension, SPEC §3): the rules, what a failure does, where
//! alerts go. Parsed with positions so `validate` reports `file:line:col` for each mistake.

use std::time::Duration;

use marked_yaml::Node;

use crate::alerts::AlertTargets;
use crate::config::diag::{Pos, Reporter, suggest};
use crate::config::exprs::{ExprKind, ExprSpec};
use crate::config::yaml::{Located, MapReader, pos_of, string_list, to_json};

pub const KEYS: &[&str] = &[
    "columns",
    "row_count",
    "volume_change",
    "not_null",
    "unique",
    "expression",
    "on_failure",
    "alert",
    "retry_after",
    "every",
];

/// Column type families `columns:` can name (Arrow types group into these).
pub const TYPE_NAMES: &[&str] = &[
    "string",
    "int64",
    "float64",
    "bool",
    "timestamp",
    "date",
    "bytes",
    "decimal",
    "list",
    "struct",
    "map",
];

#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    /// The exact column set, in any order; with a type family per column when given as a mapping.
    pub columns: Option<Vec<(String, Option<String>)>>,
    pub row_count: Option<Bounds>,
    pub volume_change: Option<VolumeChange>,
    pub not_null: Vec<String>,
    pub unique: Vec<String>,
    /// A SQL predicate every row must satisfy (null counts as failing).
    pub expression: Option<ExprSpec>,
    pub on_failure: OnFailure,
    pub alert: Option<AlertTargets>,
    /// With `halt`: after this long closed, let data in and re-check; a pass reopens the valve.
    pub retry_after: Option<Duration>,
    /// Un-windowed input: check what arrived over this much processing time as one unit,
    /// instead of batch by batch.
    pub every: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bounds {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeChange {
    pub min_ratio: Option<f64>,
    pub max_ratio: Option<f64>,
    pub baseline: Baseline,
}

/// What a unit's row count is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The previous passing unit.
    Previous,
    /// The mean of the last N passing units.
    MeanOfLast(usize),
}

impl Baseline {
    pub fn depth(self) -> usize {
        match self {
            Baseline::Previous => 1,
            Baseline::MeanOfLast(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Alert,
    Halt,
    AlertAndHalt,
}

impl OnFailure {
    pub fn alerts(self) -> bool {
        matches!(self, OnFailure::Alert | OnFailure::AlertAndHalt)
    }

    pub fn halts(self) -> bool {
        matches!(self, OnFailure::Halt | OnFailure::AlertAndHalt)
    }
}

/// Reads a `Check`'s config; `None` when it cannot run (the problems were reported).
pub fn parse(r: &mut MapReader<'_>, at: Pos, rep: &mut Reporter) -> Option<CheckConfig> {
    let before = rep.len();
    let columns = r.node("columns").and_then(|n| columns(n, rep));
    let row_count = r.node("row_count").map(|n| bounds(n, rep));
    let volume_change = r.node("volume_change").and_then(|n| volume_change(n, rep));
    let not_null = names(r.string_list("not_null", rep));
    let unique = names(r.string_list("unique", rep));
    let expression = r.string("expression", rep).map(|e| ExprSpec {
        kind: ExprKind::Sql(e.value),
        pos: e.pos,
    });
    let alert = r.node("alert").and_then(|n| {
        let mut a = MapReader::new(
            Some(n),
            pos_of(n),
            "`alert`",
            crate::alerts::TARGET_KEYS,
            rep,
        );
        let t = crate::alerts::parse_targets(&mut a, rep);
        a.finish(rep);
        t
    });
    let on_failure = match r.string("on_failure", rep) {
        None if alert.is_some() => OnFailure::AlertAndHalt,
        None => OnFailure::Halt,
        Some(Located { value, pos }) => match value.as_str() {
            "alert" => OnFailure::Alert,
            "halt" => OnFailure::Halt,
            "alert_and_halt" => OnFailure::AlertAndHalt,
            other => {
                rep.error(
                    pos,
                    format!("unknown `on_failure` `{other}`"),
                    Some(suggest(other, &["alert", "halt", "alert_and_halt"])),
                );
                OnFailure::Halt
            }
        },
    };
    if on_failure.alerts() && alert.is_none() {
        rep.error(
            at,
            "`Check` alerts on failure but has no `alert:`",
            Some(
                "add `alert: {slack_webhook: URL}` (or `webhook: URL`), or use `on_failure: halt`"
                    .into(),
            ),
        );
    }
    let retry_after = r.duration("retry_after", rep);
    if retry_after.is_some() && !on_failure.halts() {
        rep.error(
            at,
            "`retry_after` re-checks a closed valve, but this `Check` never halts",
            Some("use `on_failure: halt` or `alert_and_halt`, or drop `retry_after`".into()),
        );
    }
    let every = r.duration("every", rep);
    if every.is_some_and(|d| d.is_zero()) {
        rep.error(at, "`every` must be longer than 0s", None);
    }
    let cfg = CheckConfig {
        columns,
        row_count,
        volume_change,
        not_null,
        unique,
        expression,
        on_failure,
        alert,
        retry_after,
        every,
    };
    if cfg.columns.is_none()
        && cfg.row_count.is_none()
        && cfg.volume_change.is_none()
        && cfg.not_null.is_empty()
        && cfg.unique.is_empty()
        && cfg.expression.is_none()
    {
        rep.error(
            at,
            "`Check` declares no rule",
            Some(
                "give at least one of columns, row_count, volume_change, not_null, unique, expression"
                    .into(),
            ),
        );
    }
    (rep.len() == before).then_some(cfg)
}

fn names(list: Option<Vec<Located<String>>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|l| l.value)
        .collect()
}

fn columns(node: &Node, rep: &mut Reporter) -> Option<Vec<(String, Option<String>)>> {
    match node {
        Node::Mapping(m) => {
            let mut out = Vec::new();
            for (k, v) in m.iter() {
                let ty = to_json(v);
                let Some(ty) = ty.as_str() else {
                    rep.error(
                        pos_of(v),
                        "a column type must be a name such as `int64`",
                        None,
                    );
                    continue;
                };
                let ty = ty.to_ascii_lowercase();
                if !TYPE_NAMES.contains(&ty.as_str()) {
                    rep.error(
                        pos_of(v),
                        format!("unknown column type `{ty}`"),
                        Some(suggest(&ty, TYPE_NAMES)),
                    );
                }
                out.push((k.as_str().to_string(), Some(ty)));
            }
            Some(out)
        }
        other => string_list(other, "columns", rep)
            .map(|l| l.into_iter().map(|c| (c.value, None)).collect()),
    }
}

fn bounds(node: &Node, rep: &mut Reporter) -> Bounds {
    let mut r = MapReader::new(
        Some(node),
        pos_of(node),
        "`row_count`",
        &["min", "max"],
        rep,
    );
    let b = Bounds {
        min: r.u64("min", rep),
        max: r.u64("max", rep),
    };
    if b.min.is_none() && b.max.is_none() {
        rep.error(r.pos(), "`row_count` needs `min`, `max` or both", None);
    }
    if let (Some(lo), Some(hi)) = (b.min, b.max)
        && lo > hi
    {
        rep.error(
            r.pos(),
            format!("`row_count` min {lo} is above max {hi}"),
            None,
        );
    }
    r.finish(rep);
    b
}

fn volume_change(node: &Node, rep: &mut Reporter) -> Option<VolumeChange> {
    let mut r = MapReader::new(
        Some(node),
        pos_of(node),
        "`volume_change`",
        &["min_ratio", "max_ratio", "baseline"],
        rep,
    );
    let min_ratio = r.f64("min_ratio", rep);
    let max_ratio = r.f64("max_ratio", rep);
    let baseline = match r.string("baseline", rep) {
        None => Baseline::Previous,
        Some(b) if b.value == "previous" => Baseline::Previous,
        Some(b) => match b
            .value
            .strip_prefix("mean_of_last_")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if n > 0 => Baseline::MeanOfLast(n),
            _ => {
                rep.error(
                    b.pos,
                    format!("unknown `baseline` `{}`", b.value),
                    Some("`previous` or `mean_of_last_N` (e.g. `mean_of_last_5`)".into()),
                );
                Baseline::Previous
            }
        },
    };
    let pos = r.pos();
    r.finish(rep);
    if min_ratio.is_none() && max_ratio.is_none() {
        rep.error(
            pos,
            "`volume_change` needs `min_ratio`, `max_ratio` or both",
            None,
        );
        return None;
    }
    if min_ratio.is_some_and(|m| m < 0.0) || max_ratio.is_some_and(|m| m < 0.0) {
        rep.error(pos, "volume ratios cannot be negative", None);
    }
    Some(VolumeChange {
        min_ratio,
        max_ratio,
        baseline,
    })
}
