//! Errors, one enum per operation, plus the umbrella [`Error`].
//!
//! # Design
//!
//! Each operation returns the narrowest enum that lists only what can go wrong in it, so a
//! caller can match exhaustively on what matters (`CompleteError::Fenced` for a stale lease
//! holder, say) without wading through variants that cannot happen. Failures of the storage
//! engine itself are shared by every operation and live in [`Unavailable`]; every per-operation
//! enum carries it as its `Unavailable` variant, so "the store cannot serve right now" is handled
//! once (an HTTP layer maps it to `503`). The umbrella [`Error`] converts from all of them for
//! callers who just want `?`.
//!
//! No type of the storage engine underneath (redb) appears here: causes are kept as boxed
//! `std::error::Error` values reachable through [`std::error::Error::source`], so the engine can
//! change without breaking callers.
//!
//! All enums are `#[non_exhaustive]`: new failure modes may be added in minor releases.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// A shared, type-erased cause.
pub(crate) type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// An idempotency key was refused (rule C12).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty.
    Empty,
    /// The key is longer than the limit.
    TooLong {
        /// Length of the key in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The key holds a byte that is not visible ASCII (`0x21..=0x7E`).
    InvalidByte {
        /// Position of the first offending byte.
        index: usize,
        /// The offending byte.
        byte: u8,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => f.write_str("idempotency key is empty"),
            KeyError::TooLong { len, max } => {
                write!(f, "idempotency key is {len} bytes long; the limit is {max}")
            }
            KeyError::InvalidByte { index, byte } => write!(
                f,
                "idempotency key has byte 0x{byte:02x} at position {index}; only visible ASCII (0x21-0x7e) is allowed"
            ),
        }
    }
}

impl StdError for KeyError {}

/// A scope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeError {
    /// The scope is empty.
    Empty,
    /// The scope is longer than [`crate::Scope::MAX_LEN`] bytes.
    TooLong {
        /// Length of the scope in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The scope holds a control character.
    ControlCharacter {
        /// Byte position of the first control character.
        index: usize,
    },
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Empty => f.write_str("scope is empty"),
            ScopeError::TooLong { len, max } => {
                write!(f, "scope is {len} bytes long; the limit is {max}")
            }
            ScopeError::ControlCharacter { index } => {
                write!(f, "scope has a control character at byte {index}")
            }
        }
    }
}

impl StdError for ScopeError {}

/// A configuration value is outside its documented range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) setting: &'static str,
    pub(crate) value: String,
    pub(crate) range: &'static str,
}

impl ConfigError {
    /// The name of the setter whose value was refused.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config `{}` = {} is out of range ({})",
            self.setting, self.value, self.range
        )
    }
}

impl StdError for ConfigError {}

