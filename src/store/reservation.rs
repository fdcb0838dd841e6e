//! A reservation: the right to execute an operation for a key, and the duty to complete or
//! release it; and [`Begin`], the answer that hands one out.
//!
//! Why: a caller that errs, panics or is cancelled must not leave its key stuck in flight, so
//! the duty is tied to a value whose drop releases the key. Invariant: a reservation is
//! completed, released, abandoned or dropped exactly once; only a drop of an armed one releases
//! (C6), and an async call hands its operation to the engine before it returns its future, so
//! dropping the future does not undo it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redb::WriteTransaction;

use crate::backend::Completion;
use crate::config::Terms;
use crate::engine::{Answer, Ran, Release};
use crate::error::{CompleteError, CompleteWithError, LeaseError, PointError, PointWithError};
use crate::metrics::Stopwatch;
use crate::rules::key::{KeyHash, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;

use super::{Store, transact};

/// What `begin` tells the caller to do: exactly the outcomes of rules C2-C5 and E6, so a
/// `match` needs no catch-all arm.
#[derive(Debug)]
pub enum Begin {
    /// First attempt (C2): run the operation, then [`complete`](Reservation::complete) the
    /// reservation. Dropping it without completing releases the key (C6).
    Execute(Reservation),
    /// Same key, same request, completed (C3): the stored response, byte for byte.
    Replay(Response),
    /// Same key, same request, still executing elsewhere (C5).
    InProgress {
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// Same key, different request (C4).
    Conflict,
    /// The key was in flight when the store stopped without closing, and the store keeps such
    /// keys until the application resolves them
    /// ([`InFlightAtOpen::MarkUnknown`](crate::InFlightAtOpen::MarkUnknown), rule E6): nobody
    /// knows whether the operation had its effect, so nothing runs. Resolve the key with
    /// [`Store::resolve`](crate::Store::resolve).
    OutcomeUnknown,
}

/// The right to execute an operation for a key, and the duty to complete or release it.
///
/// Dropping a reservation without [`complete`](Reservation::complete) releases the key (C6),
/// so an error, a panic or a cancelled future never leaves a key stuck.
#[derive(Debug)]
#[must_use = "dropping a reservation releases the key at once"]
pub struct Reservation {
    store: Store,
    hash: KeyHash,
    /// The key's scope, which the Redis engine names the record by too.
    scope: Scope,
    token: u64,
    lease_deadline: u64,
    /// The last recovery point of the key: inherited from an earlier attempt, then the last
    /// one this reservation saved.
    recovery: Option<RecoveryPoint>,
    /// What it was begun with: its renewals' lease, its completion's policy and time to live.
    terms: Terms,
    armed: bool,
}

impl Reservation {
    pub(super) fn new(
        store: Store,
        (hash, scope): (KeyHash, Scope),
        (token, lease_deadline): (u64, u64),
        recovery: Option<RecoveryPoint>,
        terms: Terms,
    ) -> Self {
        Reservation {
            store,
            hash,
            scope,
            token,
            lease_deadline,
            recovery,
            terms,
            armed: true,
        }
    }
}

impl Reservation {
    /// The fencing token (C8): strictly greater than every token handed out before by this
    /// store, so a resource guarded by it can refuse a stale holder.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// When the lease runs out, in milliseconds since the Unix epoch. After it, another
    /// `begin` may take the key over; [`renew`](Reservation::renew) extends it.
    pub fn lease_deadline(&self) -> u64 {
        self.lease_deadline
    }

    /// Stores the operation's response and returns once it is durable (C10, in the default
    /// mode). A status the cache policy does not keep releases the key instead (C6, C7).
    /// A stale holder (C8) gets [`CompleteError::Fenced`] and nothing is stored.
    pub fn complete(mut self, response: Response) -> Result<Completion, CompleteError> {
        let asked = Stopwatch::start(&self.store.inner.shared.metrics);
        let answer =
            self.store
                .complete_token((self.hash, &self.scope), self.token, response, self.terms);
        self.disarm_if_queued(&answer);
        let completed = answer.wait();
        self.store.inner.shared.metrics.completed(asked);
        completed
    }

    /// [`complete`](Reservation::complete) as a runtime-agnostic future.
    pub fn complete_async(
        mut self,
        response: Response,
    ) -> impl Future<Output = Result<Completion, CompleteError>> + Send + 'static {
        let asked = Stopwatch::start(&self.store.inner.shared.metrics);
        let answer =
            self.store
                .complete_token((self.hash, &self.scope), self.token, response, self.terms);
        self.disarm_if_queued(&answer);
        let store = self.store.clone();
        async move {
            let completed = answer.resolve().await;
            store.inner.shared.metrics.completed(asked);
            completed
        }
    }

    /// Hands the duty to release over to an answer the engine took: an answer refused before
    /// anything was queued (a closed store, or a call from inside a transaction) leaves the
    /// reservation armed, so that its drop releases the key, as it releases a dropped one (a
    /// release by a drop is queued without waiting, which works from anywhere).
    fn disarm_if_queued<T, E>(&mut self, answer: &Answer<T, E>) {
        if !matches!(answer, Answer::Now(Err(_))) {
            self.armed = false;
        }
    }

    /// Stores the operation's response together with the operation's own writes, in one
    /// transaction of the store's database: both become durable together or neither does
    /// (rule E1, `docs/exactly-once.md`). Returns once they are durable.
    ///
    /// `f` runs on the store's writer, only if this reservation still holds the key (a stale
    /// holder gets [`CompleteError::Fenced`] and `f` never runs), and in a transaction of its
    /// own: it writes the caller's tables (any redb table whose name does not start with
    /// `idem_`) and returns the response. If it returns an error or panics, its writes are
    /// rolled back and the key is released, so a retry executes again. A response the store
    /// cannot keep (too large, or a status the cache policy does not keep: then the answer is
    /// [`Completion::Released`]) rolls the writes back too: an effect is never committed
    /// without the response that reports it.
    ///
    /// Keep `f` short: the writer serves nobody else while it runs. Calls into the store from
    /// inside it are refused with [`Unavailable::Reentrant`](crate::Unavailable::Reentrant).
    /// Only the file engine has a database: a memory or Redis store answers
    /// [`Unavailable::Unsupported`](crate::Unavailable::Unsupported), without running `f`, and
    /// releases the key.
    ///
    /// ```
    /// use idemstore::redb::{ReadableTable, TableDefinition};
    /// use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};
    /// const BOOKINGS: TableDefinition<&str, &str> = TableDefinition::new("bookings");
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("app.redb"), Config::default())?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("k-1")?);
    /// let fp = Fingerprint::of_bytes(b"book room 101");
    /// let Begin::Execute(reservation) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// reservation.complete_with(|txn| {
    ///     txn.open_table(BOOKINGS)?.insert("b-1", "room 101")?;
    ///     Ok::<_, idemstore::redb::Error>(Response::new(201, [("location", "/b/b-1")], ""))
    /// })?;
    /// // The booking and the stored response exist together: a retry replays.
    /// assert!(matches!(store.begin(&scope, &key, &fp)?, Begin::Replay(r) if r.status() == 201));
    /// let booked = store.read(|txn| {
    ///     Ok::<_, idemstore::redb::Error>(txn.open_table(BOOKINGS)?.get("b-1")?.is_some())
    /// })?;
    /// assert!(booked);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn complete_with<E, F>(self, f: F) -> Result<Completion, CompleteWithError<E>>
    where
        F: FnOnce(&WriteTransaction) -> Result<Response, E> + Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self.queue_with(f);
        transact::completed_with(answer.wait(), &slot)
    }

    /// [`complete_with`](Reservation::complete_with) as a runtime-agnostic future. The work is
    /// queued when this is called: dropping the future does not stop it.
    pub fn complete_with_async<E, F>(
        self,
        f: F,
    ) -> impl Future<Output = Result<Completion, CompleteWithError<E>>> + Send + 'static
    where
        F: FnOnce(&WriteTransaction) -> Result<Response, E> + Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self.queue_with(f);
        async move { transact::completed_with(answer.resolve().await, &slot) }
    }

    /// The terms the reservation was begun with: its lease, and the time to live and cache
    /// policy its completion follows.
    pub fn terms(&self) -> Terms {
        self.terms
    }

    /// The key's hash, which names its record.
    #[cfg(feature = "http")]
    pub(crate) fn key_hash(&self) -> KeyHash {
        self.hash
    }

    /// The key's scope.
    #[cfg(feature = "http")]
    pub(crate) fn scope(&self) -> &Scope {
        &self.scope
    }

    /// A handle that renews this reservation's lease from elsewhere (the HTTP layer, while
    /// the handler runs), without holding the reservation.
    #[cfg(feature = "http")]
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            store: self.store.clone(),
            hash: self.hash,
            scope: self.scope.clone(),
            token: self.token,
            terms: self.terms,
        }
    }

    /// Queues the completion with the caller's writes. The reservation stays armed (its drop
    /// releases the key) unless the work was queued: the engine then releases the key itself
    /// if the work stores nothing.
    fn queue_with<E, F>(mut self, f: F) -> (Answer<Ran, CompleteError>, Arc<Mutex<Option<E>>>)
    where
        F: FnOnce(&WriteTransaction) -> Result<Response, E> + Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self
            .store
            .queue_complete_with((self.hash, self.token), self.terms, f);
        if !matches!(answer, Answer::Now(Err(_))) {
            self.armed = false;
        }
        (answer, slot)
    }

    /// The key's last recovery point (P2): the one an earlier attempt saved, when this
    /// reservation took its key over (after its lease ran out, a restart, a release, or a
    /// resolution), and after that the last one this reservation saved. `None` for a first
    /// attempt that saved none: start from the first step.
    pub fn recovery_point(&self) -> Option<&RecoveryPoint> {
        self.recovery.as_ref()
    }

    /// Saves a recovery point for the key, durably, before it returns (P1): the operation's
    /// steps up to `name` have committed, and `payload` (say, the id of a row a step created)
    /// is what the next step needs. Should this attempt die, the attempt that takes the key
    /// over gets the point from [`recovery_point`](Reservation::recovery_point) and resumes
    /// from there. A later point replaces it; a completion, a purge or the record's expiry
    /// removes it. A key with a point is never released to nothing: a release (or a drop, or
    /// a status the cache policy does not keep) ends its lease instead, so the next attempt
    /// resumes at once (P3); the record is then kept under a new token, so this reservation
    /// can no longer renew or complete it.
    ///
    /// To commit a step's own writes and its point together, use
    /// [`save_point_with`](Reservation::save_point_with). The file and memory engines keep
    /// points; Redis answers [`Unavailable::Unsupported`](crate::Unavailable::Unsupported).
    ///
    /// ```
    /// use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("orders.redb"), Config::default())?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("order-7")?);
    /// let fp = Fingerprint::of_bytes(b"order 7");
    /// let Begin::Execute(mut first) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// assert!(first.recovery_point().is_none());
    /// // Step 1 committed (stock reserved as r-1); the attempt then fails and lets go.
    /// first.save_point("stock-reserved", b"r-1")?;
    /// first.release()?;
    /// // The retry resumes after step 1 instead of reserving stock twice.
    /// let Begin::Execute(retry) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// let point = retry.recovery_point().expect("the point of the first attempt");
    /// assert_eq!((point.name(), point.payload()), ("stock-reserved", &b"r-1"[..]));
    /// retry.complete(Response::new(201, [("location", "/orders/7")], ""))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_point(&mut self, name: &str, payload: &[u8]) -> Result<(), PointError> {
        let point = RecoveryPoint::new(name, payload)?;
        self.store
            .save_point_token((self.hash, &self.scope), self.token, point.clone())
            .wait()?;
        self.recovery = Some(point);
        Ok(())
    }

    /// [`save_point`](Reservation::save_point) as a runtime-agnostic future. The point is
    /// queued when this is called: dropping the future does not stop it (the point is then
    /// saved, but this reservation's [`recovery_point`](Reservation::recovery_point) is not
    /// updated).
    pub fn save_point_async(
        &mut self,
        name: &str,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), PointError>> + Send + '_ {
        let queued = RecoveryPoint::new(name, payload).map(|point| {
            let answer =
                self.store
                    .save_point_token((self.hash, &self.scope), self.token, point.clone());
            (point, answer)
        });
        async move {
            let (point, answer) = queued?;
            answer.resolve().await?;
            self.recovery = Some(point);
            Ok(())
        }
    }

    /// Saves a recovery point together with the step's own writes, in one transaction of the
    /// store's database (P1, E1): `f` writes the step's tables and returns the point's
    /// payload (say, the id of the row it created), and the step's effect and the point named
    /// `name` become durable together or not at all, so a crash can neither lose a committed
    /// step's point (and run the step again) nor keep a point without its step. Returns the
    /// point saved.
    ///
    /// `f` runs on the store's writer, only if this reservation still holds the key (a stale
    /// holder gets [`LeaseError::Fenced`] inside [`PointError::Lease`] and `f` never runs).
    /// If it returns an error or panics, or returns a payload over the limit, its writes are
    /// rolled back, no point is saved, and the reservation still holds the key. The rules of
    /// [`complete_with`](Reservation::complete_with) apply: keep `f` short, no calls into the
    /// store from inside it; the file engine only (others answer
    /// [`Unavailable::Unsupported`](crate::Unavailable::Unsupported)).
    ///
    /// ```
    /// use idemstore::redb::{ReadableTableMetadata, TableDefinition};
    /// use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};
    /// const STOCK: TableDefinition<u64, &str> = TableDefinition::new("stock_holds");
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("shop.redb"), Config::default())?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("order-7")?);
    /// let fp = Fingerprint::of_bytes(b"order 7");
    /// let Begin::Execute(mut r) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// // Step 1 holds stock under an id made in its own transaction; the id is the point.
    /// let point = r.save_point_with("stock-held", |txn| {
    ///     let mut holds = txn.open_table(STOCK)?;
    ///     let id = holds.len()? + 1;
    ///     holds.insert(id, "lamp")?;
    ///     Ok::<_, idemstore::redb::Error>(id.to_le_bytes().to_vec())
    /// })?;
    /// assert_eq!(point.payload(), 1u64.to_le_bytes());
    /// r.complete(Response::new(201, [("location", "/orders/7")], ""))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_point_with<E, F>(
        &mut self,
        name: &str,
        f: F,
    ) -> Result<RecoveryPoint, PointWithError<E>>
    where
        F: FnOnce(&WriteTransaction) -> Result<Vec<u8>, E> + Send + 'static,
        E: Send + 'static,
    {
        let (answer, slot) = self
            .store
            .queue_point_with((self.hash, self.token), name, f);
        let point = transact::pointed_with(answer.wait(), name, &slot)?;
        self.recovery = Some(point.clone());
        Ok(point)
    }

    /// [`save_point_with`](Reservation::save_point_with) as a runtime-agnostic future. The
    /// work is queued when this is called: dropping the future does not stop it (the point is
    /// then saved, but this reservation's [`recovery_point`](Reservation::recovery_point) is
    /// not updated).
    pub fn save_point_with_async<E, F>(
        &mut self,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<RecoveryPoint, PointWithError<E>>> + Send + '_
    where
        F: FnOnce(&WriteTransaction) -> Result<Vec<u8>, E> + Send + 'static,
        E: Send + 'static,
    {
        let saving = self
            .store
            .point_with_async((self.hash, self.token), name, f);
        async move {
            let point = saving.await?;
            self.recovery = Some(point.clone());
            Ok(point)
        }
    }

    /// Extends the lease to a full lease period from now (C8).
    pub fn renew(&mut self) -> Result<(), LeaseError> {
        self.lease_deadline = self
            .store
            .renew_token((self.hash, &self.scope), self.token, self.terms)
            .wait()?;
        Ok(())
    }

    /// [`renew`](Reservation::renew) as a runtime-agnostic future.
    pub fn renew_async(&mut self) -> impl Future<Output = Result<(), LeaseError>> + Send + '_ {
        let answer = self
            .store
            .renew_token((self.hash, &self.scope), self.token, self.terms);
        async move {
            self.lease_deadline = answer.resolve().await?;
            Ok(())
        }
    }

    /// Gives the reservation up without releasing the key: the key stays in flight until its
    /// lease ends, and a retry meanwhile is answered `InProgress` (C5); after the lease, a
    /// `begin` takes it over (C8).
    ///
    /// For an operation that may have had its effect but whose response cannot be stored (its
    /// caller was cancelled halfway): releasing would let a retry run it a second time at once,
    /// while abandoning holds retries off for the lease, long enough for an effect still under
    /// way to land or for an operator to look.
    ///
    /// ```
    /// use idemstore::{Begin, Config, Fingerprint, Scope, Store};
    /// let store = Store::in_memory(Config::default())?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("k-1")?);
    /// let fp = Fingerprint::of_bytes(b"charge 10");
    /// let Begin::Execute(reservation) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// reservation.abandon();
    /// assert!(matches!(store.begin(&scope, &key, &fp)?, Begin::InProgress { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn abandon(mut self) {
        self.armed = false;
    }

    /// Releases the key now, so the next attempt executes (C6).
    pub fn release(mut self) -> Result<(), LeaseError> {
        let answer =
            self.store
                .release_token((self.hash, &self.scope), self.token, Release::Answered);
        self.disarm_if_queued(&answer);
        answer.wait()
    }

    /// [`release`](Reservation::release) as a runtime-agnostic future. The release is queued
    /// when this is called, so dropping the future does not keep the key.
    pub fn release_async(
        mut self,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send + 'static {
        // Detached: dropping this future must not keep the key, as dropping the reservation
        // would not.
        let answer =
            self.store
                .release_token((self.hash, &self.scope), self.token, Release::Detached);
        self.disarm_if_queued(&answer);
        answer.resolve()
    }
}

