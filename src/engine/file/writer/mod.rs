//! The group-commit writer: one thread decides every change.
//!
//! Why: making something durable costs an fsync (about 0.12 ms for a log entry, 0.7 ms for a
//! database commit) whatever it carries, so the writer drains everything queued (up to the
//! batch limit), decides all of it, makes it durable once (one log entry and one log sync, or
//! without a log one write transaction), and only then answers every caller. Throughput grows
//! with the number of concurrent callers while each one still waits for its own durability.
//! With a log the database file is written by checkpoints (`../checkpoint.rs`), not here.
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
//! - a logged batch's changes are published to readers only once the batch is durable (its
//!   log sync, or the synchronous checkpoint that carries them);
//! - a failed commit answers the whole batch "outcome unknown" and poisons the store, and so
//!   does a panic inside a commit (the storage engine's or a device's: the commit may be on
//!   disk); any storage error poisons the store before any reply slot of the batch is dropped;
//! - `next_token` only grows and is written in the same transaction as the reservations that
//!   used it, so fencing tokens never repeat, even across crashes; so a token below the first
//!   one of this open (`first_token`) was handed out before it.
//!
//! Here: the thread's loop and the batches and their commits. Beside it: `apply.rs` (one
//! function per operation), `batch_tables.rs` (where a batch reads and writes), `checkpoints.rs`
//! (the log's side), `direct.rs` (batches with caller work) and `finish.rs` (the index effects
//! and the answers).
//!
//! A batch that carries caller work (`Op::Work`: the caller's own writes, alone or with a
//! completion) is committed to the file directly instead, in `direct.rs`.
//!
//! Extension point: an operation is a variant of [`Op`] with its own function in `apply.rs`,
//! run against the batch's [`Tables`].

mod apply;
mod batch_tables;
mod checkpoints;
mod direct;
mod finish;

use std::ops::Bound;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use super::FileState;
use super::budget::{CompletedBudget, ResponseBudget};
use super::change::Change;
use super::checkpoint::{self, Checkpointer, Job};
use super::index::Entry;
use super::log::{EntryBuf, Log};
use super::op::{Abandoned, Op, Pending};
use super::overlay::Overlay;
use crate::backend::{Claim, Completion};
use crate::config::Durability;
use crate::engine::{ExpireReport, Shared};
use crate::error::{BeginError, Cause, CompleteError, LeaseError, Message, Unavailable, cause};
use crate::format::blob;
use crate::format::record::{
    EXPIRY, ExpiryKey, ExpiryValue, Hot, META, META_CLEAN, META_NEXT_TOKEN, RECORDS, Record,
    RecordBytes, SCOPE_COUNTS, State, open_each_alone,
};
use crate::format::scope_count::{self, Counts, Deltas};
use crate::format::tables;
use crate::poison;
use crate::rules::key::KeyHash;
use crate::rules::machine::{self, BeginDecision, HolderRefusal, lease_refusal};
use crate::rules::response::Response;
use crate::stats::{add, bump, count_fenced, count_takeover, raise};
use batch_tables::Tables;

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
    /// The batch carries caller work and is committed to the file directly, even with a log
    /// (`direct.rs`): its changes are not logged.
    direct: bool,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// The hot index, the overlay and the count of queued detached releases.
    state: Arc<FileState>,
    db: Arc<Database>,
    rx: Receiver<Op>,
    next_token: u64,
    /// The first token of this open: a reservation with a lower one was made before the
    /// store was opened, by a process (or a handle) that is gone.
    first_token: u64,
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
    /// The live records of each scope as of the last commit (rule C13).
    scopes: Counts,
    /// The write-ahead log and its checkpoints, when batches are acknowledged through a log.
    logged: Option<Logged>,
}

/// What the writer keeps only with a write-ahead log.
struct Logged {
    log: Log,
    /// The thread that writes the overlay's frozen generations into the file.
    checkpointer: Checkpointer,
    /// When the last checkpoint (durable database commit) was started.
    last_checkpoint: Instant,
    /// The last expiry index entry of the file an expiry pass looked at since the last
    /// checkpoint (see `Tables::due`).
    expire_cursor: Option<ExpiryKey>,
}

