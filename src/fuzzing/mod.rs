//! Fuzz targets: functions that take arbitrary bytes and check an invariant by panicking when it
//! does not hold. Called by the cargo-fuzz crate in `fuzz/` for long runs (libFuzzer, by hand:
//! docs/guarantees.md, "Fuzzing") and by `tests/fuzz_targets.rs`, which runs each over its
//! committed corpus (`fuzz/corpus/<target>/`) and a fixed number of deterministic mutations, so
//! `cargo test` exercises them on stable Rust.
//!
//! Not part of Sluice's API. The decoders' targets are in [`data`] (docs/fuzzing.md).

pub mod data;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::config::diag::{Diagnostic, Reporter};
use crate::config::{ExprKind, ExprSpec, Pos};

/// Largest input the loader target reads: larger ones only repeat what smaller ones reach, and
/// keep each run fast. (The real bound on files is `config::source`'s 8 MiB.)
pub const MAX_PIPELINE_INPUT: usize = 64 * 1024;

/// Largest expression the SQL target reads.
pub const MAX_SQL_INPUT: usize = 4 * 1024;

/// Longest message a user may see for one bad expression (the message, then its hint): no
/// planner dumps.
pub const MAX_EXPR_MESSAGE: usize = 800;

/// The pipeline loader: bytes → UTF-8 check → Jinja → YAML → pipeline spec → graph and every
/// `validate` check → `explain`.
///
/// Invariant: no panic; the input is accepted or refused with diagnostics that each have a
/// position (line and column ≥ 1; on a file without Jinja, a line of the file).
pub fn pipeline_loader(data: &[u8]) {
    if data.len() > MAX_PIPELINE_INPUT {
        return;
    }
    let file = "fuzz.yaml";
    let mut rep = Reporter::new(file);
    let text = match crate::config::source::decode(data) {
        Ok(text) => text,
        Err(e) => {
            assert!(e.pos.line >= 1 && e.pos.col >= 1, "{e:?}");
            return;
        }
    };
    let spec = crate::config::spec::parse_into(file, text, &BTreeMap::new(), &mut rep);
    let graph = crate::pipeline::check_into(&spec, &mut rep);
    // The end of input may be reported on the line after the last one.
    let lines = crate::config::source::end_pos(text).line + 1;
    let templated = text.contains("{{") || text.contains("{%") || text.contains("{#");
    match rep.finish(()) {
        Ok(()) => {
            let _ = crate::pipeline::check::hints(&spec, &graph);
            let _ = crate::explain::text(&spec, &graph);
            let _ = crate::explain::mermaid(&spec, &graph);
        }
        Err(d) => {
            for diag in &d.0 {
                check_position(diag, lines, templated);
            }
        }
    }
}

fn check_position(d: &Diagnostic, lines: usize, templated: bool) {
    assert!(
        d.pos.line >= 1 && d.pos.col >= 1,
        "a diagnostic without a position: {d}"
    );
    assert!(
        templated || d.pos.line <= lines,
        "a diagnostic past the end of the file ({lines} lines): {d}"
    );
}

/// The SQL expression compiler: syntax check, function check, compilation against a fixed
/// schema, and evaluation on a three-row batch.
///
/// Invariant: no panic; a refused expression gets a message of at most [`MAX_EXPR_MESSAGE`]
/// characters, and so does every failed row.
pub fn sql_expression(data: &[u8]) {
    if data.len() > MAX_SQL_INPUT {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::expr::check_sql_syntax(text);
    let _ = crate::expr::functions::check_row_expr(text);
    let _ = crate::expr::functions::check_query(text);
    let batch = fixture();
    let spec = ExprSpec {
        kind: ExprKind::Sql(text.to_string()),
        pos: Pos { line: 1, col: 1 },
    };
    match crate::expr::compile(&spec, &batch.schema()) {
        Ok(compiled) => {
            let out = crate::expr::evaluate_isolating(&[compiled], &batch);
            for (_, msg) in &out.failed {
                assert!(
                    msg.chars().count() <= MAX_EXPR_MESSAGE,
                    "a row error of {} characters: {msg}",
                    msg.chars().count()
                );
            }
        }
        Err(msg) => assert!(
            msg.chars().count() <= MAX_EXPR_MESSAGE,
            "a compile error of {} characters: {msg}",
            msg.chars().count()
        ),
    }
}

/// Three rows with a null in each column: integers at their extremes, text, floats, booleans.
fn fixture() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(0), None])),
            Arc::new(StringArray::from(vec![Some("Ünï"), None, Some("42")])),
            Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(-0.0), None])),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        ],
    )
    .expect("the fixture's columns match its schema")
}
