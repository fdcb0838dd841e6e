//! The bookings as tables in the store's own file, beside its records; with `--durability
//! memory`, in a redb database in memory.
//!
//! Invariants: every change is one redb write transaction that checks ownership and the
//! expected version (`If-Match`) before writing. A create under an idempotency key has two
//! steps: [`hold_next`] takes the booking's id in the transaction that saves it as the key's
//! recovery point (`IdempotencyContext::save_point_with`), and [`insert_held`] books under it
//! in the transaction that stores the response (`IdempotencyContext::complete_with`,
//! `docs/exactly-once.md`). So after a crash the booking and the stored response exist both or
//! neither, a create cut short between its steps resumes under the id it held, and one request
//! never makes two bookings.

use std::sync::Arc;

use idemstore::redb::{
    self, Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use idemstore::{Store, TransactionError};

use super::{Booking, BookingError, NewBooking, Stored, edit, new_record, uid_of};

/// uid → the stored booking (JSON).
const BOOKINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bookings");
/// (account, uid) → (): an account's bookings.
const BY_ACCOUNT: TableDefinition<(&str, &str), ()> = TableDefinition::new("bookings_by_account");
/// uid → account: booking ids taken by a create's first step and not booked yet.
const HELD: TableDefinition<&str, &str> = TableDefinition::new("bookings_held");
/// "next_id" → the counter that names new bookings.
const META: TableDefinition<&str, u64> = TableDefinition::new("bookings_meta");

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

impl From<TransactionError<BookingError>> for BookingError {
    fn from(e: TransactionError<BookingError>) -> Self {
        match e {
            TransactionError::Aborted(e) => e,
            other => BookingError::Storage(other.to_string()),
        }
    }
}

/// Where the tables are.
#[derive(Clone)]
enum Db {
    /// In the store's file, written through the store's writer.
    Store(Store),
    /// In memory, for `--durability memory`, whose store keeps no database.
    Memory(Arc<Database>),
}

/// The bookings tables. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FileBookings {
    db: Db,
}

impl FileBookings {
    /// The bookings in `store`'s file (the tables are created if missing).
    pub(crate) fn in_store(store: &Store) -> Result<FileBookings, BookingError> {
        FileBookings::init(Db::Store(store.clone()))
    }

