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
//! - a batch's changes wait unpublished, seen by the writer alone, until the batch is durable
//!   (its log entry synced, or the checkpoint that carries them committed), so no reader sees
//!   a state that a power loss could still take back; they are published (moved to the current
//!   generation) once it is, or written into the file by the checkpoint they ride with;
//! - the unpublished changes shadow the current generation, which shadows the frozen one,
//!   which shadows the database: whoever reads a key looks here first, in that order (readers
//!   from the current generation on), and goes to the file only on a miss;
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
    /// The running batch's changes, not durable yet: the writer's alone.
    unpublished: Changes,
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
            unpublished: Changes::default(),
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
    /// Calls `f` with the newest published change of `hash`, or `None` when the overlay holds
    /// none (the file has the key's durable state): a reader's view. The lock is held during
    /// `f`: keep it short.
    pub(crate) fn with<T>(
        &self,
        hash: &KeyHash,
        f: impl FnOnce(Option<&Change<Box<[u8]>>>) -> T,
    ) -> T {
        let gens = self.gens.read();
        f(gens.published(hash))
    }

    /// [`with`](Overlay::with) in the writer's view: the running batch's unpublished changes
    /// first.
    pub(crate) fn with_own<T>(
        &self,
        hash: &KeyHash,
        f: impl FnOnce(Option<&Change<Box<[u8]>>>) -> T,
    ) -> T {
        let gens = self.gens.read();
        f(gens.unpublished.get(hash).or_else(|| gens.published(hash)))
    }

    /// Whether the overlay holds a change of `hash`, in the writer's view.
    pub(crate) fn contains(&self, hash: &KeyHash) -> bool {
        self.with_own(hash, |s| s.is_some())
    }

    /// Records `slot` as the newest state of `hash`, unpublished until
    /// [`publish`](Overlay::publish); `expires_at` is the expiry time of the record it puts
    /// (none for a deletion).
    pub(crate) fn set(&self, hash: KeyHash, slot: Change<Box<[u8]>>, expires_at: Option<u64>) {
        let mut gens = self.gens.write();
        if let Some(t) = expires_at {
            gens.current_min_expiry = gens.current_min_expiry.min(t);
        }
        gens.unpublished.insert(hash, slot);
    }

    /// The running batch is durable: its changes join the current generation, where readers
    /// see them.
    pub(crate) fn publish(&self) {
        let mut gens = self.gens.write();
        if gens.unpublished.is_empty() {
            return;
        }
        let unpublished = std::mem::take(&mut gens.unpublished);
        gens.current.extend(unpublished);
    }

    /// Forgets changes never published: those of a batch that failed (the store is poisoned).
    pub(crate) fn discard_unpublished(&self) {
        let mut gens = self.gens.write();
        if !gens.unpublished.is_empty() {
            gens.unpublished = Changes::default();
        }
    }

    /// Whether a record put into the overlay may have expired by `now`: when not, an expiry
    /// pass need not look at the overlay's records at all. (The current generation's bound
    /// covers the unpublished changes, which join it.)
    pub(crate) fn may_expire_by(&self, now: u64) -> bool {
        let gens = self.gens.read();
        gens.current_min_expiry.min(gens.frozen_min_expiry) <= now
    }

    /// Calls `f` with every key's newest change in the writer's view (the unpublished changes
    /// first, then the current generation's keys they do not shadow, then the frozen ones).
    pub(crate) fn each(&self, mut f: impl FnMut(&KeyHash, &Change<Box<[u8]>>)) {
        let gens = self.gens.read();
        for (h, s) in &gens.unpublished {
            f(h, s);
        }
        for (h, s) in &gens.current {
            if !gens.unpublished.contains_key(h) {
                f(h, s);
            }
        }
        if let Some(frozen) = gens.frozen.as_deref() {
            for (h, s) in frozen {
                if !gens.unpublished.contains_key(h) && !gens.current.contains_key(h) {
                    f(h, s);
                }
            }
        }
    }

    /// Whether the current generation and the unpublished changes hold no change.
    pub(crate) fn is_empty(&self) -> bool {
        let gens = self.gens.read();
        gens.current.is_empty() && gens.unpublished.is_empty()
    }

    /// Freezes the current generation for a checkpoint and starts an empty one; `None` when a
    /// frozen generation is still waiting (one checkpoint at a time). Unpublished changes ride
    /// with it into the file but stay out of readers' sight: readers see the frozen generation
    /// as it was published until the checkpoint has committed and the generation is thawed,
    /// and then find them in the file.
    pub(crate) fn freeze(&self) -> Option<Arc<Changes>> {
        let mut gens = self.gens.write();
        if gens.frozen.is_some() {
            return None;
        }
        let published = std::mem::take(&mut gens.current);
        gens.frozen_min_expiry = std::mem::replace(&mut gens.current_min_expiry, u64::MAX);
        if gens.unpublished.is_empty() {
            let changes = Arc::new(published);
            gens.frozen = Some(Arc::clone(&changes));
            return Some(changes);
        }
        let unpublished = std::mem::take(&mut gens.unpublished);
        let mut carried = published.clone();
        carried.extend(unpublished);
        gens.frozen = Some(Arc::new(published));
        Some(Arc::new(carried))
    }

    /// The frozen generation is in the file now: readers find its changes there. Returns
    /// it, for the caller to drop where its deallocation costs nobody a wait.
    pub(crate) fn thaw(&self) -> Option<Arc<Changes>> {
        let mut gens = self.gens.write();
        gens.frozen_min_expiry = u64::MAX;
        gens.frozen.take()
    }
}