/// The store cannot serve the operation: shared by every operation's error enum.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Unavailable {
    /// An earlier write or fsync failed, so the store refuses all further work: what is on
    /// disk is consistent, but this process can no longer tell what it holds. Close every
    /// handle and open the store again (the open repairs and recovers).
    Poisoned {
        /// What poisoned the store.
        cause: Cause,
    },
    /// The commit that carried this operation failed. The operation was applied entirely or
    /// not at all, and may already be durable: read the record again after reopening.
    OutcomeUnknown {
        /// Why the commit failed.
        cause: Cause,
    },
    /// The store was closed.
    Closed,
    /// A read found data that does not decode: the file was altered outside idemstore or the
    /// media failed.
    Corrupted {
        /// What was found.
        detail: String,
    },
    /// A read from the storage engine failed.
    Io {
        /// The cause.
        cause: Cause,
    },
    /// The Redis engine could not reach its server before the operation's deadline, and sent
    /// nothing: the operation was not applied. Retry later.
    Unreachable {
        /// The last connection error.
        cause: Cause,
    },
    /// The server refused the operation before running it (out of memory under
    /// `noeviction`, a read-only replica, a missing permission): nothing was applied.
    Refused {
        /// The server's answer.
        detail: String,
    },
    /// This engine cannot do the operation at all: transactions over the caller's own tables
    /// ([`Store::write`](crate::Store::write),
    /// [`Reservation::complete_with`](crate::Reservation::complete_with)) need the file engine,
    /// since the memory and Redis engines keep no database a caller can write to. Nothing was
    /// run.
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },
    /// Called from inside a closure the store is running in one of its transactions: the
    /// store's writer runs that closure and cannot also serve the call, which would wait for
    /// it forever. Nothing was applied. Do the store's work before or after the transaction.
    Reentrant,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Poisoned { cause } => write!(
                f,
                "store is poisoned ({cause}); close it and open it again to recover"
            ),
            Unavailable::OutcomeUnknown { cause } => write!(
                f,
                "the operation may or may not have been applied ({cause}); a file store is now poisoned"
            ),
            Unavailable::Closed => f.write_str("store is closed"),
            Unavailable::Corrupted { detail } => write!(f, "store data is corrupted: {detail}"),
            Unavailable::Io { cause } => write!(f, "storage read failed: {cause}"),
            Unavailable::Unreachable { cause } => write!(
                f,
                "the server could not be reached in time ({cause}); nothing was applied"
            ),
            Unavailable::Refused { detail } => write!(
                f,
                "the server refused the operation ({detail}); nothing was applied"
            ),
            Unavailable::Unsupported { operation } => write!(
                f,
                "{operation} needs the file engine; this store keeps no database for the caller's tables"
            ),
            Unavailable::Reentrant => f.write_str(
                "the store was called from inside one of its own transactions, which would wait for itself; nothing was applied",
            ),
        }
    }
}

impl StdError for Unavailable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Unavailable::Poisoned { cause }
            | Unavailable::OutcomeUnknown { cause }
            | Unavailable::Io { cause }
            | Unavailable::Unreachable { cause } => Some(&**cause as &(dyn StdError + 'static)),
            _ => None,
        }
    }
}

/// Opening a store ([`Store::open`](crate::Store::open)) or inspecting one
/// ([`Inspector::open`](crate::Inspector::open)) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// The file could not be opened or created.
    Io(std::io::Error),
    /// Another `Store` (in this or another process) has the file open.
    AlreadyOpen,
    /// The file is damaged and could not be repaired.
    Corrupted {
        /// What was found.
        detail: String,
    },
    /// The file was written by a newer idemstore whose format this version cannot read.
    UnsupportedFormat {
        /// The format version found in the file.
        found: u64,
        /// The newest format version this build reads.
        supported: u64,
    },
    /// The file has an older format version, which this build reads only after migrating it.
    /// [`Inspector::open`](crate::Inspector::open) refuses it, since the migration writes the
    /// file; opening it once with [`Store::open`](crate::Store::open) migrates it in place.
    NeedsMigration {
        /// The format version found in the file.
        found: u64,
        /// The format version this build reads.
        current: u64,
    },
    /// The file is not an idemstore store: empty (to the inspector; [`Store::open`](crate::Store::open)
    /// makes a new store of an empty or missing file), not a redb database, a redb database
    /// without idemstore's format marker, or one whose idemstore tables have other types.
    NotAnIdemstoreFile {
        /// What did not match.
        detail: String,
    },
    /// The write-ahead log is missing, damaged in its header, or belongs to another store,
    /// while the database may depend on it (it was not closed cleanly): completions
    /// acknowledged since the last checkpoint may live only in that log.
    Log {
        /// What was found.
        detail: String,
    },
    /// A background thread could not be started.
    Spawn(std::io::Error),
    /// The storage engine failed while opening.
    Storage {
        /// The cause.
        cause: Cause,
    },
    /// The Redis engine could not reach its server, or the server did not answer in time.
    Unreachable {
        /// The last connection error.
        cause: Cause,
    },
    /// The Redis server runs with settings under which it can lose records: an eviction
    /// policy other than `noeviction`, no append-only file, or an `appendfsync` weaker than
    /// the store's [`Durability`](crate::Durability) promises. The message says which and how
    /// to fix it; `RedisOptions::trust_server_settings` skips the check (for managed services
    /// that hide `CONFIG`).
    UnsafeServer {
        /// What was found.
        detail: String,
    },
    /// An option of the engine is outside its range.
    Config(ConfigError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "cannot open the store file: {e}"),
            OpenError::AlreadyOpen => {
                f.write_str("the store file is already open in this or another process")
            }
            OpenError::Corrupted { detail } => {
                write!(
                    f,
                    "the store file is damaged and cannot be repaired: {detail}"
                )
            }
            OpenError::UnsupportedFormat { found, supported } => write!(
                f,
                "the store file has format version {found}; this build reads up to version {supported}"
            ),
            OpenError::NeedsMigration { found, current } => write!(
                f,
                "the store file has format version {found}; this build reads version {current} \
                 and migrates older files by writing them, which a read-only inspection does not: \
                 open it once with the service (Store::open migrates it), then inspect it"
            ),
            OpenError::NotAnIdemstoreFile { detail } => {
                write!(f, "the file is not an idemstore database: {detail}")
            }
            OpenError::Log { detail } => write!(f, "cannot use the write-ahead log: {detail}"),
            OpenError::Spawn(e) => write!(f, "cannot start a background thread: {e}"),
            OpenError::Storage { cause } => write!(f, "storage failure while opening: {cause}"),
            OpenError::Unreachable { cause } => write!(f, "cannot reach the server: {cause}"),
            OpenError::UnsafeServer { detail } => {
                write!(f, "the server could lose records: {detail}")
            }
            OpenError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl StdError for OpenError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            OpenError::Io(e) | OpenError::Spawn(e) => Some(e),
            OpenError::Storage { cause } | OpenError::Unreachable { cause } => {
                Some(&**cause as &(dyn StdError + 'static))
            }
            OpenError::Config(e) => Some(e),
            _ => None,
        }
    }
}

