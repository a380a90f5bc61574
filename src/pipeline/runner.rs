//! Runs a built graph: one tokio task per stage, bounded channels between them.
//!
//! Each stage has one inbox; every upstream port holds a sender to it tagged with the input
//! index. A full inbox makes the upstream `send` wait, which is how backpressure reaches the
//! sources. Watermarks flow in-band and a stage forwards the minimum over its inputs; `End`
//! arrives once per input, and a stage ends after all its inputs did.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::graph::Graph;
use super::operator::{
    EngineError, EventTime, Operator, Output, Sink, Source, SourceSink, StageStats,
};
use super::sink_stage::SinkStage;
use super::valve::Valves;
use crate::config::spec::Drain;
use crate::record::{Batch, Releaser};

/// Batches buffered per stage inbox. Small: a batch holds thousands of rows, and a short queue
/// bounds memory at about (stages × capacity × batch size) while still overlapping stages.
pub const INBOX_CAPACITY: usize = 4;

#[derive(Debug)]
enum Msg {
    Batch(Batch),
    Watermark(EventTime),
    /// A watermark hold starts (`true`) or ends: while any input is held, a stage applies no
    /// watermark and forwards none (see [`SourceSink::hold`]).
    Hold(bool),
    End,
}

#[derive(Debug)]
struct Envelope {
    input: usize,
    msg: Msg,
}

/// A runnable stage.
pub enum Stage {
    Source(Box<dyn Source>),
    Operator(Box<dyn Operator>),
    /// The runner releases the acknowledgement holds of a sink's input from its outcome.
    Sink(Box<dyn Sink>),
}

/// Senders for each output port of one stage.
#[derive(Clone, Default)]
struct Fanout {
    ports: Vec<Vec<(mpsc::Sender<Envelope>, usize)>>,
    /// Rows on this port are errors, not output, in the stage counters.
    error_port: Option<usize>,
}

impl Fanout {
    async fn send(&self, port: usize, batch: Batch) {
        let Some(targets) = self.ports.get(port) else {
            return;
        };
        for (tx, input) in targets {
            // A closed inbox means that consumer already failed; the run is ending anyway.
            let _ = tx
                .send(Envelope {
                    input: *input,
                    msg: Msg::Batch(batch.clone()),
                })
                .await;
        }
    }

    async fn broadcast(&self, make: impl Fn() -> Msg) {
        for targets in &self.ports {
            for (tx, input) in targets {
                let _ = tx
                    .send(Envelope {
                        input: *input,
                        msg: make(),
                    })
                    .await;
            }
        }
    }

    async fn flush(&self, out: &mut Output, stats: &StageStats) {
        let batches: Vec<(usize, Batch)> = out.drain().collect();
        for (port, batch) in batches {
            if Some(port) != self.error_port {
                StageStats::add(&stats.rows_out, batch.num_rows());
            }
            self.send(port, batch).await;
        }
    }
}

/// What a finished run reports.
pub struct RunReport {
    pub stats: Vec<(String, Arc<StageStats>)>,
}

/// Controls for a run: a stop request (SIGINT/SIGTERM) that sources observe.
#[derive(Clone)]
pub struct RunControl {
    pub stop: watch::Receiver<bool>,
    /// `--until-idle`: streaming sources end after no message arrived for this long.
    pub until_idle: Option<Duration>,
    /// Set when the run aborts (a stage failed or panicked) before the stages are dropped, so
    /// acknowledgement holds released by the abort do not acknowledge anything.
    pub failed: Arc<AtomicBool>,
    /// Where sources' holds go when their last clone is gone; the run's release task releases
    /// them (acknowledges, saves marks) outside any `Drop`.
    releaser: Releaser,
    /// Work sources defer until every stage finished or was dropped (flushing acknowledgements).
    deferred: Arc<Mutex<Vec<BoxFuture<'static, ()>>>>,
    /// The run's valves: a source pauses while a valve it feeds (or a gate) is closed.
    pub valves: Arc<Valves>,
    /// What a stop does with open windows (`options.drain`).
    pub drain: Drain,
    /// How long a stop may take before the run is abandoned (`options.drain_timeout`).
    pub drain_timeout: Option<Duration>,
    /// Stateful transforms checkpoint to a persistent store (`options.state`): a stop of an
    /// unbounded source leaves their windows open (checkpointed) for the next run.
    pub durable_state: bool,
}

