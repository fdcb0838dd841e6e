//! The messages between the file engine's handle and its writer thread: queued operations and
//! the answers waiting for their batch's commit.
//!
//! Why: the writer's queue is the store's only write path, so what can be asked of it and how
//! each kind of answer reaches its caller is a concept of its own. Invariants: every operation
//! carries the reply slot its caller waits on (a detached release carries none and is counted
//! in `FileState::detached_releases` instead); an answer is delivered exactly once, or handed back
//! when its caller gave up, and a handed-back reservation is reported so it can be released.

use crate::backend::{Claim, Completion};
use crate::config::Terms;
use crate::engine::{ExpireReport, Ran, Work};
use crate::error::{BeginError, CompleteError, LeaseError, Unavailable};
use crate::reply::Sender;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;

/// One queued operation.
pub(crate) enum Op {
    Begin {
        hash: KeyHash,
        scope: Scope,
        key: Key,
        fp: Fingerprint,
        /// The lease it holds the key for and its record's time to live.
        terms: Terms,
        reply: Sender<Result<Claim, BeginError>>,
    },
    Complete {
        hash: KeyHash,
        token: u64,
        response: Response,
        /// Which statuses are stored (any other releases the key, C7), and for how long.
        terms: Terms,
        blob: Vec<u8>,
        reply: Sender<Result<Completion, CompleteError>>,
    },
    Release {
        hash: KeyHash,
        token: u64,
        reply: Option<Sender<Result<(), LeaseError>>>,
        /// Counted in `FileState::detached_releases` by its sender; settled once applied.
        detached: bool,
    },
    Renew {
        hash: KeyHash,
        token: u64,
        terms: Terms,
        reply: Sender<Result<u64, LeaseError>>,
    },
    /// A recovery point for reservation `token` (P1).
    Point {
        hash: KeyHash,
        token: u64,
        point: RecoveryPoint,
        reply: Sender<Result<(), LeaseError>>,
    },
    /// A reservation of a key whose outcome is unknown, for its resolution (E6).
    Resolve {
        hash: KeyHash,
        reply: Sender<Result<Option<Claim>, Unavailable>>,
    },
    Purge {
        hash: KeyHash,
        reply: Sender<Result<bool, Unavailable>>,
    },
    Expire {
        limit: usize,
        reply: Sender<Result<ExpireReport, Unavailable>>,
    },
    Flush {
        reply: Sender<Result<(), Unavailable>>,
    },
    /// A response read from the file by a replay, offered back to the index.
    Cache {
        hash: KeyHash,
        token: u64,
        response: Response,
    },
    /// Caller work in a write transaction of its own: the batch that holds it is committed
    /// to the database directly (`writer/direct.rs`).
    Work {
        work: Work,
        reply: Sender<Result<Ran, CompleteError>>,
    },
    /// Answered once every operation queued before it has been applied.
    Barrier {
        reply: Sender<Result<(), Unavailable>>,
    },
    /// Answered once every operation queued before it is in the database file (with a log,
    /// after a checkpoint; without one, a barrier): for whole-file reads.
    Checkpoint {
        reply: Sender<Result<(), Unavailable>>,
    },
    Shutdown,
}

/// An answer waiting for the batch's commit.
pub(crate) enum Pending {
    Begin(
        Sender<Result<Claim, BeginError>>,
        Result<Claim, BeginError>,
        KeyHash,
    ),
    Complete(
        Sender<Result<Completion, CompleteError>>,
        Result<Completion, CompleteError>,
    ),
    Lease(
        Option<Sender<Result<(), LeaseError>>>,
        Result<(), LeaseError>,
    ),
    Renew(Sender<Result<u64, LeaseError>>, Result<u64, LeaseError>),
    Resolve(
        Sender<Result<Option<Claim>, Unavailable>>,
        Result<Option<Claim>, Unavailable>,
    ),
    Purge(Sender<Result<bool, Unavailable>>, bool),
    Expire(Sender<Result<ExpireReport, Unavailable>>, ExpireReport),
    Flush(Sender<Result<(), Unavailable>>),
    Work(
        Sender<Result<Ran, CompleteError>>,
        Result<Ran, CompleteError>,
    ),
}

