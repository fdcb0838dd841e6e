//! The key journal: each logical operation's idempotency key, durable before it is sent.
//!
//! Why: a key that exists only in memory dies with the process, and a caller that restarts
//! mints a new one for the same operation, which the server runs as a new request: the
//! duplicate idempotency was meant to prevent. The journal is an idemstore [`Store`] of its
//! own (a file by default), used on the caller's side: one record per operation id, in one
//! scope, whose recovery point (rule P1) holds the key and when it was minted.
//!
//! Invariants:
//! - [`KeyJournal::key_for`] returns only a key that is durable (the point is saved, P1)
//!   before it returns, and returns that same key for the operation until it is finished,
//!   in this process or after a restart: a key that has a point is never released to nothing
//!   (P3), so the next `begin` takes the record over and inherits the point (P2).
//! - A key is never handed out for an operation that started longer ago than the server's
//!   window: the server may have forgotten the key and would run the request as new, so the
//!   journal refuses ([`JournalError::Expired`]) instead. Records live for the window plus a
//!   margin after they were last touched, so the refusal is given rather than a fresh key.
//! - A finished operation keeps its key and outcome (a completed record, C3) until it
//!   expires; finishing twice keeps the first outcome.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, millis};
use crate::config::{Config, InFlightAtOpen};
use crate::error::ConfigError;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, Scope};
use crate::rules::response::Response;
use crate::rules::state::State;
use crate::sleep::block_on;
use crate::{Begin, Completion, Store};

use super::error::JournalError;
use super::mint;

/// The one scope of a journal's records.
const SCOPE: &str = "idemstore.client.journal";
/// The name of the recovery point that holds an operation's key.
const POINT: &str = "key";
/// Every journal record is reserved with this fingerprint, so that every call on an
/// operation is "the same request" to the store; a second stable id is told apart by the
/// key in the point, not by a conflict.
const FINGERPRINT: &[u8] = b"idemstore client journal entry, version 1";
/// The first line of a point's payload and of a finished entry's body.
const VERSION: &str = "v1";

/// How a [`KeyJournal`] keeps its keys: the server's idempotency window, and how long past
/// it an entry is kept so that a resume is refused rather than given a fresh key.
#[derive(Clone)]
#[must_use]
pub struct JournalConfig {
    window: Duration,
    margin: Duration,
    wait: Duration,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for JournalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalConfig")
            .field("window", &self.window)
            .field("margin", &self.margin)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Default for JournalConfig {
    /// A 24-hour window: the common one, and idemstore's own default `ttl`.
    fn default() -> Self {
        JournalConfig::new(Duration::from_secs(24 * 3600))
    }
}

impl JournalConfig {
    /// A journal for a server that remembers keys for `window`. The margin defaults to the
    /// window itself: an entry is kept for twice the window after it was last touched.
    pub fn new(window: Duration) -> JournalConfig {
        JournalConfig {
            window,
            margin: window,
            wait: Duration::from_secs(5),
            clock: None,
        }
    }

    /// How long past the window an entry is kept, so that resuming it is refused with
    /// [`JournalError::Expired`] rather than forgotten (then minted afresh). Default: the
    /// window. More than zero (with none, an operation would be forgotten at the very moment
    /// it should be refused), and window plus margin within 366 days.
    pub fn margin(mut self, margin: Duration) -> JournalConfig {
        self.margin = margin;
        self
    }

    /// How long a call waits for another call on the same operation (another thread inside
    /// `key_for`) before it answers [`JournalError::Busy`]. Default 5 s.
    pub fn wait(mut self, wait: Duration) -> JournalConfig {
        self.wait = wait;
        self
    }

    /// The clock for start times, the window and expiry. Default the system clock; tests
    /// pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> JournalConfig {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The server's window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The time to live of the journal's records: window plus margin.
    pub fn ttl(&self) -> Duration {
        self.window.saturating_add(self.margin)
    }

