//! Live records per scope (rule C13), and in flight: the counts the file keeps beside its
//! records, and the changes a transaction makes to them.
//!
//! Why: one tenant must not fill the store. A cap on the live records of a scope needs that
//! scope's count at every first attempt, and counting records at open would cost a scan of the
//! whole file; so the file keeps the counts (`idem_scope_counts`, and `in_flight_records` in
//! the meta table), and whatever adds or removes a record moves them in the same transaction.
//! The writer keeps the same counts in memory to decide, and the file's are what it starts
//! from at open.
//!
//! Invariants: every transaction that inserts a record under a key that held none adds one to
//! the record's scope, and every one that removes a record subtracts one from its scope, both
//! through [`Deltas`], flushed into the tables before its commit; a record's scope is read from
//! its header alone ([`Record::scope_of`]), so a record damaged elsewhere still counts; a
//! scope's entry is removed when its count reaches zero, so the table holds only scopes with
//! records. The in-flight count moves the same way with each record's state.

use std::collections::HashMap;

use redb::{ReadableTable, Table};

use crate::format::record::{Hot, META_IN_FLIGHT, Record, State};
use crate::seeded::{Prehashed, Seeded, WithHash};

/// Changes to the counts, accumulated by one transaction (or one batch of the writer).
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    scopes: HashMap<Box<str>, i64, Seeded>,
    in_flight: i64,
}

/// Whether the encoded record `bytes` is in flight (a record that does not decode is not).
pub(crate) fn in_flight(bytes: &[u8]) -> bool {
    Hot::decode(bytes).is_ok_and(|h| h.state == State::InFlight)
}

impl Deltas {
    /// The encoded record `new` replaced `old` under one key (`None`: the key held none).
    pub(crate) fn replaced(&mut self, old: Option<&[u8]>, new: &[u8]) {
        match old {
            None => {
                if let Some(scope) = Record::scope_of(new) {
                    self.scope(scope, 1);
                }
                self.in_flight += i64::from(in_flight(new));
            }
            Some(old) => self.state_changed(in_flight(old), in_flight(new)),
        }
    }

    /// The encoded record `old` was removed.
    pub(crate) fn removed(&mut self, old: &[u8]) {
        self.gone(Record::scope_of(old), in_flight(old));
    }

    /// A record of `scope` (unknown: its header is damaged) was removed.
    pub(crate) fn gone(&mut self, scope: Option<&str>, in_flight: bool) {
        if let Some(scope) = scope {
            self.scope(scope, -1);
        }
        self.in_flight -= i64::from(in_flight);
    }

    /// A record of `scope` was added under a key that held none.
    pub(crate) fn added(&mut self, scope: &str, in_flight: bool) {
        self.scope(scope, 1);
        self.in_flight += i64::from(in_flight);
    }

    /// A record went from in flight or not to in flight or not, under the same key.
    pub(crate) fn state_changed(&mut self, was_in_flight: bool, is_in_flight: bool) {
        self.in_flight += i64::from(is_in_flight) - i64::from(was_in_flight);
    }

    fn scope(&mut self, scope: &str, by: i64) {
        match self.scopes.get_mut(scope) {
            Some(d) => *d += by,
            None => {
                self.scopes.insert(scope.into(), by);
            }
        }
    }

    /// The change this batch makes to `scope`'s count so far.
    pub(crate) fn of(&self, scope: &str) -> i64 {
        self.scopes.get(scope).copied().unwrap_or(0)
    }

    /// The change to the number of records in flight.
    pub(crate) fn in_flight(&self) -> i64 {
        self.in_flight
    }

    /// Writes the changes into the file's counts, in the transaction that made them.
    pub(crate) fn flush(
        &self,
        counts: &mut Table<&'static str, u64>,
        meta: &mut Table<&'static str, u64>,
    ) -> Result<(), redb::StorageError> {
        for (scope, d) in &self.scopes {
            if *d == 0 {
                continue;
            }
            let now = counts.get(&**scope)?.map_or(0, |g| g.value());
            match now.saturating_add_signed(*d) {
                0 => drop(counts.remove(&**scope)?),
                n => drop(counts.insert(&**scope, n)?),
            }
        }
        if self.in_flight != 0 {
            let now = meta.get(META_IN_FLIGHT)?.map_or(0, |g| g.value());
            meta.insert(META_IN_FLIGHT, now.saturating_add_signed(self.in_flight))?;
        }
        Ok(())
    }
}

