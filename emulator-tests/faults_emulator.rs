//! The fault harness (issue #9, docs/guarantees.md): workers with durable state are killed with
//! SIGKILL at random points and restarted, against the Pub/Sub emulator and a real Postgres
//! sink and state store; the final rows must equal the expected totals exactly — nothing lost,
//! nothing counted twice. Also: the same input published twice gives the same final state, and
//! two and three workers (keyed routing, docs/scaling.md) give the same totals as one.
//!
//! Run by emulator-tests/run-fault-tests.sh (it starts the emulator; Postgres and Redis are the
//! machine's). `SLUICE_FAULT_SEED=N` replays a run's kill schedule (the seed is printed).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use sluice::pubsub::Connection;
use support::*;

/// One recipe event of the harness input.
#[derive(Clone)]
struct Event {
    id: String,
    recipe: String,
    action: &'static str,
    watch: i64,
    ms: i64,
}

/// `n` events, 500 ms of event time apart (2 per second: `n / 120` one-minute windows), over 5
/// recipes and 2 actions, starting at a whole minute 30 minutes ago.
fn events(n: usize) -> Vec<Event> {
    let now = chrono::Utc::now().timestamp_millis();
    let base = (now - 30 * 60_000) / 60_000 * 60_000;
    (0..n)
        .map(|i| Event {
            id: format!("e{i}"),
            recipe: format!("r{}", i % 5),
            action: if (i / 5) % 2 == 0 { "view" } else { "like" },
            watch: (i % 7) as i64 + 1,
            ms: base + i as i64 * 500,
        })
        .collect()
}

/// (window start ms, recipe, action) → (count, sum of watch seconds).
type Totals = BTreeMap<(i64, String, String), (i64, i64)>;

fn expected(events: &[Event]) -> Totals {
    expected_in(events, 60_000)
}

/// Totals over windows of `size_ms`.
fn expected_in(events: &[Event], size_ms: i64) -> Totals {
    let mut t = Totals::new();
    for e in events {
        let w = e.ms / size_ms * size_ms;
        let v = t
            .entry((w, e.recipe.clone(), e.action.to_string()))
            .or_default();
        v.0 += 1;
        v.1 += e.watch;
    }
    t
}

fn message(e: &Event) -> Message {
    let body = serde_json::json!({
        "event_id": e.id, "recipe_id": e.recipe, "action": e.action, "watch_seconds": e.watch,
    });
    Message::new()
        .set_data(bytes::Bytes::from(body.to_string()))
        .set_attributes(HashMap::from([
            ("event_id".to_string(), e.id.clone()),
            ("event_ms".to_string(), e.ms.to_string()),
        ]))
}

/// The windowed pipeline of the harness: per-minute totals by (recipe, action), accumulating
/// with an hour of allowed lateness (so data redelivered after a window fired makes a LATE pane
/// with the complete total), upserted into Postgres by (window_start, recipe, action).
fn totals_pipeline(
    name: &str,
    subscription: &str,
    topic: &str,
    table: &str,
    state: &str,
) -> String {
    let pg = pg_url();
    let read = read_events(subscription);
    format!(
        r#"
options:
  name: {name}
  state: {state}
pipeline:
  transforms:
{read}        watermark: {{max_delay: 5s, idle_timeout: 15s}}
        subscription_settings:
          topic: {topic}
          ack_deadline: 10s
    - type: Combine
      name: Totals
      input: Read
      windowing:
        type: fixed
        size: 1m
        allowed_lateness: 1h
        accumulation: accumulating
      config:
        group_by: [recipe_id, action]
        combine:
          n: {{fn: count, value: event_id}}
          watch: {{fn: sum, value: watch_seconds}}
    - type: ExtractWindowingInfo
      name: Minutes
      input: Totals
      config:
        fields: [window_start]
    - type: WriteToPostgres
      name: Store
      input: Minutes
      config:
        url: {pg}
        table: {table}
        upsert_key: [window_start, recipe_id, action]
"#
    )
}