    /// The configuration of the journal's own store: records for window plus margin, and
    /// room for as many as the store takes in its one scope, since they are the caller's own
    /// operations (the default cap, C13, at 48 hours a record, would refuse a client past
    /// about 58 operations a second).
    fn store_config(&self) -> Result<Config, ConfigError> {
        if self.margin.is_zero() {
            return Err(ConfigError {
                setting: "margin",
                value: format!("{:?}", self.margin),
                range: "more than zero",
            });
        }
        let mut builder = Config::builder()
            .ttl(self.ttl())
            .max_records_per_scope(1 << 40)
            .in_flight_at_open(InFlightAtOpen::Release);
        if let Some(clock) = &self.clock {
            builder = builder.clock(SharedClock(Arc::clone(clock)));
        }
        builder.build()
    }
}

/// A clock shared between a journal's configuration and its store.
#[derive(Debug)]
struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now_millis(&self) -> u64 {
        self.0.now_millis()
    }
}

/// The end of one operation's window, on its journal's clock.
#[derive(Debug, Clone)]
pub(crate) struct WindowEnd {
    journal: KeyJournal,
    at_ms: u64,
}

impl WindowEnd {
    /// Whether the window has ended: the server may have forgotten the key.
    pub(crate) fn passed(&self) -> bool {
        self.journal.now() >= self.at_ms
    }

    /// How long until the window ends (zero once it has).
    pub(crate) fn left(&self) -> Duration {
        Duration::from_millis(self.at_ms.saturating_sub(self.journal.now()))
    }
}

/// How a finished operation ended, as [`KeyJournal::finish`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The server answered with `status`; `replayed` when the answer was a replay of an
    /// earlier attempt's response.
    Answered {
        /// The final status.
        status: u16,
        /// Whether the server marked it a replay.
        replayed: bool,
    },
    /// The caller gave the operation up (say, after [`JournalError::Expired`], once it looked
    /// the effect up by other means).
    Abandoned,
}

/// One operation as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    operation: String,
    key: String,
    started_ms: u64,
    outcome: Option<Outcome>,
    fresh: bool,
}

impl JournalEntry {
    /// The operation id.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The idempotency key to send, on every attempt.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When the key was journaled (ms since the Unix epoch, by the journal's clock).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// How the operation ended, once [`finish`](KeyJournal::finish)ed.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// True when this call journaled the key; false when it was already there (a retry, or
    /// a resume after a restart).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }
}

/// The caller's durable record of its operations' idempotency keys.
///
/// ```
/// use idemstore::client::{JournalConfig, KeyJournal, Outcome};
/// # let dir = tempfile::tempdir()?;
/// let journal = KeyJournal::open(dir.path().join("keys.redb"), JournalConfig::default())?;
/// let first = journal.key_for("book-room-101")?; // durable before it returns
/// // ... send with `Idempotency-Key: first.key()`; the process dies; on restart:
/// assert_eq!(journal.pending()?.len(), 1);
/// assert_eq!(journal.key_for("book-room-101")?.key(), first.key()); // the same key
/// journal.finish("book-room-101", Outcome::Answered { status: 201, replayed: false })?;
/// assert!(journal.pending()?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct KeyJournal {
    store: Store,
    scope: Scope,
    window: Duration,
    wait: Duration,
}

impl KeyJournal {
    /// Opens (or creates) a journal file at `path`, durable by default: a key is on disk
    /// before `key_for` returns it.
    pub fn open(
        path: impl AsRef<std::path::Path>,
        config: JournalConfig,
    ) -> Result<KeyJournal, JournalError> {
        let store = Store::open(path, config.store_config().map_err(JournalError::Config)?)
            .map_err(JournalError::Open)?;
        KeyJournal::over(store, &config)
    }

    /// A journal in memory: for tests, and for callers whose keys need not outlive the
    /// process.
    pub fn in_memory(config: JournalConfig) -> Result<KeyJournal, JournalError> {
        let store = Store::in_memory(config.store_config().map_err(JournalError::Config)?)
            .map_err(JournalError::Open)?;
        KeyJournal::over(store, &config)
    }

