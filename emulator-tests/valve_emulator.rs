//! End-to-end tests of `Check`'s valve and of gates between pipelines, against Google's Pub/Sub
//! emulator, driving the real `sluice` binary with `--http`, and a local webhook receiver.
//!
//! Run them with `emulator-tests/run-pubsub-tests.sh` (it starts the emulator and sets
//! `PUBSUB_EMULATOR_HOST` and `SLUICE_REQUIRE_EMULATORS=1`). Every test uses its own topics,
//! subscriptions and pipeline names.

use std::collections::BTreeSet;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use serde_json::Value;
use sluice::pubsub::Connection;

#[path = "support.rs"]
mod support;
use support::*;
/// 2026-01-01T00:00:00Z: windows below are minutes after it.
const T0: i64 = 1_767_225_600_000;
const MIN: i64 = 60_000;

/// Publishes `(payload, ts attribute)` messages; returns their message ids.
async fn publish(conn: &Connection, to: &str, msgs: &[(String, i64)]) -> Vec<String> {
    let messages = msgs
        .iter()
        .map(|(data, ts)| {
            Message::new()
                .set_data(data.as_bytes().to_vec())
                .set_attributes([("ts", ts.to_string())])
        })
        .collect();
    publish_all(conn, to, messages).await
}

/// `n` messages in minute `window` after T0, ids from `first`.
fn minute(window: i64, first: i64, n: i64) -> Vec<(String, i64)> {
    (0..n)
        .map(|i| {
            let ts = T0 + window * MIN + i * 1000;
            (format!(r#"{{"id": {}, "ts": {ts}}}"#, first + i), ts)
        })
        .collect()
}

async fn valve_state(base: &str, valve: &str) -> Option<String> {
    let (_, body) = get(&format!("{base}/api/status")).await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["valves"][valve]["state"].as_str().map(str::to_string)
}

/// Waits until the source `Read` emitted `n` records (per the status JSON).
async fn read_reaches(base: &str, n: u64) {
    eventually(
        &format!("Read emits {n} records"),
        Duration::from_secs(30),
        || async { records_out(base, "Read").await == Some(n) },
    )
    .await;
}

/// The upstream pipeline: per-minute fixed windows of the input messages, a halting volume check
/// (a minute with less than half the previous minute's messages fails), each message published on.
fn upstream_yaml(name: &str, input_sub: &str, output: &str, hook: &str, control: &str) -> String {
    format!(
        r#"
options:
  name: {name}
  control_topic: {control}
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
            ts: {{type: integer}}
          required: [id, ts]
        timestamp_attribute: ts
        watermark: {{max_delay: 0s}}
    - type: WindowInto
      name: Minutes
      input: Read
      windowing: {{type: fixed, size: 60s}}
    - type: Check
      name: Volume
      input: Minutes
      config:
        volume_change: {{min_ratio: 0.5}}
        on_failure: alert_and_halt
        alert: {{webhook: "{hook}"}}
    - type: WriteToPubSub
      name: Publish
      input: Volume
      config:
        topic: {output}
"#
    )
}

/// A volume drop closes the valve: exactly the bad minute and what follows is held (nothing
/// derived from it written, not acknowledged), the source stops, `/readyz` is 503, the metric is
/// 0, and one alert carries the numbers. Reopening over HTTP delivers the held messages, and at
/// the end every input message was published exactly once with nothing left in the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_valve_holds_the_bad_minute_until_reopened() {
    let Some(conn) = emulator() else { return };
    let pid = std::process::id();
    let (input, output, control) = (
        format!("valve-in-{pid}"),
        format!("valve-out-{pid}"),
        format!("valve-control-{pid}"),
    );
    for t in [&input, &output, &control] {
        create_topic(&conn, t).await;
    }
    create_subscription(&conn, &input, &input).await;
    create_subscription(&conn, &output, &output).await;
    let out = Collector::start(&conn, &output).await;
    let (hook, alerts) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("valve.yaml");
    let name = format!("valve_{pid}");
    std::fs::write(
        &file,
        upstream_yaml(&name, &input, &output, &hook, &control),
    )
    .unwrap();
    let (child, base) = start(&conn, &file, &["--until-idle", "3s"]);
    let mut published = Vec::new();

    // Minutes 0 and 1 have 10 messages each; a message of minute 2 closes minute 1.
    published.extend(publish(&conn, &input, &minute(0, 0, 10)).await);
    published.extend(publish(&conn, &input, &minute(1, 100, 10)).await);
    out.wait_for(10, Duration::from_secs(30)).await;
    published.extend(publish(&conn, &input, &minute(2, 200, 2)).await);
    out.wait_for(20, Duration::from_secs(30)).await;
    // Minute 3 closes minute 2, which has 2 messages against 10: the valve closes.
    published.extend(publish(&conn, &input, &minute(3, 300, 1)).await);
    eventually("the valve closes", Duration::from_secs(30), || async {
        valve_state(&base, "Volume").await.as_deref() == Some("closed")
    })
    .await;
    assert_eq!(get(&format!("{base}/readyz")).await.map(|r| r.0), Some(503));
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    assert!(
        metrics.contains(&format!(
            "sluice_valve_open{{pipeline=\"{name}\",check=\"Volume\"}} 0\n"
        )),
        "{metrics}"
    );
    // More data while closed: the source does not pass it on.
    published.extend(publish(&conn, &input, &minute(3, 310, 5)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        out.len(),
        20,
        "nothing derived from the held minute was written"
    );
    {
        let alerts = alerts.lock().unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0]["kind"], "check_failed");
        assert_eq!(alerts[0]["source"], "Volume");
        assert_eq!(alerts[0]["window_start_ms"], T0 + 2 * MIN);
        assert_eq!(
            alerts[0]["findings"][0]["observed"],
            "ratio 0.200 (2 rows against a baseline of 10.0)"
        );
    }

    let opened = reqwest::Client::new()
        .post(format!("{base}/valves/Volume/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status().as_u16(), 200);
    // The held minute flows on; minute 3 (6 messages against 2) fires at the end of the run.
    out.wait_for(22, Duration::from_secs(30)).await;
    let done = finish(child).await;
    assert!(done.status.success(), "{}", show(&done));
    out.wait_for(28, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got: Vec<String> = out.ids();
    assert_eq!(got.len(), 28, "each message published once: {got:?}");
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        published.iter().collect::<BTreeSet<_>>()
    );
    // Nothing is left unacknowledged on the input.
    let rest = Collector::start(&conn, &input).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rest.len(), 0, "backlog after the run");
}

/// A pipeline gated on another's valve pauses while it is closed and resumes when it reopens;
/// the valve's state travels over the control topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pipeline_pauses_while_the_upstream_valve_is_closed() {
    let Some(conn) = emulator() else { return };
    let pid = std::process::id();
    let (up_in, up_out, down_in, down_out, control) = (
        format!("gate-up-in-{pid}"),
        format!("gate-up-out-{pid}"),
        format!("gate-down-in-{pid}"),
        format!("gate-down-out-{pid}"),
        format!("gate-control-{pid}"),
    );
    for t in [&up_in, &up_out, &down_in, &down_out, &control] {
        create_topic(&conn, t).await;
    }
    for s in [&up_in, &down_in, &down_out] {
        create_subscription(&conn, s, s).await;
    }
    let downstream_out = Collector::start(&conn, &down_out).await;
    let (hook, _alerts) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let up_name = format!("gate_up_{pid}");
    let up_file = dir.path().join("up.yaml");
    std::fs::write(
        &up_file,
        upstream_yaml(&up_name, &up_in, &up_out, &hook, &control),
    )
    .unwrap();
    let down_file = dir.path().join("down.yaml");
    std::fs::write(
        &down_file,
        format!(
            r#"
options:
  name: gate_down_{pid}
  control_topic: {control}
  gates: [{up_name}/Volume]
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {down_in}
        format: RAW
    - type: WriteToPubSub
      name: Publish
      input: Read
      config:
        topic: {down_out}
        format: RAW
"#
        ),
    )
    .unwrap();
    let (down, down_base) = start(&conn, &down_file, &[]);
    let (up, up_base) = start(&conn, &up_file, &[]);
    let raw = |from: i64, n: i64| -> Vec<(String, i64)> {
        (from..from + n).map(|i| (format!("d{i}"), T0)).collect()
    };
    publish(&conn, &down_in, &raw(0, 3)).await;
    downstream_out.wait_for(3, Duration::from_secs(30)).await;

    publish(&conn, &up_in, &minute(0, 0, 10)).await;
    publish(&conn, &up_in, &minute(1, 100, 2)).await;
    publish(&conn, &up_in, &minute(2, 200, 1)).await;
    let gate = format!("{up_name}/Volume");
    eventually(
        "the gate closes downstream",
        Duration::from_secs(30),
        || async { valve_state(&down_base, &gate).await.as_deref() == Some("closed") },
    )
    .await;
    // The gate is another pipeline's: it cannot be opened here, and it does not fail readiness.
    let refused = reqwest::Client::new()
        .post(format!(
            "{down_base}/valves/{}/open",
            gate.replace('/', "%2F")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    assert_eq!(
        get(&format!("{down_base}/readyz")).await.map(|r| r.0),
        Some(200)
    );

    publish(&conn, &down_in, &raw(3, 4)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(downstream_out.len(), 3, "paused while the gate is closed");

    let opened = reqwest::Client::new()
        .post(format!("{up_base}/valves/Volume/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status().as_u16(), 200);
    downstream_out.wait_for(7, Duration::from_secs(30)).await;
    assert_eq!(
        valve_state(&down_base, &gate).await.as_deref(),
        Some("open")
    );

    sigterm(&down);
    sigterm(&up);
    let (down_done, up_done) = (finish(down).await, finish(up).await);
    assert!(down_done.status.success(), "{}", show(&down_done));
    assert!(up_done.status.success(), "{}", show(&up_done));
    let mut payloads: Vec<String> = downstream_out
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(payloads, vec!["d0", "d1", "d2", "d3", "d4", "d5", "d6"]);
}

/// Stopping a worker whose valve is closed acknowledges none of the held messages: the run
/// fails (exit 1, the held input is nacked) and exactly the messages behind the bad minute are
/// delivered again; those of the minutes that passed are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_with_the_valve_closed_leaves_exactly_the_held_messages_unacknowledged() {
    let Some(conn) = emulator() else { return };
    let pid = std::process::id();
    let (input, output, control) = (
        format!("held-in-{pid}"),
        format!("held-out-{pid}"),
        format!("held-control-{pid}"),
    );
    for t in [&input, &output, &control] {
        create_topic(&conn, t).await;
    }
    create_subscription(&conn, &input, &input).await;
    create_subscription(&conn, &output, &output).await;
    let out = Collector::start(&conn, &output).await;
    let (hook, _alerts) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("held.yaml");
    let name = format!("held_{pid}");
    std::fs::write(
        &file,
        upstream_yaml(&name, &input, &output, &hook, &control),
    )
    .unwrap();
    let (child, base) = start(&conn, &file, &[]);
    // Acknowledgement holds are per pulled batch: each minute is published once the previous
    // one was read, so no batch mixes messages that flow with messages that are held.
    let passed = publish(&conn, &input, &minute(0, 0, 10)).await;
    read_reaches(&base, 10).await;
    let mut held = publish(&conn, &input, &minute(1, 100, 2)).await;
    read_reaches(&base, 12).await;
    held.extend(publish(&conn, &input, &minute(2, 200, 1)).await);
    eventually("the valve closes", Duration::from_secs(30), || async {
        valve_state(&base, "Volume").await.as_deref() == Some("closed")
    })
    .await;
    out.wait_for(10, Duration::from_secs(30)).await;
    sigterm(&child);
    let done = finish(child).await;
    assert_eq!(done.status.code(), Some(1), "{}", show(&done));
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains("Volume: the input ended with the valve closed"),
        "{stderr}"
    );
    // Pulled with the REST API's unary pull: the emulator's streaming pull does not hand a
    // nacked message to a new stream promptly (docs/pubsub.md), its unary pull does.
    let mut redelivered = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while redelivered.len() < held.len() && tokio::time::Instant::now() < deadline {
        redelivered.extend(rest_pull(&conn, &input).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    redelivered.sort();
    held.sort();
    assert_eq!(redelivered, held);
    assert!(passed.iter().all(|p| !redelivered.contains(p)));
    assert_eq!(out.len(), 10, "nothing of the held minute was published");
}
