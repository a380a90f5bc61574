//! End-to-end tests of `ReadFromPubSub`, `WriteToPubSub` and `sluice setup` against Google's
//! Pub/Sub emulator, driving the real `sluice` binary.
//!
//! Run them with `emulator-tests/run-pubsub-tests.sh` (starts the emulator on a free port, sets
//! `PUBSUB_EMULATOR_HOST` and `SLUICE_REQUIRE_EMULATORS=1`, runs this file, stops it). Without
//! `PUBSUB_EMULATOR_HOST` each test returns early with a note, unless `SLUICE_REQUIRE_EMULATORS`
//! is set, in which case it fails: the script's run can never pass by skipping.
//! Every test uses its own topics and subscriptions.

use std::collections::BTreeMap;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use serde_json::{Value, json};
use sluice::pubsub::Connection;

#[path = "support.rs"]
mod support;
use support::*;

/// Publishes `(payload, attributes)` messages; returns their message ids.
async fn publish(conn: &Connection, to: &str, msgs: &[(&str, &[(&str, &str)])]) -> Vec<String> {
    let messages = msgs
        .iter()
        .map(|(data, attrs)| {
            Message::new()
                .set_data(data.as_bytes().to_vec())
                .set_attributes(attrs.iter().map(|(k, v)| (*k, *v)))
        })
        .collect();
    publish_all(conn, to, messages).await
}

/// Pulls (and acknowledges) everything `name` delivers until nothing came for `idle`.
async fn pull_all(conn: &Connection, name: &str, idle: Duration) -> Vec<Message> {
    let subscriber = conn.subscriber().await.expect("subscriber");
    let mut stream = subscriber.subscribe(sub(name)).build();
    let mut got = Vec::new();
    while let Ok(Some(next)) = tokio::time::timeout(idle, stream.next()).await {
        let (m, h) = next.expect("streaming pull");
        h.ack();
        got.push(m);
    }
    stream.shutdown_token().shutdown().await;
    got
}

/// Polls `url` every 100 ms (for at most 30 s) until its body satisfies `done`; returns it.
async fn scrape_until(url: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && let Ok(body) = r.text().await
            && done(&body)
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not show the expected values in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sorted_by_id(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r["id"].as_i64());
    v
}

const SCHEMA: &str = r#"
        schema:
          type: object
          properties:
            id: {type: integer}
            name: {type: string}
          required: [id]"#;