/// [`Store::begin`](crate::Store::begin) failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BeginError {
    /// The key is longer than this store's configured `max_key_len` (rule C12).
    InvalidKey(KeyError),
    /// The key is new and its scope already holds `limit` live records, the most the store
    /// keeps for one scope (`ConfigBuilder::max_records_per_scope`, rule C13). Nothing was
    /// reserved; a retry succeeds once some of the scope's records expire or are purged.
    ScopeFull {
        /// The store's cap on live records per scope.
        limit: u64,
    },
    /// The store cannot serve.
    Unavailable(Unavailable),
}

impl fmt::Display for BeginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BeginError::InvalidKey(e) => write!(f, "begin refused: {e}"),
            BeginError::ScopeFull { limit } => write!(
                f,
                "begin refused: the scope already holds {limit} live records, the most this store keeps for one scope"
            ),
            BeginError::Unavailable(e) => write!(f, "begin failed: {e}"),
        }
    }
}

impl StdError for BeginError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BeginError::InvalidKey(e) => Some(e),
            BeginError::ScopeFull { .. } => None,
            BeginError::Unavailable(e) => Some(e),
        }
    }
}

/// Completing a reservation failed; nothing was stored.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CompleteError {
    /// The lease ran out and another `begin` took the key over with a higher fencing token
    /// (rule C8). The response was not stored; the new holder's outcome will be.
    Fenced {
        /// The token of the stale reservation.
        token: u64,
        /// The token of the reservation that holds the key now.
        current: u64,
    },
    /// No reservation with this token exists any more: the record expired, was purged, was
    /// released, or was already completed.
    NotReserved {
        /// The token of the reservation.
        token: u64,
    },
    /// The encoded response is larger than `max_response_bytes` (rule C12). The reservation is
    /// released, as for any failed attempt (rule C6).
    ResponseTooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The response cannot be encoded whatever its size: more than 65 535 headers, or a
    /// header name longer than 65 535 bytes (rule C12). The reservation is released.
    InvalidResponse {
        /// What is wrong with it.
        reason: String,
    },
    /// The store cannot serve.
    Unavailable(Unavailable),
}

