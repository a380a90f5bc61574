//! `validate`'s checks beyond structure: expressions compile (SQL syntax), and what a transform
//! needs from its inputs (a `Sql` query's tables and boundedness).

use super::graph::Graph;
use crate::config::components::TransformConfig;
use crate::config::diag::{Pos, Reporter, did_you_mean};
use crate::config::{ExprKind, ExprSpec, PipelineSpec, TransformSpec, WindowKind};
use crate::expr::check_sql_syntax;
use crate::transforms::sql::{analysis, table_names};

/// Reports expressions that cannot compile. Field references are checked when the input schema
/// is known, which for most sources is only at run time.
pub fn check_expressions(spec: &PipelineSpec, rep: &mut Reporter) {
    for t in &spec.transforms {
        let mut exprs: Vec<&ExprSpec> = Vec::new();
        match &t.config {
            TransformConfig::MapToFields { fields, .. } => {
                exprs.extend(fields.iter().map(|(_, e)| e))
            }
            TransformConfig::Filter { keep } => exprs.push(keep),
            TransformConfig::Partition { by, .. } => exprs.push(by),
            TransformConfig::AssignTimestamps { timestamp, .. } => exprs.push(timestamp),
            TransformConfig::Combine { combine, .. } => {
                exprs.extend(combine.iter().filter_map(|c| c.value.as_ref()))
            }
            TransformConfig::Check(c) => exprs.extend(c.expression.as_ref()),
            _ => {}
        }
        for e in exprs {
            if let ExprKind::Sql(sql) = &e.kind
                && let Err(msg) = check_sql_syntax(sql)
            {
                rep.error(
                        e.pos,
                        format!("SQL expression `{sql}` does not parse: {msg}"),
                        Some("expressions are SQL as DataFusion reads it, e.g. `watch_seconds * 2` or `action = 'view'`".into()),
                );
            }
        }
    }
}

/// Checks every `Sql` transform: one SELECT query (no DDL, DML, `COPY`, files or URLs), tables
/// that are its inputs, and a stateless query where the input is unbounded or windowed.
pub fn check_sql(spec: &PipelineSpec, graph: &Graph, rep: &mut Reporter) {
    for t in &spec.transforms {
        let TransformConfig::Sql { query } = &t.config else {
            continue;
        };
        let at = |q: analysis::QueryPos| sql_pos(query.pos, &query.value, q);
        let names = table_names(&t.inputs);
        let named = t.inputs.iter().filter(|i| i.alias.is_some()).count();
        if named > 0 && named < t.inputs.len() {
            rep.error(
                t.inputs[0].pos,
                format!("`{}` names some inputs but not all", t.name),
                Some("name every input of a Sql transform (`input: {a: X, b: Y}`) or none (one input, the table PCOLLECTION)".into()),
            );
        }
        let info = match analysis::analyze(&query.value) {
            Ok(info) => info,
            Err(r) => {
                rep.error(
                    at(r.at).0,
                    format!("{}{}", r.message, at(r.at).1),
                    Some(r.hint),
                );
                continue;
            }
        };
        for table in &info.tables {
            if names.iter().any(|n| table.matches(n)) {
                continue;
            }
            let hint = did_you_mean(&table.written, names.iter().map(String::as_str))
                .unwrap_or_else(|| {
                    format!(
                        "the tables of `{}` are its inputs: {}{}",
                        t.name,
                        names.join(", "),
                        if named == 0 {
                            " (a single input is PCOLLECTION; name several with `input: {a: X, b: Y}`)"
                        } else {
                            ""
                        }
                    )
                });
            rep.error(
                at(table.at).0,
                format!(
                    "the query reads table `{}`, which is not an input of `{}`{}",
                    table.written,
                    t.name,
                    at(table.at).1
                ),
                Some(hint),
            );
        }
        if let Some((what, q)) = &info.stateful {
            check_stateful_input(spec, graph, t, what, at(*q), rep);
        }
    }
}

/// A query that needs the whole input (GROUP BY, aggregates, joins, ORDER BY, LIMIT, window
/// functions) runs only on bounded, unwindowed input: a stream never ends, and evaluation per
/// window is not available yet.
fn check_stateful_input(
    spec: &PipelineSpec,
    graph: &Graph,
    t: &TransformSpec,
    what: &str,
    (pos, suffix): (Pos, String),
    rep: &mut Reporter,
) {
    let Some(node) = graph.node(&t.name) else {
        return;
    };
    let windowed = std::iter::once(node)
        .chain(graph.nodes[node].inputs.iter().map(|e| e.from))
        .any(|i| graph.nodes[i].windowing.kind != WindowKind::Global);
    if !graph.is_bounded(spec, node) && !windowed {
        rep.error(
            pos,
            format!(
                "{what} needs the whole input, but the input of `{}` is unbounded and not windowed{suffix}",
                t.name
            ),
            Some("on a stream, Sql runs only stateless SELECT … WHERE … queries; aggregate per window with `windowing:` and Combine".into()),
        );
    } else if windowed {
        rep.error(
            pos,
            format!(
                "{what} on windowed input is not available yet: Sql evaluates such a query only over a whole bounded input{suffix}",
            ),
            Some("aggregate per window with Combine, or remove the windowing to query the whole bounded input".into()),
        );
    }
}

/// Where a position inside the query is reported: at the query itself, with the position inside
/// the query added to the message when it is not the query's start (the YAML scalar's quoting
/// and indentation are not known here, so a file column cannot be computed exactly).
fn sql_pos(query_pos: Pos, query: &str, (line, col): analysis::QueryPos) -> (Pos, String) {
    if (line, col) == (1, 1) {
        return (query_pos, String::new());
    }
    if !query.trim_end().contains('\n') {
        return (query_pos, format!(" (query column {col})"));
    }
    (query_pos, format!(" (query line {line}, column {col})"))
}
