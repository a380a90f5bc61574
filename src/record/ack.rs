//! Acknowledgement holds: what a [`Batch`](super::Batch) carries so that its source input is
//! acknowledged only once everything derived from it was delivered.
//!
//! The model is Vector's `BatchNotifier`/`BatchStatus`. A source wraps what must happen when its
//! input is done (Pub/Sub: acknowledge the messages; the BigQuery feeder: save its high-water
//! mark) in a [`Hold`] and puts an [`AckToken`] on the batches it emits. Batches derived from
//! them carry clones in their [`AckSet`]. A clone ends in one of two ways:
//! - a sink reported its outcome and the runner released the batch's set with it
//!   ([`AckSet::release`]: [`AckStatus::Delivered`] or [`AckStatus::Failed`]);
//! - it was dropped: its rows were filtered out or absorbed into state (delivered), or the
//!   stage holding it was dropped because the run failed (failed: the runner sets the run's
//!   failure flag first).
//!
//! When the last clone goes, the token's status is final: failed if any clone failed or was
//! abandoned ([`AckSet::abandon`]) or the run failed, else delivered. The hold is then handed
//! to its [`Releaser`]; `Drop` does no I/O. The runner's release task calls
//! [`Hold::release`], which does the work (sends the acknowledgements, fsyncs the mark).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How the input behind a hold ended (Vector's `BatchStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Everything derived from it was written durably, filtered out or committed to state:
    /// acknowledge it.
    Delivered,
    /// Something derived from it will not be written (the run failed, or it was abandoned by
    /// `options.drain: keep`): release it as not processed, so it is redelivered.
    Failed,
}

/// What happens to a source's input once it is done. Called once, with the final status, by
/// the [`Releaser`] of the token it was wrapped in (never from `Drop`).
pub trait Hold: Send + Sync + 'static {
    fn release(self: Box<Self>, status: AckStatus);
}

/// A hold with no source behind it (tests, inline data).
impl Hold for () {
    fn release(self: Box<Self>, _status: AckStatus) {}
}

/// One shared acknowledgement hold; batches carry [`AckToken`]s (clones of one `Arc`).
pub struct Ack {
    hold: Option<Box<dyn Hold>>,
    /// A clone was released as failed, or abandoned.
    failed: AtomicBool,
    releaser: Releaser,
}

/// A clone of a hold; see the module documentation.
pub type AckToken = Arc<Ack>;

impl Ack {
    /// Wraps `hold`; it is released through `releaser` once every clone is gone.
    pub fn new(hold: impl Hold, releaser: &Releaser) -> AckToken {
        Arc::new(Ack {
            hold: Some(Box::new(hold)),
            failed: AtomicBool::new(false),
            releaser: releaser.clone(),
        })
    }

    /// A token with no source behind it (tests, inline data).
    pub fn none() -> AckToken {
        Ack::new((), &Releaser::default())
    }

    /// Marks the input as not processed: on release it is [`AckStatus::Failed`].
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Identity of the shared hold (its address; stable while a clone is alive).
    fn key(token: &AckToken) -> usize {
        Arc::as_ptr(token) as usize
    }
}

impl Drop for Ack {
    /// The last clone is gone: hand the hold to the releaser with its final status. No I/O.
    fn drop(&mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        let status = if self.failed.load(Ordering::SeqCst) || self.releaser.run_failed() {
            AckStatus::Failed
        } else {
            AckStatus::Delivered
        };
        self.releaser.hand_over(hold, status);
    }
}

/// Releases abandoned holds as not processed once their last clone is gone.
pub fn abandon(acks: &AckSet) {
    acks.abandon();
}

/// Sets of up to this many holds are searched linearly; larger ones keep a hash index. A batch
/// usually carries one or two holds (so it never builds an index); a pane of a window carries
/// one per absorbed source batch. Not tuned by measurement: any small bound keeps inserts O(1).
const LINEAR: usize = 16;

/// The holds a batch carries: each shared hold at most once, in the order first inserted.
///
/// Inserting is O(1) (a scan of at most [`LINEAR`] entries, else a hash lookup by the hold's
/// address); merging a set in is linear in its size. Cloning copies the tokens, not the index
/// (derived batches rarely grow; the index is rebuilt on the next insert).
#[derive(Default)]
pub struct AckSet {
    tokens: Vec<AckToken>,
    index: Option<HashSet<usize>>,
}

impl Clone for AckSet {
    fn clone(&self) -> Self {
        AckSet {
            tokens: self.tokens.clone(),
            index: None,
        }
    }
}

