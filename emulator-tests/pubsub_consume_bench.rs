//! Benchmark (not a test): Sluice's consume rate through the Pub/Sub emulator against the
//! client library's raw streaming-pull subscriber on the same emulator (issue 4, item 9).
//!
//! One topic with two subscriptions gets `BENCH_MESSAGES` JSON messages (default 20,000), so
//! both readers see the same messages. The raw reader pulls and acks each message; Sluice runs
//! `ReadFromPubSub` (JSON with a schema) → `WriteToJson` with `--until-idle 1s`. Times are wall
//! clock, each from the start of the reader to its last acknowledgement: the raw reader's from
//! creating the subscriber until its stream shut down (acks flushed), Sluice's from spawning the
//! process until it exited, minus the idle second (process start-up is counted against Sluice).
//! Both readers must see every message exactly and leave nothing unacknowledged.
//!
//! ```sh
//! bash emulator-tests/run-pubsub-tests.sh   # or start the emulator by hand, then:
//! cargo test --test pubsub_consume_bench    # prints the two rates and their ratio
//! ```
//!
//! Results are in docs/performance.md.

#[path = "support.rs"]
mod support;
use support::*;

use std::time::{Duration, Instant};

use google_cloud_pubsub::model::Message;

const IDLE: Duration = Duration::from_secs(1);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let Some(conn) = emulator() else { return };
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let id = ids("bench");
    let (input, raw_sub, sluice_sub) = (id("in"), id("raw-sub"), id("sluice-sub"));
    create_topic(&conn, &input).await;
    create_subscription(&conn, &raw_sub, &input).await;
    create_subscription(&conn, &sluice_sub, &input).await;
    let messages: Vec<Message> = (0..n)
        .map(|i| {
            Message::new().set_data(format!(
                r#"{{"event_id": {i}, "recipe_id": {}, "action": "view", "watch_seconds": {}}}"#,
                i % 2000,
                i % 300
            ))
        })
        .collect();
    let started = Instant::now();
    publish_all(&conn, &input, messages).await;
    println!("published {n} messages in {:.2?}", started.elapsed());

    let raw = raw_consume(&conn, &raw_sub, n).await;
    let sluice = sluice_consume(&conn, &sluice_sub, n).await;
    let (raw_rate, sluice_rate) = (
        n as f64 / raw.as_secs_f64(),
        n as f64 / sluice.as_secs_f64(),
    );
    println!("raw subscriber: {n} messages in {raw:.2?} = {raw_rate:.0} msg/s");
    println!("sluice:         {n} messages in {sluice:.2?} = {sluice_rate:.0} msg/s");
    println!("sluice / raw:   {:.1} %", 100.0 * sluice_rate / raw_rate);

    for name in [&raw_sub, &sluice_sub] {
        let left = rest_pull(&conn, name).await;
        assert!(left.is_empty(), "{name}: {} unacknowledged", left.len());
    }
}

/// The library's subscriber with its default flow control, acknowledging every message.
async fn raw_consume(conn: &sluice::pubsub::Connection, name: &str, n: usize) -> Duration {
    let started = Instant::now();
    let subscriber = conn.subscriber().await.expect("subscriber");
    let mut stream = subscriber.subscribe(sub(name)).build();
    let mut seen = std::collections::HashSet::with_capacity(n);
    while seen.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the raw reader stalled")
            .expect("stream open");
        let (m, h) = next.expect("streaming pull");
        h.ack();
        seen.insert(m.message_id);
    }
    stream.shutdown_token().shutdown().await;
    started.elapsed()
}

/// `sluice run` to the end of its backlog; returns the time minus the idle period.
async fn sluice_consume(conn: &sluice::pubsub::Connection, name: &str, n: usize) -> Duration {
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
        subscription: {name}
        format: JSON
        schema:
          type: object
          properties:
            event_id: {{type: integer}}
            recipe_id: {{type: integer}}
            action: {{type: string}}
            watch_seconds: {{type: integer}}
    - type: WriteToJson
      name: Write
      input: Read
      config:
        path: {}/out
"#,
            dir.path().display()
        ),
    );
    let p = pipeline.as_str();
    let idle = format!("{}s", IDLE.as_secs());
    let started = Instant::now();
    let out = sluice(&["run", p, "--until-idle", &idle], conn).await;
    let took = started.elapsed().saturating_sub(IDLE);
    assert!(out.status.success(), "{}", show(&out));
    let rows = json_outputs(dir.path(), "out");
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| r["event_id"].as_i64().expect("event_id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "distinct rows written");
    assert_eq!(rows.len(), n, "rows written (no duplicate)");
    took
}
