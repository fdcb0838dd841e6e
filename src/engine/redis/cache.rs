//! Completed records kept in this process, so that a replay or a conflict on a completed key
//! is answered without a round trip to the server.
//!
//! Why: a completed record does not change until it expires or is purged, so a copy of it
//! answers every later `begin` of its key the way the server would: a replay of the same
//! response to the same fingerprint, a conflict to another one. In-flight records change on
//! every call, so they are never kept here; every `begin` that does not meet a completed
//! copy asks the server.
//!
//! Invariants:
//! - an entry is served only before its deadline, which is never later than the record's
//!   expiry: on the server's clock it is measured on this machine's monotonic clock from the
//!   moment the call that learned of it was sent (before the server read its time), so skew
//!   between the machine and the server does not stretch it; on the store's clock it is the
//!   record's expiry itself, read from that clock as the scripts do;
//! - a purge made through this store removes the entry before it is sent and again when it
//!   is answered, after every call of the key sent before it, which may have put the record
//!   back. A purge made by another machine does not reach this cache: this machine may replay
//!   the purged response until the entry's deadline (see `docs/distributed.md`);
//! - the entries of a shard hold at most a shard's share of the byte budget; the map and the
//!   shard are chosen by the secret-seeded hash (`seeded.rs`), so a client cannot crowd one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Instant;

use parking_lot::Mutex;

use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::KeyHash;
use crate::rules::response::Response;
use crate::seeded::{Prehashed, Seeded, WithHash};

const SHARDS: usize = 16;

/// Until when an entry may be served.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Deadline {
    /// This machine's monotonic clock (the server's clock decides).
    Instant(Instant),
    /// Milliseconds of the store's clock (the store's clock decides).
    Clock(u64),
}

struct Entry {
    fingerprint: Fingerprint,
    response: Response,
    deadline: Deadline,
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<WithHash<KeyHash>, Entry, Prehashed>,
    bytes: usize,
}

/// What the cache says of a `begin`.
pub(crate) enum Hit {
    Replay(Response),
    Conflict,
}

/// The cache of completed records.
pub(crate) struct ReplayCache {
    shards: Box<[Mutex<Shard>]>,
    seed: Seeded,
    /// Bytes each shard may hold; 0 turns the cache off.
    shard_budget: usize,
}

impl ReplayCache {
    pub(crate) fn new(budget_bytes: usize) -> ReplayCache {
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            seed: Seeded::new(),
            shard_budget: budget_bytes / SHARDS,
        }
    }

    fn at(&self, hash: &KeyHash) -> (&Mutex<Shard>, WithHash<KeyHash>) {
        let seeded = self.seed.hash_one(hash);
        let i = (seeded >> 32) as usize % SHARDS;
        (&self.shards[i], WithHash { seeded, key: *hash })
    }

    /// The answer to a `begin` of `hash` with `fp`, if a live completed copy decides it.
    /// `now_ms` is the store's clock, for entries kept on it.
    pub(crate) fn lookup(&self, hash: &KeyHash, fp: &Fingerprint, now_ms: u64) -> Option<Hit> {
        if self.shard_budget == 0 {
            return None;
        }
        let (shard, at) = self.at(hash);
        let mut shard = shard.lock();
        let entry = shard.entries.get(&at)?;
        let live = match entry.deadline {
            Deadline::Instant(t) => Instant::now() < t,
            Deadline::Clock(ms) => now_ms < ms,
        };
        if !live {
            if let Some(gone) = shard.entries.remove(&at) {
                shard.bytes -= gone.bytes;
            }
            return None;
        }
        Some(if entry.fingerprint == *fp {
            Hit::Replay(entry.response.clone())
        } else {
            Hit::Conflict
        })
    }

    /// Keeps the completed record of `hash` until `deadline`, making room if needed; a
    /// response larger than a shard's budget is not kept.
    pub(crate) fn insert(
        &self,
        hash: &KeyHash,
        fingerprint: Fingerprint,
        response: Response,
        deadline: Deadline,
    ) {
        let bytes = response.encoded_len() + 64;
        if bytes > self.shard_budget {
            return;
        }
        let (shard, at) = self.at(hash);
        let mut shard = shard.lock();
        if let Some(old) = shard.entries.remove(&at) {
            shard.bytes -= old.bytes;
        }
        // Evicts entries in the map's order, which the secret seed makes arbitrary to a
        // client, until the new one fits.
        while shard.bytes + bytes > self.shard_budget {
            let Some(victim) = shard.entries.keys().next().copied() else {
                break;
            };
            if let Some(gone) = shard.entries.remove(&victim) {
                shard.bytes -= gone.bytes;
            }
        }
        shard.bytes += bytes;
        shard.entries.insert(
            at,
            Entry {
                fingerprint,
                response,
                deadline,
                bytes,
            },
        );
    }

    /// Forgets the record of `hash` (a purge through this store).
    pub(crate) fn remove(&self, hash: &KeyHash) {
        let (shard, at) = self.at(hash);
        let mut shard = shard.lock();
        if let Some(gone) = shard.entries.remove(&at) {
            shard.bytes -= gone.bytes;
        }
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_parts(1, [b; 32])
    }

    #[test]
    fn entries_answer_until_their_deadline_only() {
        let cache = ReplayCache::new(1 << 20);
        let h = KeyHash::of_raw(b"s", b"k");
        let r = Response::without_headers(201, "x");
        cache.insert(&h, fp(1), r.clone(), Deadline::Clock(100));
        assert!(matches!(cache.lookup(&h, &fp(1), 99), Some(Hit::Replay(got)) if got == r));
        assert!(matches!(cache.lookup(&h, &fp(2), 99), Some(Hit::Conflict)));
        assert!(cache.lookup(&h, &fp(1), 100).is_none());
        assert_eq!(cache.len(), 0, "an expired entry is dropped when met");
    }

    #[test]
    fn the_byte_budget_holds_and_a_purge_forgets() {
        let cache = ReplayCache::new(SHARDS * 1_000);
        let far = Deadline::Clock(u64::MAX);
        for i in 0..1_000u32 {
            let h = KeyHash::of_raw(b"s", &i.to_le_bytes());
            cache.insert(
                &h,
                fp(1),
                Response::without_headers(200, vec![0u8; 200]),
                far,
            );
        }
        assert!(cache.shards.iter().all(|s| s.lock().bytes <= 1_000));
        assert!(cache.len() <= SHARDS * 3);
        let h = KeyHash::of_raw(b"s", b"big");
        cache.insert(
            &h,
            fp(1),
            Response::without_headers(200, vec![0u8; 2_000]),
            far,
        );
        assert!(cache.lookup(&h, &fp(1), 0).is_none(), "too large to keep");
        let h = KeyHash::of_raw(b"s", b"small");
        cache.insert(&h, fp(1), Response::without_headers(200, "x"), far);
        cache.remove(&h);
        assert!(cache.lookup(&h, &fp(1), 0).is_none());
        let off = ReplayCache::new(0);
        off.insert(&h, fp(1), Response::without_headers(200, "x"), far);
        assert!(off.lookup(&h, &fp(1), 0).is_none());
    }
}
