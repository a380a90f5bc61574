//! Issue #20, the data half: numbers that do not fit their declared type, ragged CSV rows and
//! numeric event times, each as a user meets them in a whole pipeline run. Every case here was
//! silently wrong (or failed the whole run) before the fix.

mod common;

use common::*;
use serde_json::{Value, json};

fn msgs(rows: &[Value]) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| {
            (
                r["element"].as_str().unwrap_or_default().to_string(),
                r["msg"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn numbers_that_do_not_fit_their_type_are_error_records_not_changed_values() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("numbers.jsonl");
    let lines = [
        r#"{"id": 1, "n": 5, "x": 1.5}"#,
        r#"{"id": 2, "n": 5.5}"#,
        r#"{"id": 3, "n": -9223372036854775809}"#,
        r#"{"id": 4, "n": 9223372036854775808}"#,
        r#"{"id": 5, "x": 1e400}"#,
        r#"{"id": 6, "n": -9223372036854775808, "x": -2.5e3}"#,
        r#"{"id": 7, "n": 5.0}"#,
        r#"{"id": 8, "n": 1e2}"#,
        r#"{"id": 9, "x": -1e400}"#,
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("good");
    let errors = dir.path().join("bad");
    let spec = parse(
        "numbers.yaml",
        &format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config:
        path: {input}
        schema:
          type: object
          properties: {{id: {{type: integer}}, n: {{type: integer}}, x: {{type: number}}}}
      error_handling: {{output: bad}}
    - type: WriteToJson
      name: Good
      input: Read
      config: {{path: {out}}}
    - type: WriteToJson
      name: Bad
      input: Read.bad
      config: {{path: {errors}}}
"#,
            input = input.display(),
            out = out.display(),
            errors = errors.display()
        ),
    );
    run_spec(&spec).await.unwrap();
    assert_eq!(
        read_json_outputs(&out),
        vec![
            json!({"id": 1, "n": 5, "x": 1.5}),
            json!({"id": 6, "n": i64::MIN, "x": -2500.0}),
            json!({"id": 7, "n": 5, "x": null}),
            json!({"id": 8, "n": 100, "x": null}),
        ]
    );
    let bad = msgs(&read_json_outputs(&errors));
    let elements: Vec<&str> = bad.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        elements,
        vec![lines[1], lines[2], lines[3], lines[4], lines[8]]
    );
    let path = input.display().to_string();
    let expect = [
        "field `n`: 5.5 is not an integer",
        "field `n`: -9223372036854775809 is out of range for a 64-bit integer",
        "field `n`: 9223372036854775808 is out of range for a 64-bit integer",
        "field `x`: the number is out of range for a 64-bit float",
        "field `x`: the number is out of range for a 64-bit float",
    ];
    for (((_, msg), want), line) in bad.iter().zip(expect).zip([2, 3, 4, 5, 9]) {
        assert!(msg.starts_with(&format!("{path}:{line}: ")), "{msg}");
        assert!(msg.contains(want), "{msg} should contain {want}");
    }
}

#[tokio::test]
async fn a_ragged_csv_row_without_a_schema_is_an_error_record_and_the_rest_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("orders.csv");
    std::fs::write(
        &input,
        "id,item,qty\n1,apple,2\n2,pear\n3,plum,7\n4,fig,1,extra\n",
    )
    .unwrap();
    let out = dir.path().join("good");
    let errors = dir.path().join("bad");
    let spec = parse(
        "csv.yaml",
        &format!(
            r#"
options: {{batch_size: 2}}
pipeline:
  transforms:
    - type: ReadFromCsv
      name: Read
      config: {{path: {input}}}
      error_handling: {{output: bad}}
    - type: WriteToJson
      name: Good
      input: Read
      config: {{path: {out}}}
    - type: WriteToJson
      name: Bad
      input: Read.bad
      config: {{path: {errors}}}
"#,
            input = input.display(),
            out = out.display(),
            errors = errors.display()
        ),
    );
    run_spec(&spec).await.unwrap();
    assert_eq!(
        read_json_outputs(&out),
        vec![
            json!({"id": 1, "item": "apple", "qty": 2}),
            json!({"id": 3, "item": "plum", "qty": 7}),
        ]
    );
    let path = input.display();
    assert_eq!(
        msgs(&read_json_outputs(&errors)),
        vec![
            (
                "2,pear".to_string(),
                format!("{path}:3: expected 3 fields, got 2")
            ),
            (
                "4,fig,1,extra".to_string(),
                format!("{path}:5: expected 3 fields, got 4")
            ),
        ]
    );
}

#[tokio::test]
async fn ragged_csv_rows_with_a_schema_name_their_line_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("orders.csv");
    let mut text = String::from("id,item\n");
    for i in 0..10 {
        if i == 1 || i == 6 {
            text.push_str(&format!("{i}\n"));
        } else {
            text.push_str(&format!("{i},item{i}\n"));
        }
    }
    text.push_str("x,not a number\n");
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("good");
    let errors = dir.path().join("bad");
    let spec = parse(
        "csv.yaml",
        &format!(
            r#"
options: {{batch_size: 3}}
pipeline:
  transforms:
    - type: ReadFromCsv
      name: Read
      config:
        path: {input}
        schema: {{type: object, properties: {{id: {{type: integer}}, item: {{type: string}}}}}}
      error_handling: {{output: bad}}
    - type: WriteToJson
      name: Good
      input: Read
      config: {{path: {out}}}
    - type: WriteToJson
      name: Bad
      input: Read.bad
      config: {{path: {errors}}}
"#,
            input = input.display(),
            out = out.display(),
            errors = errors.display()
        ),
    );
    run_spec(&spec).await.unwrap();
    let ids: Vec<i64> = read_json_outputs(&out)
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![0, 2, 3, 4, 5, 7, 8, 9]);
    let bad = msgs(&read_json_outputs(&errors));
    let path = input.display();
    assert_eq!(
        bad[0],
        ("1".into(), format!("{path}:3: expected 2 fields, got 1"))
    );
    assert_eq!(
        bad[1],
        ("6".into(), format!("{path}:8: expected 2 fields, got 1"))
    );
    assert_eq!(bad[2].0, "x,not a number");
    assert!(
        bad[2].1.starts_with(&format!("{path}:12: ")),
        "{}",
        bad[2].1
    );
    assert!(!bad[2].1.contains("line 0"), "{}", bad[2].1);
    assert_eq!(bad.len(), 3);
}

