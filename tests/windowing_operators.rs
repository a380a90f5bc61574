//! Operator-level tests with injected time: EARLY panes from the processing-time timer
//! (discarding and accumulating), idle sources advancing the watermark, session merging across
//! batches, and acknowledgement holds kept until the pane containing the data is emitted.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, Int8Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice::config::components::{AggFn, CombineField, WatermarkSpec};
use sluice::config::{ExprKind, ExprSpec, Pos, WindowKind, Windowing};
use sluice::pipeline::operator::{END_OF_TIME, ErrorRoute, Operator, Output, StageStats};
use sluice::pipeline::stats::WindowStats;
use sluice::record::{Batch, meta};
use sluice::transforms::window::assign_timestamps::AssignTimestamps;
use sluice::transforms::window::combine::Combine;

fn field(name: &str) -> ExprSpec {
    ExprSpec {
        kind: ExprKind::Field(name.into()),
        pos: Pos::default(),
    }
}

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

fn combine(windowing: Windowing) -> Combine {
    combine_with_stats(windowing, Arc::default())
}

fn combine_with_stats(windowing: Windowing, stats: Arc<WindowStats>) -> Combine {
    let errors = ErrorRoute::new("Sum", None, Arc::new(StageStats::default()));
    Combine::new(
        "p",
        vec!["k".into()],
        vec![CombineField {
            output: "total".into(),
            value: Some(field("v")),
            func: AggFn::Sum,
            pos: Pos::default(),
        }],
        windowing,
        errors,
        stats,
    )
}

/// (key, total, window start, pane index, pane timing) of every main-output row.
fn panes(out: &mut Output) -> Vec<(String, i64, i64, i64, i8)> {
    let mut rows = Vec::new();
    for (port, b) in out.drain() {
        assert_eq!(port, 0);
        let r = &b.rows;
        let k = r
            .column_by_name("k")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let t = r
            .column_by_name("total")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let s = b.column_i64(meta::WINDOW_START).unwrap();
        let p = b.column_i64(meta::PANE_INDEX).unwrap();
        let timing = r
            .column_by_name(meta::PANE_TIMING)
            .unwrap()
            .as_any()
            .downcast_ref::<Int8Array>()
            .unwrap();
        for i in 0..r.num_rows() {
            rows.push((
                k.value(i).to_string(),
                t.value(i),
                s.value(i),
                p.value(i),
                timing.value(i),
            ));
        }
    }
    rows
}

fn fixed(accumulating: bool) -> Windowing {
    Windowing {
        kind: WindowKind::Fixed {
            size_ms: 60_000,
            offset_ms: 0,
        },
        early_every: Some(Duration::from_secs(5)),
        accumulating,
        ..Windowing::global()
    }
}

const EARLY: i8 = 0;
const ON_TIME: i8 = 1;

#[tokio::test]
async fn early_panes_fire_on_the_timer_discarding() {
    let mut c = combine(fixed(false));
    let mut out = Output::new(1);
    let now = tokio::time::Instant::now();
    c.process(0, batch(&[("a", 1, 1_000), ("a", 2, 2_000)]), &mut out)
        .await
        .unwrap();
    assert!(panes(&mut out).is_empty());
    c.on_timer(now, &mut out).await.unwrap();
    assert_eq!(panes(&mut out), vec![("a".into(), 3, 0, 0, EARLY)]);
    // No new data: no pane.
    c.on_timer(now, &mut out).await.unwrap();
    assert!(panes(&mut out).is_empty());
    c.process(0, batch(&[("a", 10, 3_000)]), &mut out)
        .await
        .unwrap();
    c.on_timer(now, &mut out).await.unwrap();
    assert_eq!(panes(&mut out), vec![("a".into(), 10, 0, 1, EARLY)]);
    c.process(0, batch(&[("a", 100, 4_000)]), &mut out)
        .await
        .unwrap();
    c.on_watermark(60_000, &mut out).await.unwrap();
    assert_eq!(panes(&mut out), vec![("a".into(), 100, 0, 2, ON_TIME)]);
}

#[tokio::test]
async fn early_panes_accumulate_when_asked() {
    let mut c = combine(fixed(true));
    let mut out = Output::new(1);
    let now = tokio::time::Instant::now();
    c.process(0, batch(&[("a", 1, 1_000)]), &mut out)
        .await
        .unwrap();
    c.on_timer(now, &mut out).await.unwrap();
    c.process(0, batch(&[("a", 2, 2_000)]), &mut out)
        .await
        .unwrap();
    c.on_timer(now, &mut out).await.unwrap();
    c.on_watermark(60_000, &mut out).await.unwrap();
    assert_eq!(
        panes(&mut out),
        vec![
            ("a".into(), 1, 0, 0, EARLY),
            ("a".into(), 3, 0, 1, EARLY),
            ("a".into(), 3, 0, 2, ON_TIME),
        ]
    );
    assert_eq!(c.timer_interval(), Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn sessions_merge_across_batches() {
    let sessions = Windowing {
        kind: WindowKind::Sessions { gap_ms: 30_000 },
        ..Windowing::global()
    };
    let mut c = combine(sessions);
    let mut out = Output::new(1);
    // u002 of the Beam case: 5 s, 50 s, then 34 s bridges them into [5 s, 80 s).
    c.process(0, batch(&[("u", 1, 5_000)]), &mut out)
        .await
        .unwrap();
    c.process(0, batch(&[("u", 2, 50_000), ("v", 7, 50_000)]), &mut out)
        .await
        .unwrap();
    c.process(0, batch(&[("u", 4, 34_000)]), &mut out)
        .await
        .unwrap();
    // Touching windows stay apart: [80 s, 110 s) is not merged into [5 s, 80 s).
    c.process(0, batch(&[("u", 8, 80_000)]), &mut out)
        .await
        .unwrap();
    c.on_end(&mut out).await.unwrap();
    let mut got = panes(&mut out);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("u".into(), 7, 5_000, 0, ON_TIME),
            ("u".into(), 8, 80_000, 0, ON_TIME),
            ("v".into(), 7, 50_000, 0, ON_TIME),
        ]
    );
}