/// Starts the writer thread.
pub(crate) fn spawn(writer: Writer) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("idemstore-writer".into())
        .spawn(move || writer.run())
}

/// What one turn of the writer did (step mode, `../step.rs`).
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
    /// A writer over `rx`, with `checkpointer` when batches are acknowledged through `log`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        state: Arc<FileState>,
        db: Arc<Database>,
        rx: Receiver<Op>,
        next_token: u64,
        log: Option<(Log, Checkpointer)>,
        scopes: Counts,
    ) -> Writer {
        let cached = ResponseBudget::new(shared.config.response_cache_bytes);
        let completed = CompletedBudget::new(shared.config.index_max_completed);
        let logged = log.map(|(log, checkpointer)| Logged {
            log,
            checkpointer,
            last_checkpoint: Instant::now(),
            expire_cursor: None,
        });
        Writer {
            shared,
            state,
            db,
            rx,
            next_token,
            first_token: next_token,
            unsynced: false,
            flush_at: None,
            cached,
            completed,
            orphans: Vec::new(),
            scopes,
            logged,
        }
    }
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
    /// operation (step mode, `../step.rs`): the batch `run` would take next, if anything is
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
        self.logged.as_mut().map(|l| &mut l.checkpointer)
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
        if self.logged.is_some() {
            if let Err(c) = self.checkpoint_now(true) {
                self.shared.poison(c);
            } else if let Some(logged) = self.logged.take() {
                // The file holds everything now; the log's entries are not needed any more.
                let _ = logged.log.close();
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
        if let Err(text) = poison::catch(|| self.batch(ops, force_durable)) {
            self.shared.poison(Arc::new(Message(format!(
                "the writer thread panicked: {text}"
            ))));
        }
    }

    fn batch(&mut self, ops: Vec<Op>, force_durable: bool) {
        if ops.iter().any(|op| matches!(op, Op::Work { .. })) {
            return self.batch_direct(ops);
        }
        if self.logged.is_some() {
            return self.batch_logged(ops, force_durable);
        }
        let shared = Arc::clone(&self.shared);
        let mut b = self.new_batch(ops.len(), force_durable);
        // A panic before the commit drops `b`'s reply slots while unwinding; they are marked
        // so, and their callers hear `Poisoned` (see `Shared::lost_reply`), which is true:
        // nothing of the batch was written. `guarded` then poisons the store. A panic in the
        // commit is a failed commit (`committing`).
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
        match committing(|| self.commit_direct(txn, &b)) {
            Ok(durable) => self.committed(b, ops_count, started, durable),
            Err(c) => fail_batch(&shared, b, c),
        }
    }

    /// A batch through the write-ahead log: decided against the overlay over a snapshot of the
    /// file, its changes kept in the overlay and appended to the log as one entry, the log
    /// synced when the batch needs durability. The file is written by checkpoints.
    fn batch_logged(&mut self, ops: Vec<Op>, force_durable: bool) {
        let shared = Arc::clone(&self.shared);
        let state = Arc::clone(&self.state);
        let mut b = self.new_batch(ops.len(), force_durable);
        let ops_count = ops.len() as u64;
        // A batch that failed left its changes unpublished, and poisoned the store: none of
        // them may reach a later batch's view.
        state.overlay.discard_unpublished();
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
                    overlay: &state.overlay,
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
        match committing(|| self.log_batch(&mut b)) {
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
        self.shared.metrics.commit(ops_count, started.elapsed());
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
}

/// Runs a batch's commit, turning a panic inside it (the storage engine's, or a device's) into
/// a failed commit: the commit may have reached the disk before the panic, so the batch's
/// callers must hear `OutcomeUnknown` (C10), not the `Poisoned` that the replies dropped by the
/// unwinding would give them.
fn committing<T>(commit: impl FnOnce() -> Result<T, Cause>) -> Result<T, Cause> {
    poison::catch(commit).unwrap_or_else(|text| Err(panicked_in_commit(&text)))
}

/// The cause a panic inside a commit poisons the store with.
fn panicked_in_commit(text: &str) -> Cause {
    Arc::new(Message(format!(
        "the storage engine panicked during a commit: {text}"
    )))
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
