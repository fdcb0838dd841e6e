//! Opening a file: the storage engine's errors mapped to ours, the tables created or checked,
//! and what a restart must do before any operation runs.
//!
//! Why: opening is where a damaged, foreign or newer file must be told apart from a good one,
//! and where recovery decisions are made (repair, log replay, token skip after a crash,
//! releasing in-flight records on request). Invariants: every engine call here runs under
//! `guard_open`, so a panic of the engine on a damaged file becomes `OpenError::Corrupted`; the
//! commit that opens a file removes its clean-shutdown mark, so a crash in this session is seen
//! by the next open; a file that is not a store (not a redb database, or another program's
//! redb database) is refused as `NotAnIdemstoreFile` before a table is added to it, and only a
//! missing, empty or table-less file becomes a new store. The read-only inspector
//! (`inspect/`) makes the same decisions with the same functions (`foreign_prefix`,
//! `not_a_store`, `plan_log`, `replay_log`), so it refuses what the store refuses and shows
//! what the store would recover.

use std::io::Read;
use std::path::Path;

use redb::{Database, MultimapTableHandle, ReadableTable, Table, TableHandle, WriteTransaction};

use super::checkpoint::{ApplyError, apply_change};
use super::device;
use super::log::{self as wal, Header, Log, LogError, Mark};
use crate::config::{Config, InFlightAtOpen};
use crate::error::{OpenError, cause};
use crate::format::migrate;
use crate::format::record::{
    EXPIRY, ExpiryKey, ExpiryValue, FORMAT_VERSION, Hot, META, META_CLEAN, META_FORMAT,
    META_IN_FLIGHT, META_LOG_ID, META_LOG_POS, META_LOG_SEQ, META_LOG_ZEROED, META_NEXT_TOKEN,
    META_SCOPE_SECRET, OLDEST_MIGRATED, RECORDS, Record, RecordBytes, SCOPE_COUNTS, State,
    TOKEN_SKIP_AFTER_CRASH, open_each_alone,
};
use crate::format::scope_count::{Counts, Deltas};
use crate::format::tables;
use crate::poison;
use crate::rules::key::KeyHash;
use crate::rules::machine;
use crate::storage::StorageBackend;

