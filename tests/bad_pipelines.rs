//! Issue #20, the pipeline-file half: hostile or mistaken pipeline files get a clear answer from
//! `validate` (file:line:col, a hint) instead of a crash, a hang, silence or a run-time dump.
//! Each case was found by a hostile-input probe; the bad-input table in docs/guarantees.md
//! points here.

use std::path::Path;
use std::process::Command;

/// Runs `sluice ARGS` in `dir`: (exit code, stdout, stderr).
fn sluice(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "error")
        .env_remove("SLUICE_MAX_PIPELINE_BYTES")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `p.yaml` into a fresh directory.
fn pipeline(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), bytes).unwrap();
    dir
}

/// `sluice validate p.yaml` must refuse with exactly `expected` on stderr.
fn refused(text: &str, expected: &str) {
    let dir = pipeline(text.as_bytes());
    let (code, stdout, stderr) = sluice(&["validate", "p.yaml"], dir.path());
    assert_eq!((code, stderr.trim_end()), (2, expected), "stdout: {stdout}");
}

const CREATE: &str = "\
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{n: 1}, {n: 2}]
";

#[test]
fn sliding_windows_with_too_many_windows_per_element_are_refused_unless_raised() {
    let text = format!(
        "{CREATE}    - type: WindowInto
      windowing: {{type: sliding, size: 1d, period: 1ms}}
    - type: WriteToJson
      config: {{path: out/rows}}
"
    );
    refused(
        &text,
        "p.yaml:8:18: sliding windows of 1d every 1ms put each element in 86400000 windows, more than the limit of 1000
  hint: each element is copied into every window it belongs to (size / period); use a longer `period` or a shorter `size`, or raise `options.limits.max_windows_per_element` (at least 86400000)",
    );
    let raised = format!("{text}options:\n  limits: {{max_windows_per_element: 86400000}}\n");
    let dir = pipeline(raised.as_bytes());
    assert_eq!(sluice(&["validate", "p.yaml"], dir.path()).0, 0);
    // 1h every 5s (720 windows) is within the default.
    let fine = text.replace("size: 1d, period: 1ms", "size: 1h, period: 5s");
    let dir = pipeline(fine.as_bytes());
    assert_eq!(sluice(&["validate", "p.yaml"], dir.path()).0, 0);
}

#[test]
fn millions_of_shards_are_refused_with_the_position_of_num_shards() {
    let text = format!(
        "{CREATE}    - type: WriteToJson
      config:
        path: out/rows
        num_shards: 10000000
"
    );
    refused(
        &text,
        "p.yaml:10:21: `num_shards: 10000000` is more than the limit of 1024 files per window pane
  hint: every shard is a file, written even when empty; a few shards per writer are plenty (or leave `num_shards` out: 1), or raise `options.limits.max_shards` (at least 10000000)",
    );
    let dir = pipeline(text.as_bytes());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "validate wrote nothing"
    );
}

#[test]
fn anchors_aliases_and_merge_keys_work_as_in_beam() {
    let text = "\
pipeline:
  transforms:
    - type: Create
      name: Rows
      config:
        elements: [{id: 1}, {id: 2}, {id: 3}]
    - type: ValidateWithSchema
      name: AtLeastTwo
      input: Rows
      config:
        schema: &s {type: object, properties: {id: {type: integer, minimum: 2}}}
      error_handling: &errors {output: bad}
    - type: ValidateWithSchema
      name: Again
      input: AtLeastTwo
      config:
        schema: *s
    - type: WriteToJson
      name: Good
      input: Again
      config: &sink {path: out/good}
    - type: WriteToJson
      name: Bad
      input: AtLeastTwo.bad
      config:
        <<: *sink
        path: out/bad
";
    let dir = pipeline(text.as_bytes());
    let (code, stdout, stderr) = sluice(&["run", "p.yaml"], dir.path());
    assert_eq!(code, 0, "{stdout}{stderr}");
    let read = |name: &str| -> Vec<serde_json::Value> {
        let mut rows = Vec::new();
        for e in std::fs::read_dir(dir.path().join("out")).unwrap() {
            let path = e.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(name)
            {
                let text = std::fs::read_to_string(&path).unwrap();
                rows.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
            }
        }
        rows
    };
    let mut good = read("good");
    good.sort_by_key(|r: &serde_json::Value| r["id"].as_i64());
    assert_eq!(
        good,
        vec![serde_json::json!({"id": 2}), serde_json::json!({"id": 3})]
    );
    let bad = read("bad");
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["transform"], "AtLeastTwo");
}

