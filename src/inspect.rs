//! Reading a store for operators: listing records, checking the file's integrity, and the
//! read-only [`Inspector`].
//!
//! Why: the operator tool (`idemstore list`, `get`, `stats`, `check`) needs to see every
//! record, which the request path never does, and must be able to look at a file without
//! changing it: after a crash, on a file it may not write, or on a file that may not be a store
//! at all. Invariants: each pass reads one read transaction (a consistent snapshot) and never
//! panics on a damaged record, it reports it; [`Store::records`] and [`Store::check`]
//! checkpoint first, so the file holds every change made before the call; an [`Inspector`]
//! writes nothing (its devices are in `read_only.rs`) and applies the write-ahead log in memory
//! with the same reader and the same change application as recovery, so it shows what
//! [`Store::open`] would show, without the writes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle,
};

use crate::backend::RecordInfo;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{OpenError, Unavailable};
use crate::key::{Key, KeyHash, Scope};
use crate::machine;
use crate::open::{
    Format, ListTables, LogPlan, PREFIX_LEN, check_format, checkpoint_mark, foreign_prefix,
    guard_open, not_a_store, open_db, open_error, plan_log, replay_log,
};
use crate::read_only::{self, BaseFile, CopyOnWrite, ReadOnlyLog, SharedLocks};
use crate::record::{
    EXPIRY, ExpiryKey, FORMAT_VERSION, META, META_CLEAN, META_FORMAT, META_IN_FLIGHT, META_LOG_ID,
    RECORDS, Record, SCOPE_COUNTS, State, open_each_alone, stored_response,
};
use crate::response;
use crate::scope_count::{self, Deltas};
use crate::storage::StorageBackend;
use crate::store::{Store, corrupted, guard_read, io_error, read_record};
use crate::wal::{self, LogError};

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
        self.read(|txn| records_in(txn, scope, limit, now))
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
        self.read(|txn| check_in(txn, now, true))
    }
}

/// The live records of one snapshot: see [`Store::records`].
fn records_in(
    txn: &ReadTransaction,
    scope: Option<&Scope>,
    limit: usize,
    now: u64,
) -> Result<Vec<RecordInfo>, Unavailable> {
    let records = txn.open_table(RECORDS).map_err(io_error)?;
    let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
    let mut out = Vec::new();
    for entry in records.iter().map_err(io_error)? {
        if out.len() >= limit {
            break;
        }
        let (hash, bytes) = entry.map_err(io_error)?;
        let rec = Record::decode(bytes.value()).map_err(corrupted)?;
        if scope.is_some_and(|s| s.as_str() != rec.scope) || machine::expired(&rec.hot, now) {
            continue;
        }
        let response = if rec.hot.state == State::Completed {
            let ek = ExpiryKey::new(rec.hot.expires_at, &KeyHash(*hash.value()));
            let entry = expiry.get(ek).map_err(io_error)?;
            let blob = entry
                .as_ref()
                .and_then(|g| stored_response(g.value()))
                .ok_or_else(|| Unavailable::Corrupted {
                    detail: format!("completed record {}/{} has no response", rec.scope, rec.key),
                })?;
            Some(response::decode(blob).map_err(corrupted)?)
        } else {
            None
        };
        out.push(RecordInfo::of(rec, response));
    }
    Ok(out)
}