/// Valid messages become exactly the expected rows in a file and on a topic (with `sluice_id`
/// = the input message id); malformed ones reach the error output (file and dead-letter topic)
/// with payload, error and transform; after `--until-idle` nothing is left unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_map_write_exact_rows_errors_and_acks() {
    let Some(conn) = emulator() else { return };
    let id = ids("rmw");
    let (input, input_sub, output, output_sub, dlq, dlq_sub) = (
        id("in"),
        id("in-sub"),
        id("out"),
        id("out-sub"),
        id("dlq"),
        id("dlq-sub"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {input_sub}
        format: JSON{SCHEMA}
        attributes: [kind]
        metadata_fields: [message_id]
        error_handling:
          output: bad
        flow_control:
          lease_extension: 10s
        subscription_settings:
          topic: {input}
          ack_deadline: 10s
    - type: MapToFields
      name: Shape
      input: Read
      config:
        language: sql
        fields:
          id: id
          name: upper(name)
          kind: kind
          doubled: id * 2
          message_id: message_id
    - type: WriteToJson
      name: WriteRows
      input: Shape
      config:
        path: {d}/rows
    - type: WriteToPubSub
      name: Publish
      input: Shape
      config:
        topic: {output}
    - type: WriteToJson
      name: WriteBad
      input: Read.bad
      config:
        path: {d}/bad
    - type: WriteToPubSub
      name: DeadLetters
      input: Read.bad
      config:
        topic: {dlq}
"#
        ),
    );
    let p = pipeline.as_str();

    // setup creates the four resources, and a second run finds them.
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("created ").count(), 4, "{}", show(&out));
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("exists ")
            .count(),
        4,
        "{}",
        show(&out)
    );
    create_subscription(&conn, &output_sub, &output).await;
    create_subscription(&conn, &dlq_sub, &dlq).await;

    let msg_ids = publish(
        &conn,
        &input,
        &[
            (r#"{"id": 1, "name": "a"}"#, &[("kind", "x")]),
            ("not json", &[("kind", "x")]),
            (r#"{"id": 2, "name": "b"}"#, &[("kind", "y")]),
            (r#"{"name": "no id"}"#, &[]),
            ("{\n  \"id\": 3\n}", &[]),
        ],
    )
    .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", p, "--until-idle", "3s", "--http", &addr])
        .env("PUBSUB_EMULATOR_HOST", host(&conn))
        .env("GOOGLE_CLOUD_PROJECT", PROJECT)
        .env("RUST_LOG", "sluice=info")
        .env_remove("SLUICE_STATUS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the sluice binary runs");
    // While idle before the end, the file sinks still hold every batch (files are complete only
    // at the end), so all five messages are received and none acknowledged yet.
    // Scraped once the five were received and the publisher sink finished a write: the sink
    // works on its batch concurrently with the scrape, so waiting for `received` alone races.
    let metrics = scrape_until(&format!("http://{addr}/metrics"), |m| {
        m.contains("sluice_source_messages_received_total{pipeline=\"p\",transform=\"Read\"} 5\n")
            && m.lines().any(|l| {
                l.strip_prefix(
                    "sluice_sink_write_duration_seconds_count{pipeline=\"p\",transform=\"Publish\"} ",
                )
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n >= 1.0)
            })
    })
    .await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} in:\n{metrics}"))
    };
    let (read, publish) = (
        "{pipeline=\"p\",transform=\"Read\"}",
        "{pipeline=\"p\",transform=\"Publish\"}",
    );
    assert_eq!(
        value(&format!("sluice_source_messages_acked_total{read}")),
        0.0
    );
    assert_eq!(
        value(&format!("sluice_source_messages_nacked_total{read}")),
        0.0
    );
    assert_eq!(
        value(&format!("sluice_source_messages_outstanding{read}")),
        5.0
    );
    assert!(value(&format!("sluice_source_oldest_unacked_age_seconds{read}")) >= 0.0);
    assert!(value(&format!("sluice_source_throttled_seconds_total{read}")) >= 0.0);
    assert_eq!(
        value(&format!("sluice_source_paused_seconds_total{read}")),
        0.0
    );
    // One publish round per batch with good rows (the five may arrive in more than one).
    assert!(
        value(&format!(
            "sluice_sink_write_duration_seconds_count{publish}"
        )) >= 1.0
    );
    assert_eq!(value(&format!("sluice_sink_retries_total{publish}")), 0.0);
    assert_eq!(value(&format!("sluice_sink_failures_total{publish}")), 0.0);
    let out = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output())
        .await
        .expect("sluice exits")
        .expect("output");
    assert!(out.status.success(), "{}", show(&out));

    let expected = json!([
        {"id": 1, "name": "A", "kind": "x", "doubled": 2, "message_id": msg_ids[0]},
        {"id": 2, "name": "B", "kind": "y", "doubled": 4, "message_id": msg_ids[2]},
        {"id": 3, "name": null, "kind": null, "doubled": 6, "message_id": msg_ids[4]},
    ]);
    let rows = sorted_by_id(json_outputs(dir.path(), "rows"));
    assert_eq!(Value::from(rows), expected);

    let published = pull_all(&conn, &output_sub, Duration::from_secs(2)).await;
    let mut by_id: BTreeMap<i64, (Value, String)> = BTreeMap::new();
    for m in &published {
        let v: Value = serde_json::from_slice(&m.data).expect("JSON payload");
        let sid = m.attributes.get("sluice_id").cloned().unwrap_or_default();
        by_id.insert(v["id"].as_i64().expect("id"), (v, sid));
    }
    assert_eq!(published.len(), 3, "{published:?}");
    let payloads: Vec<Value> = by_id.values().map(|(v, _)| v.clone()).collect();
    assert_eq!(Value::from(payloads), expected);
    let sids: Vec<&str> = by_id.values().map(|(_, s)| s.as_str()).collect();
    assert_eq!(sids, vec![&msg_ids[0], &msg_ids[2], &msg_ids[4]]);

    let mut bad = json_outputs(dir.path(), "bad");
    bad.sort_by_key(|r| r["element"].as_str().map(str::to_string));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0]["element"], "not json");
    assert_eq!(bad[1]["element"], r#"{"name": "no id"}"#);
    for b in &bad {
        assert_eq!(b["transform"], "Read");
        assert!(!b["msg"].as_str().unwrap_or_default().is_empty(), "{b}");
    }
    let mut dead: Vec<Value> = pull_all(&conn, &dlq_sub, Duration::from_secs(2))
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.data).expect("JSON dead letter"))
        .collect();
    dead.sort_by_key(|r| r["element"].as_str().map(str::to_string));
    assert_eq!(dead, bad);

    // Nothing left: an unacknowledged message would be redelivered once its 10s lease lapsed.
    let left = pull_all(&conn, &input_sub, Duration::from_secs(13)).await;
    assert!(left.is_empty(), "unacknowledged after the run: {left:?}");
}

