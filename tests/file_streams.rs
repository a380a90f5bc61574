//! File sinks on a stream, in process: a scripted unbounded source (standing in for
//! `ReadFromPubSub`, with an acknowledgement hold per burst) feeds event times from months ago,
//! out of order, in bursts. Files for closed windows must appear, and the bursts behind them be
//! released, while the source is still running; names and contents are exact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use serde_json::{Value, json};
use sluice::pipeline::build::{Overrides, Services, build};
use sluice::pipeline::runner::{RunControl, Stage, run};
use sluice::pipeline::{EngineError, Source, SourceSink};
use sluice::record::{Ack, AckStatus, AckToken, Batch, Hold, Releaser};
use tokio::sync::mpsc;

/// 2026-01-01T00:00:00Z, in seconds.
const T0: i64 = 1_767_225_600;

/// A hold that records its release (Pub/Sub would acknowledge the burst then) and whether it
/// was abandoned (released as not written: Pub/Sub would nack it).
struct Burst(Arc<AtomicBool>, Arc<AtomicBool>);

impl Hold for Burst {
    fn release(self: Box<Self>, status: AckStatus) {
        if status == AckStatus::Failed {
            self.1.store(true, Ordering::SeqCst);
        }
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Emits each burst it is sent as one batch; ends (as a stopped stream) when the sender drops.
struct Scripted(mpsc::Receiver<Batch>);

#[async_trait]
impl Source for Scripted {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        while let Some(batch) = self.0.recv().await {
            sink.emit(0, batch).await?;
        }
        sink.stopped().await
    }
}

/// One burst of `(event_id, recipe_id, seconds after T0)` events and the flag its release sets.
fn burst(events: &[(&str, &str, i64)]) -> (Batch, Arc<AtomicBool>) {
    let (batch, released, _) = held(events);
    (batch, released)
}

/// [`burst`], with also the flag its abandonment sets.
fn held(events: &[(&str, &str, i64)]) -> (Batch, Arc<AtomicBool>, Arc<AtomicBool>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("recipe_id", DataType::Utf8, false),
        Field::new("event_time", DataType::Utf8, false),
    ]));
    let time = |s: i64| {
        chrono::DateTime::from_timestamp(T0 + s, 0)
            .expect("valid time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.0))),
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.1))),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| time(e.2)),
            )),
        ],
    )
    .expect("columns match");
    let released = Arc::new(AtomicBool::new(false));
    let abandoned = Arc::new(AtomicBool::new(false));
    // Released where its last clone drops, as a Pub/Sub hold is released right after.
    let hold: AckToken = Ack::new(
        Burst(released.clone(), abandoned.clone()),
        &Releaser::default(),
    );
    let mut batch = Batch::new(rows);
    batch.acks.insert(hold);
    (batch, released, abandoned)
}

/// Starts `yaml` with its `Read` source replaced by a scripted stream; returns the sender and
/// the run.
fn start(
    yaml: &str,
    out: &Path,
) -> (
    mpsc::Sender<Batch>,
    tokio::task::JoinHandle<Result<(), EngineError>>,
) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (tx, run) = launch(yaml, out, RunControl::new(stop));
    let run = tokio::spawn(async move {
        let res = run.await.expect("joined");
        drop(stop_tx);
        res
    });
    (tx, run)
}

/// [`start`] with the run's control given (a stop flag, `options.drain`).
fn launch(
    yaml: &str,
    out: &Path,
    control: RunControl,
) -> (
    mpsc::Sender<Batch>,
    tokio::task::JoinHandle<Result<(), EngineError>>,
) {
    let vars = [("out".to_string(), out.display().to_string())]
        .into_iter()
        .collect();
    let spec = sluice::config::parse("stream.yaml", yaml, &vars).unwrap_or_else(|d| panic!("{d}"));
    let graph = sluice::pipeline::validate(&spec).unwrap_or_else(|d| panic!("{d}"));
    let (tx, rx) = mpsc::channel(4);
    let handle = tokio::spawn(async move {
        let mut built = build(&spec, &graph, &Overrides::default(), &Services::default())?;
        let read = graph
            .nodes
            .iter()
            .position(|n| n.name == "Read")
            .expect("a Read node");
        built.stages[read] = Stage::Source(Box::new(Scripted(rx)));
        run(&graph, built.stages, built.stats, control)
            .await
            .map(|_| ())
    });
    (tx, handle)
}

