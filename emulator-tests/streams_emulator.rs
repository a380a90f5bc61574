//! Streams as users bring them (issue #16), against the Pub/Sub emulator, Postgres and Redis:
//! rows of a BigQuery export published days after their event time, publisher retries (the
//! same `event_id` under a new message id, in the same pull and in later ones), bursts out of
//! order, a frozen emulator, a valve that judges several minutes in one step, SIGKILLed workers
//! with default window settings, and a second replica. Every test compares the sink's rows with
//! totals computed from what was published.
//!
//! Run by emulator-tests/run-stream-tests.sh, one test at a time (one test freezes the emulator).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use sluice::pubsub::Connection;
use support::*;

const MIN: i64 = 60_000;

/// One row of the export.
#[derive(Clone)]
struct Event {
    id: String,
    recipe: String,
    ms: i64,
}

/// `n` events one second of event time apart, over 5 recipes, from a whole minute two days ago.
fn events(n: usize) -> Vec<Event> {
    let now = chrono::Utc::now().timestamp_millis();
    let base = (now - 2 * 86_400_000) / MIN * MIN;
    (0..n)
        .map(|i| Event {
            id: format!("e{i}"),
            recipe: format!("r{}", i % 5),
            ms: base + i as i64 * 1000,
        })
        .collect()
}

/// The message for `e`: event time only in the payload (RFC 3339), `event_id` as an attribute.
fn message(e: &Event) -> Message {
    let ts = chrono::DateTime::from_timestamp_millis(e.ms)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = serde_json::json!({"event_id": e.id, "recipe_id": e.recipe, "ts": ts});
    Message::new()
        .set_data(bytes::Bytes::from(body.to_string()))
        .set_attributes(HashMap::from([("event_id".to_string(), e.id.clone())]))
}

/// (window start ms, recipe) → events.
type Totals = BTreeMap<(i64, String), i64>;

fn expected(events: &[Event]) -> Totals {
    let mut t = Totals::new();
    for e in events {
        *t.entry((e.ms / MIN * MIN, e.recipe.clone())).or_default() += 1;
    }
    t
}

/// How the producer sends `events`: bursts of `burst` (at most 250: the publisher sends a
/// burst's requests of 100 messages concurrently, so they reach Pub/Sub in any order, up to a
/// burst's 250 s of event time apart, within the pipeline's 5 min `max_delay`), each block of 8
/// reversed, and every 20th event twice, with a new message id: every other such copy right
/// behind its original (one pull), the others in the next burst. Returns the bursts and the
/// number of copies.
fn bursts(events: &[Event], burst: usize) -> (Vec<Vec<Message>>, usize) {
    let mut out: Vec<Vec<Message>> = Vec::new();
    let mut late_copies: Vec<Message> = Vec::new();
    let mut copies = 0;
    for chunk in events.chunks(burst) {
        let mut msgs = std::mem::take(&mut late_copies);
        for block in chunk.chunks(8) {
            for e in block.iter().rev() {
                msgs.push(message(e));
                let i: usize = e.id[1..].parse().expect("numbered");
                if i.is_multiple_of(40) {
                    msgs.push(message(e));
                    copies += 1;
                } else if i % 40 == 20 {
                    late_copies.push(message(e));
                    copies += 1;
                }
            }
        }
        out.push(msgs);
    }
    if !late_copies.is_empty() {
        out.push(late_copies);
    }
    (out, copies)
}

/// Publishes `msgs` in order, 8 at a time (each group confirmed before the next is sent), so
/// they reach Pub/Sub out of order by at most a block of 8 (7 s of event time).
async fn publish_in_order(conn: &Connection, topic: &str, msgs: Vec<Message>) {
    let mut msgs = msgs.into_iter().peekable();
    while msgs.peek().is_some() {
        let group: Vec<Message> = msgs.by_ref().take(8).collect();
        publish_all(conn, topic, group).await;
    }
}

