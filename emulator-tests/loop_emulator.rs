//! The loop against both emulators: a lake table in bqemulator → the feeder (`ReadFromBigQuery`
//! with `high_water_mark` → `WriteToPubSub`) → the Pub/Sub emulator → a windowed pipeline
//! (`ReadFromPubSub` → `AssignTimestamps` → `Deduplicate` → 1-minute `Combine` →
//! `WriteToBigQuery`) → a results table in bqemulator, read back over REST through the
//! latest-pane view of `sql/latest_pane.sql`.
//!
//! Run with `emulator-tests/run-loop-tests.sh` (starts both emulators, sets
//! `PUBSUB_EMULATOR_HOST`, `BIGQUERY_EMULATOR_HOST` and `SLUICE_REQUIRE_EMULATORS=1`, stops them
//! afterwards). Without the emulators the test fails (it never skips under the script).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::pubsub::Connection;

#[path = "support.rs"]
mod support;
use support::*;
#[path = "../tests/support/bq_rest.rs"]
#[allow(dead_code)]
mod bq_rest;
use bq_rest::{create_table, insert, query};

/// One lake row: event `id` of `recipe` watched `secs` at `at` seconds past 2026-01-01, loaded
/// into the lake at `loaded` seconds past it.
fn event(id: &str, recipe: &str, secs: i64, at: i64, loaded: i64) -> Value {
    let t = |s: i64| {
        chrono::DateTime::from_timestamp(1_767_225_600 + s, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    json!({"event_id": id, "recipe_id": recipe, "watch_seconds": secs,
           "event_ts": t(at), "loaded_at": t(loaded)})
}

fn feeder_yaml(table: &str, topic: &str, state: &Path) -> String {
    // batch_size 2: every page of the query is 2 rows, so rows with equal `loaded_at` are split
    // across batches and the mark must only move at value boundaries.
    format!(
        r#"
options:
  batch_size: 2
pipeline:
  transforms:
    - type: ReadFromBigQuery
      name: ReadLake
      config:
        table: {table}
        high_water_mark:
          column: loaded_at
          state: {}
    - type: WriteToPubSub
      name: Publish
      input: ReadLake
      config:
        topic: {topic}
"#,
        state.display()
    )
}

/// The subscription comes from `--var subscription=…`: both runs use this one file, so the
/// pipeline's name, and with it the ids of its panes, are the same.
fn windowed_yaml(results: &str) -> String {
    format!(
        r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        subscription: "{{{{ subscription }}}}"
        format: JSON
        schema:
          type: object
          properties:
            event_id: {{type: string}}
            recipe_id: {{type: string}}
            watch_seconds: {{type: integer}}
            event_ts: {{type: string}}
            loaded_at: {{type: string}}
          required: [event_id, recipe_id, watch_seconds, event_ts]
        attributes: [sluice_id]
        id_attribute: sluice_id
    - type: AssignTimestamps
      name: EventTime
      input: Read
      config:
        timestamp: event_ts
        # Nothing fires before the input ends: the totals do not depend on delivery order.
        watermark: {{max_delay: 1h}}
    - type: Deduplicate
      name: Once
      input: EventTime
      config:
        by: [sluice_id]
        within: 1h
    - type: Combine
      name: PerMinute
      input: Once
      windowing: {{type: fixed, size: 1m}}
      config:
        group_by: [recipe_id]
        combine:
          views: {{fn: count, value: event_id}}
          watch: {{fn: sum, value: watch_seconds}}
    - type: WriteToBigQuery
      name: WriteResults
      input: PerMinute
      config:
        table: {results}
"#
    )
}

async fn run_ok(args: &[&str], conn: &Connection) -> std::process::Output {
    let out = sluice(args, conn).await;
    assert!(out.status.success(), "sluice {args:?}: {}", show(&out));
    out
}

/// A transform's "rows out" in the run summary `sluice run` prints on stderr.
fn rows_out(out: &std::process::Output, transform: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 4 && cols[0] == transform).then(|| cols[2].parse().ok())?
        })
        .unwrap_or_else(|| panic!("no summary line for {transform}:\n{text}"))
}

fn saved_mark(path: &Path) -> Value {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("state file")).expect("JSON");
    v["mark"]["value"].clone()
}

