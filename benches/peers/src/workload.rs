//! The three workloads, written once over a small client interface that every system implements.
//!
//! Why: the comparison is only fair if every system runs exactly the same sequence of logical
//! requests; the systems differ only in how they answer `begin` and `complete`. Invariant: a
//! request is counted (and its latency recorded) only if it started after the warm-up and
//! finished before the deadline, and every answer is checked against what the workload expects
//! (a new key must execute, a retry of a completed key must replay); a wrong answer is counted
//! as an error, never as a success.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What `begin` answered, in the terms of the idempotency contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The key was free: the caller executes and must complete.
    Execute,
    /// The key holds a completed response: it was replayed.
    Replay,
    /// The key is reserved by a caller that has not completed yet.
    InProgress,
}

/// Errors of a client, as text: a benchmark only reports them.
pub type ClientResult<T> = Result<T, String>;

/// A client of one system, used by one thread (blocking systems).
pub trait BlockingClient: Send {
    /// Reserve `key`, or report what it holds.
    fn begin(&mut self, key: &str) -> ClientResult<Outcome>;
    /// Store the response for a key this client reserved.
    fn complete(&mut self, key: &str, response: &[u8]) -> ClientResult<()>;
}

/// A client of one system, used by one task (network systems).
pub trait AsyncClient: Send + 'static {
    /// Reserve `key`, or report what it holds.
    fn begin(&mut self, key: &str) -> impl Future<Output = ClientResult<Outcome>> + Send;
    /// Store the response for a key this client reserved.
    fn complete(
        &mut self,
        key: &str,
        response: &[u8],
    ) -> impl Future<Output = ClientResult<()>> + Send;
}

/// The workloads of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Per logical request: begin on a new key, complete with a ~300-byte response, then a
    /// retry that replays. One request = these three calls.
    Flow,
    /// Many clients, few keys: every client begins one of a handful of hot keys; the first
    /// executes and completes, the others get in-progress or a replay. The hot keys change
    /// every `STORM_GENERATION` requests. One request = one begin (plus its complete if it
    /// executed).
    Storm,
    /// 90% of requests are retries of a key this client completed before (replays), 10% are
    /// new keys (begin and complete). One request = one of these.
    Replay90,
}

/// Hot keys at a time in the duplicate storm.
pub const STORM_KEYS: u64 = 4;
/// Requests (over all clients) after which the storm moves to fresh keys.
pub const STORM_GENERATION: u64 = 256;
/// Completed keys each client remembers for its retries in `Replay90`.
const RING: usize = 1024;

impl Workload {
    /// The name used on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Flow => "flow",
            Workload::Storm => "storm",
            Workload::Replay90 => "replay90",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Workload> {
        [Workload::Flow, Workload::Storm, Workload::Replay90]
            .into_iter()
            .find(|w| w.name() == s)
    }
}

/// The ~300-byte response body every completion stores (a JSON object such as a booking API
/// returns).
pub fn response_body() -> Vec<u8> {
    let mut body = String::from(
        r#"{"id":"bk_01HZX3Q9V7M2R8T4K6N0P5W1Y3","status":"confirmed","amount":{"value":12950,"currency":"EUR"},"customer":"cus_8f2d1c","created":"2026-11-24T04:30:00Z","items":[{"sku":"ROOM-DBL","qty":2},{"sku":"BRKFST","qty":2}],"links":{"self":"/v1/bookings/bk_01HZX3Q9V7M2R8T4K6N0P5W1Y3"}"#,
    );
    while body.len() < 299 {
        body.push(' ');
    }
    body.push('}');
    body.into_bytes()
}

/// Settings shared by the clients of one measured cell.
#[derive(Clone)]
pub struct Cell {
    /// The workload.
    pub workload: Workload,
    /// Distinguishes this cell's keys from every other cell's (systems keep state across cells).
    pub prefix: String,
    /// Requests before this instant are not counted.
    pub warm_end: Instant,
    /// Requests after this instant are not counted; clients stop starting new ones.
    pub deadline: Instant,
    /// Requests finished so far over all clients (progress display; storm generations).
    pub progress: Arc<AtomicU64>,
    /// Storm requests started over all clients (picks the hot-key generation).
    pub storm_counter: Arc<AtomicU64>,
    /// The response body.
    pub body: Arc<Vec<u8>>,
}

