//! Expressions of Beam YAML's `generic` and `sql` languages, compiled once per input schema to
//! DataFusion physical expressions and evaluated vectorised on whole batches.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::config::diag::did_you_mean;
use crate::config::{ExprKind, ExprSpec};
use crate::record::meta;

pub mod bounded;
pub mod functions;

/// A compiled expression, valid for the schema it was compiled against.
pub type Compiled = Arc<dyn PhysicalExpr>;

/// Checks SQL expression syntax without a schema (used by `validate` when the input schema is
/// only known at run time).
///
/// # Errors
/// The parser's message.
pub fn check_sql_syntax(sql: &str) -> Result<(), String> {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Compiles `spec` against `schema`.
///
/// # Errors
/// A user-facing message: unknown field (with "did you mean"), SQL syntax or type error.
pub fn compile(spec: &ExprSpec, schema: &SchemaRef) -> Result<Compiled, String> {
    match &spec.kind {
        ExprKind::Field(name) => field(name, schema),
        ExprKind::Literal(v) => Ok(Arc::new(Literal::new(json_scalar(v)?))),
        ExprKind::Sql(sql) => compile_sql(sql, schema),
    }
}

/// A `generic` expression: a field name, a double-quoted string literal, or (as Beam's generic
/// language allows simple comparisons like `watch_seconds > 59`) a SQL expression over fields.
fn field(name: &str, schema: &SchemaRef) -> Result<Compiled, String> {
    if let Ok(i) = schema.index_of(name) {
        return Ok(Arc::new(Column::new(name, i)));
    }
    let t = name.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        let s: String = serde_json::from_str(t).unwrap_or_else(|_| t[1..t.len() - 1].to_string());
        return Ok(Arc::new(Literal::new(ScalarValue::Utf8(Some(s)))));
    }
    let is_name = t.chars().all(|c| c.is_alphanumeric() || c == '_');
    if !is_name && let Ok(e) = compile_sql(t, schema) {
        return Ok(e);
    }
    Err(unknown_field(name, schema))
}

/// "unknown field `x`", with the closest input field named.
pub fn unknown_field(name: &str, schema: &SchemaRef) -> String {
    let names: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|n| !meta::is_hidden(n))
        .collect();
    let hint = did_you_mean(name, names.iter().copied())
        .unwrap_or_else(|| format!("input fields are: {}", names.join(", ")));
    format!("unknown field `{name}`; {hint}")
}

fn compile_sql(sql: &str, schema: &SchemaRef) -> Result<Compiled, String> {
    functions::check_row_expr(sql).map_err(|p| format!("{}; {}", p.message, p.hint))?;
    let ctx = bounded::session(datafusion::prelude::SessionConfig::new());
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
    let logical = ctx
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| clean(e.to_string()))?;
    ctx.create_physical_expr(logical, &df_schema)
        .map_err(|e| clean(e.to_string()))
}

/// Longest DataFusion message passed on to the user.
const MAX_MESSAGE: usize = 300;

/// DataFusion's message without its category prefixes, and without the Rust debug dump of a
/// plan some messages end with (`… AggregateFunction(AggregateFunction { func: … })`), bounded to
/// [`MAX_MESSAGE`] characters.
pub fn clean(msg: String) -> String {
    let msg = msg
        .replace("Error during planning: ", "")
        .replace("Schema error: ", "")
        .replace("SQL error: ", "")
        .replace("This feature is not implemented: ", "not supported: ");
    let mut cut = msg.len();
    if let Some(i) = debug_dump_start(&msg) {
        cut = i;
    }
    let mut out: String = msg[..cut].trim_end().to_string();
    if out.chars().count() > MAX_MESSAGE {
        out = out.chars().take(MAX_MESSAGE).collect();
    }
    if out.len() < msg.trim_end().len() {
        out.push_str(" …");
    }
    out
}

/// Where a Rust `Debug` rendering of a struct starts: `Name { ` or `Name(Name { `.
fn debug_dump_start(msg: &str) -> Option<usize> {
    let bytes = msg.as_bytes();
    let mut i = 0;
    while let Some(off) = msg[i..].find(" { ") {
        let at = i + off;
        let word_start = msg[..at]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '('))
            .map_or(0, |p| p + 1);
        let word = &msg[word_start..at];
        if word.starts_with(|c: char| c.is_ascii_uppercase()) && !word.is_empty() {
            return Some(word_start);
        }
        i = at + 1;
        if i >= bytes.len() {
            break;
        }
    }
    None
}

fn json_scalar(v: &serde_json::Value) -> Result<ScalarValue, String> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        other => return Err(format!("unsupported literal {other}")),
    })
}

