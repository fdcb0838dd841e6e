//! The caller's side (feature `client`): a retrying client that persists its keys before it
//! sends.
//!
//! Why: half of what makes a write safe to retry is on the caller's side, and every team
//! writes it by hand: generate the key before the request, store it durably before sending
//! (so that a crash between sending and storing cannot mint a new key), reuse it on every
//! retry, back off with jitter, wait on `409 idempotency_in_progress`, stop on a conflict,
//! derive the key from a stable event id when there is one. idemstore is already a durable
//! embedded store, so it keeps the caller's keys too.
//!
//! The pieces, each usable alone:
//!
//! * [`KeyJournal`]: each logical operation's key, durable before it is returned, the same
//!   key until the operation is finished, across restarts; [`pending`](KeyJournal::pending)
//!   lists what a restarted caller resumes; a resume past the server's window is refused
//!   ([`JournalError::Expired`]).
//! * [`RetryPolicy`]: exponential backoff with full jitter, a cap, a maximum of attempts, an
//!   overall deadline and a timeout per attempt.
//! * [`classify`]: which answers are retried and which stop with a typed error.
//! * [`RetryLayer`]: a tower layer for hyper-based clients that applies both, with one key
//!   on every attempt (from the journal through an [`Operation`] extension, from an
//!   [`IdempotencyKey`] extension, or from the request's header).
//! * With the feature `client-reqwest`, `RetryMiddleware` does the same as a
//!   `reqwest-middleware` middleware.
//!
//! Invariants kept across them (rules K1 to K8 of `docs/contract.md`):
//!
//! * a key handed out by the journal is durable first, and is the one every attempt and
//!   every later run sends for that operation, until the operation is finished;
//! * no key is handed out for an operation older than the window;
//! * a request is retried only with its key, only on connection errors, timeouts, `5xx`,
//!   `408`, `429` and `409 idempotency_in_progress`, never past the maximum of attempts or
//!   the deadline, waiting at least what `Retry-After` asks;
//! * a conflict, a `400`, a `422` and an outcome the server does not know stop at once with
//!   a [`RetryError`]; the answer handed back says how many attempts it took and whether it
//!   was a replay ([`RetryReport`]).
//!
//! `docs/client.md` is the guide.

mod classify;
mod error;
mod journal;
mod layer;
#[cfg(feature = "client-reqwest")]
mod middleware;
mod mint;
mod policy;
mod retry;

pub use classify::{Verdict, classify, error_code, is_replay, retry_after};
pub use error::{BoxError, Failure, JournalError, RetryError};
pub use journal::{JournalConfig, JournalEntry, KeyJournal, Outcome};
pub use layer::{IdempotencyKey, Operation, ResponseFuture, RetryLayer, RetryService};
#[cfg(feature = "client-reqwest")]
pub use middleware::RetryMiddleware;
pub use policy::RetryPolicy;
pub use retry::RetryReport;
