//! `Sql` per window, at the operator with explicit event times and watermarks (out-of-order
//! rows, late rows within and beyond the allowed lateness, early panes, session keys, batch
//! boundaries, acknowledgement holds, failing panes), and end to end from YAML (a join of two
//! inputs per window, `ExtractWindowingInfo` after it, `validate`'s refusals).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{Array, Int8Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Value, json};
use sluice::config::{PipelineSpec, TransformConfig, WindowKind, Windowing, parse};
use sluice::pipeline::build::Overrides;
use sluice::pipeline::operator::{END_OF_TIME, ErrorRoute, Operator, Output, StageStats};
use sluice::pipeline::runner::RunControl;
use sluice::pipeline::{execute, validate};
use sluice::record::{Ack, AckStatus, Batch, Hold, Releaser, meta, rows};
use sluice::transforms::sql::{Sql, WindowedSpec};

const MIN: i64 = 60_000;
const EARLY: i8 = 0;
const ON_TIME: i8 = 1;
const LATE: i8 = 2;

fn fixed() -> Windowing {
    Windowing {
        kind: WindowKind::Fixed {
            size_ms: MIN,
            offset_ms: 0,
        },
        // As parsed without `allowed_lateness`: no late panes.
        late_panes: false,
        ..Windowing::global()
    }
}

/// A `Sql` operator on one windowed input, with an error output on port 1.
fn sql(query: &str, windowing: Windowing, session_key: &[&str]) -> Sql {
    let errors = ErrorRoute::new("Q", Some(1), Arc::new(StageStats::default()));
    Sql::new(
        query,
        vec!["PCOLLECTION".into()],
        false,
        8192,
        errors,
        Some(WindowedSpec {
            pipeline: "p".into(),
            windowing,
            session_key: session_key.iter().map(|s| s.to_string()).collect(),
            stats: Arc::default(),
        }),
    )
}

/// Rows (k, v, event time).
fn batch(rows: &[(&str, i64, i64)]) -> Batch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new(meta::EVENT_TIME, DataType::Int64, true),
    ]));
    Batch::new(
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("valid batch"),
    )
}

/// One main-output row: user fields as JSON, window start/end, pane index and timing, event
/// time and row id.
#[derive(Debug, Clone, PartialEq)]
struct PaneRow {
    fields: Value,
    window: (i64, i64),
    pane: i64,
    timing: i8,
    ts: i64,
    id: String,
}

/// Drains `out`: the main rows in order, and the error records as (element, msg).
fn drain(out: &mut Output) -> (Vec<PaneRow>, Vec<(String, String)>) {
    let mut main = Vec::new();
    let mut errors = Vec::new();
    for (port, b) in out.drain() {
        if port == 1 {
            for row in rows::to_json_rows(&b.rows) {
                errors.push((
                    row["element"].as_str().unwrap().to_string(),
                    row["msg"].as_str().unwrap().to_string(),
                ));
            }
            continue;
        }
        let json = rows::to_json_rows(&b.rows);
        let col = |name: &str| b.column_i64(name).unwrap().clone();
        let (starts, ends, panes, ts) = (
            col(meta::WINDOW_START),
            col(meta::WINDOW_END),
            col(meta::PANE_INDEX),
            col(meta::EVENT_TIME),
        );
        let timing = b
            .rows
            .column_by_name(meta::PANE_TIMING)
            .unwrap()
            .as_any()
            .downcast_ref::<Int8Array>()
            .unwrap()
            .clone();
        let ids = b
            .rows
            .column_by_name(meta::ROW_ID)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        for (i, fields) in json.into_iter().enumerate() {
            main.push(PaneRow {
                fields: Value::Object(fields),
                window: (starts.value(i), ends.value(i)),
                pane: panes.value(i),
                timing: timing.value(i),
                ts: ts.value(i),
                id: ids.value(i).to_string(),
            });
        }
    }
    (main, errors)
}

/// (fields, window start, pane, timing) of rows: what most tests compare.
fn summary(rows: &[PaneRow]) -> Vec<(Value, i64, i64, i8)> {
    rows.iter()
        .map(|r| (r.fields.clone(), r.window.0, r.pane, r.timing))
        .collect()
}

const SUM_BY_K: &str =
    "SELECT k, SUM(v) AS total, COUNT(*) AS n FROM PCOLLECTION GROUP BY k ORDER BY k";

