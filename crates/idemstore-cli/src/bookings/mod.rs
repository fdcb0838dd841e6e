//! The bookings kept by the demo service: as tables in the store's own file (`file.rs`), or
//! with `--redis` on the Redis server the store uses (`redis.rs`), so that several `serve`
//! processes are one service.
//!
//! Why: the demo's operations must have real effects to protect: a booking created twice is
//! the bug idempotency prevents, and a booking edited from a stale version is the bug `If-Match`
//! prevents. Invariants, in both places: a change checks ownership and the expected version
//! (`If-Match`) atomically with its write, so two concurrent edits of one version cannot both
//! succeed; a create under an idempotency key cannot be made twice by one request across a
//! crash: in the store's file it commits with its stored response (`file.rs`), and on Redis it
//! is tied to the key and the request for the store's time to live (`redis.rs`), so a retry that
//! reaches the handler after a crash between the two writes gets the same booking.

pub(crate) mod file;
mod redis;

use serde::{Deserialize, Serialize};

/// A booking as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Booking {
    pub(crate) uid: String,
    pub(crate) event_type_id: String,
    pub(crate) start: String,
    pub(crate) attendee: Attendee,
    pub(crate) status: String,
    pub(crate) version: u64,
}

/// Who attends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Attendee {
    pub(crate) email: String,
}

impl Booking {
    /// The entity tag of this version.
    pub(crate) fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }
}

/// A booking as it is stored: with the account that owns it.
#[derive(Serialize, Deserialize)]
struct Stored {
    account: String,
    booking: Booking,
}

/// Why a bookings operation did not happen.
#[derive(Debug)]
pub(crate) enum BookingError {
    NotFound,
    /// `If-Match` named another version.
    Stale {
        current: String,
    },
    /// The transition is not allowed from the booking's state.
    InvalidState(String),
    /// The storage cannot answer for a moment (the Redis server restarting or out of reach,
    /// a Cluster slot midway through a move): nothing was written, and the call may be sent
    /// again.
    Unavailable(String),
    Storage(String),
}

impl std::fmt::Display for BookingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BookingError::NotFound => f.write_str("no such booking"),
            BookingError::Stale { current } => write!(f, "the current version is {current}"),
            BookingError::InvalidState(why) => f.write_str(why),
            BookingError::Unavailable(why) => write!(f, "bookings storage unavailable: {why}"),
            BookingError::Storage(why) => write!(f, "bookings storage: {why}"),
        }
    }
}

/// The idempotency key a create runs under, as the layer reserved it.
pub(crate) struct KeyedRequest {
    /// The key's scope.
    pub(crate) scope: String,
    /// The key, parsed (unquoted).
    pub(crate) key: String,
    /// The request's fingerprint: version and digest.
    pub(crate) fingerprint: (u8, [u8; 32]),
    /// How long the tie between the key and the booking lives: the store's time to live.
    pub(crate) ttl_ms: u64,
}

/// What a create asks for.
pub(crate) struct NewBooking {
    pub(crate) event_type_id: String,
    pub(crate) start: String,
    pub(crate) email: String,
}

/// The bookings, wherever they live. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Bookings {
    File(file::FileBookings),
    Redis(redis::RedisBookings),
}

impl Bookings {
    /// The bookings as tables in `store`'s own file.
    pub(crate) fn in_store(store: &idemstore::Store) -> Result<Bookings, BookingError> {
        file::FileBookings::in_store(store).map(Bookings::File)
    }

    /// Bookings kept in memory only.
    pub(crate) fn in_memory() -> Result<Bookings, BookingError> {
        file::FileBookings::in_memory().map(Bookings::File)
    }

    /// Bookings on the Redis server at `url`, under keys starting with `prefix`.
    pub(crate) fn on_redis(url: &str, prefix: &str) -> Result<Bookings, BookingError> {
        redis::RedisBookings::open(url, prefix).map(Bookings::Redis)
    }

    /// The store whose transaction a create can join, to commit with its response: the
    /// store's file, not Redis or memory.
    pub(crate) fn store(&self) -> Option<&idemstore::Store> {
        match self {
            Bookings::File(b) => b.store(),
            Bookings::Redis(_) => None,
        }
    }

    /// Creates a booking in a write of its own. On Redis, it returns instead the booking an
    /// earlier create of the same request under the same idempotency key made, if their tie
    /// has not expired at `now_ms` (ms since the Unix epoch); without a key (`request` is
    /// `None`) every call creates a booking.
    pub(crate) fn create(
        &self,
        account: &str,
        request: Option<&KeyedRequest>,
        now_ms: u64,
        new: NewBooking,
    ) -> Result<Booking, BookingError> {
        match self {
            Bookings::File(b) => b.create(account.to_owned(), new),
            Bookings::Redis(b) => b.create(account, request, now_ms, new),
        }
    }

    /// The account's bookings, oldest uid first.
    pub(crate) fn list(&self, account: &str) -> Result<Vec<Booking>, BookingError> {
        match self {
            Bookings::File(b) => b.list(account),
            Bookings::Redis(b) => b.list(account),
        }
    }

    /// One of the account's bookings.
    pub(crate) fn get(&self, account: &str, uid: &str) -> Result<Booking, BookingError> {
        match self {
            Bookings::File(b) => b.get(account, uid),
            Bookings::Redis(b) => b.get(account, uid),
        }
    }

    /// Changes one of the account's bookings with `f`, if `if_match` (when given) names its
    /// current version; the version goes up by one.
    pub(crate) fn update(
        &self,
        account: &str,
        uid: &str,
        if_match: Option<&str>,
        f: impl Fn(&mut Booking) -> Result<(), BookingError> + Send + 'static,
    ) -> Result<Booking, BookingError> {
        match self {
            Bookings::File(b) => b.update(
                account.to_owned(),
                uid.to_owned(),
                if_match.map(str::to_owned),
                f,
            ),
            Bookings::Redis(b) => b.update(account, uid, if_match, f),
        }
    }
}

/// Applies an edit to a stored booking if `if_match` (when given) names its current version,
/// and moves the version up by one.
fn edit(
    stored: &mut Stored,
    if_match: Option<&str>,
    f: impl Fn(&mut Booking) -> Result<(), BookingError>,
) -> Result<(), BookingError> {
    let current = stored.booking.etag();
    if let Some(expected) = if_match
        && !if_match_allows(expected, &current)
    {
        return Err(BookingError::Stale { current });
    }
    f(&mut stored.booking)?;
    stored.booking.version += 1;
    Ok(())
}

/// A new booking's uid: `bk_` and 16 hex digits of `digest`.
fn uid_of(digest: &[u8]) -> String {
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bk_{hex}")
}

/// A new booking of `account`, at version 1.
fn new_record(uid: String, new: NewBooking) -> Booking {
    Booking {
        uid,
        event_type_id: new.event_type_id,
        start: new.start,
        attendee: Attendee { email: new.email },
        status: "accepted".to_owned(),
        version: 1,
    }
}

/// RFC 9110 `If-Match`: `*`, or a list of entity tags compared strongly (a weak tag never
/// matches).
pub(crate) fn if_match_allows(header: &str, current: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_rules() {
        assert!(if_match_allows("\"v1\"", "\"v1\""));
        assert!(if_match_allows("\"v0\", \"v1\"", "\"v1\""));
        assert!(if_match_allows("*", "\"v1\""));
        assert!(!if_match_allows("W/\"v1\"", "\"v1\""));
        assert!(!if_match_allows("\"v2\"", "\"v1\""));
    }
}