impl AckSet {
    pub fn new() -> Self {
        AckSet::default()
    }

    /// A set of one hold.
    pub fn one(token: AckToken) -> Self {
        AckSet {
            tokens: vec![token],
            index: None,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AckToken> {
        self.tokens.iter()
    }

    /// Adds `token` unless its hold is already in the set; returns whether it was added.
    pub fn insert(&mut self, token: AckToken) -> bool {
        if self.tokens.len() >= LINEAR && self.index.is_none() {
            self.index = Some(self.tokens.iter().map(Ack::key).collect());
        }
        let new = match &mut self.index {
            Some(index) => index.insert(Ack::key(&token)),
            None => !self.tokens.iter().any(|t| Arc::ptr_eq(t, &token)),
        };
        if new {
            self.tokens.push(token);
        }
        new
    }

    /// Adds clones of the holds of `other` that are not in the set (linear in `other`).
    pub fn extend_from(&mut self, other: &AckSet) {
        for t in &other.tokens {
            self.insert(t.clone());
        }
    }

    /// Moves the holds of `other` into the set (linear in `other`).
    pub fn merge(&mut self, other: AckSet) {
        if self.tokens.is_empty() {
            *self = other;
            return;
        }
        for t in other.tokens {
            self.insert(t);
        }
    }

    /// Empties the set (releasing its clones as dropped).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.index = None;
    }

    /// Marks every hold as not processed (`options.drain: keep`): each releases as failed when
    /// its last clone is gone.
    pub fn abandon(&self) {
        self.tokens.iter().for_each(|t| t.fail());
    }

    /// Releases this set's clones with `status` (a sink's outcome, applied by the runner).
    pub fn release(self, status: AckStatus) {
        if status == AckStatus::Failed {
            self.abandon();
        }
    }

    /// Bytes held by the set (state size accounting).
    pub fn heap_bytes(&self) -> usize {
        self.tokens.capacity() * std::mem::size_of::<AckToken>()
            + self
                .index
                .as_ref()
                .map_or(0, |i| i.capacity() * std::mem::size_of::<usize>())
    }
}

impl FromIterator<AckToken> for AckSet {
    fn from_iter<I: IntoIterator<Item = AckToken>>(iter: I) -> Self {
        let mut set = AckSet::new();
        for t in iter {
            set.insert(t);
        }
        set
    }
}

impl IntoIterator for AckSet {
    type Item = AckToken;
    type IntoIter = std::vec::IntoIter<AckToken>;

    fn into_iter(self) -> Self::IntoIter {
        self.tokens.into_iter()
    }
}

impl std::fmt::Debug for AckSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AckSet({})", self.tokens.len())
    }
}

/// Where holds go when their last clone is gone.
///
/// A run's releaser ([`Releaser::queued`], made by the runner and handed to sources through
/// `SourceSink::releaser`) queues them for the runner's release task, which calls
/// [`Hold::release`] outside any `Drop`. [`Releaser::inline`] releases at once, on the thread
/// that dropped the last clone: only for holds whose release is in-memory bookkeeping (a
/// Combine's written panes, `Deduplicate`'s keys) and for tests.
#[derive(Clone)]
pub struct Releaser {
    failed: Arc<AtomicBool>,
    queue: Option<Arc<Queue>>,
}

#[derive(Default)]
struct Queue {
    held: Mutex<Vec<(Box<dyn Hold>, AckStatus)>>,
    ready: tokio::sync::Notify,
    /// The run ended: holds still arriving are dropped unreleased (see [`Releaser::close`]).
    closed: AtomicBool,
}

impl Default for Releaser {
    /// Inline, with a failure flag of its own (tests, inline data).
    fn default() -> Self {
        Releaser::inline(Arc::default())
    }
}

impl Releaser {
    /// Releases each hold where its last clone drops; `failed` is the run's failure flag.
    pub fn inline(failed: Arc<AtomicBool>) -> Self {
        Releaser {
            failed,
            queue: None,
        }
    }

    /// Queues holds for [`Releaser::run`]; `failed` is the run's failure flag.
    pub fn queued(failed: Arc<AtomicBool>) -> Self {
        Releaser {
            failed,
            queue: Some(Arc::default()),
        }
    }

    /// The run's failure flag: set before stages are dropped, so their holds release as failed.
    pub fn failed(&self) -> &Arc<AtomicBool> {
        &self.failed
    }