/// Out-of-order rows over two windows, fed one row per batch or all at once (in two different
/// orders): the same rows, ids and order come out, each window's pane when the watermark
/// passes its end.
#[tokio::test]
async fn panes_fire_on_the_watermark_whatever_the_batch_boundaries() {
    let input = [
        ("a", 1, 61_000),
        ("a", 2, 1_000),
        ("b", 5, 30_000),
        ("a", 3, 59_999),
        ("b", 7, 60_000),
        ("a", 4, 119_999),
    ];
    let mut runs = Vec::new();
    for (size, reversed) in [(1, false), (8192, false), (1, true)] {
        let mut q = sql(SUM_BY_K, fixed(), &[]);
        let mut out = Output::new(2);
        let mut rows = input.to_vec();
        if reversed {
            rows.reverse();
        }
        for chunk in rows.chunks(size) {
            q.process(0, batch(chunk), &mut out).await.unwrap();
        }
        assert!(drain(&mut out).0.is_empty(), "nothing before the watermark");
        q.on_watermark(59_999, &mut out).await.unwrap();
        assert!(
            drain(&mut out).0.is_empty(),
            "the first window ends at 60000"
        );
        q.on_watermark(MIN, &mut out).await.unwrap();
        let first = drain(&mut out).0;
        q.on_watermark(END_OF_TIME, &mut out).await.unwrap();
        let second = drain(&mut out).0;
        assert_eq!(
            summary(&first),
            vec![
                (json!({"k": "a", "total": 5, "n": 2}), 0, 0, ON_TIME),
                (json!({"k": "b", "total": 5, "n": 1}), 0, 0, ON_TIME),
            ]
        );
        assert_eq!(
            summary(&second),
            vec![
                (json!({"k": "a", "total": 5, "n": 2}), MIN, 0, ON_TIME),
                (json!({"k": "b", "total": 7, "n": 1}), MIN, 0, ON_TIME),
            ]
        );
        assert!(
            first
                .iter()
                .all(|r| r.window == (0, MIN) && r.ts == MIN - 1)
        );
        assert!(
            second
                .iter()
                .all(|r| r.window == (MIN, 2 * MIN) && r.ts == 2 * MIN - 1)
        );
        runs.push([first, second].concat());
    }
    assert_eq!(runs[0], runs[1], "one row per batch vs one batch");
    assert_eq!(runs[0], runs[2], "reversed arrival");
    // Equal output rows in different windows still get different ids.
    let ids: std::collections::BTreeSet<&str> = runs[0].iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|id| id.len() == 32));
}

/// A float aggregate whose value depends on summation order: the rows are ordered by event
/// time and content before the query, so arrival order cannot change the last bits.
#[tokio::test]
async fn float_sums_do_not_depend_on_arrival_order() {
    let query = "SELECT SUM(CAST(v AS DOUBLE) / 10.0) AS s, ARRAY_AGG(k) AS ks FROM PCOLLECTION";
    let input = [("x", 1, 5), ("y", 100_000_001, 3), ("z", 7, 4), ("w", 3, 3)];
    let mut results = Vec::new();
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
        let mut q = sql(query, fixed(), &[]);
        let mut out = Output::new(2);
        for i in order {
            q.process(0, batch(&[input[i]]), &mut out).await.unwrap();
        }
        q.on_end(&mut out).await.unwrap();
        results.push(drain(&mut out).0);
    }
    assert_eq!(
        results[0][0].fields["ks"],
        json!(["w", "y", "z", "x"]),
        "event time, then content"
    );
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

