//! The public store: open, `begin`, reads, purge, compaction, close.
//!
//! Why: this is the one type a service holds. It validates input, keeps the reservation
//! lifecycle (`reservation.rs`) and the compactor's schedule (`compactor.rs`), and hands every
//! operation to its engine (`crate::engine`): the file engine, or with `Durability::Memory` the
//! memory engine. Invariants: nothing here reads or writes records itself, and nothing here
//! depends on which engine runs; every call a caller makes is refused with the store's state
//! (closed, poisoned) before it reaches the engine; every path a caller or a damaged file can
//! reach returns an error instead of panicking.

mod compactor;
mod operator;
mod reservation;
mod resolve;
mod transact;
mod wait;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{Backend, Claim, Completion};
use crate::config::{Config, Durability, Terms};
use crate::engine::file::FileEngine;
use crate::engine::memory::MemoryEngine;
use crate::engine::{Answer, Engine, Release, Shared};
use crate::error::{BeginError, CompleteError, KeyError, LeaseError, OpenError, Unavailable};
use crate::format::blob;
use crate::metrics::Stopwatch;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::rules::state::State;
use crate::stats::Stats;
use crate::storage::StorageBackend;
use crate::view::{CheckReport, RecordInfo};

use compactor::Compactor;
#[cfg(feature = "http")]
pub(crate) use reservation::Lease;
pub use reservation::{Begin, Reservation};
#[cfg(feature = "http")]
pub(crate) use wait::woken_before;

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
///     Begin::OutcomeUnknown => println!("resolve the key first"),
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
    engine: Arc<dyn Engine>,
    /// Also held through `shutdown`, so that a second `close` waits for the first.
    compactor: Mutex<Compactor>,
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
        let engine = FileEngine::open(path.as_ref(), config)?;
        Store::run(Arc::clone(engine.shared()), Arc::new(engine))
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
        let engine = FileEngine::open_devices(database, log, config)?;
        Store::run(Arc::clone(engine.shared()), Arc::new(engine))
    }

    /// Opens a store that keeps everything in memory ([`Durability::Memory`], whatever the
    /// config says): no file, no writer thread; each call is carried out on the caller's
    /// thread by the memory engine. The compactor thread still removes expired records.
    pub fn in_memory(config: Config) -> Result<Store, OpenError> {
        let config = Config {
            durability: Durability::Memory,
            ..config
        };
        let shared = Arc::new(Shared::new(config, crate::engine::shared::random_secret()?));
        let engine = MemoryEngine::new(Arc::clone(&shared));
        Store::run(shared, Arc::new(engine))
    }

    /// Opens a store whose records live on the Redis or Valkey server at `url`
    /// (`redis://127.0.0.1:6379`), with the options' defaults: see
    /// [`open_redis_with`](Store::open_redis_with).
    #[cfg(feature = "redis")]
    pub fn open_redis(url: &str, config: Config) -> Result<Store, OpenError> {
        Store::open_redis_with(crate::RedisOptions::new(url), config)
    }

    /// Opens a store whose records live on a Redis or Valkey server (7.0 or later), shared by
    /// every store opened on the same server and prefix, on this machine or another
    /// (`docs/distributed.md`). Every rule of the contract holds across them; each operation
    /// is one script the server runs atomically.
    ///
    /// The server is checked first: it must never evict keys (`maxmemory-policy noeviction`)
    /// and must persist every write as the store's durability needs (`appendonly yes`, and
    /// `appendfsync always` for [`Durability::Immediate`], `everysec` at least for
    /// `Buffered`), or the open is refused with [`OpenError::UnsafeServer`].
    /// [`Durability::Memory`] is refused with [`OpenError::Config`].
    ///
    /// ```no_run
    /// use idemstore::{Config, RedisOptions, Store};
    /// let store = Store::open_redis_with(
    ///     RedisOptions::new("redis://127.0.0.1:6379").prefix("bookings:"),
    ///     Config::default(),
    /// )?;
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    #[cfg(feature = "redis")]
    pub fn open_redis_with(
        options: crate::RedisOptions,
        config: Config,
    ) -> Result<Store, OpenError> {
        let engine = crate::engine::redis::RedisEngine::open(options, config)?;
        Store::run(Arc::clone(engine.shared()), Arc::new(engine))
    }

    /// Starts the compactor beside `engine` and wraps them in a store.
    fn run(shared: Arc<Shared>, engine: Arc<dyn Engine>) -> Result<Store, OpenError> {
        let inner = Inner {
            shared: Arc::clone(&shared),
            engine: Arc::clone(&engine),
            compactor: Mutex::new(Compactor::default()),
        };
        // From here on, dropping `inner` closes the engine cleanly. In step mode (fuzz targets
        // and tests) the compactor runs only when asked (`compact_now`).
        if shared.config.step.is_none() {
            let compactor = Compactor::spawn(shared, engine).map_err(OpenError::Spawn)?;
            *inner.compactor.lock() = compactor;
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

    /// Step mode: runs the checkpoint the writer handed over, if one waits (`__fuzz`).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn run_held_checkpoint(&self) -> bool {
        self.inner.engine.run_held_checkpoint()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.shared.config
    }

    /// Checks a key against this store's `max_key_len` (C12).
    pub fn key(&self, key: impl AsRef<str>) -> Result<Key, KeyError> {
        Key::with_max_len(key, self.config().max_key_len)
    }

    /// Decides what to do with a request (C1-C5, C8, C9): reserve and execute, replay, wait,
    /// or refuse. Blocks until a reservation is durable (in the default mode); duplicates of a
    /// known key are answered from memory.
    pub fn begin(&self, scope: &Scope, key: &Key, fp: &Fingerprint) -> Result<Begin, BeginError> {
        self.begin_with(scope, key, fp, self.inner.shared.config.terms())
    }

    /// [`begin`](Store::begin) under `terms` instead of the store's: the key is reserved for
    /// their lease, and its completion follows their cache policy and time to live (see
    /// [`Terms`]). Routes with different windows share one store this way.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};
    /// let store = Store::in_memory(Config::default())?;
    /// let week = store.config().terms().with_ttl(Duration::from_secs(7 * 86_400))?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("pay-1")?);
    /// let fp = Fingerprint::of_bytes(b"pay 10");
    /// let Begin::Execute(r) = store.begin_with(&scope, &key, &fp, week)? else { unreachable!() };
    /// r.complete(Response::new(201, [("content-type", "text/plain")], "paid"))?;
    /// let record = store.get(&scope, &key)?.ok_or("no record")?;
    /// assert!(record.expires_at >= record.created_at + 7 * 86_400_000 - 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn begin_with(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> Result<Begin, BeginError> {
        let asked = Stopwatch::start(&self.inner.shared.metrics);
        let (hash, answer) = self.claim(scope, key, fp, terms)?;
        Ok(self.wrap((hash, scope), self.counted(answer.wait()?, asked), terms))
    }

    /// [`begin`](Store::begin) as a future, woken by the engine (with [`Durability::Memory`],
    /// ready at once): no thread waits on its behalf, and it works on any async runtime.
    /// Dropping the future before it is done leaves no key in flight (C6).
    pub fn begin_async(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
    ) -> impl Future<Output = Result<Begin, BeginError>> + Send + 'static {
        self.begin_with_async(scope, key, fp, self.inner.shared.config.terms())
    }

    /// [`begin_with`](Store::begin_with) as a future, as [`begin_async`](Store::begin_async).
    pub fn begin_with_async(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> impl Future<Output = Result<Begin, BeginError>> + Send + 'static {
        let store = self.clone();
        let owned = scope.clone();
        let asked = Stopwatch::start(&self.inner.shared.metrics);
        // An answer decided already is wrapped now, so that a reservation in it is armed (its
        // drop releases the key) even if the future is dropped without being polled.
        let claimed = self
            .claim(scope, key, fp, terms)
            .map(|(hash, answer)| match answer {
                Answer::Now(claim) => {
                    Ok(claim.map(|c| self.wrap((hash, scope), self.counted(c, asked), terms)))
                }
                Answer::Later(later) => Err((hash, later)),
            });
        async move {
            match claimed? {
                Ok(begin) => begin,
                Err((hash, later)) => {
                    let claim = later.await?;
                    Ok(store.wrap((hash, &owned), store.counted(claim, asked), terms))
                }
            }
        }
    }

    /// Records a `begin`'s answer and latency in the store's metrics.
    fn counted(&self, claim: Claim, asked: Stopwatch) -> Claim {
        self.inner.shared.metrics.begin(&claim, asked);
        claim
    }

    /// A reservation under `terms` for an `Execute` claim; the other answers as they are.
    fn wrap(&self, (hash, scope): (KeyHash, &Scope), claim: Claim, terms: Terms) -> Begin {
        match claim {
            Claim::Execute {
                token,
                lease_deadline,
                recovery,
            } => Begin::Execute(Reservation::new(
                self.clone(),
                (hash, scope.clone()),
                (token, lease_deadline),
                recovery,
                terms,
            )),
            Claim::Replay(r) => Begin::Replay(r),
            Claim::InProgress { retry_after } => Begin::InProgress { retry_after },
            Claim::Conflict => Begin::Conflict,
            Claim::OutcomeUnknown => Begin::OutcomeUnknown,
        }
    }

    /// The store's metric handles (feature `metrics`).
    #[cfg(feature = "http")]
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.shared.metrics
    }

    /// Validates a `begin` and hands it to the engine.
    fn claim(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> Result<(KeyHash, Answer<Claim, BeginError>), BeginError> {
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
        Ok((hash, self.inner.engine.begin(hash, scope, key, fp, terms)))
    }

    /// The record for (scope, key), or `None` if there is none or it has expired (C9).
    pub fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable> {
        self.inner.shared.check()?;
        self.inner.engine.get(KeyHash::of(scope, key), scope)
    }

    /// Removes the record for (scope, key), whatever its state; true if there was one. A
    /// reservation of a purged key can no longer complete.
    pub fn purge(&self, scope: &Scope, key: &Key) -> Result<bool, Unavailable> {
        self.inner.shared.check()?;
        self.inner
            .engine
            .purge(KeyHash::of(scope, key), scope)
            .wait()
    }

    /// The live (not expired) records, in the file's order (by key hash), those of `scope`
    /// only if given, at most `limit`. A record that does not decode is an error. With the
    /// write-ahead log this first checkpoints, so the file holds every operation queued
    /// before the call.
    pub fn records(
        &self,
        scope: Option<&Scope>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        self.records_in_state(scope, None, limit)
    }

    /// [`records`](Store::records) in `state` only, if given: the first `limit` that match.
    /// Records of another state are skipped without reading their responses.
    pub fn records_in_state(
        &self,
        scope: Option<&Scope>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        self.inner.shared.check()?;
        self.inner.engine.list((scope, state), limit)
    }

    /// Reads every record and expiry entry and checks that they agree: each record decodes,
    /// each record has its expiry entry, each completed record's entry holds a response that
    /// decodes with the record's status (an in-flight record's holds none), and no expiry entry
    /// is left without its record. Open the store with `verify_on_open(true)` to check every
    /// page's checksum too. With the write-ahead log this first checkpoints, so the whole store
    /// is checked.
    pub fn check(&self) -> Result<CheckReport, Unavailable> {
        self.inner.shared.check()?;
        self.inner.engine.check()
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.engine.stats();
        stats.waiting = self.inner.shared.waiters.waiting();
        stats
    }

    /// Removes every record expired by now, in compactor-sized batches, and returns how many
    /// were removed. The background compactor does the same on its own schedule.
    pub fn compact_now(&self) -> Result<u64, Unavailable> {
        let shared = &self.inner.shared;
        let batch = shared.config.compactor_batch;
        let mut removed = 0;
        loop {
            let report = compactor::expire_once(shared, &*self.inner.engine, batch)?;
            removed += report.removed;
            if report.scanned < batch {
                return Ok(removed);
            }
        }
    }

    /// Makes every commit so far durable now (useful with [`Durability::Buffered`]).
    pub fn flush(&self) -> Result<(), Unavailable> {
        self.inner.shared.check()?;
        self.inner.engine.flush()
    }

    /// Drains the writer, makes everything durable, stops the background threads and closes
    /// the file. Other handles of this store get [`Unavailable::Closed`] afterwards.
    pub fn close(self) -> Result<(), Unavailable> {
        self.inner.shutdown()
    }

    /// Validates a response and hands the completion of `token` to the engine. A response the
    /// store cannot keep releases the key (C6): its operation ran, but nothing can replay it.
    fn complete_token(
        &self,
        (hash, scope): (KeyHash, &Scope),
        token: u64,
        response: Response,
        terms: Terms,
    ) -> Answer<Completion, CompleteError> {
        let shared = &self.inner.shared;
        if let Err(e) = shared.check() {
            return Answer::Now(Err(e.into()));
        }
        let refused = blob::refusal(&response, shared.config.max_response_bytes);
        if let Some(e) = refused {
            self.forget((hash, scope), token);
            return Answer::Now(Err(e));
        }
        self.inner
            .engine
            .complete(hash, scope, token, response, terms)
    }

    /// Releases `token` without waiting for the answer (a dropped reservation).
    fn forget(&self, (hash, scope): (KeyHash, &Scope), token: u64) {
        crate::trace::released(&hash, token, true);
        let _ = self
            .inner
            .engine
            .release(hash, scope, token, Release::Forget);
    }

    fn release_token(
        &self,
        (hash, scope): (KeyHash, &Scope),
        token: u64,
        how: Release,
    ) -> Answer<(), LeaseError> {
        if let Err(e) = self.inner.shared.check() {
            return Answer::Now(Err(e.into()));
        }
        crate::trace::released(&hash, token, false);
        self.inner.engine.release(hash, scope, token, how)
    }

    fn renew_token(
        &self,
        (hash, scope): (KeyHash, &Scope),
        token: u64,
        terms: Terms,
    ) -> Answer<u64, LeaseError> {
        if let Err(e) = self.inner.shared.check() {
            return Answer::Now(Err(e.into()));
        }
        self.inner.engine.renew(hash, scope, token, terms)
    }

    pub(crate) fn save_point_token(
        &self,
        (hash, scope): (KeyHash, &Scope),
        token: u64,
        point: RecoveryPoint,
    ) -> Answer<(), LeaseError> {
        if let Err(e) = self.inner.shared.check() {
            return Answer::Now(Err(e.into()));
        }
        self.inner.engine.save_point(hash, scope, token, point)
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), Unavailable> {
        let mut compactor = self.compactor.lock();
        if self.engine.closing_on_own_thread() {
            // The last handle was dropped on one of the engine's own threads: it cannot wait
            // for itself, nor for the compactor, which may be waiting for it.
            compactor.detach();
        } else {
            // On the compactor's own thread (a task its pass woke held the last handle), this
            // only detaches it; the engine is closed and the waits woken all the same.
            compactor.stop();
        }
        let closed = self.engine.close();
        // Waiting retries look again now, and hear that the store is closed.
        self.shared.waiters.wake_all();
        closed
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Backend for Store {
    fn claim(&self, scope: &Scope, key: &Key, fp: &Fingerprint) -> Result<Claim, BeginError> {
        let terms = self.inner.shared.config.terms();
        let (_, answer) = Store::claim(self, scope, key, fp, terms)?;
        answer.wait()
    }

    fn complete(
        &self,
        scope: &Scope,
        key: &Key,
        token: u64,
        response: Response,
    ) -> Result<Completion, CompleteError> {
        let terms = self.inner.shared.config.terms();
        self.complete_token((KeyHash::of(scope, key), scope), token, response, terms)
            .wait()
    }

    fn renew(&self, scope: &Scope, key: &Key, token: u64) -> Result<u64, LeaseError> {
        let terms = self.inner.shared.config.terms();
        self.renew_token((KeyHash::of(scope, key), scope), token, terms)
            .wait()
    }

    fn release(&self, scope: &Scope, key: &Key, token: u64) -> Result<(), LeaseError> {
        self.release_token((KeyHash::of(scope, key), scope), token, Release::Answered)
            .wait()
    }

    fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable> {
        Store::get(self, scope, key)
    }

    fn purge(&self, scope: &Scope, key: &Key) -> Result<bool, Unavailable> {
        Store::purge(self, scope, key)
    }
}
