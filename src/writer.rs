//! The group-commit writer: one thread decides every change.
//!
//! Why: making something durable costs an fsync (about 0.12 ms for a log entry, 0.7 ms for a
//! database commit) whatever it carries, so the writer drains everything queued (up to the
//! batch limit), decides all of it, makes it durable once (one log entry and one log sync, or
//! without a log one write transaction), and only then answers every caller. Throughput grows
//! with the number of concurrent callers while each one still waits for its own durability.
//! With a log the database file is written by checkpoints (`checkpoint.rs`), not here.
//!
//! Invariants:
//! - every decision reads state that includes the batch's own earlier writes (the overlay over
//!   a read snapshot of the file, or the batch's write transaction), so two `begin`s for one
//!   key in one batch resolve as C1 requires;
//! - no caller is answered before the commit carrying its operation has returned (and, when
//!   the operation needs durability, fsynced); the hot index is updated after the commit and
//!   before the answers;
//! - a finished checkpoint's generation leaves the overlay before the next batch opens its
//!   snapshot, so nothing is ever in neither;
//! - a failed commit answers the whole batch "outcome unknown" and poisons the store; any
//!   storage error poisons the store before any reply slot of the batch is dropped;
//! - `next_token` only grows and is written in the same transaction as the reservations that
//!   used it, so fencing tokens never repeat, even across crashes.
//!
//! Extension point: an operation is a variant of [`Op`] applied by [`Writer::apply`] against
//! the open [`Tables`] of the batch's transaction; an operation that runs caller-supplied work
//! inside that transaction (exactly-once with the caller's own tables) is one more variant
//! holding a boxed closure over the `WriteTransaction`.

use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use crate::budget::{CompletedBudget, ResponseBudget};
use crate::checkpoint::{self, Checkpointer, Job};
use crate::config::Durability;
use crate::error::{Cause, CompleteError, LeaseError, Message, Unavailable, cause};
use crate::index::Entry;
use crate::key::KeyHash;
use crate::machine::{self, BeginDecision, HolderRefusal, lease_refusal};
use crate::ops::{Abandoned, BeginReply, Completion, ExpireReport, Op, Pending};
use crate::overlay::{Overlay, Slot};
use crate::record::{
    EXPIRY, ExpiryKey, ExpiryValue, Hot, META, META_CLEAN, META_NEXT_TOKEN, RECORDS, Record,
    RecordBytes, SCOPE_COUNTS, State, open_each_alone, stored_response,
};
use crate::response::{self, Response};
use crate::scope_count::{self, Counts, Deltas};
use crate::shared::{Shared, panic_text};
use crate::stats::{add, bump, raise};
use crate::wal::{EntryBuf, Log};

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

/// Where a batch reads and writes record states.
enum Tables<'t> {
    /// Without a log: the tables of the batch's write transaction.
    File {
        records: Table<'t, &'static [u8; 32], RecordBytes>,
        expiry: Table<'t, ExpiryKey, ExpiryValue>,
    },
    /// With a log: the overlay over a snapshot of the file; writes go to the overlay (and the
    /// batch's log entry), and reach the file at a checkpoint.
    Logged {
        overlay: &'t Overlay,
        records: ReadOnlyTable<&'static [u8; 32], RecordBytes>,
        expiry: ReadOnlyTable<ExpiryKey, ExpiryValue>,
    },
}

/// The response stored in the expiry entry `ek` of `expiry`, through `decode`.
fn response_in<T>(
    expiry: &impl ReadableTable<ExpiryKey, ExpiryValue>,
    ek: ExpiryKey,
    decode: fn(&[u8]) -> T,
) -> Result<Option<T>, redb::Error> {
    Ok(expiry
        .get(ek)?
        .and_then(|g| stored_response(g.value()).map(decode)))
}