/// Allowed lateness 30 s: a late row within it gives a LATE pane with only the new rows
/// (discarding); once the watermark passes end + lateness, a row for the window is an error
/// record naming the window, the watermark and the lateness.
#[tokio::test]
async fn late_rows_within_and_beyond_the_allowed_lateness() {
    let windowing = Windowing {
        allowed_lateness_ms: 30_000,
        late_panes: true,
        ..fixed()
    };
    let mut q = sql(SUM_BY_K, windowing, &[]);
    let mut out = Output::new(2);
    q.process(0, batch(&[("a", 1, 10_000), ("b", 2, 20_000)]), &mut out)
        .await
        .unwrap();
    q.on_watermark(MIN, &mut out).await.unwrap();
    let (on_time, errors) = drain(&mut out);
    assert!(errors.is_empty());
    assert_eq!(
        summary(&on_time),
        vec![
            (json!({"k": "a", "total": 1, "n": 1}), 0, 0, ON_TIME),
            (json!({"k": "b", "total": 2, "n": 1}), 0, 0, ON_TIME),
        ]
    );
    // Late, within the lateness: a LATE pane of the new rows only; the other window's row
    // waits for its own watermark.
    q.process(0, batch(&[("a", 10, 20_000), ("c", 3, 70_000)]), &mut out)
        .await
        .unwrap();
    let (late, errors) = drain(&mut out);
    assert!(errors.is_empty());
    assert_eq!(
        summary(&late),
        vec![(json!({"k": "a", "total": 10, "n": 1}), 0, 1, LATE)]
    );
    assert_ne!(late[0].id, on_time[0].id, "another pane, another id");
    // The watermark passes 60 s + 30 s: the window's state is gone, its rows are too late.
    q.on_watermark(90_000, &mut out).await.unwrap();
    assert!(drain(&mut out).0.is_empty());
    q.process(0, batch(&[("a", 100, 30_000)]), &mut out)
        .await
        .unwrap();
    let (main, errors) = drain(&mut out);
    assert!(main.is_empty());
    assert_eq!(
        errors,
        vec![(
            r#"{"k":"a","v":100}"#.to_string(),
            "late data: event time 1970-01-01T00:00:30.000Z is in window [1970-01-01T00:00:00.000Z, 1970-01-01T00:01:00.000Z), which closed at watermark 1970-01-01T00:01:30.000Z (allowed lateness 30000ms); the row was dropped".to_string()
        )]
    );
    q.on_end(&mut out).await.unwrap();
    assert_eq!(
        summary(&drain(&mut out).0),
        vec![(json!({"k": "c", "total": 3, "n": 1}), MIN, 0, ON_TIME)]
    );
}

/// Without late panes (no allowed lateness) a row for a fired window is an error at once.
#[tokio::test]
async fn rows_for_a_fired_window_are_errors_without_lateness() {
    let mut q = sql(SUM_BY_K, fixed(), &[]);
    let mut out = Output::new(2);
    q.process(0, batch(&[("a", 1, 10_000)]), &mut out)
        .await
        .unwrap();
    q.on_watermark(MIN, &mut out).await.unwrap();
    drain(&mut out);
    q.process(0, batch(&[("a", 2, 59_000)]), &mut out)
        .await
        .unwrap();
    let (main, errors) = drain(&mut out);
    assert!(main.is_empty());
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .1
            .ends_with("(allowed lateness 0ms, late panes off); the row was dropped")
    );
}

/// EARLY panes on the processing-time timer: accumulating panes see every row so far, and the
/// ON_TIME pane repeats the total; discarding panes see only the rows since the last pane, and
/// no ON_TIME pane fires when nothing arrived since.
#[tokio::test]
async fn early_panes_accumulating_and_discarding() {
    let now = tokio::time::Instant::now();
    for accumulating in [true, false] {
        let windowing = Windowing {
            early_every: Some(Duration::from_secs(5)),
            accumulating,
            ..fixed()
        };
        let mut q = sql(SUM_BY_K, windowing, &[]);
        assert_eq!(q.timer_interval(), Some(Duration::from_secs(5)));
        let mut out = Output::new(2);
        q.process(0, batch(&[("a", 1, 1_000), ("a", 2, 2_000)]), &mut out)
            .await
            .unwrap();
        q.on_timer(now, &mut out).await.unwrap();
        let first = summary(&drain(&mut out).0);
        q.on_timer(now, &mut out).await.unwrap();
        assert!(drain(&mut out).0.is_empty(), "no new rows, no pane");
        q.process(0, batch(&[("a", 10, 3_000)]), &mut out)
            .await
            .unwrap();
        q.on_timer(now, &mut out).await.unwrap();
        let second = summary(&drain(&mut out).0);
        q.on_watermark(MIN, &mut out).await.unwrap();
        let on_time = summary(&drain(&mut out).0);
        assert_eq!(
            first,
            vec![(json!({"k": "a", "total": 3, "n": 2}), 0, 0, EARLY)]
        );
        if accumulating {
            assert_eq!(
                second,
                vec![(json!({"k": "a", "total": 13, "n": 3}), 0, 1, EARLY)]
            );
            assert_eq!(
                on_time,
                vec![(json!({"k": "a", "total": 13, "n": 3}), 0, 2, ON_TIME)]
            );
        } else {
            assert_eq!(
                second,
                vec![(json!({"k": "a", "total": 10, "n": 1}), 0, 1, EARLY)]
            );
            assert!(on_time.is_empty());
        }
    }
}