/// A store file opened for reading only: its records as they stand after every acknowledged
/// change, without writing anything.
///
/// This is what the operator subcommands `idemstore stats`, `list`, `get` and `check` use. An
/// inspector never creates, truncates, migrates or writes the file or its write-ahead log
/// (`<file>.wal`), creates no file beside it, and needs no write permission: it works on a
/// file of mode 0444 or on a read-only mount. It still shows what [`Store::open`] would:
///
/// * a file that was not closed cleanly is repaired, and the log's entries past the file's
///   last checkpoint are applied, exactly as recovery at open does it (the same log reader, the
///   same change by change application), but into pages held in memory. The inspector holds
///   the pages that the repair, the replay and a `verify_on_open` check change: for the replay,
///   about one `checkpoint_interval` of changes in practice, and never more than the file's
///   size plus the log's;
/// * a file bound to a log that is missing, unreadable or another store's, when it was not
///   closed cleanly, is refused with [`OpenError::Log`], as [`Store::open`] refuses it.
///
/// It refuses, with an [`OpenError`]:
///
/// * an empty file, a file that is not a redb database, and a redb database without
///   idemstore's format marker (another program's database): `NotAnIdemstoreFile`;
/// * a format 1 file, which only a migration (a write) makes readable: `NeedsMigration`; open
///   it once with [`Store::open`], which migrates it;
/// * a newer format: `UnsupportedFormat`; a damaged file: `Corrupted`;
/// * a file another process (or this one) has open as a [`Store`]: `AlreadyOpen`. While an
///   inspector is open it holds the storage engine's shared reader locks on the file, so a
///   [`Store::open`] of it fails with `AlreadyOpen` in turn; inspectors share the file.
///
/// Of the [`Config`], the inspector uses the clock (which records count as expired),
/// `page_cache_bytes` and `verify_on_open` (check every page's checksum at open, in memory).
///
/// ```
/// use idemstore::{Begin, Config, Fingerprint, Inspector, Key, Response, Scope, Store};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("idem.redb");
/// let store = Store::open(&path, Config::default())?;
/// let (scope, key) = (Scope::new("acct_42")?, Key::new("k1")?);
/// let fp = Fingerprint::of_bytes(b"request");
/// let Begin::Execute(r) = store.begin(&scope, &key, &fp)? else { unreachable!() };
/// r.complete(Response::new(201, [("content-type", "text/plain")], "done"))?;
/// store.close()?;
///
/// let before = std::fs::read(&path)?;
/// let inspector = Inspector::open(&path, Config::default())?;
/// let record = inspector.get(&scope, &key)?.expect("the record");
/// assert_eq!(record.response.map(|r| r.status()), Some(201));
/// assert_eq!(inspector.records(None, 100)?.len(), 1);
/// assert!(inspector.check()?.is_sound());
/// drop(inspector);
/// assert_eq!(std::fs::read(&path)?, before, "nothing was written");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Inspector {
    // Declared before `_file`, so dropped first: the database and its reads end before the
    // file (and with it the locks) is closed.
    db: Database,
    /// The file, opened read-only; it holds the shared locks until the inspector is dropped.
    _file: BaseFile,
    clock: Arc<dyn Clock>,
    log_entries: u64,
    /// The file's format version: 2 keeps no counts, so `check` does not look for them.
    format: u64,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("log_entries", &self.log_entries)
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// Opens the store file at `path` for reading only; see [`Inspector`] for what it refuses
    /// and what it reads. A missing file is [`OpenError::Io`] (nothing is created).
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Inspector, OpenError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(OpenError::Io)?;
        let len = file.metadata().map_err(OpenError::Io)?.len();
        if len == 0 {
            return Err(OpenError::NotAnIdemstoreFile {
                detail: "the file is empty (Store::open would make a new store of it)".into(),
            });
        }
        let base = read_only::open_base(file).map_err(OpenError::Io)?;
        let mut prefix = vec![0u8; usize::try_from(len).unwrap_or(PREFIX_LEN).min(PREFIX_LEN)];
        redb::StorageBackend::read(&*base, 0, &mut prefix).map_err(OpenError::Io)?;
        if let Some(e) = foreign_prefix(&prefix) {
            return Err(e);
        }
        take_reader_locks(&base)?;
        let db = open_db(&config, |b| {
            b.create_with_backend(CopyOnWrite::new(Arc::clone(&base), len))
        })?;
        match guard_open(|| prepare(&db, path)) {
            Ok((log_entries, format)) => Ok(Inspector {
                db,
                _file: base,
                clock: Arc::clone(&config.clock),
                log_entries,
                format,
            }),
            Err(e) => {
                // After a panic inside the engine its locks are poisoned and dropping the
                // database panics too.
                let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
                Err(e)
            }
        }
    }

    /// How many entries of the write-ahead log were applied in memory: changes acknowledged
    /// through the log that the file does not hold yet (0 for a file closed cleanly).
    pub fn log_entries(&self) -> u64 {
        self.log_entries
    }

    /// The live (not expired) records, by key hash, those of `scope` only if given, at most
    /// `limit`, as [`Store::records`] lists them. A record that does not decode is an error.
    pub fn records(
        &self,
        scope: Option<&Scope>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        let now = self.clock.now_millis();
        self.read(|txn| records_in(txn, scope, limit, now))
    }

    /// The record for (scope, key), or `None` if there is none or it has expired, as
    /// [`Store::get`] answers it.
    pub fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable> {
        let now = self.clock.now_millis();
        let hash = KeyHash::of(scope, key);
        self.read(|txn| read_record(txn, &hash, now))
    }

    /// Checks that the records, their responses and the expiry index agree, as
    /// [`Store::check`] does. With `verify_on_open` in the config, the open has checked every
    /// page's checksum too.
    pub fn check(&self) -> Result<CheckReport, Unavailable> {
        let now = self.clock.now_millis();
        let counted = self.format >= COUNTS_FROM;
        self.read(|txn| check_in(txn, now, counted))
    }

    /// Runs a read transaction, turning a storage-engine panic on a damaged page into an error.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, Unavailable>,
    ) -> Result<T, Unavailable> {
        guard_read(|| {
            let txn = self.db.begin_read().map_err(io_error)?;
            f(&txn)
        })
    }
}