impl RunControl {
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        let failed: Arc<AtomicBool> = Arc::default();
        RunControl {
            stop,
            until_idle: None,
            releaser: Releaser::queued(failed.clone()),
            failed,
            deferred: Arc::default(),
            valves: Arc::default(),
            drain: Drain::Flush,
            drain_timeout: None,
            durable_state: false,
        }
    }

    /// See [`RunControl::durable_state`].
    pub fn with_durable_state(mut self, durable: bool) -> Self {
        self.durable_state = durable;
        self
    }

    /// Shares `failed` with the stages built for this run (their holds check it).
    pub fn with_failed(mut self, failed: Arc<AtomicBool>) -> Self {
        self.releaser = Releaser::queued(failed.clone());
        self.failed = failed;
        self
    }

    /// `options.drain` and `options.drain_timeout`.
    pub fn with_drain(mut self, drain: Drain, timeout: Option<Duration>) -> Self {
        self.drain = drain;
        self.drain_timeout = timeout;
        self
    }

    /// True once a stop was requested with `drain: keep`.
    fn keeping(&self) -> bool {
        self.drain == Drain::Keep && *self.stop.borrow()
    }

    /// Uses `valves` (shared with the checks, the HTTP endpoints and the control topic).
    pub fn with_valves(mut self, valves: Arc<Valves>) -> Self {
        self.valves = valves;
        self
    }

    /// Releases the holds whose last clone is gone (after the stages finished or were dropped;
    /// the release task was stopped), then awaits the work sources deferred, which may wait for
    /// those releases (the last acknowledgements).
    async fn finish(&self, releasing: tokio::task::JoinHandle<()>) {
        releasing.abort();
        let _ = releasing.await;
        self.releaser.close();
        self.run_deferred().await;
    }

    /// Awaits the work sources deferred (after the stages finished or were dropped).
    async fn run_deferred(&self) {
        let deferred: Vec<_> = std::mem::take(&mut *self.deferred.lock().expect("not poisoned"));
        futures::future::join_all(deferred).await;
    }

    pub fn with_until_idle(mut self, until_idle: Option<Duration>) -> Self {
        self.until_idle = until_idle;
        self
    }
}

