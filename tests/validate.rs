//! `sluice validate`: every problem of a file in one run, as `file:line:col: message` + hint.

use std::collections::BTreeMap;

use sluice::pipeline::load_and_validate;

fn diagnostics(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    let err = match load_and_validate(&path, &BTreeMap::new()) {
        Ok(_) => panic!("the pipeline is invalid"),
        Err(e) => e,
    };
    err.to_string()
        .replace(&path.display().to_string(), "p.yaml")
}

#[test]
fn reports_every_problem_with_position_and_hint() {
    let text = "\
pipeline:
  transforms:
    - type: ReadFromJsn
      name: Read
      config:
        path: x.jsonl
    - type: MapToFields
      name: Enrich
      input: Reed
      config:
        language: python
        fields:
          a: b
    - type: Filter
      name: Keep
      input: Enrich
      config:
        language: sql
        keep: \"watch_seconds >\"
      error_handling:
        output: errors
    - type: Flatten
      name: LoopA
      input: LoopB
    - type: Flatten
      name: LoopB
      input: LoopA
    - type: WriteToJson
      input: Keep.missing
      config:
        path: out
        compresion: gzip
";
    let expected = "\
p.yaml:3:13: unknown transform type `ReadFromJsn`
  hint: did you mean `ReadFromJson`?
p.yaml:9:14: input `Reed` names no transform
  hint: did you mean `Read`?
p.yaml:11:19: expression language `python` is not supported by Sluice
  hint: Sluice evaluates expressions vectorised in Rust: use `language: sql` (or generic field references); user code in Python, JavaScript or Java would need an embedded interpreter per worker
p.yaml:19:15: SQL expression `watch_seconds >` does not parse: sql parser error: Expected: an expression, found: EOF
  hint: expressions are SQL as DataFusion reads it, e.g. `watch_seconds * 2` or `action = 'view'`
p.yaml:21:17: error output `Keep.errors` is not consumed
  hint: send it somewhere, e.g. a transform with `input: Keep.errors` that writes it out, or remove `error_handling`
p.yaml:24:14: `LoopA` is part of an input cycle (LoopA → LoopB)
  hint: a pipeline is a directed acyclic graph; break the cycle
p.yaml:27:14: `LoopB` is part of an input cycle (LoopA → LoopB)
  hint: a pipeline is a directed acyclic graph; break the cycle
p.yaml:29:14: `Keep` has no output named `missing`
  hint: its outputs are: errors
p.yaml:32:9: unknown key `compresion` in `WriteToJson` config
  hint: expected one of: path, num_shards, max_file_rows, max_file_age";
    assert_eq!(diagnostics(text), expected);
}

#[test]
fn template_and_yaml_errors_have_positions() {
    assert_eq!(
        diagnostics(
            "pipeline:\n  transforms:\n    - type: ReadFromJson\n      config: {path: \"{{ nowhere }}\"}\n"
        ),
        "p.yaml:4:1: template error: undefined variable `nowhere`\n  hint: define variables with --var KEY=VALUE or in the environment"
    );
    let dup = diagnostics("pipeline:\n  transforms: []\npipeline: {}\n");
    assert!(
        dup.starts_with("p.yaml:3:1: invalid YAML: duplicate key `pipeline` (first at line 1)"),
        "{dup}"
    );
    let yaml = diagnostics("pipeline:\n  transforms: [\n");
    assert!(yaml.starts_with("p.yaml:3:1: invalid YAML:"), "{yaml}");
}

#[test]
fn chain_shorthands_and_missing_inputs() {
    let text = "\
pipeline:
  type: chain
  source:
    type: Create
    config: {elements: [{a: true}]}
  transforms:
    - type: Filter
      input: Create
      config: {keep: a}
  sink:
    type: WriteToJson
    config: {path: out}
";
    assert_eq!(
        diagnostics(text),
        "p.yaml:8:14: `Filter` declares `input` inside a chain\n  hint: in `type: chain` each transform reads the previous one; remove `input`"
    );
    let composite = "pipeline:\n  transforms:\n    - type: Flatten\n";
    assert_eq!(
        diagnostics(composite),
        "p.yaml:3:13: `Flatten` has no `input`\n  hint: add `input:` naming one of: Flatten"
    );
}

