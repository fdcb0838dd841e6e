//! Batches that carry caller work ([`Op::Work`]): committed to the database file directly,
//! not through the write-ahead log.
//!
//! Why: the caller's writes are arbitrary changes to its own tables, and the log holds record
//! states only, so a batch that carries them cannot be acknowledged through it. Such a batch is
//! a checkpoint instead: everything logged so far, then the batch's operations and its work in
//! queue order, in write transactions committed one after another, the last one durably.
//!
//! Invariants:
//! - each piece of work has a write transaction of its own, so its closure's error or panic
//!   rolls back its own writes and nothing else; a completion whose closure fails releases its
//!   key in the next transaction;
//! - a completion checks its holder before its closure runs (a stale holder's closure never
//!   runs) and writes its record in the closure's transaction, so the caller's writes and the
//!   stored response commit together or not at all;
//! - every transaction but the last commits without an fsync and the last one durably, so after
//!   a crash the file holds all of the batch or none of it;
//! - nobody reads the batch before it is durable: the writer holds `FileState::visible` from
//!   its first commit to its durable one (for a batch of one transaction, its commit only),
//!   and every read transaction of the engine begins under that lock;
//! - with a log, the batch's first transaction folds in the whole overlay with the log's mark,
//!   so the file holds every logged change before any work commits over it, and the log's space
//!   is freed only once the last commit is durable;
//! - a storage failure in any of the batch's transactions answers every operation decided so
//!   far, the piece of work it struck included, `OutcomeUnknown` (C10): one of the batch's
//!   commits may be on disk already; the operations not reached yet hear `Poisoned`.

use super::checkpoints::count_checkpoint;
use super::*;
use parking_lot::{RwLock, RwLockWriteGuard};

use crate::config::Terms;
use crate::engine::work::{self, Ran, Work};
use crate::error::PointError;
use crate::format::point;
use crate::rules::machine::HolderRefusal;
use crate::rules::point::RecoveryPoint;

impl Writer {
    /// Runs a batch that carries caller work. See the module documentation.
    pub(super) fn batch_direct(&mut self, ops: Vec<Op>) {
        let shared = Arc::clone(&self.shared);
        let state = Arc::clone(&self.state);
        let mut b = self.new_batch(ops.len(), false);
        b.direct = true;
        b.durable = true;
        let ops_count = ops.len() as u64;
        let folded = match self.freeze_everything() {
            Ok(folded) => folded,
            Err(c) => {
                for op in ops {
                    op.fail(Unavailable::Poisoned { cause: c.clone() });
                }
                return;
            }
        };
        let started = Instant::now();
        // A panic of the storage engine between the batch's transactions or inside one is a
        // failed commit (`committing` in `mod.rs`): an earlier one may be on disk. The caller's
        // closures do not reach this: `work::run_inside` catches their panics.
        let done = poison::catch(|| {
            self.direct_transactions(ops, (folded.as_ref(), &state.visible), &mut b)
        })
        .unwrap_or_else(|text| {
            shared.poison(panicked_in_commit(&text));
            Err(Fail)
        });
        if done.is_err() {
            let c = match shared.poisoned_error() {
                Unavailable::Poisoned { cause } => cause,
                other => Arc::new(Message(other.to_string())),
            };
            fail_batch(&shared, b, c);
            return;
        }
        if let Some(job) = folded {
            self.folded(job, started.elapsed());
        }
        self.committed(b, ops_count, started, true);
    }

    /// With a log: the running checkpoint collected, and everything else logged frozen as
    /// one job for the batch's first transaction.
    fn freeze_everything(&mut self) -> Result<Option<Job>, Cause> {
        self.settle_checkpoint(true)?;
        let Some(l) = self.logged.as_ref() else {
            return Ok(None);
        };
        Ok(Some(Job {
            changes: self.state.overlay.freeze().unwrap_or_default(),
            mark: l.log.mark(),
            next_token: self.next_token,
            clean: false,
        }))
    }

    /// After the batch's durable commit: the folded job is in the file, as after a
    /// checkpoint.
    fn folded(&mut self, job: Job, took: Duration) {
        let Some(l) = self.logged.as_mut() else {
            return;
        };
        l.log.checkpointed(job.mark);
        // The durable commit holds every entry logged so far: none needs a sync any more.
        l.log.forget_unsynced();
        l.expire_cursor = None;
        l.last_checkpoint = Instant::now();
        drop(job);
        if let Some(changes) = self.state.overlay.thaw() {
            l.checkpointer.dispose(changes);
        }
        count_checkpoint(&self.shared, took);
    }