/// Session windows are per key, the query's GROUP BY column: an out-of-order element bridges
/// two sessions of `a` into one; `b`'s session is its own.
#[tokio::test]
async fn sessions_are_keyed_by_the_group_by_columns() {
    let windowing = Windowing {
        kind: WindowKind::Sessions { gap_ms: 30_000 },
        ..Windowing::global()
    };
    let query = "SELECT k, SUM(v) AS total FROM PCOLLECTION GROUP BY k";
    for size in [1, 8192] {
        let mut q = sql(query, windowing, &["k"]);
        let mut out = Output::new(2);
        let rows = [
            ("a", 1, 0),
            ("a", 2, 50_000),
            ("b", 4, 10_000),
            ("a", 8, 25_000),
        ];
        for chunk in rows.chunks(size) {
            q.process(0, batch(chunk), &mut out).await.unwrap();
        }
        q.on_end(&mut out).await.unwrap();
        let panes = drain(&mut out).0;
        let got: Vec<(Value, (i64, i64))> =
            panes.iter().map(|r| (r.fields.clone(), r.window)).collect();
        assert_eq!(
            got,
            vec![
                (json!({"k": "b", "total": 4}), (10_000, 40_000)),
                (json!({"k": "a", "total": 11}), (0, 80_000)),
            ],
            "batch size {size}"
        );
    }
}

struct Counted(Arc<AtomicUsize>);

impl Hold for Counted {
    fn release(self: Box<Self>, _status: AckStatus) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The input's acknowledgement hold is kept until the pane holding its rows is emitted (and
/// released when that batch is dropped, i.e. written).
#[tokio::test]
async fn acknowledgement_holds_are_released_with_the_pane() {
    let released = Arc::new(AtomicUsize::new(0));
    let mut q = sql(SUM_BY_K, fixed(), &[]);
    let mut out = Output::new(2);
    let mut b = batch(&[("a", 1, 1_000)]);
    b.acks
        .insert(Ack::new(Counted(released.clone()), &Releaser::default()));
    q.process(0, b, &mut out).await.unwrap();
    assert!(out.is_empty());
    assert_eq!(
        released.load(Ordering::SeqCst),
        0,
        "held by the open window"
    );
    q.on_watermark(MIN, &mut out).await.unwrap();
    let emitted: Vec<Batch> = out.drain().map(|(_, b)| b).collect();
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].acks.len(), 1, "the pane carries the hold");
    assert_eq!(released.load(Ordering::SeqCst), 0);
    drop(emitted);
    assert_eq!(released.load(Ordering::SeqCst), 1);
}

/// A query that fails on a pane's rows (a cast inside an aggregate) sends every row of that
/// pane to the error output and the stream goes on; other windows are unaffected.
#[tokio::test]
async fn a_failing_pane_goes_to_the_error_output() {
    let query = "SELECT SUM(CAST(k AS BIGINT)) AS s FROM PCOLLECTION";
    let mut q = sql(query, fixed(), &[]);
    let mut out = Output::new(2);
    q.process(
        0,
        batch(&[("x", 1, 1_000), ("7", 2, 61_000), ("8", 3, 62_000)]),
        &mut out,
    )
    .await
    .unwrap();
    q.on_end(&mut out).await.unwrap();
    let (main, errors) = drain(&mut out);
    assert_eq!(summary(&main), vec![(json!({"s": 15}), MIN, 0, ON_TIME)]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, r#"{"k":"x","v":1}"#);
    assert!(
        errors[0].1.starts_with(
            "the query failed on window [1970-01-01T00:00:00.000Z, 1970-01-01T00:01:00.000Z) pane 0: "
        ),
        "{}",
        errors[0].1
    );
}

/// Rows without event times cannot be windowed (except into the global window).
#[tokio::test]
async fn windowed_input_needs_event_times() {
    let mut q = sql(SUM_BY_K, fixed(), &[]);
    let mut out = Output::new(2);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]));
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    let err = q
        .process(0, Batch::new(rows), &mut out)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "Q: query: a query per window needs event times: add `AssignTimestamps` before the Sql transform"
    );
}