/// A run that fails (its sink's topic does not exist) acknowledges nothing: the message is
/// nacked, redelivered, and after `max_delivery_attempts` lands in the dead-letter topic.
/// (A nacked message is redelivered at once to a stream that is still open, so a failing run may
/// use more than one attempt while it stops; on the emulator with its gRPC shim each failed run
/// used exactly one, so the sixth run finds it dead-lettered. The test asserts the outcome, not
/// the number of runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_past_max_delivery_attempts_lands_in_dead_letter_topic() {
    let Some(conn) = emulator() else { return };
    let id = ids("dlp");
    let (input, input_sub, dlq, dlq_sub, missing) = (
        id("in"),
        id("in-sub"),
        id("dlq"),
        id("dlq-sub"),
        id("missing"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {input_sub}
        format: RAW
        flow_control:
          lease_extension: 10s
        subscription_settings:
          topic: {input}
          dead_letter:
            topic: {dlq}
            max_delivery_attempts: 5
    - type: WriteToPubSub
      name: Publish
      input: Read
      config:
        topic: {missing}
        format: RAW
"#
        ),
    );
    let p = pipeline.as_str();
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    create_subscription(&conn, &dlq_sub, &dlq).await;
    // setup created the sink's topic too: delete it so that every run's sink fails.
    conn.topic_admin()
        .await
        .expect("admin client")
        .delete_topic()
        .set_topic(topic(&missing))
        .send()
        .await
        .expect("delete topic");
    publish(&conn, &input, &[("poison", &[])]).await;

    let mut failures = 0;
    let mut dead = Vec::new();
    for _ in 0..8 {
        let out = sluice(&["run", p, "--until-idle", "12s"], &conn).await;
        if !out.status.success() {
            failures += 1;
            assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        }
        // The unary pull sees a dead letter sooner than a new streaming pull does.
        dead.extend(rest_pull_messages(&conn, &dlq_sub).await);
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead.len(), 1, "after {failures} failed runs: {dead:?}");
    assert_eq!(dead[0]["data"], json!("cG9pc29u"), "base64 of `poison`");
    assert_eq!(
        dead[0]["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"],
        json!("5")
    );
    assert!(failures >= 1, "{failures} failed runs");
    let left = pull_all(&conn, &input_sub, Duration::from_secs(1)).await;
    assert!(left.is_empty(), "{left:?}");
}

/// A worker killed (SIGKILL) before its sink wrote leaves its messages unacknowledged: they are
/// redelivered and the next run produces exactly the same output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_redelivers_and_rerun_gives_same_output() {
    let Some(conn) = emulator() else { return };
    let id = ids("kill");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {input_sub}
        format: JSON{SCHEMA}
        flow_control:
          lease_extension: 10s
        subscription_settings:
          topic: {input}
          ack_deadline: 10s
    - type: MapToFields
      name: Shape
      input: Read
      config:
        language: sql
        fields:
          id: id
          tripled: id * 3
    - type: WriteToJson
      name: Write
      input: Shape
      config:
        path: {d}/out