/// What one client measured.
pub struct Tally {
    /// Latency of each counted request, in nanoseconds.
    pub request: Histogram<u64>,
    /// Latency of each counted replaying `begin` alone, in nanoseconds.
    pub replay: Histogram<u64>,
    /// Counted requests.
    pub requests: u64,
    /// `begin` answers over counted requests.
    pub executes: u64,
    /// Replays over counted requests.
    pub replays: u64,
    /// In-progress answers over counted requests.
    pub in_progress: u64,
    /// Failed calls and unexpected answers (any time).
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            request: new_histogram(),
            replay: new_histogram(),
            requests: 0,
            executes: 0,
            replays: 0,
            in_progress: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// Adds another client's tally.
    pub fn merge(&mut self, other: &Tally) {
        let _ = self.request.add(&other.request);
        let _ = self.replay.add(&other.replay);
        self.requests += other.requests;
        self.executes += other.executes;
        self.replays += other.replays;
        self.in_progress += other.in_progress;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// An empty tally to merge into.
    pub fn empty() -> Tally {
        Tally::new()
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// A histogram of nanoseconds from 100 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 100_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// A small, fast, deterministic random source (xorshift64*), one per client.
pub struct Rng(u64);

impl Rng {
    /// Seeded per client.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The plan of one request: which key, and what the workload expects.
enum Plan {
    /// A new key: begin must execute; complete; then (flow) a retry must replay.
    New { key: String, retry: bool },
    /// A retry of a completed key: begin must replay.
    Retry { key: String },
    /// A storm key: any answer is right; execute must be completed.
    Storm { key: String },
}

/// Per-client state that picks the next request.
pub struct Picker {
    client: usize,
    seq: u64,
    ring: Vec<String>,
    rng: Rng,
}

impl Picker {
    /// The picker of client `client`.
    pub fn new(client: usize) -> Picker {
        Picker {
            client,
            seq: 0,
            ring: Vec::new(),
            rng: Rng::new(client as u64 + 1),
        }
    }

    fn new_key(&mut self, cell: &Cell) -> String {
        self.seq += 1;
        format!("{}-{}-{:08}", cell.prefix, self.client, self.seq)
    }

    fn plan(&mut self, cell: &Cell) -> Plan {
        match cell.workload {
            Workload::Flow => Plan::New {
                key: self.new_key(cell),
                retry: true,
            },
            Workload::Replay90 => {
                if self.ring.is_empty() || self.rng.below(10) == 0 {
                    Plan::New {
                        key: self.new_key(cell),
                        retry: false,
                    }
                } else {
                    let i = self.rng.below(self.ring.len() as u64) as usize;
                    Plan::Retry {
                        key: self.ring[i].clone(),
                    }
                }
            }
            Workload::Storm => {
                let n = cell.storm_counter.fetch_add(1, Ordering::Relaxed);
                let generation = n / STORM_GENERATION;
                let k = self.rng.below(STORM_KEYS);
                Plan::Storm {
                    key: format!("{}-s{generation}-{k}", cell.prefix),
                }
            }
        }
    }

    fn remember(&mut self, key: String) {
        if self.ring.len() < RING {
            self.ring.push(key);
        } else {
            let i = self.rng.below(RING as u64) as usize;
            self.ring[i] = key;
        }
    }
}

/// The outcome of one request, before it is counted.
#[derive(Default)]
struct Done {
    executes: u64,
    replays: u64,
    in_progress: u64,
    replay_ns: Option<u64>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn unexpected(what: &str, key: &str, got: Outcome) -> String {
    format!("{what} on {key}: got {got:?}")
}

/// Counts one request if it lies inside the measured window.
fn count(cell: &Cell, tally: &mut Tally, start: Instant, end: Instant, done: Done) {
    cell.progress.fetch_add(1, Ordering::Relaxed);
    if start < cell.warm_end || end > cell.deadline {
        return;
    }
    tally.requests += 1;
    tally.executes += done.executes;
    tally.replays += done.replays;
    tally.in_progress += done.in_progress;
    let _ = tally.request.record(ns(end - start).max(100));
    if let Some(r) = done.replay_ns {
        let _ = tally.replay.record(r.max(100));
    }
}

/// Runs one client of a blocking system until the cell's deadline.
pub fn run_blocking(client: &mut dyn BlockingClient, cell: &Cell, index: usize) -> Tally {
    let mut tally = Tally::new();
    let mut picker = Picker::new(index);
    while Instant::now() < cell.deadline {
        let start = Instant::now();
        let result = match picker.plan(cell) {
            Plan::New { key, retry } => (|| {
                let mut done = Done::default();
                match client.begin(&key)? {
                    Outcome::Execute => done.executes += 1,
                    other => return Err(unexpected("new key", &key, other)),
                }
                client.complete(&key, &cell.body)?;
                if retry {
                    let t = Instant::now();
                    match client.begin(&key)? {
                        Outcome::Replay => done.replays += 1,
                        other => return Err(unexpected("retry", &key, other)),
                    }
                    done.replay_ns = Some(ns(t.elapsed()));
                } else {
                    picker.remember(key);
                }
                Ok(done)
            })(),
            Plan::Retry { key } => (|| {
                let t = Instant::now();
                match client.begin(&key)? {
                    Outcome::Replay => Ok(Done {
                        replays: 1,
                        replay_ns: Some(ns(t.elapsed())),
                        ..Done::default()
                    }),
                    other => Err(unexpected("retry", &key, other)),
                }
            })(),
            Plan::Storm { key } => (|| {
                let mut done = Done::default();
                match client.begin(&key)? {
                    Outcome::Execute => {
                        done.executes += 1;
                        client.complete(&key, &cell.body)?;
                    }
                    Outcome::Replay => done.replays += 1,
                    Outcome::InProgress => done.in_progress += 1,
                }
                Ok(done)
            })(),
        };
        match result {
            Ok(done) => count(cell, &mut tally, start, Instant::now(), done),
            Err(e) => tally.error(e),
        }
    }
    tally
}

/// Runs one client of a network system until the cell's deadline.
pub async fn run_async<C: AsyncClient>(mut client: C, cell: Cell, index: usize) -> Tally {
    let mut tally = Tally::new();
    let mut picker = Picker::new(index);
    while Instant::now() < cell.deadline {
        let start = Instant::now();
        let result: ClientResult<Done> = match picker.plan(&cell) {
            Plan::New { key, retry } => {
                let mut done = Done::default();
                let mut r = match client.begin(&key).await {
                    Ok(Outcome::Execute) => {
                        done.executes += 1;
                        Ok(())
                    }
                    Ok(other) => Err(unexpected("new key", &key, other)),
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    r = client.complete(&key, &cell.body).await;
                }
                if r.is_ok() {
                    if retry {
                        let t = Instant::now();
                        r = match client.begin(&key).await {
                            Ok(Outcome::Replay) => {
                                done.replays += 1;
                                done.replay_ns = Some(ns(t.elapsed()));
                                Ok(())
                            }
                            Ok(other) => Err(unexpected("retry", &key, other)),
                            Err(e) => Err(e),
                        };
                    } else {
                        picker.remember(key);
                    }
                }
                r.map(|()| done)
            }
            Plan::Retry { key } => {
                let t = Instant::now();
                match client.begin(&key).await {
                    Ok(Outcome::Replay) => Ok(Done {
                        replays: 1,
                        replay_ns: Some(ns(t.elapsed())),
                        ..Done::default()
                    }),
                    Ok(other) => Err(unexpected("retry", &key, other)),
                    Err(e) => Err(e),
                }
            }
            Plan::Storm { key } => {
                let mut done = Done::default();
                match client.begin(&key).await {
                    Ok(Outcome::Execute) => {
                        done.executes += 1;
                        client.complete(&key, &cell.body).await.map(|()| done)
                    }
                    Ok(Outcome::Replay) => {
                        done.replays += 1;
                        Ok(done)
                    }
                    Ok(Outcome::InProgress) => {
                        done.in_progress += 1;
                        Ok(done)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(done) => count(&cell, &mut tally, start, Instant::now(), done),
            Err(e) => {
                tally.error(e);
                // A failing server must not turn the loop into a busy spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    tally
}