#[test]
fn a_nul_byte_is_an_error_at_its_position_for_every_command() {
    let text = format!(
        "{CREATE}    # a comment with a \0 in it
    - type: Filter
      config: {{keep: n}}
"
    );
    let dir = pipeline(text.as_bytes());
    for cmd in ["validate", "explain", "run"] {
        let (code, stdout, stderr) = sluice(&[cmd, "p.yaml"], dir.path());
        assert_eq!(
            (code, stderr.trim_end()),
            (
                2,
                "p.yaml:7:24: control character U+0000 (NUL) in the pipeline file
  hint: YAML does not allow control characters in a file (a YAML reader stops at a NUL and would ignore the rest); remove it, or write it as an escape such as \"\\0\" inside a double-quoted string"
            ),
            "{cmd}: {stdout}"
        );
    }
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let text = format!("\u{feff}{CREATE}");
    let dir = pipeline(text.as_bytes());
    let (code, stdout, stderr) = sluice(&["validate", "p.yaml"], dir.path());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "p.yaml: valid\n");
}

#[test]
fn an_endless_file_is_refused_after_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = sluice(&["validate", "/dev/zero"], dir.path());
    assert_eq!(
        (code, stderr.trim_end()),
        (
            2,
            "/dev/zero:1:1: the pipeline file is larger than 8388608 bytes
  hint: pipeline files are small; if this one really is this large, raise the limit with SLUICE_MAX_PIPELINE_BYTES=BYTES"
        )
    );
}

#[test]
fn misspelled_json_schema_types_are_refused_by_validate() {
    let text = "\
pipeline:
  type: chain
  transforms:
    - type: ReadFromJson
      config:
        path: in.jsonl
        schema:
          type: object
          properties:
            id: {type: integr}
    - type: WriteToJson
      config: {path: out/rows}
";
    refused(
        text,
        "p.yaml:10:24: unknown JSON Schema type `integr`
  hint: did you mean `integer`?",
    );
}

#[test]
fn functions_that_cannot_run_are_refused_by_validate() {
    let text = format!(
        "{CREATE}    - type: MapToFields
      config:
        language: sql
        fields:
          slow: pg_sleep(10)
          total: sum(n)
"
    );
    refused(
        &text,
        "p.yaml:11:17: unknown SQL function `pg_sleep` (in `MapToFields`)
  hint: the functions Sluice runs are DataFusion's (docs/sql.md)
p.yaml:12:18: `sum` is an aggregate function: it needs many rows, but this expression computes one value per row (in `MapToFields`)
  hint: aggregate in a `Combine` (`group_by` + `combine: {total: {value: id, fn: sum}}`) or a `Sql` transform (`SELECT k, SUM(id) AS total FROM PCOLLECTION GROUP BY k`)",
    );
}

#[test]
fn keep_that_is_not_boolean_is_refused_when_its_type_is_known() {
    let text = format!(
        "{CREATE}    - type: Filter
      name: Literal
      config: {{keep: 1}}
    - type: Filter
      name: Typed
      config:
        language: sql
        keep: n + 1
"
    );
    refused(
        &text,
        "p.yaml:9:22: `keep` of `Literal` must be a boolean expression, but it is an integer
  hint: a Filter keeps the rows for which `keep` is true, e.g. `keep: amount > 0` (with `language: sql`) or a boolean field
p.yaml:14:15: `keep` of `Typed` must be a boolean expression, but it is type Int64
  hint: a Filter keeps the rows for which `keep` is true, e.g. `keep: amount > 0` (with `language: sql`) or a boolean field",
    );
    // Through a MapToFields whose expressions have known types.
    let mapped = format!(
        "{CREATE}    - type: MapToFields
      config:
        language: sql
        append: true
        fields: {{doubled: n * 2, big: n > 1}}
    - type: Filter
      name: Big
      config: {{keep: big}}
    - type: Filter
      name: Doubled
      config: {{keep: doubled}}
"
    );
    refused(
        &mapped,
        "p.yaml:17:22: `keep` of `Doubled` must be a boolean expression, but it is type Int64
  hint: a Filter keeps the rows for which `keep` is true, e.g. `keep: amount > 0` (with `language: sql`) or a boolean field",
    );
}

