//! Step mode: the file engine's writer, checkpointer and compactor on the caller's thread, one
//! step at a time, for the fuzz targets and the tests (reached only through the `fuzzing`
//! feature's `idemstore::__fuzz`).
//!
//! Why: a fuzz execution that starts three threads and sends every operation across them runs a
//! few hundred times a second, and what it finds depends on how the threads happened to
//! interleave, so a finding may not reproduce from its input. In step mode no thread is
//! started: a store call queues its operation as always, and its caller, when it waits for the
//! answer (a blocking call, or a poll of the future), runs the writer's turns on its own thread
//! until the answer is in. Each turn is one batch, exactly the batch the writer thread would
//! take: everything queued, up to the batch limit. Operations nobody waits for (a dropped
//! reservation's release, a response offered to the index, a future not polled yet) stay queued
//! until the next turn, as they may behind a busy writer thread. A checkpoint handed over by the
//! writer runs at once (`Checkpoints::AtHandOff`), or is held until the test runs it or the
//! writer must wait for it (`Checkpoints::Held`: log full, a synchronous checkpoint, close), as
//! a slow checkpoint thread would; the compactor runs only when the test calls `compact_now`.
//!
//! Invariant: step mode changes when things run, never what they do. The writer's turns, the
//! checkpoint job and the expiry passes are the very code the threads run, in an order the
//! threads could have run them in; so what is acknowledged and what survives a power loss are
//! the same as with threads, and one input gives one schedule.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::Database;

use super::checkpoint::{self, Checkpointer, Job};
use super::log::Mark;
use super::op::Op;
use super::writer::{Turn, Writer};
use crate::config::Checkpoints;
use crate::engine::Shared;
use crate::error::{Cause, Message};
use crate::poison;
use crate::reply::Drive;

/// The checkpoint thread's work, done on the caller's thread.
pub(crate) struct HeldCheckpoint {
    db: Arc<Database>,
    /// Where the result goes, as from the thread.
    done: crossbeam_channel::Sender<(Mark, Result<(), Cause>, Duration)>,
    at_hand_off: bool,
    job: Option<Job>,
}

impl HeldCheckpoint {
    pub(crate) fn new(
        db: Arc<Database>,
        done: crossbeam_channel::Sender<(Mark, Result<(), Cause>, Duration)>,
        at_hand_off: bool,
    ) -> HeldCheckpoint {
        HeldCheckpoint {
            db,
            done,
            at_hand_off,
            job: None,
        }
    }

    /// Takes the job the writer hands over (one at a time, as the thread takes them).
    pub(crate) fn hold(&mut self, job: Job) {
        self.job = Some(job);
        if self.at_hand_off {
            self.run();
        }
    }

    /// Runs the held job as the thread would, if there is one; returns whether one ran.
    pub(crate) fn run(&mut self) -> bool {
        let Some(job) = self.job.take() else {
            return false;
        };
        let started = Instant::now();
        let result = checkpoint::commit(&self.db, &job);
        let _ = self.done.try_send((job.mark, result, started.elapsed()));
        true
    }
}

/// A writer that runs on its callers' threads.
pub(crate) struct Stepper {
    shared: Arc<Shared>,
    /// `None` once the writer has stopped.
    writer: Mutex<Option<Writer>>,
}

impl Stepper {
    pub(crate) fn new(shared: Arc<Shared>, writer: Writer) -> Arc<Stepper> {
        Arc::new(Stepper {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }
}

/// A checkpointer for a writer in step mode.
pub(crate) fn checkpointer(db: Arc<Database>, checkpoints: Checkpoints) -> Checkpointer {
    Checkpointer::stepped(db, checkpoints == Checkpoints::AtHandOff)
}

/// Tells the reply slot of `op` to run `driver` while its caller waits.
fn drive_with(op: &Op, driver: &Weak<dyn Drive>) {
    let driver = Weak::clone(driver);
    match op {
        Op::Begin { reply, .. } => reply.drive_with(driver),
        Op::Complete { reply, .. } => reply.drive_with(driver),
        Op::Work { reply, .. } => reply.drive_with(driver),
        Op::Release { reply, .. } => {
            if let Some(reply) = reply {
                reply.drive_with(driver);
            }
        }
        Op::Renew { reply, .. } => reply.drive_with(driver),
        Op::Point { reply, .. } => reply.drive_with(driver),
        Op::Resolve { reply, .. } => reply.drive_with(driver),
        Op::Purge { reply, .. } => reply.drive_with(driver),
        Op::Expire { reply, .. } => reply.drive_with(driver),
        Op::Flush { reply } | Op::Barrier { reply } | Op::Checkpoint { reply } => {
            reply.drive_with(driver);
        }
        Op::Cache { .. } | Op::Shutdown => {}
    }
}

impl Stepper {
    /// Readies `op` before it is queued: its caller, when it waits, drives the writer.
    pub(crate) fn prepare(self: &Arc<Self>, op: &Op) {
        let driver: Weak<dyn Drive> = Arc::downgrade(self) as Weak<dyn Drive>;
        drive_with(op, &driver);
    }

    /// Runs the writer's turns until it has nothing left to do (after `Shutdown`: until it
    /// has stopped).
    pub(crate) fn run_out(&self) {
        while self.turn() {}
    }

    /// Whether the writer still runs.
    pub(crate) fn running(&self) -> bool {
        self.writer.lock().is_some()
    }

    /// Runs the checkpoint the writer handed over and nobody has run yet, as the checkpoint
    /// thread would finish it now; the writer collects its result at its next batch. Returns
    /// whether there was one.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn run_checkpoint(&self) -> bool {
        let mut writer = self.writer.lock();
        writer
            .as_mut()
            .and_then(Writer::checkpointer)
            .is_some_and(Checkpointer::run_held)
    }
}

impl Drive for Stepper {
    fn turn(&self) -> bool {
        let mut writer = self.writer.lock();
        let Some(w) = writer.as_mut() else {
            return false;
        };
        match poison::catch(|| w.step()) {
            Ok(Turn::Ran) => true,
            Ok(Turn::Idle) => false,
            Ok(Turn::Stopped) => {
                *writer = None;
                false
            }
            Err(text) => {
                // As when the writer thread dies: the store is poisoned and the writer gone.
                self.shared
                    .poison(Arc::new(Message(format!("the writer panicked: {text}"))));
                *writer = None;
                false
            }
        }
    }
}
