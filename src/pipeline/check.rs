//! `validate`'s checks beyond structure: expressions compile (SQL syntax), and what a transform
//! needs from its inputs (a `Sql` query's tables and boundedness, the fields a sharded
//! `WriteToPubSub` keys on).

use super::graph::Graph;
use crate::config::components::TransformConfig;
use crate::config::diag::{Pos, Reporter, did_you_mean};
use crate::config::{ExprKind, ExprSpec, PipelineSpec, TransformSpec, WindowKind};
use crate::expr::{check_sql_syntax, functions};
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
            let sql = match &e.kind {
                ExprKind::Sql(sql) => sql,
                // A generic expression that is not a plain name is read as SQL (`expr::field`).
                ExprKind::Field(f) if !f.chars().all(|c| c.is_alphanumeric() || c == '_') => f,
                _ => continue,
            };
            if let ExprKind::Sql(_) = &e.kind
                && let Err(msg) = check_sql_syntax(sql)
            {
                rep.error(
                        e.pos,
                        format!("SQL expression `{sql}` does not parse: {msg}"),
                        Some("expressions are SQL as DataFusion reads it, e.g. `watch_seconds * 2` or `action = 'view'`".into()),
                );
                continue;
            }
            if let Err(p) = functions::check_row_expr(sql) {
                let within = if t.name == t.type_name {
                    format!("in `{}`", t.name)
                } else {
                    format!("in `{}`, a {}", t.name, t.type_name)
                };
                rep.error(e.pos, format!("{} ({within})", p.message), Some(p.hint));
            }
        }
    }
}

/// Checks every `Sql` transform: one SELECT query (no DDL, DML, `COPY`, files or URLs), tables
/// that are its inputs, and where the query needs more than one row, an input it can run on.
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
        if let Err(p) = functions::check_query(&query.value) {
            rep.error(query.pos, p.message, Some(p.hint));
            continue;
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
            check_stateful_input(spec, graph, t, &info, what, at(*q), rep);
        }
    }
}

