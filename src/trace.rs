//! The store's `tracing` events (feature `tracing`), one function per event, each a no-op
//! without the feature.
//!
//! Why: an operator needs to see, at the levels a production service keeps on, the moments
//! that matter: a store poisoned (error), a stale holder refused (warn), a lease taken over
//! (info), and at debug the background work (checkpoints, waits for log space, compaction
//! passes). Keeping the events here, behind one function each, keeps the engines free of
//! `cfg` lines and the event names and fields in one place. Invariants: no event carries a
//! scope, a key or a body (a key hash at most); without the feature every function compiles
//! to nothing.

use std::time::Duration;

use crate::error::Cause;
use crate::rules::key::KeyHash;

/// The first 8 bytes of a key hash in hex: enough to follow one key through a log.
#[cfg(feature = "tracing")]
pub(crate) fn short(hash: &KeyHash) -> String {
    hash.0[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The store stopped serving: every later call is refused (`Unavailable::Poisoned`).
pub(crate) fn poisoned(cause: &Cause) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "idemstore::store", cause = %cause, "store poisoned: it refuses every call until it is opened again");
    #[cfg(not(feature = "tracing"))]
    let _ = cause;
}

/// A `begin` took over a key whose lease had run out (C8).
pub(crate) fn takeover(hash: &KeyHash, token: u64, with_point: bool) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "idemstore::store", key_hash = %short(hash), token, with_point, "lease taken over");
    #[cfg(not(feature = "tracing"))]
    let _ = (hash, token, with_point);
}

/// A holder whose key was taken over was refused (C8).
pub(crate) fn fenced(hash: &KeyHash, token: u64, current: u64) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "idemstore::store", key_hash = %short(hash), token, current, "stale holder refused (fenced)");
    #[cfg(not(feature = "tracing"))]
    let _ = (hash, token, current);
}

/// An operator released a key (`Store::release_held`, `release_unknown`): reservation
/// `token` can no longer complete.
pub(crate) fn operator_release(hash: &KeyHash, token: u64, outcome_unknown: bool) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "idemstore::store", key_hash = %short(hash), token, outcome_unknown, "key released by an operator");
    #[cfg(not(feature = "tracing"))]
    let _ = (hash, token, outcome_unknown);
}

/// The resolver hook went past a key whose outcome is unknown (E6) that it could not reserve
/// because of its own record (`why`, damage): the key stays unknown.
pub(crate) fn unresolvable(hash: &KeyHash, why: &crate::error::Unavailable) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "idemstore::store", key_hash = %short(hash), error = %why, "key whose outcome is unknown not resolved: its record cannot be read");
    #[cfg(not(feature = "tracing"))]
    let _ = (hash, why);
}

/// The resolver hook went past `skipped` keys it could not reserve (see [`unresolvable`]).
pub(crate) fn unresolved(skipped: usize) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "idemstore::store", skipped, "keys whose outcome is unknown left unresolved: their records cannot be read; `check` names them");
    #[cfg(not(feature = "tracing"))]
    let _ = skipped;
}

/// A holder gave its key back (C6): released it, or dropped its reservation (`dropped`), so
/// the next attempt executes.
pub(crate) fn released(hash: &KeyHash, token: u64, dropped: bool) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "idemstore::store", key_hash = %short(hash), token, dropped, "reservation released");
    #[cfg(not(feature = "tracing"))]
    let _ = (hash, token, dropped);
}

/// A checkpoint wrote the log's changes into the database file.
pub(crate) fn checkpoint(took: Duration) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "idemstore::store", took_us = took.as_micros() as u64, "checkpoint");
    #[cfg(not(feature = "tracing"))]
    let _ = took;
}

/// A batch waited for a checkpoint to free space in the write-ahead log.
pub(crate) fn log_full() {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "idemstore::store", "write-ahead log full: waiting for a checkpoint");
}

/// A compaction pass looked at `scanned` expiry entries and removed `removed` records (C9).
pub(crate) fn compaction(scanned: usize, removed: u64) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "idemstore::store", scanned, removed, "compaction pass");
    #[cfg(not(feature = "tracing"))]
    let _ = (scanned, removed);
}

/// The span of one guarded request: digests of its scope and key (never the values), and,
/// recorded later, how long the store took to decide and what the layer did.
#[cfg(all(feature = "http", feature = "tracing"))]
pub(crate) fn request_span(
    scope: &crate::rules::key::Scope,
    key: &crate::rules::key::Key,
) -> tracing::Span {
    tracing::info_span!(
        target: "idemstore::http",
        "idempotency",
        scope = %ScopeDigest(scope),
        key_hash = %KeyDigest(scope, key),
        store_us = tracing::field::Empty,
        outcome = tracing::field::Empty,
        status = tracing::field::Empty,
    )
}

/// A scope's digest in a span, computed only when a subscriber records the span: a layer with
/// the feature and no subscriber pays nothing for it.
#[cfg(all(feature = "http", feature = "tracing"))]
struct ScopeDigest<'a>(&'a crate::rules::key::Scope);

#[cfg(all(feature = "http", feature = "tracing"))]
impl std::fmt::Display for ScopeDigest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &blake3::hash(self.0.as_str().as_bytes()).as_bytes()[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A key's hash in a span, computed only when a subscriber records the span.
#[cfg(all(feature = "http", feature = "tracing"))]
struct KeyDigest<'a>(&'a crate::rules::key::Scope, &'a crate::rules::key::Key);

#[cfg(all(feature = "http", feature = "tracing"))]
impl std::fmt::Display for KeyDigest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&short(&KeyHash::of(self.0, self.1)))
    }
}

/// Records in the current request span how long the store took to decide a `begin`.
#[cfg(feature = "http")]
pub(crate) fn store_latency(took: Duration) {
    #[cfg(feature = "tracing")]
    tracing::Span::current().record("store_us", took.as_micros() as u64);
    #[cfg(not(feature = "tracing"))]
    let _ = took;
}

/// What the layer did with a guarded request, recorded in its span and said as an event at
/// the level an operator keeps on for it: a replay, an in-progress, a conflict at info; an
/// unknown outcome or a run without protection at warn; a store that cannot answer at error.
#[cfg(feature = "http")]
pub(crate) fn answered(outcome: crate::http::Outcome, status: u16) {
    #[cfg(feature = "tracing")]
    {
        use crate::http::Outcome;
        let span = tracing::Span::current();
        span.record("outcome", outcome.as_str());
        span.record("status", status);
        let o = outcome.as_str();
        match outcome {
            Outcome::Executed | Outcome::Refused | Outcome::Unguarded => {
                tracing::debug!(target: "idemstore::http", outcome = o, status, "answered")
            }
            Outcome::Replayed | Outcome::InProgress | Outcome::Conflict => {
                tracing::info!(target: "idemstore::http", outcome = o, status, "answered")
            }
            Outcome::OutcomeUnknown | Outcome::Unprotected => {
                tracing::warn!(target: "idemstore::http", outcome = o, status, "answered")
            }
            Outcome::StoreUnavailable => {
                tracing::error!(target: "idemstore::http", outcome = o, status, "answered")
            }
        }
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (outcome, status);
}
