//! Helpers for the windowing integration tests: run a pipeline file through the library and read
//! back what its `WriteToJson` sinks wrote, normalised for comparison with Beam's output.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sluice::pipeline::runner::RunControl;

/// Runs pipeline `source` with `vars`, overriding `options.batch_size`.
pub async fn run(
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
    let (report, _) =
        sluice::pipeline::execute(&spec, &graph, &Default::default(), RunControl { stop })
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

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("expected file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("expected is JSON"))
        .collect()
}
