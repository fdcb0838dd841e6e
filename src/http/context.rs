//! [`IdempotencyContext`]: what a guarded handler may know about the key it runs under.
//!
//! Why: a handler that keeps effects of its own (the demo's bookings, a ledger entry, an
//! outbound call) must tie them to the same (scope, key, request) the layer guards, or a key
//! freed by expiry or `purge` and reused for another request could find an old effect and
//! answer with it; and a handler whose effects live in the store's own file commits them with
//! the response in one transaction (`docs/exactly-once.md`), which needs the reservation the
//! layer holds. Invariants: the layer inserts the context into the request's extensions exactly
//! when the store answered `Execute` for this request, so its presence means "this call is the
//! one execution of this key", and its fields are the ones the store recorded; the reservation
//! ([`Hold`]) is completed by the layer or by the handler, never both.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::WriteTransaction;

use crate::rules::key::KeyHash;
use crate::store::Lease;
use crate::{
    CompleteError, CompleteWithError, Completion, Fingerprint, Key, LeaseError, PointError,
    PointWithError, RecoveryPoint, Reservation, Scope,
};

/// The reservation a guarded call runs under, shared by the layer and the handler's context.
pub(crate) struct Hold {
    state: Mutex<Held>,
    /// The reservation's key and token, to find what a completion by the handler left.
    pub(crate) hash: KeyHash,
    pub(crate) scope: Scope,
    pub(crate) token: u64,
    lease: Lease,
}

enum Held {
    /// The layer completes it with the handler's response.
    Layer(Reservation),
    /// The handler took it to complete it with its own writes.
    Handler(Handled),
    /// Completed, released or given up by the layer.
    Gone,
}

/// What became of a completion the handler took, as far as its future saw.
#[derive(Clone)]
pub(crate) enum Handled {
    /// Its future has not finished (dropped, spawned, or still running): only the store
    /// knows what it left.
    Pending,
    /// It stored this response.
    Stored(crate::Response),
    /// It finished and stored nothing: the key is free.
    Nothing,
}

impl Hold {
    pub(crate) fn new(reservation: Reservation) -> Arc<Hold> {
        Arc::new(Hold {
            hash: reservation.key_hash(),
            scope: reservation.scope().clone(),
            token: reservation.token(),
            lease: reservation.lease(),
            state: Mutex::new(Held::Layer(reservation)),
        })
    }

    /// The reservation, for the layer to complete, release or give up; `None` once the
    /// handler took it or the layer did.
    pub(crate) fn take(&self) -> Option<Reservation> {
        let mut state = self.state.lock();
        match std::mem::replace(&mut *state, Held::Gone) {
            Held::Layer(r) => Some(r),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Whether the handler took the reservation: then `Some`, with what its completion did.
    pub(crate) fn handled(&self) -> Option<Handled> {
        match &*self.state.lock() {
            Held::Handler(handled) => Some(handled.clone()),
            Held::Layer(_) | Held::Gone => None,
        }
    }

    /// The lease, to renew while the call runs.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    fn take_for_handler(&self) -> Option<Reservation> {
        let mut state = self.state.lock();
        match std::mem::replace(&mut *state, Held::Handler(Handled::Pending)) {
            Held::Layer(r) => Some(r),
            other => {
                *state = other;
                None
            }
        }
    }

    fn finished(&self, handled: Handled) {
        *self.state.lock() = Held::Handler(handled);
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.lock() {
            Held::Layer(_) => "held by the layer",
            Held::Handler(Handled::Stored(_)) => "completed by the handler",
            Held::Handler(Handled::Nothing) => "released by the handler",
            Held::Handler(Handled::Pending) => "taken by the handler",
            Held::Gone => "gone",
        };
        f.debug_struct("Hold").field("state", &state).finish()
    }
}

/// The request extension a guarded handler receives: the scope, key and fingerprint the
/// layer reserved, the fencing token of the reservation, and its lease deadline.
///
/// In axum, take it with `Extension<IdempotencyContext>`; in a tower service, read
/// `request.extensions().get::<IdempotencyContext>()`. It is absent on requests the layer
/// does not guard and on requests run without protection because the store was down
/// ([`OnStoreError::FailOpen`](super::OnStoreError::FailOpen)).
#[derive(Debug, Clone)]
pub struct IdempotencyContext {
    pub(crate) scope: Scope,
    pub(crate) key: Key,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) token: u64,
    pub(crate) lease_deadline: u64,
    pub(crate) recovery: Option<RecoveryPoint>,
    pub(crate) hold: Arc<Hold>,
}

