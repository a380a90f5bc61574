//! The `Check` operator on explicit panes and watermarks: units, holding, the valve, re-checks.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int8Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use super::config::{Baseline, Bounds, CheckConfig, OnFailure, VolumeChange};
use super::operator::Check;
use crate::alerts::{AlertKind, AlertTargets, Alerter};
use crate::config::WindowKind;
use crate::pipeline::operator::{EngineError, Operator, Output, StageStats};
use crate::pipeline::valve::{ValveState, Valves};
use crate::record::{Ack, AckSet, AckToken, Batch, meta};

const MIN: i64 = 60_000;

/// A pane of window `[w*MIN, (w+1)*MIN)` with `n` rows, as `Combine` emits it.
fn pane(w: i64, n: usize, hold: &AckToken) -> Batch {
    let (start, end) = (w * MIN, (w + 1) * MIN);
    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("views", DataType::Int64, true),
            Field::new(meta::EVENT_TIME, DataType::Int64, true),
            Field::new(meta::WINDOW_START, DataType::Int64, true),
            Field::new(meta::WINDOW_END, DataType::Int64, true),
            Field::new(meta::PANE_TIMING, DataType::Int8, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
            Arc::new(Int64Array::from(vec![end - 1; n])),
            Arc::new(Int64Array::from(vec![start; n])),
            Arc::new(Int64Array::from(vec![end; n])),
            Arc::new(Int8Array::from(vec![1i8; n])),
        ],
    )
    .expect("valid pane");
    Batch {
        rows,
        acks: AckSet::one(hold.clone()),
    }
}

fn targets() -> AlertTargets {
    AlertTargets {
        slack_webhook: None,
        webhook: Some("http://127.0.0.1:9/hook".into()),
        repeat_after: Duration::from_secs(600),
    }
}

fn volume_check(on_failure: OnFailure, retry_after: Option<Duration>) -> CheckConfig {
    CheckConfig {
        columns: None,
        row_count: None,
        volume_change: Some(VolumeChange {
            min_ratio: Some(0.5),
            max_ratio: None,
            baseline: Baseline::Previous,
        }),
        not_null: vec![],
        unique: vec![],
        expression: None,
        on_failure,
        alert: Some(targets()),
        retry_after,
        every: None,
    }
}

struct Harness {
    check: Check,
    valves: Arc<Valves>,
    alerts: Arc<std::sync::Mutex<Vec<crate::alerts::Alert>>>,
    out: Output,
}

impl Harness {
    fn new(cfg: CheckConfig) -> Self {
        let valves = Arc::new(Valves::default());
        let (alerter, alerts) = Alerter::recording();
        let check = Check::new(
            "Volume",
            "p",
            cfg,
            WindowKind::Fixed {
                size_ms: MIN,
                offset_ms: 0,
            },
            valves.clone(),
            alerter,
            Arc::new(StageStats::default()),
        );
        Harness {
            check,
            valves,
            alerts,
            out: Output::new(1),
        }
    }

    /// Row counts of the batches emitted since the last call.
    fn emitted(&mut self) -> Vec<usize> {
        self.out.drain().map(|(_, b)| b.num_rows()).collect()
    }

    async fn pane(&mut self, w: i64, n: usize, hold: &AckToken) {
        self.check
            .process(0, pane(w, n, hold), &mut self.out)
            .await
            .expect("process");
        self.check
            .on_watermark((w + 1) * MIN, &mut self.out)
            .await
            .expect("watermark");
    }

    fn state(&self) -> ValveState {
        self.valves.state("Volume").expect("registered")
    }
}

#[tokio::test]
async fn alert_only_passes_everything_and_alerts_once_per_failing_rule() {
    let mut h = Harness::new(volume_check(OnFailure::Alert, None));
    let hold: AckToken = Ack::none();
    h.pane(0, 100, &hold).await;
    h.pane(1, 10, &hold).await;
    h.pane(2, 100, &hold).await;
    assert_eq!(h.emitted(), vec![100, 10, 100]);
    assert!(h.valves.state("Volume").is_none(), "no valve without halt");
    let alerts = h.alerts.lock().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.kind, AlertKind::CheckFailed);
    assert_eq!(a.source, "Volume");
    assert_eq!(
        (a.window_start_ms, a.window_end_ms),
        (Some(MIN), Some(2 * MIN))
    );
    assert_eq!(a.findings[0].rule, "volume_change");
    assert_eq!(
        a.findings[0].observed,
        "ratio 0.100 (10 rows against a baseline of 100.0)"
    );
    assert_eq!(a.findings[0].expected, "ratio at least 0.5");
    assert_eq!(a.valve, None);
}

