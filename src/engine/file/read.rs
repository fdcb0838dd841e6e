//! Reads of a store file's records, shared by the file engine and the read-only inspector.
//!
//! Why: the engine's `get`, `list` and `check` and the [`Inspector`](crate::Inspector) must
//! read a file alike, so an inspector shows what the store would answer. Invariants: every read
//! here is of one read transaction (a consistent snapshot); a record or response that does not
//! decode is an error or a reported problem, never a panic; a storage-engine panic on a damaged
//! page is caught by [`guard_read`].

use std::collections::{HashMap, HashSet};

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use crate::engine::Listed;
use crate::error::{Unavailable, cause};
use crate::format::blob;
use crate::format::record::{
    EXPIRY, ExpiryKey, Hot, META, META_IN_FLIGHT, RECORDS, Record, SCOPE_COUNTS, State,
    stored_response,
};
use crate::format::{point, scope_count, tables};
use crate::poison;
use crate::rules::key::{KeyHash, Scope};
use crate::rules::machine;
use crate::view::{CheckReport, MAX_PROBLEMS, RecordInfo};

/// A record's read-only view from its stored bytes; `None` once expired (C9).
pub(crate) fn record_info(
    hash: &KeyHash,
    record: &[u8],
    response: Option<&[u8]>,
    now: u64,
) -> Result<Option<RecordInfo>, Unavailable> {
    let rec = Record::decode(record).map_err(corrupted)?;
    if machine::expired(&rec.hot, now) {
        return Ok(None);
    }
    view(hash, rec, response).map(Some)
}

/// The view of a decoded record with its expiry entry's value: the stored response once
/// completed, the recovery point before.
fn view(hash: &KeyHash, rec: Record, value: Option<&[u8]>) -> Result<RecordInfo, Unavailable> {
    if rec.hot.state == State::Completed {
        let blob = value.ok_or_else(|| Unavailable::Corrupted {
            detail: format!("completed record {hash:?} has no stored response"),
        })?;
        let response = blob::decode(blob).map_err(corrupted)?;
        return Ok(RecordInfo::of(rec, Some(response)));
    }
    let point = match value.filter(|_| rec.hot.has_point()) {
        Some(bytes) => Some(point::decode(bytes).map_err(|e| Unavailable::Corrupted {
            detail: format!("recovery point {hash:?}: {e}"),
        })?),
        None => None,
    };
    let mut info = RecordInfo::of(rec, None);
    info.recovery_point = point;
    Ok(info)
}

/// The record under `hash` in one snapshot of the file; `None` if there is none or it has
/// expired. Shared by [`Store::get`] and the read-only inspector.
pub(crate) fn read_record(
    txn: &ReadTransaction,
    hash: &KeyHash,
    now: u64,
) -> Result<Option<RecordInfo>, Unavailable> {
    let records = txn.open_table(RECORDS).map_err(io_error)?;
    let Some(g) = records.get(&hash.0).map_err(io_error)? else {
        return Ok(None);
    };
    let blob = match Hot::decode(g.value()) {
        Ok(hot) => {
            let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
            tables::response(&expiry, hash, hot.expires_at, <[u8]>::to_vec).map_err(io_error)?
        }
        // record_info reports the damage.
        Err(_) => None,
    };
    record_info(hash, g.value(), blob.as_deref(), now)
}

/// The live records of one snapshot: see `Store::records`. A record that does not decode
/// ends the listing with its error.
pub(crate) fn records_in(
    txn: &ReadTransaction,
    filter: (Option<&Scope>, Option<State>),
    limit: usize,
    now: u64,
) -> Result<Vec<RecordInfo>, Unavailable> {
    // Each entry is a record or its damage, and damage counts towards `limit`: the first
    // damaged entry is then always within the listing, as if it had ended there.
    records_each(txn, filter, limit, now)?
        .into_iter()
        .map(|r| r.map_err(|(_, e)| e))
        .collect()
}

