//! File sinks on a Pub/Sub stream, against Google's Pub/Sub emulator and the real `sluice`
//! binary: files of closed windows (and full global-window sets) are committed, and the messages
//! behind them acknowledged, while the worker keeps running.
//!
//! Event times are two days old and travel in the `ts` attribute (`timestamp_attribute`) as well
//! as in the payload (`AssignTimestamps` with `watermark:`). Acknowledgement is proven from the
//! outside: the worker is SIGKILLed, and only the messages of windows it had not written come
//! back. Run with `emulator-tests/run-pubsub-tests.sh`.

use std::path::Path;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use serde_json::{Value, json};

#[path = "support.rs"]
mod support;
use support::*;

/// The start of the minute two days before now, in ms.
fn two_days_ago() -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    (now - 2 * 86_400_000).div_euclid(60_000) * 60_000
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A message `{id, recipe_id, event_time}` with the same time in attribute `ts`.
fn event(id: i64, recipe: &str, ms: i64) -> Message {
    let t = rfc3339(ms);
    Message::new()
        .set_data(json!({"id": id, "recipe_id": recipe, "event_time": t}).to_string())
        .set_attributes([("ts", t)])
}

fn read(subscription: &str) -> String {
    format!(
        r#"
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {subscription}
        format: JSON
        schema:
          type: object
          properties:
            id: {{type: integer}}
            recipe_id: {{type: string}}
            event_time: {{type: string}}
          required: [id, recipe_id, event_time]
        timestamp_attribute: ts
        flow_control:
          lease_extension: 10s"#
    )
}

