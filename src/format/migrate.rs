//! Migrating a format 1 or 2 file to format 3, at open (format 3 is format 4 as it stands).
//!
//! Why: format 2 keeps each completed record's response in its expiry index entry instead of a
//! table keyed by key hash (`docs/format.md`), so files written by earlier builds are rewritten
//! once, when this build first opens them. Invariants: the migration runs inside the open's
//! write transaction, so a crash leaves the file at format 1 and the next open migrates again;
//! it drops no bytes a format 1 reader could serve: every record stays as it was, and each gets
//! its expiry entry with its response. A record that does not decode (whose response no reader
//! serves) keeps its old entries, empty, so that reading it still reports the damage; leftover
//! expiry entries of records that moved on or left, and responses without a readable record,
//! are not carried over.

use redb::{ReadableTable, Table, WriteTransaction};

use crate::format::record::{
    EXPIRY, ExpiryKey, ExpiryValue, Hot, META, META_IN_FLIGHT, RECORDS, SCOPE_COUNTS, State,
    V1_EXPIRY, V1_RESPONSES, open_each_alone,
};
use crate::format::scope_count::Deltas;
use crate::rules::key::KeyHash;

/// Rewrites the format 1 tables of `txn`'s file as format 2 and deletes the old ones. The
/// caller writes the new format version in the same transaction.
pub(crate) fn v1_to_v2(txn: &WriteTransaction) -> Result<(), redb::Error> {
    // Each table alone first: see `open_each_alone`.
    open_each_alone(txn)?;
    drop(txn.open_table(V1_EXPIRY)?);
    drop(txn.open_table(V1_RESPONSES)?);
    {
        let records = txn.open_table(RECORDS)?;
        let old_expiry = txn.open_table(V1_EXPIRY)?;
        let responses = txn.open_table(V1_RESPONSES)?;
        let mut expiry = txn.open_table(EXPIRY)?;
        for entry in records.iter()? {
            let (hash, bytes) = entry?;
            let hash = *hash.value();
            match Hot::decode(bytes.value()) {
                Ok(hot) => {
                    // Only a completed record keeps a response.
                    let response = match hot.state {
                        State::Completed => responses.get(&hash)?,
                        State::InFlight | State::OutcomeUnknown => None,
                    };
                    let kept = response.as_ref().map_or(&[][..], |g| g.value());
                    let ek = ExpiryKey::new(hot.expires_at, &KeyHash(hash));
                    expiry.insert(ek, kept)?;
                }
                Err(_) => carry_damaged(&old_expiry, &mut expiry, hash)?,
            }
        }
    }
    txn.delete_table(V1_EXPIRY)?;
    txn.delete_table(V1_RESPONSES)?;
    Ok(())
}

/// Builds format 3's counts from the records (`scope_count.rs`): each scope's live records, and
/// how many records are in flight. The caller writes the new format version in the same
/// transaction; a crash leaves the file at its old version, and the next open counts again.
pub(crate) fn v2_to_v3(txn: &WriteTransaction) -> Result<(), redb::Error> {
    open_each_alone(txn)?;
    let records = txn.open_table(RECORDS)?;
    let mut counts = txn.open_table(SCOPE_COUNTS)?;
    let mut meta = txn.open_table(META)?;
    let mut deltas = Deltas::default();
    for entry in records.iter()? {
        deltas.replaced(None, entry?.1.value());
    }
    // Counted from nothing: whatever the tables held is replaced.
    counts.retain(|_, _| false)?;
    meta.remove(META_IN_FLIGHT)?;
    deltas.flush(&mut counts, &mut meta)?;
    Ok(())
}

/// Carries the old expiry entries of a record that does not decode (its expiry time is
/// unknown otherwise), without its response: reading such a record reports the damage and
/// never serves a response, so the bytes would only take space.
fn carry_damaged(
    old_expiry: &Table<ExpiryKey, ()>,
    expiry: &mut Table<ExpiryKey, ExpiryValue>,
    hash: [u8; 32],
) -> Result<(), redb::Error> {
    // The old index is ordered by time, not by key: finding a key's entries means a scan,
    // which only damaged records (rare, reported on every read) pay for.
    for entry in old_expiry.iter()? {
        let ek = entry?.0.value();
        if ek.hash().0 == hash {
            expiry.insert(ek, &[][..])?;
        }
    }
    Ok(())
}
