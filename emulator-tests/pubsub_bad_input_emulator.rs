//! Bad input and failures on realistic Pub/Sub traffic, against Google's Pub/Sub emulator with
//! the real `sluice` binary: a message that is not UTF-8 among good ones of the same pull, a
//! dead letter larger than Pub/Sub's 10 MB limit, an endpoint nobody listens on, and JSON logs.
//!
//! Run with `emulator-tests/run-pubsub-tests.sh` (see `pubsub_emulator.rs` for how skipping is
//! prevented). Every test uses its own topics and subscriptions.

use std::time::Duration;

use base64::Engine as _;
use google_cloud_pubsub::model::Message;
use serde_json::Value;
use sha2::Digest as _;
use sluice::pubsub::Connection;

#[path = "support.rs"]
mod support;
use support::*;

/// A pipeline reading `sub` (JSON `{id, name}`) into the file `rows`; with `dlq`, its error
/// output goes to that topic.
fn pipeline(sub: &str, rows: &str, dlq: Option<&str>) -> String {
    let (handling, dead_letters) = match dlq {
        Some(t) => (
            "\n        error_handling:\n          output: bad",
            format!(
                "\n    - type: WriteToPubSub\n      name: DeadLetters\n      input: Read.bad\n      config:\n        topic: {t}"
            ),
        ),
        None => ("", String::new()),
    };
    format!(
        r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {sub}
        format: JSON
        schema:
          type: object
          properties:
            id: {{type: integer}}
            name: {{type: string}}
          required: [id]{handling}
    - type: WriteToJson
      name: WriteRows
      input: Read
      config:
        path: {rows}{dead_letters}
"#
    )
}

/// Creates the input topic and subscription and the dead-letter topic with a subscription.
async fn resources(conn: &Connection, id: &dyn Fn(&str) -> String) {
    create_topic(conn, &id("in")).await;
    create_subscription(conn, &id("in-sub"), &id("in")).await;
    create_topic(conn, &id("dlq")).await;
    create_subscription(conn, &id("dlq-sub"), &id("dlq")).await;
}