    /// A journal over a store the caller opened (the store's clock, time to live and cap per
    /// scope apply; `config`'s clock and margin are ignored). The store must keep records
    /// longer than the window, or it would forget keys the server remembers, or forget an
    /// operation at the moment it should refuse it: a time to live of the window or less is
    /// refused. All of the journal's records are in one scope, so the store's
    /// `max_records_per_scope` bounds the operations kept at once.
    pub fn with_store(store: Store, config: &JournalConfig) -> Result<KeyJournal, JournalError> {
        if store.config().ttl() <= config.window {
            return Err(JournalError::Config(ConfigError {
                setting: "ttl",
                value: format!("{:?}", store.config().ttl()),
                range: "more than the journal's window",
            }));
        }
        KeyJournal::over(store, config)
    }

    fn over(store: Store, config: &JournalConfig) -> Result<KeyJournal, JournalError> {
        let scope = Scope::new(SCOPE)
            .map_err(|_| damaged("", "the journal's scope is refused by the store"))?;
        Ok(KeyJournal {
            store,
            scope,
            window: config.window,
            wait: config.wait,
        })
    }

    /// The server's window this journal refuses to resume past.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The key of `operation`: the one journaled for it, or a fresh UUID v4 from the
    /// operating system's CSPRNG, made durable before this returns. Refused with
    /// [`JournalError::Expired`] once the operation started longer ago than the window.
    /// A finished operation's key is returned with its [`outcome`](JournalEntry::outcome).
    pub fn key_for(&self, operation: &str) -> Result<JournalEntry, JournalError> {
        block_on(self.key_for_async(operation))
    }

    /// [`key_for`](KeyJournal::key_for) as a runtime-agnostic future.
    pub async fn key_for_async(&self, operation: &str) -> Result<JournalEntry, JournalError> {
        self.entry(operation, None).await
    }

    /// The key of `operation`, derived from a stable id the caller already has (a queue
    /// message's id, a webhook's event id: `stripe-charge-123`): the key is that id, so the
    /// source's own redelivery gives the same key even without the journal. Journaled as
    /// [`key_for`](KeyJournal::key_for) does, with the same window; another stable id for
    /// the same operation is [`JournalError::Conflict`].
    pub fn key_from(&self, operation: &str, stable_id: &str) -> Result<JournalEntry, JournalError> {
        block_on(self.key_from_async(operation, stable_id))
    }

    /// [`key_from`](KeyJournal::key_from) as a runtime-agnostic future.
    pub async fn key_from_async(
        &self,
        operation: &str,
        stable_id: &str,
    ) -> Result<JournalEntry, JournalError> {
        let derived = Key::new(stable_id).map_err(JournalError::InvalidStableId)?;
        self.entry(operation, Some(derived.as_str())).await
    }

