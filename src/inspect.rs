//! Reading the whole file for operators: listing records and checking the file's integrity.
//!
//! Why: the operator tool (`idemstore list`, `stats`, `check`) needs to see every record, which
//! the request path never does. Invariant: these are read-only passes in one read transaction
//! (a consistent snapshot) taken after a checkpoint, so the file holds every change made
//! before the call; they never panic on a damaged record, they report it.

use std::collections::HashSet;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

use crate::backend::RecordInfo;
use crate::error::Unavailable;
use crate::key::Scope;
use crate::machine;
use crate::record::{EXPIRY, ExpiryKey, RECORDS, Record, State, stored_response};
use crate::response;
use crate::store::{Store, corrupted, io_error};

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Records in the file, expired ones included.
    pub records: u64,
    /// Of them, in flight.
    pub in_flight: u64,
    /// Of them, completed.
    pub completed: u64,
    /// Of them, expired and not removed yet.
    pub expired: u64,
    /// Stored response blobs.
    pub responses: u64,
    /// Bytes of the stored response blobs.
    pub response_bytes: u64,
    /// Entries in the expiry index. With `Durability::Memory`, entries in the engine's expiry
    /// heaps, which may hold leftovers of records that moved on or left (about four entries a
    /// record at most, plus 1,024 a shard).
    pub expiry_entries: u64,
    /// Every inconsistency found, one line each; empty for a sound file.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The most problems a report lists; more are counted in the last line.
pub(crate) const MAX_PROBLEMS: usize = 100;

impl Store {
    /// The live (not expired) records, in the file's order (by key hash), those of `scope`
    /// only if given, at most `limit`. A record that does not decode is an error. With the
    /// write-ahead log this first checkpoints, so the file holds every operation queued
    /// before the call.
    pub fn records(
        &self,
        scope: Option<&Scope>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        self.settle_into_file()?;
        let now = self.now();
        if let Some(engine) = self.memory() {
            return Ok(engine.records(scope, limit, now));
        }
        self.read(|txn| {
            let records = txn.open_table(RECORDS).map_err(io_error)?;
            let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
            let mut out = Vec::new();
            for entry in records.iter().map_err(io_error)? {
                if out.len() >= limit {
                    break;
                }
                let (hash, bytes) = entry.map_err(io_error)?;
                let rec = Record::decode(bytes.value()).map_err(corrupted)?;
                if scope.is_some_and(|s| s.as_str() != rec.scope) || machine::expired(&rec.hot, now)
                {
                    continue;
                }
                let response = if rec.hot.state == State::Completed {
                    let ek =
                        ExpiryKey::new(rec.hot.expires_at, &crate::key::KeyHash(*hash.value()));
                    let entry = expiry.get(ek).map_err(io_error)?;
                    let blob = entry
                        .as_ref()
                        .and_then(|g| stored_response(g.value()))
                        .ok_or_else(|| Unavailable::Corrupted {
                            detail: format!(
                                "completed record {}/{} has no response",
                                rec.scope, rec.key
                            ),
                        })?;
                    Some(response::decode(blob).map_err(corrupted)?)
                } else {
                    None
                };
                out.push(RecordInfo::of(rec, response));
            }
            Ok(out)
        })
    }

    /// Reads every record and expiry entry and checks that they agree: each record decodes,
    /// each record has its expiry entry, each completed record's entry holds a response that
    /// decodes with the record's status (an in-flight record's holds none), and no expiry entry
    /// is left without its record. Open the store with `verify_on_open(true)` to check every page's checksum too.
    /// With the write-ahead log this first checkpoints, so the whole store is checked.
    pub fn check(&self) -> Result<CheckReport, Unavailable> {
        self.settle_into_file()?;
        let now = self.now();
        if let Some(engine) = self.memory() {
            return Ok(engine.check(now));
        }
        self.read(|txn| check_in(txn, now))
    }
}

fn check_in(txn: &ReadTransaction, now: u64) -> Result<CheckReport, Unavailable> {
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
    for entry in records.iter().map_err(io_error)? {
        let (hash, bytes) = entry.map_err(io_error)?;
        let hash = *hash.value();
        report.records += 1;
        let rec = match Record::decode(bytes.value()) {
            Ok(r) => r,
            Err(e) => {
                problem(&mut report, format!("record {}: {e}", hex(&hash)));
                undecodable.insert(hash);
                continue;
            }
        };
        let name = format!("record {}/{}", rec.scope, rec.key);
        if crate::key::KeyHash::of_raw(rec.scope.as_bytes(), rec.key.as_bytes()).0 != hash {
            problem(
                &mut report,
                format!("{name}: stored under the wrong key hash"),
            );
        }
        if machine::expired(&rec.hot, now) {
            report.expired += 1;
        }
        let ek = ExpiryKey::new(rec.hot.expires_at, &crate::key::KeyHash(hash));
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
            State::InFlight => {
                report.in_flight += 1;
                if stored.is_some() {
                    problem(
                        &mut report,
                        format!("{name}: in flight with a stored response"),
                    );
                }
            }
            State::Completed => {
                report.completed += 1;
                match stored.map(response::decode) {
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
