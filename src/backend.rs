//! The seam between the idempotency contract and where records live.
//!
//! Why: the embedded store is one way to keep records; a service that outgrows one machine
//! keeps them in a shared server (Redis, next). Both must answer exactly as rules C1-C12 say, so
//! the contract is this trait, in terms of fencing tokens rather than RAII guards, and the
//! conformance tests (`tests/conformance.rs`) are written against it, not against [`Store`].
//! Invariant: an implementation gives the same answer as [`Store`] for every sequence of calls
//! and clock readings.
//!
//! [`Store`]: crate::Store

use std::time::Duration;

use crate::error::{BeginError, CompleteError, LeaseError, Unavailable};
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::view::RecordInfo;

/// What `complete` did with the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The response is stored and will be replayed (C3).
    Stored,
    /// The cache policy does not keep this status, so the key was released instead (C6, C7).
    Released,
}

/// The answer to a `begin`, from the engine up: [`Store::begin`] wraps an `Execute` into a
/// [`Reservation`](crate::Reservation), a token-level backend hands it out as it is.
///
/// [`Store::begin`]: crate::Store::begin
#[derive(Debug, Clone)]
pub enum Claim {
    /// The caller holds the key and executes (C2); it proves ownership with `token` (C8).
    Execute {
        /// The fencing token of this reservation.
        token: u64,
        /// When the lease runs out, in milliseconds since the Unix epoch.
        lease_deadline: u64,
        /// The last recovery point an earlier attempt saved, for a takeover of its key (P2).
        recovery: Option<RecoveryPoint>,
    },
    /// The stored response (C3).
    Replay(Response),
    /// Another attempt holds the key (C5); retry after the hint.
    InProgress {
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// The key was used for a different request (C4).
    Conflict,
    /// The key was in flight when the store stopped without closing, and nobody knows whether
    /// its operation had its effect (E6): nothing runs until the application resolves it.
    OutcomeUnknown,
}

/// The idempotency contract at the level of fencing tokens, implemented by [`Store`] and by
/// any other backend.
///
/// ```
/// use idemstore::{Backend, Claim, Config, Fingerprint, Key, Response, Scope, Store};
/// fn once(b: &dyn Backend) -> Result<(), idemstore::Error> {
///     let (scope, key) = (Scope::new("acct")?, Key::new("k1")?);
///     let fp = Fingerprint::of_bytes(b"charge 5 EUR");
///     if let Claim::Execute { token, .. } = b.claim(&scope, &key, &fp)? {
///         b.complete(&scope, &key, token, Response::new(200, [("a", "b")], "ok"))?;
///     }
///     assert!(matches!(b.claim(&scope, &key, &fp)?, Claim::Replay(_)));
///     Ok(())
/// }
/// once(&Store::in_memory(Config::default())?)?;
/// # Ok::<(), idemstore::Error>(())
/// ```
///
/// [`Store`]: crate::Store
pub trait Backend: Send + Sync {
    /// Decides a `begin` (C1-C5, C8, C9), reserving the key when the caller must execute.
    fn claim(&self, scope: &Scope, key: &Key, fp: &Fingerprint) -> Result<Claim, BeginError>;

    /// Stores the outcome of reservation `token` (C3, C7, C8, C10), or releases the key when
    /// the cache policy does not keep the status.
    fn complete(
        &self,
        scope: &Scope,
        key: &Key,
        token: u64,
        response: Response,
    ) -> Result<Completion, CompleteError>;

    /// Extends the lease of reservation `token`; returns the new deadline (C8).
    fn renew(&self, scope: &Scope, key: &Key, token: u64) -> Result<u64, LeaseError>;

    /// Releases reservation `token`, so the next attempt executes (C6).
    fn release(&self, scope: &Scope, key: &Key, token: u64) -> Result<(), LeaseError>;

    /// The record for (scope, key), unless absent or expired.
    fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable>;

    /// Removes the record for (scope, key); true if there was one.
    fn purge(&self, scope: &Scope, key: &Key) -> Result<bool, Unavailable>;
}
