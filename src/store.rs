//! The public store: open, `begin`, reservations, reads, purge, compaction, close.
//!
//! Why: this is the one type a service holds. It validates input, answers what the hot index
//! can answer, and hands everything else to the writer thread, waiting on a reply slot
//! (blocking) or awaiting it (async); with `Durability::Memory`, to the memory engine, which
//! answers on the caller's thread. Invariants: no call here writes to the database itself;
//! every mutation goes through the writer's queue (or the memory engine's shard locks), so
//! changes to one key are applied one at a time; every path a caller or a damaged file can
//! reach returns an error instead of panicking (reads of the file run under `catch_unwind`,
//! since the storage engine may panic on a damaged page).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use redb::{Database, ReadTransaction, ReadableDatabase};

use crate::backend::{Backend, Claim, RecordInfo};
use crate::compactor;
use crate::config::{CachePolicy, Config, Durability};
use crate::error::{
    BeginError, CompleteError, KeyError, LeaseError, OpenError, Unavailable, cause,
};
use crate::file_device::FileDevice;
use crate::fingerprint::Fingerprint;
use crate::key::{Key, KeyHash, Scope};
use crate::machine::{self, BeginDecision};
use crate::memory::MemoryEngine;
use crate::open::{guard_open, init_tables, open_db};
use crate::ops::{BeginReply, Completion, Op};
use crate::overlay::Slot;
use crate::record::{EXPIRY, ExpiryKey, RECORDS, Record, State, stored_response};
use crate::reply::{self, Closed, Receiver};
use crate::response::{self, Response};
use crate::route::Route;
use crate::shared::{Shared, panic_text};
use crate::stats::{Stats, bump};
use crate::step::Stepper;
use crate::storage::StorageBackend;
use crate::writer;

/// A record's read-only view from its stored bytes; `None` once expired (C9).
fn record_info(
    hash: &KeyHash,
    record: &[u8],
    response: Option<&[u8]>,
    now: u64,
) -> Result<Option<RecordInfo>, Unavailable> {
    let rec = Record::decode(record).map_err(corrupted)?;
    if machine::expired(&rec.hot, now) {
        return Ok(None);
    }
    let response = if rec.hot.state == State::Completed {
        let blob = response.ok_or_else(|| Unavailable::Corrupted {
            detail: format!("completed record {hash:?} has no stored response"),
        })?;
        Some(response::decode(blob).map_err(corrupted)?)
    } else {
        None
    };
    Ok(Some(RecordInfo::of(rec, response)))
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
    let entry = match crate::record::Hot::decode(g.value()) {
        Ok(hot) => txn
            .open_table(EXPIRY)
            .map_err(io_error)?
            .get(ExpiryKey::new(hot.expires_at, hash))
            .map_err(io_error)?,
        // record_info reports the damage.
        Err(_) => None,
    };
    let blob = entry.as_ref().and_then(|e| stored_response(e.value()));
    record_info(hash, g.value(), blob, now)
}

/// An idempotency store: a redb file, its hot index, its writer and its compactor (with
/// [`Durability::Memory`], the memory engine and its compactor).
///
/// `Store` is cheap to clone and `Send + Sync`; clones share one store. Dropping the last
/// handle (reservations hold one too) or calling [`close`](Store::close) drains the writer,
/// makes everything durable and joins the background threads.
///
/// ```
/// use idemstore::{Begin, Config, Fingerprint, Key, Response, Scope, Store};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("idem.redb");
/// let store = Store::open(&path, Config::default())?;
/// let scope = Scope::new("acct_42")?;
/// let key = Key::new("1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4")?;
/// let body = br#"{"start":"2026-05-20T15:00:00Z"}"#;
/// let fp = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), body);
/// match store.begin(&scope, &key, &fp)? {
///     Begin::Execute(reservation) => {
///         // ... run the operation, then store its response (durable before this returns):
///         let headers = [("content-type", "application/json")];
///         reservation.complete(Response::new(201, headers, r#"{"uid":"b1"}"#))?;
///     }
///     Begin::Replay(response) => println!("replay: {}", response.status()),
///     Begin::InProgress { retry_after } => println!("busy, retry in {retry_after:?}"),
///     Begin::Conflict => println!("key reused for another request"),
/// }
/// // A retry with the same key and body gets the first response back.
/// let Begin::Replay(first) = store.begin(&scope, &key, &fp)? else { unreachable!() };
/// assert_eq!(first.body(), br#"{"uid":"b1"}"#);
/// store.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    ops: Route,
    threads: Mutex<Threads>,
}

struct Threads {
    writer: Option<JoinHandle<()>>,
    compactor: Option<JoinHandle<()>>,
    stop_compactor: Option<crossbeam_channel::Sender<()>>,
}