impl fmt::Display for CompleteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompleteError::Fenced { token, current } => write!(
                f,
                "reservation {token} lost its lease and was taken over by reservation {current}; nothing was stored"
            ),
            CompleteError::NotReserved { token } => write!(
                f,
                "reservation {token} no longer exists (expired, purged, released or already completed); nothing was stored"
            ),
            CompleteError::ResponseTooLarge { len, max } => write!(
                f,
                "response is {len} bytes encoded; the limit is {max}; the key was released"
            ),
            CompleteError::InvalidResponse { reason } => {
                write!(
                    f,
                    "response cannot be stored: {reason}; the key was released"
                )
            }
            CompleteError::Unavailable(e) => write!(f, "complete failed: {e}"),
        }
    }
}

impl StdError for CompleteError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            CompleteError::Unavailable(e) => Some(e),
            _ => None,
        }
    }
}

/// Renewing or releasing a reservation failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LeaseError {
    /// The lease ran out and another `begin` took the key over (rule C8).
    Fenced {
        /// The token of the stale reservation.
        token: u64,
        /// The token of the reservation that holds the key now.
        current: u64,
    },
    /// No reservation with this token exists any more.
    NotReserved {
        /// The token of the reservation.
        token: u64,
    },
    /// The store cannot serve.
    Unavailable(Unavailable),
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Fenced { token, current } => write!(
                f,
                "reservation {token} lost its lease and was taken over by reservation {current}"
            ),
            LeaseError::NotReserved { token } => write!(
                f,
                "reservation {token} no longer exists (expired, purged, released or completed)"
            ),
            LeaseError::Unavailable(e) => write!(f, "lease operation failed: {e}"),
        }
    }
}

impl StdError for LeaseError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            LeaseError::Unavailable(e) => Some(e),
            _ => None,
        }
    }
}

/// Saving a recovery point failed; the key's last point is the one saved before.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PointError {
    /// The name or the payload is outside the limits
    /// ([`MAX_POINT_NAME`](crate::MAX_POINT_NAME), [`MAX_POINT_PAYLOAD`](crate::MAX_POINT_PAYLOAD)).
    Invalid {
        /// What is wrong with it.
        reason: String,
    },
    /// The reservation no longer holds the key: taken over ([`LeaseError::Fenced`]), or
    /// completed, released or expired ([`LeaseError::NotReserved`]); or the store cannot serve
    /// ([`LeaseError::Unavailable`], [`Unavailable::Unsupported`] on an engine that keeps no
    /// points).
    Lease(LeaseError),
}

impl fmt::Display for PointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointError::Invalid { reason } => write!(f, "recovery point refused: {reason}"),
            PointError::Lease(e) => write!(f, "recovery point not saved: {e}"),
        }
    }
}

impl StdError for PointError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PointError::Invalid { .. } => None,
            PointError::Lease(e) => Some(e),
        }
    }
}

impl From<LeaseError> for PointError {
    fn from(e: LeaseError) -> Self {
        PointError::Lease(e)
    }
}

impl From<Unavailable> for PointError {
    fn from(e: Unavailable) -> Self {
        PointError::Lease(LeaseError::Unavailable(e))
    }
}

/// Saving a recovery point together with the caller's writes
/// ([`Reservation::save_point_with`](crate::Reservation::save_point_with)) did not commit:
/// neither the writes nor the point were saved, and the reservation still holds the key.
///
/// `E` is the closure's own error type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PointWithError<E> {
    /// The closure returned this error: its writes were rolled back.
    Aborted(E),
    /// The closure panicked: its writes were rolled back.
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The store refused the point (the closure did not run), or cannot serve.
    Point(PointError),
}

impl<E: fmt::Display> fmt::Display for PointWithError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointWithError::Aborted(e) => write!(f, "step rolled back: {e}"),
            PointWithError::Panicked { message } => {
                write!(f, "step rolled back: its closure panicked: {message}")
            }
            PointWithError::Point(e) => e.fmt(f),
        }
    }
}

impl<E: StdError + 'static> StdError for PointWithError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PointWithError::Aborted(e) => Some(e),
            PointWithError::Panicked { .. } => None,
            PointWithError::Point(e) => Some(e),
        }
    }
}

impl<E> From<PointError> for PointWithError<E> {
    fn from(e: PointError) -> Self {
        PointWithError::Point(e)
    }
}