/// The `ReadFromPubSub` step of the harness pipelines (its `watermark` and
/// `subscription_settings` follow). Leases are extended 10 s at a time (the minimum), so the
/// messages a killed worker had pulled come back 10 s after the kill, within the last run's
/// 25 s of idleness; with the default 60 s, a worker killed right after a pull (and the last
/// chunk, which no later chunk publishes again) left the last run nothing to read.
fn read_events(subscription: &str) -> String {
    format!(
        r#"    - type: ReadFromPubSub
      name: Read
      config:
        subscription: {subscription}
        format: JSON
        schema:
          type: object
          properties:
            event_id: {{type: string}}
            recipe_id: {{type: string}}
            action: {{type: string}}
            watch_seconds: {{type: integer}}
        id_attribute: event_id
        timestamp_attribute: event_ms
        flow_control: {{lease_extension: 10s}}
"#
    )
}

/// The final rows of `table` as totals.
async fn stored(table: &str) -> Totals {
    let rows = pg()
        .await
        .query(
            &format!(
                "SELECT (extract(epoch from window_start) * 1000)::bigint, recipe_id, action, n, watch FROM {table}"
            ),
            &[],
        )
        .await
        .expect("query the sink table");
    rows.iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4))))
        .collect()
}

/// Runs the pipeline until it has been idle for `idle`; the run must succeed.
async fn run_to_idle(conn: &Connection, file: &str, idle: &str) {
    let out = sluice(&["run", file, "--until-idle", idle], conn).await;
    assert!(out.status.success(), "{}", show(&out));
}