"#
        ),
    );
    let p = pipeline.as_str();
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    publish(
        &conn,
        &input,
        &[
            (r#"{"id": 1}"#, &[]),
            (r#"{"id": 2}"#, &[]),
            (r#"{"id": 3}"#, &[]),
        ],
    )
    .await;

    // The file sink completes (and acknowledges) only when the run ends, after 60s idle: once the
    // worker has received all three messages, a SIGKILL is certainly before the sink's write.
    let (mut child, base) = start(
        &conn,
        std::path::Path::new(&pipeline),
        &["--until-idle", "60s"],
    );
    scrape_until(&format!("{base}/metrics"), |m| {
        m.contains("sluice_source_messages_received_total{pipeline=\"p\",transform=\"Read\"} 3\n")
    })
    .await;
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert!(!status.success());
    assert!(output_names(dir.path(), "out").is_empty());

    // Redelivery comes once the killed worker's 10s lease lapsed (the emulator scans leases every
    // second; 25 s of idleness leaves room for a slow start under load).
    let out = sluice(&["run", p, "--until-idle", "25s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let rows = sorted_by_id(json_outputs(dir.path(), "out"));
    assert_eq!(
        Value::from(rows),
        json!([
            {"id": 1, "tripled": 3},
            {"id": 2, "tripled": 6},
            {"id": 3, "tripled": 9},
        ])
    );
    let left = pull_all(&conn, &input_sub, Duration::from_secs(2)).await;
    assert!(left.is_empty(), "{left:?}");
}

/// `topic:` reads through a subscription created for the run (and deleted after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_topic_uses_a_temporary_subscription() {
    let Some(conn) = emulator() else { return };
    let id = ids("tmp");
    let (input, output, output_sub) = (id("in"), id("out"), id("out-sub"));
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        topic: {input}
        format: RAW
        attributes_map: attrs
    - type: WriteToPubSub
      name: Forward
      input: Read
      config:
        topic: {output}
        format: RAW
        attributes_map: attrs
"#
        ),
    );
    let p = pipeline.as_str();
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    create_subscription(&conn, &output_sub, &output).await;
    let p2 = p.to_string();
    let conn2 = conn.clone();
    let run =
        tokio::spawn(async move { sluice(&["run", &p2, "--until-idle", "8s"], &conn2).await });
    // The run's subscription exists only once it started.
    tokio::time::sleep(Duration::from_secs(5)).await;
    publish(&conn, &input, &[("hello", &[("a", "1"), ("b", "2")])]).await;
    let out = run.await.expect("join");
    assert!(out.status.success(), "{}", show(&out));
    let got = pull_all(&conn, &output_sub, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].data[..], b"hello");
    assert_eq!(got[0].attributes.get("a").map(String::as_str), Some("1"));
    assert_eq!(got[0].attributes.get("b").map(String::as_str), Some("2"));
    assert!(got[0].attributes.contains_key("sluice_id"));
}