    /// Operations started and not finished, oldest first: what a restarted caller resumes,
    /// each with its key (past the window, `key_for` refuses them: finish them by hand).
    pub fn pending(&self) -> Result<Vec<JournalEntry>, JournalError> {
        let records =
            self.store
                .records_in_state(Some(&self.scope), Some(State::InFlight), usize::MAX)?;
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            // A record without its point is one whose key was never handed out (a call that
            // died between its begin and its point).
            let Some(point) = &record.recovery_point else {
                continue;
            };
            let (key, started_ms) = decode_point(&record.key, point.payload())?;
            pending.push(JournalEntry {
                operation: record.key,
                key,
                started_ms,
                outcome: None,
                fresh: false,
            });
        }
        pending.sort_by(|a, b| (a.started_ms, &a.operation).cmp(&(b.started_ms, &b.operation)));
        Ok(pending)
    }

    /// Records how `operation` ended: it leaves [`pending`](KeyJournal::pending), and
    /// `key_for` returns its key with this outcome until the entry expires. A second
    /// `finish` keeps the first outcome.
    pub fn finish(&self, operation: &str, outcome: Outcome) -> Result<(), JournalError> {
        block_on(self.finish_async(operation, outcome))
    }

    /// [`finish`](KeyJournal::finish) as a runtime-agnostic future.
    pub async fn finish_async(
        &self,
        operation: &str,
        outcome: Outcome,
    ) -> Result<(), JournalError> {
        let key = self.record_key(operation)?;
        match self.begin(operation, &key).await? {
            Begin::Execute(reservation) => {
                let Some(point) = reservation.recovery_point() else {
                    reservation.release_async().await?;
                    return Err(JournalError::NotStarted {
                        operation: operation.to_owned(),
                    });
                };
                let (op_key, started_ms) = decode_point(operation, point.payload())?;
                let body = encode_finished(&op_key, started_ms, outcome);
                match reservation
                    .complete_async(Response::without_headers(200, body))
                    .await?
                {
                    Completion::Stored => Ok(()),
                    _ => Err(damaged(
                        operation,
                        "the journal's store did not keep the outcome",
                    )),
                }
            }
            Begin::Replay(_) => Ok(()),
            other => Err(self.not_answered(operation, other)),
        }
    }

    /// Closes the journal's store, making everything durable; other clones of this journal
    /// fail afterwards.
    pub fn close(self) -> Result<(), JournalError> {
        Ok(self.store.close()?)
    }

    /// The key for `operation`, from its record or new (`derived`, or minted).
    async fn entry(
        &self,
        operation: &str,
        derived: Option<&str>,
    ) -> Result<JournalEntry, JournalError> {
        let record_key = self.record_key(operation)?;
        let (key, started_ms, outcome, fresh) = match self.begin(operation, &record_key).await? {
            Begin::Execute(mut reservation) => match reservation.recovery_point() {
                None => {
                    let key = match derived {
                        Some(d) => d.to_owned(),
                        None => mint::uuid_v4().map_err(|e| JournalError::Random(Box::new(e)))?,
                    };
                    let started_ms = self.now();
                    // Durable before it is returned: from here on, every call gets this key.
                    reservation
                        .save_point_async(POINT, encode_point(&key, started_ms).as_bytes())
                        .await?;
                    // Let go: the record stays in flight with its point and no lease (P3),
                    // so the next call takes it over at once and inherits the point (P2).
                    reservation.release_async().await?;
                    return Ok(JournalEntry {
                        operation: operation.to_owned(),
                        key,
                        started_ms,
                        outcome: None,
                        fresh: true,
                    });
                }
                Some(point) => {
                    let decoded = decode_point(operation, point.payload());
                    reservation.release_async().await?;
                    let (key, started_ms) = decoded?;
                    (key, started_ms, None, false)
                }
            },
            Begin::Replay(response) => {
                let (key, started_ms, outcome) = decode_finished(operation, response.body())?;
                (key, started_ms, Some(outcome), false)
            }
            other => return Err(self.not_answered(operation, other)),
        };
        if let Some(d) = derived
            && d != key
        {
            return Err(JournalError::Conflict {
                operation: operation.to_owned(),
                journaled: key,
            });
        }
        if self.now().saturating_sub(started_ms) >= millis(self.window) {
            return Err(JournalError::Expired {
                operation: operation.to_owned(),
                started_ms,
                window: self.window,
            });
        }
        Ok(JournalEntry {
            operation: operation.to_owned(),
            key,
            started_ms,
            outcome,
            fresh,
        })
    }

    async fn begin(&self, operation: &str, key: &Key) -> Result<Begin, JournalError> {
        let fp = Fingerprint::of_bytes(FINGERPRINT);
        let begun = self
            .store
            .begin_waiting_async(&self.scope, key, &fp, self.wait)
            .await?;
        if matches!(begun, Begin::InProgress { .. }) {
            return Err(JournalError::Busy {
                operation: operation.to_owned(),
            });
        }
        Ok(begun)
    }

    /// The error for an answer other than `Execute` and `Replay`.
    fn not_answered(&self, operation: &str, begun: Begin) -> JournalError {
        match begun {
            Begin::InProgress { .. } => JournalError::Busy {
                operation: operation.to_owned(),
            },
            Begin::Conflict => damaged(operation, "a record the journal did not write"),
            _ => damaged(operation, "a record whose outcome the store marked unknown"),
        }
    }

    fn record_key(&self, operation: &str) -> Result<Key, JournalError> {
        self.store
            .key(operation)
            .map_err(JournalError::InvalidOperation)
    }

    /// When `entry`'s window ends, on the journal's clock: the retry loop sends nothing
    /// after it (K3).
    pub(crate) fn window_end(&self, entry: &JournalEntry) -> WindowEnd {
        WindowEnd {
            journal: self.clone(),
            at_ms: entry.started_ms.saturating_add(millis(self.window)),
        }
    }

    fn now(&self) -> u64 {
        self.store.config().clock.now_millis()
    }
}

