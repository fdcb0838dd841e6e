//! Transactions over the caller's own tables in the store's database: [`Store::write`],
//! [`Store::read`], and the glue behind
//! [`Reservation::complete_with`](super::Reservation::complete_with).
//!
//! Why: a service whose effects live in the store's redb file can commit an effect and the
//! response that reports it in one transaction (`docs/exactly-once.md`). redb allows one write
//! transaction at a time and the engine's writer owns it, so the caller's writes travel to the
//! writer as a closure; this module boxes the closure, keeps the closure's own result on the
//! caller's side (the engine sees only "commit" or "roll back"), and turns the engine's answer
//! into the public errors. It is the one place where redb's transaction types appear in the
//! public API, by design: the caller's tables are redb tables.
//!
//! Invariant: a closure's result reaches its caller only with the engine's answer that its
//! transaction committed; an error or a panic in the closure rolls back its writes alone.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::{ReadTransaction, WriteTransaction};

use crate::backend::Completion;
use crate::config::Terms;
use crate::engine::work::{CompleteFn, PointFn, WriteFn};
use crate::engine::{Answer, Ran, Work};
use crate::error::{
    CompleteError, CompleteWithError, LeaseError, PointError, PointWithError, TransactionError,
    Unavailable,
};
use crate::poison;
use crate::rules::key::KeyHash;
use crate::rules::point::{self as point, RecoveryPoint};
use crate::rules::response::Response;

use super::Store;

/// Where a closure leaves its own result for its caller.
type Slot<T> = Arc<Mutex<Option<T>>>;

/// Where a step's closure leaves its error or the payload of its point.
pub(super) type PayloadSlot<E> = Slot<Result<Vec<u8>, E>>;