    /// The batch's transactions: the operations between two pieces of work share one, each
    /// piece of work has its own, and the last one commits durably. The folded overlay goes
    /// into the first transaction that commits (a piece of work rolled back takes it along, so
    /// the next transaction carries it again): a batch of one completion is one transaction.
    fn direct_transactions(
        &mut self,
        ops: Vec<Op>,
        (folded, gate): (Option<&Job>, &RwLock<()>),
        b: &mut Batch,
    ) -> Result<(), Fail> {
        let mut part = Part {
            fold: folded,
            durable: false,
            gate,
            visible: None,
        };
        let last = ops.len().saturating_sub(1);
        let mut run = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let Op::Work { work, reply } = op else {
                run.push(op);
                continue;
            };
            if !run.is_empty() {
                let txn = self.begin_part(&part)?;
                self.apply_part(&txn, std::mem::take(&mut run), b)?;
                self.commit_part(txn, b, &mut part, false)?;
            }
            // The reply joins the batch's before the work runs: a failure from here on may
            // come after the work's transaction was written (its commit's fsync failed), and
            // `fail_batch` answers every reply of the batch OutcomeUnknown (C10). A reply
            // dropped instead would be heard as `Poisoned`, and a write retried on that word
            // would run twice.
            let at = b.pending.len();
            b.pending.push(Pending::Work(reply, not_run_yet()));
            let answer = self.work(work, b, &mut part, i == last)?;
            if let Some(Pending::Work(_, slot)) = b.pending.get_mut(at) {
                *slot = answer;
            }
        }
        if run.is_empty() && part.durable && part.fold.is_none() {
            return Ok(());
        }
        let txn = self.begin_part(&part)?;
        self.apply_part(&txn, run, b)?;
        self.commit_part(txn, b, &mut part, true)
    }

    /// Begins one of the batch's transactions, without an fsync at its commit, with the folded
    /// overlay in it unless a transaction that carried it has committed.
    fn begin_part(&self, part: &Part<'_>) -> Result<WriteTransaction, Fail> {
        let mut txn = self.io(self.db.begin_write())?;
        self.io(txn.set_durability(redb::Durability::None))?;
        if let Some(job) = part.fold
            && let Err(e) = checkpoint::fold(&txn, job)
        {
            self.shared.poison(e.into_cause());
            return Err(Fail);
        }
        Ok(txn)
    }

    /// Decides `ops` in `txn`.
    fn apply_part(
        &mut self,
        txn: &WriteTransaction,
        ops: Vec<Op>,
        b: &mut Batch,
    ) -> Result<(), Fail> {
        if ops.is_empty() {
            return Ok(());
        }
        let t = self.file_tables(txn)?;
        self.apply_all(t, ops, b)
    }

    /// Commits one of the batch's transactions; with `durable`, as the batch's durable commit,
    /// which also writes the next token and the scope counts the batch changed. The
    /// transactions before it need neither: they become durable only with it, and nobody reads
    /// them before (the module's invariants), so the counts are written once a batch.
    fn commit_part(
        &mut self,
        mut txn: WriteTransaction,
        b: &mut Batch,
        part: &mut Part<'_>,
        durable: bool,
    ) -> Result<(), Fail> {
        if durable {
            {
                let mut meta = self.io(txn.open_table(META))?;
                self.io(meta.insert(META_NEXT_TOKEN, self.next_token))?;
                let mut counts = self.io(txn.open_table(SCOPE_COUNTS))?;
                self.io(b.deltas.flush(&mut counts, &mut meta))?;
            }
            self.io(txn.set_durability(redb::Durability::Immediate))?;
        }
        if part.visible.is_none() {
            // From the batch's first commit to its durable one, no read transaction begins.
            part.visible = Some(part.gate.write());
        }
        match txn.commit() {
            Ok(()) => {}
            // Only a closure can leave a transaction so: a table it opened still open (which
            // holds the storage engine's write lock, so that no later transaction could even
            // begin), or one of its writes failed part way and it went on. The store stops
            // rather than wait for a lock that may never come free.
            Err(redb::CommitError::TransactionPoisoned) => {
                self.shared.poison(Arc::new(Message(
                    "a transaction with the caller's writes could not be committed: its closure \
                     left a table open or ignored a failed write; open the store again"
                        .to_owned(),
                )));
                return Err(Fail);
            }
            Err(e) => {
                self.shared.poison(cause(redb::Error::from(e)));
                return Err(Fail);
            }
        }
        part.fold = None;
        part.durable = durable;
        if durable && self.logged.is_none() {
            // With a log, the batch's durable commit is counted as the checkpoint it is.
            bump(&self.shared.counters.durable_commits);
        }
        Ok(())
    }

    /// Rolls back one of the batch's transactions: what it carried, the next one carries.
    fn abort_part(&self, txn: WriteTransaction, part: &mut Part<'_>) -> Result<(), Fail> {
        part.durable = false;
        self.io(txn.abort())
    }

    /// Runs one piece of caller work in a transaction of its own, durable when `last`.
    fn work(
        &mut self,
        work: Work,
        b: &mut Batch,
        part: &mut Part<'_>,
        last: bool,
    ) -> Result<Result<Ran, CompleteError>, Fail> {
        match work {
            Work::Write(run) => {
                let txn = self.begin_part(part)?;
                match work::run_inside(|| run(&txn)) {
                    Ok(true) => {
                        self.commit_part(txn, b, part, last)?;
                        b.mutated = true;
                        Ok(Ok(Ran::Committed(Completion::Stored)))
                    }
                    Ok(false) => {
                        self.abort_part(txn, part)?;
                        Ok(Ok(Ran::Declined))
                    }
                    Err(text) => {
                        self.abort_part(txn, part)?;
                        Ok(Ok(Ran::Panicked(text)))
                    }
                }
            }
            Work::Complete {
                hash,
                token,
                terms,
                run,
            } => self.complete_with((&hash, token), terms, run, (b, part, last)),
            Work::Point {
                hash,
                token,
                name,
                run,
            } => self.point_with((&hash, token), &name, run, (b, part, last)),
        }
    }

    /// A recovery point (P1) with the caller's writes in the same transaction: the step's
    /// effect and the point that records it commit together or not at all. A closure that
    /// fails rolls back its writes and leaves the key as it was, held by the same holder.
    fn point_with(
        &mut self,
        (hash, token): (&KeyHash, u64),
        name: &str,
        run: work::PointFn,
        (b, part, last): (&mut Batch, &mut Part<'_>, bool),
    ) -> Result<Result<Ran, CompleteError>, Fail> {
        let txn = self.begin_part(part)?;
        if let Err(refused) = self.held_in(&txn, (hash, token))? {
            self.abort_part(txn, part)?;
            return Ok(Err(refused));
        }
        let point = match work::run_inside(|| run(&txn)) {
            Ok(Some(payload)) => RecoveryPoint::new(name, &payload),
            Ok(None) => {
                self.abort_part(txn, part)?;
                return Ok(Ok(Ran::Declined));
            }
            Err(text) => {
                self.abort_part(txn, part)?;
                return Ok(Ok(Ran::Panicked(text)));
            }
        };
        let point = match point {
            Ok(point) => point,
            Err(e) => {
                // A payload past the limits: the step's writes go with it. Reported through
                // the completion's "cannot be encoded" answer, which `pointed_with` maps back.
                self.abort_part(txn, part)?;
                let reason = match e {
                    PointError::Invalid { reason } => reason,
                    other => other.to_string(),
                };
                return Ok(Err(CompleteError::InvalidResponse { reason }));
            }
        };
        let saved = {
            let mut t = self.file_tables(&txn)?;
            self.save_point(&mut t, b, (hash, token), &point::encode(&point))?
        };
        if let Err(e) = saved {
            // Not reached: the holder was checked in this transaction.
            self.abort_part(txn, part)?;
            return Ok(Err(match e {
                LeaseError::Fenced { token, current } => CompleteError::Fenced { token, current },
                LeaseError::NotReserved { token } => CompleteError::NotReserved { token },
                LeaseError::Unavailable(u) => CompleteError::Unavailable(u),
            }));
        }
        self.commit_part(txn, b, part, last)?;
        Ok(Ok(Ran::Committed(Completion::Stored)))
    }

    /// The record of `hash` in `txn` if reservation `token` holds it (C8), or the refusal a
    /// stale holder (or a damaged record) gets.
    fn held_in(
        &self,
        txn: &WriteTransaction,
        (hash, token): (&KeyHash, u64),
    ) -> Result<Result<Record, CompleteError>, Fail> {
        let t = self.file_tables(txn)?;
        let current = match self.load(&t, hash, Record::decode)? {
            Ok(current) => current,
            Err(damaged) => return Ok(Err(damaged.into())),
        };
        Ok(self.holder(current, (hash, token)))
    }

    /// Checks that reservation `token` holds `hash`'s record `current` (C8): the record, or
    /// the refusal a stale holder gets.
    fn holder(
        &self,
        current: Option<Record>,
        (hash, token): (&KeyHash, u64),
    ) -> Result<Record, CompleteError> {
        match machine::check_holder(current.as_ref().map(|r| &r.hot), token) {
            Err(HolderRefusal::Fenced { current }) => {
                count_fenced(&self.shared, hash, (token, current));
                Err(CompleteError::Fenced { token, current })
            }
            Err(HolderRefusal::NotReserved) => Err(CompleteError::NotReserved { token }),
            Ok(()) => current.ok_or(CompleteError::NotReserved { token }),
        }
    }

    /// `complete` (C3, C7, C8, C10) with the caller's writes in the same transaction.
    fn complete_with(
        &mut self,
        (hash, token): (&KeyHash, u64),
        terms: Terms,
        run: work::CompleteFn,
        (b, part, last): (&mut Batch, &mut Part<'_>, bool),
    ) -> Result<Result<Ran, CompleteError>, Fail> {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let txn = self.begin_part(part)?;
        let mut record = match self.held_in(&txn, (hash, token))? {
            Ok(record) => record,
            Err(refused) => {
                self.abort_part(txn, part)?;
                return Ok(Err(refused));
            }
        };
        // What the closure's outcome leaves: a response to store, or a release and an answer.
        let outcome = match work::run_inside(|| run(&txn)) {
            Ok(Some(response)) => {
                match blob::refusal(&response, shared.config.max_response_bytes) {
                    Some(refused) => Err(Err(refused)),
                    None if !terms.cache_policy().keeps(response.status()) => {
                        Err(Ok(Ran::Committed(Completion::Released)))
                    }
                    None => match blob::encode(&response) {
                        Ok(blob) => Ok((response, blob)),
                        Err(e) => Err(Err(CompleteError::InvalidResponse {
                            reason: e.to_string(),
                        })),
                    },
                }
            }
            Ok(None) => Err(Ok(Ran::Declined)),
            Err(text) => Err(Ok(Ran::Panicked(text))),
        };
        let (response, blob) = match outcome {
            Ok(stored) => stored,
            Err(answer) => {
                self.abort_part(txn, part)?;
                self.release_part((hash, record), (b, part, last))?;
                return Ok(answer);
            }
        };
        {
            let mut t = self.file_tables(&txn)?;
            let old = record.hot;
            let ttl = terms.ttl_ms();
            record.hot = machine::completed(old, response.status(), blob.len(), shared.now(), ttl);
            self.put(&mut t, b, (hash, &record), Some(&old), Some(&blob))?;
        }
        self.commit_part(txn, b, part, last)?;
        b.mutated = true;
        b.effects.push(Effect::Put(
            *hash,
            Entry {
                hot: record.hot,
                response: Some(response),
            },
        ));
        bump(&counters.completions);
        Ok(Ok(Ran::Committed(Completion::Stored)))
    }

    /// Releases the key of a completion that stored nothing, in a transaction of its own
    /// (a key with a recovery point keeps it, with its lease ended: P3).
    fn release_part(
        &mut self,
        (hash, record): (&KeyHash, Record),
        (b, part, last): (&mut Batch, &mut Part<'_>, bool),
    ) -> Result<(), Fail> {
        let txn = self.begin_part(part)?;
        {
            let mut t = self.file_tables(&txn)?;
            // A failed closure is no verdict on a resolution (E6): not explicit.
            self.let_go(&mut t, b, (hash, record), false)?;
        }
        self.commit_part(txn, b, part, last)?;
        bump(&self.shared.counters.releases);
        Ok(())
    }
}

/// What a piece of work's reply holds until the work has run. Never sent: the work's answer
/// replaces it, or the batch's failure answers the reply; were it sent, it would still be
/// true.
fn not_run_yet() -> Result<Ran, CompleteError> {
    Err(CompleteError::Unavailable(Unavailable::OutcomeUnknown {
        cause: Arc::new(Message("the batch stopped while this work ran".to_owned())),
    }))
}

/// Where a direct batch stands between its transactions.
struct Part<'j> {
    /// The folded overlay, until a transaction that carried it has committed.
    fold: Option<&'j Job>,
    /// The last commit was durable, and nothing committed or rolled back since.
    durable: bool,
    /// `FileState::visible`, taken at the batch's first commit and held until the batch is
    /// done: a batch of one transaction holds it for its commit only, not for its closure.
    gate: &'j RwLock<()>,
    visible: Option<RwLockWriteGuard<'j, ()>>,
}
