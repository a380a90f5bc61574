//! Expressions and aggregations in pipeline configs: the `language:` key, expression values
//! (`field`, `'"literal"'`, `{expression: ...}`) and `Combine`'s `combine:` entries.

use marked_yaml::Node;

use super::diag::{Pos, Reporter, suggest};
use super::yaml::{MapReader, pos_of, to_json};

/// An expression language of Beam YAML that Sluice evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Language {
    /// Field references and literal constants.
    #[default]
    Generic,
    /// SQL expressions, compiled once with DataFusion and evaluated vectorised per batch.
    Sql,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A reference to an input field by name.
    Field(String),
    /// A constant.
    Literal(serde_json::Value),
    /// A SQL expression over the input fields.
    Sql(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExprSpec {
    pub kind: ExprKind,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggFn {
    Sum,
    Min,
    Max,
    Mean,
    Count,
    All,
    Any,
    Concat,
    CountDistinct,
    ApproxCountDistinct,
    Quantile(f64),
}

pub const AGG_NAMES: &[&str] = &[
    "sum",
    "min",
    "max",
    "mean",
    "count",
    "all",
    "any",
    "concat",
    "count_distinct",
    "approx_count_distinct",
    "quantile",
];

#[derive(Debug, Clone, PartialEq)]
pub struct CombineField {
    pub output: String,
    /// The input field aggregated; `None` only for `count` of rows.
    pub value: Option<ExprSpec>,
    pub func: AggFn,
    pub pos: Pos,
}

pub(super) fn language(r: &mut MapReader<'_>, rep: &mut Reporter) -> Language {
    let Some(l) = r.string("language", rep) else {
        return Language::Generic;
    };
    match l.value.as_str() {
        "generic" => Language::Generic,
        "sql" | "calcite" => Language::Sql,
        "python" | "javascript" | "java" => {
            rep.error(
                l.pos,
                format!("expression language `{}` is not supported by Sluice", l.value),
                Some(
                    "Sluice evaluates expressions vectorised in Rust: use `language: sql` (or generic field references); \
                     user code in Python, JavaScript or Java would need an embedded interpreter per worker"
                        .into(),
                ),
            );
            Language::Generic
        }
        other => {
            rep.error(
                l.pos,
                format!("unknown expression language `{other}`"),
                Some(suggest(other, &["generic", "sql"])),
            );
            Language::Generic
        }
    }
}

pub(super) fn required_expr(
    r: &mut MapReader<'_>,
    key: &'static str,
    lang: Language,
    fallback: Pos,
    rep: &mut Reporter,
) -> Option<ExprSpec> {
    match r.node(key) {
        Some(n) => expr(n, lang, rep),
        None => {
            rep.error(fallback, format!("missing required key `{key}`"), None);
            None
        }
    }
}

/// Reads an expression: a scalar, or `{expression: ..., output_type: ...}`; `callable` needs
/// Python and is refused.
pub fn expr(node: &Node, lang: Language, rep: &mut Reporter) -> Option<ExprSpec> {
    let pos = pos_of(node);
    match node {
        Node::Scalar(s) => {
            let value = to_json(node);
            let kind = match (lang, value) {
                (Language::Sql, _) => ExprKind::Sql(s.as_str().to_string()),
                (Language::Generic, serde_json::Value::String(name)) => ExprKind::Field(name),
                (Language::Generic, literal) => ExprKind::Literal(literal),
            };
            Some(ExprSpec { kind, pos })
        }
        Node::Mapping(m) => {
            if m.get_node("callable").is_some() || m.get_node("path").is_some() {
                rep.error(
                    pos,
                    "`callable` expressions need the Python language, which Sluice does not run",
                    Some("rewrite it as `language: sql` with an `expression`".into()),
                );
                return None;
            }
            let mut r = MapReader::new(
                Some(node),
                pos,
                "an expression",
                &["expression", "output_type"],
                rep,
            );
            let e = r.required_string("expression", rep);
            r.node("output_type");
            r.finish(rep);
            let e = e?;
            let kind = match lang {
                Language::Sql => ExprKind::Sql(e.value),
                Language::Generic => ExprKind::Field(e.value),
            };
            Some(ExprSpec { kind, pos: e.pos })
        }
        Node::Sequence(_) => {
            rep.error(
                pos,
                "an expression must be a string or `{expression: ...}`",
                None,
            );
            None
        }
    }
}

pub(super) fn combine_fields(node: &Node, lang: Language, rep: &mut Reporter) -> Vec<CombineField> {
    let Node::Mapping(m) = node else {
        rep.error(
            pos_of(node),
            "`combine` must map output fields to aggregations",
            None,
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in m.iter() {
        let output = k.as_str().to_string();
        let pos = Pos::from_span(k.span());
        let field_ref = |name: &str| ExprSpec {
            kind: ExprKind::Field(name.to_string()),
            pos,
        };
        match v {
            // `total: sum` aggregates the field of the same name.
            Node::Scalar(s) => {
                if let Some(func) = agg_fn(s.as_str(), None, pos_of(v), rep) {
                    let value = (func != AggFn::Count).then(|| field_ref(&output));
                    out.push(CombineField {
                        value,
                        func,
                        output,
                        pos,
                    });
                }
            }
            Node::Mapping(_) => {
                let mut r = MapReader::new(
                    Some(v),
                    pos_of(v),
                    "a combine entry",
                    &["value", "fn", "config"],
                    rep,
                );
                let value = r.node("value").and_then(|n| expr(n, lang, rep));
                let func = match r.node("fn") {
                    Some(Node::Scalar(f)) => {
                        let cfg = r.node("config");
                        agg_fn(f.as_str(), cfg, pos_of(v), rep)
                    }
                    Some(fnode @ Node::Mapping(_)) => {
                        let mut fr = MapReader::new(
                            Some(fnode),
                            pos_of(fnode),
                            "`fn`",
                            &["type", "config"],
                            rep,
                        );
                        let ty = fr.required_string("type", rep);
                        let cfg = fr.node("config");
                        fr.finish(rep);
                        ty.and_then(|t| agg_fn(&t.value, cfg, t.pos, rep))
                    }
                    Some(other) => {
                        rep.error(
                            pos_of(other),
                            "`fn` must name an aggregation",
                            Some(AGG_NAMES.join(", ")),
                        );
                        None
                    }
                    None => {
                        rep.error(pos_of(v), "a combine entry needs `fn`", None);
                        None
                    }
                };
                r.finish(rep);
                if let Some(func) = func {
                    if value.is_none() && func != AggFn::Count {
                        rep.error(
                            pos_of(v),
                            format!("`{output}` needs `value`: the field to aggregate"),
                            None,
                        );
                        continue;
                    }
                    out.push(CombineField {
                        value,
                        func,
                        output,
                        pos,
                    });
                }
            }
            Node::Sequence(_) => rep.error(
                pos_of(v),
                "a combine entry must be `fn` or `{value, fn}`",
                None,
            ),
        }
    }
    out
}

fn agg_fn(name: &str, config: Option<&Node>, pos: Pos, rep: &mut Reporter) -> Option<AggFn> {
    let f = match name {
        "sum" => AggFn::Sum,
        "min" => AggFn::Min,
        "max" => AggFn::Max,
        "mean" => AggFn::Mean,
        "count" => AggFn::Count,
        "all" => AggFn::All,
        "any" => AggFn::Any,
        "concat" => AggFn::Concat,
        "count_distinct" => AggFn::CountDistinct,
        "approx_count_distinct" => AggFn::ApproxCountDistinct,
        "quantile" => {
            let mut q = 0.5;
            if let Some(c) = config {
                let mut r = MapReader::new(Some(c), pos_of(c), "`quantile` config", &["q"], rep);
                if let Some(v) = r.f64("q", rep) {
                    if !(0.0..=1.0).contains(&v) {
                        rep.error(pos_of(c), "`q` must be between 0 and 1", None);
                    }
                    q = v;
                }
                r.finish(rep);
            }
            AggFn::Quantile(q)
        }
        other => {
            rep.error(
                pos,
                format!("unknown aggregation `{other}`"),
                Some(suggest(other, AGG_NAMES)),
            );
            return None;
        }
    };
    Some(f)
}