#[tokio::test]
async fn halt_holds_the_failing_pane_and_what_follows_and_the_watermark() {
    let mut h = Harness::new(volume_check(OnFailure::AlertAndHalt, None));
    let (first, second, third): (AckToken, AckToken, AckToken) =
        (Ack::none(), Ack::none(), Ack::none());
    h.pane(0, 100, &first).await;
    assert_eq!(h.emitted(), vec![100]);
    assert_eq!(h.check.output_watermark(MIN), MIN);
    h.pane(1, 10, &second).await;
    h.pane(2, 100, &third).await;
    assert_eq!(h.emitted(), Vec::<usize>::new(), "held");
    assert!(matches!(h.state(), ValveState::Closed { .. }));
    // Downstream windows must not close over the held panes: the watermark stays at the value
    // it had before the failing pane arrived.
    assert_eq!(h.check.output_watermark(3 * MIN), MIN);
    // The held panes keep their acknowledgement holds.
    assert_eq!(Arc::strong_count(&second), 2);
    assert_eq!(Arc::strong_count(&third), 2);
    assert_eq!(h.alerts.lock().unwrap()[0].valve.as_deref(), Some("closed"));

    // Reopened over HTTP: the next tick releases the held panes in order.
    h.valves.open("Volume").expect("open");
    h.check
        .on_timer(tokio::time::Instant::now(), &mut h.out)
        .await
        .expect("tick");
    assert_eq!(h.emitted(), vec![10, 100]);
    assert_eq!(h.check.output_watermark(3 * MIN), 3 * MIN);
    let kinds: Vec<AlertKind> = h
        .alerts
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.kind.clone())
        .collect();
    assert_eq!(
        kinds,
        vec![AlertKind::CheckFailed, AlertKind::ValveReopened]
    );
}

#[tokio::test]
async fn the_input_ending_with_the_valve_closed_fails_the_run() {
    let mut h = Harness::new(volume_check(OnFailure::Halt, None));
    let hold: AckToken = Ack::none();
    h.pane(0, 100, &hold).await;
    h.pane(1, 10, &hold).await;
    let err = h.check.on_end(&mut h.out).await.expect_err("halted");
    assert!(matches!(err, EngineError::Halted { .. }), "{err}");
    assert!(err.to_string().contains("10 held rows"), "{err}");
    assert_eq!(h.emitted(), vec![100]);
}

#[tokio::test]
async fn after_retry_after_a_passing_recheck_reopens_and_a_failing_one_keeps_it_closed() {
    let mut h = Harness::new(volume_check(OnFailure::Halt, Some(Duration::from_secs(60))));
    let hold: AckToken = Ack::none();
    h.pane(0, 100, &hold).await;
    h.pane(1, 10, &hold).await;
    assert_eq!(h.emitted(), vec![100]);
    // Time is passed in explicitly: the check closed "now".
    let start = tokio::time::Instant::now();
    h.check
        .on_timer(start + Duration::from_secs(59), &mut h.out)
        .await
        .unwrap();
    assert!(matches!(h.state(), ValveState::Closed { .. }), "not yet");
    h.check
        .on_timer(start + Duration::from_secs(60), &mut h.out)
        .await
        .unwrap();
    assert!(matches!(h.state(), ValveState::Probing { .. }));
    // The next pane is still low against the last pane that flowed (100): closed again.
    h.pane(2, 20, &hold).await;
    assert!(matches!(h.state(), ValveState::Closed { .. }));
    assert_eq!(h.emitted(), Vec::<usize>::new());
    let later = tokio::time::Instant::now() + Duration::from_secs(61);
    h.check.on_timer(later, &mut h.out).await.unwrap();
    assert!(matches!(h.state(), ValveState::Probing { .. }));
    h.pane(3, 90, &hold).await;
    assert_eq!(h.state(), ValveState::Open);
    assert_eq!(h.emitted(), vec![10, 20, 90], "held panes first, in order");
}

