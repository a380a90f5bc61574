//! End-to-end test of dead-letter alarms (`error_handling.alert`) against Google's Pub/Sub
//! emulator, driving the real `sluice` binary with a local webhook receiver.
//!
//! Run with `emulator-tests/run-pubsub-tests.sh` (starts the emulator, sets
//! `PUBSUB_EMULATOR_HOST` and `SLUICE_REQUIRE_EMULATORS=1`). Without `PUBSUB_EMULATOR_HOST` the
//! test returns early with a note, unless `SLUICE_REQUIRE_EMULATORS` is set, in which case it
//! fails. Shared helpers are in `support.rs`.

use google_cloud_pubsub::model::Message;
use serde_json::Value;
use sluice::pubsub::Connection;

#[path = "support.rs"]
mod support;
use support::*;

/// Publishes payloads (no attributes) and waits until the emulator accepted every one.
async fn publish(conn: &Connection, to: &str, payloads: &[String]) {
    let messages = payloads
        .iter()
        .map(|data| Message::new().set_data(data.as_bytes().to_vec()))
        .collect();
    publish_all(conn, to, messages).await;
}

/// 20 good messages, then a burst of 10 malformed ones: the dead-letter rate over the minute
/// is 10/30, above `rate_above: 0.2`, and the webhook gets exactly one alert saying so; the
/// outputs hold exactly the 20 rows and the 10 error records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_burst_sends_exactly_one_alert() {
    let Some(conn) = emulator() else { return };
    let id = ids("alarm");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let (hook, bodies) = webhook().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let pipeline = dir.path().join("alarms.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {input_sub}
        format: JSON
        schema:
          type: object
          properties:
            id: {{type: integer}}
          required: [id]
        subscription_settings:
          topic: {input}
          ack_deadline: 10s
        error_handling:
          output: bad
          alert: {{rate_above: 0.2, over: 1m, webhook: "{hook}"}}
    - type: WriteToJson
      name: WriteRows
      input: Read
      config:
        path: {d}/rows
    - type: WriteToJson
      name: WriteBad
      input: Read.bad
      config:
        path: {d}/bad
"#
        ),
    )
    .expect("write pipeline");
    let p = pipeline.to_str().expect("utf-8 path");

    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let good: Vec<String> = (1..=20).map(|i| format!(r#"{{"id": {i}}}"#)).collect();
    publish(&conn, &input, &good).await;
    let bad: Vec<String> = (1..=10).map(|i| format!("not json {i}")).collect();
    publish(&conn, &input, &bad).await;

    let out = sluice(
        &["run", p, "--until-idle", "5s", "--http", "127.0.0.1:0"],
        &conn,
    )
    .await;
    assert!(out.status.success(), "{}", show(&out));

    let mut rows: Vec<i64> = json_outputs(dir.path(), "rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, (1..=20).collect::<Vec<i64>>());
    let errors = json_outputs(dir.path(), "bad");
    assert_eq!(errors.len(), 10, "{errors:?}");
    let mut elements: Vec<&str> = errors
        .iter()
        .map(|e| e["element"].as_str().expect("element"))
        .collect();
    elements.sort_unstable();
    let mut expected_bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    expected_bad.sort_unstable();
    assert_eq!(elements, expected_bad);
    assert!(
        errors.iter().all(|e| e["transform"] == "Read"),
        "{errors:?}"
    );

    let alerts = bodies.lock().expect("not poisoned").clone();
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{}", show(&out));
    let a = &alerts[0];
    assert_eq!(a["pipeline"], "alarms");
    assert_eq!(a["source"], "Read");
    assert_eq!(a["kind"], "dead_letter_rate");
    assert_eq!(
        a["summary"],
        "Dead-letter rate of Read is 33.3% over 1m (alarm above 20.0%)"
    );
    assert_eq!(
        a["findings"],
        serde_json::json!([{
            "rule": "dead_letter_rate",
            "observed": "0.3333 (10 errors in 30 records)",
            "expected": "<= 0.2",
        }])
    );
    assert_eq!(a["dedup_key"], "dead_letter_rate/alarms/Read");
    assert_eq!(a["valve"], Value::Null);
    assert_eq!(a["suppressed"], 0);
    let status_url = a["status_url"].as_str().expect("status_url");
    assert!(
        status_url.starts_with("http://127.0.0.1:") && status_url.ends_with('/'),
        "{status_url}"
    );
    let (start, end) = (
        a["window_start_ms"].as_i64().expect("start"),
        a["window_end_ms"].as_i64().expect("end"),
    );
    assert!(start < end && end - start <= 60_000, "{a}");
}
