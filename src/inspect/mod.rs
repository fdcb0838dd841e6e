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

pub(crate) mod read_only;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, ReadTransaction, ReadableDatabase, TableHandle};

#[cfg(doc)]
use crate::Store;
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::file::log::{self as wal, LogError};
use crate::engine::file::open::{
    Format, ListTables, LogPlan, PREFIX_LEN, check_format, checkpoint_mark, foreign_prefix,
    guard_open, not_a_store, open_db, open_error, plan_log, replay_log,
};
use crate::engine::file::read::{check_in, guard_read, io_error, read_record, records_in};
use crate::error::{OpenError, Unavailable};
use crate::format::record::{
    EXPIRY, FORMAT_VERSION, META, META_CLEAN, META_FORMAT, META_LOG_ID, RECORDS, SCOPE_COUNTS,
    open_each_alone,
};
use crate::format::scope_count::Deltas;
use crate::poison::drop_quietly;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::state::State;
use crate::storage::StorageBackend;
use crate::view::{CheckReport, RecordInfo};
use read_only::{BaseFile, CopyOnWrite, ReadOnlyLog, SharedLocks};

/// A store file opened for reading only: its records as they stand after every acknowledged
/// change, without writing anything.
///
/// This is what the operator subcommands `idemstore stats`, `list`, `get`, `export` and
/// `check` use on a file. An inspector never creates, truncates, migrates or writes the file or
/// its write-ahead log (`<file>.wal`), creates no file beside it, and needs no write
/// permission: it works on a file of mode 0444 or on a read-only mount. It still shows what
/// [`Store::open`] would:
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
/// * a path that is not a regular file (a FIFO, a device, a socket, a directory): `Io`, of
///   kind `InvalidInput`, naming what it is. The open never blocks (a FIFO would otherwise wait
///   for a writer), and a log that is not a regular file is never read;
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
        // Never blocks, and refuses what is not a regular file (a FIFO, a device).
        let file = read_only::open_regular(path).map_err(OpenError::Io)?;
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
        // The log is beside the file itself, where the store writes it: a path that is a
        // symbolic link is resolved first.
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        match guard_open(|| prepare(&db, &resolved)) {
            Ok((log_entries, format)) => Ok(Inspector {
                db,
                _file: base,
                clock: Arc::clone(&config.clock),
                log_entries,
                format,
            }),
            Err(e) => {
                drop_quietly(db);
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
        self.records_in_state(scope, None, limit)
    }

    /// [`records`](Inspector::records) in `state` only, if given, as
    /// [`Store::records_in_state`] lists them.
    pub fn records_in_state(
        &self,
        scope: Option<&Scope>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        let now = self.clock.now_millis();
        self.read(|txn| records_in(txn, (scope, state), limit, now))
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
            drop_quietly(reader);
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
/// `path` is the file's own (resolved) path: its log is `<path>.wal`.
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
        // Format 2 differs from 3 only by the counts, which inspecting does not need; a
        // format 3 file is a format 4 file without outcome-unknown records or recovery points.
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
