//! The file engine: records in a redb file, behind a write-ahead log, a group-commit writer
//! thread, the log's overlay, a checkpoint thread and a lock-free hot index.
//!
//! Why: this is the embedded store's engine. A call that the hot index can answer (a replay, a
//! conflict, a key in progress) is answered on the caller's thread without a disk read; every
//! change goes to the writer's queue and is answered once its batch is durable. Data flows one
//! way: [`FileEngine`] → `writer` → `log` → `overlay` → `checkpoint` → redb; `open` runs
//! recovery before the writer starts.
//!
//! Invariants:
//! - nothing here but the writer (and the checkpoint thread it drives) writes the database, so
//!   changes to one key are applied one at a time;
//! - every read of the file runs under [`read::guard_read`], since the storage engine may panic
//!   on a damaged page;
//! - while a release sent without waiting (`detached_releases`) is queued, the index's copy of
//!   an in-flight record may be about to go: `begin` and `get` let the writer decide instead.

mod budget;
pub(crate) mod change;
pub(crate) mod checkpoint;
pub(crate) mod device;
mod index;
pub(crate) mod log;
pub(crate) mod op;
pub(crate) mod open;
pub(crate) mod overlay;
pub(crate) mod read;
pub(crate) mod step;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadTransaction, ReadableDatabase};

use crate::backend::{Claim, Completion};
use crate::config::{Config, Terms};
use crate::engine::work;
use crate::engine::{Answer, Engine, ExpireReport, Ran, Release, Shared, Work};
use crate::error::{BeginError, CompleteError, LeaseError, OpenError, Unavailable};
use crate::format::blob;
use crate::format::record::{EXPIRY, Hot, RECORDS, State};
use crate::format::tables;
use crate::poison::drop_quietly;
use crate::reply::{self, Closed};
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::machine::{self, BeginDecision};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::stats::{Stats, bump};
use crate::storage::StorageBackend;
use crate::view::{CheckReport, RecordInfo};

use change::Change;
use checkpoint::Checkpointer;
use device::FileDevice;
use index::HotIndex;
use op::Op;
use open::{guard_open, init_tables, open_db};
use overlay::Overlay;
use read::{corrupted, guard_read, io_error, read_record, record_info};
use step::Stepper;
use writer::Writer;

/// What the writer, the readers and the engine's handle share.
pub(crate) struct FileState {
    pub(crate) index: HotIndex,
    /// Logged changes not in the database file yet (empty without a log).
    pub(crate) overlay: Overlay,
    /// The database, for readers; taken out at close so the file is released.
    db: RwLock<Option<Arc<Database>>>,
    /// Releases sent without waiting that the writer has not applied yet (see the module
    /// invariants).
    pub(crate) detached_releases: AtomicU64,
    /// Held by the writer from a direct batch's first commit to its durable one
    /// (`writer/direct.rs`); every read transaction begins under it, so none sees a commit
    /// that is not durable yet.
    pub(crate) visible: RwLock<()>,
    /// Live records and, of them, those in flight, as of the last committed batch: set by the
    /// writer, read by `stats`.
    live_records: AtomicU64,
    in_flight_records: AtomicU64,
    /// The database file, for its size in `stats` (`None`: caller-supplied devices).
    path: Option<PathBuf>,
}

impl FileState {
    /// Writer thread: the committed counts (live, in flight).
    pub(crate) fn publish_counts(&self, (live, in_flight): (u64, u64)) {
        self.live_records.store(live, Ordering::Relaxed);
        self.in_flight_records.store(in_flight, Ordering::Relaxed);
    }

    /// Runs `f` on the database, unless the engine is closed; `close` waits for it.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Unavailable>,
    ) -> Result<T, Unavailable> {
        let db = self.db.read();
        f(db.as_ref().ok_or(Unavailable::Closed)?)
    }

    /// Counts a release sent without waiting; `settle` undoes it if it was never queued.
    fn count_detached(&self) {
        self.detached_releases.fetch_add(1, Ordering::SeqCst);
    }

    fn settle_detached(&self) {
        self.detached_releases.fetch_sub(1, Ordering::SeqCst);
    }

    fn releases_pending(&self) -> bool {
        self.detached_releases.load(Ordering::SeqCst) > 0
    }
}

