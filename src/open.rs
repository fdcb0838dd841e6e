//! Opening a file: the storage engine's errors mapped to ours, the tables created or checked,
//! and what a restart must do before any operation runs.
//!
//! Why: opening is where a damaged, foreign or newer file must be told apart from a good one,
//! and where recovery decisions are made (repair, token skip after a crash, releasing in-flight
//! records on request). Invariants: every engine call here runs under `guard_open`, so a panic
//! of the engine on a damaged file becomes `OpenError::Corrupted`; the commit that opens a file
//! removes its clean-shutdown mark, so a crash in this session is seen by the next open.

use std::panic::{AssertUnwindSafe, catch_unwind};

use redb::{Database, ReadableTable};

use crate::config::Config;
use crate::error::{OpenError, cause};
use crate::key::KeyHash;
use crate::record::{
    EXPIRY, FORMAT_VERSION, META, META_CLEAN, META_FORMAT, META_NEXT_TOKEN, RECORDS, RESPONSES,
    State, TOKEN_SKIP_AFTER_CRASH,
};
use crate::shared::panic_text;

/// Runs an opening step, turning a storage-engine panic on a damaged file into an error.
pub(crate) fn guard_open<T>(f: impl FnOnce() -> Result<T, OpenError>) -> Result<T, OpenError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(OpenError::Corrupted {
            detail: format!(
                "the storage engine panicked reading the file: {}",
                panic_text(&*payload)
            ),
        })
    })
}

pub(crate) fn open_db(
    config: &Config,
    create: impl FnOnce(&redb::Builder) -> Result<Database, redb::DatabaseError>,
) -> Result<Database, OpenError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(config.page_cache_bytes);
    if config.verify_on_open {
        builder.set_check_integrity_on_open(true);
    }
    guard_open(|| create(&builder).map_err(open_error))
}

/// Maps a storage-engine error met while opening.
fn open_error(e: impl Into<redb::Error>) -> OpenError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            OpenError::AlreadyOpen
        }
        // The engine reports a bad header or a file shorter than its own header as I/O errors
        // of these kinds: the file is damaged, not unreadable.
        redb::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenError::Corrupted {
                detail: e.to_string(),
            }
        }
        redb::Error::Io(e) => OpenError::Io(e),
        redb::Error::Corrupted(detail) => OpenError::Corrupted { detail },
        redb::Error::RepairAborted => OpenError::Corrupted {
            detail: "repair was aborted".into(),
        },
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)) => OpenError::NotAnIdemstoreFile {
            detail: e.to_string(),
        },
        other => OpenError::Storage {
            cause: cause(other),
        },
    }
}

/// Creates the tables of a new file, checks the format version of an existing one, applies
/// `release_in_flight_on_open`, and returns the next fencing token and how many reservations
/// were released.
pub(crate) fn init_tables(db: &Database, config: &Config) -> Result<(u64, u64), OpenError> {
    let txn = db.begin_write().map_err(open_error)?;
    let next_token;
    let mut released = 0;
    {
        let mut records = txn.open_table(RECORDS).map_err(open_error)?;
        txn.open_table(RESPONSES).map_err(open_error)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(open_error)?;
        let mut meta = txn.open_table(META).map_err(open_error)?;
        let format = meta
            .get(META_FORMAT)
            .map_err(open_error)?
            .map(|g| g.value());
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION)
                    .map_err(open_error)?;
            }
            Some(0) => {
                return Err(OpenError::Corrupted {
                    detail: "format version 0 was never written by any release".into(),
                });
            }
            Some(found) if found > FORMAT_VERSION => {
                return Err(OpenError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Some(_) => {}
        }
        let clean = meta
            .remove(META_CLEAN)
            .map_err(open_error)?
            .map(|g| g.value())
            == Some(1);
        let stored = meta
            .get(META_NEXT_TOKEN)
            .map_err(open_error)?
            .map(|g| g.value())
            .unwrap_or(1);
        // After a crash, tokens issued since the last durable commit may be lost from the
        // file but not from the world (a fenced resource may have seen them): skip past them.
        next_token = if format.is_some() && !clean {
            stored.saturating_add(TOKEN_SKIP_AFTER_CRASH)
        } else {
            stored
        };
        if next_token != stored {
            meta.insert(META_NEXT_TOKEN, next_token)
                .map_err(open_error)?;
        }
        if config.release_in_flight_on_open {
            let mut in_flight = Vec::new();
            for entry in records.iter().map_err(open_error)? {
                let (k, v) = entry.map_err(open_error)?;
                if let Ok(hot) = crate::record::Hot::decode(v.value())
                    && hot.state == State::InFlight
                {
                    in_flight.push((*k.value(), hot.expires_at));
                }
            }
            for (hash, expires_at) in in_flight {
                records.remove(&hash).map_err(open_error)?;
                let ek = crate::record::ExpiryKey::new(expires_at, &KeyHash(hash));
                expiry.remove(ek).map_err(open_error)?;
                released += 1;
            }
        }
    }
    txn.commit().map_err(open_error)?;
    Ok((next_token, released))
}