/// A second subscription on the feeder's topic, read by a streaming pull in the background:
/// what the feeder published, message by message.
struct Audit {
    collector: Collector,
    seen: usize,
}

impl Audit {
    /// Waits for `n` more messages, then a moment longer to see that no more come; returns
    /// their `sluice_id`s.
    async fn next(&mut self, n: usize) -> std::collections::BTreeSet<String> {
        let want = self.seen + n;
        self.collector.wait_for(want, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(self.collector.len(), want, "exactly {n} more messages");
        let ids: Vec<String> = self.collector.ids();
        self.seen = want;
        let fresh = &ids[want - n..];
        let set: std::collections::BTreeSet<String> = fresh.iter().cloned().collect();
        assert!(
            fresh.iter().all(|i| !i.is_empty()),
            "every message has a sluice_id"
        );
        set
    }
}

/// The latest-pane view's rows, trimmed to what the dashboard shows.
async fn view_rows(view: &str) -> Vec<Value> {
    query(&format!(
        "SELECT window_start, recipe_id, pane_index, pane_timing, views, watch, sluice_id \
         FROM {view} ORDER BY window_start, recipe_id"
    ))
    .await
}

#[tokio::test]
async fn lake_to_pubsub_to_windowed_pipeline_to_lake_exact_and_idempotent() {
    let conn =
        emulator().expect("PUBSUB_EMULATOR_HOST is not set: run emulator-tests/run-loop-tests.sh");
    let id = ids("loop");
    let ds = format!("loop_{}", std::process::id());
    let lake = format!("{PROJECT}.{ds}.events");
    let results = format!("{PROJECT}.{ds}.minute_stats");
    let (topic_name, sub_name, replay_sub, audit_sub) = (
        id("events"),
        id("events-sub"),
        id("replay-sub"),
        id("audit-sub"),
    );
    create_topic(&conn, &topic_name).await;
    create_subscription(&conn, &sub_name, &topic_name).await;
    create_subscription(&conn, &audit_sub, &topic_name).await;
    // The replay's consumer: it sees every message ever published, duplicates included, so the
    // replay covers the whole history.
    create_subscription(&conn, &replay_sub, &topic_name).await;
    let mut audit = Audit {
        collector: Collector::start(&conn, &audit_sub).await,
        seen: 0,
    };
    create_table(
        &ds,
        "events",
        json!([
            {"name": "event_id", "type": "STRING"},
            {"name": "recipe_id", "type": "STRING"},
            {"name": "watch_seconds", "type": "INT64"},
            {"name": "event_ts", "type": "TIMESTAMP"},
            {"name": "loaded_at", "type": "TIMESTAMP"}
        ]),
    )
    .await;
    // Minute 0: r1 ×2 (10 + 20 s), r2 ×1 (5 s). Minute 1: r1 ×1 (7 s), r2 ×2 — the same row
    // twice in the lake, so two views (3 + 3 s). Minute 2: r1 ×1 (1 s), r3 ×2 (4 + 6 s).
    // Three loads share `loaded_at` 100, two share 200 and 300.
    let first_load = [
        event("e1", "r1", 10, 5, 100),
        event("e2", "r1", 20, 30, 100),
        event("e3", "r2", 5, 45, 100),
        event("e4", "r1", 7, 70, 200),
        event("e5", "r2", 3, 80, 200),
        event("e5", "r2", 3, 80, 200),
        event("e7", "r1", 1, 120, 300),
        event("e8", "r3", 4, 150, 300),
        event("e9", "r3", 6, 179, 400),
    ];
    insert(&ds, "events", Value::from(first_load.to_vec())).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state/events.mark.json");

    // A feeder whose publishing fails saves no mark: nothing it did not publish is skipped.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, feeder_yaml(&lake, &id("missing-topic"), &state)).unwrap();
    let out = sluice(&["run", broken.to_str().unwrap()], &conn).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(!state.exists(), "no mark saved by a failed run");

    let feeder = dir.path().join("feeder.yaml");
    std::fs::write(&feeder, feeder_yaml(&lake, &topic_name, &state)).unwrap();
    let f = feeder.to_str().unwrap();
    run_ok(&["run", f], &conn).await;
    let at = |s: i64| json!((1_767_225_600 + s) * 1_000_000);
    assert_eq!(saved_mark(&state), at(400));
    let first_ids = audit.next(9).await;
    assert_eq!(
        first_ids.len(),
        9,
        "one id per lake row, identical rows too"
    );

    // A crash after publishing everything but before saving past `loaded_at` 100 leaves the
    // mark there: the next run publishes the 6 later rows again, with the same ids.
    let text = std::fs::read_to_string(&state).unwrap();
    let rewound = text.replace(&at(400).to_string(), &at(100).to_string());
    assert_ne!(rewound, text);
    std::fs::write(&state, rewound).unwrap();
    run_ok(&["run", f], &conn).await;
    assert_eq!(saved_mark(&state), at(400));
    // Rows past the saved mark, once each, with the ids they had.
    let again = audit.next(6).await;
    assert_eq!(again.len(), 6);
    assert!(
        again.is_subset(&first_ids),
        "republished rows keep their ids"
    );

    // Nothing new: nothing published. A new load: only it is published.
    run_ok(&["run", f], &conn).await;
    audit.next(0).await;
    insert(&ds, "events", json!([event("e10", "r2", 8, 110, 500)])).await;
    run_ok(&["run", f], &conn).await;
    assert_eq!(saved_mark(&state), at(500));
    let new_ids = audit.next(1).await;
    assert!(new_ids.is_disjoint(&first_ids));

    // The windowed pipeline reads all 16 messages and counts each lake row once.
    let windowed = dir.path().join("windowed.yaml");
    std::fs::write(&windowed, windowed_yaml(&results)).unwrap();
    let w = windowed.to_str().unwrap();
    let first_sub = format!("subscription={sub_name}");
    run_ok(
        &["run", w, "--var", &first_sub, "--until-idle", "3s"],
        &conn,
    )
    .await;
    // Nothing is left unacknowledged on the pipeline's subscription.
    assert!(rest_pull(&conn, &sub_name).await.is_empty());

    let view_sql =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/latest_pane.sql"))
            .unwrap();
    let view = format!("`{PROJECT}.{ds}.minute_stats_latest`");
    let create_view = view_sql
        .replace("${view}", &view)
        .replace("${results_table}", &format!("`{results}`"))
        .replace("${keys}", "recipe_id");
    query(create_view.trim().trim_end_matches(';')).await;
    let minute = |m: i64| ((1_767_225_600 + 60 * m) * 1_000_000).to_string();
    let expected = [
        (0, "r1", 2, 30),
        (0, "r2", 1, 5),
        (1, "r1", 1, 7),
        (1, "r2", 3, 14),
        (2, "r1", 1, 1),
        (2, "r3", 2, 10),
    ];
    let rows = view_rows(&view).await;
    let shown: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"window_start": r["window_start"], "recipe_id": r["recipe_id"],
                   "pane_index": r["pane_index"], "pane_timing": r["pane_timing"],
                   "views": r["views"], "watch": r["watch"]})
        })
        .collect();
    let want: Vec<Value> = expected
        .iter()
        .map(|(m, r, views, watch)| {
            json!({"window_start": minute(*m), "recipe_id": r, "pane_index": "0",
                   "pane_timing": "ON_TIME", "views": views.to_string(),
                   "watch": watch.to_string()})
        })
        .collect();
    assert_eq!(shown, want);
    let count = |sql: String| async move { query(&sql).await[0]["n"].clone() };
    assert_eq!(
        count(format!("SELECT COUNT(*) AS n FROM `{results}`")).await,
        json!("6")
    );

    // Replay the same input from scratch: the feeder without its mark publishes all 10 rows
    // again (same ids); the same windowed pipeline, reading every message published so far
    // (9 + 6 + 1 + 10), writes the same panes (same sluice_ids) again.
    // The emulator does not deduplicate insertIds, so the table holds every pane twice; the
    // latest-pane view is unchanged.
    std::fs::remove_file(&state).unwrap();
    run_ok(&["run", f], &conn).await;
    let replayed = audit.next(10).await;
    assert_eq!(
        replayed,
        first_ids.union(&new_ids).cloned().collect(),
        "a replay publishes every row with its first id"
    );
    let replay_sub_var = format!("subscription={replay_sub}");
    let out = run_ok(
        &["run", w, "--var", &replay_sub_var, "--until-idle", "3s"],
        &conn,
    )
    .await;
    // The source drops the 16 copies by their id (`id_attribute`, issue #16) before
    // `Deduplicate` sees them.
    assert_eq!(
        (rows_out(&out, "Read"), rows_out(&out, "Once")),
        (10, 10),
        "the replay's consumer kept each of the 26 messages' rows once"
    );
    assert_eq!(view_rows(&view).await, rows, "latest-pane view unchanged");
    assert_eq!(
        count(format!("SELECT COUNT(*) AS n FROM `{results}`")).await,
        json!("12")
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(DISTINCT sluice_id) AS n FROM `{results}`"
        ))
        .await,
        json!("6")
    );
    // Nothing is left unacknowledged on the replay's subscription; the first subscription holds
    // exactly the 10 messages the replay published after its pipeline had ended.
    assert!(rest_pull(&conn, &replay_sub).await.is_empty());
    assert_eq!(rest_pull(&conn, &sub_name).await.len(), 10);
}