    pub fn run_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn hand_over(&self, hold: Box<dyn Hold>, status: AckStatus) {
        match &self.queue {
            None => hold.release(status),
            Some(q) if q.closed.load(Ordering::SeqCst) => {
                // The safety net: nothing releases it any more. Its input is not acknowledged
                // (Pub/Sub handlers nack when dropped; a feeder's mark is not saved), so it is
                // read again.
                tracing::warn!(
                    ?status,
                    "An acknowledgement hold was released after its run ended; its input will be redelivered"
                );
                drop(hold);
            }
            Some(q) => {
                q.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((hold, status));
                q.ready.notify_one();
            }
        }
    }

    /// Releases the holds queued so far, in the order their last clones dropped.
    pub fn settle(&self) {
        let Some(q) = &self.queue else {
            return;
        };
        loop {
            let held = std::mem::take(&mut *q.held.lock().unwrap_or_else(|p| p.into_inner()));
            if held.is_empty() {
                return;
            }
            for (hold, status) in held {
                hold.release(status);
            }
        }
    }

    /// Releases queued holds as they arrive; never returns (the runner aborts it, then calls
    /// [`Releaser::close`]).
    pub async fn run(self) {
        let Some(q) = self.queue.clone() else {
            return std::future::pending().await;
        };
        loop {
            q.ready.notified().await;
            self.settle();
        }
    }

    /// Releases what is queued and closes the queue: a hold whose last clone drops later is
    /// not released (logged; its input is redelivered).
    pub fn close(&self) {
        self.settle();
        if let Some(q) = &self.queue {
            q.closed.store(true, Ordering::SeqCst);
        }
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe(Arc<Mutex<Vec<(u32, AckStatus)>>>, u32);
    impl Hold for Probe {
        fn release(self: Box<Self>, status: AckStatus) {
            self.0.lock().unwrap().push((self.1, status));
        }
    }

    #[test]
    fn a_set_holds_each_hold_once_in_insertion_order_at_any_size() {
        let log = Arc::default();
        let r = Releaser::default();
        let tokens: Vec<AckToken> = (0..40)
            .map(|i| Ack::new(Probe(Arc::clone(&log), i), &r))
            .collect();
        let mut set = AckSet::new();
        for round in 0..3 {
            for t in &tokens {
                assert_eq!(set.insert(t.clone()), round == 0);
            }
        }
        assert_eq!(set.len(), 40);
        let mut other: AckSet = tokens[30..].iter().cloned().collect();
        other.insert(Ack::none());
        set.merge(other);
        assert_eq!(set.len(), 41);
        assert!(set.iter().zip(&tokens).all(|(a, b)| Arc::ptr_eq(a, b)));
        let small: AckSet = tokens[..3]
            .iter()
            .cloned()
            .chain(tokens[..3].iter().cloned())
            .collect();
        assert_eq!(small.len(), 3);
        let mut copy = small.clone();
        copy.extend_from(&set);
        assert_eq!(copy.len(), 41);
    }

    #[test]
    fn the_last_clone_releases_with_the_worst_status() {
        let log: Arc<Mutex<Vec<(u32, AckStatus)>>> = Arc::default();
        let r = Releaser::default();
        let a = Ack::new(Probe(log.clone(), 1), &r);
        let b = Ack::new(Probe(log.clone(), 2), &r);
        let first = AckSet::one(a.clone());
        let second: AckSet = [a.clone(), b.clone()].into_iter().collect();
        drop((a, b));
        first.release(AckStatus::Delivered);
        assert!(log.lock().unwrap().is_empty(), "a clone is still held");
        second.release(AckStatus::Failed);
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, AckStatus::Failed), (2, AckStatus::Failed)]
        );
    }

    #[test]
    fn a_queued_releaser_releases_only_when_settled_and_drops_after_close() {
        let log: Arc<Mutex<Vec<(u32, AckStatus)>>> = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let r = Releaser::queued(failed.clone());
        drop(Ack::new(Probe(log.clone(), 1), &r));
        assert!(log.lock().unwrap().is_empty(), "not released inside Drop");
        r.settle();
        assert_eq!(*log.lock().unwrap(), vec![(1, AckStatus::Delivered)]);
        let held = Ack::new(Probe(log.clone(), 2), &r);
        failed.store(true, Ordering::SeqCst);
        drop(held);
        let late = Ack::new(Probe(log.clone(), 3), &r);
        r.close();
        drop(late);
        r.settle();
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, AckStatus::Delivered), (2, AckStatus::Failed)]
        );
    }
}
