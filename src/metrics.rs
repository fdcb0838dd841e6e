//! The store's metrics (feature `metrics`), through the [`metrics`](https://docs.rs/metrics)
//! facade, so that any exporter (Prometheus, OpenTelemetry, StatsD) receives them.
//!
//! Why: an operator graphs and alerts on rates and latencies, which [`Stats`] (counters since
//! open, read on demand) does not give an exporter by itself. Invariants: every metric carries
//! the label `store` ([`ConfigBuilder::name`](crate::ConfigBuilder::name)) and no scope, key or
//! body; the handles a store records through are registered once, when it opens, so the
//! request path builds no label and allocates nothing; without the feature every call here
//! compiles to nothing.
//!
//! # What is recorded
//!
//! Counters and histograms as things happen:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `idemstore_begin_total` | counter | `answer` | `begin` answers: `execute`, `replay`, `in_progress`, `conflict`, `outcome_unknown` |
//! | `idemstore_begin_seconds` | histogram | | a `begin`'s latency as its caller saw it (the acknowledgement of a reservation) |
//! | `idemstore_complete_seconds` | histogram | | a `complete`'s latency as its caller saw it (the acknowledgement of a stored response) |
//! | `idemstore_lease_takeovers_total` | counter | | leases taken over (C8) |
//! | `idemstore_fenced_total` | counter | | stale holders refused (C8) |
//! | `idemstore_expired_removed_total` | counter | | expired records removed (C9) |
//! | `idemstore_commit_ops` | histogram | | operations per commit of the file engine's writer (group commit's batch size) |
//! | `idemstore_commit_seconds` | histogram | | the writer's commit time |
//! | `idemstore_checkpoint_seconds` | histogram | | checkpoint time (write-ahead log into the database file) |
//! | `idemstore_http_requests_total` | counter | `outcome` | what the HTTP layer did, by `http::Outcome::as_str` (feature `http`) |
//!
//! Gauges, set by `publish` (feature `metrics`) from [`Store::stats`](crate::Store::stats), which an exporter calls
//! before it renders (or on a timer):
//!
//! | name | labels | what |
//! |---|---|---|
//! | `idemstore_records` | `state`: `live`, `in_flight`, `completed` | records held now (`completed` counts every live record not in flight: outcome-unknown ones, and expired ones the compactor has not removed yet, included); not set on Redis, which keeps no count |
//! | `idemstore_file_bytes` | | the database file's size (a store opened by path) |
//! | `idemstore_log_bytes_total` | | bytes appended to the write-ahead log since open |
//! | `idemstore_index_entries` | | entries in the hot index (records on the memory engine) |
//! | `idemstore_waiting` | | retries waiting for a key in flight |
//!
//! Install the recorder (the exporter) before opening the store: a store registers its handles
//! when it opens, and handles registered before any recorder record nothing.
//!
//! ```
//! # #[cfg(feature = "metrics")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use idemstore::{Config, Store};
//!
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?, say, first.
//! let store = Store::in_memory(Config::builder().name("bookings").build()?)?;
//! // In the scrape handler, before rendering:
//! idemstore::metrics::publish(&store);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "metrics"))]
//! # fn main() {}
//! ```

use std::time::Duration;

#[cfg(doc)]
use crate::Stats;
use crate::backend::Claim;

/// Publishes `store`'s gauges (the table in the [module](self) documentation) from its
/// [`Stats`] to the installed recorder.
#[cfg(feature = "metrics")]
pub fn publish(store: &crate::Store) {
    let stats = store.stats();
    let name = store.config().name().to_owned();
    let gauge = |metric: &'static str, value: u64| {
        metrics::gauge!(metric, "store" => name.clone()).set(value as f64);
    };
    if let (Some(live), Some(in_flight)) = (stats.live_records, stats.in_flight_records) {
        for (state, n) in [
            ("live", live),
            ("in_flight", in_flight),
            ("completed", live.saturating_sub(in_flight)),
        ] {
            metrics::gauge!("idemstore_records", "store" => name.clone(), "state" => state)
                .set(n as f64);
        }
    }
    if let Some(bytes) = stats.file_bytes {
        gauge("idemstore_file_bytes", bytes);
    }
    gauge("idemstore_log_bytes_total", stats.log_bytes);
    gauge("idemstore_index_entries", stats.index_entries);
    gauge("idemstore_waiting", stats.waiting);
}

