//! The memory engine: `Durability::Memory` without a database, a writer thread or a log.
//!
//! Why: a store that keeps nothing on disk has nothing to batch, order or recover, so handing
//! every operation to a writer thread only adds two thread hand-offs per request (most of the
//! cost of a begin-then-complete pair). Here each operation is decided on the caller's own
//! thread, under the lock of the one shard that holds its key, with the same state machine
//! (`machine`) as the writer, so both engines answer every sequence of calls alike.
//!
//! Invariants:
//! - a key's record is read, decided and changed under its shard's lock only, so two calls on
//!   one key are ordered, and calls on keys of different shards never wait for each other;
//! - a completed record always holds its response (there is no file to read it back from);
//! - fencing tokens come from one counter and grow store-wide (C8);
//! - every change of a record's expiry pushes `(expires_at, hash)` on its shard's expiry heap,
//!   so a pass that pops the due entries finds every expired record; an entry whose record has
//!   since moved on (another expiry, or gone) is skipped, and the heap is rebuilt from the
//!   records when it holds more than four entries a record (plus 1,024);
//! - every call that changes a record checks, under its shard's lock, that the store is not
//!   closed, and `close` passes through every shard's lock after marking the store closed: a
//!   call either finished before `close` returned, or is refused;
//! - no lock is held while a caller's reply is delivered or a response is dropped elsewhere.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::backend::{Claim, Completion};
use crate::config::Terms;
use crate::engine::{Answer, Engine, ExpireReport, Release, Shared};
use crate::error::{BeginError, CompleteError, LeaseError, Unavailable};
use crate::format::point;
use crate::format::record::{Hot, Record, State};
use crate::format::scope_count::Concurrent;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::machine::{self, BeginDecision, HolderRefusal, lease_refusal};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::seeded::{Prehashed, Seeded, WithHash};
use crate::stats::{Stats, add, bump, count_fenced, count_takeover};
use crate::view::{CheckReport, MAX_PROBLEMS, RecordInfo};

/// Shards of the key space: enough that 2-64 threads rarely meet on one lock.
const SHARDS: usize = 64;

/// A record as the memory engine keeps it.
struct Held {
    hot: Hot,
    scope: Scope,
    key: Key,
    /// Set exactly when `hot.state` is `Completed`.
    response: Option<Response>,
    /// The last recovery point, while not completed; `hot.response_len` is its encoded
    /// length, as in a file, so that the state machine reads it alike.
    point: Option<RecoveryPoint>,
}

/// A record's key hash with its seeded hash, computed once a call: its bits 32 up pick the
/// shard, its low bits the bucket in the shard's map, so the map need not hash again.
type Hashed = WithHash<KeyHash>;

#[derive(Default)]
struct Shard {
    records: HashMap<Hashed, Held, Prehashed>,
    /// `(expires_at, hash)` of every expiry a record of this shard has had; see the module
    /// invariants.
    due: BinaryHeap<Reverse<(u64, KeyHash)>>,
}

impl Shard {
    /// Inserts or replaces the record of `at`; returns the one replaced.
    fn put(&mut self, at: Hashed, held: Held) -> Option<Held> {
        let expires_at = held.hot.expires_at;
        let old = self.records.insert(at, held);
        if old.as_ref().is_none_or(|o| o.hot.expires_at != expires_at) {
            self.expiry_moved(at.key, expires_at);
        }
        old
    }

    /// Changes the record of `at` in place, if there is one.
    fn update<T>(&mut self, at: Hashed, f: impl FnOnce(&mut Held) -> T) -> Option<T> {
        let held = self.records.get_mut(&at)?;
        let before = held.hot.expires_at;
        let out = f(held);
        let after = held.hot.expires_at;
        if after != before {
            self.expiry_moved(at.key, after);
        }
        Some(out)
    }