#[test]
fn keep_after_combine_explode_and_sql_is_typed_by_validate() {
    let hint = "  hint: a Filter keeps the rows for which `keep` is true, e.g. `keep: amount > 0` (with `language: sql`) or a boolean field";
    // Combine: the key keeps its type; `count` is an integer, `mean` a float.
    let combined = "\
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{k: a, n: 1, ok: true}, {k: b, n: 2, ok: false}]
    - type: Combine
      config:
        group_by: [k]
        combine:
          rows: {fn: count, value: n}
          avg: {fn: mean, value: n}
          every: {fn: all, value: ok}
    - type: Filter
      name: Every
      config: {keep: every}
    - type: Filter
      name: Avg
      config: {keep: avg}
    - type: Filter
      name: Key
      config: {keep: k}
";
    refused(
        combined,
        &format!(
            "p.yaml:19:22: `keep` of `Avg` must be a boolean expression, but it is type Float64\n{hint}\np.yaml:22:22: `keep` of `Key` must be a boolean expression, but it is type Utf8\n{hint}"
        ),
    );
    // Explode: a list of integers becomes integers.
    let exploded = "\
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{k: a, ns: [1, 2]}]
    - type: Explode
      config: {fields: [ns]}
    - type: Filter
      name: Item
      config: {keep: ns}
";
    refused(
        exploded,
        &format!(
            "p.yaml:11:22: `keep` of `Item` must be a boolean expression, but it is type Int64\n{hint}"
        ),
    );
    // A stateless query: its columns' types as DataFusion plans them.
    let queried = "\
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{n: 1}, {n: 2}]
    - type: Sql
      config:
        query: SELECT n * 2 AS twice, n > 1 AS big FROM PCOLLECTION
    - type: Filter
      name: Big
      config: {keep: big}
    - type: Filter
      name: Twice
      config: {keep: twice}
";
    refused(
        queried,
        &format!(
            "p.yaml:15:22: `keep` of `Twice` must be a boolean expression, but it is type Int64\n{hint}"
        ),
    );
}

#[test]
fn inline_numbers_that_would_change_are_refused_at_their_position() {
    // `Create` rows: an integer beyond 64 bits used to become a float, 1e400 a string, and a
    // large integer in a column that also holds fractions lost its last digits.
    let text = "\
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{n: 5}, {n: 5.5}, {n: 18446744073709551615}, {n: 9223372036854775807}, {n: 1e400}, {n: 9007199254740992}]
    - type: WriteToJson
      config: {path: out/rows}
";
    refused(
        text,
        "p.yaml:6:42: 18446744073709551615 is out of range for a 64-bit integer
  hint: write it as a string
p.yaml:6:69: 9223372036854775807 cannot be held exactly by the float column `n` (other rows have fractions)
  hint: write it as a string, or keep integers and fractions in separate fields
p.yaml:6:95: 1e400 is out of range for a 64-bit float (about ±1.8e308)
  hint: write it as a string",
    );
}

#[test]
fn a_run_time_expression_error_names_the_transform_and_the_file_position() {
    // The input's schema is only known when the file is read, so `validate` cannot know the
    // type of `keep`; the run must still point at it.
    let text = "\
pipeline:
  type: chain
  transforms:
    - type: ReadFromJson
      config: {path: in.jsonl}
    - type: Filter
      name: Keep
      config:
        language: sql
        keep: n + 1
    - type: WriteToJson
      config: {path: out/rows}
";
    let dir = pipeline(text.as_bytes());
    std::fs::write(dir.path().join("in.jsonl"), "{\"n\": 1}\n{\"n\": 2}\n").unwrap();
    assert_eq!(sluice(&["validate", "p.yaml"], dir.path()).0, 0);
    let (code, _, stderr) = sluice(&["run", "p.yaml"], dir.path());
    // The last line is for the terminal (an ERROR log line comes before it).
    assert_eq!(
        (code, stderr.trim_end().lines().last().unwrap_or_default()),
        (
            1,
            "sluice: pipeline failed: p.yaml:10:15: Keep: `keep` must be a boolean expression, found Int64"
        )
    );
}

#[test]
fn an_expression_too_deep_to_plan_is_refused_instead_of_overflowing_the_stack() {
    let chain = format!("n{}", " + 1".repeat(600));
    let text = format!(
        "{CREATE}    - type: MapToFields
      config:
        language: sql
        fields: {{x: \"{chain}\"}}
"
    );
    refused(
        &text,
        "p.yaml:10:21: the expression nests more than 128 levels deep (in `MapToFields`)
  hint: split it over several fields or transforms; a long chain of `OR`s comparing one field is `field IN (…)`",
    );
    // 120 levels plan and run.
    let dir = pipeline(
        format!(
            "{CREATE}    - type: MapToFields
      config:
        language: sql
        fields: {{x: \"n{}\"}}
    - type: WriteToJson
      config: {{path: out/rows}}
",
            " + 1".repeat(120)
        )
        .as_bytes(),
    );
    let (code, stdout, stderr) = sluice(&["run", "p.yaml"], dir.path());
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out = std::fs::read_to_string(dir.path().join("out/rows-00000-of-00001")).unwrap();
    assert_eq!(out, "{\"x\":121}\n{\"x\":122}\n");
}
