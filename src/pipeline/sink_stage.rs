//! How the runner drives a [`Sink`]: it releases the acknowledgement holds of every batch from
//! the sink's reported outcome, never from a drop inside the sink.

use async_trait::async_trait;

use super::operator::{EngineError, EventTime, Operator, Output, Receipts, Sink, Written};
use crate::record::{AckStatus, Batch};

/// A sink as a stage of the runner (the runner's loop handles inboxes, watermarks and timers
/// alike for transforms and sinks).
pub(super) struct SinkStage(pub Box<dyn Sink>);

impl SinkStage {
    /// Releases what a sink call handed back, whatever the call's result.
    fn settle<T>(receipts: Receipts, res: Result<T, EngineError>) -> Result<T, EngineError> {
        receipts.release();
        res
    }
}

#[async_trait]
impl Operator for SinkStage {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        let acks = batch.acks.clone();
        let mut receipts = Receipts::default();
        let res = self.0.write(batch, &mut receipts, out).await;
        match Self::settle(receipts, res) {
            // Durable now: this is where the input is acknowledged.
            Ok(Written::Now) => acks.release(AckStatus::Delivered),
            // The sink kept its own clones until its commit; this one is done.
            Ok(Written::AtCommit) => acks.release(AckStatus::Delivered),
            Err(e) => {
                acks.release(AckStatus::Failed);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: EventTime,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        let mut receipts = Receipts::default();
        let res = self.0.on_watermark(watermark, &mut receipts).await;
        Self::settle(receipts, res)
    }

    fn timer_interval(&self) -> Option<std::time::Duration> {
        self.0.timer_interval()
    }

    async fn on_timer(
        &mut self,
        now: tokio::time::Instant,
        _out: &mut Output,
    ) -> Result<(), EngineError> {
        let mut receipts = Receipts::default();
        let res = self.0.on_timer(now, &mut receipts).await;
        Self::settle(receipts, res)
    }

    async fn on_end(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        let mut receipts = Receipts::default();
        let res = self.0.on_end(&mut receipts).await;
        Self::settle(receipts, res)
    }

    async fn on_drain_keep(&mut self, _out: &mut Output) -> Result<(), EngineError> {
        let mut receipts = Receipts::default();
        let res = self.0.on_drain_keep(&mut receipts).await;
        Self::settle(receipts, res)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use arrow::array::RecordBatch;
    use arrow::datatypes::Schema;

    use super::*;
    use crate::record::{Ack, AckSet, Hold, Releaser};

    type Log = Arc<Mutex<Vec<AckStatus>>>;

    struct Probe(Log);
    impl Hold for Probe {
        fn release(self: Box<Self>, status: AckStatus) {
            self.0.lock().unwrap().push(status);
        }
    }

    /// Reports `outcome` for every write; keeps the holds of `AtCommit` writes until `on_end`
    /// (delivered) or `on_drain_keep` (failed), as a file sink does.
    struct Scripted {
        outcome: Result<Written, ()>,
        kept: AckSet,
    }

    #[async_trait]
    impl Sink for Scripted {
        async fn write(
            &mut self,
            batch: Batch,
            _receipts: &mut Receipts,
            _out: &mut Output,
        ) -> Result<Written, EngineError> {
            match self.outcome {
                Ok(Written::AtCommit) => {
                    self.kept.merge(batch.acks);
                    Ok(Written::AtCommit)
                }
                Ok(w) => Ok(w),
                Err(()) => Err(EngineError::internal("Out", "refused")),
            }
        }

        async fn on_end(&mut self, receipts: &mut Receipts) -> Result<(), EngineError> {
            receipts.delivered(std::mem::take(&mut self.kept));
            Ok(())
        }

        async fn on_drain_keep(&mut self, receipts: &mut Receipts) -> Result<(), EngineError> {
            receipts.failed(std::mem::take(&mut self.kept));
            Ok(())
        }
    }

    fn held(log: &Log) -> Batch {
        let mut b = Batch::new(RecordBatch::new_empty(Arc::new(Schema::empty())));
        b.acks
            .insert(Ack::new(Probe(log.clone()), &Releaser::default()));
        b
    }

    #[tokio::test]
    async fn holds_are_released_from_the_outcome_the_sink_reports() {
        use AckStatus::{Delivered, Failed};
        // (outcome, stopped with `drain: keep`, released after the write, released at the end)
        type Case = (Result<Written, ()>, bool, Vec<AckStatus>, Vec<AckStatus>);
        let cases: [Case; 4] = [
            (Ok(Written::Now), false, vec![Delivered], vec![Delivered]),
            (Ok(Written::AtCommit), false, vec![], vec![Delivered]),
            (Ok(Written::AtCommit), true, vec![], vec![Failed]),
            (Err(()), false, vec![Failed], vec![Failed]),
        ];
        for (outcome, keep, after_write, after_end) in cases {
            let log = Log::default();
            let mut stage = SinkStage(Box::new(Scripted {
                outcome,
                kept: AckSet::new(),
            }));
            let mut out = Output::new(1);
            let res = stage.process(0, held(&log), &mut out).await;
            assert_eq!(res.is_err(), outcome.is_err());
            assert_eq!(
                *log.lock().unwrap(),
                after_write,
                "{outcome:?} after the write"
            );
            if keep {
                stage.on_drain_keep(&mut out).await.unwrap();
            } else {
                stage.on_end(&mut out).await.unwrap();
            }
            assert_eq!(*log.lock().unwrap(), after_end, "{outcome:?} at the end");
        }
    }
}