/// Runs every stage of `graph` to completion.
///
/// # Errors
/// The first error any stage returned; the other stages are cancelled.
pub async fn run(
    graph: &Graph,
    stages: Vec<Stage>,
    stats: Vec<Arc<StageStats>>,
    control: RunControl,
) -> Result<RunReport, EngineError> {
    let n = graph.nodes.len();
    let mut inboxes: Vec<Option<mpsc::Receiver<Envelope>>> = Vec::with_capacity(n);
    let mut senders: Vec<Option<mpsc::Sender<Envelope>>> = Vec::with_capacity(n);
    for node in &graph.nodes {
        if node.inputs.is_empty() {
            inboxes.push(None);
            senders.push(None);
        } else {
            let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
            inboxes.push(Some(rx));
            senders.push(Some(tx));
        }
    }
    let mut fanouts: Vec<Fanout> = graph
        .nodes
        .iter()
        .map(|node| Fanout {
            ports: vec![Vec::new(); node.ports.len()],
            error_port: node.error_port,
        })
        .collect();
    for (to, node) in graph.nodes.iter().enumerate() {
        for (input, e) in node.inputs.iter().enumerate() {
            let tx = senders[to]
                .clone()
                .expect("a node with inputs has an inbox");
            fanouts[e.from].ports[e.port].push((tx, input));
        }
    }
    drop(senders);

    // Holds whose last clone is gone are released here, as they come, outside any `Drop`.
    let releasing = tokio::spawn(control.releaser.clone().run());
    let mut tasks = JoinSet::new();
    for (i, ((stage, inbox), fanout)) in stages.into_iter().zip(inboxes).zip(fanouts).enumerate() {
        let name = graph.nodes[i].name.clone();
        let st = stats[i].clone();
        let inputs = graph.nodes[i].inputs.len();
        let ports = graph.nodes[i].ports.len();
        let control = control.clone();
        let op: Box<dyn Operator> = match stage {
            Stage::Source(src) => {
                let pausing = control.valves.pausing(i);
                tasks.spawn(run_source(name, src, fanout, st, control, pausing));
                continue;
            }
            Stage::Operator(op) => op,
            Stage::Sink(sink) => Box::new(SinkStage(sink)),
        };
        let inbox = inbox.expect("operators have inputs");
        let failed = control.failed.clone();
        tasks.spawn(async move {
            let mut op = op;
            let res = run_operator(name, &mut op, inbox, inputs, ports, fanout, st, &control).await;
            // Flag the failure before the operator (and the holds it keeps) is dropped, so
            // nothing it held is acknowledged.
            if res.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            drop(op);
            res
        });
    }
    let mut stop = control.stop.clone();
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut watching = control.drain_timeout.is_some();
    loop {
        let res = tokio::select! {
            res = tasks.join_next() => match res {
                Some(res) => res,
                None => break,
            },
            changed = stop.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                } else if *stop.borrow() {
                    watching = false;
                    deadline = control.drain_timeout.map(|d| tokio::time::Instant::now() + d);
                }
                continue;
            }
            _ = sleep_until(deadline) => {
                // Out of time: what is not written yet is left for redelivery.
                control.failed.store(true, Ordering::SeqCst);
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                control.finish(releasing).await;
                return Err(EngineError::DrainTimeout {
                    message: format!(
                        "the stop did not finish within {:?} (options.drain_timeout); unwritten input is left for redelivery",
                        control.drain_timeout.unwrap_or_default()
                    ),
                });
            }
        };
        if let Err(mut e) = flatten(res) {
            // Held input must be released as "not written": flag first, then drop the stages.
            control.failed.store(true, Ordering::SeqCst);
            // A consumer whose input closed reports a consequence; the stage that failed (and
            // closed it) finishes a moment later: report that one.
            if is_upstream_closed(&e) {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while let Ok(Some(next)) =
                    tokio::time::timeout_at(deadline, tasks.join_next()).await
                {
                    if let Err(cause) = flatten(next)
                        && !is_upstream_closed(&cause)
                    {
                        e = cause;
                        break;
                    }
                }
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            control.finish(releasing).await;
            return Err(e);
        }
    }
    control.finish(releasing).await;
    Ok(RunReport {
        stats: graph
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .zip(stats)
            .collect(),
    })
}

/// How many row ids a batch's span names (its first rows): enough to find a message, bounded.
const SPAN_IDS: usize = 5;

/// The first row ids (`__sluice_id`: the Pub/Sub message id or `id_attribute`) of `batch`.
fn first_ids(batch: &Batch) -> String {
    use arrow::array::Array;
    let Some(ids) = batch
        .rows
        .column_by_name(crate::record::meta::ROW_ID)
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
    else {
        return String::new();
    };
    (0..ids.len().min(SPAN_IDS))
        .filter(|&i| ids.is_valid(i))
        .map(|i| ids.value(i))
        .collect::<Vec<_>>()
        .join(",")
}

/// Completes at `deadline`; never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A stage's result, with a panic as an internal error.
fn flatten(
    res: Result<Result<(), EngineError>, tokio::task::JoinError>,
) -> Result<(), EngineError> {
    res.unwrap_or_else(|e| {
        Err(EngineError::internal(
            "runner",
            format!("a stage panicked: {e}"),
        ))
    })
}

const INPUT_CLOSED: &str = "an input closed without ending";

/// Whether `e` only reports that an upstream stage stopped (because it failed).
fn is_upstream_closed(e: &EngineError) -> bool {
    matches!(e, EngineError::Internal { message, .. } if message == INPUT_CLOSED)
}

struct SourceOut {
    fanout: Fanout,
    stats: Arc<StageStats>,
    control: RunControl,
    watermark: EventTime,
    /// Valves (and gates) that pause this source while closed.
    pausing: Vec<String>,
    /// The source's transform name (its batch spans).
    name: String,
}