impl Tables<'_> {
    /// The record under `hash`, through `decode`.
    fn record<T>(&self, hash: &KeyHash, decode: fn(&[u8]) -> T) -> Result<Option<T>, redb::Error> {
        match self {
            Tables::File { records, .. } => Ok(records.get(&hash.0)?.map(|g| decode(g.value()))),
            Tables::Logged {
                overlay, records, ..
            } => {
                let hit = overlay.with(hash, |slot| {
                    slot.map(|s| match s {
                        Slot::Put { record, .. } => Some(decode(record)),
                        Slot::Deleted => None,
                    })
                });
                match hit {
                    Some(found) => Ok(found),
                    None => Ok(records.get(&hash.0)?.map(|g| decode(g.value()))),
                }
            }
        }
    }

    /// The stored response of the record under `hash` whose expiry is `expires_at`, through
    /// `decode`.
    fn response<T>(
        &self,
        hash: &KeyHash,
        expires_at: u64,
        decode: fn(&[u8]) -> T,
    ) -> Result<Option<T>, redb::Error> {
        let ek = ExpiryKey::new(expires_at, hash);
        match self {
            Tables::File { expiry, .. } => response_in(expiry, ek, decode),
            Tables::Logged {
                overlay, expiry, ..
            } => {
                let hit = overlay.with(hash, |slot| {
                    slot.map(|s| match s {
                        Slot::Put { response, .. } => response.as_deref().map(decode),
                        Slot::Deleted => None,
                    })
                });
                match hit {
                    Some(found) => Ok(found),
                    None => response_in(expiry, ek, decode),
                }
            }
        }
    }

    /// Stores `bytes` (the record `hot` encoded) under `hash`, with `response` as its stored
    /// response (none: the record is in flight and keeps none), moving its expiry entry from
    /// `old_expiry`.
    fn put(
        &mut self,
        hash: &KeyHash,
        (bytes, hot): (&[u8], &Hot),
        old_expiry: Option<u64>,
        response: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        match self {
            Tables::File { records, expiry } => {
                let new_expiry = hot.expires_at;
                if let Some(old) = old_expiry
                    && old != new_expiry
                {
                    expiry.remove(ExpiryKey::new(old, hash))?;
                }
                // Written even when the expiry stays: the entry carries the response (or none).
                expiry.insert(ExpiryKey::new(new_expiry, hash), response.unwrap_or(&[]))?;
                records.insert(&hash.0, bytes)?;
            }
            Tables::Logged { overlay, .. } => overlay.set(
                *hash,
                Slot::Put {
                    record: bytes.into(),
                    response: response.map(Into::into),
                },
                Some(hot.expires_at),
            ),
        }
        Ok(())
    }

    /// Removes a record and its expiry entry, which holds its response (`hot`: the record,
    /// when it could be read; without it the entry stays, a leftover the compactor removes).
    fn delete(&mut self, hash: &KeyHash, hot: Option<&Hot>) -> Result<(), redb::Error> {
        match self {
            Tables::File { records, expiry } => {
                records.remove(&hash.0)?;
                if let Some(hot) = hot {
                    expiry.remove(ExpiryKey::new(hot.expires_at, hash))?;
                }
            }
            Tables::Logged { overlay, .. } => overlay.set(*hash, Slot::Deleted, None),
        }
        Ok(())
    }

    /// Up to `limit` expiry entries due by `now`, oldest first. Without a log they come from
    /// the expiry index as it stands (leftovers included, which the caller removes); with one,
    /// from the overlay's records and from the file's index entries of keys the overlay does
    /// not hold, each matching its record's current expiry. With a log, the file's index
    /// still lists the keys removed since the last checkpoint, so the scan of the file resumes
    /// after `cursor`, the last entry an earlier pass looked at (reset by each checkpoint):
    /// otherwise every pass would walk again over the entries the passes before it removed.
    fn due(
        &self,
        now: u64,
        limit: usize,
        cursor: &mut Option<ExpiryKey>,
    ) -> Result<Vec<ExpiryKey>, redb::Error> {
        let mut due = Vec::new();
        match self {
            Tables::File { expiry, .. } => {
                for entry in expiry.range(..=ExpiryKey::upper(now))?.take(limit) {
                    due.push(entry?.0.value());
                }
            }
            Tables::Logged {
                overlay,
                records,
                expiry,
                ..
            } => {
                if overlay.may_expire_by(now) {
                    overlay.each(|hash, slot| {
                        if let Slot::Put { record, .. } = slot
                            && let Ok(hot) = Hot::decode(record)
                            && hot.expires_at <= now
                        {
                            due.push(ExpiryKey::new(hot.expires_at, hash));
                        }
                    });
                    due.sort_by_key(|k| k.0);
                    due.truncate(limit);
                }
                let upper = ExpiryKey::upper(now);
                if cursor.is_some_and(|c| c.0 >= upper.0) {
                    return Ok(due);
                }
                let from = match *cursor {
                    Some(c) => Bound::Excluded(c),
                    None => Bound::Unbounded,
                };
                // Entries whose record moved on are skipped, within a bounded scan, so a run
                // of leftovers cannot make a pass unbounded.
                let budget = limit.saturating_mul(4);
                for entry in expiry.range((from, Bound::Included(upper)))?.take(budget) {
                    if due.len() >= limit {
                        break;
                    }
                    let ek = entry?.0.value();
                    *cursor = Some(ek);
                    let hash = ek.hash();
                    if overlay.contains(&hash) {
                        continue;
                    }
                    let current = records
                        .get(&hash.0)?
                        .and_then(|g| Hot::decode(g.value()).ok());
                    if current.is_some_and(|h| h.expires_at == ek.expires_at()) {
                        due.push(ek);
                    }
                }
            }
        }
        Ok(due)
    }

    /// Removes an expiry index entry that was found due (without a log; with one, the
    /// checkpoint keeps the index in step with the records).
    fn drop_expiry(&mut self, ek: ExpiryKey) -> Result<(), redb::Error> {
        if let Tables::File { expiry, .. } = self {
            expiry.remove(ek)?;
        }
        Ok(())
    }
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
    /// What the batch adds to and takes from the live records of each scope.
    deltas: Deltas,
    /// With a log, make this batch a checkpoint: a caller wants the file to hold everything.
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
    /// The count of the completed records the index holds.
    completed: CompletedBudget,
    /// Reservations made for callers that gave up waiting, to release in the next batch.
    orphans: Vec<(KeyHash, u64)>,
    /// The write-ahead log, when batches are acknowledged through one.
    log: Option<Log>,
    /// When the last checkpoint (durable database commit) was started.
    last_checkpoint: Instant,
    /// With a log: the thread that writes the overlay's frozen generations into the file.
    checkpointer: Option<Checkpointer>,
    /// With a log: the last expiry index entry of the file an expiry pass looked at since
    /// the last checkpoint (see `Tables::due`).
    expire_cursor: Option<ExpiryKey>,
    /// The live records of each scope as of the last commit (rule C13).
    scopes: Counts,
}