/// As [`records_in`], but a record that does not decode (or whose response or recovery point
/// does not) is an entry of its own instead of the listing's end: for the resolver hook, which
/// goes on past a damaged key (rule E6). Only a failed read of the file ends it.
pub(crate) fn records_each(
    txn: &ReadTransaction,
    (scope, state): (Option<&Scope>, Option<State>),
    limit: usize,
    now: u64,
) -> Result<Vec<Listed>, Unavailable> {
    let records = txn.open_table(RECORDS).map_err(io_error)?;
    let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
    let mut out = Vec::new();
    for entry in records.iter().map_err(io_error)? {
        if out.len() >= limit {
            break;
        }
        let (hash, bytes) = entry.map_err(io_error)?;
        let hash = KeyHash(*hash.value());
        let damaged = |e: Unavailable| Some(Err((hash, e)));
        let listed = match Hot::decode(bytes.value()) {
            // The fixed part first: records of another state are skipped undecoded.
            Ok(hot) if state.is_some_and(|wanted| hot.state != wanted) => None,
            Err(e) if state.is_some() => damaged(corrupted(e)),
            _ => match Record::decode(bytes.value()) {
                Err(e) => damaged(corrupted(e)),
                Ok(rec)
                    if scope.is_some_and(|s| s.as_str() != rec.scope)
                        || machine::expired(&rec.hot, now) =>
                {
                    None
                }
                Ok(rec) => {
                    let value = if rec.hot.state == State::Completed || rec.hot.has_point() {
                        tables::response(&expiry, &hash, rec.hot.expires_at, <[u8]>::to_vec)
                            .map_err(io_error)?
                    } else {
                        None
                    };
                    Some(view(&hash, rec, value.as_deref()).map_err(|e| (hash, e)))
                }
            },
        };
        out.extend(listed);
    }
    Ok(out)
}

