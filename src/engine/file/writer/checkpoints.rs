//! The writer's side of the write-ahead log: appending a batch's entry, and starting,
//! collecting and forcing checkpoints.
//!
//! Why: with a log, a batch is durable once its entry is synced, and the file catches up in the
//! background; this is where the two meet. Invariants: a finished checkpoint's generation leaves
//! the overlay before the next batch reads it; the log's space before a checkpoint's mark is
//! freed only once that checkpoint is durable; a failed checkpoint poisons the store.

use super::*;

impl Writer {
    /// Appends the batch's entry to the log and syncs it when the batch needs durability.
    /// When the entry does not fit even once the running checkpoint has freed its space, or
    /// when the batch asks for it, the batch is a checkpoint instead: everything, this batch
    /// included, goes into the file in one durable commit. Afterwards a checkpoint is started
    /// in the background if one is due. Returns whether everything acknowledged so far is
    /// durable now.
    pub(super) fn log_batch(&mut self, b: &mut Batch) -> Result<bool, Cause> {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let len = b.entry.len();
        let fits = |w: &Writer| w.logged.as_ref().is_some_and(|l| l.log.fits(len));
        let full = !b.entry.is_empty() && !b.checkpoint && !fits(self);
        if full {
            bump(&counters.log_full_waits);
            crate::trace::log_full();
            self.settle_checkpoint(true)?;
        }
        if b.checkpoint || (!b.entry.is_empty() && !fits(self)) {
            self.checkpoint_now(false)?;
            return Ok(true);
        }
        let next_token = self.next_token;
        let Some(l) = self.logged.as_mut() else {
            return Err(Arc::new(Message("the write-ahead log is gone".to_owned())));
        };
        if !b.entry.is_empty() {
            l.log
                .append(&mut b.entry, next_token)
                .map_err(log_failure)?;
            add(&counters.log_bytes, len as u64);
        }
        if b.durable && l.log.unsynced() {
            l.log.sync().map_err(log_failure)?;
            bump(&counters.log_syncs);
        }
        if b.durable {
            bump(&counters.durable_commits);
        }
        // The batch is as durable as its mode makes it: readers may see it now, and the
        // checkpoint started below carries it.
        self.state.overlay.publish();
        let due = l.log.wants_checkpoint()
            || l.last_checkpoint.elapsed() >= shared.config.checkpoint_interval;
        if due && !l.checkpointer.running() {
            self.start_checkpoint()?;
        }
        Ok(b.durable)
    }

    /// Freezes the overlay's current generation and hands it to the checkpoint thread, unless
    /// it is empty.
    fn start_checkpoint(&mut self) -> Result<(), Cause> {
        let overlay = &self.state.overlay;
        let Some(l) = self.logged.as_mut() else {
            return Ok(());
        };
        if overlay.is_empty() {
            return Ok(());
        }
        let mark = l.log.mark();
        let Some(changes) = overlay.freeze() else {
            return Ok(());
        };
        l.last_checkpoint = Instant::now();
        l.checkpointer.start(Job {
            changes,
            mark,
            next_token: self.next_token,
            clean: false,
        })
    }

    /// Collects the result of the running checkpoint, if it has finished (with `block`, waits
    /// for it): the log space before its mark is free and its generation leaves the overlay.
    /// A failed checkpoint poisons the store.
    pub(super) fn settle_checkpoint(&mut self, block: bool) -> Result<(), Cause> {
        let Some(l) = self.logged.as_mut() else {
            return Ok(());
        };
        match l.checkpointer.finished(block) {
            None => Ok(()),
            Some(Ok((mark, took))) => {
                l.log.checkpointed(mark);
                l.expire_cursor = None;
                if let Some(changes) = self.state.overlay.thaw() {
                    l.checkpointer.dispose(changes);
                }
                count_checkpoint(&self.shared, took);
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
    pub(super) fn checkpoint_now(&mut self, clean: bool) -> Result<(), Cause> {
        self.settle_checkpoint(true)?;
        let Some(l) = self.logged.as_mut() else {
            return Ok(());
        };
        let mark = l.log.mark();
        let changes = self.state.overlay.freeze().unwrap_or_default();
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
        l.log.checkpointed(mark);
        // The durable commit holds every entry logged so far: none needs a sync any more.
        l.log.forget_unsynced();
        l.expire_cursor = None;
        self.state.overlay.thaw();
        l.last_checkpoint = Instant::now();
        count_checkpoint(&self.shared, took);
        Ok(())
    }
}

/// Counts a finished checkpoint, a durable commit.
pub(super) fn count_checkpoint(shared: &Shared, took: Duration) {
    crate::trace::checkpoint(took);
    shared.metrics.checkpoint(took);
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let counters = &shared.counters;
    add(&counters.checkpoint_micros_total, micros);
    raise(&counters.checkpoint_micros_max, micros);
    bump(&counters.checkpoints);
    bump(&counters.durable_commits);
}
