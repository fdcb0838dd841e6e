//! The seam between the store and where records live: the [`Engine`] trait, one method per
//! operation, and the [`Answer`] an operation gives.
//!
//! Why: the store's work (validation, the reservation lifecycle, the compactor's schedule) is
//! the same whatever keeps the records; only how an operation is carried out differs. The file
//! engine (`file/`: writer, log, overlay, checkpoint, redb) answers most calls once a batch is
//! durable; the memory engine (`memory.rs`) answers at once on the caller's thread; the Redis
//! engine (`redis/`) answers once the server has run the operation's script. Each is one implementation of this trait,
//! so the store holds one `Arc<dyn Engine>` and has no branch per engine.
//!
//! Invariants:
//! - every engine gives the same answer for every sequence of calls and clock readings (rules
//!   C1-C13), which the conformance tests check through the store;
//! - an engine imports neither another engine nor the store: what they share is [`Shared`]
//!   (configuration, counters, the poison flag) and the value types;
//! - an [`Answer`] always ends: with the operation's result or, if the engine dropped it
//!   unanswered, with the error the store's state explains (closed or poisoned).

pub(crate) mod file;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod shared;
pub(crate) mod waiters;
pub(crate) mod work;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::backend::{Claim, Completion};
use crate::config::Terms;
use crate::error::{BeginError, CompleteError, LeaseError, Unavailable};
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::rules::state::State;
use crate::stats::Stats;
use crate::view::{CheckReport, RecordInfo};

pub(crate) use crate::reply::Receiver;
pub(crate) use shared::Shared;
pub(crate) use work::{Ran, Work};

/// How a release is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// The caller waits for the answer.
    Answered,
    /// The caller may stop waiting (a future that can be dropped): the release happens all
    /// the same, and reads after it see the key released.
    Detached,
    /// Nobody waits (a dropped reservation): the answer is `Ok(())` at once.
    Forget,
}

/// What one expiry pass did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ExpireReport {
    /// Expiry entries looked at (the pass's budget was its `limit`).
    pub(crate) scanned: usize,
    /// Records removed.
    pub(crate) removed: u64,
}

/// A record of a listing, or why the record under that key hash could not be read.
pub(crate) type Listed = Result<RecordInfo, (KeyHash, Unavailable)>;