/// Takes the storage engine's reader locks on the file, through its own read-only open (see
/// [`SharedLocks`]). The open itself may fail after the locks are taken, for a file that needs
/// a repair (which a read-only open does not make) or that it cannot read: the writable open
/// on the in-memory copy then decides. It fails before them when a writer holds the file.
fn take_reader_locks(base: &BaseFile) -> Result<(), OpenError> {
    let locks = SharedLocks::new(Arc::clone(base));
    let failed = locks.failed_flag();
    let opened = guard_open(|| {
        redb::Builder::new()
            // Nothing is read through this handle but the header.
            .set_cache_size(1 << 20)
            .open_read_only_with_backend(locks)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen
                | redb::DatabaseError::LockProtocolMismatch => OpenError::AlreadyOpen,
                other => open_error(other),
            })
    });
    match opened {
        Ok(reader) => {
            // Its locks stay with the file: see `SharedLocks`.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(reader)));
            Ok(())
        }
        Err(OpenError::AlreadyOpen) => Err(OpenError::AlreadyOpen),
        // A lock call failed: the file may be unlocked, so reading it could race a writer.
        Err(e) if failed.load(Ordering::SeqCst) => Err(e),
        Err(_) => Ok(()),
    }
}

/// The first format that keeps the live records of each scope.
const COUNTS_FROM: u64 = 3;

/// Checks that the opened database is an idemstore store of a format this build reads as it
/// is (2 or 3), and applies its write-ahead log (if it needs it) in one transaction on the
/// in-memory copy, counts included. Returns the number of log entries applied and the format.
fn prepare(db: &Database, path: &Path) -> Result<(u64, u64), OpenError> {
    let read = db.begin_read().map_err(open_error)?;
    let tables = read.names().map_err(open_error)?;
    if !tables.iter().any(|t| t == META.name()) {
        return Err(not_a_store(&tables));
    }
    let meta = read.open_table(META).map_err(open_error)?;
    let get = |k: &str| -> Result<Option<u64>, OpenError> {
        Ok(meta.get(k).map_err(open_error)?.map(|g| g.value()))
    };
    let format = match check_format(get(META_FORMAT)?)? {
        Format::Current => FORMAT_VERSION,
        // Format 2 differs from 3 only by the counts, which inspecting does not need.
        Format::Older(found) if found >= 2 => found,
        Format::Older(found) => {
            return Err(OpenError::NeedsMigration {
                found,
                current: FORMAT_VERSION,
            });
        }
        Format::None => return Err(not_a_store(&tables)),
    };
    for name in [RECORDS.name(), EXPIRY.name()] {
        if !tables.iter().any(|t| t == name) {
            return Err(OpenError::NotAnIdemstoreFile {
                detail: format!("the table {name} is missing"),
            });
        }
    }
    // Opened once, so that tables of other types are refused here, as at open.
    drop(read.open_table(RECORDS).map_err(open_error)?);
    drop(read.open_table(EXPIRY).map_err(open_error)?);
    let Some(bound) = get(META_LOG_ID)? else {
        // No log: the file holds every acknowledged change.
        return Ok((0, format));
    };
    let clean = get(META_CLEAN)? == Some(1);
    let mut name = path.as_os_str().to_owned();
    name.push(".wal");
    let (dev, header): (Option<Box<dyn StorageBackend>>, _) =
        match ReadOnlyLog::open(Path::new(&name)) {
            Ok(Some(dev)) => {
                let header = wal::read_header(&dev);
                (Some(Box::new(dev)), header)
            }
            Ok(None) => (None, Ok(None)),
            Err(e) => (None, Err(LogError::Io(e))),
        };
    let (LogPlan::Replay(header), Some(dev)) = (plan_log(Some(bound), header, clean)?, dev) else {
        // Closed cleanly: the log holds nothing the file lacks.
        return Ok((0, format));
    };
    let from = checkpoint_mark(&meta)?;
    drop(meta);
    drop(read);
    let txn = db.begin_write().map_err(open_error)?;
    let entries = {
        open_each_alone(&txn).map_err(open_error)?;
        let mut records = txn.open_table(RECORDS).map_err(open_error)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(open_error)?;
        let mut deltas = Deltas::default();
        let entries =
            replay_log(&mut records, &mut expiry, &mut deltas, dev, header, from)?.entries;
        // The counts move with the records, as recovery moves them (format 2 keeps none).
        if format >= COUNTS_FROM {
            let mut counts = txn.open_table(SCOPE_COUNTS).map_err(open_error)?;
            let mut meta = txn.open_table(META).map_err(open_error)?;
            deltas.flush(&mut counts, &mut meta).map_err(open_error)?;
        }
        entries
    };
    // Into the in-memory copy: the file never sees this commit.
    txn.commit().map_err(open_error)?;
    Ok((entries, format))
}

/// Checks the file in `txn`; `counted`: it keeps the live records of each scope (format 3),
/// and they must match the records.
fn check_in(txn: &ReadTransaction, now: u64, counted: bool) -> Result<CheckReport, Unavailable> {
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