impl Store {
    /// Runs `f` in a write transaction of the store's database and commits it durably, for the
    /// caller's own tables (any redb table whose name does not start with `idem_`).
    ///
    /// The closure runs on the store's writer, in a transaction of its own: it may batch with
    /// other operations, but its error or panic rolls back its own writes and nothing else. It
    /// returns once the transaction is durable (a database commit, not a log entry: see
    /// `docs/exactly-once.md` for what that costs). Keep the closure short: the writer serves
    /// nobody else while it runs. Calls into the store from inside it are refused with
    /// [`Unavailable::Reentrant`]. A table the closure opens must be dropped by the time it
    /// returns, and a failed write's error returned: a leaked table (`mem::forget`) or a write
    /// that failed part way leaves the transaction unusable, and the store then stops
    /// ([`Unavailable::Poisoned`]) rather than wait for the storage engine's write lock.
    ///
    /// Only the file engine has a database: a memory or Redis store answers
    /// [`Unavailable::Unsupported`] without running `f`.
    ///
    /// ```
    /// use idemstore::redb::{ReadableTable, TableDefinition};
    /// use idemstore::{Config, Store};
    /// const STOCK: TableDefinition<&str, u64> = TableDefinition::new("stock");
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("shop.redb"), Config::default())?;
    /// store.write(|txn| {
    ///     txn.open_table(STOCK)?.insert("room-101", 3)?;
    ///     Ok::<_, idemstore::redb::Error>(())
    /// })?;
    /// let left = store.read(|txn| {
    ///     let stock = txn.open_table(STOCK)?;
    ///     Ok::<_, idemstore::redb::Error>(stock.get("room-101")?.map(|g| g.value()))
    /// })?;
    /// assert_eq!(left, Some(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write<T, E, F>(&self, f: F) -> Result<T, TransactionError<E>>
    where
        F: FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self.queue_write(f);
        written(answer.wait(), &slot)
    }

    /// [`write`](Store::write) as a runtime-agnostic future. The closure is queued when this
    /// is called: dropping the future does not stop it.
    pub fn write_async<T, E, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, TransactionError<E>>> + Send + 'static
    where
        F: FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self.queue_write(f);
        async move { written(answer.resolve().await, &slot) }
    }

    /// Runs `f` on a read transaction of the store's database, on the calling thread: it sees
    /// every write acknowledged before the call ([`write`](Store::write),
    /// [`complete_with`](super::Reservation::complete_with)) and nothing that is not durable
    /// yet. Reads never wait for the writer, except while a batch with the caller's writes is
    /// between its first commit and its durable one: for a batch of one closure, that is its
    /// commit's fsync, not the closure's run. (So a closure must not wait for another thread
    /// that reads the store: in a batch of several closures, that read may wait for the
    /// closure.)
    ///
    /// A memory or Redis store answers [`Unavailable::Unsupported`].
    pub fn read<T, E>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, E>,
    ) -> Result<T, TransactionError<E>> {
        self.inner.shared.check()?;
        let mut f = Some(f);
        let mut out = None;
        self.inner.engine.read_database(&mut |txn| {
            if let Some(f) = f.take() {
                out = Some(poison::catch(|| f(txn)));
            }
        })?;
        match out {
            Some(Ok(Ok(v))) => Ok(v),
            Some(Ok(Err(e))) => Err(TransactionError::Aborted(e)),
            Some(Err(message)) => Err(TransactionError::Panicked { message }),
            None => Err(TransactionError::Unavailable(Unavailable::Closed)),
        }
    }

    fn queue_write<T, E, F>(&self, f: F) -> (Answer<Ran, CompleteError>, Slot<Result<T, E>>)
    where
        F: FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let slot: Slot<Result<T, E>> = Arc::default();
        if let Err(e) = self.inner.shared.check() {
            return (Answer::Now(Err(e.into())), slot);
        }
        let out = Arc::clone(&slot);
        let run: WriteFn = Box::new(move |txn| {
            let result = f(txn);
            let commit = result.is_ok();
            *out.lock() = Some(result);
            commit
        });
        (self.inner.engine.work(Work::Write(run)), slot)
    }

    /// Queues the completion of `token` with the caller's writes; the slot receives the
    /// closure's error, if it returns one.
    pub(super) fn queue_complete_with<E, F>(
        &self,
        (hash, token): (KeyHash, u64),
        terms: Terms,
        f: F,
    ) -> (Answer<Ran, CompleteError>, Slot<E>)
    where
        F: FnOnce(&WriteTransaction) -> Result<Response, E> + Send + 'static,
        E: Send + 'static,
    {
        let slot: Slot<E> = Arc::default();
        if let Err(e) = self.inner.shared.check() {
            return (Answer::Now(Err(e.into())), slot);
        }
        let out = Arc::clone(&slot);
        let run: CompleteFn = Box::new(move |txn| match f(txn) {
            Ok(response) => Some(response),
            Err(e) => {
                *out.lock() = Some(e);
                None
            }
        });
        let work = Work::Complete {
            hash,
            token,
            terms,
            run,
        };
        (self.inner.engine.work(work), slot)
    }
}

impl Store {
    /// Queues a recovery point named `name` of `token` with the caller's writes; the slot
    /// receives the closure's result: its error, or the payload it returned.
    pub(super) fn queue_point_with<E, F>(
        &self,
        (hash, token): (KeyHash, u64),
        name: &str,
        f: F,
    ) -> (Answer<Ran, CompleteError>, PayloadSlot<E>)
    where
        F: FnOnce(&WriteTransaction) -> Result<Vec<u8>, E> + Send + 'static,
        E: Send + 'static,
    {
        let slot: PayloadSlot<E> = Arc::default();
        if let Err(e) = self.inner.shared.check() {
            return (Answer::Now(Err(e.into())), slot);
        }
        if let Err(reason) = point::validate(name, &[]) {
            return (
                Answer::Now(Err(CompleteError::InvalidResponse { reason })),
                slot,
            );
        }
        let out = Arc::clone(&slot);
        let run: PointFn = Box::new(move |txn| {
            let result = f(txn);
            let payload = result.as_ref().ok().cloned();
            *out.lock() = Some(result);
            payload
        });
        let work = Work::Point {
            hash,
            token,
            name: name.to_owned(),
            run,
        };
        (self.inner.engine.work(work), slot)
    }
}

