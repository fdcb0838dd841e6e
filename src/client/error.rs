//! The client's errors: one enum for the key journal, one for a retried request.
//!
//! Why: a caller must tell "stop, your request is wrong" (a conflict, a `400`, a `422`) from
//! "stop, resuming would be unsafe" (past the window) and from "gave up for now, resume
//! later" (attempts or deadline spent), and act on each differently; so each is a variant,
//! never a string. Invariant: a variant that follows a sent request carries the number of
//! attempts made; store failures keep their cause reachable through `source()`.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{
    BeginError, CompleteError, ConfigError, Error, KeyError, LeaseError, OpenError, PointError,
    Unavailable,
};

/// A type-erased error, as tower services return them.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A [`KeyJournal`](super::KeyJournal) operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal's file could not be opened.
    Open(OpenError),
    /// The window, the margin or the store given is refused (say, a store whose time to live
    /// is shorter than the window: it would forget keys the server still remembers).
    Config(ConfigError),
    /// The operation id is not a valid record key (1 to 255 visible ASCII characters).
    InvalidOperation(KeyError),
    /// The stable id given to [`key_from`](super::KeyJournal::key_from) is not a valid
    /// idempotency key (1 to 255 visible ASCII characters).
    InvalidStableId(KeyError),
    /// The operation started longer ago than the server's idempotency window: the server may
    /// have forgotten its key and would run a retry as a new request. Nothing is sent; decide
    /// by looking the effect up, then [`finish`](super::KeyJournal::finish) the operation.
    Expired {
        /// The operation id.
        operation: String,
        /// When its key was journaled (ms since the Unix epoch).
        started_ms: u64,
        /// The server's window, as configured.
        window: Duration,
    },
    /// [`key_from`](super::KeyJournal::key_from) was given a stable id other than the one the
    /// operation was journaled with (or the operation was journaled with a minted key): two
    /// requests under one operation id.
    Conflict {
        /// The operation id.
        operation: String,
        /// The key journaled for it.
        journaled: String,
    },
    /// Another call on the same operation held it for longer than the journal waits.
    Busy {
        /// The operation id.
        operation: String,
    },
    /// [`finish`](super::KeyJournal::finish) of an operation the journal does not hold
    /// (never started, or forgotten after the window and its margin).
    NotStarted {
        /// The operation id.
        operation: String,
    },
    /// A record in the journal's scope that the journal did not write, or cannot read.
    Damaged {
        /// The operation id.
        operation: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operating system's random source failed: no key is minted rather than a weak one.
    Random(BoxError),
    /// The journal's store failed.
    Store(Box<Error>),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Open(_) => write!(f, "the key journal could not be opened"),
            JournalError::Config(_) => write!(f, "the key journal's configuration is refused"),
            JournalError::InvalidOperation(_) => write!(f, "invalid operation id"),
            JournalError::InvalidStableId(_) => write!(f, "invalid stable id"),
            JournalError::Expired {
                operation, window, ..
            } => write!(
                f,
                "operation {operation} started more than the server's window ({}s) ago: its key may be forgotten and a retry would run as new; resolve it by hand",
                window.as_secs()
            ),
            JournalError::Conflict {
                operation,
                journaled,
            } => write!(
                f,
                "operation {operation} was journaled with key {journaled}, not this one"
            ),
            JournalError::Busy { operation } => {
                write!(f, "operation {operation} is held by another call")
            }
            JournalError::NotStarted { operation } => {
                write!(f, "operation {operation} is not in the journal")
            }
            JournalError::Damaged { operation, reason } => {
                write!(f, "journal entry {operation}: {reason}")
            }
            JournalError::Random(_) => write!(f, "the random source failed"),
            JournalError::Store(_) => write!(f, "the key journal's store failed"),
        }
    }
}

impl StdError for JournalError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            JournalError::Open(e) => Some(e),
            JournalError::Config(e) => Some(e),
            JournalError::InvalidOperation(e) | JournalError::InvalidStableId(e) => Some(e),
            JournalError::Random(e) => Some(&**e),
            JournalError::Store(e) => Some(&**e),
            JournalError::Expired { .. }
            | JournalError::Conflict { .. }
            | JournalError::Busy { .. }
            | JournalError::NotStarted { .. }
            | JournalError::Damaged { .. } => None,
        }
    }
}

macro_rules! store_failure {
    ($($ty:ty),*) => {
        $(impl From<$ty> for JournalError {
            fn from(e: $ty) -> Self {
                JournalError::Store(Box::new(e.into()))
            }
        })*
    };
}

store_failure!(
    BeginError,
    PointError,
    LeaseError,
    CompleteError,
    Unavailable
);