/// Runs an opening step, turning a storage-engine panic on a damaged file into an error.
pub(crate) fn guard_open<T>(f: impl FnOnce() -> Result<T, OpenError>) -> Result<T, OpenError> {
    poison::catch(f).unwrap_or_else(|text| {
        Err(OpenError::Corrupted {
            detail: format!("the storage engine panicked reading the file: {text}"),
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
pub(crate) fn open_error(e: impl Into<redb::Error>) -> OpenError {
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

/// What opening found and set up.
pub(crate) struct Opened {
    pub(crate) next_token: u64,
    /// Reservations released by `in_flight_at_open` (ended leases of records with a recovery
    /// point included).
    pub(crate) released: u64,
    /// Reservations whose outcome `in_flight_at_open` marked unknown.
    pub(crate) marked_unknown: u64,
    /// The write-ahead log, positioned after its last intact entry.
    pub(crate) log: Option<Log>,
    /// Log entries replayed into the file.
    pub(crate) replayed: u64,
    /// The store's secret (`META_SCOPE_SECRET`).
    pub(crate) secret: [u8; 32],
    /// The live records of every scope, as the file holds them now.
    pub(crate) scopes: Counts,
}

/// The secret kept in `meta`, made and inserted if the file has none yet.
fn load_or_make_secret(meta: &mut Table<&str, u64>) -> Result<[u8; 32], OpenError> {
    let mut words = [0u64; 4];
    let mut found = 0;
    for (word, name) in words.iter_mut().zip(META_SCOPE_SECRET) {
        if let Some(v) = meta.get(name).map_err(open_error)? {
            *word = v.value();
            found += 1;
        }
    }
    if found < META_SCOPE_SECRET.len() {
        let fresh = crate::engine::shared::random_secret()?;
        for ((word, name), chunk) in words
            .iter_mut()
            .zip(META_SCOPE_SECRET)
            .zip(fresh.chunks_exact(8))
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_le_bytes(b);
            meta.insert(name, *word).map_err(open_error)?;
        }
    }
    let mut secret = [0u8; 32];
    for (chunk, word) in secret.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Ok(secret)
}

/// The tables an open works on, in its one write transaction.
struct OpenTables<'t> {
    meta: Table<'t, &'static str, u64>,
    records: Table<'t, &'static [u8; 32], RecordBytes>,
    expiry: Table<'t, ExpiryKey, ExpiryValue>,
    /// What the open's changes add to and take from the live records of each scope.
    deltas: Deltas,
}

impl OpenTables<'_> {
    fn get(&self, k: &str) -> Result<Option<u64>, OpenError> {
        Ok(self.meta.get(k).map_err(open_error)?.map(|g| g.value()))
    }
}

/// Opens a file for a session, in one durable commit that is the session's first checkpoint:
/// the format checked (and an older one migrated), the write-ahead log replayed past the last
/// checkpoint, tokens skipped after a crash, and `in_flight_at_open` applied.
pub(crate) fn init_tables(
    db: &Database,
    config: &Config,
    log_dev: Option<Box<dyn StorageBackend>>,
) -> Result<Opened, OpenError> {
    let txn = db.begin_write().map_err(open_error)?;
    let opened = {
        let format = check_or_migrate(&txn)?;
        // No other table is open while a table is opened or deleted: see `open_each_alone`.
        open_each_alone(&txn).map_err(open_error)?;
        let mut t = OpenTables {
            meta: txn.open_table(META).map_err(open_error)?,
            records: txn.open_table(RECORDS).map_err(open_error)?,
            expiry: txn.open_table(EXPIRY).map_err(open_error)?,
            deltas: Deltas::default(),
        };
        let mut counts = txn.open_table(SCOPE_COUNTS).map_err(open_error)?;
        if format != Some(FORMAT_VERSION) {
            t.meta
                .insert(META_FORMAT, FORMAT_VERSION)
                .map_err(open_error)?;
        }
        let secret = load_or_make_secret(&mut t.meta)?;
        let clean = t
            .meta
            .remove(META_CLEAN)
            .map_err(open_error)?
            .map(|g| g.value())
            == Some(1);
        let recovered = recover_log(&mut t, log_dev, config, clean, format.is_some())?;
        let next_token = skip_tokens(&mut t, recovered.next_token, clean, format.is_some())?;
        let settled = match config.in_flight_at_open {
            InFlightAtOpen::KeepLease => 0,
            policy => settle_in_flight(&mut t, policy)?,
        };
        let (released, marked_unknown) = match config.in_flight_at_open {
            InFlightAtOpen::MarkUnknown => (0, settled),
            _ => (settled, 0),
        };
        t.deltas
            .flush(&mut counts, &mut t.meta)
            .map_err(open_error)?;
        Opened {
            next_token,
            released,
            marked_unknown,
            log: recovered.log,
            replayed: recovered.entries,
            secret,
            scopes: Counts::load(&counts, &t.meta).map_err(open_error)?,
        }
    };
    txn.commit().map_err(open_error)?;
    let mut opened = opened;
    if let Some(l) = opened.log.as_mut() {
        let mark = l.mark();
        l.checkpointed(mark);
    }
    Ok(opened)
}

/// Step 1: the file's format, before anything reads its tables. A file without idemstore's
/// format marker is new only if it holds no table at all; an older format is migrated here, so
/// the log's changes and every later read are in the current layout. Returns the format found
/// (`None`: a new store).
fn check_or_migrate(txn: &WriteTransaction) -> Result<Option<u64>, OpenError> {
    // Before META is opened (which creates it).
    let tables = txn.names().map_err(open_error)?;
    let format = txn
        .open_table(META)
        .map_err(open_error)?
        .get(META_FORMAT)
        .map_err(open_error)?
        .map(|g| g.value());
    match check_format(format)? {
        Format::Current => {}
        Format::None if !tables.is_empty() => return Err(not_a_store(&tables)),
        Format::None => {}
        Format::Older(found) => {
            if found < 2 {
                migrate::v1_to_v2(txn).map_err(open_error)?;
            }
            if found < 3 {
                migrate::v2_to_v3(txn).map_err(open_error)?;
            }
            // From 3 to 4 nothing changes but the version, written by the caller.
        }
    }
    Ok(format)
}

/// What step 2 leaves: the log to append to, and what its replay found.
struct Recovered {
    log: Option<Log>,
    /// Log entries replayed into the file.
    entries: u64,
    /// The token counter as the file and the replayed entries leave it.
    next_token: u64,
}

/// How far a replaying open moves the log's sequence numbers ahead (`Log::skip_sequence`):
/// more than any session appends, so no entry of an earlier session continues a later chain.
const SEQ_SKIP_AT_OPEN: u64 = 1 << 32;

/// Step 2: the write-ahead log. Entries past the file's last checkpoint are replayed into the
/// tables; a log whose entries the file holds (closed cleanly), or none yet, is started anew;
/// without a log device, a file bound to a log is unbound, unless it needs that log to recover.
fn recover_log(
    t: &mut OpenTables<'_>,
    log_dev: Option<Box<dyn StorageBackend>>,
    config: &Config,
    clean: bool,
    existing: bool,
) -> Result<Recovered, OpenError> {
    let bound = t.get(META_LOG_ID)?;
    let mut next_token = t.get(META_NEXT_TOKEN)?.unwrap_or(1);
    let Some(dev) = log_dev else {
        if bound.is_some() {
            if !clean && existing {
                return Err(OpenError::Log {
                    detail: "the file was last used with a write-ahead log and was not closed \
                             cleanly; open it with its log to recover, close it, and it then \
                             opens without one"
                        .into(),
                });
            }
            for k in [META_LOG_ID, META_LOG_SEQ, META_LOG_POS, META_LOG_ZEROED] {
                t.meta.remove(k).map_err(open_error)?;
            }
        }
        return Ok(Recovered {
            log: None,
            entries: 0,
            next_token,
        });
    };
    let header = wal::read_header(&*dev);
    let mut entries = 0;
    let log = match plan_log(bound, header, clean || !existing)? {
        LogPlan::Replay(h) => {
            let from = checkpoint_mark(&t.meta)?;
            let done = replay_log(&mut t.records, &mut t.expiry, &mut t.deltas, dev, h, from)?;
            next_token = next_token.max(done.next_token);
            entries = done.entries;
            let mut log = done.log;
            // Past the replayed chain may lie entries of the last session that a crash left
            // behind a torn one; this session writes over them from the same place, and must
            // not hand its successor a chain that runs on into them (C10, C11). The mark
            // below, committed by the opening transaction, carries the skip.
            log.skip_sequence(SEQ_SKIP_AT_OPEN);
            log
        }
        // No log yet, or a file that may do without its log (closed cleanly, or new) whose log
        // is missing, unreadable or another store's: start a new one.
        LogPlan::Fresh => {
            Log::create(dev, fresh_log_id(), config.log_capacity).map_err(log_error)?
        }
    };
    let mark = log.mark();
    for (k, v) in [
        (META_LOG_ID, log.id()),
        (META_LOG_SEQ, mark.seq),
        (META_LOG_POS, mark.pos),
        (META_LOG_ZEROED, mark.zeroed),
    ] {
        t.meta.insert(k, v).map_err(open_error)?;
    }
    Ok(Recovered {
        log: Some(log),
        entries,
        next_token,
    })
}

/// Step 3: after a crash, tokens issued since the last durable commit may be lost from the
/// file but not from the world (a fenced resource may have seen them): skip past them.
fn skip_tokens(
    t: &mut OpenTables<'_>,
    stored: u64,
    clean: bool,
    existing: bool,
) -> Result<u64, OpenError> {
    let in_file = t.get(META_NEXT_TOKEN)?.unwrap_or(1);
    let next_token = if existing && !clean {
        stored.saturating_add(TOKEN_SKIP_AFTER_CRASH)
    } else {
        stored
    };
    if next_token != in_file {
        t.meta
            .insert(META_NEXT_TOKEN, next_token)
            .map_err(open_error)?;
    }
    Ok(next_token)
}

/// Step 4 (`in_flight_at_open`): releases every in-flight record, or marks its outcome
/// unknown (E6); returns how many. Under `Release`, a record with a recovery point is kept
/// with its lease ended, so the first retry resumes from the point (P3). The count of
/// in-flight records says whether any is in flight, so most opens need no scan.
fn settle_in_flight(t: &mut OpenTables<'_>, policy: InFlightAtOpen) -> Result<u64, OpenError> {
    let in_flight_now = t
        .get(META_IN_FLIGHT)?
        .unwrap_or(0)
        .saturating_add_signed(t.deltas.in_flight());
    if in_flight_now == 0 {
        return Ok(0);
    }
    let mut in_flight = Vec::new();
    for entry in t.records.iter().map_err(open_error)? {
        let (k, v) = entry.map_err(open_error)?;
        if let Ok(hot) = Hot::decode(v.value())
            && hot.state == State::InFlight
        {
            in_flight.push((*k.value(), Record::decode(v.value()).ok()));
        }
    }
    let mut settled = 0;
    for (hash, record) in in_flight {
        let hash = KeyHash(hash);
        let kept = match (policy, record) {
            // A key let go with its point (lease 0) has a known outcome: a failed attempt,
            // resumable. Left as it is.
            (InFlightAtOpen::MarkUnknown, Some(r)) if r.hot.lease_deadline == 0 => continue,
            (InFlightAtOpen::MarkUnknown, Some(r)) => Some(Record {
                hot: machine::outcome_unknown(r.hot),
                ..r
            }),
            // Never freed under this policy: a damaged record stays for `check` to report.
            (InFlightAtOpen::MarkUnknown, None) => continue,
            (_, Some(r)) => {
                machine::released(r.hot, r.hot.token, true).map(|hot| Record { hot, ..r })
            }
            (_, None) => None,
        };
        let point = match &kept {
            Some(r) => tables::response(&t.expiry, &hash, r.hot.expires_at, <[u8]>::to_vec)
                .map_err(open_error)?,
            None => None,
        };
        match kept {
            // Kept for its point (Release), but the point is gone: released after all.
            Some(r) if point.is_none() && r.hot.state == State::InFlight => {
                delete_at_open(t, &hash)?;
            }
            Some(mut record) => {
                if point.is_none() {
                    // A point the record's flag promises but its entry lacks is gone.
                    record.hot.response_len = 0;
                }
                let bytes = record.encode();
                let old = tables::put(
                    &mut t.records,
                    &mut t.expiry,
                    &hash,
                    (&bytes, record.hot.expires_at),
                    point.as_deref(),
                )
                .map_err(open_error)?;
                t.deltas.replaced(old.as_ref().map(|g| g.value()), &bytes);
            }
            None => delete_at_open(t, &hash)?,
        }
        settled += 1;
    }
    Ok(settled)
}

/// Removes `hash`'s record and its expiry entry at open, counting it out.
fn delete_at_open(t: &mut OpenTables<'_>, hash: &KeyHash) -> Result<(), OpenError> {
    if let Some(old) = tables::delete(&mut t.records, &mut t.expiry, hash).map_err(open_error)? {
        t.deltas.removed(old.value());
    }
    Ok(())
}

/// What a file's `format_version` is to this build.
pub(crate) enum Format {
    /// No format marker: a new store, or another program's file.
    None,
    /// [`FORMAT_VERSION`].
    Current,
    /// An older version this build migrates (`OLDEST_MIGRATED` up).
    Older(u64),
}

/// Sorts the format version a file holds, refusing the ones no build wrote and the newer ones.
pub(crate) fn check_format(found: Option<u64>) -> Result<Format, OpenError> {
    match found {
        None => Ok(Format::None),
        Some(FORMAT_VERSION) => Ok(Format::Current),
        Some(0) => Err(OpenError::Corrupted {
            detail: "format version 0 was never written by any release".into(),
        }),
        Some(found) if (OLDEST_MIGRATED..FORMAT_VERSION).contains(&found) => {
            Ok(Format::Older(found))
        }
        Some(found) => Err(OpenError::UnsupportedFormat {
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

/// What to do with the write-ahead log at open.
pub(crate) enum LogPlan {
    /// The log belongs to this file: replay its entries after the file's checkpoint mark.
    Replay(Header),
    /// No log is bound, or the bound one holds nothing the file lacks: a new log may start.
    Fresh,
}

/// Decides from the file's bound log identity (`bound`), the log's header as read, and whether
/// the file may do without its log (`may_start_fresh`: it was closed cleanly, or is new), what
/// recovery does with the log. A file not closed cleanly whose log is missing, unreadable or
/// another store's is refused: completions acknowledged since its last checkpoint may live
/// only in that log.
pub(crate) fn plan_log(
    bound: Option<u64>,
    header: Result<Option<Header>, LogError>,
    may_start_fresh: bool,
) -> Result<LogPlan, OpenError> {
    match (bound, header) {
        (Some(id), Ok(Some(h))) if h.id == id => Ok(LogPlan::Replay(h)),
        (Some(_), found) if !may_start_fresh => {
            let detail = match found {
                Ok(None) => "the log file is missing or empty".to_owned(),
                Ok(Some(_)) => "the log file belongs to another store".to_owned(),
                Err(e) => e.to_string(),
            };
            Err(OpenError::Log { detail })
        }
        (_, Err(LogError::Io(e))) => Err(OpenError::Io(e)),
        _ => Ok(LogPlan::Fresh),
    }
}

/// The checkpoint mark the file's meta table records: where recovery starts reading the log.
pub(crate) fn checkpoint_mark(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<Mark, OpenError> {
    let get = |k: &str| -> Result<Option<u64>, OpenError> {
        Ok(meta.get(k).map_err(open_error)?.map(|g| g.value()))
    };
    Ok(Mark {
        seq: get(META_LOG_SEQ)?.unwrap_or(0),
        pos: get(META_LOG_POS)?.unwrap_or(wal::DATA_START),
        zeroed: get(META_LOG_ZEROED)?.unwrap_or(wal::DATA_START),
    })
}

/// What replaying the log did.
pub(crate) struct Replayed {
    /// The log, positioned after its last intact entry.
    pub(crate) log: Log,
    /// Entries applied.
    pub(crate) entries: u64,
    /// The highest `next_token` the entries carried (0 for none).
    pub(crate) next_token: u64,
}

/// Applies every intact log entry after `from` to the tables, each change a whole record state
/// (`apply_change`, as a checkpoint writes it), stopping at the first entry that is not intact.
/// Recovery at open runs it inside the opening transaction; the read-only inspector runs it on
/// an in-memory copy of the pages it changes (`inspect/`).
pub(crate) fn replay_log(
    records: &mut Table<&'static [u8; 32], RecordBytes>,
    expiry: &mut Table<ExpiryKey, ExpiryValue>,
    deltas: &mut Deltas,
    dev: Box<dyn StorageBackend>,
    header: Header,
    from: Mark,
) -> Result<Replayed, OpenError> {
    let mut entries = 0;
    let mut next_token = 0;
    let mut failure = None;
    let result = Log::recover(dev, header, from, |seq, entry| {
        next_token = next_token.max(entry.next_token);
        entries += 1;
        for (hash, change) in entry.changes {
            if let Err(e) = apply_change(records, expiry, deltas, &KeyHash(hash), change) {
                failure = Some(match e {
                    ApplyError::Storage(e) => open_error(e),
                    ApplyError::BadRecord(detail) => OpenError::Log { detail },
                });
                return Err(LogError::BadEntry {
                    seq,
                    detail: "replay failed".into(),
                });
            }
        }
        Ok(())
    });
    let log = match (result, failure) {
        (_, Some(e)) => return Err(e),
        (r, None) => r.map_err(log_error)?,
    };
    Ok(Replayed {
        log,
        entries,
        next_token,
    })
}

/// Lists tables on both kinds of transaction.
pub(crate) trait ListTables {
    /// The names of every table, multimap tables included.
    fn names(&self) -> Result<Vec<String>, redb::StorageError>;
}

impl ListTables for redb::WriteTransaction {
    fn names(&self) -> Result<Vec<String>, redb::StorageError> {
        let mut names: Vec<String> = self.list_tables()?.map(|t| t.name().to_owned()).collect();
        names.extend(self.list_multimap_tables()?.map(|t| t.name().to_owned()));
        Ok(names)
    }
}

impl ListTables for redb::ReadTransaction {
    fn names(&self) -> Result<Vec<String>, redb::StorageError> {
        let mut names: Vec<String> = self.list_tables()?.map(|t| t.name().to_owned()).collect();
        names.extend(self.list_multimap_tables()?.map(|t| t.name().to_owned()));
        Ok(names)
    }
}

/// The refusal of a redb database that holds tables but no idemstore format marker: another
/// program's database (the demo's bookings file, say), which idemstore must neither read as an
/// empty store nor add its tables to.
pub(crate) fn not_a_store(tables: &[String]) -> OpenError {
    const SHOWN: usize = 5;
    let mut list = tables
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > SHOWN {
        list.push_str(&format!(" and {} more", tables.len() - SHOWN));
    }
    OpenError::NotAnIdemstoreFile {
        detail: if tables.is_empty() {
            "a redb database with no idemstore tables".to_owned()
        } else {
            format!("a redb database without idemstore's format marker (its tables: {list})")
        },
    }
}

/// redb's magic number: the first bytes of every redb database file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// How many leading bytes [`foreign_prefix`] looks at.
pub(crate) const PREFIX_LEN: usize = 512;

/// Tells a file that is clearly not a redb database from its first bytes (`prefix`, up to
/// [`PREFIX_LEN`] of them, of a file that is not empty): `Some(NotAnIdemstoreFile)` when they
/// neither start with redb's magic number (or, for a shorter file, a prefix of it) nor are all
/// zero. A zeroed start is what damage looks like (a lost or zeroed sector of a redb file), so
/// such a file, like one with the magic number and bad content, is left to the storage engine,
/// which reports it as `Corrupted`.
pub(crate) fn foreign_prefix(prefix: &[u8]) -> Option<OpenError> {
    let n = prefix.len().min(REDB_MAGIC.len());
    if prefix.is_empty() || prefix[..n] == REDB_MAGIC[..n] || prefix.iter().all(|&b| b == 0) {
        return None;
    }
    Some(OpenError::NotAnIdemstoreFile {
        detail: "not a redb database (the file does not start with redb's magic number)".into(),
    })
}

/// Refuses, before the storage engine sees it, a non-empty device whose first bytes say it is
/// not a redb database (see [`foreign_prefix`]). A device that cannot be read is left to the
/// engine, which reports the error in its own terms.
pub(crate) fn refuse_foreign(dev: &dyn StorageBackend) -> Result<(), OpenError> {
    let Ok(len) = dev.len() else { return Ok(()) };
    let mut prefix = vec![0u8; usize::try_from(len).unwrap_or(PREFIX_LEN).min(PREFIX_LEN)];
    if prefix.is_empty() || dev.read(0, &mut prefix).is_err() {
        return Ok(());
    }
    foreign_prefix(&prefix).map_or(Ok(()), Err)
}

/// [`refuse_foreign`] for a file by path, which also refuses a path that is not a regular file
/// (a FIFO would hang the open); a file that does not exist or cannot be read is left to the
/// storage engine (which creates the one, and reports the other).
pub(crate) fn refuse_foreign_file(path: &Path) -> Result<(), OpenError> {
    let file = match device::open_regular(path, std::fs::OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Err(OpenError::Io(e)),
        Err(_) => return Ok(()),
    };
    let mut prefix = Vec::with_capacity(PREFIX_LEN);
    if file
        .take(PREFIX_LEN as u64)
        .read_to_end(&mut prefix)
        .is_err()
    {
        return Ok(());
    }
    foreign_prefix(&prefix).map_or(Ok(()), Err)
}

fn log_error(e: LogError) -> OpenError {
    match e {
        LogError::Io(e) => OpenError::Io(e),
        other => OpenError::Log {
            detail: other.to_string(),
        },
    }
}

/// An identity for a new log, so a log from another store (or an older log of this one) is
/// never replayed into this file.
fn fresh_log_id() -> u64 {
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let local = 0u8;
    h.update(&(&local as *const u8 as usize).to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_clearly_not_redb_are_foreign_by_their_first_bytes() {
        let foreign = |p: &[u8]| foreign_prefix(p).is_some();
        // redb's magic number, whole or cut short (a truncated file is damaged, not foreign).
        assert!(!foreign(&REDB_MAGIC));
        assert!(!foreign(b"redb\x1a\x0a\xa9\x0d\x0a and whatever follows"));
        assert!(!foreign(b"re"));
        // A zeroed start: damage, left to the storage engine.
        assert!(!foreign(&[0; 512]));
        assert!(!foreign(b""));
        // Anything else.
        assert!(foreign(b"not a database\n"));
        assert!(foreign(b"x"));
        assert!(foreign(b"redb but not the magic"));
        assert!(foreign(&[0, 0, 0, 1]));
        assert!(matches!(
            foreign_prefix(b"{}"),
            Some(OpenError::NotAnIdemstoreFile { .. })
        ));
    }
}
