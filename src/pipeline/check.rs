//! `validate`'s checks beyond structure: expressions compile (SQL syntax), and what a transform
//! needs from its inputs.

use crate::config::components::TransformConfig;
use crate::config::diag::Reporter;
use crate::config::{ExprKind, ExprSpec, PipelineSpec};
use crate::expr::check_sql_syntax;

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