/// Waits (polling, up to a minute) until `released` is set: the run is still going meanwhile.
async fn released(flag: &AtomicBool, what: &str) {
    for _ in 0..6000 {
        if flag.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} was never released");
}

/// Waits (polling, up to a minute) until `path` exists.
async fn appears(path: &Path) {
    for _ in 0..6000 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

/// The committed files under `dir` (no temporary `.inprogress` ones), sorted.
fn committed(dir: &Path) -> Vec<String> {
    let mut names = names(dir);
    names.retain(|n| !n.ends_with(".inprogress"));
    names
}

/// The names of the files under `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

fn lines(path: PathBuf) -> Vec<Value> {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// `[T0 + start, T0 + end)` as the file names write it.
fn window(start: i64, end: i64) -> String {
    let t = |s: i64| {
        chrono::DateTime::from_timestamp(T0 + s, 0)
            .expect("valid time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    format!("{}-{}", t(start), t(end))
}

const WINDOWED: &str = r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        topic: projects/p/topics/events
        format: JSON
        schema:
          type: object
          properties:
            event_id: {type: string}
            recipe_id: {type: string}
            event_time: {type: string}
    - type: AssignTimestamps
      name: Stamp
      input: Read
      config:
        timestamp: event_time
        watermark: {max_delay: 10s}
    - type: WindowInto
      name: Minute
      input: Stamp
      config:
        windowing: {type: fixed, size: 1m}
    - type: Combine
      name: Count
      input: Minute
      config:
        group_by: [recipe_id]
        combine:
          n: count
    - type: WriteToJson
      name: WriteCounts
      input: Count
      config:
        path: "{{ out }}/counts"
    - type: WriteToJson
      name: WriteEvents
      input: Minute
      config:
        path: "{{ out }}/events"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_committed_and_released_while_the_stream_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let (tx, run) = start(WINDOWED, out);
    let file =
        |name: &str, w: &str, pane: u32| out.join(format!("{name}-{w}-{pane}-00000-of-00001"));
    let w0 = window(0, 60);
    let w1 = window(60, 120);
    let w2 = window(120, 180);
    let w3 = window(180, 240);

    // Watermark 48 s: nothing ends.
    let (a, a_done) = burst(BURSTS[0]);
    tx.send(a).await.expect("running");
    // 59 s arrives after 72 s in the same burst (out of order, within max_delay); watermark
    // 62 s: the first minute ends.
    let (b, b_done) = burst(BURSTS[1]);
    tx.send(b).await.expect("running");

    released(&a_done, "burst a (all in the first minute)").await;
    assert_eq!(
        committed(out),
        vec![
            format!("counts-{w0}-0-00000-of-00001"),
            format!("events-{w0}-0-00000-of-00001"),
        ],
        "only the first minute is committed"
    );
    assert_eq!(
        lines(file("counts", &w0, 0)),
        vec![
            json!({"recipe_id": "r1", "n": 3}),
            json!({"recipe_id": "r2", "n": 2})
        ]
    );
    assert_eq!(
        lines(file("events", &w0, 0))
            .iter()
            .map(|r| r["event_id"].clone())
            .collect::<Vec<_>>(),
        vec!["a", "b", "c", "d", "f"]
    );
    assert!(
        !b_done.load(Ordering::SeqCst),
        "burst b has a row in the open second minute"
    );

    // Watermark 115 s: nothing more ends.
    let (c, c_done) = burst(BURSTS[2]);
    tx.send(c).await.expect("running");
    // Watermark 180 s: the second and third minutes end. Event 10 s is too late for Count (an
    // error there) and a late pane (index 1) of the first minute for the unaggregated rows.
    let (d, d_done) = burst(BURSTS[3]);
    tx.send(d).await.expect("running");
    released(&b_done, "burst b").await;
    released(&c_done, "burst c").await;
    assert_eq!(
        lines(file("counts", &w1, 0)),
        vec![json!({"recipe_id": "r2", "n": 1})]
    );
    assert_eq!(
        lines(file("counts", &w2, 0)),
        vec![json!({"recipe_id": "r1", "n": 1})]
    );
    // The late pane is committed at the sink's next timer tick, the stream still running.
    let late = file("events", &w0, 1);
    appears(&late).await;
    assert!(
        !d_done.load(Ordering::SeqCst),
        "burst d has a row in the open fourth minute"
    );
    drop(tx);
    run.await.expect("joined").expect("run succeeds");
    assert!(
        d_done.load(Ordering::SeqCst),
        "the end of the stream commits the fourth minute"
    );

    assert_eq!(
        names(out),
        vec![
            format!("counts-{w0}-0-00000-of-00001"),
            format!("counts-{w1}-0-00000-of-00001"),
            format!("counts-{w2}-0-00000-of-00001"),
            format!("counts-{w3}-0-00000-of-00001"),
            format!("events-{w0}-0-00000-of-00001"),
            format!("events-{w0}-1-00000-of-00001"),
            format!("events-{w1}-0-00000-of-00001"),
            format!("events-{w2}-0-00000-of-00001"),
            format!("events-{w3}-0-00000-of-00001"),
        ]
    );
    assert_eq!(
        lines(file("counts", &w3, 0)),
        vec![json!({"recipe_id": "r1", "n": 1})]
    );
    let ids = |name: &str, w: &str, pane: u32| -> Vec<Value> {
        lines(file(name, w, pane))
            .iter()
            .map(|r| r["event_id"].clone())
            .collect()
    };
    assert_eq!(ids("events", &w0, 1), vec!["i"]);
    assert_eq!(ids("events", &w1, 0), vec!["e"]);
    assert_eq!(ids("events", &w2, 0), vec!["g"]);
    assert_eq!(ids("events", &w3, 0), vec!["h"]);
    assert_eq!(
        lines(file("events", &w3, 0)),
        vec![json!({"event_id": "h", "recipe_id": "r1", "event_time": "2026-01-01T00:03:10Z"})]
    );

    // A replay of the same stream (redelivery after a crash) writes the same panes under the
    // same names, replaced atomically: no second copy.
    let before = snapshot(out);
    let (tx, run) = start(WINDOWED, out);
    for events in BURSTS {
        tx.send(burst(events).0).await.expect("running");
    }
    drop(tx);
    run.await.expect("joined").expect("run succeeds");
    assert_eq!(snapshot(out), before);
}

/// The bursts of the windowed scenario, in order.
const BURSTS: [&[(&str, &str, i64)]; 4] = [
    &[
        ("a", "r1", 5),
        ("b", "r2", 50),
        ("c", "r1", 30),
        ("d", "r1", 58),
    ],
    &[("e", "r2", 72), ("f", "r2", 59)],
    &[("g", "r1", 125)],
    &[("h", "r1", 190), ("i", "r2", 10)],
];

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    names(dir)
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).expect("readable");
            (n, text)
        })
        .collect()
}