impl Generations {
    /// The newest published change of `hash`.
    fn published(&self, hash: &KeyHash) -> Option<&Change<Box<[u8]>>> {
        self.current
            .get(hash)
            .or_else(|| self.frozen.as_deref().and_then(|c| c.get(hash)))
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
        o.publish();
        assert!(!o.may_expire_by(49));
        assert!(o.may_expire_by(50));
        let frozen = o.freeze().unwrap();
        assert!(o.may_expire_by(50), "the frozen generation still counts");
        assert_eq!(frozen.len(), 2);
        assert!(o.freeze().is_none(), "one checkpoint at a time");
        o.set(a, Change::Delete, None);
        o.publish();
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

    #[test]
    fn a_batch_is_unseen_by_readers_until_published_and_rides_a_checkpoint_unseen() {
        let o = Overlay::default();
        let (a, b) = (KeyHash([1; 32]), KeyHash([2; 32]));
        o.set(a, put(1), Some(50));
        o.publish();
        o.set(a, put(2), Some(60));
        o.set(b, put(3), Some(70));
        assert_eq!(
            o.with(&a, |s| s.cloned()),
            Some(put(1)),
            "the published state"
        );
        assert_eq!(o.with(&b, |s| s.cloned()), None, "the file's state");
        assert_eq!(
            o.with_own(&a, |s| s.cloned()),
            Some(put(2)),
            "the writer's own"
        );
        assert!(o.contains(&b));
        let mut seen = Vec::new();
        o.each(|h, s| seen.push((*h, s.clone())));
        seen.sort_by_key(|(h, _)| *h);
        assert_eq!(seen, vec![(a, put(2)), (b, put(3))]);
        // A checkpoint carries the batch into the file, readers still seeing what was
        // published until it is thawed.
        let carried = o.freeze().unwrap();
        assert_eq!(carried.get(&a), Some(&put(2)));
        assert_eq!(carried.get(&b), Some(&put(3)));
        assert_eq!(o.with(&a, |s| s.cloned()), Some(put(1)));
        assert_eq!(o.with(&b, |s| s.cloned()), None);
        o.thaw();
        assert!(o.is_empty());
        // A failed batch's changes are never seen.
        o.set(b, put(4), Some(80));
        o.discard_unpublished();
        o.publish();
        assert_eq!(o.with(&b, |s| s.cloned()), None);
    }
}
