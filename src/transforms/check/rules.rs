//! The rules of a `Check`, as pure functions over one unit (a pane or a batch): each failed rule
//! is a [`Finding`] with what was observed and what was expected. Vectorised: null counts,
//! one boolean evaluation of the predicate, and row-format keys for uniqueness.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};

use super::config::{Bounds, CheckConfig, VolumeChange};
use crate::alerts::Finding;
use crate::expr::{self, Compiled};
use crate::record::meta;

/// Evaluates every rule of `cfg` on `rows`. `predicate` is `cfg.expression` compiled for this
/// schema (or the compile error); `baseline` is the volume baseline when `volume_change` applies
/// to this unit and a baseline exists.
pub fn evaluate(
    cfg: &CheckConfig,
    rows: &RecordBatch,
    predicate: Option<&Result<Compiled, String>>,
    baseline: Option<f64>,
) -> Vec<Finding> {
    let mut found = Vec::new();
    let n = rows.num_rows();
    if let Some(cols) = &cfg.columns {
        found.extend(columns(cols, rows));
    }
    if let Some(b) = cfg.row_count {
        found.extend(row_count(b, n));
    }
    if let (Some(v), Some(base)) = (cfg.volume_change, baseline) {
        found.extend(volume_change(v, n, base));
    }
    for f in &cfg.not_null {
        match rows.column_by_name(f) {
            None => found.push(missing("not_null", f)),
            Some(c) if c.null_count() > 0 => found.push(Finding {
                rule: format!("not_null({f})"),
                observed: format!("{} of {n} rows null", c.null_count()),
                expected: "no nulls".into(),
            }),
            Some(_) => {}
        }
    }
    if !cfg.unique.is_empty() {
        found.extend(unique(&cfg.unique, rows));
    }
    if let Some(p) = predicate {
        found.extend(predicate_rule(cfg, p, rows));
    }
    found
}

/// The group of Arrow types a `columns:` type name stands for.
pub fn type_family(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "int64",
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "float64",
        DataType::Boolean => "bool",
        DataType::Timestamp(..) => "timestamp",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytes",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "decimal",
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => "list",
        DataType::Struct(_) => "struct",
        DataType::Map(..) => "map",
        _ => "other",
    }
}

fn missing(rule: &str, field: &str) -> Finding {
    Finding {
        rule: format!("{rule}({field})"),
        observed: format!("no column `{field}`"),
        expected: format!("a column `{field}`"),
    }
}

fn columns(expected: &[(String, Option<String>)], rows: &RecordBatch) -> Option<Finding> {
    let schema = rows.schema();
    let actual: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .filter(|f| !meta::is_hidden(f.name()))
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    let mut problems = Vec::new();
    for (name, ty) in expected {
        match actual.iter().find(|(n, _)| n == name) {
            None => problems.push(format!("missing `{name}`")),
            Some((_, t)) => {
                if let Some(ty) = ty
                    && type_family(t) != ty
                {
                    problems.push(format!("`{name}` is {} ({t})", type_family(t)));
                }
            }
        }
    }
    for (name, _) in &actual {
        if !expected.iter().any(|(n, _)| n == name) {
            problems.push(format!("unexpected `{name}`"));
        }
    }
    if problems.is_empty() {
        return None;
    }
    let want: Vec<String> = expected
        .iter()
        .map(|(n, t)| match t {
            Some(t) => format!("{n}: {t}"),
            None => n.clone(),
        })
        .collect();
    Some(Finding {
        rule: "columns".into(),
        observed: problems.join("; "),
        expected: format!("exactly [{}]", want.join(", ")),
    })
}

fn describe_bounds<T: std::fmt::Display>(min: Option<T>, max: Option<T>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
        (Some(lo), None) => format!("at least {lo}"),
        (None, Some(hi)) => format!("at most {hi}"),
        (None, None) => "anything".into(),
    }
}

fn row_count(b: Bounds, n: usize) -> Option<Finding> {
    let n64 = n as u64;
    let bad = b.min.is_some_and(|lo| n64 < lo) || b.max.is_some_and(|hi| n64 > hi);
    bad.then(|| Finding {
        rule: "row_count".into(),
        observed: format!("{n} rows"),
        expected: format!("{} rows", describe_bounds(b.min, b.max)),
    })
}

/// `n` against `baseline` rows: ratio 1 for 0 against 0, infinite for rows against 0.
pub fn volume_ratio(n: usize, baseline: f64) -> f64 {
    if baseline == 0.0 {
        if n == 0 { 1.0 } else { f64::INFINITY }
    } else {
        n as f64 / baseline
    }
}

fn volume_change(v: VolumeChange, n: usize, baseline: f64) -> Option<Finding> {
    let ratio = volume_ratio(n, baseline);
    let bad = v.min_ratio.is_some_and(|lo| ratio < lo) || v.max_ratio.is_some_and(|hi| ratio > hi);
    bad.then(|| Finding {
        rule: "volume_change".into(),
        observed: format!("ratio {ratio:.3} ({n} rows against a baseline of {baseline:.1})"),
        expected: format!("ratio {}", describe_bounds(v.min_ratio, v.max_ratio)),
    })
}

fn unique(fields: &[String], rows: &RecordBatch) -> Option<Finding> {
    let rule = format!("unique({})", fields.join(", "));
    let mut cols = Vec::with_capacity(fields.len());
    for f in fields {
        match rows.column_by_name(f) {
            Some(c) => cols.push(c.clone()),
            None => return Some(missing("unique", f)),
        }
    }
    let converter = RowConverter::new(
        cols.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    );
    let encoded = match converter.and_then(|c| c.convert_columns(&cols)) {
        Ok(r) => r,
        Err(e) => {
            return Some(Finding {
                rule,
                observed: format!("cannot compare these columns: {e}"),
                expected: "comparable columns".into(),
            });
        }
    };
    let mut seen = HashSet::with_capacity(encoded.num_rows());
    let dupes = encoded.iter().filter(|r| !seen.insert(*r)).count();
    (dupes > 0).then(|| Finding {
        rule,
        observed: format!("{dupes} duplicate rows of {}", rows.num_rows()),
        expected: "no duplicates".into(),
    })
}

