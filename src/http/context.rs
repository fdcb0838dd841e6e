//! [`IdempotencyContext`]: what a guarded handler may know about the key it runs under.
//!
//! Why: a handler that keeps effects of its own (the demo's bookings, a ledger entry, an
//! outbound call) must tie them to the same (scope, key, request) the layer guards, or a key
//! freed by expiry or `purge` and reused for another request could find an old effect and
//! answer with it. Invariant: the layer inserts the context into the request's extensions
//! exactly when the store answered `Execute` for this request, so its presence means "this
//! call is the one execution of this key", and its fields are the ones the store recorded.

use crate::{Fingerprint, Key, Scope};

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

    /// When the reservation's lease runs out, in milliseconds since the Unix epoch.
    pub fn lease_deadline(&self) -> u64 {
        self.lease_deadline
    }
}