/// A `begin` whose caller gave up waiting (its future was dropped) before the answer came.
pub(crate) enum Abandoned {
    /// The answer was a reservation nobody holds: it must be released.
    Reservation(KeyHash, u64),
    /// Any other answer: nothing to undo.
    Answer,
}

impl Pending {
    /// Answers the caller. A caller that gave up on a `begin` only matters when the answer
    /// handed it a reservation, which must then be released.
    pub(crate) fn deliver(self) -> Option<Abandoned> {
        match self {
            Pending::Begin(tx, r, hash) => {
                return match tx.send(r) {
                    Ok(()) => None,
                    Err(Ok(Claim::Execute { token, .. })) => {
                        Some(Abandoned::Reservation(hash, token))
                    }
                    Err(_) => Some(Abandoned::Answer),
                };
            }
            // A resolution nobody waits for is left to its lease: releasing it would free a
            // key whose outcome is unknown (E6), and another resolution may take it after.
            Pending::Resolve(tx, r) => drop(tx.send(r)),
            // Other callers that gave up lose nothing by not hearing the answer.
            Pending::Complete(tx, r) => drop(tx.send(r)),
            Pending::Lease(Some(tx), r) => drop(tx.send(r)),
            Pending::Lease(None, _) => {}
            Pending::Renew(tx, r) => drop(tx.send(r)),
            Pending::Purge(tx, r) => drop(tx.send(Ok(r))),
            Pending::Expire(tx, r) => drop(tx.send(Ok(r))),
            Pending::Flush(tx) => drop(tx.send(Ok(()))),
            Pending::Work(tx, r) => drop(tx.send(r)),
        }
        None
    }

    /// Answers the caller with an error: nothing was applied, so nothing needs undoing.
    pub(crate) fn fail(self, e: Unavailable) {
        match self {
            Pending::Begin(tx, _, _) => drop(tx.send(Err(e.into()))),
            Pending::Resolve(tx, _) => drop(tx.send(Err(e))),
            Pending::Complete(tx, _) => drop(tx.send(Err(CompleteError::Unavailable(e)))),
            Pending::Lease(Some(tx), _) => drop(tx.send(Err(LeaseError::Unavailable(e)))),
            Pending::Renew(tx, _) => drop(tx.send(Err(LeaseError::Unavailable(e)))),
            Pending::Lease(None, _) => {}
            Pending::Purge(tx, _) => drop(tx.send(Err(e))),
            Pending::Expire(tx, _) => drop(tx.send(Err(e))),
            Pending::Flush(tx) => drop(tx.send(Err(e))),
            Pending::Work(tx, _) => drop(tx.send(Err(CompleteError::Unavailable(e)))),
        }
    }
}

impl Op {
    /// Answers the operation with an error without doing it.
    pub(crate) fn fail(self, e: Unavailable) {
        match self {
            Op::Begin { reply, .. } => drop(reply.send(Err(e.into()))),
            Op::Complete { reply, .. } => drop(reply.send(Err(CompleteError::Unavailable(e)))),
            Op::Work { reply, .. } => drop(reply.send(Err(CompleteError::Unavailable(e)))),
            Op::Release {
                reply: Some(reply), ..
            } => drop(reply.send(Err(LeaseError::Unavailable(e)))),
            Op::Renew { reply, .. } => drop(reply.send(Err(LeaseError::Unavailable(e)))),
            Op::Point { reply, .. } => drop(reply.send(Err(LeaseError::Unavailable(e)))),
            Op::Resolve { reply, .. } => drop(reply.send(Err(e))),
            Op::Release { reply: None, .. } | Op::Cache { .. } | Op::Shutdown => {}
            Op::Purge { reply, .. } => drop(reply.send(Err(e))),
            Op::Expire { reply, .. } => drop(reply.send(Err(e))),
            Op::Flush { reply } | Op::Barrier { reply } | Op::Checkpoint { reply } => {
                drop(reply.send(Err(e)))
            }
        }
    }
}