fn spec(yaml: &str) -> PipelineSpec {
    parse("sql.yaml", yaml, &BTreeMap::new()).expect("the pipeline parses")
}

/// Runs `yaml` with `batch_size` and returns the rows reaching `sink` (not run).
async fn rows_into(yaml: &str, sink: &str, batch_size: usize) -> Vec<Value> {
    let mut spec = spec(yaml);
    spec.options.batch_size = Some(batch_size);
    let graph = validate(&spec).unwrap_or_else(|d| panic!("invalid pipeline:\n{d}"));
    let overrides = Overrides {
        capture_inputs: vec![sink.to_string()],
        ..Overrides::default()
    };
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let (_, captures) = execute(&spec, &graph, &overrides, RunControl::new(stop))
        .await
        .expect("the pipeline runs");
    captures
        .iter()
        .filter(|(n, _)| n == sink)
        .flat_map(|(_, c)| c.lock().unwrap().clone())
        .flat_map(|b| rows::to_json_rows(&b))
        .map(Value::Object)
        .collect()
}

const TWO_INPUTS: &str = r#"
pipeline:
  transforms:
    - type: Create
      name: Views
      config:
        elements:
          - {recipe_id: r1, user_id: u1, at: "2026-01-01T00:00:05Z"}
          - {recipe_id: r1, user_id: u2, at: "2026-01-01T00:00:50Z"}
          - {recipe_id: r2, user_id: u1, at: "2026-01-01T00:01:10Z"}
          - {recipe_id: r1, user_id: u3, at: "2026-01-01T00:01:20Z"}
    - type: Create
      name: Cooks
      config:
        elements:
          - {recipe_id: r1, user_id: u2, at: "2026-01-01T00:00:55Z"}
          - {recipe_id: r1, user_id: u3, at: "2026-01-01T00:00:58Z"}
          - {recipe_id: r2, user_id: u1, at: "2026-01-01T00:01:30Z"}
    - type: AssignTimestamps
      name: ViewTimes
      input: Views
      config: {timestamp: at}
    - type: AssignTimestamps
      name: CookTimes
      input: Cooks
      config: {timestamp: at}
    - type: Sql
      name: Conversion
      input: {views: ViewTimes, cooks: CookTimes}
      windowing: {type: fixed, size: 1m}
      config:
        query: |
          SELECT v.recipe_id, COUNT(DISTINCT v.user_id) AS viewers,
                 COUNT(DISTINCT c.user_id) AS cooks
          FROM views v LEFT JOIN cooks c
            ON v.recipe_id = c.recipe_id AND v.user_id = c.user_id
          GROUP BY v.recipe_id
    - type: ExtractWindowingInfo
      name: WithWindow
      input: Conversion
      config:
        fields: [window_start, pane_timing]
    - type: LogForTesting
      name: Out
      input: WithWindow
"#;

/// Two inputs windowed alike are joined per window: a cook in another minute than the view
/// does not count. The window and pane come back through `ExtractWindowingInfo`.
#[tokio::test]
async fn two_inputs_join_per_window() {
    for batch_size in [1, 8192] {
        let mut rows = rows_into(TWO_INPUTS, "Out", batch_size).await;
        rows.sort_by_key(|r| r.to_string());
        assert_eq!(
            rows,
            vec![
                json!({"recipe_id": "r1", "viewers": 1, "cooks": 0, "window_start": "2026-01-01T00:01:00Z", "pane_timing": "ON_TIME"}),
                json!({"recipe_id": "r1", "viewers": 2, "cooks": 1, "window_start": "2026-01-01T00:00:00Z", "pane_timing": "ON_TIME"}),
                json!({"recipe_id": "r2", "viewers": 1, "cooks": 1, "window_start": "2026-01-01T00:01:00Z", "pane_timing": "ON_TIME"}),
            ],
            "batch size {batch_size}"
        );
    }
}