/// When a caller asked, for a latency histogram: it reads the clock only when the store's
/// histograms go to a recorder (never without the feature).
#[derive(Clone, Copy)]
pub(crate) struct Stopwatch(#[cfg(feature = "metrics")] Option<std::time::Instant>);

impl Stopwatch {
    pub(crate) fn start(metrics: &Metrics) -> Stopwatch {
        #[cfg(feature = "metrics")]
        return Stopwatch(metrics.timed.then(std::time::Instant::now));
        #[cfg(not(feature = "metrics"))]
        {
            let _ = metrics;
            Stopwatch()
        }
    }

    #[cfg(feature = "metrics")]
    fn elapsed(self) -> Option<Duration> {
        self.0.map(|t| t.elapsed())
    }
}

/// The handles one store records through, registered when it opens.
#[cfg(feature = "metrics")]
pub(crate) struct Metrics {
    /// By [`Claim`] variant, in the order of [`answer_index`].
    begin: [metrics::Counter; 5],
    begin_seconds: metrics::Histogram,
    complete_seconds: metrics::Histogram,
    takeovers: metrics::Counter,
    fenced: metrics::Counter,
    expired: metrics::Counter,
    commit_ops: metrics::Histogram,
    commit_seconds: metrics::Histogram,
    checkpoint_seconds: metrics::Histogram,
    /// Whether a recorder took the handles: without one, latencies are not timed at all, so a
    /// build with the feature and nothing installed reads no clock for them.
    timed: bool,
    /// By [`Outcome`](crate::http::Outcome), in the order of `Outcome::ALL`.
    #[cfg(feature = "http")]
    http: Vec<metrics::Counter>,
}

/// Without the feature: nothing to hold, nothing to record.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Metrics;

#[cfg(feature = "metrics")]
const ANSWERS: [&str; 5] = [
    "execute",
    "replay",
    "in_progress",
    "conflict",
    "outcome_unknown",
];

#[cfg(feature = "metrics")]
fn answer_index(claim: &Claim) -> usize {
    match claim {
        Claim::Execute { .. } => 0,
        Claim::Replay(_) => 1,
        Claim::InProgress { .. } => 2,
        Claim::Conflict => 3,
        Claim::OutcomeUnknown => 4,
    }
}

impl Metrics {
    /// Registers the handles of the store named `store` with the recorder installed now.
    #[cfg(feature = "metrics")]
    pub(crate) fn new(store: &str) -> Metrics {
        let s = || store.to_owned();
        // The facade's stand-in when nothing is installed is a recorder of size zero; one that
        // keeps anything has state. (A recorder of size zero is taken for none: its handles
        // still get every count, but no latency.)
        let timed = metrics::with_recorder(|r| std::mem::size_of_val(r) != 0);
        Metrics {
            timed,
            begin: ANSWERS
                .map(|a| metrics::counter!("idemstore_begin_total", "store" => s(), "answer" => a)),
            begin_seconds: metrics::histogram!("idemstore_begin_seconds", "store" => s()),
            complete_seconds: metrics::histogram!("idemstore_complete_seconds", "store" => s()),
            takeovers: metrics::counter!("idemstore_lease_takeovers_total", "store" => s()),
            fenced: metrics::counter!("idemstore_fenced_total", "store" => s()),
            expired: metrics::counter!("idemstore_expired_removed_total", "store" => s()),
            commit_ops: metrics::histogram!("idemstore_commit_ops", "store" => s()),
            commit_seconds: metrics::histogram!("idemstore_commit_seconds", "store" => s()),
            checkpoint_seconds: metrics::histogram!("idemstore_checkpoint_seconds", "store" => s()),
            #[cfg(feature = "http")]
            http: crate::http::Outcome::ALL
                .iter()
                .map(|o| {
                    metrics::counter!("idemstore_http_requests_total", "store" => s(), "outcome" => o.as_str())
                })
                .collect(),
        }
    }

    /// Without the feature: nothing.
    #[cfg(not(feature = "metrics"))]
    pub(crate) fn new(store: &str) -> Metrics {
        let _ = store;
        Metrics
    }

    /// A `begin` answered `claim` to a caller who asked at `asked`.
    pub(crate) fn begin(&self, claim: &Claim, asked: Stopwatch) {
        #[cfg(feature = "metrics")]
        {
            self.begin[answer_index(claim)].increment(1);
            if let Some(took) = asked.elapsed() {
                self.begin_seconds.record(took);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (claim, asked);
    }

    /// A `complete` was answered to a caller who asked at `asked`.
    pub(crate) fn completed(&self, asked: Stopwatch) {
        #[cfg(feature = "metrics")]
        if let Some(took) = asked.elapsed() {
            self.complete_seconds.record(took);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = asked;
    }

    /// A lease was taken over (C8).
    pub(crate) fn takeover(&self) {
        #[cfg(feature = "metrics")]
        self.takeovers.increment(1);
    }

    /// A stale holder was refused (C8).
    pub(crate) fn fenced(&self) {
        #[cfg(feature = "metrics")]
        self.fenced.increment(1);
    }

    /// `n` expired records were removed (C9).
    pub(crate) fn expired(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.expired.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    /// The writer committed `ops` operations in `took`.
    pub(crate) fn commit(&self, ops: u64, took: Duration) {
        #[cfg(feature = "metrics")]
        {
            self.commit_ops.record(ops as f64);
            self.commit_seconds.record(took);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (ops, took);
    }

    /// A checkpoint took `took`.
    pub(crate) fn checkpoint(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.checkpoint_seconds.record(took);
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    /// The HTTP layer answered a request with `outcome`.
    #[cfg(feature = "http")]
    pub(crate) fn answered(&self, outcome: crate::http::Outcome) {
        #[cfg(feature = "metrics")]
        if let Some(c) = crate::http::Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.http.get(i))
        {
            c.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }
}
