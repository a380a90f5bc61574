//! Event-time semantics end to end (config → validate → execute → files): out-of-order data
//! within `max_delay`, late data within and beyond `allowed_lateness`, accumulating vs
//! discarding LATE panes, Deduplicate. Sources read one row per batch so that the watermark
//! advances between rows; exact expected rows, no timing.

mod common;

use serde_json::{Value, json};

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;

fn event(id: &str, user: &str, secs: i64) -> String {
    let t = chrono::DateTime::from_timestamp(T0 + secs, 0).expect("valid time");
    json!({
        "event_id": id,
        "recipe_id": "r1",
        "user_id": user,
        "watch_seconds": 10,
        "event_time": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
    .to_string()
}

fn pipeline(windowing: &str, watermark: &str) -> String {
    format!(
        r#"
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config:
        path: "{{{{ input }}}}"
    - type: AssignTimestamps
      name: Stamp
      input: Read
      config:
        timestamp: event_time
        watermark: {watermark}
    - type: Combine
      name: PerWindow
      input: Stamp
      windowing: {windowing}
      config:
        group_by: [recipe_id]
        combine:
          n: count
          users:
            fn: count_distinct
            value: user_id
      error_handling:
        output: too_late
    - type: ExtractWindowingInfo
      name: Info
      input: PerWindow
      config:
        fields: [window_string, pane_index, pane_timing]
    - type: WriteToJson
      name: Write
      input: Info
      config:
        path: "{{{{ out }}}}/panes"
    - type: WriteToJson
      name: WriteLate
      input: PerWindow.too_late
      config:
        path: "{{{{ out }}}}/late"
"#
    )
}

async fn run(source: &str, events: &[String], batch_size: usize) -> (Vec<Value>, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").expect("write input");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    common::run_source(
        source,
        &[
            ("input", input.to_str().expect("utf-8")),
            ("out", out.to_str().expect("utf-8")),
        ],
        batch_size,
    )
    .await;
    (
        common::read_rows(&out, "panes"),
        common::read_rows(&out, "late"),
    )
}

fn win(start: i64, end: i64) -> String {
    format!("[{:?}, {:?})", (T0 + start) as f64, (T0 + end) as f64)
}

fn pane(start: i64, end: i64, index: i64, timing: &str, n: i64, users: i64) -> Value {
    json!({"recipe_id": "r1", "n": n, "users": users, "window_string": win(start, end),
           "pane_index": index, "pane_timing": timing})
}

#[tokio::test]
async fn out_of_order_data_within_max_delay_is_not_late() {
    let src = pipeline("{type: fixed, size: 60s}", "{max_delay: 10s}");
    // Up to 9 s out of order around the minute boundary.
    let events = [
        event("a", "u1", 50),
        event("b", "u2", 61),
        event("c", "u3", 55),
        event("d", "u1", 68),
        event("e", "u4", 59),
        event("f", "u2", 125),
    ];
    let expected = vec![
        pane(0, 60, 0, "ON_TIME", 3, 3),
        pane(60, 120, 0, "ON_TIME", 2, 2),
        pane(120, 180, 0, "ON_TIME", 1, 1),
    ];
    for batch_size in [1, 2, 8192] {
        let (panes, late) = run(&src, &events, batch_size).await;
        assert_eq!(
            common::canonical(&panes),
            common::canonical(&expected),
            "batch_size {batch_size}"
        );
        assert!(late.is_empty());
    }
    // Arrival order within max_delay does not matter either.
    let mut shuffled = events.to_vec();
    shuffled.swap(0, 2);
    shuffled.swap(3, 4);
    let (panes, _) = run(&src, &shuffled, 1).await;
    assert_eq!(common::canonical(&panes), common::canonical(&expected));
}

fn late_events() -> Vec<String> {
    vec![
        event("a", "u1", 10),
        event("b", "u2", 20),
        // Watermark → 65 s: [0, 60) fires ON_TIME with 2 rows.
        event("c", "u3", 65),
        // Late but within 30 s of allowed lateness: a LATE pane.
        event("d", "u4", 30),
        // Watermark → 100 s: [0, 60) is past 60 + 30 and its state is dropped.
        event("e", "u5", 100),
        // Beyond the allowed lateness: error output.
        event("f", "u6", 40),
    ]
}

#[tokio::test]
async fn late_data_within_lateness_gives_late_panes_and_beyond_goes_to_errors() {
    let src = pipeline(
        "{type: fixed, size: 60s, allowed_lateness: 30s}",
        "{max_delay: 0s}",
    );
    let (panes, late) = run(&src, &late_events(), 1).await;
    let expected = vec![
        pane(0, 60, 0, "ON_TIME", 2, 2),
        pane(0, 60, 1, "LATE", 1, 1),
        pane(60, 120, 0, "ON_TIME", 2, 2),
    ];
    assert_eq!(common::canonical(&panes), common::canonical(&expected));
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["transform"], "PerWindow");
    let msg = late[0]["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("late data") && msg.contains("allowed lateness 30000ms"),
        "{msg}"
    );
    assert!(
        late[0]["element"]
            .as_str()
            .unwrap_or_default()
            .contains("\"f\"")
    );
}

