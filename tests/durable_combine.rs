//! `Combine` with durable state, at the operator level against the in-process store: a
//! checkpoint restored by a new Combine (a restarted worker) gives the same panes as one run
//! over the same input, redelivered and republished messages are counted once, holds are
//! released only by a commit, and panes not yet written are emitted again after a restart.
//! The persistent backends run the same protocol (emulator-tests/state_stores.rs tests the
//! stores; the fault harness in emulator-tests/ kills real workers).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice::config::components::{AggFn, CombineField};
use sluice::config::{ExprKind, ExprSpec, Pos, WindowKind, Windowing};
use sluice::pipeline::operator::{END_OF_TIME, ErrorRoute, Operator, Output, StageStats};
use sluice::record::{AckToken, Batch, meta};
use sluice::state::{StateConfig, StateStore};
use sluice::transforms::window::combine::Combine;
use sluice::transforms::window::combine::durable::DurableConfig;

fn field(name: &str) -> ExprSpec {
    ExprSpec {
        kind: ExprKind::Field(name.into()),
        pos: Pos::default(),
    }
}

/// Rows of (message id, key, user, value, event time ms).
fn batch(rows: &[(&str, &str, &str, i64, i64)]) -> Batch {
    let schema = Arc::new(Schema::new(vec![
        Field::new(meta::ROW_ID, DataType::Utf8, true),
        Field::new("k", DataType::Utf8, true),
        Field::new("user", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new(meta::EVENT_TIME, DataType::Int64, true),
    ]));
    type Row<'a> = (&'a str, &'a str, &'a str, i64, i64);
    let col = |f: for<'a> fn(&Row<'a>) -> &'a str| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    Batch::new(
        RecordBatch::try_new(
            schema,
            vec![
                col(|r| r.0),
                col(|r| r.1),
                col(|r| r.2),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("valid batch"),
    )
}

fn windowing(kind: WindowKind) -> Windowing {
    Windowing {
        kind,
        ..Windowing::global()
    }
}

fn fixed() -> Windowing {
    windowing(WindowKind::Fixed {
        size_ms: 60_000,
        offset_ms: 0,
    })
}

async fn store() -> Arc<dyn StateStore> {
    sluice::state::open(&StateConfig::default())
        .await
        .expect("memory store")
}

/// A worker's Combine: count, sum(v) and count_distinct(user) by k, checkpointing to `store`.
fn worker(store: &Arc<dyn StateStore>, windowing: Windowing) -> Combine {
    worker_with_errors(store, windowing, None)
}

fn worker_with_errors(
    store: &Arc<dyn StateStore>,
    windowing: Windowing,
    error_port: Option<usize>,
) -> Combine {
    let errors = ErrorRoute::new("Totals", error_port, Arc::new(StageStats::default()));
    Combine::new(
        "p",
        vec!["k".into()],
        vec![
            CombineField {
                output: "n".into(),
                value: None,
                func: AggFn::Count,
                pos: Pos::default(),
            },
            CombineField {
                output: "total".into(),
                value: Some(field("v")),
                func: AggFn::Sum,
                pos: Pos::default(),
            },
            CombineField {
                output: "users".into(),
                value: Some(field("user")),
                func: AggFn::CountDistinct,
                pos: Pos::default(),
            },
        ],
        windowing,
        errors,
        Arc::default(),
    )
    .with_durable(DurableConfig {
        store: store.clone(),
        checkpoint_interval: Duration::from_secs(1),
        dedupe_horizon: Duration::from_secs(600),
        failed: Arc::new(AtomicBool::new(false)),
    })
}