fn stamped(unit: &str, values: &str) -> String {
    format!(
        r#"
pipeline:
  transforms:
    - type: Create
      config:
        elements: {values}
    - type: AssignTimestamps
      name: Stamp
      input: Create
      config:
        timestamp: t{unit}
    - type: Combine
      name: PerMinute
      input: Stamp
      windowing: {{type: fixed, size: 60s}}
      config:
        group_by: [k]
        combine:
          n: count
    - type: ExtractWindowingInfo
      name: Info
      input: PerMinute
      config:
        fields: [window_string]
    - type: WriteToJson
      input: Info
      config: {{path: "{{{{ out }}}}"}}
"#
    )
}

async fn run_stamped(unit: &str, values: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let text = stamped(unit, values).replace("{{ out }}", &out.display().to_string());
    let spec = parse("stamp.yaml", &text);
    run_spec(&spec).await.unwrap();
    let mut rows = read_json_outputs(&out);
    rows.sort_by_key(|r| r["window_string"].as_str().unwrap_or_default().to_string());
    rows
}

/// A BigQuery export or a JavaScript producer writes epoch milliseconds; Beam's generic
/// AssignTimestamps reads numbers as seconds. Both land in the same minute.
#[tokio::test]
async fn epoch_milliseconds_and_seconds_land_in_the_same_minute_by_default() {
    let rows = run_stamped(
        "",
        "[{k: a, t: 1767225600123}, {k: a, t: 1767225630}, {k: a, t: 1767225659.5}]",
    )
    .await;
    assert_eq!(
        rows,
        vec![json!({"k": "a", "n": 3, "window_string": "[1767225600.0, 1767225660.0)"})]
    );
}

#[tokio::test]
async fn a_declared_unit_reads_every_number_in_it() {
    // 60,000 ms is one minute after the epoch; read as seconds it would be in 1970-01-01T16:40.
    let rows = run_stamped(
        "\n        unit: ms",
        "[{k: a, t: 60000}, {k: a, t: 119999}]",
    )
    .await;
    assert_eq!(
        rows,
        vec![json!({"k": "a", "n": 2, "window_string": "[60.0, 120.0)"})]
    );
    let rows = run_stamped("\n        unit: s", "[{k: a, t: 1767225600123}]").await;
    assert_eq!(
        rows,
        vec![json!({"k": "a", "n": 1, "window_string": "[1767225600120.0, 1767225600180.0)"})]
    );
}

/// `sluice validate` names a unit it does not know, with its position and the default rule.
#[test]
fn an_unknown_unit_is_a_validation_error() {
    let text = "pipeline:\n  transforms:\n    - type: Create\n      config:\n        elements: [{t: 1}]\n    - type: AssignTimestamps\n      input: Create\n      config:\n        timestamp: t\n        unit: minutes\n";
    let err = sluice::config::parse("unit.yaml", text, &Default::default())
        .err()
        .map(|d| d.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("unit.yaml:10:15: `unit` must be one of auto, s, ms, us, ns, found `minutes`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_function_asked_for_gigabytes_fails_alone() {
    // `repeat` with a count from the data: one row asks for 5 GB. It used to abort the worker
    // (`memory allocation … failed`); now that row is an error record and the others are written.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = [
        r#"{"id": 1, "s": "ab", "n": 2}"#,
        r#"{"id": 2, "s": "xyzzy", "n": 1000000000}"#,
        r#"{"id": 3, "s": "c", "n": 3}"#,
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("good");
    let errors = dir.path().join("bad");
    let spec = parse(
        "repeat.yaml",
        &format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config: {{path: {input}}}
    - type: MapToFields
      name: Pad
      input: Read
      config:
        language: sql
        fields: {{id: id, r: "repeat(s, n)"}}
      error_handling: {{output: bad}}
    - type: WriteToJson
      name: Good
      input: Pad
      config: {{path: {out}}}
    - type: WriteToJson
      name: Bad
      input: Pad.bad
      config: {{path: {errors}}}
"#,
            input = input.display(),
            out = out.display(),
            errors = errors.display()
        ),
    );
    run_spec(&spec).await.unwrap();
    assert_eq!(
        read_json_outputs(&out),
        vec![json!({"id": 1, "r": "abab"}), json!({"id": 3, "r": "ccc"})]
    );
    let bad = read_json_outputs(&errors);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["transform"], json!("Pad"));
    let element: Value = serde_json::from_str(bad[0]["element"].as_str().unwrap()).unwrap();
    assert_eq!(element, json!({"id": 2, "s": "xyzzy", "n": 1000000000}));
    let msg = bad[0]["msg"].as_str().unwrap();
    assert!(
        msg.contains(
            "repeat() would produce about 4768 MiB for 1 row(s), more than the limit of 64 MiB (SLUICE_MAX_FUNCTION_OUTPUT)"
        ),
        "{msg}"
    );
}