#[async_trait]
impl SourceSink for SourceOut {
    async fn emit(&mut self, port: usize, batch: Batch) -> Result<(), EngineError> {
        // A closed valve downstream: stop here, so nothing more is read until it reopens.
        let mut stop = self.control.stop.clone();
        let paused = self.control.valves.blocks(&self.pausing);
        let waited = std::time::Instant::now();
        self.control
            .valves
            .wait_flowing(&self.pausing, &mut stop)
            .await;
        let source = self.stats.source();
        if paused {
            source.add_paused(waited.elapsed());
        }
        if Some(port) != self.fanout.error_port {
            StageStats::add(&self.stats.rows_out, batch.num_rows());
        }
        // A full inbox downstream makes `send` wait: that wait is backpressure.
        let sending = std::time::Instant::now();
        let span = tracing::info_span!(
            "batch",
            transform = %self.name,
            rows = batch.num_rows(),
            message_ids = %first_ids(&batch)
        );
        self.fanout.send(port, batch).instrument(span).await;
        source.add_throttled(sending.elapsed());
        Ok(())
    }

    async fn stopped(&mut self) -> Result<(), EngineError> {
        // A stop (SIGTERM) with durable state checkpoints the open windows instead of firing
        // them: the next run (a restarted or updated worker) goes on with them. `--until-idle`
        // is Dataflow's drain: the input is finished, so every window fires and is written.
        if self.control.durable_state && self.stopping() {
            return Ok(());
        }
        self.watermark(crate::pipeline::END_OF_TIME).await
    }

    async fn watermark(&mut self, wm: EventTime) -> Result<(), EngineError> {
        // A stop with `drain: keep` leaves open windows open: no end-of-time watermark.
        if wm == crate::pipeline::END_OF_TIME && self.control.keeping() {
            return Ok(());
        }
        if wm > self.watermark {
            self.watermark = wm;
            self.stats
                .watermark
                .store(wm, std::sync::atomic::Ordering::Relaxed);
            self.fanout.broadcast(|| Msg::Watermark(wm)).await;
        }
        Ok(())
    }

    async fn hold(&mut self, held: bool) -> Result<(), EngineError> {
        self.fanout.broadcast(|| Msg::Hold(held)).await;
        Ok(())
    }

    fn stopping(&self) -> bool {
        *self.control.stop.borrow()
    }

    fn until_idle(&self) -> Option<Duration> {
        self.control.until_idle
    }

    fn paused(&self) -> bool {
        self.control.valves.blocks(&self.pausing)
    }

    fn releaser(&self) -> Releaser {
        self.control.releaser.clone()
    }

    fn defer(&mut self, work: BoxFuture<'static, ()>) {
        self.control
            .deferred
            .lock()
            .expect("not poisoned")
            .push(work);
    }
}