/// Resolving a key whose outcome is unknown ([`Store::resolve`](crate::Store::resolve)) failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ResolveError {
    /// The key is longer than this store's configured `max_key_len` (rule C12).
    InvalidKey(KeyError),
    /// The store cannot serve.
    Unavailable(Unavailable),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::InvalidKey(e) => write!(f, "resolve refused: {e}"),
            ResolveError::Unavailable(e) => write!(f, "resolve failed: {e}"),
        }
    }
}

impl StdError for ResolveError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ResolveError::InvalidKey(e) => Some(e),
            ResolveError::Unavailable(e) => Some(e),
        }
    }
}

impl From<Unavailable> for ResolveError {
    fn from(e: Unavailable) -> Self {
        ResolveError::Unavailable(e)
    }
}

/// An operator's release of a key ([`Store::release_held`](crate::Store::release_held),
/// [`Store::release_unknown`](crate::Store::release_unknown)) was refused or failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The key is longer than this store's configured `max_key_len` (rule C12).
    InvalidKey(KeyError),
    /// There is no live record for the key.
    NotFound,
    /// The record is in a state this call does not release: a completed record is never
    /// released (purge it), an in-flight one only by `release_held`, one whose outcome is
    /// unknown only by `release_unknown`.
    WrongState {
        /// The record's state.
        state: crate::State,
    },
    /// A resolution of the key's unknown outcome holds it now (rule E6).
    Resolving,
    /// The record changed between its reading and its release (completed, released or taken
    /// over meanwhile): nothing was released; look again.
    Changed,
    /// The store cannot serve.
    Unavailable(Unavailable),
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::InvalidKey(e) => write!(f, "release refused: {e}"),
            ReleaseError::NotFound => f.write_str("release refused: no live record for this key"),
            ReleaseError::WrongState { state } => match state {
                crate::State::Completed => f.write_str(
                    "release refused: the record is completed and replays its response (purge it to forget it)",
                ),
                crate::State::OutcomeUnknown => f.write_str(
                    "release refused: the key's outcome is unknown; release it only once its operation is known not to have had its effect (release_unknown, `--not-applied`)",
                ),
                crate::State::InFlight => f.write_str(
                    "release refused: the key is in flight, its outcome is not unknown (release_held, without `--not-applied`)",
                ),
            },
            ReleaseError::Resolving => {
                f.write_str("release refused: a resolution of the key's unknown outcome holds it")
            }
            ReleaseError::Changed => f.write_str(
                "release refused: the record changed while it was being released; look again",
            ),
            ReleaseError::Unavailable(e) => write!(f, "release failed: {e}"),
        }
    }
}

impl StdError for ReleaseError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ReleaseError::InvalidKey(e) => Some(e),
            ReleaseError::Unavailable(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Unavailable> for ReleaseError {
    fn from(e: Unavailable) -> Self {
        ReleaseError::Unavailable(e)
    }
}

/// An import of exported records ([`admin::import`](crate::admin::import)) was refused or
/// stopped.
#[cfg(feature = "admin")]
#[derive(Debug)]
#[non_exhaustive]
pub enum ImportError {
    /// The input could not be read.
    Read(std::io::Error),
    /// A line is not an exported record: nothing was imported.
    Line {
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The store refused or failed the `begin` of the record on this line; the lines before
    /// it are imported.
    Begin {
        /// The line's number, from 1.
        line: usize,
        /// The store's error.
        source: BeginError,
    },
    /// The store refused or failed the `complete` of the record on this line; the lines
    /// before it are imported.
    Complete {
        /// The line's number, from 1.
        line: usize,
        /// The store's error.
        source: CompleteError,
    },
}

#[cfg(feature = "admin")]
impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Read(e) => write!(f, "import failed: cannot read the input: {e}"),
            ImportError::Line { line, reason } => {
                write!(
                    f,
                    "import refused: line {line} is not an exported record: {reason}"
                )
            }
            ImportError::Begin { line, source } => {
                write!(f, "import stopped at line {line}: {source}")
            }
            ImportError::Complete { line, source } => {
                write!(f, "import stopped at line {line}: {source}")
            }
        }
    }
}

