//! Checkpoints: writing a generation of logged changes into the database file, durably, on a
//! thread of its own.
//!
//! Why: with a write-ahead log the database file is only the place the log is folded into, so
//! that the log's space can be reused. Doing that fold on the writer thread would stop every
//! acknowledgement for as long as a durable commit of a second's worth of changes takes (tens
//! of milliseconds); on the `idemstore-checkpoint` thread it runs beside the writer, which
//! keeps logging and answering into the next generation of the overlay.
//!
//! Invariants:
//! - a checkpoint commits, in one durable transaction, a frozen generation together with the
//!   log mark that covers exactly its changes (and every earlier one), and the next fencing
//!   token as of the freeze; so after any crash the file plus the log after its mark hold
//!   every synced entry;
//! - one checkpoint runs at a time, and its result (success with its mark, or the failure that
//!   poisons the store) reaches the writer, which alone frees log space and drops the frozen
//!   generation, after the commit;
//! - applying a change writes the key's whole state, so applying it over a file that already
//!   holds it changes nothing (recovery replays the same way).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded};
use redb::{Database, Table, WriteTransaction};

use super::change::Change;
use super::log::Mark;
use super::overlay::Changes;
use crate::error::{Cause, Message, cause};
use crate::format::record::{
    EXPIRY, Hot, META, META_CLEAN, META_LOG_POS, META_LOG_SEQ, META_LOG_ZEROED, META_NEXT_TOKEN,
    RECORDS, SCOPE_COUNTS, open_each_alone,
};
use crate::format::scope_count::Deltas;
use crate::format::tables;
use crate::poison;
use crate::rules::key::KeyHash;

/// Why a change could not be applied.
#[derive(Debug)]
pub(crate) enum ApplyError {
    Storage(redb::Error),
    /// A logged record that does not decode (a checksum-valid entry written by a faulty build).
    BadRecord(String),
}

impl<E: Into<redb::Error>> From<E> for ApplyError {
    fn from(e: E) -> Self {
        ApplyError::Storage(e.into())
    }
}

/// Sets `hash` to the state `change` carries: the record, and its expiry entry holding its
/// response (or none), replacing whatever the tables held for it; what it adds or removes goes
/// into `deltas`, which the caller flushes into the counts before its commit.
pub(crate) fn apply_change(
    records: &mut tables::Records<'_>,
    expiry: &mut tables::Expiry<'_>,
    deltas: &mut Deltas,
    hash: &KeyHash,
    change: Change<&[u8]>,
) -> Result<(), ApplyError> {
    match change {
        Change::Put { record, response } => {
            let new = Hot::decode(record).map_err(|e| {
                ApplyError::BadRecord(format!("a logged record does not decode: {e}"))
            })?;
            let replaced = tables::put(records, expiry, hash, (record, new.expires_at), response)?;
            deltas.replaced(replaced.as_ref().map(|g| g.value()), record);
        }
        Change::Delete => {
            if let Some(g) = tables::delete(records, expiry, hash)? {
                deltas.removed(g.value());
            }
        }
    }
    Ok(())
}

/// Records a checkpoint's log position in the meta table.
pub(crate) fn write_mark(
    meta: &mut Table<'_, &'static str, u64>,
    mark: Mark,
) -> Result<(), redb::StorageError> {
    meta.insert(META_LOG_SEQ, mark.seq)?;
    meta.insert(META_LOG_POS, mark.pos)?;
    meta.insert(META_LOG_ZEROED, mark.zeroed)?;
    Ok(())
}

/// What a checkpoint writes.
pub(crate) struct Job {
    pub(crate) changes: Arc<Changes>,
    /// The log position covering exactly `changes` and everything before them.
    pub(crate) mark: Mark,
    /// The next fencing token as of the freeze.
    pub(crate) next_token: u64,
    /// Also mark the file closed cleanly (the last checkpoint of a store).
    pub(crate) clean: bool,
}

/// Writes `job` into the file in one durable commit.
pub(crate) fn commit(db: &Database, job: &Job) -> Result<(), Cause> {
    let run = || -> Result<(), ApplyError> {
        let mut txn = db.begin_write()?;
        fold(&txn, job)?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    };
    match poison::catch(run) {
        Ok(r) => r.map_err(ApplyError::into_cause),
        Err(text) => Err(Arc::new(Message(format!(
            "the storage engine panicked during a checkpoint: {text}"
        )))),
    }
}