fn good(n: i64) -> Message {
    Message::new().set_data(format!(r#"{{"id": {n}, "name": "n{n}"}}"#).into_bytes())
}

fn ids_in(rows: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    ids.sort_unstable();
    ids
}

fn base64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// One message with invalid UTF-8 among five good ones, published in one call (one pull): the
/// five become rows, and exactly one dead letter carries the bad message's bytes in base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_message_fails_alone_and_its_bytes_round_trip() {
    let Some(conn) = emulator() else { return };
    let id = ids("utf8");
    resources(&conn, &id).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = dir.path().join("rows");
    let p = write_pipeline(
        dir.path(),
        &pipeline(&id("in-sub"), &rows.display().to_string(), Some(&id("dlq"))),
    );
    let bad: &[u8] = b"{\"id\": 99, \"name\": \"bad\xff\"}";
    let mut msgs: Vec<Message> = (1..=3).map(good).collect();
    msgs.push(Message::new().set_data(bad.to_vec()));
    msgs.extend((4..=5).map(good));
    publish_all(&conn, &id("in"), msgs).await;

    let out = sluice(&["run", &p, "--until-idle", "3s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let written = json_outputs(dir.path(), "rows");
    assert_eq!(ids_in(&written), vec![1, 2, 3, 4, 5], "{}", show(&out));

    let dead = rest_pull_messages(&conn, &id("dlq-sub")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record: Value =
        serde_json::from_slice(&base64_decode(dead[0]["data"].as_str().expect("data")))
            .expect("a JSON dead letter");
    assert_eq!(record["element_encoding"], "base64", "{record}");
    assert_eq!(record["transform"], "Read");
    assert_eq!(record["msg"], "invalid UTF-8");
    assert_eq!(
        base64_decode(record["element"].as_str().expect("element")),
        bad
    );
    // Nothing left unacknowledged (the subscription's ack deadline is 10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(rest_pull_messages(&conn, &id("in-sub")).await.is_empty());
}

/// A 2,000,000-byte message that is not JSON: its dead letter would be 12 MB once escaped, over
/// Pub/Sub's limit, so it is published cut down and marked; the run ends and the good rows are
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_dead_letter_is_published_truncated_with_its_size_and_hash() {
    let Some(conn) = emulator() else { return };
    let id = ids("huge");
    resources(&conn, &id).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = dir.path().join("rows");
    let p = write_pipeline(
        dir.path(),
        &pipeline(&id("in-sub"), &rows.display().to_string(), Some(&id("dlq"))),
    );
    let huge = vec![1u8; 2_000_000];
    let msgs = vec![good(1), Message::new().set_data(huge.clone()), good(2)];
    publish_all(&conn, &id("in"), msgs).await;

    let run = sluice_command(&["run", &p, "--until-idle", "3s"], &conn).output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .expect("sluice runs");
    assert!(out.status.success(), "{}", show(&out));
    let written = json_outputs(dir.path(), "rows");
    assert_eq!(ids_in(&written), vec![1, 2]);

    let dead = rest_pull_messages(&conn, &id("dlq-sub")).await;
    assert_eq!(dead.len(), 1, "one dead letter");
    let attrs = &dead[0]["attributes"];
    assert_eq!(attrs["sluice_truncated"], "true", "{attrs}");
    assert_eq!(attrs["sluice_original_bytes"], "2000000");
    let sha: String = sha2::Sha256::digest(&huge)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(attrs["sluice_sha256"], sha.as_str());
    let data = base64_decode(dead[0]["data"].as_str().expect("data"));
    assert!(data.len() <= 9_000_000, "{} bytes", data.len());
    let record: Value = serde_json::from_slice(&data).expect("a JSON dead letter");
    let kept = record["element"].as_str().expect("element");
    assert!(!kept.is_empty() && huge.starts_with(kept.as_bytes()));
    assert_eq!(record["msg"], "expected one JSON object");
    assert_eq!(record["transform"], "Read");
}

/// `PUBSUB_EMULATOR_HOST` at a port nobody listens on: `/readyz` answers 503 naming it while
/// the source retries, and the run exits 1 with an ERROR naming the endpoint (not 0 with 0 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_readiness_and_the_run() {
    let Some(_) = emulator() else { return };
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let closed = format!("127.0.0.1:{}", free_port());
    let nowhere = Connection {
        emulator: Some(format!("http://{closed}")),
        project: Some(PROJECT.into()),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = dir.path().join("rows").display().to_string();
    let p = write_pipeline(dir.path(), &pipeline("nowhere-sub", &rows, None));
    let addr = format!("127.0.0.1:{}", free_port());
    let run = sluice_command(
        &["run", &p, "--until-idle", "5s", "--http", &addr],
        &nowhere,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("sluice runs");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (status, body) = loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if body.contains("unreachable") {
                break (status, body);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never reported the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&closed), "{body}");

    let out = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output())
        .await
        .expect("the run ends")
        .expect("output");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains(&closed)),
        "{}",
        show(&out)
    );
}

/// With `SLUICE_LOG_FORMAT=json`, every stderr line of a run with a bad record (and no error
/// output) is a JSON object with `severity` and `message`, and the summary is one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_lines_with_a_structured_summary() {
    let Some(conn) = emulator() else { return };
    let id = ids("jsonlog");
    resources(&conn, &id).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = dir.path().join("rows").display().to_string();
    let p = write_pipeline(dir.path(), &pipeline(&id("in-sub"), &rows, None));
    let msgs = vec![
        good(1),
        Message::new().set_data(b"not json".to_vec()),
        good(2),
    ];
    publish_all(&conn, &id("in"), msgs).await;
    let out = sluice_command(&["run", &p, "--until-idle", "3s"], &conn)
        .env("SLUICE_LOG_FORMAT", "json")
        .output()
        .await
        .expect("sluice runs");
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let entries: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &entries {
        assert!(e["severity"].is_string() && e["message"].is_string(), "{e}");
    }
    let summary = entries
        .iter()
        .find(|e| e["message"] == "Run summary")
        .expect("a summary entry");
    assert_eq!(summary["severity"], "INFO");
    let read = summary["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["transform"] == "Read")
        .expect("Read's line");
    assert_eq!(
        (&read["rows_out"], &read["errors"]),
        (&Value::from(2), &Value::from(1))
    );
    let warning = entries
        .iter()
        .find(|e| e["severity"] == "WARNING" && e["transform"] == "Read")
        .expect("a warning for the failed record");
    assert_eq!(warning["failed"], 1);
    assert_eq!(
        warning["examples"],
        serde_json::json!(["expected one JSON object: not json"])
    );
}