/// (key, window start, n, total, users, row id) of every main-output row, sorted.
fn panes(out: &mut Output) -> Vec<(String, i64, i64, i64, i64, String)> {
    let mut rows = Vec::new();
    for (port, b) in out.drain() {
        assert_eq!(port, 0);
        let s = |n: &str| {
            b.rows
                .column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let i = |n: &str| b.column_i64(n).unwrap();
        let (k, id) = (s("k"), s(meta::ROW_ID));
        let (start, n, total, users) = (i(meta::WINDOW_START), i("n"), i("total"), i("users"));
        for r in 0..b.num_rows() {
            rows.push((
                k.value(r).to_string(),
                start.value(r),
                n.value(r),
                total.value(r),
                users.value(r),
                id.value(r).to_string(),
            ));
        }
    }
    rows.sort();
    rows
}

const FIRST: &[(&str, &str, &str, i64, i64)] = &[
    ("m1", "a", "u1", 1, 1_000),
    ("m2", "a", "u2", 2, 2_000),
    ("m3", "b", "u1", 4, 61_000),
];
const SECOND: &[(&str, &str, &str, i64, i64)] =
    &[("m4", "a", "u1", 8, 3_000), ("m5", "b", "u3", 16, 62_000)];

/// The panes of one Combine over all the input: what every restarted run must reproduce.
async fn uninterrupted(windowing: Windowing) -> Vec<(String, i64, i64, i64, i64, String)> {
    let store = store().await;
    let mut c = worker(&store, windowing);
    let mut out = Output::new(1);
    let all: Vec<_> = FIRST.iter().chain(SECOND).copied().collect();
    c.process(0, batch(&all), &mut out).await.unwrap();
    c.on_watermark(END_OF_TIME, &mut out).await.unwrap();
    panes(&mut out)
}

#[tokio::test]
async fn a_restarted_worker_goes_on_from_the_checkpoint() {
    let store = store().await;
    let mut out = Output::new(1);
    let mut first = worker(&store, fixed());
    first.process(0, batch(FIRST), &mut out).await.unwrap();
    first
        .on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    assert!(out.is_empty(), "nothing fires before the watermark");
    // The worker dies here (dropped without flushing). A new one restores its checkpoint; the
    // first batch is redelivered once more (its ids are in the checkpoint: counted once).
    drop(first);
    let mut second = worker(&store, fixed());
    second.process(0, batch(FIRST), &mut out).await.unwrap();
    second.process(0, batch(SECOND), &mut out).await.unwrap();
    second.on_watermark(END_OF_TIME, &mut out).await.unwrap();
    assert_eq!(second.duplicates(), 3);
    let got = panes(&mut out);
    assert_eq!(
        got.iter()
            .map(|p| (p.0.as_str(), p.1, p.2, p.3, p.4))
            .collect::<Vec<_>>(),
        vec![("a", 0, 3, 11, 2), ("b", 60_000, 2, 20, 2)]
    );
    assert_eq!(got, uninterrupted(fixed()).await, "same rows and row ids");
}

#[tokio::test]
async fn input_absorbed_after_the_last_checkpoint_is_counted_once_on_redelivery() {
    let store = store().await;
    let mut out = Output::new(1);
    let mut first = worker(&store, fixed());
    first.process(0, batch(FIRST), &mut out).await.unwrap();
    first
        .on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    // Absorbed but never checkpointed: its holds were not released, so Pub/Sub redelivers it.
    first.process(0, batch(SECOND), &mut out).await.unwrap();
    drop(first);
    let mut second = worker(&store, fixed());
    second.process(0, batch(SECOND), &mut out).await.unwrap();
    second.on_watermark(END_OF_TIME, &mut out).await.unwrap();
    assert_eq!(second.duplicates(), 0);
    assert_eq!(panes(&mut out), uninterrupted(fixed()).await);
}

#[tokio::test]
async fn holds_are_released_by_the_commit_not_by_the_pane() {
    let store = store().await;
    let mut out = Output::new(1);
    let mut c = worker(&store, fixed());
    let token: AckToken = sluice::record::Ack::none();
    let mut b = batch(FIRST);
    b.acks.insert(token.clone());
    c.process(0, b, &mut out).await.unwrap();
    assert_eq!(Arc::strong_count(&token), 2, "held until checkpointed");
    c.on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    assert_eq!(Arc::strong_count(&token), 1, "released by the commit");
}

#[tokio::test]
async fn an_unwritten_pane_is_emitted_again_after_a_restart() {
    let store = store().await;
    let mut out = Output::new(1);
    let mut first = worker(&store, fixed());
    first.process(0, batch(FIRST), &mut out).await.unwrap();
    first.on_watermark(60_000, &mut out).await.unwrap();
    // The pane of [0, 60 s) is in flight (its batch alive: not written) at the checkpoint.
    let in_flight: Vec<Batch> = out.drain().map(|(_, b)| b).collect();
    assert_eq!(in_flight.len(), 1);
    first
        .on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    drop(first);
    let mut replay = Output::new(1);
    for b in &in_flight {
        replay.main(b.clone());
    }
    let expected = panes(&mut replay);
    assert_eq!(
        expected
            .iter()
            .map(|p| (p.0.as_str(), p.1, p.2))
            .collect::<Vec<_>>(),
        vec![("a", 0, 2)]
    );

    // Restarted before the sink wrote it: the pane comes again, with the same row id.
    let mut second = worker(&store, fixed());
    second.on_watermark(60_000, &mut out).await.unwrap();
    assert_eq!(panes(&mut out), expected);

    // `panes` dropped the re-emitted batch: written. The next checkpoint forgets the pane.
    second
        .on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    drop(second);
    drop(in_flight);
    let mut third = worker(&store, fixed());
    third.on_watermark(60_000, &mut out).await.unwrap();
    assert!(panes(&mut out).is_empty(), "written, so not emitted again");
}

#[tokio::test]
async fn session_windows_survive_a_restart() {
    let sessions = || windowing(WindowKind::Sessions { gap_ms: 10_000 });
    let store = store().await;
    let mut out = Output::new(1);
    let mut first = worker(&store, sessions());
    first.process(0, batch(FIRST), &mut out).await.unwrap();
    first
        .on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    drop(first);
    let mut second = worker(&store, sessions());
    second.process(0, batch(FIRST), &mut out).await.unwrap();
    second.process(0, batch(SECOND), &mut out).await.unwrap();
    second.on_watermark(END_OF_TIME, &mut out).await.unwrap();
    let got = panes(&mut out);
    assert_eq!(
        got.iter()
            .map(|p| (p.0.as_str(), p.1, p.2, p.3, p.4))
            .collect::<Vec<_>>(),
        vec![("a", 1_000, 3, 11, 2), ("b", 61_000, 2, 20, 2)]
    );
    assert_eq!(got, uninterrupted(sessions()).await);
}

#[tokio::test]
async fn a_stopped_streaming_run_keeps_its_windows_open() {
    let store = store().await;
    let mut out = Output::new(1);
    let mut first = worker(&store, fixed());
    first.process(0, batch(FIRST), &mut out).await.unwrap();
    first.on_watermark(30_000, &mut out).await.unwrap();
    // `--until-idle` or a drain: the input did not end, so nothing fires; state is kept.
    first.on_end(&mut out).await.unwrap();
    assert!(out.is_empty());
    drop(first);
    let mut second = worker(&store, fixed());
    second.process(0, batch(SECOND), &mut out).await.unwrap();
    second.on_watermark(END_OF_TIME, &mut out).await.unwrap();
    assert_eq!(panes(&mut out), uninterrupted(fixed()).await);
}

#[tokio::test]
async fn an_unwritten_error_record_is_emitted_again_after_a_restart() {
    let store = store().await;
    let mut out = Output::new(2);
    let mut first = worker_with_errors(&store, fixed(), Some(1));
    first.on_watermark(120_000, &mut out).await.unwrap();
    // m1 is too late (its window ended at 60 s): an error record, not yet written.
    first
        .process(0, batch(&FIRST[..1]), &mut out)
        .await
        .unwrap();
    let in_flight: Vec<(usize, Batch)> = out.drain().collect();
    assert_eq!(
        in_flight
            .iter()
            .map(|(p, b)| (*p, b.num_rows()))
            .collect::<Vec<_>>(),
        vec![(1, 1)]
    );
    first
        .on_timer(tokio::time::Instant::now(), &mut out)
        .await
        .unwrap();
    drop(first);
    // Redelivered after a crash: its id is in the checkpoint (dropped), and the record the
    // first worker never wrote comes again from the checkpoint.
    let mut second = worker_with_errors(&store, fixed(), Some(1));
    second
        .process(0, batch(&FIRST[..1]), &mut out)
        .await
        .unwrap();
    let again: Vec<(usize, Batch)> = out.drain().collect();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, 1);
    assert_eq!(again[0].1.rows, in_flight[0].1.rows);
    assert_eq!(second.duplicates(), 1);
}