#[tokio::test]
async fn acknowledgement_holds_are_released_with_the_pane() {
    let mut c = combine(Windowing {
        kind: WindowKind::Fixed {
            size_ms: 60_000,
            offset_ms: 0,
        },
        ..Windowing::global()
    });
    let mut out = Output::new(1);
    let token: sluice::record::AckToken = sluice::record::Ack::none();
    let mut b = batch(&[("a", 1, 1_000), ("b", 2, 61_000)]);
    b.acks.insert(token.clone());
    c.process(0, b, &mut out).await.unwrap();
    // Held by the two open windows.
    assert!(Arc::strong_count(&token) > 1);
    c.on_watermark(60_000, &mut out).await.unwrap();
    let first: Vec<Batch> = out.drain().map(|(_, b)| b).collect();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].acks.len(), 1, "the pane carries the hold");
    drop(first);
    // Still held by [60 s, 120 s).
    assert_eq!(Arc::strong_count(&token), 2);
    c.on_watermark(END_OF_TIME, &mut out).await.unwrap();
    let second: Vec<Batch> = out.drain().map(|(_, b)| b).collect();
    drop(second);
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "released once every pane was emitted"
    );
}

#[tokio::test]
async fn row_ids_are_deterministic_and_distinct_per_pane() {
    let ids = |w: Windowing| async move {
        let mut c = combine(w);
        let mut out = Output::new(1);
        c.process(0, batch(&[("a", 1, 1_000), ("b", 1, 2_000)]), &mut out)
            .await
            .unwrap();
        c.on_end(&mut out).await.unwrap();
        let mut ids = Vec::new();
        for (_, b) in out.drain() {
            let col = b.rows.column_by_name(meta::ROW_ID).unwrap();
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            ids.extend(col.iter().map(|s| s.unwrap().to_string()));
        }
        ids
    };
    let a = ids(fixed(false)).await;
    let b = ids(fixed(false)).await;
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], a[1]);
}

#[tokio::test]
async fn idle_source_advances_the_watermark_to_the_max_event_time() {
    let errors = ErrorRoute::new("Stamp", None, Arc::new(StageStats::default()));
    let mut op = AssignTimestamps::new(
        field("ms"),
        Some(WatermarkSpec {
            max_delay: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(30)),
        }),
        true,
        errors,
    );
    assert_eq!(op.timer_interval(), Some(Duration::from_millis(7_500)));
    let schema = Arc::new(Schema::new(vec![Field::new("ms", DataType::Int64, true)]));
    // Epoch seconds: 100 s and 90 s.
    let rows =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![100, 90]))]).unwrap();
    let mut out = Output::new(1);
    op.process(0, Batch::new(rows), &mut out).await.unwrap();
    assert_eq!(op.output_watermark(i64::MIN), 90_000);
    // Processing time is injected: 20 s of silence is not enough, 30 s is.
    let now = tokio::time::Instant::now();
    op.on_timer(now + Duration::from_secs(20), &mut out)
        .await
        .unwrap();
    assert_eq!(op.output_watermark(i64::MIN), 90_000);
    op.on_timer(now + Duration::from_secs(30), &mut out)
        .await
        .unwrap();
    assert_eq!(op.output_watermark(i64::MIN), 100_000);
    let stamped: Vec<Batch> = out.drain().map(|(_, b)| b).collect();
    assert_eq!(
        stamped[0].event_times().unwrap().values(),
        &[100_000, 90_000]
    );
}

/// `sluice_window_groups` / `sluice_window_state_bytes`: one group per (window, key) held; the
/// bytes are per window (group table, keys, vectorised accumulators), so a window holding one
/// group of this layout (one-letter key, one Sum, no holds) has the same estimate whichever
/// window it is; both fall back as windows expire.
#[tokio::test]
async fn window_state_gauges_follow_the_groups_held() {
    let stats: Arc<WindowStats> = Arc::default();
    let read = |s: &WindowStats| {
        (
            s.groups.load(std::sync::atomic::Ordering::Relaxed),
            s.state_bytes.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let windowing = Windowing {
        early_every: None,
        ..fixed(false)
    };
    let mut c = combine_with_stats(windowing, stats.clone());
    let mut out = Output::new(1);
    c.process(0, batch(&[("a", 1, 1_000), ("a", 2, 2_000)]), &mut out)
        .await
        .unwrap();
    let (groups, one) = read(&stats);
    assert_eq!(groups, 1);
    assert!(one > 0);
    c.process(0, batch(&[("b", 2, 2_000), ("a", 3, 61_000)]), &mut out)
        .await
        .unwrap();
    let (groups, three) = read(&stats);
    assert_eq!(groups, 3);
    // The first window grew by a group, the second holds one group like the first did.
    assert!(three > 2 * one, "{three} vs {one}");
    // The first window fires and, with no allowed lateness, its state is dropped.
    c.on_watermark(60_000, &mut out).await.unwrap();
    assert_eq!(panes(&mut out).len(), 2);
    assert_eq!(read(&stats), (1, one));
    c.on_end(&mut out).await.unwrap();
    assert_eq!(read(&stats), (0, 0));
}
