//! The group-commit writer: one thread owns every write transaction.
//!
//! Why: a durable commit costs an fsync (about 0.2 to 0.7 ms here) whatever it carries, so the
//! writer drains everything queued (up to the batch limit), decides and applies all of it in
//! one write transaction, commits once, and only then answers every caller. Throughput grows
//! with the number of concurrent callers while each one still waits for its own durability.
//!
//! Invariants:
//! - every decision is taken inside the batch's write transaction, which sees the batch's own
//!   earlier writes, so two `begin`s for one key in one batch resolve as C1 requires;
//! - no caller is answered before the commit carrying its operation has returned (and, when
//!   the operation needs durability, fsynced); the hot index is updated after the commit and
//!   before the answers;
//! - a failed commit answers the whole batch "outcome unknown" and poisons the store; any
//!   storage error poisons the store before any reply slot of the batch is dropped;
//! - `next_token` only grows and is written in the same transaction as the reservations that
//!   used it, so fencing tokens never repeat, even across crashes.
//!
//! Extension point: an operation is a variant of [`Op`] applied by [`Writer::apply`] against
//! the open [`Tables`] of the batch's transaction; an operation that runs caller-supplied work
//! inside that transaction (exactly-once with the caller's own tables) is one more variant
//! holding a boxed closure over the `WriteTransaction`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redb::{Database, ReadableTable, Table, WriteTransaction};

use crate::budget::ResponseBudget;
use crate::config::Durability;
use crate::error::{Cause, CompleteError, LeaseError, Message, Unavailable, cause};
use crate::index::Entry;
use crate::key::KeyHash;
use crate::machine::{self, BeginDecision, HolderRefusal};
use crate::ops::{Abandoned, BeginReply, Completion, ExpireReport, Op, Pending};
use crate::record::{
    Blob, EXPIRY, ExpiryKey, Hot, META, META_CLEAN, META_LOG_POS, META_LOG_SEQ, META_LOG_ZEROED,
    META_NEXT_TOKEN, RECORDS, RESPONSES, Record, RecordBytes, State,
};
use crate::response::{self, Response};
use crate::shared::{Shared, panic_text};
use crate::stats::{add, bump, raise};
use crate::wal::{EntryBuf, Log, Mark};

/// A change to the hot index, applied once the batch has committed.
enum Effect {
    /// The record is now this.
    Put(KeyHash, Entry),
    /// Learned from a read: insert unless the index already holds this reservation.
    Warm(KeyHash, Hot),
    Remove(KeyHash),
    /// A response read from the file: cached if the index still holds that completed record
    /// without it, as of the effects before this one.
    Cache(KeyHash, u64, Response),
}

/// A storage failure inside a batch; the store is already poisoned when this exists.
struct Fail;

/// The tables of the batch's transaction.
struct Tables<'t> {
    records: Table<'t, &'static [u8; 32], RecordBytes>,
    responses: Table<'t, &'static [u8; 32], Blob>,
    expiry: Table<'t, ExpiryKey, ()>,
}

/// Everything a batch accumulates before its commit.
#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    effects: Vec<Effect>,
    /// Something was written.
    mutated: bool,
    /// The commit must be durable before anyone is answered.
    durable: bool,
    /// Releases from dropped reservations in this batch.
    detached_releases: u64,
    /// The batch's resulting record states, for the write-ahead log.
    entry: EntryBuf,
    /// With a log, make this batch a checkpoint: it freed space in the file, which the
    /// storage engine reuses only once a durable commit no longer refers to it.
    checkpoint: bool,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    db: Arc<Database>,
    rx: Receiver<Op>,
    next_token: u64,
    /// Commits since the last durable one exist.
    unsynced: bool,
    /// When the buffered mode must next make its commits durable.
    flush_at: Option<Instant>,
    /// The byte budget of the responses the index holds.
    cached: ResponseBudget,
    /// Reservations made for callers that gave up waiting, to release in the next batch.
    orphans: Vec<(KeyHash, u64)>,
    /// The write-ahead log, when batches are acknowledged through one.
    log: Option<Log>,
    /// When the last checkpoint (durable database commit) was made.
    last_checkpoint: Instant,
}

