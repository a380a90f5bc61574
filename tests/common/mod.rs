//! Helpers shared by the integration tests: run a pipeline through the library, read outputs
//! (and, for the windowing tests, normalise them for comparison with Beam's output).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::config::{self, PipelineSpec};
use sluice::pipeline::build::Overrides;
use sluice::pipeline::runner::{RunControl, RunReport};
use sluice::pipeline::{self, EngineError};

pub fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Loads and validates a pipeline file, panicking with the diagnostics if invalid.
pub fn load(path: &Path, vars: &BTreeMap<String, String>) -> PipelineSpec {
    let spec = config::load(path, vars).unwrap_or_else(|d| panic!("{d}"));
    pipeline::validate(&spec).unwrap_or_else(|d| panic!("{d}"));
    spec
}

pub fn parse(name: &str, text: &str) -> PipelineSpec {
    let spec = config::parse(name, text, &BTreeMap::new()).unwrap_or_else(|d| panic!("{d}"));
    pipeline::validate(&spec).unwrap_or_else(|d| panic!("{d}"));
    spec
}

pub async fn run_spec(spec: &PipelineSpec) -> Result<RunReport, EngineError> {
    let graph = pipeline::validate(spec).unwrap_or_else(|d| panic!("{d}"));
    let (_tx, stop) = tokio::sync::watch::channel(false);
    pipeline::execute(spec, &graph, &Overrides::default(), RunControl::new(stop))
        .await
        .map(|(r, _)| r)
}

/// Every JSON line of every file whose name starts with `prefix`.
pub fn read_json_outputs(prefix: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    for f in output_files(prefix) {
        let text = std::fs::read_to_string(&f).unwrap();
        rows.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    rows
}

pub fn output_files(prefix: &Path) -> Vec<PathBuf> {
    let dir = prefix.parent().unwrap();
    let stem = prefix.file_name().unwrap().to_string_lossy().to_string();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&stem))
        .collect();
    files.sort();
    files
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts multiset equality with numeric tolerance, printing the difference.
pub fn assert_rows_eq(expected: &[Value], actual: &[Value]) {
    let (missing, unexpected) = sluice::record::rows::multiset_diff(expected, actual);
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "rows differ\nmissing: {missing:#?}\nunexpected: {unexpected:#?}"
    );
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn stat(report: &RunReport, name: &str) -> (u64, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let (_, s) = report
        .stats
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no stage {name}"));
    (
        s.rows_in.load(Relaxed),
        s.rows_out.load(Relaxed),
        s.errors.load(Relaxed),
    )
}

/// Runs pipeline `source` with `vars`, overriding `options.batch_size`.
pub async fn run_source(
    source: &str,
    vars: &[(&str, &str)],
    batch_size: usize,
) -> sluice::pipeline::runner::RunReport {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut spec = sluice::config::parse("test.yaml", source, &vars).expect("pipeline parses");
    spec.options.batch_size = Some(batch_size);
    let graph = sluice::pipeline::validate(&spec).expect("pipeline is valid");
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let (report, _) = sluice::pipeline::execute(
        &spec,
        &graph,
        &Default::default(),
        sluice::pipeline::runner::RunControl::new(stop),
    )
    .await
    .expect("pipeline runs");
    report
}

/// Every JSON line of the files in `dir` whose name starts with `prefix`.
pub fn read_rows(dir: &Path, prefix: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("output dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    names.sort();
    for p in names {
        let text = std::fs::read_to_string(&p).expect("output file");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).expect("output is JSON"));
        }
    }
    out
}

/// A value in comparable form: Beam `Timestamp` objects and RFC 3339 strings become epoch ms,
/// numbers are rounded to 10 significant digits (Beam writes floats with 10 decimals).
pub fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(micros) = m.get("micros").and_then(Value::as_i64) {
                return Value::String(format!("ts:{}", micros / 1000));
            }
            // Sorted keys (serde_json keeps insertion order here).
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), normalise(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        Value::Number(n) => Value::String(format!("n:{:.9e}", n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) if s.len() >= 20 => Value::String(format!("ts:{}", t.timestamp_millis())),
            _ => v.clone(),
        },
        other => other.clone(),
    }
}

/// Rows normalised and sorted by their JSON text: a multiset comparison.
pub fn canonical(rows: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(|r| normalise(r).to_string()).collect();
    out.sort();
    out
}
