//! Where a batch reads and writes record states: the tables of its write transaction (without
//! a log), or the overlay over a snapshot of the file (with one).
//!
//! Why: the writer decides every operation the same way whether or not the store has a log;
//! this view hides which. Invariant: every read includes the batch's own earlier writes, and
//! every write keeps a record and its expiry entry together (`format::tables`).

use super::*;

/// Where a batch reads and writes record states.
pub(super) enum Tables<'t> {
    /// Without a log: the tables of the batch's write transaction.
    File {
        records: Table<'t, &'static [u8; 32], RecordBytes>,
        expiry: Table<'t, ExpiryKey, ExpiryValue>,
    },
    /// With a log: the overlay over a snapshot of the file; writes go to the overlay (and the
    /// batch's log entry), and reach the file at a checkpoint.
    Logged {
        overlay: &'t Overlay,
        records: ReadOnlyTable<&'static [u8; 32], RecordBytes>,
        expiry: ReadOnlyTable<ExpiryKey, ExpiryValue>,
    },
}

impl Tables<'_> {
    /// The record under `hash`, through `decode`.
    pub(super) fn record<T>(
        &self,
        hash: &KeyHash,
        decode: fn(&[u8]) -> T,
    ) -> Result<Option<T>, redb::Error> {
        match self {
            Tables::File { records, .. } => Ok(records.get(&hash.0)?.map(|g| decode(g.value()))),
            Tables::Logged {
                overlay, records, ..
            } => {
                let hit = overlay.with_own(hash, |slot| {
                    slot.map(|s| match s {
                        Change::Put { record, .. } => Some(decode(record)),
                        Change::Delete => None,
                    })
                });
                match hit {
                    Some(found) => Ok(found),
                    None => Ok(records.get(&hash.0)?.map(|g| decode(g.value()))),
                }
            }
        }
    }

    /// The stored response of the record under `hash` whose expiry is `expires_at`, through
    /// `decode`.
    pub(super) fn response<T>(
        &self,
        hash: &KeyHash,
        expires_at: u64,
        decode: fn(&[u8]) -> T,
    ) -> Result<Option<T>, redb::Error> {
        match self {
            Tables::File { expiry, .. } => Ok(tables::response(expiry, hash, expires_at, decode)?),
            Tables::Logged {
                overlay, expiry, ..
            } => {
                let hit = overlay.with_own(hash, |slot| {
                    slot.map(|s| match s {
                        Change::Put { response, .. } => response.as_deref().map(decode),
                        Change::Delete => None,
                    })
                });
                match hit {
                    Some(found) => Ok(found),
                    None => Ok(tables::response(expiry, hash, expires_at, decode)?),
                }
            }
        }
    }

    /// Stores `bytes` (the record `hot` encoded) under `hash`, with `response` as its stored
    /// response (none: the record is in flight and keeps none).
    pub(super) fn put(
        &mut self,
        hash: &KeyHash,
        (bytes, hot): (&[u8], &Hot),
        response: Option<&[u8]>,
    ) -> Result<(), redb::Error> {
        match self {
            Tables::File { records, expiry } => {
                tables::put(records, expiry, hash, (bytes, hot.expires_at), response)?;
            }
            Tables::Logged { overlay, .. } => overlay.set(
                *hash,
                Change::Put {
                    record: bytes.into(),
                    response: response.map(Into::into),
                },
                Some(hot.expires_at),
            ),
        }
        Ok(())
    }

    /// Removes a record and its expiry entry, which holds its response.
    pub(super) fn delete(&mut self, hash: &KeyHash) -> Result<(), redb::Error> {
        match self {
            Tables::File { records, expiry } => {
                tables::delete(records, expiry, hash)?;
            }
            Tables::Logged { overlay, .. } => overlay.set(*hash, Change::Delete, None),
        }
        Ok(())
    }

    /// Up to `limit` expiry entries due by `now`, oldest first. Without a log they come from
    /// the expiry index as it stands (leftovers included, which the caller removes); with one,
    /// from the overlay's records and from the file's index entries of keys the overlay does
    /// not hold, each matching its record's current expiry. With a log, the file's index
    /// still lists the keys removed since the last checkpoint, so the scan of the file resumes
    /// after `cursor`, the last entry an earlier pass looked at (reset by each checkpoint):
    /// otherwise every pass would walk again over the entries the passes before it removed.
    pub(super) fn due(
        &self,
        now: u64,
        limit: usize,
        cursor: &mut Option<ExpiryKey>,
    ) -> Result<Vec<ExpiryKey>, redb::Error> {
        let mut due = Vec::new();
        match self {
            Tables::File { expiry, .. } => {
                for entry in expiry.range(..=ExpiryKey::upper(now))?.take(limit) {
                    due.push(entry?.0.value());
                }
            }
            Tables::Logged {
                overlay,
                records,
                expiry,
                ..
            } => {
                if overlay.may_expire_by(now) {
                    overlay.each(|hash, slot| {
                        if let Change::Put { record, .. } = slot
                            && let Ok(hot) = Hot::decode(record)
                            && hot.expires_at <= now
                        {
                            due.push(ExpiryKey::new(hot.expires_at, hash));
                        }
                    });
                    due.sort_by_key(|k| k.0);
                    due.truncate(limit);
                }
                let upper = ExpiryKey::upper(now);
                if cursor.is_some_and(|c| c.0 >= upper.0) {
                    return Ok(due);
                }
                let from = match *cursor {
                    Some(c) => Bound::Excluded(c),
                    None => Bound::Unbounded,
                };
                // Entries whose record moved on are skipped, within a bounded scan, so a run
                // of leftovers cannot make a pass unbounded.
                let budget = limit.saturating_mul(4);
                for entry in expiry.range((from, Bound::Included(upper)))?.take(budget) {
                    if due.len() >= limit {
                        break;
                    }
                    let ek = entry?.0.value();
                    *cursor = Some(ek);
                    let hash = ek.hash();
                    if overlay.contains(&hash) {
                        continue;
                    }
                    let current = records
                        .get(&hash.0)?
                        .and_then(|g| Hot::decode(g.value()).ok());
                    if current.is_some_and(|h| h.expires_at == ek.expires_at()) {
                        due.push(ek);
                    }
                }
            }
        }
        Ok(due)
    }

    /// Removes an expiry index entry that was found due (without a log; with one, the
    /// checkpoint keeps the index in step with the records).
    pub(super) fn drop_expiry(&mut self, ek: ExpiryKey) -> Result<(), redb::Error> {
        if let Tables::File { expiry, .. } = self {
            expiry.remove(ek)?;
        }
        Ok(())
    }
}
