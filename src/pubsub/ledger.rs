//! The message ids of one `ReadFromPubSub`: deduplication at the source, and the watermark hold
//! of a restarted worker. Pure bookkeeping; [`DurableLedger`] adds the state-store commits.
//!
//! Deduplication (Beam's `id_attribute`, Dataflow's message-id dedupe): a message whose id
//! (the `id_attribute` value, else the Pub/Sub message id) was seen within the horizon is
//! dropped, also when both copies arrive in one pull. A dropped copy is not acknowledged on its
//! own while its original is still held downstream: it joins the original's hold, so both are
//! acknowledged when the original's output is written, and neither is lost if the worker dies
//! first. Ids are kept as 128-bit hashes (xxh3), 16 bytes each, so ten minutes of a busy
//! subscription fit in memory.
//!
//! With durable state (`options.state`), every id is committed before its message is emitted
//! (`p/{id}`: pulled, not yet acknowledged) and moved to `d/{id}` (acknowledged, value: its
//! expiry) once acknowledged. A restarted worker thus knows which messages its predecessor had
//! pulled and not finished: it drops those already acknowledged and holds the watermark until
//! the others came back (docs/guarantees.md).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use super::ack::Handlers;

/// Ids acknowledged (`true`) or nacked since the ledger last looked: filled by [`super::ack::MessageAcks`].
pub type Released = Arc<Mutex<Vec<(u128, bool)>>>;

/// The key of a message id.
pub fn key(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// What the ledger knows of an id.
pub enum Seen {
    /// Not seen within the horizon: process it.
    New,
    /// Seen, and its original is still held downstream: the copy joins that hold.
    Held(Arc<Handlers>),
    /// Seen and already acknowledged (or nacked, when the run failed): settle the copy at once.
    Settled,
}

struct Entry {
    expiry: i64,
    original: Weak<Handlers>,
}

/// Ids seen within the horizon.
pub struct Ledger {
    horizon_ms: i64,
    entries: HashMap<u128, Entry>,
    /// Ids by expiry, oldest first (an id may appear again with a later expiry).
    order: VecDeque<(i64, u128)>,
    released: Released,
}

impl Ledger {
    pub fn new(horizon: std::time::Duration) -> Self {
        Ledger {
            horizon_ms: i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX),
            entries: HashMap::new(),
            order: VecDeque::new(),
            released: Arc::default(),
        }
    }

    /// Where the holds of this source report acknowledged and nacked ids.
    pub fn released(&self) -> Released {
        self.released.clone()
    }

    /// Looks `key` up at `now_ms`.
    pub fn seen(&self, key: u128, now_ms: i64) -> Seen {
        match self.entries.get(&key) {
            Some(e) => match e.original.upgrade() {
                Some(acks) => Seen::Held(acks),
                None if e.expiry > now_ms => Seen::Settled,
                None => Seen::New,
            },
            None => Seen::New,
        }
    }

    /// Records `key` as first seen at `now_ms`, held by `original`.
    pub fn insert(&mut self, key: u128, original: Weak<Handlers>, now_ms: i64) {
        let expiry = now_ms.saturating_add(self.horizon_ms);
        self.entries.insert(key, Entry { expiry, original });
        self.order.push_back((expiry, key));
    }

    /// Records `key` as acknowledged until `expiry` (restored from a checkpoint).
    pub fn insert_settled(&mut self, key: u128, expiry: i64) {
        self.entries.insert(
            key,
            Entry {
                expiry,
                original: Weak::new(),
            },
        );
        self.order.push_back((expiry, key));
    }

    /// Forgets ids whose horizon passed; an id whose original is still held (a long window)
    /// stays until it is released. Returns the forgotten ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<u128> {
        let mut gone = Vec::new();
        while let Some(&(expiry, key)) = self.order.front() {
            if expiry > now_ms {
                break;
            }
            self.order.pop_front();
            let Some(e) = self.entries.get(&key) else {
                continue;
            };
            if e.expiry != expiry {
                // Re-inserted later: its newer entry in `order` decides.
                continue;
            }
            if e.original.strong_count() > 0 {
                let later = now_ms.saturating_add(self.horizon_ms);
                if let Some(e) = self.entries.get_mut(&key) {
                    e.expiry = later;
                }
                self.order.push_back((later, key));
                continue;
            }
            self.entries.remove(&key);
            gone.push(key);
        }
        gone
    }

    /// Ids released since the last call, with whether they were acknowledged.
    pub fn take_released(&self) -> Vec<(u128, bool)> {
        std::mem::take(&mut *self.released.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The expiry an id acknowledged now is remembered until.
    pub fn expiry_from(&self, now_ms: i64) -> i64 {
        now_ms.saturating_add(self.horizon_ms)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The ids a restarted worker waits for: pulled by its predecessor, not acknowledged.
#[derive(Debug, Default)]
pub struct Expected {
    ids: HashSet<u128>,
}

impl Expected {
    pub fn new(ids: HashSet<u128>) -> Self {
        Expected { ids }
    }

    /// `key` came back; true when it was the last one awaited.
    pub fn arrived(&mut self, key: u128) -> bool {
        self.ids.remove(&key) && self.ids.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn clear(&mut self) {
        self.ids.clear();
    }
}

/// A store key for an id: `p/{hex}` or `d/{hex}`.
pub fn store_key(prefix: char, key: u128) -> String {
    format!("{prefix}/{key:032x}")
}

/// Parses [`store_key`] back.
pub fn parse_store_key(k: &str) -> Option<(char, u128)> {
    let (prefix, hex) = k.split_once('/')?;
    let prefix = prefix.chars().next().filter(|_| prefix.len() == 1)?;
    Some((prefix, u128::from_str_radix(hex, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_new_held_settled_then_new_again_after_the_horizon() {
        let mut l = Ledger::new(std::time::Duration::from_secs(600));
        let k = key("event-1");
        assert!(matches!(l.seen(k, 0), Seen::New));
        let original = super::super::ack::MessageAcks::for_test();
        l.insert(k, original.handlers(), 1_000);
        assert!(matches!(l.seen(k, 2_000), Seen::Held(_)));
        drop(original);
        assert!(matches!(l.seen(k, 2_000), Seen::Settled));
        assert!(matches!(l.seen(k, 601_000), Seen::New));
        assert_eq!(l.expire(600_999), Vec::<u128>::new());
        assert_eq!(l.expire(601_000), vec![k]);
        assert!(l.is_empty());
    }

    #[test]
    fn an_id_still_held_past_the_horizon_is_kept_until_released() {
        let mut l = Ledger::new(std::time::Duration::from_secs(10));
        let k = key("m");
        let original = super::super::ack::MessageAcks::for_test();
        l.insert(k, original.handlers(), 0);
        assert!(l.expire(20_000).is_empty());
        assert!(matches!(l.seen(k, 20_000), Seen::Held(_)));
        drop(original);
        assert!(matches!(l.seen(k, 25_000), Seen::Settled));
        assert_eq!(l.expire(30_000), vec![k]);
    }

    #[test]
    fn store_keys_round_trip_and_expected_ids_count_down() {
        let k = key("abc");
        assert_eq!(parse_store_key(&store_key('p', k)), Some(('p', k)));
        assert_eq!(parse_store_key("meta"), None);
        let mut e = Expected::new([1u128, 2].into_iter().collect());
        assert!(!e.arrived(3));
        assert!(!e.arrived(1));
        assert!(e.arrived(2));
        assert!(e.is_empty());
    }
}
