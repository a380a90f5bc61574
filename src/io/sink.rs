//! The file sink operator shared by `WriteToJson`, `WriteToCsv` and `WriteToParquet`: the
//! format is only the writer it opens.
//!
//! On bounded input it writes one file set, committed when the input ends (Beam's batch
//! naming, `PATH-SSSSS-of-NNNNN`). On unbounded input ([`super::streaming`]) it commits files as
//! windows end or sets fill. Either way a write is durable at a later commit
//! ([`Written::AtCommit`]): the sink keeps the holds of a file's rows and hands them back to the
//! runner ([`Receipts`]) right after the file was renamed into place. Every write, flush and
//! rename runs on tokio's blocking pool (`spawn_blocking`), never on an executor thread.

use std::sync::Arc;

use async_trait::async_trait;

use super::files::{Committed, OpenWriter, ShardedFiles};
use super::streaming::{StreamFiles, StreamPolicy};
use crate::pipeline::operator::{
    EngineError, EventTime, Output, Receipts, Sink, StageStats, Written,
};
use crate::record::Batch;

/// Where and how a file sink writes (from its config and the graph).
pub struct FileSinkSpec<'a> {
    pub transform: &'a str,
    pub path: &'a str,
    pub num_shards: usize,
    /// Set when the sink's input is unbounded.
    pub streaming: Option<StreamPolicy>,
}

pub struct WriteFiles {
    transform: String,
    mode: Mode,
    stats: Arc<StageStats>,
    /// Streaming sinks list their output as a pattern once, not every file of a long run.
    listed: bool,
    path: String,
}

/// The file state of either mode is `None` only while a blocking call has it, or after that
/// call panicked.
enum Mode {
    Bounded(Option<Box<ShardedFiles>>),
    Streaming(Option<Box<StreamFiles>>),
}

/// Runs `f` on `slot`'s state on tokio's blocking pool and puts the state back.
async fn off_thread<S, T, F>(
    transform: &str,
    slot: &mut Option<Box<S>>,
    f: F,
) -> Result<T, EngineError>
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&mut S) -> T + Send + 'static,
{
    let Some(mut files) = slot.take() else {
        return Err(EngineError::internal(
            transform,
            "the file sink's state was lost by an earlier failure",
        ));
    };
    let (files, res) = tokio::task::spawn_blocking(move || {
        let res = f(&mut files);
        (files, res)
    })
    .await
    .map_err(|e| EngineError::internal(transform, format!("a file write failed: {e}")))?;
    *slot = Some(files);
    Ok(res)
}

impl WriteFiles {
    pub fn new(spec: &FileSinkSpec<'_>, open: Arc<OpenWriter>, stats: Arc<StageStats>) -> Self {
        let sink_stats = stats.sink().clone();
        let mode = match spec.streaming {
            None => Mode::Bounded(Some(Box::new(ShardedFiles::new(
                spec.transform,
                spec.path,
                spec.num_shards,
                open,
                sink_stats,
            )))),
            Some(policy) => Mode::Streaming(Some(Box::new(StreamFiles::new(
                spec.transform,
                spec.path,
                spec.num_shards,
                open,
                sink_stats,
                policy,
            )))),
        };
        WriteFiles {
            transform: spec.transform.to_string(),
            mode,
            stats,
            listed: false,
            path: spec.path.to_string(),
        }
    }

    /// Runs `f` on the streaming state on tokio's blocking pool, then hands the holds of what
    /// it committed to `receipts` (after the renames: this is where the input is acknowledged).
    async fn blocking<F>(&mut self, receipts: &mut Receipts, f: F) -> Result<(), EngineError>
    where
        F: FnOnce(&mut StreamFiles) -> Result<Committed, EngineError> + Send + 'static,
    {
        self.blocking_with(receipts, move |files| f(files).map(|c| (c, ())))
            .await
            .map(|_| ())
    }

    /// [`WriteFiles::blocking`] for an `f` that also returns a value.
    async fn blocking_with<F, T>(
        &mut self,
        receipts: &mut Receipts,
        f: F,
    ) -> Result<Option<T>, EngineError>
    where
        F: FnOnce(&mut StreamFiles) -> Result<(Committed, T), EngineError> + Send + 'static,
        T: Send + 'static,
    {
        let Mode::Streaming(slot) = &mut self.mode else {
            return Ok(None);
        };
        let (committed, value) = off_thread(&self.transform, slot, f).await??;
        if !committed.paths.is_empty() {
            tracing::debug!(
                transform = %self.transform,
                files = committed.paths.len(),
                holds = committed.holds.len(),
                "Committed files"
            );
            if !self.listed {
                self.listed = true;
                self.stats
                    .outputs
                    .lock()
                    .expect("not poisoned")
                    .push(format!("{}-*", self.path));
            }
        }
        receipts.delivered(committed.holds);
        Ok(Some(value))
    }
}

#[async_trait]
impl Sink for WriteFiles {
    async fn write(
        &mut self,
        batch: Batch,
        receipts: &mut Receipts,
        _out: &mut Output,
    ) -> Result<Written, EngineError> {
        match &mut self.mode {
            Mode::Bounded(slot) => {
                let rows = batch.user_rows();
                let acks = batch.acks;
                off_thread(&self.transform, slot, move |files| {
                    files.write(&rows)?;
                    files.hold(acks);
                    Ok::<(), EngineError>(())
                })
                .await??;
            }
            Mode::Streaming(_) => {
                let now = tokio::time::Instant::now().into_std();
                self.blocking(receipts, move |f| f.write(batch, now))
                    .await?;
            }
        }
        Ok(Written::AtCommit)
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        receipts: &mut Receipts,
    ) -> Result<(), EngineError> {
        self.blocking(receipts, move |f| f.advance(watermark)).await
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        match &self.mode {
            Mode::Streaming(Some(f)) => Some(f.tick_interval()),
            _ => None,
        }
    }

    async fn on_timer(
        &mut self,
        now: tokio::time::Instant,
        receipts: &mut Receipts,
    ) -> Result<(), EngineError> {
        let now = now.into_std();
        self.blocking(receipts, move |f| f.tick(now)).await
    }

    async fn on_drain_keep(&mut self, receipts: &mut Receipts) -> Result<(), EngineError> {
        if matches!(self.mode, Mode::Bounded(_)) {
            return self.on_end(receipts).await;
        }
        let abandoned = self.blocking_with(receipts, StreamFiles::keep_open).await?;
        receipts.failed(abandoned.unwrap_or_default());
        Ok(())
    }

    async fn on_end(&mut self, receipts: &mut Receipts) -> Result<(), EngineError> {
        match &mut self.mode {
            Mode::Bounded(slot) => {
                let committed = off_thread(&self.transform, slot, ShardedFiles::finish).await??;
                self.stats
                    .outputs
                    .lock()
                    .expect("not poisoned")
                    .extend(committed.paths.iter().map(|p| p.display().to_string()));
                receipts.delivered(committed.holds);
                Ok(())
            }
            Mode::Streaming(_) => self.blocking(receipts, StreamFiles::finish).await,
        }
    }
}