#[tokio::test]
async fn accumulating_late_panes_include_earlier_data() {
    let src = pipeline(
        "{type: fixed, size: 60s, allowed_lateness: 30s, accumulation: accumulating}",
        "{max_delay: 0s}",
    );
    let (panes, late) = run(&src, &late_events(), 1).await;
    let expected = vec![
        pane(0, 60, 0, "ON_TIME", 2, 2),
        pane(0, 60, 1, "LATE", 3, 3),
        pane(60, 120, 0, "ON_TIME", 2, 2),
    ];
    assert_eq!(common::canonical(&panes), common::canonical(&expected));
    assert_eq!(late.len(), 1);
}

#[tokio::test]
async fn without_allowed_lateness_late_data_is_an_error() {
    let src = pipeline("{type: fixed, size: 60s}", "{max_delay: 0s}");
    let (panes, late) = run(&src, &late_events(), 1).await;
    let expected = vec![
        pane(0, 60, 0, "ON_TIME", 2, 2),
        pane(60, 120, 0, "ON_TIME", 2, 2),
    ];
    assert_eq!(common::canonical(&panes), common::canonical(&expected));
    assert_eq!(late.len(), 2, "d and f are both late: {late:?}");
}

#[tokio::test]
async fn bounded_input_without_watermark_key_has_no_late_data() {
    // As on Beam's batch runner: the watermark jumps to +∞ at the end, nothing is late.
    let src = pipeline("{type: fixed, size: 60s}", "null");
    let src = src.replace("        watermark: null\n", "");
    let (panes, late) = run(&src, &late_events(), 1).await;
    let expected = vec![
        pane(0, 60, 0, "ON_TIME", 4, 4),
        pane(60, 120, 0, "ON_TIME", 2, 2),
    ];
    assert_eq!(common::canonical(&panes), common::canonical(&expected));
    assert!(late.is_empty());
}

#[tokio::test]
async fn deduplicate_keeps_the_first_row_per_key_within_the_horizon() {
    let src = r#"
pipeline:
  transforms:
    - type: ReadFromJson
      name: Read
      config:
        path: "{{ input }}"
    - type: AssignTimestamps
      name: Stamp
      input: Read
      config:
        timestamp: event_time
    - type: Deduplicate
      name: Dedup
      input: Stamp
      config:
        by: [event_id]
        within: 1m
    - type: WriteToJson
      name: Write
      input: Dedup
      config:
        path: "{{ out }}/rows"
"#;
    let events = [
        event("a", "u1", 10),
        event("a", "u1", 10),
        event("b", "u2", 20),
        event("a", "u9", 50),
        // More than a minute after the kept `a`: a new occurrence.
        event("a", "u7", 75),
    ];
    for batch_size in [1, 8192] {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("events.jsonl");
        std::fs::write(&input, events.join("\n")).expect("write");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("out dir");
        common::run_source(
            src,
            &[
                ("input", input.to_str().expect("utf-8")),
                ("out", out.to_str().expect("utf-8")),
            ],
            batch_size,
        )
        .await;
        let rows = common::read_rows(&out, "rows");
        let users: Vec<&str> = rows.iter().filter_map(|r| r["user_id"].as_str()).collect();
        assert_eq!(users, vec!["u1", "u2", "u7"], "batch_size {batch_size}");
    }
}
