//! A record and its expiry entry, which holds the record's response: the one storage invariant,
//! written once.
//!
//! Why: every record has exactly one expiry index entry, keyed by its `expires_at` and its key
//! hash, and that entry's value is the record's stored response (empty while in flight). The
//! writer, the checkpoint, log replay, the open-time release of in-flight records and every
//! read go through these functions, so no caller can move one without the other. Invariant:
//! [`put`] and [`delete`] change a record and its entry together; an entry left behind by a
//! record that no longer decodes is a leftover the compactor removes, never a response served.

use redb::{AccessGuard, ReadableTable, StorageError, Table};

use super::record::{ExpiryKey, ExpiryValue, Hot, RecordBytes, stored_response};
use crate::rules::key::KeyHash;

/// The records table, open for writing.
pub(crate) type Records<'t> = Table<'t, &'static [u8; 32], RecordBytes>;
/// The expiry index, open for writing; each entry holds its record's response.
pub(crate) type Expiry<'t> = Table<'t, ExpiryKey, ExpiryValue>;

/// Sets `hash`'s record to `record` (which expires at `expires_at`) and its expiry entry to
/// hold `response` (none: in flight); the entry of the record replaced goes with it. Hands
/// back the record replaced.
pub(crate) fn put<'r>(
    records: &'r mut Records<'_>,
    expiry: &mut Expiry<'_>,
    hash: &KeyHash,
    (record, expires_at): (&[u8], u64),
    response: Option<&[u8]>,
) -> Result<Option<AccessGuard<'r, RecordBytes>>, StorageError> {
    // The insert hands back the record it replaced: no separate lookup.
    let replaced = records.insert(&hash.0, record)?;
    if let Some(old) = replaced.as_ref().and_then(|g| Hot::decode(g.value()).ok())
        && old.expires_at != expires_at
    {
        expiry.remove(ExpiryKey::new(old.expires_at, hash))?;
    }
    // Written even when the expiry stays: the entry carries the response (or none).
    expiry.insert(ExpiryKey::new(expires_at, hash), response.unwrap_or(&[]))?;
    Ok(replaced)
}

/// Removes `hash`'s record and its expiry entry; hands back the record removed. The entry of a
/// record that does not decode stays, a leftover for the compactor.
pub(crate) fn delete<'r>(
    records: &'r mut Records<'_>,
    expiry: &mut Expiry<'_>,
    hash: &KeyHash,
) -> Result<Option<AccessGuard<'r, RecordBytes>>, StorageError> {
    let removed = records.remove(&hash.0)?;
    if let Some(old) = removed.as_ref().and_then(|g| Hot::decode(g.value()).ok()) {
        expiry.remove(ExpiryKey::new(old.expires_at, hash))?;
    }
    Ok(removed)
}

/// The response stored for `hash`'s record, which expires at `expires_at`, through `decode`;
/// `None` when there is no entry or it holds none (in flight).
pub(crate) fn response<T>(
    expiry: &impl ReadableTable<ExpiryKey, ExpiryValue>,
    hash: &KeyHash,
    expires_at: u64,
    decode: impl FnOnce(&[u8]) -> T,
) -> Result<Option<T>, StorageError> {
    Ok(expiry
        .get(ExpiryKey::new(expires_at, hash))?
        .and_then(|g| stored_response(g.value()).map(decode)))
}