/// Renews one reservation's lease without holding it (see `Reservation::lease`).
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    store: Store,
    hash: KeyHash,
    scope: Scope,
    token: u64,
    terms: Terms,
}

#[cfg(feature = "http")]
impl Lease {
    /// Extends the lease to a full lease period from now (C8); answers the new deadline. A
    /// reservation completed, released or taken over answers an error.
    pub(crate) fn renew(&self) -> impl Future<Output = Result<u64, LeaseError>> + Send + 'static {
        self.store
            .renew_token((self.hash, &self.scope), self.token, self.terms)
            .resolve()
    }

    /// Saves a recovery point for the reservation (P1), queued at once.
    pub(crate) fn save_point(
        &self,
        point: RecoveryPoint,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send + 'static {
        self.store
            .save_point_token((self.hash, &self.scope), self.token, point)
            .resolve()
    }

    /// Saves a recovery point with the caller's writes (P1, E1), queued at once.
    pub(crate) fn save_point_with<E, F>(
        &self,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<RecoveryPoint, PointWithError<E>>> + Send + 'static
    where
        F: FnOnce(&WriteTransaction) -> Result<Vec<u8>, E> + Send + 'static,
        E: Send + 'static,
    {
        self.store
            .point_with_async((self.hash, self.token), name, f)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.store.forget((self.hash, &self.scope), self.token);
        }
    }
}