impl IdempotencyContext {
    /// Who owns the key.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The idempotency key, as parsed (`"abc"` in quotes is the key `abc`).
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The fingerprint of this request, as stored with the reservation: a retry is the same
    /// request exactly when its fingerprint is equal.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The reservation's fencing token (rule C8): greater than every token the store handed
    /// out before, so a resource can refuse writes from a holder that was taken over.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// When the reservation's lease ran out as the handler was called, in milliseconds since
    /// the Unix epoch. The layer renews the lease while the handler runs (every third of a
    /// lease), so a long handler is not taken over by a retry.
    pub fn lease_deadline(&self) -> u64 {
        self.lease_deadline
    }

    /// The key's last recovery point when the handler was called (P2): saved by an earlier
    /// attempt whose key this call took over (its lease ran out, the service restarted, or
    /// the attempt failed after saving it). `None`: start from the first step. See
    /// [`Reservation::recovery_point`](crate::Reservation::recovery_point).
    pub fn recovery_point(&self) -> Option<&RecoveryPoint> {
        self.recovery.as_ref()
    }

    /// Saves a recovery point for the key, durably (P1), as
    /// [`Reservation::save_point`](crate::Reservation::save_point) does: should this call
    /// die, the retry that takes the key over resumes from it. The point is queued when this
    /// is called: dropping the future does not stop it. ([`recovery_point`](Self::recovery_point)
    /// stays what the key had when the handler was called.)
    pub fn save_point(
        &self,
        name: &str,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), PointError>> + Send + 'static {
        let saving =
            RecoveryPoint::new(name, payload).map(|point| self.hold.lease().save_point(point));
        async move { Ok(saving?.await?) }
    }

    /// Saves a recovery point together with the handler's writes to the store's database, in
    /// one transaction (P1, E1), as
    /// [`Reservation::save_point_with`](crate::Reservation::save_point_with) does: `f` writes
    /// and returns the point's payload; the answer is the point saved. The work is queued when
    /// this is called: dropping the future does not stop it.
    pub fn save_point_with<E, F>(
        &self,
        name: &str,
        f: F,
    ) -> impl Future<Output = Result<RecoveryPoint, PointWithError<E>>> + Send + 'static
    where
        F: FnOnce(&WriteTransaction) -> Result<Vec<u8>, E> + Send + 'static,
        E: Send + 'static,
    {
        self.hold.lease().save_point_with(name, f)
    }

    /// Extends the lease to a full lease period from now (C8), as the layer does in the
    /// background; answers the new deadline.
    pub fn renew(&self) -> impl Future<Output = Result<u64, LeaseError>> + Send + 'static {
        self.hold.lease().renew()
    }

    /// Completes the reservation with the handler's own writes to the store's database, in
    /// one transaction: the writes and the response `f` returns become durable together or
    /// not at all (rule E1, `docs/exactly-once.md`;
    /// [`Reservation::complete_with`](crate::Reservation::complete_with) says what the closure
    /// may do and what a failure undoes). The route's cache policy decides what is kept.
    ///
    /// Once this stored the response, the layer answers the request with it, byte for byte
    /// as every retry will get it, whatever the handler returns afterwards; the handler's own
    /// response is dropped. If it stored nothing (the closure failed, the status is not kept,
    /// the store refused), the key is released and the layer sends the handler's response
    /// without storing it. A second call, or a call after the layer gave the reservation up,
    /// answers `CompleteError::NotReserved`.
    ///
    /// The work is queued when this is called: dropping (or spawning) the future does not
    /// stop it, and a layer whose handler returned before the completion settled waits for it
    /// (within the lease) and answers with what it stored.
    pub fn complete_with<E, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<Completion, CompleteWithError<E>>> + Send + 'static
    where
        F: FnOnce(&WriteTransaction) -> Result<crate::Response, E> + Send + 'static,
        E: Send + 'static,
    {
        let token = self.token;
        let hold = Arc::clone(&self.hold);
        let kept: Arc<Mutex<Option<crate::Response>>> = Arc::default();
        let copy = Arc::clone(&kept);
        let completing = hold.take_for_handler().map(|r| {
            r.complete_with_async(move |txn| {
                let response = f(txn)?;
                *copy.lock() = Some(response.clone());
                Ok(response)
            })
        });
        async move {
            let Some(completing) = completing else {
                return Err(CompleteWithError::Complete(CompleteError::NotReserved {
                    token,
                }));
            };
            let out = completing.await;
            hold.finished(match (&out, kept.lock().take()) {
                (Ok(Completion::Stored), Some(response)) => Handled::Stored(response),
                (Ok(Completion::Stored), None) => Handled::Pending,
                _ => Handled::Nothing,
            });
            out
        }
    }
}