#[tokio::test]
async fn periodic_feeder_follows_new_rows_survives_sigkill_and_ends_when_idle() {
    let conn =
        emulator().expect("PUBSUB_EMULATOR_HOST is not set: run emulator-tests/run-loop-tests.sh");
    let id = ids("poll");
    let ds = format!("poll_{}", std::process::id());
    let lake = format!("{PROJECT}.{ds}.events");
    let (topic_name, audit_sub) = (id("events"), id("audit-sub"));
    create_topic(&conn, &topic_name).await;
    create_subscription(&conn, &audit_sub, &topic_name).await;
    let mut audit = Audit {
        collector: Collector::start(&conn, &audit_sub).await,
        seen: 0,
    };
    create_table(
        &ds,
        "events",
        json!([
            {"name": "event_id", "type": "STRING"},
            {"name": "recipe_id", "type": "STRING"},
            {"name": "watch_seconds", "type": "INT64"},
            {"name": "event_ts", "type": "TIMESTAMP"},
            {"name": "loaded_at", "type": "TIMESTAMP"}
        ]),
    )
    .await;
    insert(
        &ds,
        "events",
        json!([
            event("p1", "r1", 1, 1, 100),
            event("p2", "r1", 2, 2, 100),
            event("p3", "r2", 3, 3, 100),
        ]),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("events.mark.json");
    let feeder = dir.path().join("feeder.yaml");
    let yaml = feeder_yaml(&lake, &topic_name, &state).replace(
        "          state:",
        "          every: 500ms\n          state:",
    );
    std::fs::write(&feeder, yaml).unwrap();
    let at = |s: i64| json!((1_767_225_600 + s) * 1_000_000);

    // A running feeder publishes what is there, then each new load on its next poll.
    let (mut child, _) = start(&conn, &feeder, &[]);
    let first = audit.next(3).await;
    insert(
        &ds,
        "events",
        json!([event("p4", "r2", 4, 4, 200), event("p5", "r3", 5, 5, 200)]),
    )
    .await;
    let second = audit.next(2).await;
    assert!(second.is_disjoint(&first));
    eventually(
        "the mark is saved past the second load",
        Duration::from_secs(10),
        || {
            let state = state.clone();
            async move { state.exists() && saved_mark(&state) == at(200) }
        },
    )
    .await;

    // SIGKILL: no drain, no last save. The file is intact and the next run resumes from it.
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    assert_eq!(saved_mark(&state), at(200));
    insert(&ds, "events", json!([event("p6", "r3", 6, 6, 300)])).await;
    let out = run_ok(
        &["run", feeder.to_str().unwrap(), "--until-idle", "2s"],
        &conn,
    )
    .await;
    assert_eq!(
        rows_out(&out, "ReadLake"),
        1,
        "only the row loaded after the kill"
    );
    let third = audit.next(1).await;
    assert!(third.is_disjoint(&first) && third.is_disjoint(&second));
    assert_eq!(saved_mark(&state), at(300));
}