/// Starts the writer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    db: Arc<Database>,
    rx: Receiver<Op>,
    next_token: u64,
    log: Option<Log>,
    scopes: Counts,
) -> std::io::Result<JoinHandle<()>> {
    let checkpointer = match log {
        Some(_) => Some(Checkpointer::spawn(Arc::clone(&db))?),
        None => None,
    };
    let writer = Writer::new(shared, db, rx, next_token, log, scopes, checkpointer);
    std::thread::Builder::new()
        .name("idemstore-writer".into())
        .spawn(move || writer.run())
}

/// What one turn of the writer did (step mode, `step.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Nothing was queued or due.
    Idle,
    /// A batch ran.
    Ran,
    /// `Shutdown` was met: the writer has made everything durable and closed.
    Stopped,
}

impl Writer {
    /// A writer over `rx`; `checkpointer` is needed when there is a `log`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        db: Arc<Database>,
        rx: Receiver<Op>,
        next_token: u64,
        log: Option<Log>,
        scopes: Counts,
        checkpointer: Option<Checkpointer>,
    ) -> Writer {
        let cached = ResponseBudget::new(shared.config.response_cache_bytes);
        let completed = CompletedBudget::new(shared.config.index_max_completed);
        Writer {
            shared,
            db,
            rx,
            next_token,
            unsynced: false,
            flush_at: None,
            cached,
            completed,
            orphans: Vec::new(),
            log,
            last_checkpoint: Instant::now(),
            checkpointer,
            expire_cursor: None,
            scopes,
        }
    }

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
                None => match self.recv_soon() {
                    Ok(op) => op,
                    Err(_) => break,
                },
            };
            stop = self.collect(first, &mut ops);
            let batch = std::mem::replace(&mut ops, Vec::with_capacity(limit));
            self.guarded(batch, due);
        }
        self.stop();
    }

    /// Puts `first` and what is queued behind it, up to the batch limit, into `ops`; returns
    /// true when `Shutdown` was met (the operations before it are in `ops`).
    fn collect(&mut self, first: Op, ops: &mut Vec<Op>) -> bool {
        let limit = self.shared.config.batch_limit;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            if let Op::Shutdown = op {
                return true;
            }
            ops.push(op);
            if ops.len() < limit {
                next = self.rx.try_recv().ok();
            }
        }
        false
    }

    /// The writer's last work: releases what is left and closes the file cleanly.
    fn stop(&mut self) {
        self.release_leftovers();
        self.close_cleanly();
    }

    /// One turn of [`run`](Writer::run) on the caller's thread, without waiting for an
    /// operation (step mode, `step.rs`): the batch `run` would take next, if anything is
    /// queued or a buffered store's deadline has passed.
    pub(crate) fn step(&mut self) -> Turn {
        let due = self.flush_at.is_some_and(|at| Instant::now() >= at);
        if !self.orphans.is_empty() {
            let releases = self.orphan_releases();
            self.guarded(releases, due);
            return Turn::Ran;
        }
        let first = match self.rx.try_recv() {
            Ok(op) => op,
            Err(_) if due => {
                self.guarded(Vec::new(), true);
                return Turn::Ran;
            }
            Err(_) => return Turn::Idle,
        };
        let mut ops = Vec::new();
        let stop = self.collect(first, &mut ops);
        self.guarded(ops, due);
        if stop {
            self.stop();
            return Turn::Stopped;
        }
        Turn::Ran
    }

    /// The checkpointer, for a step that runs a held checkpoint (step mode).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn checkpointer(&mut self) -> Option<&mut Checkpointer> {
        self.checkpointer.as_mut()
    }

    /// Waits for the next operation, polling for a short while before parking: at low
    /// concurrency the next operation tends to arrive within tens of microseconds of the last
    /// answer, and waking a parked thread costs about as much again on a virtual machine.
    fn recv_soon(&self) -> Result<Op, crossbeam_channel::RecvError> {
        let spin = self.shared.config.writer_spin;
        if !spin.is_zero() {
            let start = Instant::now();
            loop {
                match self.rx.try_recv() {
                    Ok(op) => return Ok(op),
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        return Err(crossbeam_channel::RecvError);
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => {}
                }
                if start.elapsed() >= spin {
                    break;
                }
                // Yield rather than spin: on a busy machine the thread this one waits for may
                // need this CPU.
                std::thread::yield_now();
            }
        }
        self.rx.recv()
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
        if self.log.is_some() {
            if let Err(c) = self.checkpoint_now(true) {
                self.shared.poison(c);
            } else if let Some(log) = self.log.take() {
                // The file holds everything now; the log's entries are not needed any more.
                let _ = log.close();
            }
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
        }
        let _ = self.io(txn.commit());
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
        if self.log.is_some() {
            return self.batch_logged(ops, force_durable);
        }
        let shared = Arc::clone(&self.shared);
        let mut b = self.new_batch(ops.len(), force_durable);
        // A panic below drops `b`'s reply slots while unwinding; they are marked so, and their
        // callers hear `Poisoned` (see `Shared::lost_reply`); `guarded` then poisons the store.
        let ops_count = ops.len() as u64;
        let Ok(txn) = self.io(self.db.begin_write()) else {
            return;
        };
        let token_before = self.next_token;
        {
            let Ok(t) = self.file_tables(&txn) else {
                return;
            };
            if self.apply_all(t, ops, &mut b).is_err() {
                return;
            }
        }
        {
            let meta = self.io(txn.open_table(META));
            let Ok(mut meta) = meta else { return };
            if self.next_token != token_before
                && self
                    .io(meta.insert(META_NEXT_TOKEN, self.next_token))
                    .is_err()
            {
                return;
            }
            let counts = self.io(txn.open_table(SCOPE_COUNTS));
            let Ok(mut counts) = counts else { return };
            if self.io(b.deltas.flush(&mut counts, &mut meta)).is_err() {
                return;
            }
        }
        if !b.mutated && !b.durable {
            let _ = txn.abort();
            self.finish(b);
            return;
        }
        let started = Instant::now();
        match self.commit_direct(txn, &b) {
            Ok(durable) => self.committed(b, ops_count, started, durable),
            Err(c) => fail_batch(&shared, b, c),
        }
    }

    /// A batch through the write-ahead log: decided against the overlay over a snapshot of the
    /// file, its changes kept in the overlay and appended to the log as one entry, the log
    /// synced when the batch needs durability. The file is written by checkpoints.
    fn batch_logged(&mut self, ops: Vec<Op>, force_durable: bool) {
        let shared = Arc::clone(&self.shared);
        let mut b = self.new_batch(ops.len(), force_durable);
        let ops_count = ops.len() as u64;
        // A finished checkpoint first: its generation leaves the overlay only now, before the
        // snapshot below is taken, so the snapshot holds it.
        if let Err(c) = self.settle_checkpoint(false) {
            for op in ops {
                op.fail(Unavailable::Poisoned { cause: c.clone() });
            }
            return;
        }
        let Ok(snapshot) = self.io(self.db.begin_read()) else {
            return;
        };
        {
            let opened = (|| {
                Ok::<_, redb::TableError>(Tables::Logged {
                    overlay: &shared.overlay,
                    records: snapshot.open_table(RECORDS)?,
                    expiry: snapshot.open_table(EXPIRY)?,
                })
            })();
            let Ok(t) = self.io(opened) else {
                return;
            };
            if self.apply_all(t, ops, &mut b).is_err() {
                return;
            }
        }
        drop(snapshot);
        if !b.mutated && !b.durable && !b.checkpoint {
            self.finish(b);
            return;
        }
        let started = Instant::now();
        match self.log_batch(&mut b) {
            Ok(durable) => self.committed(b, ops_count, started, durable),
            Err(c) => fail_batch(&shared, b, c),
        }
    }

    /// An empty batch for `n` operations; `force_durable` makes it durable if anything
    /// acknowledged is not yet.
    fn new_batch(&self, n: usize, force_durable: bool) -> Batch {
        Batch {
            pending: Vec::with_capacity(n),
            durable: force_durable && self.unsynced,
            ..Batch::default()
        }
    }

    fn file_tables<'t>(&self, txn: &'t WriteTransaction) -> Result<Tables<'t>, Fail> {
        self.io(open_each_alone(txn))?;
        Ok(Tables::File {
            records: self.io(txn.open_table(RECORDS))?,
            expiry: self.io(txn.open_table(EXPIRY))?,
        })
    }

    /// Counts a committed batch, tracks what is durable, then answers it.
    fn committed(&mut self, b: Batch, ops_count: u64, started: Instant, durable: bool) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let counters = &self.shared.counters;
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
            if let Durability::Buffered { max_delay } = self.shared.config.durability
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

    /// Appends the batch's entry to the log and syncs it when the batch needs durability.
    /// When the entry does not fit even once the running checkpoint has freed its space, or
    /// when the batch asks for it, the batch is a checkpoint instead: everything, this batch
    /// included, goes into the file in one durable commit. Afterwards a checkpoint is started
    /// in the background if one is due. Returns whether everything acknowledged so far is
    /// durable now.
    fn log_batch(&mut self, b: &mut Batch) -> Result<bool, Cause> {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let len = b.entry.len();
        let fits = |w: &Writer| w.log.as_ref().is_some_and(|l| l.fits(len));
        let full = !b.entry.is_empty() && !b.checkpoint && !fits(self);
        if full {
            bump(&counters.log_full_waits);
            self.settle_checkpoint(true)?;
        }
        if b.checkpoint || (!b.entry.is_empty() && !fits(self)) {
            self.checkpoint_now(false)?;
            return Ok(true);
        }
        let Some(log) = self.log.as_mut() else {
            return Err(Arc::new(Message("the write-ahead log is gone".to_owned())));
        };
        if !b.entry.is_empty() {
            log.append(&mut b.entry, self.next_token)
                .map_err(log_failure)?;
            add(&counters.log_bytes, len as u64);
        }
        if b.durable && log.unsynced() {
            log.sync().map_err(log_failure)?;
            bump(&counters.log_syncs);
        }
        if b.durable {
            bump(&counters.durable_commits);
        }
        let due = log.wants_checkpoint()
            || self.last_checkpoint.elapsed() >= self.shared.config.checkpoint_interval;
        if due
            && !self
                .checkpointer
                .as_ref()
                .is_some_and(Checkpointer::running)
        {
            self.start_checkpoint()?;
        }
        Ok(b.durable)
    }

    /// Freezes the overlay's current generation and hands it to the checkpoint thread, unless
    /// it is empty.
    fn start_checkpoint(&mut self) -> Result<(), Cause> {
        let overlay = &self.shared.overlay;
        let (Some(log), Some(cp)) = (self.log.as_ref(), self.checkpointer.as_mut()) else {
            return Ok(());
        };
        if overlay.is_empty() {
            return Ok(());
        }
        let mark = log.mark();
        let Some(changes) = overlay.freeze() else {
            return Ok(());
        };
        self.last_checkpoint = Instant::now();
        cp.start(Job {
            changes,
            mark,
            next_token: self.next_token,
            clean: false,
        })
    }

    /// Collects the result of the running checkpoint, if it has finished (with `block`, waits
    /// for it): the log space before its mark is free and its generation leaves the overlay.
    /// A failed checkpoint poisons the store.
    fn settle_checkpoint(&mut self, block: bool) -> Result<(), Cause> {
        let Some(cp) = self.checkpointer.as_mut() else {
            return Ok(());
        };
        match cp.finished(block) {
            None => Ok(()),
            Some(Ok((mark, took))) => {
                if let Some(log) = self.log.as_mut() {
                    log.checkpointed(mark);
                }
                self.count_checkpoint(took);
                self.expire_cursor = None;
                if let (Some(changes), Some(cp)) =
                    (self.shared.overlay.thaw(), self.checkpointer.as_ref())
                {
                    cp.dispose(changes);
                }
                let counters = &self.shared.counters;
                bump(&counters.checkpoints);
                bump(&counters.durable_commits);
                Ok(())
            }
            Some(Err(c)) => {
                self.shared.poison(c.clone());
                Err(c)
            }
        }
    }

    /// Writes every change in the overlay into the file on this thread, in one durable commit
    /// that records the log's current mark (and, with `clean`, that the store closed cleanly).
    fn checkpoint_now(&mut self, clean: bool) -> Result<(), Cause> {
        self.settle_checkpoint(true)?;
        let Some(log) = self.log.as_mut() else {
            return Ok(());
        };
        let mark = log.mark();
        let changes = self.shared.overlay.freeze().unwrap_or_default();
        let job = Job {
            changes,
            mark,
            next_token: self.next_token,
            clean,
        };
        let started = Instant::now();
        let result = checkpoint::commit(&self.db, &job);
        drop(job);
        let took = started.elapsed();
        if let Err(c) = result {
            self.shared.poison(c.clone());
            return Err(c);
        }
        log.checkpointed(mark);
        // The durable commit holds every entry logged so far: none needs a sync any more.
        log.forget_unsynced();
        self.expire_cursor = None;
        self.shared.overlay.thaw();
        self.last_checkpoint = Instant::now();
        self.count_checkpoint(took);
        let counters = &self.shared.counters;
        bump(&counters.checkpoints);
        bump(&counters.durable_commits);
        Ok(())
    }

    fn count_checkpoint(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let counters = &self.shared.counters;
        add(&counters.checkpoint_micros_total, micros);
        raise(&counters.checkpoint_micros_max, micros);
    }

    /// Applies the index effects, then answers every caller.
    fn finish(&mut self, b: Batch) {
        self.scopes.apply(&b.deltas);
        for effect in b.effects {
            match effect {
                Effect::Put(hash, entry) => {
                    let cached = entry
                        .response
                        .as_ref()
                        .map(|r| (entry.hot.token, r.encoded_len()));
                    let hot = entry.hot;
                    let index = &self.shared.index;
                    // A completed record the index holds already (a replay answered by the
                    // writer, say) is counted once, when it came in; in-flight ones are not
                    // counted at all, so they need no lookup.
                    let counted = hot.state == State::Completed && index.holds(&hash, &hot);
                    index.insert(hash, entry);
                    match cached {
                        Some((token, size)) => self
                            .cached
                            .add(hash, token, size, |h, t| index.drop_response(&h, t)),
                        None => self.cached.remove(&hash),
                    }
                    if !counted {
                        self.count_completed(hash, &hot);
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
                        self.count_completed(hash, &hot);
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

    /// Counts a record just put in the index against `index_max_completed`, dropping the
    /// oldest completed records beyond it.
    fn count_completed(&mut self, hash: KeyHash, hot: &Hot) {
        if hot.state != State::Completed {
            return;
        }
        let index = &self.shared.index;
        let cached = &mut self.cached;
        self.completed.add(hash, hot.token, |h, t| {
            if index.remove_completed(&h, t) {
                cached.remove(&h);
            }
        });
    }

    /// Poisons the store on a storage error.
    fn io<T, E: Into<redb::Error>>(&self, r: Result<T, E>) -> Result<T, Fail> {
        r.map_err(|e| {
            self.shared.poison(cause(e.into()));
            Fail
        })
    }

    /// Whether an operation that needs durability makes this batch durable: in the buffered
    /// mode only an explicit flush or the deadline does. (The writer never runs a
    /// `Durability::Memory` store: the memory engine does.)
    fn durable_if(&self, needed: bool) -> bool {
        needed && self.shared.config.durability == Durability::Immediate
    }

    fn apply_all(&mut self, mut t: Tables<'_>, ops: Vec<Op>, b: &mut Batch) -> Result<(), Fail> {
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
        let found = self.io(t.record(hash, decode))?;
        Ok(found.map(|r| {
            r.map_err(|e| Unavailable::Corrupted {
                detail: format!("record {hash:?}: {e}"),
            })
        }))
    }

    /// Writes `record` under `hash` in place of `old` (none: the key held no record), moving
    /// its expiry index entry from `old`'s, counts it (C13), and logs the new state with
    /// `response`, the stored response it now has (the caller writes that one; none for a
    /// record in flight).
    fn put(
        &self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        (hash, record): (&KeyHash, &Record),
        old: Option<&Hot>,
        response: Option<&[u8]>,
    ) -> Result<(), Fail> {
        let bytes = record.encode();
        let in_flight = record.hot.state == State::InFlight;
        match old {
            None => b.deltas.added(&record.scope, in_flight),
            Some(o) => b
                .deltas
                .state_changed(o.state == State::InFlight, in_flight),
        }
        let old_expiry = old.map(|o| o.expires_at);
        self.io(t.put(hash, (bytes.as_slice(), &record.hot), old_expiry, response))?;
        if self.log.is_some() {
            b.entry.put(&hash.0, &bytes, response);
        }
        Ok(())
    }

    /// Removes a record, its response and its expiry entry, and counts it out (C13).
    fn delete(
        &self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        hash: &KeyHash,
        hot: Option<&Hot>,
    ) -> Result<(), Fail> {
        // Read from the record's header, so a record damaged elsewhere is counted out too.
        let gone = self.io(t.record(hash, |bytes| {
            let scope = Record::scope_of(bytes).map(Box::<str>::from);
            (scope, scope_count::in_flight(bytes))
        }))?;
        if let Some((scope, in_flight)) = gone {
            b.deltas.gone(scope.as_deref(), in_flight);
        }
        if self.log.is_some() {
            b.entry.delete(&hash.0);
        }
        self.io(t.delete(hash, hot))
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
                    BeginDecision::Execute { .. }
                        if hot.is_none()
                            && self.scopes.live(scope.as_str(), &b.deltas)
                                >= config.max_records_per_scope =>
                    {
                        // A new record would pass the scope's cap (C13).
                        bump(&counters.scope_full);
                        let limit = config.max_records_per_scope;
                        b.pending.push(Pending::Begin(
                            reply,
                            Ok(BeginReply::ScopeFull { limit }),
                            hash,
                        ));
                    }
                    BeginDecision::Execute { takeover } => {
                        let token = self.next_token;
                        self.next_token = self.next_token.saturating_add(1);
                        let new = machine::reserved(
                            fp,
                            token,
                            now,
                            crate::clock::millis(config.lease),
                            crate::clock::millis(config.ttl),
                        );
                        let lease_deadline = new.lease_deadline;
                        let record = Record {
                            hot: new,
                            scope: scope.as_str().to_owned(),
                            key: key.as_str().to_owned(),
                        };
                        self.put(t, b, (&hash, &record), hot.as_ref(), None)?;
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
                        let blob = self.io(t.response(&hash, hot.expires_at, response::decode))?;
                        let decoded = match blob {
                            Some(r) => r.map_err(|e| e.to_string()),
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
                policy,
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
                if policy.keeps(response.status()) {
                    record.hot = machine::completed(
                        old,
                        response.status(),
                        blob.len(),
                        now,
                        crate::clock::millis(config.ttl),
                    );
                    self.put(t, b, (&hash, &record), Some(&old), Some(blob.as_slice()))?;
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
                        self.put(t, b, (&hash, &record), Some(&old), None)?;
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
                add(&self.shared.counters.expired_removed, report.removed);
                b.pending.push(Pending::Expire(reply, report));
            }
            Op::Flush { reply } => {
                b.durable |= self.unsynced || b.mutated;
                b.pending.push(Pending::Flush(reply));
            }
            Op::Barrier { reply } => b.pending.push(Pending::Flush(reply)),
            Op::Checkpoint { reply } => {
                b.checkpoint |= self.log.is_some();
                b.pending.push(Pending::Flush(reply));
            }
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
        &mut self,
        t: &mut Tables<'_>,
        now: u64,
        limit: usize,
        b: &mut Batch,
    ) -> Result<ExpireReport, Fail> {
        let mut cursor = self.expire_cursor;
        let due = self.io(t.due(now, limit, &mut cursor))?;
        self.expire_cursor = cursor;
        let mut report = ExpireReport {
            scanned: due.len(),
            removed: 0,
        };
        for ek in due {
            let hash = ek.hash();
            self.io(t.drop_expiry(ek))?;
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
        Ok(report)
    }
}

/// A batch whose commit failed: the store is poisoned, and every caller hears that the outcome
/// of its operation is unknown.
fn fail_batch(shared: &Shared, b: Batch, c: Cause) {
    shared.poison(c.clone());
    for p in b.pending {
        p.fail(Unavailable::OutcomeUnknown { cause: c.clone() });
    }
}

fn log_failure(e: std::io::Error) -> Cause {
    Arc::new(Message(format!(
        "the write-ahead log could not be written or synced, so nothing since its last sync can \
         be trusted to be durable: {e}"
    )))
}