/// Writes `job`'s changes, its log mark and its next token into `txn`, without committing:
/// a checkpoint's work, which the writer also does at the start of a batch it commits to the
/// file directly (`writer/direct.rs`).
pub(crate) fn fold(txn: &WriteTransaction, job: &Job) -> Result<(), ApplyError> {
    open_each_alone(txn)?;
    let mut records = txn.open_table(RECORDS)?;
    let mut expiry = txn.open_table(EXPIRY)?;
    // In key order: the records' leaves are then visited once, left to right, instead of at
    // random, which keeps the storage engine's page cache and the CPU's caches warm across
    // neighbouring keys (the expiry table is keyed by time first; its new entries gather at
    // its right edge whatever the order). Changes to different keys commute.
    let mut sorted: Vec<_> = job.changes.iter().collect();
    sorted.sort_unstable_by_key(|(hash, _)| **hash);
    let mut deltas = Deltas::default();
    for (hash, change) in sorted {
        apply_change(
            &mut records,
            &mut expiry,
            &mut deltas,
            hash,
            change.as_slices(),
        )?;
    }
    let mut meta = txn.open_table(META)?;
    deltas.flush(&mut txn.open_table(SCOPE_COUNTS)?, &mut meta)?;
    write_mark(&mut meta, job.mark)?;
    meta.insert(META_NEXT_TOKEN, job.next_token)?;
    if job.clean {
        meta.insert(META_CLEAN, 1)?;
    }
    Ok(())
}

impl ApplyError {
    /// The failure as the poison's cause.
    pub(crate) fn into_cause(self) -> Cause {
        match self {
            ApplyError::Storage(e) => cause(e),
            ApplyError::BadRecord(detail) => Arc::new(Message(detail)),
        }
    }
}

enum ToThread {
    Run(Job),
    Drop(Arc<Changes>),
}

/// The writer's handle on the checkpoint thread.
pub(crate) struct Checkpointer {
    jobs: Option<Sender<ToThread>>,
    done: Receiver<(Mark, Result<(), Cause>, Duration)>,
    thread: Option<JoinHandle<()>>,
    /// A checkpoint was started and its result not collected yet.
    running: bool,
    /// Step mode (`step.rs`): no thread; a started job is held here until a step runs it.
    held: Option<super::step::HeldCheckpoint>,
}

impl Checkpointer {
    /// Starts the `idemstore-checkpoint` thread.
    pub(crate) fn spawn(db: Arc<Database>) -> std::io::Result<Checkpointer> {
        // Room for a job and a generation to drop.
        let (jobs, rx) = bounded::<ToThread>(2);
        let (tx, done) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("idemstore-checkpoint".into())
            .spawn(move || {
                for message in rx {
                    let job = match message {
                        ToThread::Run(job) => job,
                        ToThread::Drop(changes) => {
                            drop(changes);
                            continue;
                        }
                    };
                    let started = Instant::now();
                    let result = commit(&db, &job);
                    if tx.send((job.mark, result, started.elapsed())).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            running: false,
            held: None,
        })
    }

    /// A checkpointer without a thread (step mode, `step.rs`): each job runs on the caller's
    /// thread, when it is handed over (`at_hand_off`) or when a step or the writer asks for it.
    pub(crate) fn stepped(db: Arc<Database>, at_hand_off: bool) -> Checkpointer {
        let (tx, done) = bounded(1);
        Checkpointer {
            jobs: None,
            done,
            thread: None,
            running: false,
            held: Some(super::step::HeldCheckpoint::new(db, tx, at_hand_off)),
        }
    }

    /// Runs the job held in step mode, if any; returns whether one ran.
    pub(crate) fn run_held(&mut self) -> bool {
        self.held.as_mut().is_some_and(|h| h.run())
    }

    /// Whether a checkpoint is running.
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// Hands `job` to the thread; the caller checked that none is running.
    pub(crate) fn start(&mut self, job: Job) -> Result<(), Cause> {
        if let Some(held) = self.held.as_mut() {
            held.hold(job);
            self.running = true;
            return Ok(());
        }
        let sent = self.jobs.as_ref().map(|j| j.send(ToThread::Run(job)));
        match sent {
            Some(Ok(())) => {
                self.running = true;
                Ok(())
            }
            _ => Err(Arc::new(Message(
                "the checkpoint thread has stopped".to_owned(),
            ))),
        }
    }

    /// Drops a generation on the checkpoint thread: freeing tens of thousands of changes takes
    /// milliseconds that no caller should wait for. Dropped here if the thread cannot take it.
    pub(crate) fn dispose(&self, changes: Arc<Changes>) {
        if let Some(j) = self.jobs.as_ref() {
            let _ = j.try_send(ToThread::Drop(changes));
        }
    }

    /// The result of the running checkpoint if it has finished, with the time it took; with
    /// `block`, waits for it.
    pub(crate) fn finished(&mut self, block: bool) -> Option<Result<(Mark, Duration), Cause>> {
        if !self.running {
            return None;
        }
        if block {
            self.run_held();
        }
        let got = if block {
            self.done.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            self.done.try_recv()
        };
        match got {
            Ok((mark, result, took)) => {
                self.running = false;
                Some(result.map(|()| (mark, took)))
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.running = false;
                Some(Err(Arc::new(Message(
                    "the checkpoint thread stopped during a checkpoint".to_owned(),
                ))))
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // As the thread would: a job handed over is carried out.
        self.run_held();
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
