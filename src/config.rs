//! Configuration: every knob with its default, unit and range, checked once at build time.
//!
//! Why: the store's behaviour (how long records live, when a lease runs out, what is durable
//! when) is the contract a deployment relies on, so every setting is named, documented and
//! range-checked. Invariant: a [`Config`] value always holds settings inside their documented
//! ranges; the only way to make one is [`Config::default`] or [`ConfigBuilder::build`].

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;

/// When a checkpoint handed over by the writer runs, in step mode (`engine/file/step.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
pub(crate) enum Checkpoints {
    /// At once, where the writer hands it to the checkpoint thread: a checkpoint thread that
    /// is never behind.
    AtHandOff,
    /// When the test runs it, or when the writer must wait for it: a checkpoint thread that is
    /// as slow as it may be.
    Held,
}

/// The smallest write-ahead log: a few entries of the largest batch must fit.
pub(crate) const MIN_LOG_CAPACITY: u64 = 64 << 10;

/// When a completion is acknowledged, and so what a crash can lose (rule C10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The default. `complete` returns after the commit holding it has been fsynced.
    ///
    /// - Process crash: nothing acknowledged is lost.
    /// - Power loss: nothing acknowledged is lost (assuming the disk honours fsync).
    ///
    /// Concurrent operations share one commit and one fsync (group commit), so throughput
    /// grows with concurrency while each caller still waits for its own durability.
    Immediate,
    /// `complete` returns after the commit is applied in memory; a background flush makes it
    /// durable within `max_delay`.
    ///
    /// - Process crash: with the write-ahead log (the default), nothing acknowledged is lost:
    ///   each batch's entry is written to the operating system before its callers are
    ///   answered. Without the log, as for a power loss.
    /// - Power loss: the completions acknowledged in the last `max_delay` before the crash
    ///   may be lost (their keys come back absent or in flight, so a retry executes again);
    ///   older ones survive. Nothing is ever corrupted or half-written.
    Buffered {
        /// The longest time an acknowledged completion may stay undurable.
        max_delay: Duration,
    },
    /// No file at all: records live in memory and vanish with the process.
    ///
    /// - Process crash or power loss: everything is lost.
    ///
    /// There is no writer thread either: each call is decided on the caller's own thread
    /// under the lock of one of 64 shards, with the same rules as the other modes, and every
    /// response is kept (`response_cache_bytes` does not apply). For tests and for
    /// deployments that use idemstore as a deduplicating cache.
    Memory,
}

/// Which completed responses are stored for replay (rule C7). A response that is not stored
/// releases the key instead, so the next attempt executes again (rule C6).
///
/// No policy but [`AllIncludingTransient`](CachePolicy::AllIncludingTransient) stores the
/// [transient statuses](CachePolicy::TRANSIENT) `408 Request Timeout`, `429 Too Many
/// Requests` and `503 Service Unavailable`: they say the operation did not run *yet*, and a
/// stored one would answer every retry with "try again later" until the record expires.
///
/// ```
/// use idemstore::CachePolicy;
/// assert!(CachePolicy::All.keeps(500));
/// assert!(!CachePolicy::All.keeps(429));
/// assert!(CachePolicy::AllIncludingTransient.keeps(429));
/// assert!(!CachePolicy::SuccessAndClientErrors.keeps(408));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CachePolicy {
    /// Store only 2xx responses (the default): any failure can be retried.
    #[default]
    SuccessOnly,
    /// Store 2xx and 4xx but `408` and `429`, release on 5xx: a client error replays as it
    /// was, a server error can be retried.
    SuccessAndClientErrors,
    /// Store every response but the transient `408`, `429` and `503`.
    All,
    /// Store every response, the transient statuses included: a throttled or timed-out
    /// request then replays its `429`, `408` or `503` until the record expires.
    AllIncludingTransient,
}