    /// Bookings kept in memory only.
    pub(crate) fn in_memory() -> Result<FileBookings, BookingError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| BookingError::Storage(e.to_string()))?;
        FileBookings::init(Db::Memory(Arc::new(db)))
    }

    fn init(db: Db) -> Result<FileBookings, BookingError> {
        let b = FileBookings { db };
        b.write(|txn| {
            txn.open_table(BOOKINGS)?;
            txn.open_table(BY_ACCOUNT)?;
            txn.open_table(HELD)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(b)
    }

    /// The store whose transactions a create can join: `None` in memory.
    pub(crate) fn store(&self) -> Option<&Store> {
        match &self.db {
            Db::Store(store) => Some(store),
            Db::Memory(_) => None,
        }
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, BookingError> + Send + 'static,
    ) -> Result<T, BookingError> {
        match &self.db {
            Db::Store(store) => Ok(store.write(f)?),
            Db::Memory(db) => {
                let mut txn = db.begin_write()?;
                txn.set_durability(redb::Durability::None)?;
                let out = f(&txn)?;
                txn.commit()?;
                Ok(out)
            }
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, BookingError>,
    ) -> Result<T, BookingError> {
        match &self.db {
            Db::Store(store) => Ok(store.read(f)?),
            Db::Memory(db) => f(&db.begin_read()?),
        }
    }

    /// Creates a booking of `account` in a transaction of its own.
    pub(crate) fn create(&self, account: String, new: NewBooking) -> Result<Booking, BookingError> {
        self.write(move |txn| insert(txn, &account, new))
    }

    /// The account's bookings, oldest uid first.
    pub(crate) fn list(&self, account: &str) -> Result<Vec<Booking>, BookingError> {
        self.read(|txn| {
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
        })
    }

    /// One of the account's bookings.
    pub(crate) fn get(&self, account: &str, uid: &str) -> Result<Booking, BookingError> {
        self.read(|txn| {
            let bookings = txn.open_table(BOOKINGS)?;
            let Some(v) = bookings.get(uid)? else {
                return Err(BookingError::NotFound);
            };
            let stored: Stored = serde_json::from_slice(v.value())?;
            if stored.account != account {
                return Err(BookingError::NotFound);
            }
            Ok(stored.booking)
        })
    }

    /// Changes one of the account's bookings with `f`, if `if_match` (when given) names its
    /// current version; the version goes up by one.
    pub(crate) fn update(
        &self,
        account: String,
        uid: String,
        if_match: Option<String>,
        f: impl Fn(&mut Booking) -> Result<(), BookingError> + Send + 'static,
    ) -> Result<Booking, BookingError> {
        self.write(move |txn| {
            let mut bookings = txn.open_table(BOOKINGS)?;
            let mut stored: Stored = match bookings.get(uid.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(BookingError::NotFound),
            };
            if stored.account != account {
                return Err(BookingError::NotFound);
            }
            edit(&mut stored, if_match.as_deref(), &f)?;
            let bytes = serde_json::to_vec(&stored)?;
            bookings.insert(uid.as_str(), bytes.as_slice())?;
            Ok(stored.booking)
        })
    }
}

/// Writes a new booking of `account` in `txn`: a create, in whichever transaction it joins (its
/// own, or the one that stores its response).
pub(crate) fn insert(
    txn: &WriteTransaction,
    account: &str,
    new: NewBooking,
) -> Result<Booking, BookingError> {
    let uid = hold_next(txn, account)?;
    insert_held(txn, account, &uid, new)
}

/// The first step of a create: takes the next booking id and holds it for `account`, so that
/// the second step books under it. The demo saves the id as the create's recovery point in the
/// same transaction: a create cut short between the steps resumes under the same id.
pub(crate) fn hold_next(txn: &WriteTransaction, account: &str) -> Result<String, BookingError> {
    let mut meta = txn.open_table(META)?;
    let n = meta.get("next_id")?.map_or(1, |v| v.value());
    meta.insert("next_id", n + 1)?;
    let uid = uid_of(blake3::hash(format!("{account}/{n}").as_bytes()).as_bytes());
    txn.open_table(HELD)?.insert(uid.as_str(), account)?;
    Ok(uid)
}

/// The second step of a create: books under the id [`hold_next`] held for `account`, and
/// releases the hold. Refuses an id that is not held for `account` (already booked, or
/// another account's).
pub(crate) fn insert_held(
    txn: &WriteTransaction,
    account: &str,
    uid: &str,
    new: NewBooking,
) -> Result<Booking, BookingError> {
    let held = txn
        .open_table(HELD)?
        .remove(uid)?
        .map(|g| g.value().to_owned());
    if held.as_deref() != Some(account) {
        return Err(BookingError::Storage(format!(
            "booking id {uid} is not held for this account"
        )));
    }
    let uid = uid.to_owned();
    let booking = new_record(uid.clone(), new);
    let stored = serde_json::to_vec(&Stored {
        account: account.to_owned(),
        booking: booking.clone(),
    })?;
    txn.open_table(BOOKINGS)?
        .insert(uid.as_str(), stored.as_slice())?;
    txn.open_table(BY_ACCOUNT)?
        .insert((account, uid.as_str()), ())?;
    Ok(booking)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_booking(start: &str) -> NewBooking {
        NewBooking {
            event_type_id: "evt_1".to_owned(),
            start: start.to_owned(),
            email: "a@b.com".to_owned(),
        }
    }

    #[test]
    fn bookings_in_a_stores_file_are_created_listed_edited_and_kept_apart_by_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), idemstore::Config::default()).unwrap();
        let b = FileBookings::in_store(&store).unwrap();
        let first = b.create("acct_a".to_owned(), new_booking("s1")).unwrap();
        let second = b.create("acct_a".to_owned(), new_booking("s2")).unwrap();
        assert_ne!(first.uid, second.uid);
        b.create("acct_b".to_owned(), new_booking("s3")).unwrap();
        assert_eq!(b.list("acct_a").unwrap().len(), 2);
        assert!(matches!(
            b.get("acct_b", &first.uid),
            Err(BookingError::NotFound)
        ));
        let edited = b
            .update(
                "acct_a".to_owned(),
                first.uid.clone(),
                Some(first.etag()),
                |bk| {
                    bk.start = "s9".to_owned();
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(edited.version, 2);
        let stale = b.update(
            "acct_a".to_owned(),
            first.uid.clone(),
            Some(first.etag()),
            |_| Ok(()),
        );
        assert!(matches!(stale, Err(BookingError::Stale { .. })));
        // The store's own records are untouched and sound beside the tables.
        assert!(store.check().unwrap().is_sound());
    }
}