fn damaged(operation: &str, reason: &'static str) -> JournalError {
    JournalError::Damaged {
        operation: operation.to_owned(),
        reason,
    }
}

fn encode_point(key: &str, started_ms: u64) -> String {
    format!("{VERSION}\n{key}\n{started_ms}")
}

fn decode_point(operation: &str, payload: &[u8]) -> Result<(String, u64), JournalError> {
    let bad = || damaged(operation, "a key point that does not decode");
    let text = std::str::from_utf8(payload).map_err(|_| bad())?;
    let mut lines = text.split('\n');
    match (lines.next(), lines.next(), lines.next(), lines.next()) {
        (Some(VERSION), Some(key), Some(started), None) if !key.is_empty() => {
            let started = started.parse().map_err(|_| bad())?;
            Ok((key.to_owned(), started))
        }
        _ => Err(bad()),
    }
}

fn encode_finished(key: &str, started_ms: u64, outcome: Outcome) -> String {
    let outcome = match outcome {
        Outcome::Answered { status, replayed } => format!("answered {status} {replayed}"),
        Outcome::Abandoned => "abandoned".to_owned(),
    };
    format!("{}\n{outcome}", encode_point(key, started_ms))
}

fn decode_finished(operation: &str, body: &[u8]) -> Result<(String, u64, Outcome), JournalError> {
    let bad = || damaged(operation, "a finished entry that does not decode");
    let text = std::str::from_utf8(body).map_err(|_| bad())?;
    let (point, outcome) = text.rsplit_once('\n').ok_or_else(bad)?;
    let (key, started_ms) = decode_point(operation, point.as_bytes())?;
    let words: Vec<&str> = outcome.split(' ').collect();
    let outcome = match words.as_slice() {
        ["abandoned"] => Outcome::Abandoned,
        ["answered", status, replayed] => Outcome::Answered {
            status: status.parse().map_err(|_| bad())?,
            replayed: replayed.parse().map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    Ok((key, started_ms, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k1_entries_round_trip_and_damage_is_an_error() {
        let point = encode_point("k-1", 42);
        assert_eq!(
            decode_point("op", point.as_bytes()).unwrap(),
            ("k-1".into(), 42)
        );
        for outcome in [
            Outcome::Abandoned,
            Outcome::Answered {
                status: 201,
                replayed: true,
            },
        ] {
            let body = encode_finished("k-1", 42, outcome);
            assert_eq!(
                decode_finished("op", body.as_bytes()).unwrap(),
                ("k-1".into(), 42, outcome)
            );
        }
        for bad in [
            "",
            "v1",
            "v1\n\n1",
            "v2\nk\n1",
            "v1\nk\nx",
            "v1\nk\n1\nextra",
        ] {
            assert!(matches!(
                decode_point("op", bad.as_bytes()),
                Err(JournalError::Damaged { .. })
            ));
        }
        assert!(decode_finished("op", b"v1\nk\n1\nanswered x true").is_err());
    }
}