/// Issue 4's whole streaming pipeline: ReadFromPubSub → AssignTimestamps → Check (validate) →
/// windowed Combine → WriteToJson and WriteToPubSub, malformed messages → a dead-letter topic.
/// Exact per-window totals in the file and on the topic, the bad payloads in the dead-letter
/// topic, and an empty input backlog after `--until-idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_pipeline_exact_totals_dead_letters_and_empty_backlog() {
    let Some(conn) = emulator() else { return };
    let id = ids("win");
    let (input, input_sub, output, output_sub, dlq, dlq_sub) = (
        id("in"),
        id("in-sub"),
        id("out"),
        id("out-sub"),
        id("dlq"),
        id("dlq-sub"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
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
            recipe: {{type: string}}
            ts: {{type: integer}}
            secs: {{type: integer}}
          required: [recipe, ts, secs]
        error_handling:
          output: bad
        flow_control:
          lease_extension: 10s
        subscription_settings:
          topic: {input}
    - type: AssignTimestamps
      name: EventTime
      input: Read
      config:
        timestamp: ts
    - type: Check
      name: Valid
      input: EventTime
      config:
        not_null: [recipe]
        expression: "secs >= 0"
        on_failure: halt
    - type: Combine
      name: PerWindow
      input: Valid
      windowing: {{type: fixed, size: 60s}}
      config:
        group_by: [recipe]
        combine:
          views: {{fn: count, value: secs}}
          watch: {{fn: sum, value: secs}}
    - type: ExtractWindowingInfo
      name: WithWindow
      input: PerWindow
      config:
        fields: [window_start]
    - type: MapToFields
      name: Shape
      input: WithWindow
      config:
        language: sql
        fields:
          minute: "CAST(to_unixtime(window_start) / 60 AS BIGINT)"
          recipe: recipe
          views: views
          watch: watch
    - type: WriteToJson
      name: WriteRows
      input: Shape
      config:
        path: {d}/rows
    - type: WriteToPubSub
      name: Publish
      input: Shape
      config:
        topic: {output}
    - type: WriteToPubSub
      name: DeadLetters
      input: Read.bad
      config:
        topic: {dlq}
"#
        ),
    );
    let p = pipeline.as_str();
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    create_subscription(&conn, &output_sub, &output).await;
    create_subscription(&conn, &dlq_sub, &dlq).await;

    // Event times in seconds. Minute 0: a ×2 (3 + 4 s watched), b ×1 (5 s); minute 1: a ×1
    // (10 s); and two malformed messages.
    let good = [("a", 1, 3), ("b", 2, 5), ("a", 59, 4), ("a", 61, 10)];
    let mut messages: Vec<Message> = good
        .iter()
        .map(|(r, ts, s)| {
            Message::new().set_data(format!(r#"{{"recipe": "{r}", "ts": {ts}, "secs": {s}}}"#))
        })
        .collect();
    messages.push(Message::new().set_data("not json"));
    messages.push(Message::new().set_data(r#"{"recipe": "c"}"#));
    publish_all(&conn, &input, messages).await;

    let out = sluice(&["run", p, "--until-idle", "3s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let mut rows = json_outputs(dir.path(), "rows");
    let key = |r: &Value| {
        (
            r["minute"].as_i64(),
            r["recipe"].as_str().map(str::to_string),
        )
    };
    rows.sort_by_key(key);
    let expected = json!([
        {"minute": 0, "recipe": "a", "views": 2, "watch": 7},
        {"minute": 0, "recipe": "b", "views": 1, "watch": 5},
        {"minute": 1, "recipe": "a", "views": 1, "watch": 10},
    ]);
    assert_eq!(Value::from(rows), expected);
    let mut published: Vec<Value> = pull_all(&conn, &output_sub, Duration::from_secs(5))
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.data).expect("JSON row"))
        .collect();
    published.sort_by_key(key);
    assert_eq!(Value::from(published), expected);

    let mut dead: Vec<String> = pull_all(&conn, &dlq_sub, Duration::from_secs(5))
        .await
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.data).expect("JSON dead letter");
            assert_eq!(v["transform"], json!("Read"), "{v}");
            assert!(v["msg"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
            v["element"].as_str().expect("payload").to_string()
        })
        .collect();
    dead.sort();
    assert_eq!(dead, ["not json", r#"{"recipe": "c"}"#]);

    let left = pull_all(&conn, &input_sub, Duration::from_secs(13)).await;
    assert!(left.is_empty(), "unacknowledged after the run: {left:?}");
}

/// `Deduplicate` without `by` keys on the message id: the `id_attribute` value when the message
/// has it, else the Pub/Sub message id. Two retried publishes (same `eid`) give one row each; a
/// message with the same payload but another `eid`, and one without `eid`, are kept. Dropped
/// duplicates are acknowledged too: the input backlog is empty after the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicate_by_id_attribute_keeps_one_row_per_id() {
    let Some(conn) = emulator() else { return };
    let id = ids("dedup");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
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
            n: {{type: integer}}
          required: [n]
        attributes: [eid]
        id_attribute: eid
        flow_control:
          lease_extension: 10s
        subscription_settings:
          topic: {input}
    - type: Deduplicate
      name: Once
      input: Read
      config:
        within: 10m
    - type: WriteToJson
      name: WriteRows
      input: Once
      config:
        path: {d}/rows
"#
        ),
    );
    let p = pipeline.as_str();
    let out = sluice(&["validate", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    publish(
        &conn,
        &input,
        &[
            (r#"{"n": 1}"#, &[("eid", "A")]),
            (r#"{"n": 2}"#, &[("eid", "B")]),
            (r#"{"n": 1}"#, &[("eid", "A")]),
            (r#"{"n": 1}"#, &[("eid", "C")]),
            (r#"{"n": 5}"#, &[]),
            (r#"{"n": 2}"#, &[("eid", "B")]),
        ],
    )
    .await;

    let out = sluice(&["run", p, "--until-idle", "3s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let mut rows = json_outputs(dir.path(), "rows");
    rows.sort_by_key(|r| (r["n"].as_i64(), r["eid"].as_str().map(str::to_string)));
    assert_eq!(
        Value::from(rows),
        json!([
            {"n": 1, "eid": "A"},
            {"n": 1, "eid": "C"},
            {"n": 2, "eid": "B"},
            {"n": 5, "eid": null},
        ])
    );
    let left = pull_all(&conn, &input_sub, Duration::from_secs(13)).await;
    assert!(left.is_empty(), "unacknowledged after the run: {left:?}");
}

/// `Sql` per window on an unbounded input: Pub/Sub → AssignTimestamps → a GROUP BY query with
/// fixed 60 s windows → ExtractWindowingInfo → a file. Exact per-window rows, and every input
/// message acknowledged once its pane was written (empty backlog after `--until-idle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_per_window_on_a_stream_exact_rows_and_acks() {
    let Some(conn) = emulator() else { return };
    let id = ids("sqlwin");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
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
            recipe: {{type: string}}
            ts: {{type: integer}}
            secs: {{type: integer}}
          required: [recipe, ts, secs]
        flow_control:
          lease_extension: 10s
        subscription_settings:
          topic: {input}
    - type: AssignTimestamps
      name: EventTime
      input: Read
      config:
        timestamp: ts
    - type: Sql
      name: PerMinute
      input: EventTime
      windowing: {{type: fixed, size: 60s}}
      config:
        query: "SELECT recipe, COUNT(*) AS views, SUM(secs) AS watch FROM PCOLLECTION GROUP BY recipe"
    - type: ExtractWindowingInfo
      name: WithWindow
      input: PerMinute
      config:
        fields: {{start: window_start}}
    - type: WriteToJson
      name: WriteRows
      input: WithWindow
      config:
        path: {d}/rows
"#
        ),
    );
    let p = pipeline.as_str();
    let out = sluice(&["setup", p], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    // Event times in seconds: minute 0: a ×2 (3 + 4 s), b ×1 (5 s); minute 1: a ×1 (10 s).
    let good = [("a", 1, 3), ("b", 2, 5), ("a", 59, 4), ("a", 61, 10)];
    let messages: Vec<Message> = good
        .iter()
        .map(|(r, ts, s)| {
            Message::new().set_data(format!(r#"{{"recipe": "{r}", "ts": {ts}, "secs": {s}}}"#))
        })
        .collect();
    publish_all(&conn, &input, messages).await;

    let out = sluice(&["run", p, "--until-idle", "3s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let mut rows = json_outputs(dir.path(), "rows");
    rows.sort_by_key(|r| {
        (
            r["start"].as_str().map(str::to_string),
            r["recipe"].as_str().map(str::to_string),
        )
    });
    assert_eq!(
        Value::from(rows),
        json!([
            {"recipe": "a", "views": 2, "watch": 7, "start": "1970-01-01T00:00:00Z"},
            {"recipe": "b", "views": 1, "watch": 5, "start": "1970-01-01T00:00:00Z"},
            {"recipe": "a", "views": 1, "watch": 10, "start": "1970-01-01T00:01:00Z"},
        ])
    );
    let left = pull_all(&conn, &input_sub, Duration::from_secs(13)).await;
    assert!(left.is_empty(), "unacknowledged after the run: {left:?}");
}