/// Where records live. See the module documentation.
pub(crate) trait Engine: Send + Sync {
    /// Decides a `begin` (C1-C5, C8, C9, C13), reserving the key when the caller must execute,
    /// for `terms`' lease and with their time to live. `key`'s length is already checked
    /// against the store's limit.
    fn begin(
        &self,
        hash: KeyHash,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> Answer<Claim, BeginError>;

    /// Stores the response of reservation `token` for `terms`' time to live (C3, C7, C8, C10),
    /// or releases the key when their cache policy does not keep its status. The response is
    /// within the store's limits.
    ///
    /// This and the other calls on one record get the record's scope with its hash: an engine
    /// that keeps a scope's records together (the Redis engine, for C13) names a record by
    /// both; the others ignore it.
    fn complete(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        response: Response,
        terms: Terms,
    ) -> Answer<Completion, CompleteError>;

    /// Releases reservation `token` (C6).
    fn release(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        how: Release,
    ) -> Answer<(), LeaseError>;

    /// Extends the lease of reservation `token` by `terms`' lease; answers the new deadline
    /// (C8).
    fn renew(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        terms: Terms,
    ) -> Answer<u64, LeaseError>;

    /// Saves `point` as the last recovery point of reservation `token`'s key, durably (P1).
    /// An engine that keeps no points refuses it.
    fn save_point(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        point: RecoveryPoint,
    ) -> Answer<(), LeaseError> {
        let _ = (hash, scope, token, point);
        Answer::Now(Err(LeaseError::Unavailable(Unavailable::Unsupported {
            operation: "Reservation::save_point",
        })))
    }

    /// Reserves a key whose outcome is unknown for the application to resolve it (E6):
    /// `Execute` with a fresh token, carrying the key's recovery point; `None` when the key's
    /// outcome is not unknown (absent, in flight, completed or expired).
    fn resolve(&self, hash: KeyHash) -> Answer<Option<Claim>, Unavailable> {
        let _ = hash;
        Answer::Now(Ok(None))
    }

    /// Removes the record, whatever its state; answers whether there was one.
    fn purge(&self, hash: KeyHash, scope: &Scope) -> Answer<bool, Unavailable>;

    /// The record, unless absent or expired (C9); a release sent before the call is applied
    /// first (C6).
    fn get(&self, hash: KeyHash, scope: &Scope) -> Result<Option<RecordInfo>, Unavailable>;

    /// Removes up to `limit` expired records (C9).
    fn expire(&self, limit: usize) -> Result<ExpireReport, Unavailable>;

    /// Makes every change so far durable.
    fn flush(&self) -> Result<(), Unavailable>;

    /// The live records by key hash, those of `scope` and in `state` only if given, at most
    /// `limit` of them, as of every operation queued before the call.
    fn list(
        &self,
        filter: (Option<&Scope>, Option<State>),
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable>;

    /// As [`list`](Engine::list), but a record that cannot be read is an entry of its own,
    /// with its key hash and why, instead of the listing's end (the resolver hook goes on past
    /// it, E6). Engines whose listing meets no damaged record list as `list` does.
    fn list_each(
        &self,
        filter: (Option<&Scope>, Option<State>),
        limit: usize,
    ) -> Result<Vec<Listed>, Unavailable> {
        Ok(self.list(filter, limit)?.into_iter().map(Ok).collect())
    }

    /// Checks that the records and what they hold agree.
    fn check(&self) -> Result<CheckReport, Unavailable>;

    /// The counters since open, with the records held now.
    fn stats(&self) -> Stats;

    /// Finishes what is queued, makes everything durable and stops; later calls are refused
    /// with `Closed`. The store stops its own threads first, except when
    /// [`closing_on_own_thread`](Engine::closing_on_own_thread).
    fn close(&self) -> Result<(), Unavailable>;

    /// Whether every change of a key happens in this process, so that the engine wakes the
    /// calls waiting on it (`waiters.rs`); false where other processes change keys too (the
    /// Redis engine), and a waiting call must look again by itself.
    fn wakes_every_waiter(&self) -> bool {
        true
    }

    /// Whether the calling thread is one of the engine's own (the last handle was dropped by a
    /// task the engine woke): then `close` must not wait for anything the engine does.
    fn closing_on_own_thread(&self) -> bool {
        false
    }

    /// Runs caller work in a write transaction of the engine's database, durable before the
    /// answer. An engine without a database the caller can write to refuses it unrun.
    fn work(&self, work: Work) -> Answer<Ran, CompleteError> {
        Answer::Now(Err(CompleteError::Unavailable(Unavailable::Unsupported {
            operation: work.operation(),
        })))
    }

    /// Runs `f` on a read transaction of the engine's database, which shows every write
    /// transaction acknowledged before the call and none that is not durable yet.
    fn read_database(&self, f: &mut dyn FnMut(&redb::ReadTransaction)) -> Result<(), Unavailable> {
        let _ = f;
        Err(Unavailable::Unsupported {
            operation: "Store::read",
        })
    }

    /// Step mode (fuzz targets and tests): runs the checkpoint the writer handed over and
    /// nobody ran yet; whether there was one.
    #[cfg(feature = "fuzzing")]
    fn run_held_checkpoint(&self) -> bool {
        false
    }
}

/// The answer to an operation: decided already, or to come from the engine's own thread.
pub(crate) enum Answer<T, E> {
    /// Decided on the caller's thread.
    Now(Result<T, E>),
    /// Queued; ends when the engine answers.
    Later(Later<T, E>),
}

/// Runs when a [`Later`] is dropped before its answer was taken, with the slot the answer
/// comes through (to give it up, or to undo what it holds).
pub(crate) type OnAbandon<T, E> = Box<dyn FnOnce(Receiver<Result<T, E>>) + Send>;

/// An answer still to come, through a reply slot: waited for by a blocking caller, polled by
/// an async one.
pub(crate) struct Later<T, E> {
    rx: Option<Receiver<Result<T, E>>>,
    shared: Arc<Shared>,
    on_abandon: Option<OnAbandon<T, E>>,
}

impl<T, E: From<Unavailable>> Answer<T, E> {
    /// An answer that comes through `rx`; an unanswered slot is the error `shared` explains.
    pub(crate) fn later(rx: Receiver<Result<T, E>>, shared: &Arc<Shared>) -> Answer<T, E> {
        Answer::Later(Later {
            rx: Some(rx),
            shared: Arc::clone(shared),
            on_abandon: None,
        })
    }

    /// [`later`](Answer::later), running `on_abandon` if the answer is dropped unread.
    pub(crate) fn later_or(
        rx: Receiver<Result<T, E>>,
        shared: &Arc<Shared>,
        on_abandon: OnAbandon<T, E>,
    ) -> Answer<T, E> {
        Answer::Later(Later {
            rx: Some(rx),
            shared: Arc::clone(shared),
            on_abandon: Some(on_abandon),
        })
    }

    /// Blocks until the answer is in.
    pub(crate) fn wait(self) -> Result<T, E> {
        match self {
            Answer::Now(r) => r,
            Answer::Later(mut later) => match later.rx.take() {
                Some(rx) => rx
                    .wait()
                    .unwrap_or_else(|c| Err(E::from(later.shared.lost_reply(c)))),
                None => Err(E::from(later.shared.lost_reply(Default::default()))),
            },
        }
    }
}

impl<T: Send + 'static, E: From<Unavailable> + Send + 'static> Answer<T, E> {
    /// Awaits the answer: a future that any executor can poll.
    pub(crate) async fn resolve(self) -> Result<T, E> {
        match self {
            Answer::Now(r) => r,
            Answer::Later(later) => later.await,
        }
    }
}

impl<T, E: From<Unavailable>> Future for Later<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(Err(E::from(this.shared.lost_reply(Default::default()))));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(out) => {
                this.rx = None;
                Poll::Ready(out.unwrap_or_else(|c| Err(E::from(this.shared.lost_reply(c)))))
            }
        }
    }
}

impl<T, E> Drop for Later<T, E> {
    fn drop(&mut self) {
        if let (Some(rx), Some(f)) = (self.rx.take(), self.on_abandon.take()) {
            f(rx);
        }
    }
}