#[tokio::test]
async fn unaggregated_rows_are_checked_per_fixed_window_when_the_watermark_passes() {
    let mut cfg = volume_check(OnFailure::Halt, None);
    cfg.volume_change = None;
    cfg.row_count = Some(Bounds {
        min: Some(3),
        max: None,
    });
    let mut h = Harness::new(cfg);
    let rows = |ts: Vec<i64>| {
        Batch::new(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new(
                    meta::EVENT_TIME,
                    DataType::Int64,
                    true,
                )])),
                vec![Arc::new(Int64Array::from(ts))],
            )
            .unwrap(),
        )
    };
    // Window 0 gets 2 + 1 rows over two batches, window 1 gets 1 row.
    h.check
        .process(0, rows(vec![1, MIN + 5, 2]), &mut h.out)
        .await
        .unwrap();
    h.check.process(0, rows(vec![3]), &mut h.out).await.unwrap();
    assert_eq!(
        h.emitted(),
        Vec::<usize>::new(),
        "waiting for the watermark"
    );
    assert_eq!(
        h.check.output_watermark(30_000),
        0,
        "held at the oldest open window"
    );
    h.check.on_watermark(MIN, &mut h.out).await.unwrap();
    assert_eq!(h.emitted(), vec![3]);
    h.check.on_watermark(2 * MIN, &mut h.out).await.unwrap();
    assert_eq!(h.emitted(), Vec::<usize>::new());
    assert!(matches!(h.state(), ValveState::Closed { reason, .. } if reason.contains("1 rows")));
}

#[tokio::test]
async fn with_every_unwindowed_batches_are_checked_per_interval() {
    let mut cfg = volume_check(OnFailure::Halt, None);
    cfg.volume_change = None;
    cfg.row_count = Some(Bounds {
        min: Some(4),
        max: None,
    });
    cfg.every = Some(Duration::from_secs(10));
    let valves = Arc::new(Valves::default());
    let mut check = Check::new(
        "Volume",
        "p",
        cfg,
        WindowKind::Global,
        valves.clone(),
        Alerter::recording().0,
        Arc::new(StageStats::default()),
    );
    let mut out = Output::new(1);
    let plain = |n: usize| {
        Batch::new(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)])),
                vec![Arc::new(Int64Array::from_iter_values(0..n as i64))],
            )
            .unwrap(),
        )
    };
    check.on_watermark(7, &mut out).await.unwrap();
    // Three batches of 2 rows: each alone would fail `min: 4`, together they pass.
    for _ in 0..3 {
        check.process(0, plain(2), &mut out).await.unwrap();
    }
    check.on_watermark(50, &mut out).await.unwrap();
    assert_eq!(out.drain().count(), 0, "the interval is still open");
    assert_eq!(
        check.output_watermark(50),
        7,
        "held while the interval is open"
    );
    let later = tokio::time::Instant::now() + Duration::from_secs(11);
    check.on_timer(later, &mut out).await.unwrap();
    let emitted: Vec<usize> = out.drain().map(|(_, b)| b.num_rows()).collect();
    assert_eq!(emitted, vec![6]);
    assert_eq!(valves.state("Volume"), Some(ValveState::Open));
    assert_eq!(check.output_watermark(50), 50);
}

/// Issue #16: minutes of 600, 580, 60 and 300 events judged in one watermark step. The first two
/// flow on, and the output watermark reaches the start of the held minute, so the windows over
/// the released minutes close downstream while the valve is closed.
#[tokio::test]
async fn units_judged_in_one_watermark_step_release_what_passed_and_its_watermark() {
    let mut h = Harness::new(volume_check(OnFailure::Halt, None));
    let minutes: Vec<i64> = [600usize, 580, 60, 300]
        .iter()
        .enumerate()
        .flat_map(|(m, &n)| (0..n as i64).map(move |i| m as i64 * MIN + i * 50))
        .collect();
    let rows = Batch::new(
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                meta::EVENT_TIME,
                DataType::Int64,
                true,
            )])),
            vec![Arc::new(Int64Array::from(minutes))],
        )
        .unwrap(),
    );
    h.check.process(0, rows, &mut h.out).await.unwrap();
    assert_eq!(h.check.output_watermark(i64::MIN + 1), i64::MIN + 1);
    h.check.on_watermark(4 * MIN, &mut h.out).await.unwrap();
    assert_eq!(h.emitted(), vec![600, 580]);
    assert!(matches!(h.state(), ValveState::Closed { .. }));
    assert_eq!(
        h.check.output_watermark(4 * MIN),
        2 * MIN,
        "up to the start of the held minute"
    );
    h.valves.open("Volume").expect("open");
    h.check
        .on_timer(tokio::time::Instant::now(), &mut h.out)
        .await
        .expect("tick");
    assert_eq!(h.emitted(), vec![60, 300]);
    assert_eq!(h.check.output_watermark(4 * MIN), 4 * MIN);
}