/// What `begin` tells the caller to do: exactly the four outcomes of rules C2-C5, so a `match`
/// needs no catch-all arm.
#[derive(Debug)]
pub enum Begin {
    /// First attempt (C2): run the operation, then [`complete`](Reservation::complete) the
    /// reservation. Dropping it without completing releases the key (C6).
    Execute(Reservation),
    /// Same key, same request, completed (C3): the stored response, byte for byte.
    Replay(Response),
    /// Same key, same request, still executing elsewhere (C5).
    InProgress {
        /// How long to wait before retrying.
        retry_after: Duration,
    },
    /// Same key, different request (C4).
    Conflict,
}

/// The right to execute an operation for a key, and the duty to complete or release it.
///
/// Dropping a reservation without [`complete`](Reservation::complete) releases the key (C6),
/// so an error, a panic or a cancelled future never leaves a key stuck.
#[derive(Debug)]
#[must_use = "dropping a reservation releases the key at once"]
pub struct Reservation {
    store: Store,
    hash: KeyHash,
    token: u64,
    lease_deadline: u64,
    armed: bool,
}

enum Prepared {
    Ready(Claim),
    Wait(WaitBegin),
}

/// A completion carried out already (memory engine), or queued for the writer.
enum Submitted {
    Done(Result<Completion, CompleteError>),
    Wait(Receiver<Result<Completion, CompleteError>>),
}

/// A `begin` queued at the writer. If it is dropped before the answer is taken (an async
/// caller cancelled), a reservation made for it is released, so no key is left in flight
/// without a holder (C6).
struct WaitBegin {
    rx: Option<Receiver<Result<BeginReply, Unavailable>>>,
    store: Store,
    hash: KeyHash,
}

impl WaitBegin {
    fn wait(mut self) -> Result<Result<BeginReply, Unavailable>, Closed> {
        match self.rx.take() {
            Some(rx) => rx.wait(),
            None => Err(Closed::default()),
        }
    }
}

impl Future for WaitBegin {
    type Output = Result<Result<BeginReply, Unavailable>, Closed>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else {
            return std::task::Poll::Ready(Err(Closed::default()));
        };
        let out = std::pin::Pin::new(rx).poll(cx);
        if out.is_ready() {
            self.rx = None;
        }
        out
    }
}

impl Drop for WaitBegin {
    fn drop(&mut self) {
        let Some(rx) = self.rx.take() else { return };
        let pending = &self.store.inner.shared.detached_releases;
        // Not answered yet: the writer releases what it reserves for us, and `begin` must not
        // trust an in-flight copy in the index until it has.
        let answered = rx.abandon(|| {
            pending.fetch_add(1, Ordering::SeqCst);
        });
        if let Some(Ok(BeginReply::Execute { token, .. })) = answered {
            self.store.send_release(self.hash, token);
        }
    }
}