/// Checks the file in `txn`; `counted`: it keeps the live records of each scope (format 3),
/// and they must match the records.
pub(crate) fn check_in(
    txn: &ReadTransaction,
    now: u64,
    counted: bool,
) -> Result<CheckReport, Unavailable> {
    let records = txn.open_table(RECORDS).map_err(io_error)?;
    let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
    let mut report = CheckReport::default();
    let mut problems = 0usize;
    let mut problem = |report: &mut CheckReport, text: String| {
        problems += 1;
        if report.problems.len() < MAX_PROBLEMS {
            report.problems.push(text);
        }
    };
    let mut with_expiry = HashSet::new();
    let mut undecodable = HashSet::new();
    // Counted as the store counts them (C13): by the scope in each record's header.
    let mut live: HashMap<String, u64> = HashMap::new();
    let mut in_flight_records = 0u64;
    for entry in records.iter().map_err(io_error)? {
        let (hash, bytes) = entry.map_err(io_error)?;
        let hash = *hash.value();
        report.records += 1;
        if let Some(scope) = Record::scope_of(bytes.value()) {
            *live.entry(scope.to_owned()).or_default() += 1;
        }
        in_flight_records += u64::from(scope_count::in_flight(bytes.value()));
        let rec = match Record::decode(bytes.value()) {
            Ok(r) => r,
            Err(e) => {
                problem(&mut report, format!("record {}: {e}", hex(&hash)));
                undecodable.insert(hash);
                continue;
            }
        };
        let name = format!("record {}/{}", rec.scope, rec.key);
        if KeyHash::of_raw(rec.scope.as_bytes(), rec.key.as_bytes()).0 != hash {
            problem(
                &mut report,
                format!("{name}: stored under the wrong key hash"),
            );
        }
        if machine::expired(&rec.hot, now) {
            report.expired += 1;
        }
        let ek = ExpiryKey::new(rec.hot.expires_at, &KeyHash(hash));
        let Some(value) = expiry.get(&ek).map_err(io_error)? else {
            problem(&mut report, format!("{name}: no expiry index entry"));
            if rec.hot.state == State::Completed {
                report.completed += 1;
                problem(&mut report, format!("{name}: completed without a response"));
            } else {
                report.in_flight += 1;
            }
            continue;
        };
        with_expiry.insert(ek.0);
        let stored = stored_response(value.value());
        match rec.hot.state {
            State::InFlight | State::OutcomeUnknown => {
                report.in_flight += 1;
                match stored.map(|b| (b.len(), point::decode(b))) {
                    None if rec.hot.has_point() => {
                        problem(&mut report, format!("{name}: recovery point missing"))
                    }
                    Some(_) if !rec.hot.has_point() => problem(
                        &mut report,
                        format!("{name}: not completed, with a stored response"),
                    ),
                    Some((len, _)) if len != rec.hot.response_len as usize => problem(
                        &mut report,
                        format!(
                            "{name}: recovery point is {len} bytes but the record says {}",
                            rec.hot.response_len
                        ),
                    ),
                    Some((_, Err(e))) => problem(&mut report, format!("{name}: {e}")),
                    _ => {}
                }
            }
            State::Completed => {
                report.completed += 1;
                match stored.map(blob::decode) {
                    None => problem(&mut report, format!("{name}: completed without a response")),
                    Some(Ok(r)) if r.status() != rec.hot.status => problem(
                        &mut report,
                        format!(
                            "{name}: response status {} but the record says {}",
                            r.status(),
                            rec.hot.status
                        ),
                    ),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => problem(&mut report, format!("{name}: response: {e}")),
                }
            }
        }
    }
    report.expiry_entries = expiry.len().map_err(io_error)?;
    for entry in expiry.iter().map_err(io_error)? {
        let (ek, value) = entry.map_err(io_error)?;
        let ek = ek.value();
        if let Some(blob) = stored_response(value.value()) {
            report.responses += 1;
            report.response_bytes += blob.len() as u64;
        }
        // A record that does not decode is reported above; its entries are not leftovers.
        if !with_expiry.contains(&ek.0) && !undecodable.contains(&ek.hash().0) {
            problem(
                &mut report,
                format!("expiry entry for {} has no record", hex(&ek.hash().0)),
            );
        }
    }
    match txn.open_table(SCOPE_COUNTS) {
        Ok(counts) if counted => {
            for entry in counts.iter().map_err(io_error)? {
                let (scope, n) = entry.map_err(io_error)?;
                let (scope, n) = (scope.value(), n.value());
                let holds = live.remove(scope).unwrap_or(0);
                if n != holds {
                    problem(
                        &mut report,
                        format!("scope {scope}: counted {n} live records, holds {holds}"),
                    );
                }
            }
            for (scope, holds) in live {
                problem(
                    &mut report,
                    format!("scope {scope}: holds {holds} live records, counted none"),
                );
            }
            let meta = txn.open_table(META).map_err(io_error)?;
            let counted = meta
                .get(META_IN_FLIGHT)
                .map_err(io_error)?
                .map_or(0, |g| g.value());
            if counted != in_flight_records {
                problem(
                    &mut report,
                    format!("counted {counted} records in flight, holds {in_flight_records}"),
                );
            }
        }
        Ok(_) => {}
        Err(redb::TableError::TableDoesNotExist(_)) if !counted => {}
        Err(e) => return Err(io_error(e)),
    }
    if problems > report.problems.len() {
        let more = problems - report.problems.len();
        report
            .problems
            .push(format!("... and {more} more problems"));
    }
    Ok(report)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
/// Runs a read of the file, turning a storage-engine panic on a damaged page into an error.
pub(crate) fn guard_read<T>(f: impl FnOnce() -> Result<T, Unavailable>) -> Result<T, Unavailable> {
    poison::catch(f).unwrap_or_else(|text| {
        Err(Unavailable::Corrupted {
            detail: format!("the storage engine panicked reading the file: {text}"),
        })
    })
}

/// A storage-engine error met while reading, as callers see it.
pub(crate) fn io_error(e: impl Into<redb::Error>) -> Unavailable {
    match e.into() {
        redb::Error::Corrupted(detail) => Unavailable::Corrupted { detail },
        other => Unavailable::Io {
            cause: cause(other),
        },
    }
}

/// Bytes that do not decode, as callers see them.
pub(crate) fn corrupted(e: impl std::fmt::Display) -> Unavailable {
    Unavailable::Corrupted {
        detail: e.to_string(),
    }
}