async fn run_source(
    name: String,
    mut src: Box<dyn Source>,
    fanout: Fanout,
    stats: Arc<StageStats>,
    control: RunControl,
    pausing: Vec<String>,
) -> Result<(), EngineError> {
    // Created before the first batch, so `/metrics` shows the source's families from the start.
    stats.source();
    let mut out = SourceOut {
        fanout,
        stats,
        control,
        watermark: EventTime::MIN,
        pausing,
        name,
    };
    src.run(&mut out).await?;
    out.fanout.broadcast(|| Msg::End).await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_operator(
    name: String,
    op: &mut Box<dyn Operator>,
    mut inbox: mpsc::Receiver<Envelope>,
    inputs: usize,
    ports: usize,
    fanout: Fanout,
    stats: Arc<StageStats>,
    control: &RunControl,
) -> Result<(), EngineError> {
    let failed = &control.failed;
    let mut out = Output::new(ports);
    let mut input_wm = vec![EventTime::MIN; inputs];
    let mut input_held = vec![false; inputs];
    let mut current = EventTime::MIN;
    let mut forwarded = EventTime::MIN;
    let mut ended = 0;
    let mut ticker = op.timer_interval().map(|d| {
        let mut t = tokio::time::interval(d.max(std::time::Duration::from_millis(1)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let env = tokio::select! {
            env = inbox.recv() => match env {
                Some(env) => env,
                None => break,
            },
            now = tick(&mut ticker) => {
                op.on_timer(now, &mut out).await?;
                fanout.flush(&mut out, &stats).await;
                if !input_held.contains(&true) {
                    let next = op.output_watermark(current);
                    forward_watermark(next, &mut forwarded, &fanout, &stats).await;
                }
                continue;
            }
        };
        match env.msg {
            Msg::Batch(batch) => {
                StageStats::add(&stats.rows_in, batch.num_rows());
                StageStats::add(&stats.batches_in, 1);
                // A clone of the holds outlives `process`: if it fails, the run is flagged as
                // failed before the batch's holds can be released (as an acknowledgement).
                let held = batch.acks.clone();
                let started = std::time::Instant::now();
                let span = tracing::info_span!(
                    "batch",
                    transform = %name,
                    rows = batch.num_rows(),
                    message_ids = %first_ids(&batch)
                );
                let res = op
                    .process(env.input, batch, &mut out)
                    .instrument(span)
                    .await;
                stats.batch_seconds.observe(started.elapsed().as_secs_f64());
                if res.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                drop(held);
                res?;
                fanout.flush(&mut out, &stats).await;
                if !input_held.contains(&true) {
                    let next = op.output_watermark(current);
                    forward_watermark(next, &mut forwarded, &fanout, &stats).await;
                }
            }
            Msg::Watermark(wm) => {
                input_wm[env.input] = input_wm[env.input].max(wm);
                if !input_held.contains(&true) {
                    advance(
                        op,
                        &input_wm,
                        &mut current,
                        &mut forwarded,
                        &mut out,
                        &fanout,
                        &stats,
                    )
                    .await?;
                }
            }
            Msg::Hold(held) => {
                let was = input_held.contains(&true);
                input_held[env.input] = held;
                let now_held = input_held.contains(&true);
                if now_held != was {
                    fanout.flush(&mut out, &stats).await;
                    fanout.broadcast(|| Msg::Hold(now_held)).await;
                    if !now_held {
                        // Released: what arrived meanwhile is in-band ahead of this point, so
                        // the watermark may now pass it.
                        advance(
                            op,
                            &input_wm,
                            &mut current,
                            &mut forwarded,
                            &mut out,
                            &fanout,
                            &stats,
                        )
                        .await?;
                        let next = op.output_watermark(current);
                        forward_watermark(next, &mut forwarded, &fanout, &stats).await;
                    }
                }
            }
            Msg::End => {
                ended += 1;
                if ended == inputs {
                    break;
                }
            }
        }
    }
    if ended < inputs {
        return Err(EngineError::internal(&name, INPUT_CLOSED));
    }
    if control.keeping() {
        op.on_drain_keep(&mut out).await?;
    } else {
        op.on_end(&mut out).await?;
    }
    fanout.flush(&mut out, &stats).await;
    fanout.broadcast(|| Msg::End).await;
    Ok(())
}

/// Applies the minimum input watermark when it advanced: the operator's `on_watermark`, its
/// output, and the watermark it forwards.
async fn advance(
    op: &mut Box<dyn Operator>,
    input_wm: &[EventTime],
    current: &mut EventTime,
    forwarded: &mut EventTime,
    out: &mut Output,
    fanout: &Fanout,
    stats: &StageStats,
) -> Result<(), EngineError> {
    let Some(min) = input_wm.iter().copied().min() else {
        return Ok(());
    };
    if min > *current {
        *current = min;
        op.on_watermark(min, out).await?;
        fanout.flush(out, stats).await;
        let next = op.output_watermark(*current);
        forward_watermark(next, forwarded, fanout, stats).await;
    }
    Ok(())
}

/// The next tick of an operator's timer; never completes for operators without one.
async fn tick(ticker: &mut Option<tokio::time::Interval>) -> tokio::time::Instant {
    match ticker {
        Some(t) => t.tick().await,
        None => std::future::pending().await,
    }
}

/// Forwards the operator's output watermark `next` downstream when it advanced.
async fn forward_watermark(
    next: EventTime,
    forwarded: &mut EventTime,
    fanout: &Fanout,
    stats: &StageStats,
) {
    if next > *forwarded {
        *forwarded = next;
        stats
            .watermark
            .store(next, std::sync::atomic::Ordering::Relaxed);
        fanout.broadcast(|| Msg::Watermark(next)).await;
    }
}