fn rolling(max: &str) -> String {
    format!(
        r#"
pipeline:
  transforms:
    - type: ReadFromPubSub
      name: Read
      config:
        topic: projects/p/topics/events
        format: JSON
        schema:
          type: object
          properties:
            event_id: {{type: string}}
            recipe_id: {{type: string}}
            event_time: {{type: string}}
    - type: AssignTimestamps
      name: Stamp
      input: Read
      config:
        timestamp: event_time
    - type: WriteToJson
      name: Write
      input: Stamp
      config:
        path: "{{{{ out }}}}/all"
        {max}
"#
    )
}

fn event_ids(path: PathBuf) -> Vec<Value> {
    lines(path).iter().map(|r| r["event_id"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_window_rolls_by_rows_and_a_restart_continues_the_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let yaml = rolling("max_file_rows: 3\n        max_file_age: 1h");
    let (tx, run) = start(&yaml, out);
    let (a, a_done) = burst(&[
        ("1", "r", 300),
        ("2", "r", 5),
        ("3", "r", 90),
        ("4", "r", 7),
    ]);
    tx.send(a).await.expect("running");
    appears(&out.join("all-0-00000-of-00001")).await;
    assert_eq!(
        names(out),
        ["all-0-00000-of-00001", "all-1-00000-of-00001.inprogress"],
        "set 1 is still open"
    );
    assert!(
        !a_done.load(Ordering::SeqCst),
        "row 4 of burst a is in the open set"
    );
    let (b, b_done) = burst(&[("5", "r", 1), ("6", "r", 2), ("7", "r", 3)]);
    tx.send(b).await.expect("running");
    released(&a_done, "burst a").await;
    assert!(
        !b_done.load(Ordering::SeqCst),
        "row 7 of burst b is in the open set"
    );
    drop(tx);
    run.await.expect("joined").expect("run succeeds");
    assert!(b_done.load(Ordering::SeqCst));
    assert_eq!(
        names(out),
        [
            "all-0-00000-of-00001",
            "all-1-00000-of-00001",
            "all-2-00000-of-00001"
        ]
    );
    assert_eq!(event_ids(out.join("all-0-00000-of-00001")), ["1", "2", "3"]);
    assert_eq!(event_ids(out.join("all-1-00000-of-00001")), ["4", "5", "6"]);
    assert_eq!(event_ids(out.join("all-2-00000-of-00001")), ["7"]);

    // A restarted worker never replaces a committed file: it goes on after the highest number.
    let (tx, run) = start(&yaml, out);
    let (c, _) = burst(&[("8", "r", 4)]);
    tx.send(c).await.expect("running");
    drop(tx);
    run.await.expect("joined").expect("run succeeds");
    assert_eq!(event_ids(out.join("all-3-00000-of-00001")), ["8"]);
    assert_eq!(event_ids(out.join("all-0-00000-of-00001")), ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_window_rolls_by_age_while_the_stream_is_quiet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let (tx, run) = start(&rolling("max_file_age: 200ms"), out);
    let (a, a_done) = burst(&[("1", "r", 0), ("2", "r", 1)]);
    tx.send(a).await.expect("running");
    released(&a_done, "burst a").await;
    assert_eq!(event_ids(out.join("all-0-00000-of-00001")), ["1", "2"]);
    drop(tx);
    run.await.expect("joined").expect("run succeeds");
    assert_eq!(names(out), ["all-0-00000-of-00001"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_drain_keep_leaves_open_windows_unwritten_for_redelivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let control = RunControl::new(stop).with_drain(sluice::config::spec::Drain::Keep, None);
    let (tx, run) = launch(WINDOWED, out, control);
    // Watermark 62 s: the first minute is written; the second stays open.
    let (a, a_done, a_abandoned) = held(&[("a", "r1", 5), ("b", "r1", 72)]);
    tx.send(a).await.expect("running");
    appears(&out.join(format!("events-{}-0-00000-of-00001", window(0, 60)))).await;
    stop_tx.send(true).expect("running");
    drop(tx);
    run.await.expect("joined").expect("run succeeds");
    assert_eq!(
        names(out),
        [
            format!("counts-{}-0-00000-of-00001", window(0, 60)),
            format!("events-{}-0-00000-of-00001", window(0, 60)),
        ],
        "the open minute left no file, not even a temporary one"
    );
    assert!(a_done.load(Ordering::SeqCst));
    assert!(
        a_abandoned.load(Ordering::SeqCst),
        "the burst is released as not written: redelivered to the next run"
    );
}