#[test]
fn unsupported_languages_and_windowing_keys_are_named() {
    let text = "\
pipeline:
  transforms:
    - type: Create
      config: {elements: [{a: true}]}
    - type: Filter
      input: Create
      config:
        language: javascript
        keep: a
    - type: WindowInto
      input: Filter
      config:
        windowing: {type: fixd, size: 60s}
    - type: MapToFields
      input: Create
      config:
        fields:
          b: {callable: \"lambda row: row.a\"}
";
    assert_eq!(
        diagnostics(text),
        "\
p.yaml:8:19: expression language `javascript` is not supported by Sluice
  hint: Sluice evaluates expressions vectorised in Rust: use `language: sql` (or generic field references); user code in Python, JavaScript or Java would need an embedded interpreter per worker
p.yaml:13:27: unknown window type `fixd`
  hint: did you mean `fixed`?
p.yaml:18:14: `callable` expressions need the Python language, which Sluice does not run
  hint: rewrite it as `language: sql` with an `expression`"
    );
}

#[test]
fn unnamed_transforms_of_one_type_in_a_chain_each_read_the_previous_one() {
    let spec = sluice::config::parse(
        "p.yaml",
        "pipeline:\n  type: chain\n  transforms:\n    - type: Create\n      config: {elements: [{a: 1}]}\n    - type: Flatten\n    - type: Flatten\n    - type: LogForTesting\n",
        &BTreeMap::new(),
    )
    .unwrap();
    let graph = sluice::pipeline::validate(&spec).unwrap();
    let inputs: Vec<(String, Vec<String>)> = graph
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.inputs
                    .iter()
                    .map(|e| graph.nodes[e.from].name.clone())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        inputs,
        vec![
            ("Create".to_string(), vec![]),
            ("Flatten".to_string(), vec!["Create".to_string()]),
            ("Flatten (2)".to_string(), vec!["Flatten".to_string()]),
            ("LogForTesting".to_string(), vec!["Flatten (2)".to_string()]),
        ]
    );
}

/// A pipeline: `source` → `between` steps → `Deduplicate` (with `dedup_config`).
fn dedup_pipeline(source: &str, between: &str, dedup_config: &str) -> String {
    format!(
        "\
pipeline:
  type: chain
  transforms:
{source}{between}    - type: Deduplicate
      name: Once
      config: {dedup_config}
    - type: LogForTesting
"
    )
}

const PUBSUB: &str = "    - type: ReadFromPubSub
      name: Read
      config:
        topic: events
        format: RAW
";

fn valid(text: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, text).unwrap();
    load_and_validate(&path, &BTreeMap::new()).is_ok()
}

#[test]
fn deduplicate_by_message_id_needs_pubsub_rows() {
    // From Pub/Sub, through element-wise steps and a stateless Sql: accepted.
    let stateless = "    - type: Sql
      config:
        query: \"SELECT * FROM PCOLLECTION WHERE payload IS NOT NULL\"
";
    assert!(valid(&dedup_pipeline(PUBSUB, stateless, "{within: 10m}")));
    // From a file: refused, with the way out.
    let file = "    - type: ReadFromJson
      name: ReadFile
      config:
        path: x.jsonl
";
    assert_eq!(
        diagnostics(&dedup_pipeline(file, "", "{within: 10m}")),
        "p.yaml:8:13: `Once` has no `by`, so it deduplicates by message id, but its input comes from `ReadFile` (ReadFromJson), which has no message ids\n  hint: name the fields that identify a duplicate with `by: [...]`; message ids come from ReadFromPubSub (its message_id, or the `id_attribute` value)"
    );
    // After an aggregation the row ids are pane ids.
    let combine = "    - type: Combine
      name: Counts
      windowing: {type: fixed, size: 1m}
      config:
        combine:
          n: {fn: count, value: payload}
";
    assert_eq!(
        diagnostics(&dedup_pipeline(PUBSUB, combine, "{within: 10m}")),
        "p.yaml:15:13: `Once` has no `by`, so it deduplicates by message id, but its input comes from `Counts` (Combine), whose rows carry pane ids, not message ids\n  hint: name the fields that identify a duplicate with `by: [...]`; message ids come from ReadFromPubSub (its message_id, or the `id_attribute` value)"
    );
    // With `by` any input is fine; an empty `by` is refused.
    assert!(valid(&dedup_pipeline(file, "", "{by: [id], within: 10m}")));
    assert_eq!(
        diagnostics(&dedup_pipeline(PUBSUB, "", "{by: [], within: 10m}")),
        "p.yaml:11:15: `Deduplicate`'s `by` is empty\n  hint: name the fields that identify a duplicate, or leave `by` out to deduplicate by the source's message id (Pub/Sub message_id or id_attribute)"
    );
}

#[test]
fn file_sink_roll_keys_are_checked_with_positions() {
    let text = "\
pipeline:
  transforms:
    - type: Create
      name: Rows
      config:
        elements: [{a: 1}]
    - type: WriteToCsv
      input: Rows
      config:
        path: out
        max_file_rows: 0
        max_file_age: 0s
    - type: WriteToParquet
      input: Rows
      config:
        path: out2
        max_file_row: 10
        max_file_age: soon
";
    let expected = "\
p.yaml:11:24: `max_file_rows` must be at least 1
  hint: the number of rows after which a file set is committed, e.g. 1000000
p.yaml:12:23: `max_file_age` must be longer than 0
  hint: how long a file set stays open after its first row, e.g. 5m
p.yaml:17:9: unknown key `max_file_row` in `WriteToParquet` config
  hint: did you mean `max_file_rows`?
p.yaml:18:23: ";
    let got = diagnostics(text);
    assert!(got.starts_with(expected), "{got}");
}