/// What opening a store does with the records it finds in flight (rules C11, E6): their
/// holders died with the process that held them, and nobody knows whether their operations
/// had their effects.
///
/// A record with a recovery point (P1) is never released: under `Release` its lease is ended
/// instead, so the first retry takes it over and resumes from the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InFlightAtOpen {
    /// Release them, so a retry executes at once (the default). Right when an operation's
    /// effect is idempotent downstream or commits with its response
    /// ([`Reservation::complete_with`](crate::Reservation::complete_with)): then a crash
    /// before the completion left no effect behind, and running again is what should happen.
    #[default]
    Release,
    /// Keep them until their leases end; a retry meanwhile is answered in progress, after
    /// that it takes the key over (C8). For tools that open a file to look at it.
    KeepLease,
    /// Mark their outcome unknown (E6): a retry is answered
    /// [`Begin::OutcomeUnknown`](crate::Begin::OutcomeUnknown) (over HTTP,
    /// `409 idempotency_outcome_unknown`) until the application resolves the key
    /// ([`Store::resolve`](crate::Store::resolve)): looks the effect up, then completes the
    /// reservation it gets with the response, or releases it. For effects that live elsewhere
    /// and must not run twice (a payment at a provider).
    MarkUnknown,
}

impl CachePolicy {
    /// The statuses that say "not now" rather than "done": only
    /// [`AllIncludingTransient`](CachePolicy::AllIncludingTransient) stores them.
    pub const TRANSIENT: [u16; 3] = [408, 429, 503];

    /// Whether a response with this status code is stored.
    pub fn keeps(self, status: u16) -> bool {
        let transient = Self::TRANSIENT.contains(&status);
        match self {
            CachePolicy::SuccessOnly => (200..300).contains(&status),
            CachePolicy::SuccessAndClientErrors => (200..500).contains(&status) && !transient,
            CachePolicy::All => !transient,
            CachePolicy::AllIncludingTransient => true,
        }
    }
}

/// What one key's record is held to: how long it lives once completed (`ttl`, C9), how long an
/// attempt holds it (`lease`, C8) and which responses are kept (`cache_policy`, C7).
///
/// A store's terms are its configuration's ([`Config::terms`]); a caller, or a route of the
/// HTTP layer (`Contract::ttl`, `lease` and `cache_policy`, feature `http`), may hold a
/// key to its own with [`Store::begin_with`](crate::Store::begin_with), so one store serves
/// routes with different windows. A reservation keeps the terms it was begun with: its
/// completion, its renewals and the record it leaves follow them; an attempt that takes the key
/// over holds it to its own.
///
/// ```
/// use std::time::Duration;
/// use idemstore::{CachePolicy, Config};
/// let payments = Config::default()
///     .terms()
///     .with_ttl(Duration::from_secs(7 * 86_400))?
///     .with_lease(Duration::from_secs(120))?
///     .with_cache_policy(CachePolicy::All);
/// assert_eq!(payments.ttl(), Duration::from_secs(7 * 86_400));
/// # Ok::<(), idemstore::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    ttl: Duration,
    lease: Duration,
    cache_policy: CachePolicy,
}

impl Terms {
    /// These terms with time to live `ttl`, in the range of [`ConfigBuilder::ttl`].
    pub fn with_ttl(mut self, ttl: Duration) -> Result<Terms, ConfigError> {
        check_ttl(ttl)?;
        self.ttl = ttl;
        Ok(self)
    }

    /// These terms with lease `lease`, in the range of [`ConfigBuilder::lease`].
    pub fn with_lease(mut self, lease: Duration) -> Result<Terms, ConfigError> {
        check_lease(lease)?;
        self.lease = lease;
        Ok(self)
    }

    /// These terms with cache policy `policy`.
    pub fn with_cache_policy(mut self, policy: CachePolicy) -> Terms {
        self.cache_policy = policy;
        self
    }

    /// How long a completed record lives, counted from completion.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long a reservation holds the key before another attempt may take it over.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Which responses are stored.
    pub fn cache_policy(&self) -> CachePolicy {
        self.cache_policy
    }

    pub(crate) fn ttl_ms(&self) -> u64 {
        crate::clock::millis(self.ttl)
    }

    pub(crate) fn lease_ms(&self) -> u64 {
        crate::clock::millis(self.lease)
    }
}

fn check_ttl(ttl: Duration) -> Result<(), ConfigError> {
    let ok = ttl >= Duration::from_secs(1) && ttl <= Duration::from_secs(366 * 86_400);
    refuse_unless(ok, "ttl", ttl, "1 s to 366 days")
}

