//! The bookings in a redb file of their own.
//!
//! Invariants: every change is one redb write transaction that checks ownership and the
//! expected version (`If-Match`) before writing.
//!
//! A booking created under an idempotency key is tied to the key *and* the request: the
//! scope, the key as the layer parsed it (`"abc"` and `abc` are one key), and the request's
//! fingerprint, for the store's time to live. A retry of the same request that reaches the
//! handler after a crash (between the booking's commit and the idempotency record's) gets the
//! same booking instead of a second one; a different request under the same key (possible once
//! the key's record was purged or expired, which makes the key new again) never gets the old
//! booking: it makes its own and takes the tie over. A tie lives no longer than the completed
//! record it shadows (its time to live starts at the create, the record's at its completion,
//! so the tie is gone when the key is new again), and expired ties are removed a batch at a
//! time by later creates, so the table holds the live keys and a bounded backlog.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Booking, BookingError, KeyedRequest, NewBooking, Stored, edit, new_record, uid_of};

/// uid → the stored booking (JSON).
const BOOKINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bookings");
/// (account, uid) → (): an account's bookings.
const BY_ACCOUNT: TableDefinition<(&str, &str), ()> = TableDefinition::new("bookings_by_account");
/// (scope, parsed idempotency key) → (uid, fingerprint version, fingerprint digest, expires at
/// in ms since the Unix epoch): the booking the request with that key made.
const BY_REQUEST: TableDefinition<(&str, &str), Tie> = TableDefinition::new("bookings_by_request");
/// (expires at, scope, key) → (): the ties of `BY_REQUEST` in the order they expire.
const BY_REQUEST_EXPIRY: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("bookings_by_request_expiry");
/// The table older versions kept: (account, raw `Idempotency-Key` header) → uid, without the
/// request or an expiry. Its ties cannot be checked, so it is dropped at open.
const LEGACY_BY_KEY: TableDefinition<(&str, &str), &str> = TableDefinition::new("bookings_by_key");
/// "next_id" → the counter that names new bookings.
const META: TableDefinition<&str, u64> = TableDefinition::new("bookings_meta");
/// How many expired ties a create removes, at most.
const EXPIRED_BATCH: usize = 64;

/// A value of `BY_REQUEST`: (uid, fingerprint version, fingerprint digest, expires at).
type Tie = (&'static str, u8, [u8; 32], u64);
type ByRequest<'txn> = redb::Table<'txn, (&'static str, &'static str), Tie>;
type ByRequestExpiry<'txn> = redb::Table<'txn, (u64, &'static str, &'static str), ()>;

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

/// The bookings file. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FileBookings {
    db: Arc<Database>,
    durable: bool,
}

impl FileBookings {
    /// Opens (or creates) the bookings file.
    pub(crate) fn open(path: &Path) -> Result<FileBookings, BookingError> {
        let db = Database::create(path).map_err(|e| BookingError::Storage(e.to_string()))?;
        FileBookings::init(db, true)
    }

