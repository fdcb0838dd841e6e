//! The bookings kept by the demo service, in a redb file of their own.
//!
//! Why: the demo's operations must have real effects to protect: a booking created twice is
//! the bug idempotency prevents, and a booking edited from a stale version is the bug `If-Match`
//! prevents. Invariants: every change is one redb write transaction that checks ownership and
//! the expected version (`If-Match`) before writing, so two concurrent edits of one version
//! cannot both succeed; a booking created under an idempotency key is found again by that key,
//! so a retry that reaches the handler after a crash (between the booking's commit and the
//! idempotency record's) returns the same booking instead of a second one.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// uid → the stored booking (JSON).
const BOOKINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bookings");
/// (account, uid) → (): an account's bookings.
const BY_ACCOUNT: TableDefinition<(&str, &str), ()> = TableDefinition::new("bookings_by_account");
/// (account, idempotency key) → uid: the booking a create with that key made.
const BY_KEY: TableDefinition<(&str, &str), &str> = TableDefinition::new("bookings_by_key");
/// "next_id" → the counter that names new bookings.
const META: TableDefinition<&str, u64> = TableDefinition::new("bookings_meta");

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
    Storage(String),
}

impl From<redb::Error> for BookingError {
    fn from(e: redb::Error) -> Self {
        BookingError::Storage(e.to_string())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for BookingError {
            fn from(e: $t) -> Self {
                BookingError::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    serde_json::Error
);

/// What a create asks for.
pub(crate) struct NewBooking {
    pub(crate) event_type_id: String,
    pub(crate) start: String,
    pub(crate) email: String,
}

/// The bookings database. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Bookings {
    db: Arc<Database>,
    durable: bool,
}

impl Bookings {
    /// Opens (or creates) the bookings file.
    pub(crate) fn open(path: &Path) -> Result<Bookings, BookingError> {
        let db = Database::create(path).map_err(|e| BookingError::Storage(e.to_string()))?;
        Bookings::init(db, true)
    }

    /// Bookings kept in memory only.
    pub(crate) fn in_memory() -> Result<Bookings, BookingError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| BookingError::Storage(e.to_string()))?;
        Bookings::init(db, false)
    }

    fn init(db: Database, durable: bool) -> Result<Bookings, BookingError> {
        let b = Bookings {
            db: Arc::new(db),
            durable,
        };
        b.write(|txn| {
            txn.open_table(BOOKINGS)?;
            txn.open_table(BY_ACCOUNT)?;
            txn.open_table(BY_KEY)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(b)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, BookingError>,
    ) -> Result<T, BookingError> {
        let mut txn = self.db.begin_write()?;
        if !self.durable {
            txn.set_durability(redb::Durability::None)?;
        }
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    /// Creates a booking, or returns the one an earlier create with the same idempotency key
    /// made.
    pub(crate) fn create(
        &self,
        account: &str,
        key: Option<&str>,
        new: NewBooking,
    ) -> Result<Booking, BookingError> {
        self.write(|txn| {
            let mut by_key = txn.open_table(BY_KEY)?;
            let mut bookings = txn.open_table(BOOKINGS)?;
            if let Some(k) = key
                && let Some(uid) = by_key.get((account, k))?
            {
                let uid = uid.value().to_owned();
                if let Some(stored) = bookings.get(uid.as_str())? {
                    let stored: Stored = serde_json::from_slice(stored.value())?;
                    return Ok(stored.booking);
                }
            }
            let mut meta = txn.open_table(META)?;
            let n = meta.get("next_id")?.map_or(1, |v| v.value());
            meta.insert("next_id", n + 1)?;
            let digest = blake3::hash(format!("{account}/{n}").as_bytes());
            let uid: String = format!(
                "bk_{}",
                digest.as_bytes()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let booking = Booking {
                uid: uid.clone(),
                event_type_id: new.event_type_id,
                start: new.start,
                attendee: Attendee { email: new.email },
                status: "accepted".to_owned(),
                version: 1,
            };
            let stored = serde_json::to_vec(&Stored {
                account: account.to_owned(),
                booking: booking.clone(),
            })?;
            bookings.insert(uid.as_str(), stored.as_slice())?;
            txn.open_table(BY_ACCOUNT)?
                .insert((account, uid.as_str()), ())?;
            if let Some(k) = key {
                by_key.insert((account, k), uid.as_str())?;
            }
            Ok(booking)
        })
    }

    /// The account's bookings, oldest uid first.
    pub(crate) fn list(&self, account: &str) -> Result<Vec<Booking>, BookingError> {
        let txn = self.db.begin_read()?;
        let by_account = txn.open_table(BY_ACCOUNT)?;
        let bookings = txn.open_table(BOOKINGS)?;
        let mut out = Vec::new();
        for entry in by_account.range((account, "")..)? {
            let (k, _) = entry?;
            let (acct, uid) = k.value();
            if acct != account {
                break;
            }
            if let Some(v) = bookings.get(uid)? {
                let stored: Stored = serde_json::from_slice(v.value())?;
                out.push(stored.booking);
            }
        }
        Ok(out)
    }

    /// One of the account's bookings.
    pub(crate) fn get(&self, account: &str, uid: &str) -> Result<Booking, BookingError> {
        let txn = self.db.begin_read()?;
        let bookings = txn.open_table(BOOKINGS)?;
        let Some(v) = bookings.get(uid)? else {
            return Err(BookingError::NotFound);
        };
        let stored: Stored = serde_json::from_slice(v.value())?;
        if stored.account != account {
            return Err(BookingError::NotFound);
        }
        Ok(stored.booking)
    }

    /// Changes one of the account's bookings with `f`, if `if_match` (when given) names its
    /// current version; the version goes up by one.
    pub(crate) fn update(
        &self,
        account: &str,
        uid: &str,
        if_match: Option<&str>,
        f: impl FnOnce(&mut Booking) -> Result<(), BookingError>,
    ) -> Result<Booking, BookingError> {
        self.write(|txn| {
            let mut bookings = txn.open_table(BOOKINGS)?;
            let mut stored: Stored = match bookings.get(uid)? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(BookingError::NotFound),
            };
            if stored.account != account {
                return Err(BookingError::NotFound);
            }
            let current = stored.booking.etag();
            if let Some(expected) = if_match
                && !if_match_allows(expected, &current)
            {
                return Err(BookingError::Stale { current });
            }
            f(&mut stored.booking)?;
            stored.booking.version += 1;
            let bytes = serde_json::to_vec(&stored)?;
            bookings.insert(uid, bytes.as_slice())?;
            Ok(stored.booking)
        })
    }
}

/// RFC 9110 `If-Match`: `*`, or a list of entity tags compared strongly (a weak tag never
/// matches).
fn if_match_allows(header: &str, current: &str) -> bool {
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