fn check_lease(lease: Duration) -> Result<(), ConfigError> {
    let ok = lease >= Duration::from_millis(10) && lease <= Duration::from_secs(86_400);
    refuse_unless(ok, "lease", lease, "10 ms to 24 h")
}

fn refuse_unless(
    ok: bool,
    setting: &'static str,
    value: impl std::fmt::Debug,
    range: &'static str,
) -> Result<(), ConfigError> {
    match ok {
        true => Ok(()),
        false => Err(ConfigError {
            setting,
            value: format!("{value:?}"),
            range,
        }),
    }
}

/// The store's settings. Build one with [`Config::builder`], or take [`Config::default`].
///
/// ```
/// use std::time::Duration;
/// use idemstore::{CachePolicy, Config, Durability};
/// let config = Config::builder()
///     .ttl(Duration::from_secs(48 * 3600))
///     .lease(Duration::from_secs(30))
///     .cache_policy(CachePolicy::SuccessAndClientErrors)
///     .durability(Durability::Buffered { max_delay: Duration::from_millis(5) })
///     .build()?;
/// assert_eq!(config.lease(), Duration::from_secs(30));
/// # Ok::<(), idemstore::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) durability: Durability,
    pub(crate) cache_policy: CachePolicy,
    pub(crate) max_key_len: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) in_flight_at_open: InFlightAtOpen,
    /// `None`: follow `in_flight_at_open` (see `reservations_durable()`).
    pub(crate) reservations_durable: Option<bool>,
    pub(crate) compactor_batch: usize,
    pub(crate) max_records_per_scope: u64,
    pub(crate) compactor_pause: Duration,
    pub(crate) compactor_interval: Duration,
    pub(crate) index_capacity: usize,
    pub(crate) index_max_completed: usize,
    pub(crate) response_cache_bytes: usize,
    pub(crate) batch_limit: usize,
    pub(crate) page_cache_bytes: usize,
    pub(crate) verify_on_open: bool,
    pub(crate) write_ahead_log: bool,
    pub(crate) log_capacity: u64,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) writer_spin: Duration,
    pub(crate) caller_spin: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    /// The `store` label of the store's metrics (feature `metrics`).
    pub(crate) name: Arc<str>,
    /// Step mode (`engine/file/step.rs`): no threads; set only through `idemstore::__fuzz`.
    pub(crate) step: Option<Checkpoints>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            retry_after: Duration::from_secs(1),
            durability: Durability::Immediate,
            cache_policy: CachePolicy::SuccessOnly,
            max_key_len: 255,
            max_response_bytes: 1 << 20,
            in_flight_at_open: InFlightAtOpen::Release,
            reservations_durable: None,
            compactor_batch: 1000,
            max_records_per_scope: 10_000_000,
            compactor_pause: Duration::from_millis(10),
            compactor_interval: Duration::from_secs(1),
            index_capacity: 1 << 16,
            index_max_completed: 1 << 20,
            response_cache_bytes: 64 << 20,
            batch_limit: 1024,
            page_cache_bytes: 256 << 20,
            verify_on_open: false,
            write_ahead_log: true,
            log_capacity: 64 << 20,
            checkpoint_interval: Duration::from_secs(1),
            writer_spin: Duration::from_micros(50),
            caller_spin: Duration::from_micros(300),
            clock: Arc::new(SystemClock),
            name: Arc::from("default"),
            step: None,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
            error: None,
        }
    }

    /// The store's name, the `store` label of its metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long a completed record lives, counted from completion.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long a reservation holds its key before another `begin` may take it over.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The retry hint given with an in-progress answer.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// What opening does with in-flight records (C11, E6).
    pub fn in_flight_at_open(&self) -> InFlightAtOpen {
        self.in_flight_at_open
    }

    /// Whether a reservation is durable before `begin` returns `Execute`: as set, or by
    /// default exactly when the store keeps in-flight records at open (C11). A store that
    /// releases them at open (the default) would release a durable reservation after a crash
    /// anyway, so making it durable would cost an fsync and change nothing.
    pub(crate) fn reservations_durable(&self) -> bool {
        self.reservations_durable
            .unwrap_or(self.in_flight_at_open != InFlightAtOpen::Release)
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Whether batches are acknowledged through the write-ahead log.
    pub fn write_ahead_log(&self) -> bool {
        self.write_ahead_log
    }

    /// The cache policy.
    pub fn cache_policy(&self) -> CachePolicy {
        self.cache_policy
    }

    /// The store's terms for a key: its time to live, lease and cache policy.
    pub fn terms(&self) -> Terms {
        Terms {
            ttl: self.ttl,
            lease: self.lease,
            cache_policy: self.cache_policy,
        }
    }

    /// The longest key accepted, in bytes.
    pub fn max_key_len(&self) -> usize {
        self.max_key_len
    }

    /// The largest encoded response accepted, in bytes.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }
}