/// Drops a database that failed to open: after a panic inside the engine its locks are
/// poisoned and dropping it panics too.
fn close_db(db: Database) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durability", &self.inner.shared.config.durability)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path`, creating the file if it does not exist, and starts its
    /// writer and compactor threads. With [`Durability::Memory`] no file is touched.
    ///
    /// An unclean previous shutdown is repaired here; in-flight records keep their lease
    /// (C11) unless `release_in_flight_on_open` is set. A missing or empty file (or a redb
    /// database without any table) becomes a new store; a file that is not a redb database, or
    /// a redb database of another program (tables, but no idemstore format marker), is refused
    /// with [`OpenError::NotAnIdemstoreFile`], and gets no table and no log. To look at a store
    /// without writing it, use [`Inspector`](crate::Inspector).
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Store, OpenError> {
        if config.durability == Durability::Memory {
            return Store::in_memory(config);
        }
        let path = path.as_ref().to_path_buf();
        // A file that is clearly not a redb database is refused as foreign, not as damaged.
        crate::open::refuse_foreign_file(&path)?;
        let db = open_db(&config, |b| b.create(&path))?;
        let mut log_path = path.clone().into_os_string();
        log_path.push(".wal");
        let log_path = std::path::PathBuf::from(log_path);
        let log_existed = log_path.exists();
        let log: Option<Box<dyn StorageBackend>> = if config.write_ahead_log {
            match FileDevice::open(&log_path) {
                Ok(dev) => Some(Box::new(dev)),
                Err(e) => {
                    close_db(db);
                    return Err(OpenError::Io(e));
                }
            }
        } else {
            None
        };
        let started = Store::start(db, config, log);
        if let Err(
            OpenError::NotAnIdemstoreFile { .. }
            | OpenError::UnsupportedFormat { .. }
            | OpenError::NeedsMigration { .. },
        ) = &started
            && !log_existed
        {
            // Refused before the file was bound to the log just created (the file's tables or
            // its format say no before anything is written): leave nothing behind. Other
            // failures may follow a commit that bound them, and keep the log.
            let _ = std::fs::remove_file(&log_path);
        }
        started
    }

    /// Opens the store on a caller-supplied device instead of a file: a fault-injecting one for
    /// crash tests, say. The device is used as it is; the file lock that [`Store::open`] takes
    /// is the device's business. `Durability::Memory` in `config` is treated as `Immediate`.
    /// There is no write-ahead log (every batch is a durable database commit); see
    /// [`open_with_backends`](Store::open_with_backends) for one.
    pub fn open_with_backend(
        backend: impl StorageBackend,
        config: Config,
    ) -> Result<Store, OpenError> {
        Store::open_devices(backend, None, config)
    }

    /// Opens the store on two caller-supplied devices: `database` for the records and `log`
    /// for the write-ahead log (see [`ConfigBuilder::write_ahead_log`](crate::ConfigBuilder::write_ahead_log)). A device that has
    /// never held a log is initialised as one. `Durability::Memory` in `config` is treated as
    /// `Immediate`; `write_ahead_log(false)` in `config` leaves `log` unused.
    pub fn open_with_backends(
        database: impl StorageBackend,
        log: impl StorageBackend,
        config: Config,
    ) -> Result<Store, OpenError> {
        let log: Option<Box<dyn StorageBackend>> = if config.write_ahead_log {
            Some(Box::new(log))
        } else {
            None
        };
        Store::open_devices(database, log, config)
    }

    fn open_devices(
        database: impl StorageBackend,
        log: Option<Box<dyn StorageBackend>>,
        config: Config,
    ) -> Result<Store, OpenError> {
        let config = match config.durability {
            Durability::Memory => Config {
                durability: Durability::Immediate,
                ..config
            },
            _ => config,
        };
        crate::open::refuse_foreign(&database)?;
        let db = open_db(&config, |b| {
            b.create_with_backend(crate::storage::Adapter(database))
        })?;
        Store::start(db, config, log)
    }

    /// Opens a store that keeps everything in memory ([`Durability::Memory`], whatever the
    /// config says): no file, no writer thread; each call is carried out on the caller's
    /// thread by the memory engine. The compactor thread still removes expired records.
    pub fn in_memory(config: Config) -> Result<Store, OpenError> {
        let config = Config {
            durability: Durability::Memory,
            ..config
        };
        let engine = Arc::new(MemoryEngine::new(config.index_capacity));
        let shared = Arc::new(Shared::new(config, None, crate::open::random_secret()?));
        let route = Route::Memory(engine);
        Store::with_threads(shared, route, None)
    }

    fn start(
        db: Database,
        config: Config,
        log: Option<Box<dyn StorageBackend>>,
    ) -> Result<Store, OpenError> {
        let opened = match guard_open(|| init_tables(&db, &config, log)) {
            Ok(v) => v,
            Err(e) => {
                close_db(db);
                return Err(e);
            }
        };
        let db = Arc::new(db);
        let shared = Arc::new(Shared::new(config, Some(Arc::clone(&db)), opened.secret));
        crate::stats::add(&shared.counters.releases, opened.released);
        crate::stats::add(&shared.counters.log_entries_replayed, opened.replayed);
        if let Some(checkpoints) = shared.config.step {
            let route = crate::step::start(
                Arc::clone(&shared),
                db,
                opened.next_token,
                opened.log,
                opened.scopes,
                checkpoints,
            );
            return Store::with_threads(shared, route, None);
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = writer::spawn(
            Arc::clone(&shared),
            db,
            rx,
            opened.next_token,
            opened.log,
            opened.scopes,
        )
        .map_err(OpenError::Spawn)?;
        Store::with_threads(shared, Route::Writer(tx), Some(writer))
    }

    /// Starts the compactor beside `writer` (if any) and wraps it all in a store.
    fn with_threads(
        shared: Arc<Shared>,
        route: Route,
        writer: Option<JoinHandle<()>>,
    ) -> Result<Store, OpenError> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let inner = Inner {
            shared: Arc::clone(&shared),
            ops: route.clone(),
            threads: Mutex::new(Threads {
                writer,
                compactor: None,
                stop_compactor: Some(stop_tx),
            }),
        };
        // From here on, dropping `inner` shuts the writer down cleanly. In step mode the
        // compactor runs only when asked (`compact_now`).
        if shared.config.step.is_none() {
            let compactor =
                compactor::spawn(Arc::clone(&shared), route, stop_rx).map_err(OpenError::Spawn)?;
            inner.threads.lock().compactor = Some(compactor);
        }
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// The store's secret: 32 random bytes kept in the file (drawn for the process with the
    /// memory engine). The HTTP layer keys its digest of credentials with it.
    #[cfg(feature = "http")]
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.inner.shared.secret
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// The writer in step mode, for a store opened in it.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn stepper(&self) -> Option<&Stepper> {
        self.inner.ops.stepper()
    }

    /// The memory engine, for a `Durability::Memory` store.
    pub(crate) fn memory(&self) -> Option<&MemoryEngine> {
        self.inner.ops.memory()
    }

    /// The store clock's reading, in milliseconds since the Unix epoch.
    pub(crate) fn now(&self) -> u64 {
        self.inner.shared.now()
    }

    /// Checks a key against this store's `max_key_len` (C12).
    pub fn key(&self, key: impl AsRef<str>) -> Result<Key, KeyError> {
        Key::with_max_len(key, self.config().max_key_len)
    }

    /// Decides what to do with a request (C1-C5, C8, C9): reserve and execute, replay, wait,
    /// or refuse. Blocks until a reservation is durable (in the default mode); duplicates of a
    /// known key are answered from memory.
    pub fn begin(&self, scope: &Scope, key: &Key, fp: &Fingerprint) -> Result<Begin, BeginError> {
        let (hash, prepared) = self.prepare_begin(scope, key, fp)?;
        let claim = match prepared {
            Prepared::Ready(claim) => claim,
            Prepared::Wait(rx) => self.claim_from_reply(rx.wait())?,
        };
        Ok(self.wrap(hash, claim))
    }

    /// [`begin`](Store::begin) as a future, woken by the writer thread (with
    /// [`Durability::Memory`], ready at once): no thread waits on its behalf, and it works on
    /// any async runtime. Dropping the future before it is done leaves no key in flight (C6).
    pub fn begin_async(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
    ) -> impl Future<Output = Result<Begin, BeginError>> + Send + 'static {
        let store = self.clone();
        // An answer decided already is wrapped now, so that a reservation in it is armed (its
        // drop releases the key) even if the future is dropped without being polled.
        let prepared = self
            .prepare_begin(scope, key, fp)
            .map(|(hash, prepared)| match prepared {
                Prepared::Ready(claim) => Ok(self.wrap(hash, claim)),
                Prepared::Wait(rx) => Err((hash, rx)),
            });
        async move {
            match prepared? {
                Ok(begin) => Ok(begin),
                Err((hash, rx)) => {
                    let claim = store.claim_from_reply(rx.await)?;
                    Ok(store.wrap(hash, claim))
                }
            }
        }
    }

    fn wrap(&self, hash: KeyHash, claim: Claim) -> Begin {
        match claim {
            Claim::Execute {
                token,
                lease_deadline,
            } => Begin::Execute(Reservation {
                store: self.clone(),
                hash,
                token,
                lease_deadline,
                armed: true,
            }),
            Claim::Replay(r) => Begin::Replay(r),
            Claim::InProgress { retry_after } => Begin::InProgress { retry_after },
            Claim::Conflict => Begin::Conflict,
        }
    }

    fn prepare_begin(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
    ) -> Result<(KeyHash, Prepared), BeginError> {
        let shared = &self.inner.shared;
        shared.check()?;
        // A `Key` is valid by construction; only this store's length limit is left to check.
        let max = shared.config.max_key_len;
        if key.len() > max {
            return Err(BeginError::InvalidKey(KeyError::TooLong {
                len: key.len(),
                max,
            }));
        }
        let hash = KeyHash::of(scope, key);
        if let Some(engine) = self.inner.ops.memory() {
            let reply = engine.begin(shared, hash, scope, key, fp)?;
            return Ok((hash, Prepared::Ready(self.claim_of(reply)?)));
        }
        if let Some(claim) = self.fast_begin(&hash, fp)? {
            bump(&shared.counters.answered_from_index);
            return Ok((hash, Prepared::Ready(claim)));
        }
        let (tx, rx) = reply::spinning_channel(shared.config.caller_spin);
        self.submit(Op::Begin {
            hash,
            scope: scope.clone(),
            key: key.clone(),
            fp: *fp,
            reply: tx,
        })?;
        Ok((
            hash,
            Prepared::Wait(WaitBegin {
                rx: Some(rx),
                store: self.clone(),
                hash,
            }),
        ))
    }

    /// Answers from the hot index when it can; `None` sends the request to the writer.
    fn fast_begin(&self, hash: &KeyHash, fp: &Fingerprint) -> Result<Option<Claim>, Unavailable> {
        let shared = &self.inner.shared;
        // Read before the index: if it is zero here, every release sent before this call has
        // already reached the index.
        let releases_pending = shared.detached_releases.load(Ordering::SeqCst) > 0;
        let Some(entry) = shared.index.get(hash) else {
            return Ok(None);
        };
        if releases_pending && entry.hot.state == State::InFlight {
            return Ok(None);
        }
        let counters = &shared.counters;
        match machine::decide_begin(Some(&entry.hot), fp, shared.now()) {
            BeginDecision::Execute { .. } => Ok(None),
            BeginDecision::Conflict => {
                bump(&counters.conflicts);
                Ok(Some(Claim::Conflict))
            }
            BeginDecision::InProgress => {
                bump(&counters.in_progress);
                Ok(Some(Claim::InProgress {
                    retry_after: shared.config.retry_after,
                }))
            }
            BeginDecision::Replay => {
                let response = match entry.response {
                    Some(r) => Some(r),
                    None => {
                        let read = self.read_response(hash, entry.hot.token)?;
                        if let Some(r) = &read
                            && shared.config.response_cache_bytes > 0
                        {
                            // Retries tend to come in runs: offer the response back to the
                            // index (the writer, its only mutator, decides), fire and forget.
                            let _ = self.inner.ops.send(
                                shared,
                                Op::Cache {
                                    hash: *hash,
                                    token: entry.hot.token,
                                    response: r.clone(),
                                },
                            );
                        }
                        read
                    }
                };
                if response.is_some() {
                    bump(&counters.replays);
                }
                Ok(response.map(Claim::Replay))
            }
        }
    }

    fn claim_from_reply(
        &self,
        reply: Result<Result<BeginReply, Unavailable>, Closed>,
    ) -> Result<Claim, BeginError> {
        let shared = &self.inner.shared;
        let reply = reply.map_err(|c| shared.lost_reply(c))??;
        self.claim_of(reply)
    }

    fn claim_of(&self, reply: BeginReply) -> Result<Claim, BeginError> {
        Ok(match reply {
            BeginReply::Execute {
                token,
                lease_deadline,
            } => Claim::Execute {
                token,
                lease_deadline,
            },
            BeginReply::Replay(r) => Claim::Replay(r),
            BeginReply::InProgress => Claim::InProgress {
                retry_after: self.inner.shared.config.retry_after,
            },
            BeginReply::Conflict => Claim::Conflict,
            BeginReply::ScopeFull { limit } => return Err(BeginError::ScopeFull { limit }),
        })
    }

    fn submit(&self, op: Op) -> Result<(), Unavailable> {
        self.inner
            .ops
            .send(&self.inner.shared, op)
            .map_err(|_| self.inner.shared.lost_reply(Closed::default()))
    }

    /// Runs a read transaction, turning a storage-engine panic into an error.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, Unavailable>,
    ) -> Result<T, Unavailable> {
        let shared = &self.inner.shared;
        // Holding the database for the whole read keeps `close` from returning while a read
        // still has the file open.
        guard_read(|| {
            shared.with_db(|db| {
                let txn = db.begin_read().map_err(io_error)?;
                f(&txn)
            })
        })
    }

    /// The newest logged state of `hash` that the file may not hold yet; `None` when the
    /// file has it.
    fn overlaid(&self, hash: &KeyHash) -> Option<Slot> {
        self.inner.shared.overlay.with(hash, |slot| slot.cloned())
    }

    /// The stored response of the completed reservation `token`, if the store still holds it.
    fn read_response(&self, hash: &KeyHash, token: u64) -> Result<Option<Response>, Unavailable> {
        let now = self.inner.shared.now();
        let wanted = |hot: &crate::record::Hot| {
            hot.state == State::Completed && hot.token == token && !machine::expired(hot, now)
        };
        let missing = || Unavailable::Corrupted {
            detail: format!("completed record {hash:?} has no stored response"),
        };
        match self.overlaid(hash) {
            Some(Slot::Deleted) => return Ok(None),
            Some(Slot::Put { record, response }) => {
                let hot = crate::record::Hot::decode(&record).map_err(corrupted)?;
                if !wanted(&hot) {
                    return Ok(None);
                }
                let blob = response.ok_or_else(missing)?;
                return response::decode(&blob).map(Some).map_err(corrupted);
            }
            None => {}
        }
        self.read(|txn| {
            let records = txn.open_table(RECORDS).map_err(io_error)?;
            let Some(g) = records.get(&hash.0).map_err(io_error)? else {
                return Ok(None);
            };
            let hot = crate::record::Hot::decode(g.value()).map_err(corrupted)?;
            if !wanted(&hot) {
                return Ok(None);
            }
            let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
            let entry = expiry
                .get(ExpiryKey::new(hot.expires_at, hash))
                .map_err(io_error)?;
            let blob = entry
                .as_ref()
                .and_then(|g| stored_response(g.value()))
                .ok_or_else(missing)?;
            response::decode(blob).map(Some).map_err(corrupted)
        })
    }

    /// Waits until the database file holds every operation queued so far (with a write-ahead
    /// log, a checkpoint), for reads of the whole file.
    pub(crate) fn settle_into_file(&self) -> Result<(), Unavailable> {
        self.inner.shared.check()?;
        let (tx, rx) = reply::channel();
        self.submit(Op::Checkpoint { reply: tx })?;
        rx.wait().map_err(|c| self.inner.shared.lost_reply(c))?
    }

    /// The record for (scope, key), or `None` if there is none or it has expired (C9).
    pub fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable> {
        self.inner.shared.check()?;
        if self.inner.shared.detached_releases.load(Ordering::SeqCst) > 0 {
            // A dropped reservation's release is queued: let the writer apply it first, so a
            // read after the drop sees the key released (C6).
            let (tx, rx) = reply::channel();
            self.submit(Op::Barrier { reply: tx })?;
            rx.wait().map_err(|c| self.inner.shared.lost_reply(c))??;
        }
        let hash = KeyHash::of(scope, key);
        let now = self.inner.shared.now();
        if let Some(engine) = self.inner.ops.memory() {
            return Ok(engine.get(&hash, now));
        }
        match self.overlaid(&hash) {
            Some(Slot::Deleted) => Ok(None),
            Some(Slot::Put { record, response }) => {
                record_info(&hash, &record, response.as_deref(), now)
            }
            None => self.read(|txn| read_record(txn, &hash, now)),
        }
    }

    /// Removes the record for (scope, key), whatever its state; true if there was one. A
    /// reservation of a purged key can no longer complete.
    pub fn purge(&self, scope: &Scope, key: &Key) -> Result<bool, Unavailable> {
        self.inner.shared.check()?;
        let (tx, rx) = reply::channel();
        self.submit(Op::Purge {
            hash: KeyHash::of(scope, key),
            reply: tx,
        })?;
        rx.wait().map_err(|c| self.inner.shared.lost_reply(c))?
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let entries = match self.inner.ops.memory() {
            Some(engine) => engine.len(),
            None => shared.index.len(),
        };
        shared.counters.snapshot(entries)
    }

    /// Removes every record expired by now, in compactor-sized batches, and returns how many
    /// were removed. The background compactor does the same on its own schedule.
    pub fn compact_now(&self) -> Result<u64, Unavailable> {
        let shared = &self.inner.shared;
        let batch = shared.config.compactor_batch;
        let mut removed = 0;
        loop {
            let report = compactor::expire_once(shared, &self.inner.ops, batch)?;
            removed += report.removed;
            if report.scanned < batch {
                return Ok(removed);
            }
        }
    }

    /// Makes every commit so far durable now (useful with [`Durability::Buffered`]).
    pub fn flush(&self) -> Result<(), Unavailable> {
        self.inner.shared.check()?;
        let (tx, rx) = reply::channel();
        self.submit(Op::Flush { reply: tx })?;
        rx.wait().map_err(|c| self.inner.shared.lost_reply(c))?
    }

    /// Drains the writer, makes everything durable, stops the background threads and closes
    /// the file. Other handles of this store get [`Unavailable::Closed`] afterwards.
    pub fn close(self) -> Result<(), Unavailable> {
        self.inner.shutdown()
    }

    fn complete_token(
        &self,
        hash: KeyHash,
        token: u64,
        response: Response,
        policy: CachePolicy,
    ) -> Result<Submitted, CompleteError> {
        let shared = &self.inner.shared;
        shared.check()?;
        let max = shared.config.max_response_bytes;
        let len = response.encoded_len();
        if let Some(engine) = self.inner.ops.memory() {
            // Nothing is encoded in memory; only the limits that encoding would enforce.
            let refused = match response::encodable(&response) {
                Ok(()) if len <= max => Ok(()),
                Ok(()) => Err(CompleteError::ResponseTooLarge { len, max }),
                Err(e) => Err(CompleteError::InvalidResponse {
                    reason: e.to_string(),
                }),
            };
            if let Err(e) = refused {
                self.send_release(hash, token);
                return Err(e);
            }
            return Ok(Submitted::Done(
                engine.complete(shared, hash, token, response, policy),
            ));
        }
        let refused = match response::encode(&response) {
            Ok(blob) if len <= max => Ok(blob),
            Ok(_) => Err(CompleteError::ResponseTooLarge { len, max }),
            Err(e) => Err(CompleteError::InvalidResponse {
                reason: e.to_string(),
            }),
        };
        let blob = match refused {
            Ok(blob) => blob,
            Err(e) => {
                self.send_release(hash, token);
                return Err(e);
            }
        };
        let (tx, rx) = reply::spinning_channel(self.inner.shared.config.caller_spin);
        self.submit(Op::Complete {
            hash,
            token,
            response,
            policy,
            blob,
            reply: tx,
        })?;
        Ok(Submitted::Wait(rx))
    }

    fn send_release(&self, hash: KeyHash, token: u64) {
        // Fire and forget; counted so that `begin` does not trust the index's copy of an
        // in-flight record until the writer has applied it.
        let pending = &self.inner.shared.detached_releases;
        pending.fetch_add(1, Ordering::SeqCst);
        let sent = self.inner.ops.send(
            &self.inner.shared,
            Op::Release {
                hash,
                token,
                reply: None,
                detached: true,
            },
        );
        if sent.is_err() {
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn lease_op(
        &self,
        op: impl FnOnce(reply::Sender<Result<u64, LeaseError>>) -> Op,
    ) -> Result<Receiver<Result<u64, LeaseError>>, LeaseError> {
        self.inner.shared.check()?;
        let (tx, rx) = reply::channel();
        self.submit(op(tx))?;
        Ok(rx)
    }

    /// Queues a release answered through the returned slot. A `detached` one is counted like
    /// a dropped reservation's, because its caller may stop waiting for the answer.
    fn submit_release(
        &self,
        hash: KeyHash,
        token: u64,
        detached: bool,
    ) -> Result<Receiver<Result<(), LeaseError>>, LeaseError> {
        let shared = &self.inner.shared;
        shared.check()?;
        let (tx, rx) = reply::channel();
        if detached {
            shared.detached_releases.fetch_add(1, Ordering::SeqCst);
        }
        let sent = self.submit(Op::Release {
            hash,
            token,
            reply: Some(tx),
            detached,
        });
        if sent.is_err() && detached {
            shared.detached_releases.fetch_sub(1, Ordering::SeqCst);
        }
        sent?;
        Ok(rx)
    }

    fn release_token(&self, hash: KeyHash, token: u64) -> Result<(), LeaseError> {
        let rx = self.submit_release(hash, token, false)?;
        rx.wait().map_err(|c| self.inner.shared.lost_reply(c))?
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), Unavailable> {
        let mut threads = self.threads.lock();
        drop(threads.stop_compactor.take());
        let current = std::thread::current().id();
        if threads
            .writer
            .as_ref()
            .is_some_and(|w| w.thread().id() == current)
        {
            // The last handle was dropped on the writer thread itself (an async task it woke
            // and whose executor then dropped it). It cannot wait for itself, nor for the
            // compactor, which may be waiting for it: ask it to stop after the batch in hand.
            // It makes everything durable and closes the file as it ends.
            threads.compactor.take();
            threads.writer.take();
            let _ = self.ops.send(&self.shared, Op::Shutdown);
            self.shared.mark_closed();
            return Ok(());
        }
        if let Some(c) = threads.compactor.take() {
            let _ = c.join();
        }
        let writer = threads.writer.take();
        // In step mode the writer runs on this thread: the flush and the shutdown below run it.
        if writer.is_none() && !self.ops.stepper().is_some_and(Stepper::running) {
            // The memory engine: nothing to drain or make durable; once closed, wait for the
            // calls already inside it, so none succeeds after `close` returns.
            self.shared.mark_closed();
            if let Some(engine) = self.ops.memory() {
                engine.close();
            }
            return self.shared.check_poison();
        }
        let flushed = match self.shared.check_poison() {
            Err(e) => Err(e),
            Ok(()) => {
                let (tx, rx) = reply::channel();
                match self.ops.send(&self.shared, Op::Flush { reply: tx }) {
                    Ok(()) => rx.wait().unwrap_or_else(|c| Err(self.shared.lost_reply(c))),
                    Err(_) => Err(self.shared.lost_reply(Closed::default())),
                }
            }
        };
        let _ = self.ops.send(&self.shared, Op::Shutdown);
        let joined = writer.is_none_or(|w| w.join().is_ok());
        self.shared.mark_closed();
        if !joined {
            return Err(self.shared.poisoned_error());
        }
        // The writer's last commit (the clean-shutdown mark) may have failed after the flush.
        flushed.and_then(|()| self.shared.check_poison())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Reservation {
    /// The fencing token (C8): strictly greater than every token handed out before by this
    /// store, so a resource guarded by it can refuse a stale holder.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// When the lease runs out, in milliseconds since the Unix epoch. After it, another
    /// `begin` may take the key over; [`renew`](Reservation::renew) extends it.
    pub fn lease_deadline(&self) -> u64 {
        self.lease_deadline
    }

    /// Stores the operation's response and returns once it is durable (C10, in the default
    /// mode). A status the cache policy does not keep releases the key instead (C6, C7).
    /// A stale holder (C8) gets [`CompleteError::Fenced`] and nothing is stored.
    pub fn complete(mut self, response: Response) -> Result<Completion, CompleteError> {
        self.armed = false;
        let policy = self.store.inner.shared.config.cache_policy;
        match self
            .store
            .complete_token(self.hash, self.token, response, policy)?
        {
            Submitted::Done(done) => done,
            Submitted::Wait(rx) => rx
                .wait()
                .map_err(|c| self.store.inner.shared.lost_reply(c))?,
        }
    }

    /// [`complete`](Reservation::complete) as a runtime-agnostic future.
    pub fn complete_async(
        self,
        response: Response,
    ) -> impl Future<Output = Result<Completion, CompleteError>> + Send + 'static {
        let policy = self.store.inner.shared.config.cache_policy;
        self.complete_async_keeping(response, policy)
    }

    /// [`complete_async`](Reservation::complete_async) under `policy` instead of the store's:
    /// the HTTP layer's contract decides what it stores.
    pub(crate) fn complete_async_keeping(
        mut self,
        response: Response,
        policy: CachePolicy,
    ) -> impl Future<Output = Result<Completion, CompleteError>> + Send + 'static {
        self.armed = false;
        let store = self.store.clone();
        let submitted = self
            .store
            .complete_token(self.hash, self.token, response, policy);
        async move {
            match submitted? {
                Submitted::Done(done) => done,
                Submitted::Wait(rx) => rx.await.map_err(|c| store.inner.shared.lost_reply(c))?,
            }
        }
    }

    /// Extends the lease to a full lease period from now (C8).
    pub fn renew(&mut self) -> Result<(), LeaseError> {
        let (hash, token) = (self.hash, self.token);
        let rx = self
            .store
            .lease_op(|reply| Op::Renew { hash, token, reply })?;
        self.lease_deadline = rx
            .wait()
            .map_err(|c| self.store.inner.shared.lost_reply(c))??;
        Ok(())
    }

    /// [`renew`](Reservation::renew) as a runtime-agnostic future.
    pub fn renew_async(&mut self) -> impl Future<Output = Result<(), LeaseError>> + Send + '_ {
        let (hash, token) = (self.hash, self.token);
        let submitted = self
            .store
            .lease_op(|reply| Op::Renew { hash, token, reply });
        async move {
            let rx = submitted?;
            self.lease_deadline = rx
                .await
                .map_err(|c| self.store.inner.shared.lost_reply(c))??;
            Ok(())
        }
    }

    /// Gives the reservation up without releasing the key: the key stays in flight until its
    /// lease ends, and a retry meanwhile is answered `InProgress` (C5); after the lease, a
    /// `begin` takes it over (C8).
    ///
    /// For an operation that may have had its effect but whose response cannot be stored (its
    /// caller was cancelled halfway): releasing would let a retry run it a second time at once,
    /// while abandoning holds retries off for the lease, long enough for an effect still under
    /// way to land or for an operator to look.
    ///
    /// ```
    /// use idemstore::{Begin, Config, Fingerprint, Scope, Store};
    /// let store = Store::in_memory(Config::default())?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("k-1")?);
    /// let fp = Fingerprint::of_bytes(b"charge 10");
    /// let Begin::Execute(reservation) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// reservation.abandon();
    /// assert!(matches!(store.begin(&scope, &key, &fp)?, Begin::InProgress { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn abandon(mut self) {
        self.armed = false;
    }

    /// Releases the key now, so the next attempt executes (C6).
    pub fn release(mut self) -> Result<(), LeaseError> {
        self.armed = false;
        self.store.release_token(self.hash, self.token)
    }

    /// [`release`](Reservation::release) as a runtime-agnostic future. The release is queued
    /// when this is called, so dropping the future does not keep the key.
    pub fn release_async(
        mut self,
    ) -> impl Future<Output = Result<(), LeaseError>> + Send + 'static {
        self.armed = false;
        let store = self.store.clone();
        // Counted as detached: dropping this future must not keep the key, as dropping the
        // reservation would not.
        let submitted = self.store.submit_release(self.hash, self.token, true);
        async move {
            let rx = submitted?;
            rx.await.map_err(|c| store.inner.shared.lost_reply(c))?
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.store.send_release(self.hash, self.token);
        }
    }
}