    /// Bookings kept in memory only.
    pub(crate) fn in_memory() -> Result<FileBookings, BookingError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| BookingError::Storage(e.to_string()))?;
        FileBookings::init(db, false)
    }

    fn init(db: Database, durable: bool) -> Result<FileBookings, BookingError> {
        let b = FileBookings {
            db: Arc::new(db),
            durable,
        };
        b.write(|txn| {
            txn.open_table(BOOKINGS)?;
            txn.open_table(BY_ACCOUNT)?;
            txn.open_table(BY_REQUEST)?;
            txn.open_table(BY_REQUEST_EXPIRY)?;
            txn.open_table(META)?;
            txn.delete_table(LEGACY_BY_KEY)?;
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

    /// Creates a booking, or returns the one an earlier create of the same request under the
    /// same idempotency key made, if their tie has not expired at `now_ms` (ms since the Unix
    /// epoch). Without a key (`request` is `None`) every call creates a booking.
    pub(crate) fn create(
        &self,
        account: &str,
        request: Option<&KeyedRequest>,
        now_ms: u64,
        new: NewBooking,
    ) -> Result<Booking, BookingError> {
        self.write(|txn| {
            let mut by_request = txn.open_table(BY_REQUEST)?;
            let mut expiry = txn.open_table(BY_REQUEST_EXPIRY)?;
            let mut bookings = txn.open_table(BOOKINGS)?;
            remove_expired(&mut by_request, &mut expiry, now_ms)?;
            if let Some(r) = request {
                let tie = (r.scope.as_str(), r.key.as_str());
                let found = by_request.get(tie)?.map(|v| {
                    let (uid, version, digest, expires_at) = v.value();
                    (uid.to_owned(), (version, digest), expires_at)
                });
                if let Some((uid, fingerprint, expires_at)) = found {
                    if now_ms < expires_at
                        && fingerprint == r.fingerprint
                        && let Some(stored) = bookings.get(uid.as_str())?
                    {
                        let stored: Stored = serde_json::from_slice(stored.value())?;
                        if stored.account == account {
                            return Ok(stored.booking);
                        }
                    }
                    // Expired, or another request: the new booking takes the key over.
                    expiry.remove((expires_at, tie.0, tie.1))?;
                }
            }
            let mut meta = txn.open_table(META)?;
            let n = meta.get("next_id")?.map_or(1, |v| v.value());
            meta.insert("next_id", n + 1)?;
            let digest = blake3::hash(format!("{account}/{n}").as_bytes());
            let uid = uid_of(digest.as_bytes());
            let booking = new_record(uid.clone(), new);
            let stored = serde_json::to_vec(&Stored {
                account: account.to_owned(),
                booking: booking.clone(),
            })?;
            bookings.insert(uid.as_str(), stored.as_slice())?;
            txn.open_table(BY_ACCOUNT)?
                .insert((account, uid.as_str()), ())?;
            if let Some(r) = request {
                let tie = (r.scope.as_str(), r.key.as_str());
                let expires_at = now_ms.saturating_add(r.ttl_ms);
                let (version, digest) = r.fingerprint;
                by_request.insert(tie, (uid.as_str(), version, digest, expires_at))?;
                expiry.insert((expires_at, tie.0, tie.1), ())?;
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
        f: impl Fn(&mut Booking) -> Result<(), BookingError>,
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
            edit(&mut stored, if_match, &f)?;
            let bytes = serde_json::to_vec(&stored)?;
            bookings.insert(uid, bytes.as_slice())?;
            Ok(stored.booking)
        })
    }
}

/// Removes up to [`EXPIRED_BATCH`] ties that expired at or before `now_ms`.
fn remove_expired(
    by_request: &mut ByRequest<'_>,
    expiry: &mut ByRequestExpiry<'_>,
    now_ms: u64,
) -> Result<(), BookingError> {
    let mut due = Vec::new();
    for entry in expiry.iter()?.take(EXPIRED_BATCH) {
        let (k, _) = entry?;
        let (expires_at, scope, key) = k.value();
        if expires_at > now_ms {
            break;
        }
        due.push((expires_at, scope.to_owned(), key.to_owned()));
    }
    for (expires_at, scope, key) in &due {
        let tie = (scope.as_str(), key.as_str());
        expiry.remove((*expires_at, tie.0, tie.1))?;
        let current = by_request.get(tie)?.map(|v| v.value().3);
        if current == Some(*expires_at) {
            by_request.remove(tie)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    fn new_booking(start: &str) -> NewBooking {
        NewBooking {
            event_type_id: "evt_1".to_owned(),
            start: start.to_owned(),
            email: "a@b.com".to_owned(),
        }
    }

    fn keyed(key: &str, fingerprint: u8) -> KeyedRequest {
        KeyedRequest {
            scope: "acct_a".to_owned(),
            key: key.to_owned(),
            fingerprint: (1, [fingerprint; 32]),
            ttl_ms: 1_000,
        }
    }

    fn ties(b: &FileBookings) -> (u64, u64) {
        let txn = b.db.begin_read().unwrap();
        let by_request = txn.open_table(BY_REQUEST).unwrap();
        let expiry = txn.open_table(BY_REQUEST_EXPIRY).unwrap();
        (by_request.len().unwrap(), expiry.len().unwrap())
    }

    #[test]
    fn a_create_is_tied_to_its_key_and_request_until_the_tie_expires() {
        let b = FileBookings::in_memory().unwrap();
        let first = b
            .create("acct_a", Some(&keyed("k", 1)), 0, new_booking("s1"))
            .unwrap();
        // The same request again: the same booking.
        let again = b
            .create("acct_a", Some(&keyed("k", 1)), 999, new_booking("s1"))
            .unwrap();
        assert_eq!(again, first);
        // Another request under the key: a booking of its own, which takes the key over.
        let other = b
            .create("acct_a", Some(&keyed("k", 2)), 10, new_booking("s2"))
            .unwrap();
        assert_ne!(other.uid, first.uid);
        assert_eq!(other.start, "s2");
        let other_again = b
            .create("acct_a", Some(&keyed("k", 2)), 11, new_booking("s2"))
            .unwrap();
        assert_eq!(other_again, other);
        assert_eq!(ties(&b), (1, 1));
        // Once the tie expired, the same request makes a new booking.
        let late = b
            .create("acct_a", Some(&keyed("k", 2)), 1_010, new_booking("s2"))
            .unwrap();
        assert_ne!(late.uid, other.uid);
        // Another scope is another key; no key, no tie.
        let mut elsewhere = keyed("k", 2);
        elsewhere.scope = "acct_b".to_owned();
        let theirs = b
            .create("acct_b", Some(&elsewhere), 1_011, new_booking("s2"))
            .unwrap();
        assert_ne!(theirs.uid, late.uid);
        let unkeyed = b.create("acct_a", None, 1_012, new_booking("s2")).unwrap();
        assert_ne!(unkeyed.uid, late.uid);
        assert_eq!(ties(&b), (2, 2));
        assert_eq!(b.list("acct_a").unwrap().len(), 4);
    }

    #[test]
    fn expired_ties_are_removed_by_later_creates() {
        let b = FileBookings::in_memory().unwrap();
        for i in 0..100 {
            b.create(
                "acct_a",
                Some(&keyed(&format!("k{i}"), 1)),
                i,
                new_booking("s"),
            )
            .unwrap();
        }
        assert_eq!(ties(&b), (100, 100));
        // All expired by 2_000: each create removes a batch and adds its own tie.
        b.create("acct_a", Some(&keyed("n1", 1)), 2_000, new_booking("s"))
            .unwrap();
        assert_eq!(
            ties(&b),
            (101 - EXPIRED_BATCH as u64, 101 - EXPIRED_BATCH as u64)
        );
        b.create("acct_a", None, 2_001, new_booking("s")).unwrap();
        assert_eq!(ties(&b), (1, 1));
    }
}