impl Store {
    /// Queues a recovery point with the caller's writes and answers, as a future, the point
    /// saved: what [`Reservation::save_point_with_async`](super::Reservation::save_point_with_async)
    /// and the HTTP layer's context await.
    pub(super) fn point_with_async<E, F>(
        &self,
        held: (KeyHash, u64),
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<RecoveryPoint, PointWithError<E>>> + Send + use<E, F>
    where
        F: FnOnce(&WriteTransaction) -> Result<Vec<u8>, E> + Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self.queue_point_with(held, name, f);
        let name = name.to_owned();
        async move { pointed_with(answer.resolve().await, &name, &slot) }
    }
}

/// The point a recovery point with the caller's writes saved, once the engine has answered.
pub(super) fn pointed_with<E>(
    ran: Result<Ran, CompleteError>,
    name: &str,
    slot: &PayloadSlot<E>,
) -> Result<RecoveryPoint, PointWithError<E>> {
    let lease = |e: LeaseError| PointWithError::Point(PointError::Lease(e));
    let taken = slot.lock().take();
    match (ran, taken) {
        (Ok(Ran::Committed(_)), Some(Ok(payload))) => {
            RecoveryPoint::new(name, &payload).map_err(PointWithError::Point)
        }
        (Ok(Ran::Declined), Some(Err(e))) => Err(PointWithError::Aborted(e)),
        (Ok(Ran::Panicked(message)), _) => Err(PointWithError::Panicked { message }),
        (Err(CompleteError::Fenced { token, current }), _) => {
            Err(lease(LeaseError::Fenced { token, current }))
        }
        (Err(CompleteError::NotReserved { token }), _) => {
            Err(lease(LeaseError::NotReserved { token }))
        }
        (Err(CompleteError::Unavailable(e)), _) => Err(lease(LeaseError::Unavailable(e))),
        // `point_with` reports a payload past the limits so.
        (Err(CompleteError::InvalidResponse { reason }), _) => {
            Err(PointWithError::Point(PointError::Invalid { reason }))
        }
        (ran, _) => Err(PointWithError::Panicked {
            message: format!("the closure's result was lost ({ran:?})"),
        }),
    }
}

/// The closure's result, once the engine says what became of its transaction.
fn written<T, E>(
    ran: Result<Ran, CompleteError>,
    slot: &Slot<Result<T, E>>,
) -> Result<T, TransactionError<E>> {
    let taken = slot.lock().take();
    match (ran, taken) {
        (Ok(Ran::Committed(_)), Some(Ok(v))) => Ok(v),
        (Ok(Ran::Declined), Some(Err(e))) => Err(TransactionError::Aborted(e)),
        (Ok(Ran::Panicked(message)), _) => Err(TransactionError::Panicked { message }),
        (Err(CompleteError::Unavailable(e)), _) => Err(TransactionError::Unavailable(e)),
        (ran, _) => Err(TransactionError::Panicked {
            message: format!("the closure's result was lost ({ran:?})"),
        }),
    }
}

/// What a completion with the caller's writes did, once the engine has answered.
pub(super) fn completed_with<E>(
    ran: Result<Ran, CompleteError>,
    slot: &Slot<E>,
) -> Result<Completion, CompleteWithError<E>> {
    match ran {
        Ok(Ran::Committed(completion)) => Ok(completion),
        Ok(Ran::Declined) => match slot.lock().take() {
            Some(e) => Err(CompleteWithError::Aborted(e)),
            None => Err(CompleteWithError::Panicked {
                message: "the closure's error was lost".to_owned(),
            }),
        },
        Ok(Ran::Panicked(message)) => Err(CompleteWithError::Panicked { message }),
        Err(e) => Err(CompleteWithError::Complete(e)),
    }
}