/// Messages acknowledged by the worker at `base`, from its `/metrics`.
async fn acked(base: &str) -> Option<u64> {
    let (_, text) = get(&format!("{base}/metrics")).await?;
    text.lines()
        .find(|l| l.starts_with("sluice_source_messages_acked") && l.contains("transform=\"Read\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .filter(|n| n != "p.yaml")
        .collect();
    names.sort();
    names
}

/// Pulls `name` (REST) until `n` messages came back (at most `limit`), then once more to
/// show nothing else does; returns their payload ids, sorted.
async fn redelivered(conn: &sluice::pubsub::Connection, name: &str, n: usize) -> Vec<i64> {
    let mut got: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(rest_pull_messages(conn, name).await);
    }
    got.extend(rest_pull_messages(conn, name).await);
    let mut ids: Vec<i64> = got
        .iter()
        .map(|m| {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["data"].as_str().expect("data"))
                .expect("base64");
            let v: Value = serde_json::from_slice(&data).expect("JSON payload");
            v["id"].as_i64().expect("id")
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn window_files_are_committed_and_acknowledged_while_the_worker_runs() {
    let Some(conn) = emulator() else { return };
    let id = ids("files-windowed");
    let input = id("in");
    create_topic(&conn, &input).await;
    create_subscription(&conn, &input, &input).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let yaml = format!(
        r#"
options:
  name: files_windowed
pipeline:
  transforms:{read}
    - type: AssignTimestamps
      name: Stamp
      input: Read
      config:
        timestamp: event_time
        watermark: {{max_delay: 10s}}
    - type: WindowInto
      name: Minute
      input: Stamp
      config:
        windowing: {{type: fixed, size: 1m}}
    - type: Combine
      name: Count
      input: Minute
      config:
        group_by: [recipe_id]
        combine:
          n: count
    - type: WriteToJson
      name: Write
      input: Count
      config:
        path: {out}/counts
"#,
        read = read(&input),
        out = out.display()
    );
    let file = Path::new(&write_pipeline(out, &yaml)).to_path_buf();
    let (mut child, base) = start(&conn, &file, &["--until-idle", "120s"]);
    let t0 = two_days_ago();
    let s = |secs: i64| t0 + secs * 1000;

    // The first minute, out of order; read before anything later is published (the emulator
    // does not keep the order of messages published together, and none may be late).
    let first = [
        event(1, "r1", s(5)),
        event(2, "r2", s(50)),
        event(3, "r1", s(30)),
        event(4, "r1", s(58)),
        event(5, "r2", s(20)),
        event(6, "r2", s(59)),
    ];
    publish_all(&conn, &input, first.to_vec()).await;
    eventually(
        "the first minute is read",
        Duration::from_secs(30),
        || async { records_out(&base, "Read").await == Some(6) },
    )
    .await;
    // 75 s: the watermark (max event time − 10 s) passes the first minute's end.
    publish_all(&conn, &input, vec![event(7, "r1", s(75))]).await;
    let w0 = out.join(format!(
        "counts-{}-{}-0-00000-of-00001",
        rfc3339(s(0)),
        rfc3339(s(60))
    ));
    eventually(
        "the first minute's file",
        Duration::from_secs(30),
        || async { w0.exists() },
    )
    .await;
    eventually(
        "the first minute's messages are acknowledged",
        Duration::from_secs(10),
        || async { acked(&base).await == Some(6) },
    )
    .await;
    assert!(child.try_wait().expect("status").is_none(), "still running");
    assert_eq!(
        json_lines(&w0),
        vec![
            json!({"recipe_id": "r1", "n": 3}),
            json!({"recipe_id": "r2", "n": 3})
        ]
    );
    assert_eq!(
        file_names(out),
        vec![w0.file_name().unwrap().to_string_lossy().to_string()],
        "the second minute is open: no file for it"
    );

    // Killed without a drain: only the message of the unwritten minute comes back. (The client
    // library sends acknowledgements in batches every 100 ms; 3 s lets the last batch out
    // before the kill.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.kill().await.expect("SIGKILL");
    assert_eq!(redelivered(&conn, &input, 1).await, vec![7]);
}

#[tokio::test]
async fn the_global_window_rolls_by_rows_and_acknowledges_each_file() {
    let Some(conn) = emulator() else { return };
    let id = ids("files-rolling");
    let input = id("in");
    create_topic(&conn, &input).await;
    create_subscription(&conn, &input, &input).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let yaml = format!(
        r#"
options:
  name: files_rolling
pipeline:
  transforms:{read}
    - type: WriteToJson
      name: Write
      input: Read
      config:
        path: {out}/all
        max_file_rows: 4
        max_file_age: 1h
"#,
        read = read(&input),
        out = out.display()
    );
    let file = Path::new(&write_pipeline(out, &yaml)).to_path_buf();
    let (mut child, base) = start(&conn, &file, &["--until-idle", "15s"]);
    let t0 = two_days_ago();
    // Three pulls of 4, 4 and 2 messages, each read before the next is published: one
    // acknowledgement hold per pull, so each full file releases exactly its own pull.
    for (from, to) in [(1, 4), (5, 8), (9, 10)] {
        publish_all(
            &conn,
            &input,
            (from..=to).map(|i| event(i, "r1", t0 + i * 1000)).collect(),
        )
        .await;
        eventually("the messages are read", Duration::from_secs(30), || async {
            records_out(&base, "Read").await == Some(to as u64)
        })
        .await;
    }
    eventually("two full files", Duration::from_secs(30), || async {
        out.join("all-1-00000-of-00001").exists()
    })
    .await;
    eventually(
        "the rows of the full files are acknowledged",
        Duration::from_secs(10),
        || async { acked(&base).await == Some(8) },
    )
    .await;
    assert!(child.try_wait().expect("status").is_none(), "still running");
    assert!(
        !out.join("all-2-00000-of-00001").exists(),
        "the third set is open"
    );

    let done = finish(child).await;
    assert!(done.status.success(), "{}", show(&done));
    assert_eq!(
        file_names(out),
        [
            "all-0-00000-of-00001",
            "all-1-00000-of-00001",
            "all-2-00000-of-00001"
        ]
    );
    let rows: Vec<Vec<Value>> = (0..3)
        .map(|n| json_lines(&out.join(format!("all-{n}-00000-of-00001"))))
        .collect();
    let ids: Vec<Vec<i64>> = rows
        .iter()
        .map(|file| {
            let mut ids: Vec<i64> = file.iter().map(|r| r["id"].as_i64().expect("id")).collect();
            ids.sort_unstable();
            ids
        })
        .collect();
    assert_eq!(
        ids,
        [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]],
        "exact rows per file"
    );
    assert!(
        rest_pull(&conn, &input).await.is_empty(),
        "every message was acknowledged"
    );
}