/// Builds a [`Config`]; each setter states its default, unit and range, and
/// [`build`](ConfigBuilder::build) refuses a value outside its range.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
    error: Option<ConfigError>,
}

macro_rules! check {
    ($self:ident, $name:literal, $value:expr, $ok:expr, $range:literal) => {
        $self.keep_first(refuse_unless($ok, $name, $value, $range))
    };
}

impl ConfigBuilder {
    /// Time to live of a completed record, counted from completion (rule C9).
    /// Default 24 h; range 1 s to 366 days.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.keep_first(check_ttl(ttl));
        self.config.ttl = ttl;
        self
    }

    /// Lease of a reservation (rule C8). Default 60 s; range 10 ms to 24 h.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.keep_first(check_lease(lease));
        self.config.lease = lease;
        self
    }

    /// Retry hint returned with [`Begin::InProgress`](crate::Begin::InProgress) (rule C5).
    /// Default 1 s; range 0 to 1 h.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        let ok = retry_after <= Duration::from_secs(3600);
        check!(self, "retry_after", retry_after, ok, "0 to 1 h");
        self.config.retry_after = retry_after;
        self
    }

    /// Durability mode (rule C10). Default [`Durability::Immediate`]. `Buffered { max_delay }`
    /// takes a delay from 1 ms to 10 s.
    pub fn durability(mut self, durability: Durability) -> Self {
        if let Durability::Buffered { max_delay } = durability {
            let ok = max_delay >= Duration::from_millis(1) && max_delay <= Duration::from_secs(10);
            check!(
                self,
                "durability",
                durability,
                ok,
                "Buffered max_delay 1 ms to 10 s"
            );
        }
        self.config.durability = durability;
        self
    }

    /// Which responses are stored (rule C7). Default [`CachePolicy::SuccessOnly`].
    pub fn cache_policy(mut self, policy: CachePolicy) -> Self {
        self.config.cache_policy = policy;
        self
    }

    /// Longest key accepted, in bytes (rule C12). Default 255; range 1 to 4096.
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        check!(
            self,
            "max_key_len",
            bytes,
            (1..=4096).contains(&bytes),
            "1 to 4096"
        );
        self.config.max_key_len = bytes;
        self
    }

    /// Largest encoded response (status, headers and body) accepted by `complete`, in bytes
    /// (rule C12). Default 1 MiB; range 64 B to 256 MiB.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        let ok = (64..=256 << 20).contains(&bytes);
        check!(self, "max_response_bytes", bytes, ok, "64 B to 256 MiB");
        self.config.max_response_bytes = bytes;
        self
    }

    /// What opening the store does with the records it finds in flight (rules C11, E6).
    /// Default [`InFlightAtOpen::Release`].
    ///
    /// A store file is opened by one process at a time (the open takes a lock on it, and a
    /// second open gets `OpenError::AlreadyOpen`), so a reservation found at open has no
    /// holder left: its operation died with the process. Keeping it until its lease ends
    /// would answer every retry `409 in progress` for up to a lease (60 s by default) and then
    /// run the operation anyway; releasing it lets the retry run at once. Either way an
    /// operation that had its effect before the crash but not its completion runs again,
    /// unless its effect commits with its response or the key's outcome is marked unknown
    /// ([`InFlightAtOpen::MarkUnknown`]) for the application to resolve.
    pub fn in_flight_at_open(mut self, policy: InFlightAtOpen) -> Self {
        self.config.in_flight_at_open = policy;
        self
    }

    /// Shorthand for [`in_flight_at_open`](ConfigBuilder::in_flight_at_open): true is
    /// [`InFlightAtOpen::Release`], false [`InFlightAtOpen::KeepLease`] (for tools that open
    /// a file to look at its reservations).
    pub fn release_in_flight_on_open(self, release: bool) -> Self {
        self.in_flight_at_open(if release {
            InFlightAtOpen::Release
        } else {
            InFlightAtOpen::KeepLease
        })
    }

    /// Make a reservation durable before `begin` returns `Execute` (in the `Immediate` mode).
    /// Default: exactly when [`in_flight_at_open`](ConfigBuilder::in_flight_at_open) is not
    /// [`InFlightAtOpen::Release`], so by default not.
    ///
    /// A reservation only matters after a crash if the store keeps in-flight records at open:
    /// a store that releases them (the default) releases a durable reservation there, and a
    /// retry executes as it would had the reservation been lost, so the fsync would buy
    /// nothing. When the store keeps them, a durable reservation makes a retry after a crash
    /// wait for the lease instead of executing at once; false trades that for one fsync less
    /// per first attempt. Not durable, a reservation is committed without an fsync and
    /// becomes durable with the next durable commit; the fencing tokens it used are never
    /// handed out again either way (C8).
    pub fn reservations_durable(mut self, durable: bool) -> Self {
        self.config.reservations_durable = Some(durable);
        self
    }

    /// The most live records one scope may hold (rule C13). Default 10,000,000; range 1 to
    /// 2^40. A first attempt that would add one more gets `BeginError::ScopeFull` (over
    /// HTTP, `429 idempotency_scope_full`); replays, retries and completions of the records it
    /// holds are not affected. A record counts from its reservation until it is removed:
    /// released, purged, or, once expired, by the compactor.
    ///
    /// It bounds what one tenant can make the store keep (a record takes about 1 to 2 KB of
    /// file with a small response, so the default is 10 to 20 GB): the default lets a scope
    /// make 115 new keys a second, sustained, under the default TTL of a day. Set it from
    /// the rate a tenant may sustain times the TTL: lower where tenants are many and
    /// untrusted, higher where one scope is the whole service (a constant scope, or one
    /// credential behind a gateway), where it bounds the store itself.
    pub fn max_records_per_scope(mut self, records: u64) -> Self {
        check!(
            self,
            "max_records_per_scope",
            records,
            (1..=1 << 40).contains(&records),
            "1 to 2^40"
        );
        self.config.max_records_per_scope = records;
        self
    }

    /// Largest number of expired records the compactor removes in one commit.
    /// Default 1000; range 1 to 100 000.
    pub fn compactor_batch(mut self, records: usize) -> Self {
        check!(
            self,
            "compactor_batch",
            records,
            (1..=100_000).contains(&records),
            "1 to 100 000"
        );
        self.config.compactor_batch = records;
        self
    }

    /// Pause between two compactor batches while expired records remain, so foreground work
    /// keeps the writer. Default 10 ms; range 0 to 60 s.
    pub fn compactor_pause(mut self, pause: Duration) -> Self {
        let ok = pause <= Duration::from_secs(60);
        check!(self, "compactor_pause", pause, ok, "0 to 60 s");
        self.config.compactor_pause = pause;
        self
    }

    /// How often the compactor looks for expired records when the last look found none left.
    /// Default 1 s; range 1 ms to 1 h.
    pub fn compactor_interval(mut self, interval: Duration) -> Self {
        let ok = interval >= Duration::from_millis(1) && interval <= Duration::from_secs(3600);
        check!(self, "compactor_interval", interval, ok, "1 ms to 1 h");
        self.config.compactor_interval = interval;
        self
    }

    /// Number of records the in-memory hot index (with [`Durability::Memory`], the memory
    /// engine's maps) is sized for at open, so it does not resize while it warms up.
    /// Default 65 536; range 0 to 2^30.
    pub fn index_capacity(mut self, records: usize) -> Self {
        check!(
            self,
            "index_capacity",
            records,
            records <= 1 << 30,
            "0 to 2^30"
        );
        self.config.index_capacity = records;
        self
    }

    /// Most completed records the hot index holds. Beyond it the oldest stored are dropped
    /// from memory (never from the file): a later retry of such a key is answered by the
    /// writer from the file, as after a restart. In-flight records are always held. This
    /// bounds the index's memory (about 190 bytes a record, so about 200 MiB at the default)
    /// whatever the number of live keys. Not used by [`Durability::Memory`], where memory is
    /// the only copy. Default 1,048,576; range 0 to 2^30.
    pub fn index_max_completed(mut self, records: usize) -> Self {
        check!(
            self,
            "index_max_completed",
            records,
            records <= 1 << 30,
            "0 to 2^30"
        );
        self.config.index_max_completed = records;
        self
    }

    /// Bytes of completed responses kept in memory for replays without a disk read; the
    /// oldest are dropped first beyond it (they are then read from the file). Not used by
    /// [`Durability::Memory`], where memory is the only copy. Default 64 MiB; range 0 to 2^40.
    pub fn response_cache_bytes(mut self, bytes: usize) -> Self {
        check!(
            self,
            "response_cache_bytes",
            bytes,
            bytes as u64 <= 1 << 40,
            "0 to 2^40"
        );
        self.config.response_cache_bytes = bytes;
        self
    }

    /// Most operations the writer puts in one commit. Default 1024; range 1 to 65 536.
    pub fn batch_limit(mut self, ops: usize) -> Self {
        check!(
            self,
            "batch_limit",
            ops,
            (1..=65_536).contains(&ops),
            "1 to 65 536"
        );
        self.config.batch_limit = ops;
        self
    }

    /// Memory for the storage engine's page cache, in bytes. Default 256 MiB; range 1 MiB to
    /// 2^40.
    pub fn page_cache_bytes(mut self, bytes: usize) -> Self {
        let ok = (1 << 20..=1usize << 40).contains(&bytes);
        check!(self, "page_cache_bytes", bytes, ok, "1 MiB to 2^40");
        self.config.page_cache_bytes = bytes;
        self
    }

    /// Check every page's checksum at open (reads the whole file). Default false; a damaged
    /// file is still reported as an error without it, but only this finds damage in pages
    /// that are never read, and damage to the storage engine's own structures could make it
    /// panic again while unwinding a panic, which aborts the process instead of reporting an
    /// error (`docs/reliability.md`, "Not guaranteed"; the two cases found so far are fixed).
    /// Use it for files that may have been damaged at rest.
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.config.verify_on_open = verify;
        self
    }

    /// Acknowledge through a write-ahead log (one small overwrite and one `fdatasync` per
    /// batch) instead of a durable database commit per batch. Default true. The log is a
    /// second file next to the database, named after it with `.wal` appended (for
    /// [`Store::open`](crate::Store::open)), or the second device of
    /// [`Store::open_with_backends`](crate::Store::open_with_backends). Ignored in
    /// [`Durability::Memory`]. What survives a crash is the same either way; see
    /// [`Durability`].
    pub fn write_ahead_log(mut self, enabled: bool) -> Self {
        self.config.write_ahead_log = enabled;
        self
    }

    /// Size of a new write-ahead log file, in bytes; fixed when the file is created (an
    /// existing log keeps its size). Default 64 MiB; range 64 KiB to 64 GiB. A checkpoint starts
    /// when half of it holds entries the database has not made durable, and a batch whose
    /// entry is larger than a quarter of it is committed durably to the database instead. A
    /// new log is written with zeros in full (about 0.2 s for 64 MiB on a disk that writes
    /// 300 MB/s), so that no acknowledgement's sync ever has to allocate blocks.
    pub fn log_capacity(mut self, bytes: u64) -> Self {
        let ok = (MIN_LOG_CAPACITY..=64 << 30).contains(&bytes);
        check!(self, "log_capacity", bytes, ok, "64 KiB to 64 GiB");
        self.config.log_capacity = bytes;
        self
    }

    /// Longest time between two checkpoints (durable database commits, on a thread of their
    /// own, that write the logged changes into the file and let the log be reused) while the
    /// store is written to. Default 1 s; range 1 ms to 1 h. Shorter means less to replay after
    /// a crash and fewer changes held in memory until the checkpoint; longer means fewer
    /// checkpoints, and a key written twice within one interval written to the file once.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        let ok = interval >= Duration::from_millis(1) && interval <= Duration::from_secs(3600);
        check!(self, "checkpoint_interval", interval, ok, "1 ms to 1 h");
        self.config.checkpoint_interval = interval;
        self
    }

    /// How long the writer thread polls its queue for the next operation before it parks.
    /// Default 50 µs; range 0 (park at once) to 1 ms. At low concurrency the next operation
    /// often arrives within this time, and picking it up without a wake-up saves tens of
    /// microseconds per operation; the cost is up to this much CPU time after every batch.
    pub fn writer_spin(mut self, spin: Duration) -> Self {
        let ok = spin <= Duration::from_millis(1);
        check!(self, "writer_spin", spin, ok, "0 to 1 ms");
        self.config.writer_spin = spin;
        self
    }

    /// How long a `begin` or `complete` that waits alone (no other caller of the process
    /// waiting at that moment, blocking or async) watches for its answer before its thread
    /// parks, or its task leaves a waker and returns `Pending`. Default 300 µs; range 0 (park
    /// at once) to 10 ms. A lone caller's answer comes after about one log sync, and a parked
    /// thread or executor worker takes tens of microseconds to wake; the cost is up to this
    /// much CPU time per call (for an async call, of the executor thread polling it), only
    /// while callers are few.
    pub fn caller_spin(mut self, spin: Duration) -> Self {
        let ok = spin <= Duration::from_millis(10);
        check!(self, "caller_spin", spin, ok, "0 to 10 ms");
        self.config.caller_spin = spin;
        self
    }

    /// The clock used for leases and expiry. Default [`SystemClock`]; tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config.clock = Arc::new(clock);
        self
    }

    /// Step mode (`engine/file/step.rs`), for the fuzz targets and tests (`idemstore::__fuzz`).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn step(mut self, checkpoints: Checkpoints) -> Self {
        self.config.step = Some(checkpoints);
        self
    }

    /// The store's name: the `store` label of its metrics (feature `metrics`, see
    /// [`idemstore::metrics`](crate::metrics)), so that two stores of one process report apart.
    /// Default `default`; 1 to 64 bytes of ASCII letters, digits, `_`, `-` and `.`.
    pub fn name(mut self, name: &str) -> Self {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        check!(self, "name", name, ok, "1 to 64 of [A-Za-z0-9_.-]");
        self.config.name = Arc::from(name);
        self
    }

    /// Keeps `checked`'s refusal unless an earlier setting was refused.
    fn keep_first(&mut self, checked: Result<(), ConfigError>) {
        if let (Err(e), None) = (checked, &self.error) {
            self.error = Some(e);
        }
    }

    /// The configuration, or the first setting that was out of range.
    pub fn build(self) -> Result<Config, ConfigError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_refused_with_its_name() {
        let err = Config::builder()
            .lease(Duration::from_millis(1))
            .build()
            .err();
        assert_eq!(err.map(|e| e.setting()), Some("lease"));
        assert!(Config::builder().max_key_len(0).build().is_err());
        assert!(Config::builder().batch_limit(0).build().is_err());
        let err = Config::builder()
            .writer_spin(Duration::from_millis(2))
            .build()
            .err();
        assert_eq!(err.map(|e| e.setting()), Some("writer_spin"));
        assert!(
            Config::builder()
                .writer_spin(Duration::ZERO)
                .build()
                .is_ok()
        );
        assert!(
            Config::builder()
                .caller_spin(Duration::from_millis(11))
                .build()
                .is_err()
        );
        assert!(Config::builder().build().is_ok());
    }

    #[test]
    fn cache_policy_c7() {
        assert!(CachePolicy::SuccessOnly.keeps(201));
        assert!(!CachePolicy::SuccessOnly.keeps(404));
        assert!(CachePolicy::SuccessAndClientErrors.keeps(422));
        assert!(!CachePolicy::SuccessAndClientErrors.keeps(503));
        assert!(CachePolicy::All.keeps(500));
    }
}