/// [`publish_in_order`], spread over time: a group of 8 every 80 ms.
async fn publish_slowly(conn: &Connection, topic: &str, msgs: Vec<Message>) {
    let mut msgs = msgs.into_iter().peekable();
    while msgs.peek().is_some() {
        let group: Vec<Message> = msgs.by_ref().take(8).collect();
        publish_all(conn, topic, group).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
}

/// Per-minute counts by recipe from the payload's event time (the watermark trails it by 5 min:
/// the bursts' disorder), upserted into Postgres. With `state` (an `options.state` value) the
/// windows are checkpointed. Default window settings: discarding, no allowed lateness.
fn pipeline(name: &str, subscription: &str, table: &str, state: Option<&str>) -> String {
    pipeline_with_delay(name, subscription, table, state, "5m")
}

/// [`pipeline`] with another `max_delay`.
fn pipeline_with_delay(
    name: &str,
    subscription: &str,
    table: &str,
    state: Option<&str>,
    max_delay: &str,
) -> String {
    let pg = pg_url();
    let options = match state {
        Some(s) => format!("options:\n  name: {name}\n  state: {s}\n"),
        None => format!("options:\n  name: {name}\n"),
    };
    format!(
        r#"{options}pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {subscription}
        format: JSON
        schema:
          type: object
          properties:
            event_id: {{type: string}}
            recipe_id: {{type: string}}
            ts: {{type: string}}
        id_attribute: event_id
        flow_control: {{lease_extension: 10s}}
    - type: AssignTimestamps
      name: EventTime
      input: Read
      config:
        timestamp: ts
        watermark: {{max_delay: {max_delay}}}
    - type: Combine
      name: PerMinute
      input: EventTime
      windowing: {{type: fixed, size: 1m}}
      config:
        group_by: [recipe_id]
        combine:
          n: {{fn: count, value: event_id}}
    - type: ExtractWindowingInfo
      name: Minutes
      input: PerMinute
      config:
        fields: [window_start]
    - type: WriteToPostgres
      name: Store
      input: Minutes
      config:
        url: {pg}
        table: {table}
        upsert_key: [window_start, recipe_id]
"#
    )
}

/// The rows of `table` as totals (empty when the table does not exist yet).
async fn stored(table: &str) -> Totals {
    let Ok(rows) = pg()
        .await
        .query(
            &format!(
                "SELECT (extract(epoch from window_start) * 1000)::bigint, recipe_id, n FROM {table}"
            ),
            &[],
        )
        .await
    else {
        return Totals::new();
    };
    rows.iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

/// Creates the input topic and subscription (10 s ack deadline) of test `id`.
async fn input(conn: &Connection, id: &impl Fn(&str) -> String) -> (String, String) {
    let (topic, subscription) = (id("in"), id("in-sub"));
    create_topic(conn, &topic).await;
    create_subscription(conn, &subscription, &topic).await;
    (topic, subscription)
}

/// A metric's value in the Prometheus text at `base`/metrics.
async fn metric(base: &str, series: &str) -> Option<f64> {
    let (_, body) = get(&format!("{base}/metrics")).await?;
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Event times two days old in the payload, bursts out of order, 150 publisher retries (75 in
/// the same pull as their original): every minute exact, every copy counted as dropped.
#[tokio::test]
async fn payload_event_times_two_days_old_with_retries_and_bursts_window_exactly() {
    let Some(conn) = emulator() else { return };
    let id = ids("history");
    let (topic, subscription) = input(&conn, &id).await;
    let table = format!("stream_history_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_pipeline(
        dir.path(),
        &pipeline("history", &subscription, &table, None),
    );
    let all = events(3000);
    let (sends, copies) = bursts(&all, 250);
    assert_eq!(copies, 150);
    let (child, base) = start(&conn, std::path::Path::new(&file), &["--until-idle", "6s"]);
    for burst in sends {
        publish_all(&conn, &topic, burst).await;
    }
    let read = "sluice_source_duplicates_dropped_total{pipeline=\"history\",transform=\"Read\"}";
    eventually(
        "every copy dropped at the source",
        Duration::from_secs(60),
        || async { metric(&base, read).await == Some(copies as f64) },
    )
    .await;
    let out = finish(child).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_totals(&stored(&table).await, &expected(&all), "history");
    drop_table(&table).await;
}

/// The same stream with durable state (embedded): `--until-idle` ends like Dataflow's drain, so
/// the last minutes are written too, and copies are dropped by the durable ledger.
#[tokio::test]
async fn with_durable_state_until_idle_drains_every_window() {
    let Some(conn) = emulator() else { return };
    let id = ids("drained");
    let (topic, subscription) = input(&conn, &id).await;
    let table = format!("stream_drained_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!(
        "{{backend: embedded, path: '{}'}}",
        dir.path().join("state").display()
    );
    let file = write_pipeline(
        dir.path(),
        &pipeline("drained", &subscription, &table, Some(&state)),
    );
    let all = events(5000);
    let (sends, _) = bursts(&all, 250);
    for burst in sends {
        publish_all(&conn, &topic, burst).await;
    }
    let out = sluice(&["run", &file, "--until-idle", "6s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_totals(&stored(&table).await, &expected(&all), "drained");
    // A replay of the whole input after the drain: every id is in the durable ledger.
    let (sends, _) = bursts(&all, 250);
    for burst in sends {
        publish_all(&conn, &topic, burst).await;
    }
    let out = sluice(&["run", &file, "--until-idle", "6s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_totals(&stored(&table).await, &expected(&all), "after the replay");
    drop_table(&table).await;
}

/// The process group of the emulator this suite's script started.
fn emulator_pid() -> String {
    let dir = std::env::var("SLUICE_EMU_DIR").expect("run by run-stream-tests.sh");
    std::fs::read_to_string(format!("{dir}/pubsub.pid"))
        .expect("the emulator's pid file")
        .trim()
        .to_string()
}

fn signal_emulator(sig: &str) {
    let pgid = emulator_pid();
    let ok = std::process::Command::new("kill")
        .args([sig, "--", &format!("-{pgid}")])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} -{pgid}");
}

/// The emulator frozen for 20 s mid-run (SIGSTOP), default state: the messages leased before
/// the freeze are redelivered after it and must not be counted twice.
#[tokio::test]
async fn a_frozen_emulator_redelivers_and_nothing_is_counted_twice() {
    let Some(conn) = emulator() else { return };
    let id = ids("frozen");
    let (topic, subscription) = input(&conn, &id).await;
    let table = format!("stream_frozen_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_pipeline(dir.path(), &pipeline("frozen", &subscription, &table, None));
    let all = events(3000);
    let (sends, copies) = bursts(&all, 250);
    let half = sends.len() / 2;
    let (child, base) = start(&conn, std::path::Path::new(&file), &["--until-idle", "30s"]);
    for burst in &sends[..half] {
        publish_all(&conn, &topic, burst.clone()).await;
    }
    eventually("the worker pulled", Duration::from_secs(30), || async {
        records_out(&base, "Read").await.unwrap_or(0) > 0
    })
    .await;
    signal_emulator("-STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    signal_emulator("-CONT");
    for burst in &sends[half..] {
        publish_all(&conn, &topic, burst.clone()).await;
    }
    // The last five minutes of the first half were still held (their windows open) when the
    // leases lapsed: their redeliveries are dropped too, beyond the publisher's copies.
    let read = "sluice_source_duplicates_dropped_total{pipeline=\"frozen\",transform=\"Read\"}";
    eventually("redeliveries dropped", Duration::from_secs(30), || async {
        metric(&base, read).await.unwrap_or(0.0) > copies as f64
    })
    .await;
    let out = finish(child).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_totals(&stored(&table).await, &expected(&all), "frozen");
    drop_table(&table).await;
}

/// A halting `Check` on minutes of 600, 580, 60 and 300 events, all judged in one watermark
/// step: the first two minutes are written while the valve is closed; the rest after it opens.
#[tokio::test]
async fn a_valve_judging_several_minutes_in_one_step_releases_what_passed() {
    let Some(conn) = emulator() else { return };
    let id = ids("valve");
    let (topic, subscription) = input(&conn, &id).await;
    let table = format!("stream_valve_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base_ms = events(1)[0].ms;
    let mut all = Vec::new();
    for (m, n) in [600, 580, 60, 300].into_iter().enumerate() {
        for i in 0..n {
            all.push(Event {
                id: format!("m{m}-{i}"),
                recipe: "r0".into(),
                ms: base_ms + m as i64 * MIN + i as i64 * 50,
            });
        }
    }
    // Minute 10 (300 events, so it passes too) moves the watermark past all four at once.
    let ahead: Vec<Event> = (0..300)
        .map(|i| Event {
            id: format!("ahead-{i}"),
            recipe: "r1".into(),
            ms: base_ms + 10 * MIN + i * 50,
        })
        .collect();
    // With the 5 min `max_delay` the four minutes stay open until minute 10 arrives, then all
    // four close in one watermark step.
    let yaml = pipeline("valve", &subscription, &table, None).replace(
        "    - type: Combine\n      name: PerMinute\n      input: EventTime\n",
        "    - type: WindowInto\n      name: Minutely\n      input: EventTime\n      windowing: {type: fixed, size: 1m}\n    - type: Check\n      name: Volume\n      input: Minutely\n      config:\n        volume_change: {min_ratio: 0.5}\n        on_failure: halt\n    - type: Combine\n      name: PerMinute\n      input: Volume\n",
    );
    let file = write_pipeline(dir.path(), &yaml);
    publish_all(&conn, &topic, all.iter().map(message).collect()).await;
    let (child, base) = start(&conn, std::path::Path::new(&file), &[]);
    eventually(
        "the four minutes pulled",
        Duration::from_secs(60),
        || async { records_out(&base, "Read").await == Some(all.len() as u64) },
    )
    .await;
    assert_eq!(stored(&table).await, Totals::new(), "nothing closed yet");
    publish_all(&conn, &topic, ahead.iter().map(message).collect()).await;
    let first_two = expected(&all[..1180]);
    eventually(
        "the minutes before the held one",
        Duration::from_secs(60),
        || async { stored(&table).await == first_two },
    )
    .await;
    let (code, body) = get(&format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Volume"), "{body}");
    // Nothing of the held minutes, however long it waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stored(&table).await, first_two);
    let opened = reqwest::Client::new()
        .post(format!("{base}/valves/Volume/open"))
        .send()
        .await
        .expect("open the valve");
    assert!(opened.status().is_success());
    let four = expected(&all);
    eventually(
        "the held minutes after reopening",
        Duration::from_secs(60),
        || async {
            let got = stored(&table).await;
            four.iter().all(|(k, v)| got.get(k) == Some(v))
        },
    )
    .await;
    sigterm(&child);
    let out = finish(child).await;
    assert!(out.status.success(), "{}", show(&out));
    let mut want = expected(&all);
    want.extend(expected(&ahead));
    assert_totals(&stored(&table).await, &want, "valve");
    drop_table(&table).await;
}

/// Default window settings (discarding, no lateness) with Postgres state: workers SIGKILLed at
/// random points (2–16 s) while bursts of 400 events with retries arrive; the upserted minutes
/// are exact, because a restarted worker holds the watermark until what its predecessor had
/// pulled came back.
#[tokio::test]
async fn sigkills_with_default_window_settings_give_exact_minutes() {
    let Some(conn) = emulator() else { return };
    let id = ids("killed");
    let (topic, subscription) = input(&conn, &id).await;
    let table = format!("stream_killed_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = pg_url();
    let state = format!("{{backend: postgres, path: '{pg}', checkpoint_interval: 300ms}}");
    let name = format!("killed{}", std::process::id());
    // In order within 7 s and `max_delay: 10s`: after a restart, the burst published since the
    // kill is minutes of event time ahead of what the killed worker had pulled, which comes back
    // only when its 10 s leases lapse. Without the restart hold those minutes would close first.
    let file = write_pipeline(
        dir.path(),
        &pipeline_with_delay(&name, &subscription, &table, Some(&state), "10s"),
    );
    let all = events(2400);
    let (sends, _) = bursts(&all, 400);
    let seed = seed();
    eprintln!("kill schedule seed: SLUICE_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    for (i, burst) in sends.into_iter().enumerate() {
        // A worker reads a burst as it is published (over about 4 s) and is killed at a random
        // point, often in the middle of it: what it held comes back only when its 10 s leases
        // lapse, while the rest of the burst, minutes of event time ahead, is there at once for
        // the next worker.
        let log = dir.path().join(format!("run-{i}.log"));
        let mut child = worker(&conn, &file, &[], &log);
        let publishing = {
            let (conn, topic) = (conn.clone(), topic.clone());
            tokio::spawn(async move { publish_slowly(&conn, &topic, burst).await })
        };
        tokio::time::sleep(rng.between(500, 14_000)).await;
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.expect("wait");
        assert!(!status.success(), "killed run {i} had already exited");
        publishing.await.expect("published");
    }
    // The last run reads what is left (redeliveries once the 10 s leases lapse) and drains.
    let out = sluice(&["run", &file, "--until-idle", "25s"], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let got = stored(&table).await;
    let want = expected(&all);
    if got != want {
        eprintln!("worker logs kept in {}", dir.keep().display());
    }
    assert_totals(&got, &want, &format!("seed {seed}"));
    drop_table(&table).await;
}

/// Two replicas of one pipeline with shared Redis state on one subscription (an HPA scaled the
/// Deployment): one is active, the other stands by (`/readyz` 503) and takes over when the
/// active one is SIGKILLed; the minutes are exact.
#[tokio::test]
async fn a_second_replica_stands_by_and_takes_over_exactly() {
    let Some(conn) = emulator() else { return };
    let id = ids("replicas");
    let (topic, subscription) = input(&conn, &id).await;
    let table = format!("stream_replicas_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = redis_url();
    let state = format!("{{backend: redis, path: '{redis}', checkpoint_interval: 300ms}}");
    let name = format!("replicas{}", std::process::id());
    let file = write_pipeline(
        dir.path(),
        &pipeline_with_delay(&name, &subscription, &table, Some(&state), "10s"),
    );
    let (mut first, first_base) = replica(&conn, &file, &[], "pod-a");
    eventually(
        "the first replica is ready",
        Duration::from_secs(30),
        || async { get(&format!("{first_base}/readyz")).await.map(|r| r.0) == Some(200) },
    )
    .await;
    let (second, second_base) = replica(&conn, &file, &["--until-idle", "20s"], "pod-b");
    eventually(
        "the second replica stands by",
        Duration::from_secs(30),
        || async {
            matches!(get(&format!("{second_base}/readyz")).await,
            Some((503, body)) if body.contains("standing by"))
        },
    )
    .await;
    let all = events(2000);
    let (sends, _) = bursts(&all, 200);
    let half = sends.len() / 2;
    for burst in &sends[..half] {
        publish_in_order(&conn, &topic, burst.clone()).await;
    }
    eventually(
        "the active replica pulled",
        Duration::from_secs(30),
        || async { records_out(&first_base, "Read").await.unwrap_or(0) > 0 },
    )
    .await;
    assert_eq!(
        records_out(&second_base, "Read").await.unwrap_or(0),
        0,
        "the standby pulls nothing"
    );
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("wait");
    for burst in &sends[half..] {
        publish_in_order(&conn, &topic, burst.clone()).await;
    }
    eventually(
        "the second replica took over",
        Duration::from_secs(40),
        || async { get(&format!("{second_base}/readyz")).await.map(|r| r.0) == Some(200) },
    )
    .await;
    let out = finish_within(second, Duration::from_secs(180)).await;
    assert!(out.status.success(), "{}", show(&out));
    assert_totals(&stored(&table).await, &expected(&all), "replicas");
    drop_table(&table).await;
}

/// `sluice run FILE --http … [extra]` as replica `pod` (`SLUICE_REPLICA_ID`, the pod name on
/// GKE); returns the child and the base URL.
fn replica(
    conn: &Connection,
    file: &str,
    extra: &[&str],
    pod: &str,
) -> (tokio::process::Child, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["run", file, "--http", &addr];
    args.extend_from_slice(extra);
    let child = sluice_command(&args, conn)
        .env("SLUICE_REPLICA_ID", pod)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("sluice starts");
    (child, format!("http://{addr}"))
}

async fn finish_within(child: tokio::process::Child, limit: Duration) -> std::process::Output {
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("sluice exits")
        .expect("output")
}