/// The live records of every scope, as the writer decides with them, and the totals the
/// store's [`Stats`](crate::Stats) report.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    scopes: HashMap<Box<str>, u64, Seeded>,
    /// Live records in all scopes.
    total: u64,
    /// Of them, in flight.
    in_flight: u64,
}

impl Counts {
    /// Reads every scope's count from the file's table, and the number in flight from its
    /// meta table.
    pub(crate) fn load(
        counts: &impl ReadableTable<&'static str, u64>,
        meta: &impl ReadableTable<&'static str, u64>,
    ) -> Result<Counts, redb::StorageError> {
        let mut scopes = HashMap::with_hasher(Seeded::new());
        let mut total = 0u64;
        for entry in counts.iter()? {
            let (scope, n) = entry?;
            total = total.saturating_add(n.value());
            scopes.insert(scope.value().into(), n.value());
        }
        let in_flight = meta.get(META_IN_FLIGHT)?.map_or(0, |g| g.value());
        Ok(Counts {
            scopes,
            total,
            in_flight,
        })
    }

    /// `scope`'s live records, with the changes of the batch in hand.
    pub(crate) fn live(&self, scope: &str, pending: &Deltas) -> u64 {
        let committed = self.scopes.get(scope).copied().unwrap_or(0);
        committed.saturating_add_signed(pending.of(scope))
    }

    /// Live records in all scopes, and of them those in flight, as committed.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.total, self.in_flight)
    }

    /// Takes in a committed batch's changes.
    pub(crate) fn apply(&mut self, deltas: &Deltas) {
        for (scope, d) in &deltas.scopes {
            if *d == 0 {
                continue;
            }
            self.total = self.total.saturating_add_signed(*d);
            let now = self.scopes.get(&**scope).copied().unwrap_or(0);
            match now.saturating_add_signed(*d) {
                0 => drop(self.scopes.remove(&**scope)),
                n => drop(self.scopes.insert(scope.clone(), n)),
            }
        }
        self.in_flight = self.in_flight.saturating_add_signed(deltas.in_flight);
    }
}

/// Shards of [`Concurrent`]: enough that callers of many scopes rarely meet on one lock.
const SCOPE_SHARDS: usize = 64;

/// A scope with its seeded hash, computed once a call: it picks the shard and the bucket.
type HashedScope = WithHash<crate::Scope>;

type ScopeShard = parking_lot::Mutex<HashMap<HashedScope, u64, Prehashed>>;

/// The live records of every scope for the memory engine, whose calls run on their callers'
/// threads: a map per shard of scopes, each under its own lock, taken after the record's shard
/// lock and never before it.
pub(crate) struct Concurrent {
    shards: Box<[ScopeShard]>,
    seed: Seeded,
}

impl Concurrent {
    pub(crate) fn new() -> Concurrent {
        Concurrent {
            shards: (0..SCOPE_SHARDS)
                .map(|_| parking_lot::Mutex::new(HashMap::with_hasher(Prehashed)))
                .collect(),
            seed: Seeded::new(),
        }
    }

    fn shard(&self, scope: &crate::Scope) -> (&ScopeShard, HashedScope) {
        use std::hash::BuildHasher;
        let seeded = self.seed.hash_one(scope);
        // Bits 32 up pick the shard: the maps bucket on the low ones.
        let i = (seeded >> 32) as usize % SCOPE_SHARDS;
        let key = HashedScope {
            seeded,
            key: scope.clone(),
        };
        (&self.shards[i], key)
    }

    /// Counts one more record of `scope`, unless it holds `limit` already; true if counted.
    pub(crate) fn try_add(&self, scope: &crate::Scope, limit: u64) -> bool {
        let (shard, key) = self.shard(scope);
        let mut shard = shard.lock();
        let n = shard.entry(key).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one record of `scope` out.
    pub(crate) fn remove(&self, scope: &crate::Scope) {
        let (shard, key) = self.shard(scope);
        let mut shard = shard.lock();
        if let Some(n) = shard.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&key);
            }
        }
    }
}