    fn expiry_moved(&mut self, hash: KeyHash, expires_at: u64) {
        self.due.push(Reverse((expires_at, hash)));
        // Leftover entries of records that moved on or left are popped when due; bound them
        // so a long TTL with many releases cannot grow the heap without limit.
        if self.due.len() > 4 * self.records.len() + 1024 {
            self.due = self
                .records
                .iter()
                .map(|(h, r)| Reverse((r.hot.expires_at, h.key)))
                .collect();
        }
    }
}

/// The memory engine.
pub(crate) struct MemoryEngine {
    /// What the store and the engine share; the inherent methods take it as a parameter, so
    /// that tests can drive them on a `Shared` of their own.
    shared: Arc<Shared>,
    shards: Box<[Mutex<Shard>]>,
    /// Every shard's map and the choice of shard hash with this one seed (`seeded.rs`).
    seed: Seeded,
    /// The live records of each scope (C13).
    scopes: Concurrent,
    next_token: AtomicU64,
    /// Where the next expiry pass starts, so passes share out the shards.
    expire_from: AtomicUsize,
}

impl MemoryEngine {
    pub(crate) fn new(shared: Arc<Shared>) -> MemoryEngine {
        let per_shard = shared.config.index_capacity / SHARDS;
        let seed = Seeded::new();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    records: HashMap::with_capacity_and_hasher(per_shard, Prehashed),
                    due: BinaryHeap::new(),
                })
            })
            .collect();
        MemoryEngine {
            shared,
            shards,
            seed,
            scopes: Concurrent::new(),
            next_token: AtomicU64::new(1),
            expire_from: AtomicUsize::new(0),
        }
    }

    /// The shard of `hash`, and its key in the shard's map.
    fn shard(&self, hash: &KeyHash) -> (&Mutex<Shard>, Hashed) {
        let seeded = self.seed.hash_one(hash);
        // Bits 32-37 of the seeded hash: a shard's map buckets on the low bits and tags on the
        // top seven, so these add no correlation within a shard, and a client cannot aim its
        // keys at one shard's lock.
        let i = (seeded >> 32) as usize % SHARDS;
        (&self.shards[i], Hashed { seeded, key: *hash })
    }

    /// Records held now, expired ones not removed yet included.
    /// The records held, and of them those in flight: one pass over the shards, each under
    /// its lock in turn (so the pair is not one snapshot, but each shard's part is).
    fn census(&self) -> (usize, u64) {
        let mut live = 0;
        let mut in_flight = 0u64;
        for shard in self.shards.iter() {
            let shard = shard.lock();
            live += shard.records.len();
            in_flight += shard
                .records
                .values()
                .filter(|h| h.hot.state == State::InFlight)
                .count() as u64;
        }
        (live, in_flight)
    }

    /// Decides a `begin` (C1-C5, C8, C9) and reserves the key when the caller must execute.
    pub(crate) fn begin(
        &self,
        shared: &Shared,
        hash: KeyHash,
        (scope, key): (&Scope, &Key),
        (fp, terms): (&Fingerprint, Terms),
    ) -> Result<Claim, BeginError> {
        let config = &shared.config;
        let counters = &shared.counters;
        let now = shared.now();
        let (shard, at) = self.shard(&hash);
        let mut shard = shard.lock();
        shared.check()?;
        let current = shard.records.get(&at);
        match machine::decide_begin(current.map(|r| &r.hot), fp, now) {
            // A new record is counted in by the guard, or refused when its scope is full.
            BeginDecision::Execute { .. }
                if current.is_none()
                    && !self.scopes.try_add(scope, config.max_records_per_scope) =>
            {
                drop(shard);
                bump(&counters.scope_full);
                Err(BeginError::ScopeFull {
                    limit: config.max_records_per_scope,
                })
            }
            BeginDecision::Execute { takeover } => {
                let token = self.next_token.fetch_add(1, Ordering::Relaxed);
                let (lease_ms, ttl_ms) = (terms.lease_ms(), terms.ttl_ms());
                // A takeover inherits the record's recovery point (P2).
                let (hot, recovery) = match current.filter(|_| takeover) {
                    Some(old) if old.point.is_some() => (
                        machine::taken_over(&old.hot, token, now, lease_ms, ttl_ms),
                        old.point.clone(),
                    ),
                    _ => (machine::reserved(*fp, token, now, lease_ms, ttl_ms), None),
                };
                let lease_deadline = hot.lease_deadline;
                let held = Held {
                    hot,
                    scope: scope.clone(),
                    key: key.clone(),
                    response: None,
                    point: recovery.clone(),
                };
                let old = shard.put(at, held);
                drop(shard);
                drop(old);
                bump(&counters.executes);
                if takeover {
                    count_takeover(shared);
                    crate::trace::takeover(&hash, token, recovery.is_some());
                }
                Ok(Claim::Execute {
                    token,
                    lease_deadline,
                    recovery,
                })
            }
            BeginDecision::Replay => match current.and_then(|r| r.response.clone()) {
                Some(response) => {
                    drop(shard);
                    bump(&counters.replays);
                    Ok(Claim::Replay(response))
                }
                // Not reachable while the invariant holds; executing again would break C1.
                None => Err(BeginError::Unavailable(Unavailable::Corrupted {
                    detail: format!("completed record {hash:?} holds no response"),
                })),
            },
            BeginDecision::InProgress => {
                drop(shard);
                bump(&counters.in_progress);
                Ok(Claim::InProgress {
                    retry_after: config.retry_after,
                })
            }
            BeginDecision::Conflict => {
                drop(shard);
                bump(&counters.conflicts);
                Ok(Claim::Conflict)
            }
            // A memory store never stops without closing: no outcome is unknown.
            BeginDecision::OutcomeUnknown => {
                drop(shard);
                bump(&counters.outcome_unknown);
                Ok(Claim::OutcomeUnknown)
            }
        }
    }

    /// Stores the response of reservation `token` (C3, C7, C8), or releases the key when the
    /// cache policy does not keep its status.
    pub(crate) fn complete(
        &self,
        shared: &Shared,
        hash: KeyHash,
        token: u64,
        response: Response,
        terms: Terms,
    ) -> Result<Completion, CompleteError> {
        let counters = &shared.counters;
        let now = shared.now();
        let (shard, at) = self.shard(&hash);
        let mut shard = shard.lock();
        shared.check()?;
        let current = shard.records.get(&at).map(|r| r.hot);
        if let Err(refusal) = machine::check_holder(current.as_ref(), token) {
            drop(shard);
            return Err(match refusal {
                HolderRefusal::Fenced { current } => {
                    count_fenced(shared, &hash, (token, current));
                    CompleteError::Fenced { token, current }
                }
                HolderRefusal::NotReserved => CompleteError::NotReserved { token },
            });
        }
        if !terms.cache_policy().keeps(response.status()) {
            self.let_go(shard, at, false);
            bump(&counters.releases);
            shared.waiters.wake(&hash);
            return Ok(Completion::Released);
        }
        let (len, ttl) = (response.encoded_len(), terms.ttl_ms());
        let stored = shard.update(at, |held| {
            held.hot = machine::completed(held.hot, response.status(), len, now, ttl);
            held.response = Some(response);
            held.point = None;
        });
        drop(shard);
        if stored.is_none() {
            return Err(CompleteError::NotReserved { token });
        }
        bump(&counters.completions);
        shared.waiters.wake(&hash);
        Ok(Completion::Stored)
    }

    /// Releases reservation `token` (C6); `explicit`: by its holder, not by a dropped
    /// reservation (E6).
    pub(crate) fn release(
        &self,
        shared: &Shared,
        (hash, token): (KeyHash, u64),
        explicit: bool,
    ) -> Result<(), LeaseError> {
        let (shard, at) = self.shard(&hash);
        let shard = shard.lock();
        shared.check()?;
        let current = shard.records.get(&at).map(|r| r.hot);
        machine::check_holder(current.as_ref(), token).map_err(|r| lease_refusal(r, token))?;
        self.let_go(shard, at, explicit);
        bump(&shared.counters.releases);
        shared.waiters.wake(&hash);
        Ok(())
    }

    /// Lets go of the held record of `at` (C6, P3, E6), as `machine::released` says: removes
    /// it, or keeps it under a fresh token (with its point and its lease ended). `explicit`:
    /// the holder released it, rather than dropping it or failing. Drops the shard's lock.
    fn let_go(&self, mut shard: parking_lot::MutexGuard<'_, Shard>, at: Hashed, explicit: bool) {
        let next_token = &self.next_token;
        let kept = shard.update(at, |held| {
            match machine::released(held.hot, 0, explicit) {
                Some(hot) if held.point.is_some() || hot.state == State::OutcomeUnknown => {
                    // A token is taken only for a record kept, as the file engine does.
                    let token = next_token.fetch_add(1, Ordering::Relaxed);
                    held.hot = Hot { token, ..hot };
                    true
                }
                _ => false,
            }
        });
        if kept == Some(true) {
            return;
        }
        let old = shard.records.remove(&at);
        self.count_out(old.as_ref());
        drop(shard);
        drop(old);
    }

    /// Saves `point` as the recovery point of reservation `token` (P1).
    pub(crate) fn save_point(
        &self,
        shared: &Shared,
        hash: KeyHash,
        token: u64,
        point: RecoveryPoint,
    ) -> Result<(), LeaseError> {
        let (mut shard, at) = self.held_shard(shared, (&hash, token))?;
        let len = u32::try_from(point::encoded_len(&point)).unwrap_or(u32::MAX);
        shard.update(at, |held| {
            held.hot.response_len = len;
            held.point = Some(point);
        });
        drop(shard);
        bump(&shared.counters.points_saved);
        Ok(())
    }

    /// Extends the lease of reservation `token`; returns the new deadline (C8).
    pub(crate) fn renew(
        &self,
        shared: &Shared,
        (hash, token): (KeyHash, u64),
        terms: Terms,
    ) -> Result<u64, LeaseError> {
        let now = shared.now();
        let lease_deadline = now.saturating_add(terms.lease_ms());
        let (mut shard, at) = self.held_shard(shared, (&hash, token))?;
        shard.update(at, |held| {
            held.hot.lease_deadline = lease_deadline;
            held.hot.expires_at = held.hot.expires_at.max(lease_deadline);
        });
        Ok(lease_deadline)
    }

    /// Removes the record, whatever its state; true if there was one.
    pub(crate) fn purge(&self, shared: &Shared, hash: &KeyHash) -> Result<bool, Unavailable> {
        let (shard, at) = self.shard(hash);
        let mut shard = shard.lock();
        shared.check()?;
        let old = shard.records.remove(&at);
        self.count_out(old.as_ref());
        drop(shard);
        if old.is_some() {
            shared.waiters.wake(hash);
        }
        Ok(old.is_some())
    }

    /// Counts a removed record out of its scope (C13). Called under the record's shard lock,
    /// so that a first attempt in the scope never sees a record counted that is already gone.
    fn count_out(&self, old: Option<&Held>) {
        if let Some(old) = old {
            self.scopes.remove(&old.scope);
        }
    }

    /// Waits for every call that took a shard's lock before now; called once the store is
    /// marked closed, so every later call is refused.
    pub(crate) fn drain_calls(&self) {
        for shard in self.shards.iter() {
            drop(shard.lock());
        }
    }

    /// The record, unless absent or expired (C9).
    pub(crate) fn get(&self, hash: &KeyHash, now: u64) -> Option<RecordInfo> {
        let (shard, at) = self.shard(hash);
        let shard = shard.lock();
        let held = shard.records.get(&at)?;
        (!machine::expired(&held.hot, now)).then(|| info(held))
    }

    /// Removes up to about `limit` expired records, looking at no more than `limit` heap
    /// entries (C9).
    pub(crate) fn expire(&self, shared: &Shared, limit: usize) -> ExpireReport {
        let now = shared.now();
        let mut report = ExpireReport::default();
        let start = self.expire_from.fetch_add(1, Ordering::Relaxed) % SHARDS;
        for i in 0..SHARDS {
            if report.scanned >= limit {
                break;
            }
            let mut gone = Vec::new();
            let mut shard = self.shards[(start + i) % SHARDS].lock();
            while report.scanned < limit {
                match shard.due.peek() {
                    Some(Reverse((at, _))) if *at <= now => {}
                    _ => break,
                }
                let Some(Reverse((due_at, hash))) = shard.due.pop() else {
                    break;
                };
                report.scanned += 1;
                let at = Hashed {
                    seeded: self.seed.hash_one(hash),
                    key: hash,
                };
                if shard
                    .records
                    .get(&at)
                    .is_some_and(|r| r.hot.expires_at == due_at && machine::expired(&r.hot, now))
                {
                    let old = shard.records.remove(&at);
                    self.count_out(old.as_ref());
                    gone.extend(old.map(|old| (hash, old)));
                    report.removed += 1;
                }
            }
            drop(shard);
            for (hash, old) in gone {
                drop(old);
                shared.waiters.wake(&hash);
            }
        }
        add(&shared.counters.expired_removed, report.removed);
        report
    }

    /// The live records, by key hash, those of `scope` only if given, at most `limit`. Keeps
    /// only the `limit` lowest hashes while it walks the shards.
    pub(crate) fn records(
        &self,
        (scope, state): (Option<&Scope>, Option<State>),
        limit: usize,
        now: u64,
    ) -> Vec<RecordInfo> {
        let mut lowest: BinaryHeap<(KeyHash, ByHash)> = BinaryHeap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (at, r) in &shard.records {
                if machine::expired(&r.hot, now)
                    || scope.is_some_and(|s| *s != r.scope)
                    || state.is_some_and(|s| s != r.hot.state)
                {
                    continue;
                }
                if lowest.len() < limit {
                    lowest.push((at.key, ByHash(info(r))));
                } else if lowest.peek().is_some_and(|(top, _)| at.key < *top) {
                    lowest.pop();
                    lowest.push((at.key, ByHash(info(r))));
                }
            }
        }
        lowest
            .into_sorted_vec()
            .into_iter()
            .map(|(_, r)| r.0)
            .collect()
    }

    /// Counts the records and checks that each completed record holds its response and each
    /// in-flight record none.
    pub(crate) fn check(&self, now: u64) -> CheckReport {
        let mut report = CheckReport::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            report.expiry_entries += shard.due.len() as u64;
            for (hash, r) in &shard.records {
                report.records += 1;
                if machine::expired(&r.hot, now) {
                    report.expired += 1;
                }
                match (r.hot.state, &r.response) {
                    (State::InFlight | State::OutcomeUnknown, None) => {
                        report.in_flight += 1;
                        if r.point.is_some() {
                            // Counted as the file counts the point in its expiry entry.
                            report.responses += 1;
                            report.response_bytes += u64::from(r.hot.response_len);
                        }
                    }
                    (State::Completed, Some(resp)) => {
                        report.completed += 1;
                        report.responses += 1;
                        report.response_bytes += resp.encoded_len() as u64;
                    }
                    (state, response) => {
                        if report.problems.len() < MAX_PROBLEMS {
                            let holds = if response.is_some() { "holds" } else { "lacks" };
                            report.problems.push(format!(
                                "record {hash:?} is {state:?} and {holds} a response"
                            ));
                        }
                    }
                }
            }
        }
        report
    }
}

