//! The hot index: a lock-free map in memory from key hash to a copy of the record's hot part
//! (and, for completed records, the response), answering duplicate checks without a disk read.
//!
//! Why: most retries and duplicate storms can be answered from memory (in progress, conflict,
//! replay), leaving the writer thread and the disk to first attempts and completions.
//!
//! Invariants (the full argument is in `docs/design.md`, "How the index may lag redb"):
//! - only the writer thread mutates the index, and only after the commit that made a change
//!   has returned, before the callers of that batch are answered;
//! - an entry is a copy of a committed record (in the file, or logged and in the overlay); the
//!   index may lack records (not touched since open, or their response dropped for the memory
//!   budget), never hold one the store lacks except during the moment between a commit and the
//!   writer's update;
//! - readers copy entries out and hold no guard after the lookup returns;
//! - buckets are chosen by a secret per-process seed (`seeded.rs`), never by the digest's own
//!   bits, which a client can grind.

use papaya::{HashMap, ResizeMode};

use crate::format::record::{Hot, State};
use crate::rules::key::KeyHash;
use crate::rules::response::Response;
use crate::seeded::Seeded;

/// What the index holds for a key.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) hot: Hot,
    /// The stored response of a completed record, if it is cached.
    pub(crate) response: Option<Response>,
}

/// The index.
pub(crate) struct HotIndex {
    map: HashMap<KeyHash, Entry, Seeded>,
}

impl HotIndex {
    pub(crate) fn with_capacity(capacity: usize) -> HotIndex {
        HotIndex {
            map: HashMap::builder()
                .capacity(capacity)
                .hasher(Seeded::new())
                .resize_mode(ResizeMode::Blocking)
                .build(),
        }
    }

    /// A copy of the entry for `hash`.
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<Entry> {
        self.map.pin().get(hash).cloned()
    }

    /// Writer thread only.
    pub(crate) fn insert(&self, hash: KeyHash, entry: Entry) {
        self.map.pin().insert(hash, entry);
    }

    /// Writer thread only.
    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.map.pin().remove(hash);
    }

    /// Drops the cached response of `hash` if the entry still belongs to reservation `token`.
    /// Writer thread only.
    pub(crate) fn drop_response(&self, hash: &KeyHash, token: u64) {
        let map = self.map.pin();
        if let Some(e) = map.get(hash)
            && e.hot.token == token
            && e.response.is_some()
        {
            let hot = e.hot;
            map.insert(
                *hash,
                Entry {
                    hot,
                    response: None,
                },
            );
        }
    }

    /// Whether the entry of `hash` holds exactly `hot`.
    pub(crate) fn holds(&self, hash: &KeyHash, hot: &Hot) -> bool {
        self.map.pin().get(hash).is_some_and(|e| e.hot == *hot)
    }

    /// Drops the entry of `hash` if it is still the completed record of reservation `token`;
    /// true if it did. Writer thread only.
    pub(crate) fn remove_completed(&self, hash: &KeyHash, token: u64) -> bool {
        let map = self.map.pin();
        let current = map
            .get(hash)
            .is_some_and(|e| e.hot.token == token && e.hot.state == State::Completed);
        if current {
            map.remove(hash);
        }
        current
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