fn predicate_rule(
    cfg: &CheckConfig,
    p: &Result<Compiled, String>,
    rows: &RecordBatch,
) -> Option<Finding> {
    let sql = match cfg.expression.as_ref().map(|e| &e.kind) {
        Some(crate::config::ExprKind::Sql(s)) => s.as_str(),
        _ => "",
    };
    let rule = format!("expression({sql})");
    let fail = |observed: String| {
        Some(Finding {
            rule: rule.clone(),
            observed,
            expected: "true for every row".into(),
        })
    };
    let compiled = match p {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot evaluate: {e}")),
    };
    let values = match expr::evaluate(compiled, rows) {
        Ok(v) => v,
        Err(e) => return fail(format!("evaluation failed: {e}")),
    };
    let Some(b) = values.as_boolean_opt() else {
        return fail(format!("not a predicate: it gives {}", values.data_type()));
    };
    let failing = b.len() - b.true_count();
    (failing > 0).then(|| Finding {
        rule: rule.clone(),
        observed: format!("{failing} of {} rows false or null", b.len()),
        expected: "true for every row".into(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::config::ExprSpec;
    use crate::transforms::check::config::{Baseline, OnFailure};

    fn cfg() -> CheckConfig {
        CheckConfig {
            columns: None,
            row_count: None,
            volume_change: None,
            not_null: vec![],
            unique: vec![],
            expression: None,
            on_failure: OnFailure::Halt,
            alert: None,
            retry_after: None,
            every: None,
        }
    }

    fn rows() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
                Field::new(meta::EVENT_TIME, DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(2), None])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("b"),
                    Some("c"),
                ])),
                Arc::new(Int64Array::from(vec![0, 0, 0, 0])),
            ],
        )
        .expect("valid batch")
    }

    #[test]
    fn columns_report_missing_unexpected_and_wrong_types_ignoring_hidden_ones() {
        let mut c = cfg();
        c.columns = Some(vec![
            ("id".into(), Some("string".into())),
            ("views".into(), None),
        ]);
        let f = evaluate(&c, &rows(), None, None);
        assert_eq!(
            f,
            vec![Finding {
                rule: "columns".into(),
                observed: "`id` is int64 (Int64); missing `views`; unexpected `name`".into(),
                expected: "exactly [id: string, views]".into(),
            }]
        );
        c.columns = Some(vec![
            ("name".into(), Some("string".into())),
            ("id".into(), None),
        ]);
        assert!(evaluate(&c, &rows(), None, None).is_empty());
    }

    #[test]
    fn row_count_not_null_and_unique() {
        let mut c = cfg();
        c.row_count = Some(Bounds {
            min: Some(5),
            max: None,
        });
        c.not_null = vec!["id".into(), "gone".into()];
        c.unique = vec!["id".into()];
        let f = evaluate(&c, &rows(), None, None);
        let got: Vec<(&str, &str, &str)> = f
            .iter()
            .map(|f| (f.rule.as_str(), f.observed.as_str(), f.expected.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("row_count", "4 rows", "at least 5 rows"),
                ("not_null(id)", "1 of 4 rows null", "no nulls"),
                ("not_null(gone)", "no column `gone`", "a column `gone`"),
                ("unique(id)", "1 duplicate rows of 4", "no duplicates"),
            ]
        );
        c.unique = vec!["id".into(), "name".into()];
        c.row_count = None;
        c.not_null = vec![];
        assert!(
            evaluate(&c, &rows(), None, None).is_empty(),
            "(id, name) pairs are unique"
        );
    }

    #[test]
    fn volume_change_against_a_baseline() {
        let mut c = cfg();
        c.volume_change = Some(VolumeChange {
            min_ratio: Some(0.5),
            max_ratio: Some(2.0),
            baseline: Baseline::Previous,
        });
        let f = evaluate(&c, &rows(), None, Some(10.0));
        assert_eq!(
            f[0].observed,
            "ratio 0.400 (4 rows against a baseline of 10.0)"
        );
        assert_eq!(f[0].expected, "ratio between 0.5 and 2");
        assert!(evaluate(&c, &rows(), None, Some(4.0)).is_empty());
        assert!(
            evaluate(&c, &rows(), None, None).is_empty(),
            "no baseline yet"
        );
        assert_eq!(volume_ratio(0, 0.0), 1.0);
        assert_eq!(volume_ratio(3, 0.0), f64::INFINITY);
    }

    #[test]
    fn a_sql_predicate_counts_false_and_null_rows() {
        let mut c = cfg();
        let spec = ExprSpec {
            kind: crate::config::ExprKind::Sql("id > 1".into()),
            pos: Default::default(),
        };
        c.expression = Some(spec.clone());
        let r = rows();
        let compiled = expr::compile(&spec, &r.schema());
        let f = evaluate(&c, &r, Some(&compiled), None);
        assert_eq!(f[0].rule, "expression(id > 1)");
        assert_eq!(f[0].observed, "2 of 4 rows false or null");
        let broken: Result<Compiled, String> = Err("unknown field `idd`".into());
        let f = evaluate(&c, &r, Some(&broken), None);
        assert_eq!(f[0].observed, "cannot evaluate: unknown field `idd`");
    }
}