/// Evaluates `expr` on `batch` to an array of `batch.num_rows()` values.
///
/// # Errors
/// The evaluation error (for example a failed cast); see [`evaluate_isolating`].
pub fn evaluate(expr: &Compiled, batch: &RecordBatch) -> Result<ArrayRef, String> {
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| clean(e.to_string()))
}

/// The outcome of evaluating expressions with per-row error isolation.
pub struct Evaluated {
    /// The rows that evaluated cleanly (the whole batch on the fast path).
    pub rows: RecordBatch,
    /// One array per expression, aligned with `rows`.
    pub values: Vec<ArrayRef>,
    /// Rows of the original batch that failed, with the error.
    pub failed: Vec<(usize, String)>,
}

/// Evaluates all `exprs` on `batch`. When the vectorised evaluation fails, rows are evaluated one
/// by one to find the failing ones; the others are evaluated again together.
pub fn evaluate_isolating(exprs: &[Compiled], batch: &RecordBatch) -> Evaluated {
    if let Ok(values) = exprs
        .iter()
        .map(|e| evaluate(e, batch))
        .collect::<Result<Vec<_>, _>>()
    {
        return Evaluated {
            rows: batch.clone(),
            values,
            failed: Vec::new(),
        };
    }
    let mut keep = arrow::array::BooleanBuilder::with_capacity(batch.num_rows());
    let mut failed = Vec::new();
    for i in 0..batch.num_rows() {
        let one = batch.slice(i, 1);
        match exprs.iter().try_for_each(|e| evaluate(e, &one).map(|_| ())) {
            Ok(()) => keep.append_value(true),
            Err(err) => {
                keep.append_value(false);
                failed.push((i, err));
            }
        }
    }
    let rows = arrow::compute::filter_record_batch(batch, &keep.finish())
        .expect("mask has the batch's length");
    match exprs
        .iter()
        .map(|e| evaluate(e, &rows))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(values) => Evaluated {
            rows,
            values,
            failed,
        },
        Err(err) => {
            // Rows fine alone but failing together (e.g. an aggregate-like function): fail all.
            let failed = (0..batch.num_rows()).map(|i| (i, err.clone())).collect();
            Evaluated {
                rows: rows.slice(0, 0),
                values: exprs
                    .iter()
                    .map(|_| arrow::array::new_null_array(&arrow::datatypes::DataType::Null, 0))
                    .collect(),
                failed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pos;
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["4", "x", "6"])),
            ],
        )
        .unwrap()
    }

    fn sql(s: &str) -> ExprSpec {
        ExprSpec {
            kind: ExprKind::Sql(s.into()),
            pos: Pos::default(),
        }
    }

    #[test]
    fn sql_expressions_evaluate_vectorised() {
        let b = batch();
        let e = compile(&sql("n * 10 + 1"), &b.schema()).unwrap();
        let out = evaluate(&e, &b).unwrap();
        let out = out.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(out.values(), &[11, 21, 31]);
    }

    #[test]
    fn unknown_fields_get_a_suggestion() {
        let b = batch();
        let spec = ExprSpec {
            kind: ExprKind::Field("nn".into()),
            pos: Pos::default(),
        };
        let err = compile(&spec, &b.schema()).err().unwrap();
        assert!(err.contains("did you mean `n`"), "{err}");
        assert!(compile(&sql("n +"), &b.schema()).is_err());
    }

    #[test]
    fn aggregates_in_row_expressions_get_a_short_message() {
        let b = batch();
        let err = compile(&sql("sum(n)"), &b.schema()).err().unwrap();
        assert_eq!(
            err,
            "`sum` is an aggregate function: it needs many rows, but this expression computes one value per row; aggregate in a `Combine` (`group_by` + `combine: {total: {value: id, fn: sum}}`) or a `Sql` transform (`SELECT k, SUM(id) AS total FROM PCOLLECTION GROUP BY k`)"
        );
        let dump = "This feature is not implemented: Physical plan does not support logical expression AggregateFunction(AggregateFunction { func: AggregateUDF { inner: Sum { signature: Signature { type_signature: UserDefined } } } })".to_string();
        assert_eq!(
            clean(dump),
            "not supported: Physical plan does not support logical expression …"
        );
        assert_eq!(clean("x".repeat(1000)).chars().count(), MAX_MESSAGE + 2);
    }

    #[test]
    fn failing_rows_are_isolated() {
        let b = batch();
        let e = compile(&sql("CAST(s AS BIGINT) + n"), &b.schema()).unwrap();
        let r = evaluate_isolating(&[e], &b);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, 1);
        let v = r.values[0].as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(v.values(), &[5, 9]);
        assert_eq!(r.rows.num_rows(), 2);
        assert_eq!(r.values[0].null_count(), 0);
    }
}