#[cfg(feature = "admin")]
impl StdError for ImportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ImportError::Read(e) => Some(e),
            ImportError::Line { .. } => None,
            ImportError::Begin { source, .. } => Some(source),
            ImportError::Complete { source, .. } => Some(source),
        }
    }
}

/// A transaction over the caller's own tables ([`Store::write`](crate::Store::write),
/// [`Store::read`](crate::Store::read)) did not commit, or did not run.
///
/// `E` is the closure's own error type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransactionError<E> {
    /// The closure returned this error: its writes were rolled back, and nothing else was.
    Aborted(E),
    /// The closure panicked: its writes were rolled back, and the store carries on.
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The store cannot serve (closed, poisoned, this engine keeps no database, or a call from
    /// inside another transaction); for a write whose commit failed, `OutcomeUnknown`.
    Unavailable(Unavailable),
}

impl<E: fmt::Display> fmt::Display for TransactionError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionError::Aborted(e) => write!(f, "transaction rolled back: {e}"),
            TransactionError::Panicked { message } => {
                write!(
                    f,
                    "transaction rolled back: its closure panicked: {message}"
                )
            }
            TransactionError::Unavailable(e) => write!(f, "transaction failed: {e}"),
        }
    }
}

impl<E: StdError + 'static> StdError for TransactionError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            TransactionError::Aborted(e) => Some(e),
            TransactionError::Panicked { .. } => None,
            TransactionError::Unavailable(e) => Some(e),
        }
    }
}

impl<E> From<Unavailable> for TransactionError<E> {
    fn from(e: Unavailable) -> Self {
        TransactionError::Unavailable(e)
    }
}

/// Completing a reservation together with the caller's writes
/// ([`Reservation::complete_with`](crate::Reservation::complete_with)) did not store the
/// response. Neither the caller's writes nor the response were committed.
///
/// `E` is the closure's own error type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CompleteWithError<E> {
    /// The closure returned this error: its writes were rolled back and the key released, so
    /// a retry executes again (C6).
    Aborted(E),
    /// The closure panicked: its writes were rolled back and the key released.
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The store refused the completion: a stale holder ([`CompleteError::Fenced`], the
    /// closure did not run), a response it cannot keep (the writes rolled back, the key
    /// released), or the store cannot serve.
    Complete(CompleteError),
}

impl<E: fmt::Display> fmt::Display for CompleteWithError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompleteWithError::Aborted(e) => {
                write!(f, "rolled back and the key released: {e}")
            }
            CompleteWithError::Panicked { message } => write!(
                f,
                "rolled back and the key released: the closure panicked: {message}"
            ),
            CompleteWithError::Complete(e) => e.fmt(f),
        }
    }
}

impl<E: StdError + 'static> StdError for CompleteWithError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            CompleteWithError::Aborted(e) => Some(e),
            CompleteWithError::Panicked { .. } => None,
            CompleteWithError::Complete(e) => Some(e),
        }
    }
}

impl<E> From<CompleteError> for CompleteWithError<E> {
    fn from(e: CompleteError) -> Self {
        CompleteWithError::Complete(e)
    }
}