impl Engine for MemoryEngine {
    fn begin(
        &self,
        hash: KeyHash,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> Answer<Claim, BeginError> {
        Answer::Now(MemoryEngine::begin(
            self,
            &self.shared,
            hash,
            (scope, key),
            (fp, terms),
        ))
    }

    fn complete(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        response: Response,
        terms: Terms,
    ) -> Answer<Completion, CompleteError> {
        Answer::Now(MemoryEngine::complete(
            self,
            &self.shared,
            hash,
            token,
            response,
            terms,
        ))
    }

    fn release(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        how: Release,
    ) -> Answer<(), LeaseError> {
        // Done before this returns, however it is answered.
        let explicit = how != Release::Forget;
        Answer::Now(MemoryEngine::release(
            self,
            &self.shared,
            (hash, token),
            explicit,
        ))
    }

    fn save_point(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        point: RecoveryPoint,
    ) -> Answer<(), LeaseError> {
        Answer::Now(MemoryEngine::save_point(
            self,
            &self.shared,
            hash,
            token,
            point,
        ))
    }

    fn renew(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        terms: Terms,
    ) -> Answer<u64, LeaseError> {
        Answer::Now(MemoryEngine::renew(
            self,
            &self.shared,
            (hash, token),
            terms,
        ))
    }

    fn purge(&self, hash: KeyHash, _scope: &Scope) -> Answer<bool, Unavailable> {
        Answer::Now(MemoryEngine::purge(self, &self.shared, &hash))
    }

    fn get(&self, hash: KeyHash, _scope: &Scope) -> Result<Option<RecordInfo>, Unavailable> {
        Ok(MemoryEngine::get(self, &hash, self.shared.now()))
    }

    fn expire(&self, limit: usize) -> Result<ExpireReport, Unavailable> {
        Ok(MemoryEngine::expire(self, &self.shared, limit))
    }

    fn flush(&self) -> Result<(), Unavailable> {
        // Nothing is kept anywhere that a flush would make durable.
        Ok(())
    }

    fn list(
        &self,
        filter: (Option<&Scope>, Option<State>),
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        Ok(self.records(filter, limit, self.shared.now()))
    }

    fn check(&self) -> Result<CheckReport, Unavailable> {
        Ok(MemoryEngine::check(self, self.shared.now()))
    }

    fn stats(&self) -> Stats {
        let (live, in_flight) = self.census();
        let mut stats = self.shared.counters.snapshot(live);
        stats.live_records = Some(live as u64);
        stats.in_flight_records = Some(in_flight);
        stats
    }

    fn close(&self) -> Result<(), Unavailable> {
        // Nothing to drain or make durable; once closed, wait for the calls already inside,
        // so none succeeds after `close` returns.
        self.shared.mark_closed();
        self.drain_calls();
        self.shared.check_poison()
    }
}

/// A record view that compares equal to any other: the heap in `records` orders by the hash
/// beside it.
struct ByHash(RecordInfo);

impl PartialEq for ByHash {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ByHash {}

impl PartialOrd for ByHash {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByHash {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl MemoryEngine {
    /// The locked shard of `hash` and its slot, if reservation `token` holds the key (C8);
    /// otherwise the refusal, with the lock already let go.
    fn held_shard(
        &self,
        shared: &Shared,
        (hash, token): (&KeyHash, u64),
    ) -> Result<(parking_lot::MutexGuard<'_, Shard>, Hashed), LeaseError> {
        let (shard, at) = self.shard(hash);
        let shard = shard.lock();
        shared.check()?;
        let current = shard.records.get(&at).map(|r| r.hot);
        holding(shared, current.as_ref(), (hash, token))?;
        Ok((shard, at))
    }
}

/// Checks that reservation `token` holds `current` (C8), counting a taken-over holder as fenced.
fn holding(
    shared: &Shared,
    current: Option<&Hot>,
    (hash, token): (&KeyHash, u64),
) -> Result<(), LeaseError> {
    machine::check_holder(current, token).map_err(|r| {
        if let HolderRefusal::Fenced { current } = r {
            count_fenced(shared, hash, (token, current));
        }
        lease_refusal(r, token)
    })
}

fn info(r: &Held) -> RecordInfo {
    let mut info = RecordInfo::of(
        Record {
            hot: r.hot,
            scope: r.scope.as_str().to_owned(),
            key: r.key.as_str().to_owned(),
        },
        r.response.clone(),
    );
    info.recovery_point = r.point.clone();
    info
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;

    fn shared(clock: &ManualClock) -> Arc<Shared> {
        let config = Config::builder()
            .clock(clock.clone())
            .ttl(Duration::from_secs(10))
            .lease(Duration::from_secs(5))
            .build();
        match config {
            Ok(c) => Arc::new(Shared::new(c, [0; 32])),
            Err(e) => unreachable!("test config: {e}"),
        }
    }

    fn name(i: usize) -> (KeyHash, Scope, Key) {
        let (Ok(s), Ok(k)) = (Scope::new("s"), Key::new(format!("k{i}"))) else {
            unreachable!("valid names")
        };
        (KeyHash::of(&s, &k), s, k)
    }

    fn execute(e: &MemoryEngine, sh: &Shared, i: usize) -> u64 {
        let (h, s, k) = name(i);
        match e.begin(
            sh,
            h,
            (&s, &k),
            (&Fingerprint::of_bytes(b"x"), sh.config.terms()),
        ) {
            Ok(Claim::Execute { token, .. }) => token,
            other => unreachable!("expected Execute, got {other:?}"),
        }
    }

    /// C9: a pass removes only what is due, looks at no more heap entries than its limit,
    /// and skips the entries of records that moved on.
    #[test]
    fn c9_expiry_passes_are_bounded_and_skip_moved_records() {
        let clock = ManualClock::new(1_000_000);
        let sh = shared(&clock);
        let e = MemoryEngine::new(Arc::clone(&sh));
        let tokens: Vec<u64> = (0..100).map(|i| execute(&e, &sh, i)).collect();
        clock.advance(Duration::from_secs(1));
        for (i, &token) in tokens.iter().enumerate() {
            if i % 2 == 0 {
                let done = e.complete(
                    &sh,
                    name(i).0,
                    token,
                    Response::new(200, [("a", "b")], "ok"),
                    sh.config.terms(),
                );
                assert!(matches!(done, Ok(Completion::Stored)));
            }
        }
        // The completed half expires 1 s later than the in-flight half.
        assert_eq!(e.expire(&sh, usize::MAX).scanned, 0, "nothing due yet");
        clock.advance(Duration::from_secs(9));
        // Due: the 50 in-flight records and the 50 leftover entries of the completed ones.
        let first = e.expire(&sh, 30);
        assert_eq!(first.scanned, 30);
        let rest = e.expire(&sh, usize::MAX);
        assert_eq!(first.scanned + rest.scanned, 100);
        assert_eq!(first.removed + rest.removed, 50);
        assert_eq!(e.census().0, 50, "the completed records are not due yet");
        clock.advance(Duration::from_secs(1));
        assert_eq!(e.expire(&sh, usize::MAX).removed, 50);
        assert_eq!(e.census().0, 0);
        assert_eq!(e.check(clock_now(&sh)).expiry_entries, 0);
    }

    fn clock_now(sh: &Shared) -> u64 {
        sh.now()
    }

    /// Releases leave heap entries behind; the heap is rebuilt before they outnumber the
    /// records by more than the bound.
    #[test]
    fn leftover_expiry_entries_stay_bounded() {
        let clock = ManualClock::new(1_000_000);
        let sh = shared(&clock);
        let e = MemoryEngine::new(Arc::clone(&sh));
        for i in 0..200_000 {
            let token = execute(&e, &sh, i);
            assert!(e.release(&sh, (name(i).0, token), true).is_ok());
        }
        let entries = e.check(sh.now()).expiry_entries;
        assert!(
            entries <= (SHARDS * 1025) as u64,
            "{entries} heap entries for no records"
        );
    }

    /// C8: tokens grow, a fenced holder is refused, and the taker's completion counts.
    #[test]
    fn c8_takeover_fences_the_first_holder() {
        let clock = ManualClock::new(1_000_000);
        let sh = shared(&clock);
        let e = MemoryEngine::new(Arc::clone(&sh));
        let first = execute(&e, &sh, 7);
        clock.advance(Duration::from_secs(6));
        let second = execute(&e, &sh, 7);
        assert!(second > first);
        let (h, ..) = name(7);
        assert!(matches!(
            e.complete(
                &sh,
                h,
                first,
                Response::new(200, [("a", "b")], "x"),
                sh.config.terms()
            ),
            Err(CompleteError::Fenced { token, current }) if token == first && current == second
        ));
        assert!(matches!(
            e.renew(&sh, (h, first), sh.config.terms()),
            Err(LeaseError::Fenced { token, current }) if token == first && current == second
        ));
        assert!(e.renew(&sh, (h, second), sh.config.terms()).is_ok());
        assert_eq!(sh.counters.lease_takeovers.load(Ordering::Relaxed), 1);
    }

    /// `records` keeps the lowest hashes in order, whatever the limit, and filters by scope.
    #[test]
    fn records_are_listed_by_hash_within_the_limit() {
        let clock = ManualClock::new(1_000_000);
        let sh = shared(&clock);
        let e = MemoryEngine::new(Arc::clone(&sh));
        for i in 0..300 {
            execute(&e, &sh, i);
        }
        let other = Scope::new("other").ok();
        let all = e.records((None, None), usize::MAX, sh.now());
        assert_eq!(all.len(), 300);
        let hashes: Vec<KeyHash> = all
            .iter()
            .filter_map(|r| {
                Some(KeyHash::of(
                    &Scope::new(&r.scope).ok()?,
                    &Key::new(&r.key).ok()?,
                ))
            })
            .collect();
        assert!(hashes.windows(2).all(|w| w[0] < w[1]), "in hash order");
        let first: Vec<String> = e
            .records((None, None), 25, sh.now())
            .into_iter()
            .map(|r| r.key)
            .collect();
        let expected: Vec<String> = all.iter().take(25).map(|r| r.key.clone()).collect();
        assert_eq!(first, expected);
        assert!(
            e.records((other.as_ref(), None), usize::MAX, sh.now())
                .is_empty()
        );
        assert!(e.records((None, None), 0, sh.now()).is_empty());
    }

    /// Once the store is closed and `close` has passed every shard, calls are refused.
    #[test]
    fn calls_after_close_are_refused() {
        let clock = ManualClock::new(1_000_000);
        let sh = shared(&clock);
        let e = MemoryEngine::new(Arc::clone(&sh));
        let token = execute(&e, &sh, 1);
        sh.mark_closed();
        e.drain_calls();
        let (h, s, k) = name(2);
        assert!(matches!(
            e.begin(
                &sh,
                h,
                (&s, &k),
                (&Fingerprint::of_bytes(b"x"), sh.config.terms())
            ),
            Err(BeginError::Unavailable(Unavailable::Closed))
        ));
        let (h1, ..) = name(1);
        assert!(matches!(
            e.complete(
                &sh,
                h1,
                token,
                Response::new(200, [("a", "b")], "x"),
                sh.config.terms()
            ),
            Err(CompleteError::Unavailable(Unavailable::Closed))
        ));
        assert!(matches!(e.purge(&sh, &h1), Err(Unavailable::Closed)));
        assert!(e.release(&sh, (h1, token), true).is_err());
    }
}
