//! Transforms not covered by the Beam comparisons: StripErrorMetadata, AssertEqual,
//! ValidateWithSchema details, and a clean stop on SIGTERM.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn strip_error_metadata_recovers_the_failed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("retry");
    let spec = parse(
        "p.yaml",
        &format!(
            r#"
pipeline:
  transforms:
    - type: Create
      config:
        elements: [{{id: 1, qty: 2}}, {{id: 2, qty: -1}}, {{id: 3, qty: -7}}]
    - type: ValidateWithSchema
      name: Check
      input: Create
      config:
        schema: {{type: object, properties: {{qty: {{type: integer, minimum: 0}}}}}}
      error_handling: {{output: invalid}}
    - type: StripErrorMetadata
      name: Originals
      input: Check.invalid
    - type: AssertEqual
      name: ValidOnly
      input: Check
      config:
        elements: [{{id: 1, qty: 2}}]
    - type: WriteToJson
      input: Originals
      config: {{path: {out}}}
"#,
            out = out.display()
        ),
    );
    let report = run_spec(&spec).await.unwrap();
    assert_eq!(stat(&report, "Check"), (3, 1, 2));
    assert_rows_eq(
        &[json!({"id": 2, "qty": -1}), json!({"id": 3, "qty": -7})],
        &read_json_outputs(&out),
    );
}

#[tokio::test]
async fn assert_equal_fails_the_run_with_the_difference() {
    let spec = parse(
        "p.yaml",
        "pipeline:\n  type: chain\n  transforms:\n    - type: Create\n      config: {elements: [{a: 1}, {a: 2}]}\n    - type: AssertEqual\n      config: {elements: [{a: 1}, {a: 3}]}\n",
    );
    let err = run_spec(&spec).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "AssertEqual: assertion failed: expected 2 rows, got 2\n    missing:    {\"a\":3}\n    unexpected: {\"a\":2}"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_stops_reading_and_flushes_what_was_read() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let total = 300_000;
    for i in 0..total {
        writeln!(f, "{{\"id\":{i}}}").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        "options: {batch_size: 10}\npipeline:\n  type: chain\n  transforms:\n    - type: ReadFromJson\n      config: {path: big.jsonl}\n    - type: WriteToJson\n      config: {path: out}\n",
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "p.yaml"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run is under way, then ask it to stop.
    let started = std::time::Instant::now();
    while !dir.path().join("out-00000-of-00001.inprogress").exists() {
        assert!(
            started.elapsed().as_secs() < 60,
            "the run never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What was read was written completely and in order: a prefix of the input.
    let written = std::fs::read_to_string(dir.path().join("out-00000-of-00001")).unwrap();
    let ids: Vec<i64> = written
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        ids.len() < total,
        "the stop came after the whole input was read"
    );
    assert!(ids.iter().enumerate().all(|(i, id)| *id == i as i64));
}
