//! `sluice test`: runs a pipeline file's `tests:` section in-process.
//!
//! Beam YAML semantics: `mock_inputs` replace the named transforms' outputs with the given rows;
//! `expected_outputs` compare what a transform (or `Name.output`) emits; `expected_inputs`
//! compare what a transform receives, and that transform (typically a sink) is not run. Sinks
//! that no expectation names are not run either, so tests never write outside the process.
//! Rows compare as multisets.

use serde_json::Value;
use tokio::sync::watch;

use crate::config::components::TransformConfig;
use crate::config::spec::{InputRef, TransformSpec};
use crate::config::{PipelineSpec, TestSpec};
use crate::pipeline::build::Overrides;
use crate::pipeline::graph::{is_sink, is_source};
use crate::pipeline::runner::RunControl;
use crate::record::rows;
use crate::transforms::assert_equal::describe_diff;

/// The result of one test.
#[derive(Debug)]
pub struct TestOutcome {
    pub name: String,
    pub failures: Vec<String>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test of `spec`.
pub async fn run_tests(spec: &PipelineSpec) -> Vec<TestOutcome> {
    let mut out = Vec::with_capacity(spec.tests.len());
    for t in &spec.tests {
        let failures = run_one(spec, t).await;
        out.push(TestOutcome {
            name: t.name.clone(),
            failures,
        });
    }
    out
}

async fn run_one(spec: &PipelineSpec, test: &TestSpec) -> Vec<String> {
    let mut failures = Vec::new();
    let mut spec = spec.clone();
    let known = |n: &str| spec.transforms.iter().any(|t| t.name == n);
    for m in test.mock_inputs.iter().chain(&test.expected_inputs) {
        if !known(&m.name.value) {
            failures.push(format!(
                "{}:{}: no transform named `{}`",
                spec.file, m.name.pos.line, m.name.value
            ));
        }
    }
    let mut overrides = Overrides {
        mock_outputs: test
            .mock_inputs
            .iter()
            .map(|m| (m.name.value.clone(), m.elements.clone()))
            .collect(),
        capture_inputs: test
            .expected_inputs
            .iter()
            .map(|m| m.name.value.clone())
            .collect(),
    };
    for t in &spec.transforms {
        let mocked = overrides.mock_outputs.iter().any(|(n, _)| n == &t.name);
        if is_source(&t.config) && !mocked && !matches!(t.config, TransformConfig::Create { .. }) {
            failures.push(format!(
                "source `{}` must be mocked in `mock_inputs`",
                t.name
            ));
        }
        if is_sink(&t.config) && !overrides.capture_inputs.contains(&t.name) {
            overrides.capture_inputs.push(t.name.clone());
        }
    }
    let mut expected: Vec<(String, &[Value])> = test
        .expected_inputs
        .iter()
        .map(|m| (m.name.value.clone(), m.elements.as_slice()))
        .collect();
    for (i, e) in test.expected_outputs.iter().enumerate() {
        let capture = format!("__expected_output_{i}");
        let (transform, output) = match e.name.value.split_once('.') {
            Some((t, o)) => (t.to_string(), Some(o.to_string())),
            None => (e.name.value.clone(), None),
        };
        spec.transforms.push(TransformSpec {
            name: capture.clone(),
            type_name: "expected_outputs".into(),
            pos: e.name.pos,
            inputs: vec![InputRef {
                alias: None,
                transform,
                output,
                pos: e.name.pos,
            }],
            config: TransformConfig::Capture,
            windowing: None,
            error_output: None,
            error_alert: None,
        });
        expected.push((capture, e.elements.as_slice()));
    }
    if !failures.is_empty() {
        return failures;
    }
    let graph = match crate::pipeline::validate(&spec) {
        Ok(g) => g,
        Err(d) => return vec![d.to_string()],
    };
    let (_tx, stop) = watch::channel(false);
    let captures =
        match crate::pipeline::execute(&spec, &graph, &overrides, RunControl::new(stop)).await {
            Ok((_, captures)) => captures,
            Err(e) => {
                return vec![format!(
                    "the pipeline failed: {}",
                    crate::cli::located(&spec, &e)
                )];
            }
        };
    for (name, rows_expected) in expected {
        let actual: Vec<Value> = captures
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, c)| c.lock().expect("not poisoned").clone())
            .flat_map(|b| rows::to_json_rows(&b))
            .map(Value::Object)
            .collect();
        let label = if let Some(i) = name.strip_prefix("__expected_output_") {
            let i: usize = i.parse().unwrap_or(0);
            format!("output of `{}`", test.expected_outputs[i].name.value)
        } else {
            format!("input of `{name}`")
        };
        if let Some(diff) = describe_diff(rows_expected, &actual) {
            failures.push(format!("{label}: {diff}"));
        }
    }
    failures
}