/// The umbrella error: every operation's error converts into it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Opening failed.
    Open(OpenError),
    /// A configuration value was refused.
    Config(ConfigError),
    /// A key was refused.
    Key(KeyError),
    /// A scope was refused.
    Scope(ScopeError),
    /// `begin` failed.
    Begin(BeginError),
    /// `complete` failed.
    Complete(CompleteError),
    /// `renew` or `release` failed.
    Lease(LeaseError),
    /// Saving a recovery point failed.
    Point(PointError),
    /// Resolving a key whose outcome is unknown failed.
    Resolve(ResolveError),
    /// An operator's release of a key failed.
    Release(ReleaseError),
    /// An import of exported records failed.
    #[cfg(feature = "admin")]
    Import(ImportError),
    /// A read, purge or compaction failed.
    Unavailable(Unavailable),
    /// A transaction over the caller's own tables, or a completion or a recovery point with
    /// it, failed ([`TransactionError`], [`CompleteWithError`], [`PointWithError`]).
    Transaction(Box<dyn StdError + Send + Sync + 'static>),
    /// The caller's key journal failed (feature `client`).
    #[cfg(feature = "client")]
    Journal(Box<crate::client::JournalError>),
    /// A retried request ended without an answer (feature `client`).
    #[cfg(feature = "client")]
    Retry(Box<crate::client::RetryError>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(e) => e.fmt(f),
            Error::Config(e) => e.fmt(f),
            Error::Key(e) => e.fmt(f),
            Error::Scope(e) => e.fmt(f),
            Error::Begin(e) => e.fmt(f),
            Error::Complete(e) => e.fmt(f),
            Error::Lease(e) => e.fmt(f),
            Error::Point(e) => e.fmt(f),
            Error::Resolve(e) => e.fmt(f),
            Error::Release(e) => e.fmt(f),
            #[cfg(feature = "admin")]
            Error::Import(e) => e.fmt(f),
            Error::Unavailable(e) => e.fmt(f),
            Error::Transaction(e) => e.fmt(f),
            #[cfg(feature = "client")]
            Error::Journal(e) => e.fmt(f),
            #[cfg(feature = "client")]
            Error::Retry(e) => e.fmt(f),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Open(e) => Some(e),
            Error::Config(e) => Some(e),
            Error::Key(e) => Some(e),
            Error::Scope(e) => Some(e),
            Error::Begin(e) => Some(e),
            Error::Complete(e) => Some(e),
            Error::Lease(e) => Some(e),
            Error::Point(e) => Some(e),
            Error::Resolve(e) => Some(e),
            Error::Release(e) => Some(e),
            #[cfg(feature = "admin")]
            Error::Import(e) => Some(e),
            Error::Unavailable(e) => Some(e),
            Error::Transaction(e) => Some(&**e),
            #[cfg(feature = "client")]
            Error::Journal(e) => Some(&**e),
            #[cfg(feature = "client")]
            Error::Retry(e) => Some(&**e),
        }
    }
}

macro_rules! umbrella_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(e)
            }
        })*
    };
}

umbrella_from! {
    OpenError => Open,
    ConfigError => Config,
    KeyError => Key,
    ScopeError => Scope,
    BeginError => Begin,
    CompleteError => Complete,
    LeaseError => Lease,
    PointError => Point,
    ResolveError => Resolve,
    ReleaseError => Release,
    Unavailable => Unavailable,
}

#[cfg(feature = "admin")]
impl From<ImportError> for Error {
    fn from(e: ImportError) -> Self {
        Error::Import(e)
    }
}

#[cfg(feature = "client")]
impl From<crate::client::JournalError> for Error {
    fn from(e: crate::client::JournalError) -> Self {
        Error::Journal(Box::new(e))
    }
}

#[cfg(feature = "client")]
impl From<crate::client::RetryError> for Error {
    fn from(e: crate::client::RetryError) -> Self {
        Error::Retry(Box::new(e))
    }
}

impl<E: StdError + Send + Sync + 'static> From<TransactionError<E>> for Error {
    fn from(e: TransactionError<E>) -> Self {
        Error::Transaction(Box::new(e))
    }
}

impl<E: StdError + Send + Sync + 'static> From<PointWithError<E>> for Error {
    fn from(e: PointWithError<E>) -> Self {
        Error::Transaction(Box::new(e))
    }
}

impl<E: StdError + Send + Sync + 'static> From<CompleteWithError<E>> for Error {
    fn from(e: CompleteWithError<E>) -> Self {
        Error::Transaction(Box::new(e))
    }
}

impl From<Unavailable> for BeginError {
    fn from(e: Unavailable) -> Self {
        BeginError::Unavailable(e)
    }
}

impl From<Unavailable> for CompleteError {
    fn from(e: Unavailable) -> Self {
        CompleteError::Unavailable(e)
    }
}

impl From<Unavailable> for LeaseError {
    fn from(e: Unavailable) -> Self {
        LeaseError::Unavailable(e)
    }
}

/// Wraps any error as a shared cause.
pub(crate) fn cause<E: StdError + Send + Sync + 'static>(e: E) -> Cause {
    Arc::new(e)
}

/// A plain message as a cause.
#[derive(Debug)]
pub(crate) struct Message(pub(crate) String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}