/// The file engine's handle. See the module documentation.
pub(crate) struct FileEngine {
    shared: Arc<Shared>,
    state: Arc<FileState>,
    tx: Sender<Op>,
    runner: Runner,
}

/// Where the writer runs.
enum Runner {
    /// On its own thread; taken at close.
    Thread(Mutex<Option<JoinHandle<()>>>),
    /// Step mode (`step.rs`): on the threads that wait for its answers.
    Step(Arc<Stepper>),
}

/// The log's path: beside the file itself. A path that is a symbolic link is resolved, so
/// that the log is found where it is, and none is made beside the link.
fn log_path_of(path: &Path) -> PathBuf {
    let mut log_path = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .into_os_string();
    log_path.push(".wal");
    PathBuf::from(log_path)
}

impl FileEngine {
    /// Opens the store file at `path` (and its log, `<path>.wal`, with a write-ahead log),
    /// creating them if missing.
    pub(crate) fn open(path: &Path, config: Config) -> Result<FileEngine, OpenError> {
        // A file that is clearly not a redb database is refused as foreign, not as damaged.
        open::refuse_foreign_file(path)?;
        if config.write_ahead_log {
            // A log path that is not a regular file is refused before the file is created;
            // the log's own open checks again what it opens.
            device::refuse_irregular(&log_path_of(path)).map_err(OpenError::Io)?;
        }
        let db = open_db(&config, |b| b.create(path))?;
        let log_path = log_path_of(path);
        let log_existed = log_path.exists();
        let log: Option<Box<dyn StorageBackend>> = if config.write_ahead_log {
            match FileDevice::open(&log_path) {
                Ok(dev) => Some(Box::new(dev)),
                Err(e) => {
                    drop_quietly(db);
                    return Err(OpenError::Io(e));
                }
            }
        } else {
            None
        };
        let started = FileEngine::start(db, config, log, Some(path.to_path_buf()));
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

    /// Opens the store on caller-supplied devices; `log` is `None` without a write-ahead log.
    pub(crate) fn open_devices(
        database: impl StorageBackend,
        log: Option<Box<dyn StorageBackend>>,
        config: Config,
    ) -> Result<FileEngine, OpenError> {
        open::refuse_foreign(&database)?;
        let db = open_db(&config, |b| {
            b.create_with_backend(crate::storage::Adapter(database))
        })?;
        FileEngine::start(db, config, log, None)
    }

    /// Recovers the file and starts the writer.
    fn start(
        db: Database,
        config: Config,
        log: Option<Box<dyn StorageBackend>>,
        path: Option<PathBuf>,
    ) -> Result<FileEngine, OpenError> {
        let opened = match guard_open(|| init_tables(&db, &config, log)) {
            Ok(v) => v,
            Err(e) => {
                drop_quietly(db);
                return Err(e);
            }
        };
        let db = Arc::new(db);
        let state = Arc::new(FileState {
            index: HotIndex::with_capacity(config.index_capacity),
            overlay: Overlay::default(),
            db: RwLock::new(Some(Arc::clone(&db))),
            detached_releases: AtomicU64::new(0),
            visible: RwLock::new(()),
            live_records: AtomicU64::new(0),
            in_flight_records: AtomicU64::new(0),
            path,
        });
        state.publish_counts(opened.scopes.totals());
        let shared = Arc::new(Shared::new(config, opened.secret));
        crate::stats::add(&shared.counters.releases, opened.released);
        crate::stats::add(&shared.counters.marked_unknown, opened.marked_unknown);
        crate::stats::add(&shared.counters.log_entries_replayed, opened.replayed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let step = shared.config.step;
        let log = match opened.log {
            Some(log) => {
                let checkpointer = match step {
                    Some(checkpoints) => step::checkpointer(Arc::clone(&db), checkpoints),
                    None => Checkpointer::spawn(Arc::clone(&db)).map_err(OpenError::Spawn)?,
                };
                Some((log, checkpointer))
            }
            None => None,
        };
        let writer = Writer::new(
            Arc::clone(&shared),
            Arc::clone(&state),
            db,
            rx,
            opened.next_token,
            log,
            opened.scopes,
        );
        let runner = match step {
            Some(_) => Runner::Step(Stepper::new(Arc::clone(&shared), writer)),
            None => Runner::Thread(Mutex::new(Some(
                writer::spawn(writer).map_err(OpenError::Spawn)?,
            ))),
        };
        Ok(FileEngine {
            shared,
            state,
            tx,
            runner,
        })
    }

    /// What the store and this engine share.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Queues `op` for the writer; a stopped writer is the error the store's state explains.
    fn submit(&self, op: Op) -> Result<(), Unavailable> {
        if let Runner::Step(stepper) = &self.runner {
            stepper.prepare(&op);
        }
        self.tx
            .send(op)
            .map_err(|_| self.shared.lost_reply(Closed::default()))
    }

    /// Queues `op`, whose answer comes through `rx`.
    fn queue<T, E: From<Unavailable>>(
        &self,
        op: Op,
        rx: reply::Receiver<Result<T, E>>,
    ) -> Answer<T, E> {
        if work::inside() {
            // The writer runs this thread's closure: an answer would wait for itself.
            return Answer::Now(Err(E::from(Unavailable::Reentrant)));
        }
        match self.submit(op) {
            Ok(()) => Answer::later(rx, &self.shared),
            Err(e) => Answer::Now(Err(E::from(e))),
        }
    }

    /// Queues `op` and waits for its answer.
    fn ask<T>(
        &self,
        op: impl FnOnce(reply::Sender<Result<T, Unavailable>>) -> Op,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = reply::channel();
        self.queue(op(tx), rx).wait()
    }

    /// Answers from the hot index when it can; `None` sends the request to the writer.
    fn fast_begin(&self, hash: &KeyHash, fp: &Fingerprint) -> Result<Option<Claim>, Unavailable> {
        let shared = &self.shared;
        // Read before the index: if it is zero here, every release sent before this call has
        // already reached the index.
        let releases_pending = self.state.releases_pending();
        let Some(entry) = self.state.index.get(hash) else {
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
            BeginDecision::OutcomeUnknown => {
                bump(&counters.outcome_unknown);
                Ok(Some(Claim::OutcomeUnknown))
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
                            let _ = self.tx.send(Op::Cache {
                                hash: *hash,
                                token: entry.hot.token,
                                response: r.clone(),
                            });
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

    /// Runs a read transaction, turning a storage-engine panic into an error.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, Unavailable>,
    ) -> Result<T, Unavailable> {
        if work::inside() {
            // This thread runs a closure for the writer, which may hold `visible` (a batch
            // with several transactions) or need this read's answer to go on.
            return Err(Unavailable::Reentrant);
        }
        // Holding the database for the whole read keeps `close` from returning while a read
        // still has the file open.
        guard_read(|| {
            self.state.with_db(|db| {
                let txn = {
                    let _visible = self.state.visible.read();
                    // A batch that failed after commits that were not durable poisoned the
                    // store before it let readers in: they must not see those commits.
                    self.shared.check_poison()?;
                    db.begin_read().map_err(io_error)?
                };
                f(&txn)
            })
        })
    }

    /// The newest logged state of `hash` that the file may not hold yet; `None` when the
    /// file has it.
    fn overlaid(&self, hash: &KeyHash) -> Option<Change<Box<[u8]>>> {
        self.state.overlay.with(hash, |slot| slot.cloned())
    }

    /// The stored response of the completed reservation `token`, if the store still holds it.
    fn read_response(&self, hash: &KeyHash, token: u64) -> Result<Option<Response>, Unavailable> {
        let now = self.shared.now();
        let wanted = |hot: &Hot| {
            hot.state == State::Completed && hot.token == token && !machine::expired(hot, now)
        };
        let missing = || Unavailable::Corrupted {
            detail: format!("completed record {hash:?} has no stored response"),
        };
        match self.overlaid(hash) {
            Some(Change::Delete) => return Ok(None),
            Some(Change::Put { record, response }) => {
                let hot = Hot::decode(&record).map_err(corrupted)?;
                if !wanted(&hot) {
                    return Ok(None);
                }
                let blob = response.ok_or_else(missing)?;
                return blob::decode(&blob).map(Some).map_err(corrupted);
            }
            None => {}
        }
        self.read(|txn| {
            let records = txn.open_table(RECORDS).map_err(io_error)?;
            let Some(g) = records.get(&hash.0).map_err(io_error)? else {
                return Ok(None);
            };
            let hot = Hot::decode(g.value()).map_err(corrupted)?;
            if !wanted(&hot) {
                return Ok(None);
            }
            let expiry = txn.open_table(EXPIRY).map_err(io_error)?;
            tables::response(&expiry, hash, hot.expires_at, blob::decode)
                .map_err(io_error)?
                .ok_or_else(missing)?
                .map(Some)
                .map_err(corrupted)
        })
    }

    /// Waits until the database file holds every operation queued so far (with a write-ahead
    /// log, a checkpoint), for reads of the whole file.
    fn settle_into_file(&self) -> Result<(), Unavailable> {
        self.shared.check()?;
        self.ask(|reply| Op::Checkpoint { reply })
    }

    /// Queues a release of `token`, counted as detached (see the module invariants) unless
    /// its caller waits for the answer.
    fn send_release(&self, hash: KeyHash, token: u64, how: Release) -> Answer<(), LeaseError> {
        if how != Release::Forget && work::inside() {
            // The writer runs this thread's closure: an answer would wait for itself. The
            // reservation stays armed, and its drop queues the release without waiting.
            return Answer::Now(Err(Unavailable::Reentrant.into()));
        }
        let detached = how != Release::Answered;
        if detached {
            self.state.count_detached();
        }
        let (reply, rx) = match how {
            Release::Forget => (None, None),
            Release::Answered | Release::Detached => {
                let (tx, rx) = reply::channel();
                (Some(tx), Some(rx))
            }
        };
        let sent = self.submit(Op::Release {
            hash,
            token,
            reply,
            detached,
        });
        match (sent, rx) {
            (Err(e), _) => {
                if detached {
                    self.state.settle_detached();
                }
                Answer::Now(Err(LeaseError::from(e)))
            }
            (Ok(()), Some(rx)) => Answer::later(rx, &self.shared),
            (Ok(()), None) => Answer::Now(Ok(())),
        }
    }
}

impl Engine for FileEngine {
    fn begin(
        &self,
        hash: KeyHash,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> Answer<Claim, BeginError> {
        match self.fast_begin(&hash, fp) {
            Ok(Some(claim)) => {
                bump(&self.shared.counters.answered_from_index);
                return Answer::Now(Ok(claim));
            }
            Ok(None) => {}
            Err(e) => return Answer::Now(Err(e.into())),
        }
        if work::inside() {
            return Answer::Now(Err(Unavailable::Reentrant.into()));
        }
        let (tx, rx) = reply::spinning_channel(self.shared.config.caller_spin);
        let op = Op::Begin {
            hash,
            scope: scope.clone(),
            key: key.clone(),
            fp: *fp,
            terms,
            reply: tx,
        };
        if let Err(e) = self.submit(op) {
            return Answer::Now(Err(e.into()));
        }
        // A caller that stops waiting (a dropped future) must not leave a key in flight
        // without a holder (C6): the writer releases what it reserves for it, or, if the
        // answer is in already, it is released here; and `begin` must not trust an in-flight
        // copy in the index until it has.
        let state = Arc::clone(&self.state);
        let writer = self.tx.clone();
        Answer::later_or(
            rx,
            &self.shared,
            Box::new(move |rx| {
                let answered = rx.abandon(|| state.count_detached());
                if let Some(Ok(Claim::Execute { token, .. })) = answered {
                    state.count_detached();
                    let sent = writer.send(Op::Release {
                        hash,
                        token,
                        reply: None,
                        detached: true,
                    });
                    if sent.is_err() {
                        state.settle_detached();
                    }
                }
            }),
        )
    }

    fn complete(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        response: Response,
        terms: Terms,
    ) -> Answer<Completion, CompleteError> {
        let blob = match blob::encode(&response) {
            Ok(blob) => blob,
            // The store checked the response first: not reached.
            Err(e) => {
                let _ = self.send_release(hash, token, Release::Forget);
                return Answer::Now(Err(CompleteError::InvalidResponse {
                    reason: e.to_string(),
                }));
            }
        };
        let (tx, rx) = reply::spinning_channel(self.shared.config.caller_spin);
        let op = Op::Complete {
            hash,
            token,
            response,
            terms,
            blob,
            reply: tx,
        };
        self.queue(op, rx)
    }

    fn release(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        how: Release,
    ) -> Answer<(), LeaseError> {
        self.send_release(hash, token, how)
    }

    fn renew(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        terms: Terms,
    ) -> Answer<u64, LeaseError> {
        let (tx, rx) = reply::channel();
        self.queue(
            Op::Renew {
                hash,
                token,
                terms,
                reply: tx,
            },
            rx,
        )
    }

    fn save_point(
        &self,
        hash: KeyHash,
        _scope: &Scope,
        token: u64,
        point: RecoveryPoint,
    ) -> Answer<(), LeaseError> {
        let (tx, rx) = reply::channel();
        self.queue(
            Op::Point {
                hash,
                token,
                point,
                reply: tx,
            },
            rx,
        )
    }

    fn resolve(&self, hash: KeyHash) -> Answer<Option<Claim>, Unavailable> {
        // Answered to a blocking caller only; a caller gone before the answer is handled by
        // the writer, which releases what it reserved for nobody.
        let (tx, rx) = reply::channel();
        self.queue(Op::Resolve { hash, reply: tx }, rx)
    }

    fn purge(&self, hash: KeyHash, _scope: &Scope) -> Answer<bool, Unavailable> {
        let (tx, rx) = reply::channel();
        self.queue(Op::Purge { hash, reply: tx }, rx)
    }

    fn get(&self, hash: KeyHash, _scope: &Scope) -> Result<Option<RecordInfo>, Unavailable> {
        if self.state.releases_pending() {
            // A dropped reservation's release is queued: let the writer apply it first, so a
            // read after the drop sees the key released (C6).
            self.ask(|reply| Op::Barrier { reply })?;
        }
        let now = self.shared.now();
        match self.overlaid(&hash) {
            Some(Change::Delete) => Ok(None),
            Some(Change::Put { record, response }) => {
                record_info(&hash, &record, response.as_deref(), now)
            }
            None => self.read(|txn| read_record(txn, &hash, now)),
        }
    }

    fn expire(&self, limit: usize) -> Result<ExpireReport, Unavailable> {
        self.shared.check()?;
        self.ask(|reply| Op::Expire { limit, reply })
    }

    fn flush(&self) -> Result<(), Unavailable> {
        self.shared.check()?;
        self.ask(|reply| Op::Flush { reply })
    }

    fn list(
        &self,
        filter: (Option<&Scope>, Option<State>),
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        self.settle_into_file()?;
        let now = self.shared.now();
        self.read(|txn| read::records_in(txn, filter, limit, now))
    }

    fn list_each(
        &self,
        filter: (Option<&Scope>, Option<State>),
        limit: usize,
    ) -> Result<Vec<crate::engine::Listed>, Unavailable> {
        self.settle_into_file()?;
        let now = self.shared.now();
        self.read(|txn| read::records_each(txn, filter, limit, now))
    }

    fn check(&self) -> Result<CheckReport, Unavailable> {
        self.settle_into_file()?;
        let now = self.shared.now();
        self.read(|txn| read::check_in(txn, now, true))
    }

    fn stats(&self) -> Stats {
        let mut stats = self.shared.counters.snapshot(self.state.index.len());
        let state = &self.state;
        stats.live_records = Some(state.live_records.load(Ordering::Relaxed));
        stats.in_flight_records = Some(state.in_flight_records.load(Ordering::Relaxed));
        stats.file_bytes = state
            .path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len());
        stats
    }

    fn work(&self, work: Work) -> Answer<Ran, CompleteError> {
        let (tx, rx) = reply::channel();
        self.queue(Op::Work { work, reply: tx }, rx)
    }

    fn read_database(&self, f: &mut dyn FnMut(&ReadTransaction)) -> Result<(), Unavailable> {
        self.shared.check()?;
        self.read(|txn| {
            f(txn);
            Ok(())
        })
    }

    fn closing_on_own_thread(&self) -> bool {
        let current = std::thread::current().id();
        match &self.runner {
            Runner::Thread(writer) => writer
                .lock()
                .as_ref()
                .is_some_and(|w| w.thread().id() == current),
            Runner::Step(_) => false,
        }
    }

    #[cfg(feature = "fuzzing")]
    fn run_held_checkpoint(&self) -> bool {
        match &self.runner {
            Runner::Step(stepper) => stepper.run_checkpoint(),
            Runner::Thread(_) => false,
        }
    }

    fn close(&self) -> Result<(), Unavailable> {
        let writer = match &self.runner {
            Runner::Thread(writer) => writer.lock().take(),
            Runner::Step(stepper) => return self.close_stepped(stepper),
        };
        let Some(writer) = writer else {
            return self.shared.check_poison();
        };
        if writer.thread().id() == std::thread::current().id() {
            // The last handle was dropped on the writer thread itself (an async task it woke
            // and whose executor then dropped it). It cannot wait for itself: ask it to stop
            // after the batch in hand. It makes everything durable and closes the file as it
            // ends.
            let _ = self.tx.send(Op::Shutdown);
            self.mark_closed();
            return Ok(());
        }
        let flushed = match self.shared.check_poison() {
            Err(e) => Err(e),
            Ok(()) => {
                let (tx, rx) = reply::channel();
                self.queue(Op::Flush { reply: tx }, rx).wait()
            }
        };
        let _ = self.tx.send(Op::Shutdown);
        let joined = writer.join();
        self.mark_closed();
        if joined.is_err() {
            return Err(self.shared.poisoned_error());
        }
        // The writer's last commit (the clean-shutdown mark) may have failed after the flush.
        flushed.and_then(|()| self.shared.check_poison())
    }
}

impl FileEngine {
    /// `close` in step mode: the flush and the shutdown run the writer on this thread.
    fn close_stepped(&self, stepper: &Stepper) -> Result<(), Unavailable> {
        if !stepper.running() {
            return self.shared.check_poison();
        }
        let flushed = match self.shared.check_poison() {
            Err(e) => Err(e),
            Ok(()) => self.ask(|reply| Op::Flush { reply }),
        };
        let _ = self.tx.send(Op::Shutdown);
        stepper.run_out();
        self.mark_closed();
        flushed.and_then(|()| self.shared.check_poison())
    }

    /// Marks the store closed and lets go of the database (the writer has stopped by now).
    fn mark_closed(&self) {
        self.shared.mark_closed();
        drop_quietly(self.state.db.write().take());
    }
}
