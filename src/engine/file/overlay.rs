//! The overlay: record states the write-ahead log holds and the database file does not yet.
//!
//! Why: with a log, a batch is durable once its entry is synced; writing it into the database
//! as well (a B-tree update and a commit per batch) only repeats the work, on the thread every
//! caller waits for. So the writer keeps each logged change here, in memory, and a checkpoint
//! writes a whole generation of them into the database at once, on its own thread, where a key
//! written twice since the last checkpoint is written once.
//!
//! Invariants:
//! - a change is the key's whole state after it (the record with its stored response, or
//!   nothing), the same change the log entry of its batch carries; the newest one wins;
//! - the current generation shadows the frozen one, which shadows the database: whoever reads
//!   a key looks here first, in that order, and goes to the file only on a miss;
//! - a generation is frozen with the log mark that covers exactly its changes, and dropped only
//!   after the checkpoint that wrote them into the file has committed, so a reader that misses
//!   here and then opens a read transaction finds the change in the file;
//! - only the writer thread mutates the overlay.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::change::Change;
use crate::rules::key::KeyHash;
use crate::seeded::Seeded;

/// One generation of changes.
pub(crate) type Changes = HashMap<KeyHash, Change<Box<[u8]>>, Seeded>;

struct Generations {
    current: Changes,
    frozen: Option<Arc<Changes>>,
    /// No record put into the current generation expires before this (a bound: a later
    /// change may have replaced the record that set it).
    current_min_expiry: u64,
    frozen_min_expiry: u64,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            current: Changes::default(),
            frozen: None,
            current_min_expiry: u64::MAX,
            frozen_min_expiry: u64::MAX,
        }
    }
}

/// The two generations of changes not in the database file yet.
#[derive(Default)]
pub(crate) struct Overlay {
    gens: RwLock<Generations>,
}

impl Overlay {
    /// Calls `f` with the newest change of `hash`, or `None` when the overlay holds none (the
    /// file has the key's state). The lock is held during `f`: keep it short.
    pub(crate) fn with<T>(
        &self,
        hash: &KeyHash,
        f: impl FnOnce(Option<&Change<Box<[u8]>>>) -> T,
    ) -> T {
        let gens = self.gens.read();
        let slot = gens
            .current
            .get(hash)
            .or_else(|| gens.frozen.as_deref().and_then(|c| c.get(hash)));
        f(slot)
    }

    /// Whether the overlay holds a change of `hash`.
    pub(crate) fn contains(&self, hash: &KeyHash) -> bool {
        self.with(hash, |s| s.is_some())
    }

    /// Records `slot` as the newest state of `hash`; `expires_at` is the expiry time of the
    /// record it puts (none for a deletion).
    pub(crate) fn set(&self, hash: KeyHash, slot: Change<Box<[u8]>>, expires_at: Option<u64>) {
        let mut gens = self.gens.write();
        if let Some(t) = expires_at {
            gens.current_min_expiry = gens.current_min_expiry.min(t);
        }
        gens.current.insert(hash, slot);
    }

    /// Whether a record put into the overlay may have expired by `now`: when not, an expiry
    /// pass need not look at the overlay's records at all.
    pub(crate) fn may_expire_by(&self, now: u64) -> bool {
        let gens = self.gens.read();
        gens.current_min_expiry.min(gens.frozen_min_expiry) <= now
    }

    /// Calls `f` with every key's newest change (current generation first, then the frozen
    /// keys it does not shadow).
    pub(crate) fn each(&self, mut f: impl FnMut(&KeyHash, &Change<Box<[u8]>>)) {
        let gens = self.gens.read();
        for (h, s) in &gens.current {
            f(h, s);
        }
        if let Some(frozen) = gens.frozen.as_deref() {
            for (h, s) in frozen {
                if !gens.current.contains_key(h) {
                    f(h, s);
                }
            }
        }
    }

    /// Whether the current generation holds no change.
    pub(crate) fn is_empty(&self) -> bool {
        self.gens.read().current.is_empty()
    }

    /// Freezes the current generation for a checkpoint and starts an empty one; `None` when a
    /// frozen generation is still waiting (one checkpoint at a time).
    pub(crate) fn freeze(&self) -> Option<Arc<Changes>> {
        let mut gens = self.gens.write();
        if gens.frozen.is_some() {
            return None;
        }
        let changes = Arc::new(std::mem::take(&mut gens.current));
        gens.frozen = Some(Arc::clone(&changes));
        gens.frozen_min_expiry = std::mem::replace(&mut gens.current_min_expiry, u64::MAX);
        Some(changes)
    }

    /// The frozen generation is in the file now: readers find its changes there. Returns
    /// it, for the caller to drop where its deallocation costs nobody a wait.
    pub(crate) fn thaw(&self) -> Option<Arc<Changes>> {
        let mut gens = self.gens.write();
        gens.frozen_min_expiry = u64::MAX;
        gens.frozen.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: u8) -> Change<Box<[u8]>> {
        Change::Put {
            record: vec![b].into(),
            response: None,
        }
    }

    #[test]
    fn current_shadows_frozen_until_thawed() {
        let o = Overlay::default();
        let (a, b) = (KeyHash([1; 32]), KeyHash([2; 32]));
        o.set(a, put(1), Some(50));
        o.set(b, put(2), Some(70));
        assert!(!o.may_expire_by(49));
        assert!(o.may_expire_by(50));
        let frozen = o.freeze().unwrap();
        assert!(o.may_expire_by(50), "the frozen generation still counts");
        assert_eq!(frozen.len(), 2);
        assert!(o.freeze().is_none(), "one checkpoint at a time");
        o.set(a, Change::Delete, None);
        assert_eq!(o.with(&a, |s| s.cloned()), Some(Change::Delete));
        assert_eq!(o.with(&b, |s| s.cloned()), Some(put(2)));
        let mut seen = Vec::new();
        o.each(|h, s| seen.push((*h, s.clone())));
        seen.sort_by_key(|(h, _)| *h);
        assert_eq!(seen, vec![(a, Change::Delete), (b, put(2))]);
        o.thaw();
        assert!(!o.contains(&b));
        assert!(o.contains(&a));
        assert!(!o.may_expire_by(1000), "a deletion expires nothing");
        assert!(o.freeze().is_some());
    }
}