impl Backend for Store {
    fn claim(&self, scope: &Scope, key: &Key, fp: &Fingerprint) -> Result<Claim, BeginError> {
        let (_, prepared) = self.prepare_begin(scope, key, fp)?;
        match prepared {
            Prepared::Ready(claim) => Ok(claim),
            Prepared::Wait(rx) => self.claim_from_reply(rx.wait()),
        }
    }

    fn complete(
        &self,
        scope: &Scope,
        key: &Key,
        token: u64,
        response: Response,
    ) -> Result<Completion, CompleteError> {
        let policy = self.inner.shared.config.cache_policy;
        match self.complete_token(KeyHash::of(scope, key), token, response, policy)? {
            Submitted::Done(done) => done,
            Submitted::Wait(rx) => rx.wait().map_err(|c| self.inner.shared.lost_reply(c))?,
        }
    }

    fn renew(&self, scope: &Scope, key: &Key, token: u64) -> Result<u64, LeaseError> {
        let hash = KeyHash::of(scope, key);
        let rx = self.lease_op(|reply| Op::Renew { hash, token, reply })?;
        rx.wait().map_err(|c| self.inner.shared.lost_reply(c))?
    }

    fn release(&self, scope: &Scope, key: &Key, token: u64) -> Result<(), LeaseError> {
        self.release_token(KeyHash::of(scope, key), token)
    }

    fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable> {
        Store::get(self, scope, key)
    }

    fn purge(&self, scope: &Scope, key: &Key) -> Result<bool, Unavailable> {
        Store::purge(self, scope, key)
    }
}

/// Runs a read of the file, turning a storage-engine panic on a damaged page into an error.
pub(crate) fn guard_read<T>(f: impl FnOnce() -> Result<T, Unavailable>) -> Result<T, Unavailable> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(Unavailable::Corrupted {
            detail: format!(
                "the storage engine panicked reading the file: {}",
                panic_text(&*payload)
            ),
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