/// Why the last attempt of a request that was given up did not answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The connection failed: refused, reset, closed before the answer, or the answer's body
    /// broke off.
    Transport(BoxError),
    /// No answer within the attempt's timeout.
    Timeout,
    /// An answer that asks for a retry (a `5xx`, `408`, `429`, or `409
    /// idempotency_in_progress`), with its status.
    Status(u16),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transport(e) => write!(f, "connection failed: {e}"),
            Failure::Timeout => write!(f, "no answer in time"),
            Failure::Status(s) => write!(f, "answered {s}"),
        }
    }
}

/// A request sent through the retry policy ended without an answer to hand back.
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError {
    /// `409 idempotency_key_conflict` (or a `422` with that code): the key was used for a
    /// different request. A bug of the caller: the operation id names two requests.
    Conflict {
        /// The status (`409` or `422`).
        status: u16,
        /// The answer's body.
        body: Bytes,
        /// Attempts made.
        attempts: u32,
    },
    /// `400` or `422`: the server refuses the request itself; sending it again cannot help.
    Rejected {
        /// The status.
        status: u16,
        /// The error code of the body, if it has one.
        code: Option<String>,
        /// The answer's body.
        body: Bytes,
        /// Attempts made.
        attempts: u32,
    },
    /// `409 idempotency_outcome_unknown`: the server does not know whether the operation took
    /// effect and holds the key until someone there resolves it. Retrying cannot help.
    OutcomeUnknown {
        /// The answer's body.
        body: Bytes,
        /// Attempts made.
        attempts: u32,
    },
    /// The policy's maximum of attempts was reached.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// What the last one got.
        last: Failure,
    },
    /// The next attempt (or its wait, or a `Retry-After`) would end past the policy's
    /// deadline.
    Deadline {
        /// Attempts made.
        attempts: u32,
        /// What the last one got.
        last: Failure,
    },
    /// The operation's window ([`JournalConfig::window`](super::JournalConfig::window)) ended
    /// between two attempts, or would end before the next one (the wait the policy or the
    /// server's `Retry-After` asks for reaches past it): the server may have forgotten the key
    /// and would run another attempt as a new request, so none is sent (K3). The operation
    /// stays pending; decide by looking the effect up, then
    /// [`finish`](super::KeyJournal::finish) it.
    WindowEnded {
        /// Attempts made.
        attempts: u32,
        /// What the last one got.
        last: Failure,
    },
    /// The request carries no idempotency key and no operation to journal one for; it is
    /// not sent, since retrying a write without a key can run it twice.
    NoKey,
    /// The key journal refused or failed (say, [`JournalError::Expired`]); nothing was sent.
    Journal(JournalError),
    /// The request's body could not be read, or the key is not a valid header value.
    Request(BoxError),
}

impl RetryError {
    /// Attempts made before the error (0 when nothing was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            RetryError::Conflict { attempts, .. }
            | RetryError::Rejected { attempts, .. }
            | RetryError::OutcomeUnknown { attempts, .. }
            | RetryError::Exhausted { attempts, .. }
            | RetryError::Deadline { attempts, .. }
            | RetryError::WindowEnded { attempts, .. } => *attempts,
            RetryError::NoKey | RetryError::Journal(_) | RetryError::Request(_) => 0,
        }
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::Conflict { status, .. } => write!(
                f,
                "{status} idempotency_key_conflict: the key was already used for a different request"
            ),
            RetryError::Rejected { status, code, .. } => match code {
                Some(code) => write!(f, "{status} {code}: the request was refused"),
                None => write!(f, "{status}: the request was refused"),
            },
            RetryError::OutcomeUnknown { .. } => write!(
                f,
                "409 idempotency_outcome_unknown: the server must resolve this key before it answers"
            ),
            RetryError::Exhausted { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; the last one: {last}")
            }
            RetryError::Deadline { attempts, last } => write!(
                f,
                "deadline reached after {attempts} attempts; the last one: {last}"
            ),
            RetryError::WindowEnded { attempts, last } => write!(
                f,
                "the operation's window ends before another attempt could be sent (after \
                 {attempts} attempts), so the server may have forgotten its key: not sent \
                 again; the last one: {last}"
            ),
            RetryError::NoKey => write!(f, "no idempotency key and no operation to journal"),
            RetryError::Journal(e) => e.fmt(f),
            RetryError::Request(e) => write!(f, "the request could not be prepared: {e}"),
        }
    }
}

impl StdError for RetryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            RetryError::Exhausted { last, .. }
            | RetryError::Deadline { last, .. }
            | RetryError::WindowEnded { last, .. } => match last {
                Failure::Transport(e) => Some(&**e),
                Failure::Timeout | Failure::Status(_) => None,
            },
            RetryError::Journal(e) => Some(e),
            RetryError::Request(e) => Some(&**e),
            RetryError::Conflict { .. }
            | RetryError::Rejected { .. }
            | RetryError::OutcomeUnknown { .. }
            | RetryError::NoKey => None,
        }
    }
}

impl From<JournalError> for RetryError {
    fn from(e: JournalError) -> Self {
        RetryError::Journal(e)
    }
}