/// Starts the writer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    db: Arc<Database>,
    rx: Receiver<Op>,
    next_token: u64,
    log: Option<Log>,
) -> std::io::Result<JoinHandle<()>> {
    let cached = ResponseBudget::new(shared.config.response_cache_bytes);
    let writer = Writer {
        shared,
        db,
        rx,
        next_token,
        unsynced: false,
        flush_at: None,
        cached,
        orphans: Vec::new(),
        log,
        last_checkpoint: Instant::now(),
    };
    std::thread::Builder::new()
        .name("idemstore-writer".into())
        .spawn(move || writer.run())
}

impl Writer {
    fn run(mut self) {
        let limit = self.shared.config.batch_limit;
        let mut ops: Vec<Op> = Vec::with_capacity(limit);
        let mut stop = false;
        while !stop {
            // A buffered store past its deadline makes the next commit durable, even when
            // operations keep arriving and the receive below never times out.
            let due = self.flush_at.is_some_and(|at| Instant::now() >= at);
            if !self.orphans.is_empty() {
                let releases = self.orphan_releases();
                self.guarded(releases, due);
                continue;
            }
            let first = match self.flush_at {
                Some(at) => match self.rx.recv_deadline(at) {
                    Ok(op) => op,
                    Err(RecvTimeoutError::Timeout) => {
                        self.guarded(Vec::new(), true);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
            };
            let mut next = Some(first);
            while let Some(op) = next.take() {
                if let Op::Shutdown = op {
                    stop = true;
                    break;
                }
                ops.push(op);
                if ops.len() < limit {
                    next = self.rx.try_recv().ok();
                }
            }
            let batch = std::mem::replace(&mut ops, Vec::with_capacity(limit));
            self.guarded(batch, due);
        }
        self.release_leftovers();
        self.close_cleanly();
    }

    /// Release operations for the reservations whose callers gave up (counted as detached
    /// when they gave up).
    fn orphan_releases(&mut self) -> Vec<Op> {
        self.orphans
            .drain(..)
            .map(|(hash, token)| Op::Release {
                hash,
                token,
                reply: None,
                detached: true,
            })
            .collect()
    }

    /// At shutdown: applies the releases still queued behind `Shutdown` and those of
    /// reservations whose callers gave up, so no key stays in flight without a holder (C6);
    /// answers anything else queued with `Closed`.
    fn release_leftovers(&mut self) {
        let mut releases = self.orphan_releases();
        while let Ok(op) = self.rx.try_recv() {
            match op {
                release @ Op::Release { .. } => releases.push(release),
                other => other.fail(Unavailable::Closed),
            }
        }
        if !releases.is_empty() {
            self.guarded(releases, true);
        }
        // Releasing cannot make new orphans: it answers nobody with a reservation.
    }

    /// The last commit of a store: makes everything durable and marks the file closed
    /// cleanly, so the next open knows no fencing token was lost.
    fn close_cleanly(&mut self) {
        if self.shared.check_poison().is_err() {
            return;
        }
        let Ok(txn) = self.io(self.db.begin_write()) else {
            return;
        };
        {
            let Ok(mut meta) = self.io(txn.open_table(META)) else {
                return;
            };
            if self.io(meta.insert(META_CLEAN, 1)).is_err() {
                return;
            }
            if let Some(mark) = self.log.as_ref().map(Log::mark)
                && self.io(write_mark(&mut meta, mark)).is_err()
            {
                return;
            }
        }
        if self.io(txn.commit()).is_ok()
            && let Some(log) = self.log.take()
        {
            // The file holds everything now; the log's entries are not needed any more.
            let _ = log.close();
        }
    }

    /// Runs one batch, turning a panic into a poisoned store.
    fn guarded(&mut self, ops: Vec<Op>, force_durable: bool) {
        if let Err(e) = self.shared.check_poison() {
            for op in ops {
                op.fail(e.clone());
            }
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.batch(ops, force_durable)));
        if let Err(payload) = result {
            self.shared.poison(Arc::new(Message(format!(
                "the writer thread panicked: {}",
                panic_text(&*payload)
            ))));
        }
    }

    fn batch(&mut self, ops: Vec<Op>, force_durable: bool) {
        let shared = Arc::clone(&self.shared);
        let mut b = Batch {
            pending: Vec::with_capacity(ops.len()),
            durable: force_durable && self.unsynced,
            ..Batch::default()
        };
        // A panic below drops `b`'s reply slots while unwinding; they are marked so, and their
        // callers hear `Poisoned` (see `Shared::lost_reply`); `guarded` then poisons the store.
        let ops_count = ops.len() as u64;
        let Ok(txn) = self.io(self.db.begin_write()) else {
            return;
        };
        let token_before = self.next_token;
        if self.apply_all(&txn, ops, &mut b).is_err() {
            return;
        }
        if self.next_token != token_before {
            let meta = self.io(txn.open_table(META));
            let Ok(mut meta) = meta else { return };
            if self
                .io(meta.insert(META_NEXT_TOKEN, self.next_token))
                .is_err()
            {
                return;
            }
        }
        if !b.mutated && !b.durable {
            let _ = txn.abort();
            self.finish(b);
            return;
        }
        let started = Instant::now();
        let outcome = match self.log.is_some() {
            true => self.commit_logged(txn, &mut b),
            false => self.commit_direct(txn, &b),
        };
        let durable = match outcome {
            Ok(durable) => durable,
            Err(c) => {
                shared.poison(c.clone());
                for p in b.pending {
                    p.fail(Unavailable::OutcomeUnknown { cause: c.clone() });
                }
                return;
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let counters = &shared.counters;
        bump(&counters.commits);
        add(&counters.batched_ops, ops_count);
        raise(&counters.max_batch, ops_count);
        add(&counters.commit_micros_total, micros);
        raise(&counters.commit_micros_max, micros);
        if durable {
            self.unsynced = false;
            self.flush_at = None;
        } else if b.mutated {
            self.unsynced = true;
            if let Durability::Buffered { max_delay } = shared.config.durability
                && self.flush_at.is_none()
            {
                self.flush_at = Some(Instant::now() + max_delay);
            }
        }
        self.finish(b);
    }

    /// Commits a batch without a log: a durable database commit when the batch needs
    /// durability, a non-durable one otherwise. Returns whether everything acknowledged so far
    /// is durable now.
    fn commit_direct(&self, mut txn: WriteTransaction, b: &Batch) -> Result<bool, Cause> {
        let level = if b.durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(level)
            .map_err(|e| cause(redb::Error::from(e)))?;
        txn.commit().map_err(|e| cause(redb::Error::from(e)))?;
        if b.durable {
            bump(&self.shared.counters.durable_commits);
        }
        Ok(b.durable)
    }

    /// Commits a batch through the write-ahead log: the database commit is not durable, the
    /// batch's entry is appended to the log, and the log is synced when the batch needs
    /// durability. Every so often (by time or log volume), or when the entry does not fit, the
    /// batch is a checkpoint instead: a durable database commit that records the log position,
    /// after which the log space before it is free. Returns whether everything acknowledged so
    /// far is durable now.
    fn commit_logged(&mut self, mut txn: WriteTransaction, b: &mut Batch) -> Result<bool, Cause> {
        let Some(log) = self.log.as_mut() else {
            return self.commit_direct(txn, b);
        };
        let counters = &self.shared.counters;
        let storage = |e: redb::Error| cause(e);
        let checkpoint = b.mutated
            && (b.checkpoint
                || !log.fits(b.entry.len())
                || log.wants_checkpoint()
                || self.last_checkpoint.elapsed() >= self.shared.config.checkpoint_interval);
        if checkpoint {
            let mark = log.mark();
            {
                let mut meta = txn.open_table(META).map_err(|e| storage(e.into()))?;
                write_mark(&mut meta, mark).map_err(|e| storage(e.into()))?;
            }
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| storage(e.into()))?;
            txn.commit().map_err(|e| storage(e.into()))?;
            log.checkpointed(mark);
            // The durable commit covers every earlier batch: nothing in the log needs a sync.
            log.forget_unsynced();
            self.last_checkpoint = Instant::now();
            bump(&counters.checkpoints);
            bump(&counters.durable_commits);
            return Ok(true);
        }
        let log_failure = |e: std::io::Error| -> Cause {
            Arc::new(Message(format!(
                "the write-ahead log could not be written or synced, so nothing since its last \
                 sync can be trusted to be durable: {e}"
            )))
        };
        if !b.entry.is_empty() {
            let len = b.entry.len() as u64;
            log.append(&mut b.entry, self.next_token)
                .map_err(log_failure)?;
            add(&counters.log_bytes, len);
        }
        if b.mutated {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| storage(e.into()))?;
            txn.commit().map_err(|e| storage(e.into()))?;
        } else {
            let _ = txn.abort();
        }
        if b.durable {
            if log.unsynced() {
                log.sync().map_err(log_failure)?;
                bump(&counters.log_syncs);
            }
            bump(&counters.durable_commits);
            return Ok(true);
        }
        Ok(false)
    }

    /// Applies the index effects, then answers every caller.
    fn finish(&mut self, b: Batch) {
        for effect in b.effects {
            match effect {
                Effect::Put(hash, entry) => {
                    let cached = entry
                        .response
                        .as_ref()
                        .map(|r| (entry.hot.token, r.encoded_len()));
                    let index = &self.shared.index;
                    index.insert(hash, entry);
                    match cached {
                        Some((token, size)) => self
                            .cached
                            .add(hash, token, size, |h, t| index.drop_response(&h, t)),
                        None => self.cached.remove(&hash),
                    }
                }
                Effect::Warm(hash, hot) => {
                    let index = &self.shared.index;
                    if index.get(&hash).map(|e| e.hot) != Some(hot) {
                        index.insert(
                            hash,
                            Entry {
                                hot,
                                response: None,
                            },
                        );
                        self.cached.remove(&hash);
                    }
                }
                Effect::Remove(hash) => {
                    self.shared.index.remove(&hash);
                    self.cached.remove(&hash);
                }
                Effect::Cache(hash, token, response) => {
                    let index = &self.shared.index;
                    if let Some(e) = index.get(&hash)
                        && e.hot.token == token
                        && e.hot.state == State::Completed
                        && e.response.is_none()
                    {
                        let size = response.encoded_len();
                        index.insert(
                            hash,
                            Entry {
                                hot: e.hot,
                                response: Some(response),
                            },
                        );
                        self.cached
                            .add(hash, token, size, |h, t| index.drop_response(&h, t));
                    }
                }
            }
        }
        let mut settled = b.detached_releases;
        for p in b.pending {
            match p.deliver() {
                None => {}
                // Counted when the caller gave up; settled once its release is applied.
                Some(Abandoned::Reservation(hash, token)) => self.orphans.push((hash, token)),
                Some(Abandoned::Answer) => settled += 1,
            }
        }
        if settled > 0 {
            self.shared
                .detached_releases
                .fetch_sub(settled, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Poisons the store on a storage error.
    fn io<T, E: Into<redb::Error>>(&self, r: Result<T, E>) -> Result<T, Fail> {
        r.map_err(|e| {
            self.shared.poison(cause(e.into()));
            Fail
        })
    }

    /// Whether an operation that needs durability makes this batch durable: in the buffered
    /// mode only an explicit flush or the deadline does, and in the memory mode there is
    /// nothing to make durable (a durable commit there only costs the engine's flush path:
    /// 30 µs instead of about 90 µs per single-operation commit).
    fn durable_if(&self, needed: bool) -> bool {
        needed && self.shared.config.durability == Durability::Immediate
    }

    fn apply_all(
        &mut self,
        txn: &WriteTransaction,
        ops: Vec<Op>,
        b: &mut Batch,
    ) -> Result<(), Fail> {
        let mut t = Tables {
            records: self.io(txn.open_table(RECORDS))?,
            responses: self.io(txn.open_table(RESPONSES))?,
            expiry: self.io(txn.open_table(EXPIRY))?,
        };
        let now = self.shared.now();
        for op in ops {
            self.apply(op, &mut t, now, b)?;
        }
        Ok(())
    }

    /// Reads a record: `Ok(None)` when absent, `Ok(Some(Err))` when it does not decode.
    fn load(
        &self,
        t: &Tables<'_>,
        hash: &KeyHash,
    ) -> Result<Option<Result<Record, Unavailable>>, Fail> {
        self.load_with(t, hash, Record::decode)
    }

    /// Like [`load`](Writer::load), but only the fixed part: no allocation, for the
    /// operations that do not rewrite the record.
    fn load_hot(
        &self,
        t: &Tables<'_>,
        hash: &KeyHash,
    ) -> Result<Option<Result<Hot, Unavailable>>, Fail> {
        self.load_with(t, hash, Hot::decode)
    }

    fn load_with<T>(
        &self,
        t: &Tables<'_>,
        hash: &KeyHash,
        decode: fn(&[u8]) -> Result<T, crate::record::RecordError>,
    ) -> Result<Option<Result<T, Unavailable>>, Fail> {
        let guard = self.io(t.records.get(&hash.0))?;
        Ok(guard.map(|g| {
            decode(g.value()).map_err(|e| Unavailable::Corrupted {
                detail: format!("record {hash:?}: {e}"),
            })
        }))
    }

    /// Writes `record` under `hash`, moving its expiry index entry from `old_expiry`, and logs
    /// the new state with `response`, the stored response it now has (the caller writes that
    /// one; none for a record in flight).
    fn put(
        &self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        (hash, record): (&KeyHash, &Record),
        old_expiry: Option<u64>,
        response: Option<&[u8]>,
    ) -> Result<(), Fail> {
        let new_expiry = record.hot.expires_at;
        if old_expiry != Some(new_expiry) {
            if let Some(old) = old_expiry {
                self.io(t.expiry.remove(ExpiryKey::new(old, hash)))?;
            }
            self.io(t.expiry.insert(ExpiryKey::new(new_expiry, hash), ()))?;
        }
        let bytes = record.encode();
        self.io(t.records.insert(&hash.0, bytes.as_slice()))?;
        if self.log.is_some() {
            b.entry.put(&hash.0, &bytes, response);
        }
        Ok(())
    }

    /// Removes a record, its response and its expiry entry.
    fn delete(
        &self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        hash: &KeyHash,
        hot: Option<&Hot>,
    ) -> Result<(), Fail> {
        if self.log.is_some() {
            b.entry.delete(&hash.0);
        }
        self.io(t.records.remove(&hash.0))?;
        if let Some(hot) = hot {
            self.io(t.expiry.remove(ExpiryKey::new(hot.expires_at, hash)))?;
            if hot.state == State::Completed {
                self.io(t.responses.remove(&hash.0))?;
            }
        } else {
            self.io(t.responses.remove(&hash.0))?;
        }
        Ok(())
    }

    fn apply(&mut self, op: Op, t: &mut Tables<'_>, now: u64, b: &mut Batch) -> Result<(), Fail> {
        let counters = &self.shared.counters;
        let config = &self.shared.config;
        match op {
            Op::Begin {
                hash,
                scope,
                key,
                fp,
                reply,
            } => {
                if reply.is_abandoned() {
                    // The caller gave up before this was decided: reserve nothing, and settle
                    // the count its giving up added, as for a detached release.
                    b.detached_releases += 1;
                    return Ok(());
                }
                let hot = match self.load_hot(t, &hash)? {
                    Some(Err(e)) => {
                        b.pending.push(Pending::Begin(reply, Err(e), hash));
                        return Ok(());
                    }
                    Some(Ok(h)) => Some(h),
                    None => None,
                };
                match machine::decide_begin(hot.as_ref(), &fp, now) {
                    BeginDecision::Execute { takeover } => {
                        let token = self.next_token;
                        self.next_token = self.next_token.saturating_add(1);
                        let lease_deadline = now.saturating_add(crate::clock::millis(config.lease));
                        let new = Hot {
                            state: State::InFlight,
                            fingerprint: fp,
                            status: 0,
                            response_len: 0,
                            created_at: now,
                            lease_deadline,
                            expires_at: machine::in_flight_expiry(
                                now,
                                lease_deadline,
                                crate::clock::millis(config.ttl),
                            ),
                            token,
                        };
                        if let Some(old) = &hot
                            && old.state == State::Completed
                        {
                            self.io(t.responses.remove(&hash.0))?;
                        }
                        let record = Record {
                            hot: new,
                            scope: scope.as_str().to_owned(),
                            key: key.as_str().to_owned(),
                        };
                        self.put(t, b, (&hash, &record), hot.map(|h| h.expires_at), None)?;
                        b.mutated = true;
                        b.durable |= self.durable_if(config.reservations_durable);
                        b.effects.push(Effect::Put(
                            hash,
                            Entry {
                                hot: new,
                                response: None,
                            },
                        ));
                        bump(&counters.executes);
                        if takeover {
                            bump(&counters.lease_takeovers);
                        }
                        b.pending.push(Pending::Begin(
                            reply,
                            Ok(BeginReply::Execute {
                                token,
                                lease_deadline,
                            }),
                            hash,
                        ));
                    }
                    BeginDecision::Replay => {
                        let Some(hot) = hot else { return Ok(()) };
                        let blob = self.io(t.responses.get(&hash.0))?;
                        let decoded = match blob {
                            Some(g) => response::decode(g.value()).map_err(|e| e.to_string()),
                            None => Err("completed record has no stored response".to_owned()),
                        };
                        match decoded {
                            Ok(resp) => {
                                bump(&counters.replays);
                                b.effects.push(Effect::Put(
                                    hash,
                                    Entry {
                                        hot,
                                        response: Some(resp.clone()),
                                    },
                                ));
                                b.pending.push(Pending::Begin(
                                    reply,
                                    Ok(BeginReply::Replay(resp)),
                                    hash,
                                ));
                            }
                            Err(detail) => b.pending.push(Pending::Begin(
                                reply,
                                Err(Unavailable::Corrupted {
                                    detail: format!("response {hash:?}: {detail}"),
                                }),
                                hash,
                            )),
                        }
                    }
                    decision @ (BeginDecision::InProgress | BeginDecision::Conflict) => {
                        let answer = if decision == BeginDecision::InProgress {
                            bump(&counters.in_progress);
                            BeginReply::InProgress
                        } else {
                            bump(&counters.conflicts);
                            BeginReply::Conflict
                        };
                        if let Some(hot) = hot {
                            b.effects.push(Effect::Warm(hash, hot));
                        }
                        b.pending.push(Pending::Begin(reply, Ok(answer), hash));
                    }
                }
            }
            Op::Complete {
                hash,
                token,
                response,
                blob,
                reply,
            } => {
                let current = match self.load(t, &hash)? {
                    Some(Err(e)) => {
                        b.pending
                            .push(Pending::Complete(reply, Err(CompleteError::Unavailable(e))));
                        return Ok(());
                    }
                    Some(Ok(r)) => Some(r),
                    None => None,
                };
                if let Err(refusal) = machine::check_holder(current.as_ref().map(|r| &r.hot), token)
                {
                    let err = match refusal {
                        HolderRefusal::Fenced { current } => {
                            bump(&counters.fenced);
                            CompleteError::Fenced { token, current }
                        }
                        HolderRefusal::NotReserved => CompleteError::NotReserved { token },
                    };
                    b.pending.push(Pending::Complete(reply, Err(err)));
                    return Ok(());
                }
                let Some(mut record) = current else {
                    return Ok(());
                };
                let old = record.hot;
                b.mutated = true;
                if config.cache_policy.keeps(response.status()) {
                    self.io(t.responses.insert(&hash.0, blob.as_slice()))?;
                    record.hot = Hot {
                        state: State::Completed,
                        status: response.status(),
                        response_len: u32::try_from(blob.len()).unwrap_or(u32::MAX),
                        lease_deadline: 0,
                        expires_at: now.saturating_add(crate::clock::millis(config.ttl)),
                        ..old
                    };
                    self.put(
                        t,
                        b,
                        (&hash, &record),
                        Some(old.expires_at),
                        Some(blob.as_slice()),
                    )?;
                    b.durable |= self.durable_if(true);
                    b.effects.push(Effect::Put(
                        hash,
                        Entry {
                            hot: record.hot,
                            response: Some(response),
                        },
                    ));
                    bump(&counters.completions);
                    b.pending
                        .push(Pending::Complete(reply, Ok(Completion::Stored)));
                } else {
                    self.delete(t, b, &hash, Some(&old))?;
                    b.effects.push(Effect::Remove(hash));
                    bump(&counters.releases);
                    b.pending
                        .push(Pending::Complete(reply, Ok(Completion::Released)));
                }
            }
            Op::Release {
                hash,
                token,
                reply,
                detached,
            } => {
                if detached {
                    b.detached_releases += 1;
                }
                let hot = match self.load_hot(t, &hash)? {
                    Some(Err(e)) => {
                        b.pending
                            .push(Pending::Lease(reply, Err(LeaseError::Unavailable(e))));
                        return Ok(());
                    }
                    Some(Ok(h)) => Some(h),
                    None => None,
                };
                let result = match machine::check_holder(hot.as_ref(), token) {
                    Ok(()) => {
                        self.delete(t, b, &hash, hot.as_ref())?;
                        b.mutated = true;
                        b.effects.push(Effect::Remove(hash));
                        bump(&counters.releases);
                        Ok(())
                    }
                    Err(r) => Err(lease_refusal(r, token)),
                };
                b.pending.push(Pending::Lease(reply, result));
            }
            Op::Renew { hash, token, reply } => {
                let current = match self.load(t, &hash)? {
                    Some(Err(e)) => {
                        b.pending
                            .push(Pending::Renew(reply, Err(LeaseError::Unavailable(e))));
                        return Ok(());
                    }
                    Some(Ok(r)) => Some(r),
                    None => None,
                };
                let result = match (
                    machine::check_holder(current.as_ref().map(|r| &r.hot), token),
                    current,
                ) {
                    (Ok(()), Some(mut record)) => {
                        let old = record.hot;
                        let lease_deadline = now.saturating_add(crate::clock::millis(config.lease));
                        record.hot.lease_deadline = lease_deadline;
                        record.hot.expires_at = old.expires_at.max(lease_deadline);
                        self.put(t, b, (&hash, &record), Some(old.expires_at), None)?;
                        b.mutated = true;
                        b.effects.push(Effect::Put(
                            hash,
                            Entry {
                                hot: record.hot,
                                response: None,
                            },
                        ));
                        Ok(lease_deadline)
                    }
                    (Err(r), _) => {
                        if let HolderRefusal::Fenced { .. } = r {
                            bump(&counters.fenced);
                        }
                        Err(lease_refusal(r, token))
                    }
                    (Ok(()), None) => Err(LeaseError::NotReserved { token }),
                };
                b.pending.push(Pending::Renew(reply, result));
            }
            Op::Purge { hash, reply } => {
                let existed = match self.load_hot(t, &hash)? {
                    // Absent may rest on a release not yet durable: an acknowledged purge
                    // makes it durable, or a crash could bring the record back.
                    None => {
                        b.durable |= self.durable_if(self.unsynced);
                        false
                    }
                    Some(rec) => {
                        let hot = rec.ok();
                        self.delete(t, b, &hash, hot.as_ref())?;
                        b.mutated = true;
                        b.durable |= self.durable_if(true);
                        b.effects.push(Effect::Remove(hash));
                        true
                    }
                };
                b.pending.push(Pending::Purge(reply, existed));
            }
            Op::Expire { limit, reply } => {
                let report = self.expire(t, now, limit, b)?;
                add(&counters.expired_removed, report.removed);
                b.pending.push(Pending::Expire(reply, report));
            }
            Op::Flush { reply } => {
                // Nothing in memory can be made durable; elsewhere a flush always is.
                if self.shared.config.durability != Durability::Memory {
                    b.durable |= self.unsynced || b.mutated;
                }
                b.pending.push(Pending::Flush(reply));
            }
            Op::Barrier { reply } => b.pending.push(Pending::Flush(reply)),
            Op::Cache {
                hash,
                token,
                response,
            } => b.effects.push(Effect::Cache(hash, token, response)),
            Op::Shutdown => {}
        }
        Ok(())
    }

    /// Removes up to `limit` records whose expiry time has passed (C9).
    fn expire(
        &self,
        t: &mut Tables<'_>,
        now: u64,
        limit: usize,
        b: &mut Batch,
    ) -> Result<ExpireReport, Fail> {
        let mut due = Vec::new();
        {
            let range = self.io(t.expiry.range(..=ExpiryKey::upper(now)))?;
            for entry in range.take(limit) {
                let (k, _) = self.io(entry)?;
                due.push(k.value());
            }
        }
        let mut report = ExpireReport {
            scanned: due.len(),
            removed: 0,
        };
        for ek in due {
            let hash = ek.hash();
            self.io(t.expiry.remove(ek))?;
            b.mutated = true;
            let hot = match self.load_hot(t, &hash)? {
                Some(Ok(h)) => Some(h),
                Some(Err(_)) => None,
                None => continue,
            };
            // An entry whose record has moved on (a newer expiry) is only an index leftover.
            if let Some(h) = &hot
                && h.expires_at != ek.expires_at()
            {
                continue;
            }
            self.delete(t, b, &hash, None)?;
            b.effects.push(Effect::Remove(hash));
            report.removed += 1;
        }
        if b.mutated {
            b.durable |= self.durable_if(true);
        }
        b.checkpoint |= report.removed > 0;
        Ok(report)
    }
}

/// Records a checkpoint's log position in the meta table.
fn write_mark(
    meta: &mut Table<'_, &'static str, u64>,
    mark: Mark,
) -> Result<(), redb::StorageError> {
    meta.insert(META_LOG_SEQ, mark.seq)?;
    meta.insert(META_LOG_POS, mark.pos)?;
    meta.insert(META_LOG_ZEROED, mark.zeroed)?;
    Ok(())
}

fn lease_refusal(r: HolderRefusal, token: u64) -> LeaseError {
    match r {
        HolderRefusal::Fenced { current } => LeaseError::Fenced { token, current },
        HolderRefusal::NotReserved => LeaseError::NotReserved { token },
    }
}
