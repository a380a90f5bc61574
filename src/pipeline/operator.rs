//! The stage contracts: what a source ([`Source`]), transform ([`Operator`]) or sink ([`Sink`])
//! implements, and the [`Output`] it emits into.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use super::stats::{AckStats, SinkStats, SourceStats, WindowStats};
pub use crate::record::error_record::Element;
use crate::record::{AckSet, AckStatus, Batch, Releaser};

/// Event time in milliseconds since the epoch; `i64::MAX` is the end of time.
pub type EventTime = i64;
pub const END_OF_TIME: EventTime = i64::MAX;

/// Errors that stop a pipeline (bad data never does: it goes to the error output).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A problem in the pipeline definition found only at run time (the user's to fix).
    #[error("{transform}: {message}")]
    Config {
        transform: String,
        message: String,
        /// Where in the pipeline file the problem is (an expression), when known; the CLI
        /// reports it as `file:line:col`, else the transform's own position.
        at: Option<crate::config::Pos>,
    },
    /// An external system failed and retries were exhausted.
    #[error("{transform}: {message}")]
    External {
        transform: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A bug in Sluice.
    #[error("internal error in {transform}: {message}")]
    Internal { transform: String, message: String },
    /// A `Check`'s valve was still closed when its input ended: held data was not passed on.
    #[error("{transform}: {message}")]
    Halted { transform: String, message: String },
    /// A graceful stop did not finish within `options.drain_timeout`.
    #[error("drain: {message}")]
    DrainTimeout { message: String },
    /// `AssertEqual` or a test expectation did not hold.
    #[error("{transform}: assertion failed: {message}")]
    Assertion { transform: String, message: String },
}