#[tokio::test]
async fn sigkill_at_random_points_loses_nothing_and_counts_nothing_twice() {
    let Some(conn) = emulator() else { return };
    let id = ids("faults");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let table = format!("fault_totals_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = pg_url();
    let state = format!("{{backend: postgres, path: '{pg}', checkpoint_interval: 300ms}}");
    let file = write_pipeline(
        dir.path(),
        &totals_pipeline(&table, &input_sub, &input, &table, &state),
    );
    let out = sluice(&["setup", &file], &conn).await;
    assert!(out.status.success(), "{}", show(&out));

    let all = events(1200);
    let chunks: Vec<&[Event]> = all.chunks(100).collect();
    let seed = seed();
    eprintln!("fault schedule seed: SLUICE_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let mut kills = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        // Each chunk is published, and the previous one again (a publisher retry: new message
        // ids, the same event ids).
        publish_all(&conn, &input, chunk.iter().map(message).collect()).await;
        if i > 0 {
            publish_all(&conn, &input, chunks[i - 1].iter().map(message).collect()).await;
        }
        let log = dir.path().join(format!("run-{i}.log"));
        let mut child = worker(&conn, &file, &[], &log);
        let after = rng.between(300, 4_000);
        tokio::time::sleep(after).await;
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.expect("wait");
        assert!(!status.success(), "killed run {i} had already exited");
        kills += 1;
        // What the killed worker had restored, for the record (the schedule is random).
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let restored = text
            .lines()
            .find(|l| l.contains("Restored the checkpoint"))
            .and_then(|l| {
                l.split_once("windows=")
                    .map(|(_, r)| r.split(' ').next().unwrap_or("?").to_string())
            });
        eprintln!(
            "run {i}: killed after {after:?}; restored windows: {}",
            restored
                .as_deref()
                .unwrap_or("none (killed before the first restore)")
        );
    }
    assert!(kills >= 10);
    // A last run processes what is left (redeliveries after the 10 s leases lapse) and stops
    // after 25 s without input; the idle watermark fires every window by then.
    let last = dir.path().join("run-last.log");
    let out = sluice(&["run", &file, "--until-idle", "25s"], &conn).await;
    std::fs::write(&last, &out.stderr).expect("last log");
    assert!(out.status.success(), "{}", show(&out));
    let got = stored(&table).await;
    let want = expected(&all);
    if got != want {
        eprintln!("worker logs kept in {}", dir.keep().display());
    }
    assert_totals(&got, &want, &format!("seed {seed}"));
    drop_table(&table).await;
}

#[tokio::test]
async fn the_same_input_published_twice_gives_the_same_final_state() {
    let Some(conn) = emulator() else { return };
    let id = ids("twice");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let table = format!("fault_twice_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let state = format!(
        "{{backend: embedded, path: '{}', checkpoint_interval: 300ms}}",
        state_dir.display()
    );
    let file = write_pipeline(
        dir.path(),
        &totals_pipeline(&table, &input_sub, &input, &table, &state),
    );
    let out = sluice(&["setup", &file], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let all = events(600);
    publish_all(&conn, &input, all.iter().map(message).collect()).await;
    run_to_idle(&conn, &file, "20s").await;
    let once = stored(&table).await;
    assert_totals(&once, &expected(&all), "published once");
    // The whole input again, as a replay from the lake would publish it.
    publish_all(&conn, &input, all.iter().map(message).collect()).await;
    run_to_idle(&conn, &file, "20s").await;
    assert_totals(&stored(&table).await, &once, "published twice");
    drop_table(&table).await;
}

/// A router of the harness input: republishes every event to the topic of its shard
/// (docs/scaling.md), keeping its event time and its id.
fn router_pipeline(subscription: &str, topic: &str, shard_prefix: &str, shards: usize) -> String {
    let read = read_events(subscription);
    format!(
        r#"
pipeline:
  transforms:
{read}        subscription_settings:
          topic: {topic}
          ack_deadline: 10s
    - type: WriteToPubSub
      name: Route
      input: Read
      config:
        topic: "{shard_prefix}{{shard}}"
        timestamp_attribute: event_ms
        shard:
          by: [recipe_id, action]
          count: {shards}
"#
    )
}

/// Routers and shard owners, `workers` of each, all started at once over the same input; one
/// router is SIGKILLed once and restarted (its republished messages keep their ids).
async fn sharded_totals(conn: &Connection, workers: usize, all: &[Event]) -> Totals {
    let name = format!("shards{workers}");
    let id = ids(&name);
    let (input, input_sub) = (id("in"), id("router"));
    let prefix = id("shard-");
    let table = format!("fault_shards{workers}_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let router = dir.path().join("router.yaml");
    std::fs::write(
        &router,
        router_pipeline(&input_sub, &input, &prefix, workers),
    )
    .unwrap();
    let router = router.display().to_string();
    let out = sluice(&["setup", &router], conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let mut owners = Vec::new();
    for k in 0..workers {
        // Shared state in Redis (the single-worker tests use Postgres and embedded).
        let redis = redis_url();
        let state = format!("{{backend: redis, path: '{redis}', checkpoint_interval: 300ms}}");
        let yaml = totals_pipeline(
            &format!("{table}_{k}"),
            &format!("{prefix}{k}-owner"),
            &format!("{prefix}{k}"),
            &table,
            &state,
        )
        .replace("id_attribute: event_id", "id_attribute: sluice_id");
        let file = dir.path().join(format!("owner-{k}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let file = file.display().to_string();
        let out = sluice(&["setup", &file], conn).await;
        assert!(out.status.success(), "{}", show(&out));
        owners.push(file);
    }
    publish_all(conn, &input, all.iter().map(message).collect()).await;

    let mut runs = Vec::new();
    for owner in &owners {
        runs.push(run_in_background(conn, &router, "20s"));
        runs.push(run_in_background(conn, owner, "25s"));
    }
    // A router dies after publishing part of its share; the others and its restart go on.
    let victim = worker(conn, &router, &[], &dir.path().join("victim.log"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut victim = victim;
    victim.start_kill().expect("SIGKILL");
    victim.wait().await.expect("wait");
    runs.push(run_in_background(conn, &router, "20s"));
    for r in runs {
        let out = r.await.expect("join");
        assert!(out.status.success(), "{}", show(&out));
    }
    let totals = stored(&table).await;
    drop_table(&table).await;
    totals
}

fn run_in_background(
    conn: &Connection,
    file: &str,
    idle: &str,
) -> tokio::task::JoinHandle<std::process::Output> {
    let (conn, file, idle) = (conn.clone(), file.to_string(), idle.to_string());
    tokio::spawn(async move { sluice(&["run", &file, "--until-idle", &idle], &conn).await })
}

#[tokio::test]
async fn two_and_three_workers_give_the_same_totals_as_one() {
    let Some(conn) = emulator() else { return };
    let all = events(600);
    let want = expected(&all);
    for workers in 1..=3 {
        let got = sharded_totals(&conn, workers, &all).await;
        assert_totals(
            &got,
            &want,
            &format!("{workers} routers and {workers} shard owners"),
        );
    }
}

#[tokio::test]
async fn a_window_longer_than_the_lease_is_acknowledged_at_the_checkpoint() {
    let Some(conn) = emulator() else { return };
    let id = ids("lease");
    let (input, input_sub) = (id("in"), id("in-sub"));
    let table = format!("fault_lease_{}", std::process::id());
    drop_table(&table).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!(
        "{{backend: embedded, path: '{}', checkpoint_interval: 300ms}}",
        dir.path().join("state").display()
    );
    // One-hour windows; the events are in the current hour, so nothing fires while it lasts.
    let file = write_pipeline(
        dir.path(),
        &totals_pipeline(&table, &input_sub, &input, &table, &state)
            .replace("size: 1m", "size: 1h"),
    );
    let out = sluice(&["setup", &file], &conn).await;
    assert!(out.status.success(), "{}", show(&out));
    let hour = chrono::Utc::now().timestamp_millis() / 3_600_000 * 3_600_000;
    let mut all = events(200);
    for (i, e) in all.iter_mut().enumerate() {
        e.ms = hour + i as i64 * 10;
    }
    publish_all(&conn, &input, all.iter().map(message).collect()).await;
    // A worker that is stopped (SIGTERM; `--until-idle` would drain and fire the window) once
    // every message was acknowledged at a checkpoint.
    let (child, base) = start(&conn, std::path::Path::new(&file), &[]);
    eventually(
        "every message acknowledged",
        Duration::from_secs(30),
        || async {
            get(&format!("{base}/metrics"))
                .await
                .is_some_and(|(_, body)| {
                    body.lines().any(|l| {
                        l.starts_with("sluice_source_messages_acked_total{") && l.ends_with(" 200")
                    })
                })
        },
    )
    .await;
    sigterm(&child);
    let out = finish(child).await;
    assert!(out.status.success(), "{}", show(&out));
    // The ack deadline is 10 s: after it, anything not acknowledged would be delivered again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        rest_pull_messages(&conn, &input_sub).await.is_empty(),
        "every message was acknowledged although its window is still open"
    );
    assert!(stored_or_empty(&table).await.is_empty(), "no pane yet");

    // An event an hour later moves the watermark past the window: the restored state fires it,
    // complete.
    let mut later = all[0].clone();
    later.id = "later".into();
    later.ms = hour + 3_600_000 + 600_000;
    publish_all(&conn, &input, vec![message(&later)]).await;
    run_to_idle(&conn, &file, "12s").await;
    // `--until-idle` drains: the later event's window is written too.
    let mut want = expected_in(&all, 3_600_000);
    want.extend(expected_in(std::slice::from_ref(&later), 3_600_000));
    assert_totals(&stored(&table).await, &want, "after the window closed");
    drop_table(&table).await;
}

/// Like [`stored`], but an absent table is empty.
async fn stored_or_empty(table: &str) -> Totals {
    let exists: bool = pg()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("query")
        .get(0);
    if exists {
        stored(table).await
    } else {
        Totals::new()
    }
}