fn diagnostics(yaml: &str) -> String {
    match validate(&spec(yaml)) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn validate_refuses_differently_windowed_inputs() {
    let yaml = TWO_INPUTS
        .replace("      windowing: {type: fixed, size: 1m}\n", "")
        .replace(
            "      name: CookTimes\n      input: Cooks\n",
            "      name: CookTimes\n      input: Cooks\n      windowing: {type: fixed, size: 1m}\n",
        );
    assert_eq!(
        diagnostics(&yaml),
        "sql.yaml:30:40: the inputs of `Conversion` are windowed differently (`ViewTimes` and `CookTimes`): a query runs per window over inputs windowed alike\n  hint: window the inputs the same way, or set `windowing:` on the Sql transform (it applies to every input)"
    );
}

#[test]
fn validate_refuses_sessions_without_a_plain_key() {
    let sessions = TWO_INPUTS.replace("{type: fixed, size: 1m}", "{type: sessions, gap: 1m}");
    assert_eq!(
        diagnostics(&sessions),
        "sql.yaml:33:11: session windows are per key, and a query over several tables (`cooks`, `views`) has no single key (query line 5, column 10)\n  hint: join the inputs first and window the joined rows into sessions, or use fixed or sliding windows"
    );
    let one_input = r#"
pipeline:
  type: chain
  transforms:
    - type: Create
      config:
        elements: [{user_id: u1, at: 5}]
    - type: AssignTimestamps
      config: {timestamp: at}
    - type: Sql
      windowing: {type: sessions, gap: 1m}
      config:
        query: "SELECT UPPER(user_id) AS u, COUNT(*) AS n FROM PCOLLECTION GROUP BY UPPER(user_id)"
"#;
    assert_eq!(
        diagnostics(one_input),
        "sql.yaml:13:16: session windows are per key: the query on `Sql` must group by plain columns (its key), or not group at all (query column 69)\n  hint: e.g. `SELECT user_id, COUNT(*) AS n FROM PCOLLECTION GROUP BY user_id`; compute derived keys in an earlier MapToFields"
    );
    assert_eq!(
        diagnostics(&one_input.replace("UPPER(user_id)", "user_id")),
        ""
    );
}

/// On an unbounded input, a query that needs more than one row is accepted once the input is
/// windowed (per window), and refused without windowing or with accumulating global panes.
#[test]
fn validate_accepts_windowed_queries_on_unbounded_input() {
    let yaml = |windowing: &str| {
        format!(
            r#"
pipeline:
  transforms:
    - type: Create
      name: Events
      config:
        elements: [{{k: a, at: 5}}]
    - type: AssignTimestamps
      name: Times
      input: Events
      config: {{timestamp: at}}
    - type: Sql
      name: Q
      input: Times
{windowing}      config:
        query: "SELECT k, COUNT(*) AS n FROM PCOLLECTION GROUP BY k"
"#
        )
    };
    let unbounded = |yaml: String| {
        let mut spec = spec(&yaml);
        spec.transforms[0].config = TransformConfig::Unsupported {
            reason: "stands for ReadFromPubSub".into(),
        };
        match validate(&spec) {
            Ok(_) => String::new(),
            Err(d) => d.to_string(),
        }
    };
    assert_eq!(
        unbounded(yaml("      windowing: {type: fixed, size: 1m}\n")),
        ""
    );
    assert_eq!(
        unbounded(yaml(
            "      windowing: {type: global, trigger: {early_every: 10s}}\n"
        )),
        ""
    );
    assert_eq!(
        unbounded(yaml("")),
        "sql.yaml:16:16: GROUP BY needs the whole input, but the input of `Q` is unbounded and not windowed (query column 51)\n  hint: on a stream, give the Sql transform (or its input) `windowing:` — fixed, sliding, sessions, or global with `trigger: {early_every: …}` — and the query runs per window; or keep to SELECT … WHERE …"
    );
    assert_eq!(
        unbounded(yaml(
            "      windowing: {type: global, trigger: {early_every: 10s}, accumulation: accumulating}\n"
        )),
        "sql.yaml:17:16: GROUP BY per pane of the global window in accumulating mode keeps every row of an unbounded input forever (query column 51)\n  hint: use `accumulation: discarding` (each early pane sees the rows since the last), or fixed/sliding/session windows"
    );
}