/// A query that needs more than one row (GROUP BY, aggregates, joins, ORDER BY, LIMIT, window
/// functions) runs per window on windowed input, else over the whole input, which must then be
/// bounded. Per window, all inputs need the same windowing, and session windows (per key) need
/// one table grouped by plain columns, the key.
fn check_stateful_input(
    spec: &PipelineSpec,
    graph: &Graph,
    t: &TransformSpec,
    info: &analysis::QueryInfo,
    what: &str,
    (pos, suffix): (Pos, String),
    rep: &mut Reporter,
) {
    let Some(node) = graph.node(&t.name) else {
        return;
    };
    let windowing = graph.nodes[node].windowing;
    let bounded = graph.is_bounded(spec, node);
    let mut differ = false;
    if t.windowing.is_none() {
        for (e, r) in graph.nodes[node].inputs.iter().zip(&t.inputs).skip(1) {
            if graph.nodes[e.from].windowing != windowing {
                differ = true;
                rep.error(
                    r.pos,
                    format!(
                        "the inputs of `{}` are windowed differently (`{}` and `{}`): a query runs per window over inputs windowed alike",
                        t.name, t.inputs[0].transform, r.transform
                    ),
                    Some("window the inputs the same way, or set `windowing:` on the Sql transform (it applies to every input)".into()),
                );
            }
        }
    }
    if differ {
        return;
    }
    if !windowing.is_windowed() {
        if !bounded {
            rep.error(
                pos,
                format!(
                    "{what} needs the whole input, but the input of `{}` is unbounded and not windowed{suffix}",
                    t.name
                ),
                Some("on a stream, give the Sql transform (or its input) `windowing:` — fixed, sliding, sessions, or global with `trigger: {early_every: …}` — and the query runs per window; or keep to SELECT … WHERE …".into()),
            );
        }
        return;
    }
    if let WindowKind::Sessions { .. } = windowing.kind {
        let mut tables = table_names(&t.inputs);
        tables.sort();
        tables.dedup();
        if tables.len() > 1 {
            rep.error(
                pos,
                format!(
                    "session windows are per key, and a query over several tables (`{}`) has no single key{suffix}",
                    tables.join("`, `")
                ),
                Some("join the inputs first and window the joined rows into sessions, or use fixed or sliding windows".into()),
            );
        } else if info.group_columns.is_none() {
            rep.error(
                pos,
                format!(
                    "session windows are per key: the query on `{}` must group by plain columns (its key), or not group at all{suffix}",
                    t.name
                ),
                Some("e.g. `SELECT user_id, COUNT(*) AS n FROM PCOLLECTION GROUP BY user_id`; compute derived keys in an earlier MapToFields".into()),
            );
        }
    }
    if windowing.kind == WindowKind::Global && windowing.accumulating && !bounded {
        rep.error(
            pos,
            format!(
                "{what} per pane of the global window in accumulating mode keeps every row of an unbounded input forever{suffix}"
            ),
            Some("use `accumulation: discarding` (each early pane sees the rows since the last), or fixed/sliding/session windows".into()),
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

/// A `Deduplicate` without `by` keys on the source message id, which only `ReadFromPubSub`
/// gives rows (`__sluice_id`). Every path up from its input must reach one through transforms
/// that keep the column: aggregations (`Combine`, a `Sql` query that needs more than one row)
/// replace it with pane ids, and error outputs and other sources have none.
pub fn check_deduplicate(spec: &PipelineSpec, graph: &Graph, rep: &mut Reporter) {
    for (i, node) in graph.nodes.iter().enumerate() {
        let t = &spec.transforms[node.spec];
        let TransformConfig::Deduplicate { by, .. } = &t.config else {
            continue;
        };
        if !by.is_empty() {
            continue;
        }
        if let Some(why) = missing_message_id(spec, graph, i) {
            rep.error(
                t.pos,
                format!(
                    "`{}` has no `by`, so it deduplicates by message id, but {why}",
                    t.name
                ),
                Some("name the fields that identify a duplicate with `by: [...]`; message ids come from ReadFromPubSub (its message_id, or the `id_attribute` value)".into()),
            );
        }
    }
}

/// Why the rows reaching `node` may have no source message id (`None`: they all have one).
fn missing_message_id(spec: &PipelineSpec, graph: &Graph, node: usize) -> Option<String> {
    let mut seen = vec![false; graph.nodes.len()];
    let mut todo: Vec<&super::graph::Edge> = graph.nodes[node].inputs.iter().collect();
    while let Some(e) = todo.pop() {
        let from = &graph.nodes[e.from];
        if from.error_port == Some(e.port) {
            return Some(format!(
                "its input `{}.{}` is error records, which carry none",
                from.name, from.ports[e.port]
            ));
        }
        if std::mem::replace(&mut seen[e.from], true) {
            continue;
        }
        let config = &spec.transforms[from.spec].config;
        let kind = &spec.transforms[from.spec].type_name;
        match config {
            TransformConfig::ReadFromPubSub(_) => continue,
            TransformConfig::Combine { .. } => {
                return Some(format!(
                    "its input comes from `{}` ({kind}), whose rows carry pane ids, not message ids",
                    from.name
                ));
            }
            TransformConfig::Sql { query } => {
                let stateful = analysis::analyze(&query.value)
                    .map(|i| i.stateful.is_some())
                    .unwrap_or(false);
                if stateful {
                    return Some(format!(
                        "its input comes from `{}` (a Sql query that needs more than one row), whose rows carry no message ids",
                        from.name
                    ));
                }
            }
            _ if from.inputs.is_empty() => {
                return Some(format!(
                    "its input comes from `{}` ({kind}), which has no message ids",
                    from.name
                ));
            }
            _ => {}
        }
        todo.extend(from.inputs.iter());
    }
    None
}

/// A sharded `WriteToPubSub` keys on fields of its input: where the input's columns are known
/// before running ([`known_columns`]), each `shard.by` field must be one of them. Elsewhere the
/// sink checks at run time (and fails the run, a pipeline error).
pub fn check_shard_keys(spec: &PipelineSpec, graph: &Graph, rep: &mut Reporter) {
    for node in &graph.nodes {
        let t = &spec.transforms[node.spec];
        let TransformConfig::WriteToPubSub(w) = &t.config else {
            continue;
        };
        let (Some(shard), [edge]) = (&w.shard, &node.inputs[..]) else {
            continue;
        };
        let Some(columns) = known_columns(spec, graph, edge, 0) else {
            continue;
        };
        for f in &shard.by {
            if columns.contains(&f.value) {
                continue;
            }
            let hint = did_you_mean(&f.value, columns.iter().map(String::as_str))
                .unwrap_or_else(|| format!("the input's fields are: {}", columns.join(", ")));
            rep.error(
                f.pos,
                format!(
                    "shard key `{}` is not a field of `{}`'s input `{}`",
                    f.value, t.name, graph.nodes[edge.from].name
                ),
                Some(hint),
            );
        }
    }
}

/// The user columns arriving over `edge`, when they follow from the pipeline file alone: a
/// `ReadFromPubSub` (its schema, attribute and metadata columns), `Create`, error records,
/// `MapToFields`, `Combine`, and transforms that pass rows through unchanged. `None` when they
/// depend on data (files without a schema, `Sql`, …).
fn known_columns(
    spec: &PipelineSpec,
    graph: &Graph,
    edge: &super::graph::Edge,
    depth: usize,
) -> Option<Vec<String>> {
    let from = &graph.nodes[edge.from];
    if from.error_port == Some(edge.port) {
        return Some(
            crate::record::error_record::schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        );
    }
    // Deeper chains than this are unusual; the run-time check covers them.
    if edge.port != 0 || depth > 32 {
        return None;
    }
    let upstream = || match &from.inputs[..] {
        [one] => known_columns(spec, graph, one, depth + 1),
        _ => None,
    };
    let user = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| !crate::record::meta::is_hidden(n))
            .collect()
    };
    match &spec.transforms[from.spec].config {
        TransformConfig::ReadFromPubSub(r) => {
            let d = crate::pubsub::decode::MessageDecoder::new(r).ok()?;
            Some(user(
                d.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            ))
        }
        TransformConfig::Create { elements } => {
            let mut names: Vec<String> = Vec::new();
            for e in elements {
                for k in e.as_object()?.keys() {
                    if !names.contains(k) {
                        names.push(k.clone());
                    }
                }
            }
            Some(names)
        }
        TransformConfig::MapToFields {
            fields,
            append,
            drop,
        } => {
            let mut names: Vec<String> = if *append {
                upstream()?
                    .into_iter()
                    .filter(|n| !drop.iter().any(|d| &d.value == n))
                    .collect()
            } else {
                Vec::new()
            };
            for (f, _) in fields {
                if !names.contains(&f.value) {
                    names.push(f.value.clone());
                }
            }
            Some(names)
        }
        TransformConfig::Combine { group_by, combine } => Some(
            group_by
                .iter()
                .map(|g| g.value.clone())
                .chain(combine.iter().map(|c| c.output.clone()))
                .collect(),
        ),
        TransformConfig::Filter { .. }
        | TransformConfig::Deduplicate { .. }
        | TransformConfig::AssignTimestamps { .. }
        | TransformConfig::WindowInto { .. }
        | TransformConfig::ValidateWithSchema { .. }
        | TransformConfig::Check(_) => upstream(),
        _ => None,
    }
}

/// Warnings that do not make a pipeline invalid: `sluice validate` prints them after `valid`,
/// `sluice run` logs them.
pub fn hints(spec: &PipelineSpec, graph: &Graph) -> Vec<crate::config::diag::Diagnostic> {
    let mut out = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(t) = spec.transform(&node.name) else {
            continue;
        };
        if !matches!(
            t.config,
            TransformConfig::AssignTimestamps {
                watermark: None,
                ..
            }
        ) {
            continue;
        }
        let unbounded = graph.upstream_sources(i).into_iter().find_map(|s| {
            let src = spec.transform(&graph.nodes[s].name)?;
            (!super::graph::is_bounded_source(&src.config)).then(|| src.name.clone())
        });
        if let Some(source) = unbounded {
            out.push(crate::config::diag::Diagnostic {
                file: spec.file.clone(),
                pos: t.pos,
                message: format!(
                    "warning: `{}` sets event times without `watermark:` after the unbounded source `{source}`, whose watermark stays in force: event times behind it (a BigQuery export published days later) are late and dropped, as on Beam",
                    t.name
                ),
                hint: Some(
                    "add `watermark: {max_delay: 10s}` to its config so the watermark follows the assigned times (docs/windowing.md)".into(),
                ),
            });
        }
    }
    out
}