impl EngineError {
    pub fn external(
        transform: &str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        EngineError::External {
            transform: transform.to_string(),
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn internal(transform: &str, message: impl Into<String>) -> Self {
        EngineError::Internal {
            transform: transform.to_string(),
            message: message.into(),
        }
    }

    pub fn config(transform: &str, message: impl Into<String>) -> Self {
        EngineError::Config {
            transform: transform.to_string(),
            message: message.into(),
            at: None,
        }
    }

    /// A config error at a position of the pipeline file (an expression).
    pub fn config_at(transform: &str, at: crate::config::Pos, message: impl Into<String>) -> Self {
        EngineError::Config {
            transform: transform.to_string(),
            message: message.into(),
            at: Some(at),
        }
    }

    /// Where the user should look, for a problem in the pipeline definition: `(transform,
    /// position if known)`. `None` for other errors.
    pub fn config_location(&self) -> Option<(&str, Option<crate::config::Pos>)> {
        match self {
            EngineError::Config { transform, at, .. } => Some((transform, *at)),
            _ => None,
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::External { .. })
    }
}

/// Where an operator puts what it produces: one list of batches per output port.
///
/// Port 0 is the main output; the others are named (error output, `Partition` outputs) and
/// their indices are handed to the operator when it is built.
#[derive(Debug, Default)]
pub struct Output {
    ports: Vec<Vec<Batch>>,
}

impl Output {
    pub fn new(ports: usize) -> Self {
        Output {
            ports: (0..ports).map(|_| Vec::new()).collect(),
        }
    }

    /// Emits `batch` on `port`; empty batches are dropped.
    pub fn emit(&mut self, port: usize, batch: Batch) {
        if batch.num_rows() > 0
            && let Some(p) = self.ports.get_mut(port)
        {
            p.push(batch);
        }
    }

    pub fn main(&mut self, batch: Batch) {
        self.emit(0, batch);
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (usize, Batch)> + '_ {
        self.ports
            .iter_mut()
            .enumerate()
            .flat_map(|(i, p)| p.drain(..).map(move |b| (i, b)))
    }

    /// Visits every batch emitted so far, with its port.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(usize, &mut Batch)) {
        for (i, p) in self.ports.iter_mut().enumerate() {
            p.iter_mut().for_each(|b| f(i, b));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ports.iter().all(Vec::is_empty)
    }
}

/// A stage of the graph that consumes batches: a transform or a sink.
///
/// Calls for one operator are never concurrent. Watermarks arrive as the minimum over all inputs;
/// `on_end` is called once after every input ended.
#[async_trait]
pub trait Operator: Send {
    /// Processes one batch that arrived on input `input`.
    async fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError>;

    /// The input watermark advanced to `watermark` (windows may fire).
    async fn on_watermark(
        &mut self,
        _watermark: EventTime,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every input ended: flush what is buffered.
    async fn on_end(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every input ended because of a stop with `options.drain: keep`: windows and other
    /// buffered state are not fired; their input must be left for redelivery
    /// ([`crate::record::AckSet::abandon`]). By default this is `on_end`.
    async fn on_drain_keep(&mut self, out: &mut Output) -> Result<(), EngineError> {
        self.on_end(out).await
    }

    /// The watermark to forward downstream for input watermark `input_wm` (operators that hold
    /// back output, like windowed aggregations, may lower it; `AssignTimestamps` raises it). Asked
    /// after every call, and forwarded when it advanced.
    fn output_watermark(&self, input_wm: EventTime) -> EventTime {
        input_wm
    }

    /// How often `on_timer` should run (processing time), if at all: early panes, idle sources.
    fn timer_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// A processing-time tick (every `timer_interval`), at `now`.
    async fn on_timer(
        &mut self,
        _now: tokio::time::Instant,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        Ok(())
    }
}

/// When a sink's write is durable: what the runner releases the batch's acknowledgement holds
/// on (Vector's `BatchStatus`, reported by the write instead of by dropping the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Durable at return (a database commit, a publish the server confirmed): the runner
    /// releases the batch's holds as delivered.
    Now,
    /// Durable at a later commit (files: when the set is renamed into place). The sink keeps
    /// the batch's holds and hands them back through [`Receipts`] from the call that commits.
    AtCommit,
}

/// Holds a sink hands back to the runner from a commit: delivered (their rows are durable now)
/// or failed (their rows will never be written: the input is redelivered).
#[derive(Debug, Default)]
pub struct Receipts {
    delivered: AckSet,
    failed: AckSet,
}

impl Receipts {
    /// The rows of `acks` are durable.
    pub fn delivered(&mut self, acks: AckSet) {
        self.delivered.merge(acks);
    }

    /// The rows of `acks` will not be written (`options.drain: keep` removed their files).
    pub fn failed(&mut self, acks: AckSet) {
        self.failed.merge(acks);
    }

    /// Releases the holds with their outcome (the runner does, after each sink call).
    pub fn release(self) {
        self.delivered.release(AckStatus::Delivered);
        self.failed.release(AckStatus::Failed);
    }
}

/// A stage that writes its input somewhere durable: the end of the acknowledgement path.
///
/// The runner calls these like [`Operator`]'s (never concurrently, watermarks as the minimum
/// over the inputs, `on_end` once) and releases the holds of each batch from the outcome of
/// [`Sink::write`]: delivered when it returned [`Written::Now`]; when it returned
/// [`Written::AtCommit`], from the [`Receipts`] of the call that committed; failed when it
/// returned an error. A sink never releases a hold by dropping it.
#[async_trait]
pub trait Sink: Send {
    /// Writes `batch`. Rows the target refuses go to the error output through `out` (error
    /// records carry the batch's holds, so the input waits for its dead letters too).
    ///
    /// # Errors
    /// The target failed after retries, or the configuration does not fit the data: the run
    /// fails and the batch's input is redelivered.
    async fn write(
        &mut self,
        batch: Batch,
        receipts: &mut Receipts,
        out: &mut Output,
    ) -> Result<Written, EngineError>;

    /// The input watermark advanced (file sinks commit the sets of windows that ended).
    async fn on_watermark(
        &mut self,
        _watermark: EventTime,
        _receipts: &mut Receipts,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// How often `on_timer` should run (processing time), if at all.
    fn timer_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// A processing-time tick (file sinks roll sets by age).
    async fn on_timer(
        &mut self,
        _now: tokio::time::Instant,
        _receipts: &mut Receipts,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every input ended: flush and commit what is buffered.
    async fn on_end(&mut self, _receipts: &mut Receipts) -> Result<(), EngineError> {
        Ok(())
    }

    /// Every input ended because of a stop with `options.drain: keep`: what belongs to open
    /// windows is not committed; its holds go back as failed. By default this is `on_end`.
    async fn on_drain_keep(&mut self, receipts: &mut Receipts) -> Result<(), EngineError> {
        self.on_end(receipts).await
    }
}

/// Where a source puts what it reads.
#[async_trait]
pub trait SourceSink: Send {
    /// Sends `batch` downstream on `port`, waiting while consumers are full (backpressure).
    async fn emit(&mut self, port: usize, batch: Batch) -> Result<(), EngineError>;
    /// Advances the source's watermark.
    async fn watermark(&mut self, wm: EventTime) -> Result<(), EngineError>;
    /// An unbounded source stopped (a drain, `--until-idle`): its input did not end. By default
    /// the watermark jumps to the end of time, so windows fire (`drain: flush`).
    async fn stopped(&mut self) -> Result<(), EngineError> {
        self.watermark(END_OF_TIME).await
    }
    /// Starts (`true`) or ends a watermark hold, in-band: until it ends, stages downstream
    /// apply and forward no watermark, including one `AssignTimestamps` generates. A restarted
    /// Pub/Sub source holds until the messages it had pulled before the restart came back, so
    /// that newer messages cannot push the watermark past them (docs/guarantees.md).
    async fn hold(&mut self, _held: bool) -> Result<(), EngineError> {
        Ok(())
    }
    /// True once a stop was requested (SIGINT/SIGTERM): read no more and return.
    fn stopping(&self) -> bool;
    /// True while a valve (or gate) this source feeds is closed: `emit` would wait. A paused
    /// source is not idle (it is not pulling).
    fn paused(&self) -> bool {
        false
    }
    /// `--until-idle`: a streaming source ends after no input arrived for this long.
    fn until_idle(&self) -> Option<std::time::Duration> {
        None
    }
    /// Where the holds this source puts on its batches go when their last clone is gone: the
    /// run's release task, which also knows whether the run failed (`record::ack`).
    fn releaser(&self) -> Releaser {
        Releaser::default()
    }
    /// Work to await after every stage finished, or was dropped because the run failed (e.g.
    /// sending the last acknowledgements or nacks), before the run reports its outcome.
    fn defer(&mut self, work: futures::future::BoxFuture<'static, ()>) {
        drop(work);
    }
}

/// A stage with no inputs.
#[async_trait]
pub trait Source: Send {
    /// Reads until the input ends or a stop is requested. Bounded sources end with watermark +∞.
    async fn run(&mut self, out: &mut dyn SourceSink) -> Result<(), EngineError>;
}

/// Per-stage counters, shared with the run summary, `/metrics` and the status page.
#[derive(Debug)]
pub struct StageStats {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub batches_in: AtomicU64,
    pub errors: AtomicU64,
    /// Units (panes or batches) a `Check` found failing.
    pub check_failures: AtomicU64,
    /// Event times more than 100 years from now (`time::epoch::RangeGuard`).
    pub event_time_out_of_range: AtomicU64,
    /// Time spent in `process` per batch.
    pub batch_seconds: prometheus_client::metrics::histogram::Histogram,
    /// The watermark this stage last forwarded (ms; `i64::MIN` before the first).
    pub watermark: std::sync::atomic::AtomicI64,
    /// Errors without a declared error output: counted, and a few kept as examples.
    pub unhandled_examples: Mutex<Vec<String>>,
    /// Where a sink wrote (file paths, tables), for the run summary.
    pub outputs: Mutex<Vec<String>>,
    /// The dead-letter rate over the alarm window, as `f64` bits; NaN until
    /// `alerts::dead_letter` measured it (only transforms with an error output are measured).
    pub dead_letter_rate: AtomicU64,
    /// Set for sources (by the runner), sinks, acknowledging sources and windowed
    /// aggregations (through the methods of the same name); `/metrics` reads them with `get()`
    /// and exports a family only for the stages that have it.
    pub source: OnceLock<Arc<SourceStats>>,
    pub acks: OnceLock<Arc<AckStats>>,
    pub sink: OnceLock<Arc<SinkStats>>,
    pub window: OnceLock<Arc<WindowStats>>,
}

impl Default for StageStats {
    fn default() -> Self {
        StageStats {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            batches_in: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
            event_time_out_of_range: AtomicU64::new(0),
            // 50µs to ~3s: a batch of a few thousand rows takes 0.1-10 ms in a transform and up
            // to seconds in a sink waiting on the network.
            batch_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 4.0, 9),
            ),
            watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            unhandled_examples: Mutex::default(),
            outputs: Mutex::default(),
            dead_letter_rate: AtomicU64::new(f64::NAN.to_bits()),
            source: OnceLock::new(),
            acks: OnceLock::new(),
            sink: OnceLock::new(),
            window: OnceLock::new(),
        }
    }
}

impl StageStats {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The last measured dead-letter rate; `None` when the stage is not measured.
    pub fn dead_letter_rate(&self) -> Option<f64> {
        let rate = f64::from_bits(self.dead_letter_rate.load(Ordering::Relaxed));
        (!rate.is_nan()).then_some(rate)
    }

    pub fn set_dead_letter_rate(&self, rate: f64) {
        self.dead_letter_rate
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// This stage's source counters, created on first use (the runner does, for every source).
    pub fn source(&self) -> &Arc<SourceStats> {
        self.source.get_or_init(Arc::default)
    }

    /// Message acknowledgement counters, created by a source that acknowledges its input.
    pub fn acks(&self) -> &Arc<AckStats> {
        self.acks.get_or_init(Arc::default)
    }

    /// Write counters, created by a sink when it is built.
    pub fn sink(&self) -> &Arc<SinkStats> {
        self.sink.get_or_init(Arc::default)
    }

    /// Window state gauges, created by a windowed aggregation when it is built.
    pub fn window(&self) -> &Arc<WindowStats> {
        self.window.get_or_init(Arc::default)
    }
}

/// How many examples of unhandled errors a stage keeps for the end-of-run report.
const EXAMPLES_KEPT: usize = 5;
/// Characters of an example's element kept for the report (a 2 MB payload must not become a
/// 2 MB log line).
const EXAMPLE_CHARS: usize = 500;

/// Builds error records (`element`, `msg`, `transform`) and routes them to the error output, or
/// counts them when the transform declared none.
#[derive(Debug, Clone)]
pub struct ErrorRoute {
    transform: Arc<str>,
    port: Option<usize>,
    stats: Arc<StageStats>,
}

impl ErrorRoute {
    pub fn new(transform: &str, port: Option<usize>, stats: Arc<StageStats>) -> Self {
        ErrorRoute {
            transform: transform.into(),
            port,
            stats,
        }
    }

    pub fn transform(&self) -> &str {
        &self.transform
    }

    /// The counters of the transform this route belongs to.
    pub fn stats(&self) -> &Arc<StageStats> {
        &self.stats
    }

    /// The schema of error records ([`crate::record::error_record::schema`]).
    pub fn schema() -> SchemaRef {
        crate::record::error_record::schema()
    }

    /// Reports `(payload, message)` failures of rows of `origin` (whose acknowledgement holds
    /// the error records carry: input is acknowledged only once its dead letters are written).
    pub fn report(&self, out: &mut Output, origin: &Batch, failures: Vec<(String, String)>) {
        self.report_elements(
            out,
            origin,
            failures
                .into_iter()
                .map(|(p, m)| (Element::Text(p), m))
                .collect(),
        );
    }

    /// [`ErrorRoute::report`] for elements that may be bytes (payloads that are not UTF-8).
    pub fn report_elements(
        &self,
        out: &mut Output,
        origin: &Batch,
        failures: Vec<(Element, String)>,
    ) {
        if failures.is_empty() {
            return;
        }
        StageStats::add(&self.stats.errors, failures.len());
        match self.port {
            Some(port) => {
                let n = failures.len();
                let mut elements = Vec::with_capacity(n);
                let mut encodings = Vec::with_capacity(n);
                let mut msgs = Vec::with_capacity(n);
                for (element, msg) in failures {
                    let (text, encoding) = element.into_columns();
                    elements.push(text);
                    encodings.push(encoding);
                    msgs.push(msg);
                }
                let transform = StringArray::from(vec![self.transform.as_ref(); n]);
                let rows = RecordBatch::try_new(
                    Self::schema(),
                    vec![
                        Arc::new(StringArray::from(elements)),
                        Arc::new(StringArray::from(msgs)),
                        Arc::new(transform),
                        Arc::new(StringArray::from(encodings)),
                    ],
                )
                .expect("columns match the error schema");
                out.emit(port, origin.derive(rows));
            }
            None => {
                let mut ex = self.stats.unhandled_examples.lock().expect("not poisoned");
                for (element, msg) in failures {
                    if ex.len() >= EXAMPLES_KEPT {
                        break;
                    }
                    ex.push(format!("{msg}: {}", element.preview(EXAMPLE_CHARS)));
                }
            }
        }
    }
}
