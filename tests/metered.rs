//! The metrics (feature `metrics`), read through a recording recorder: what a store and the
//! HTTP layer record, under the store's name, as things happen and when its gauges are
//! published.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use parking_lot::Mutex;

use idemstore::http::{Contract, IdempotencyLayer};
use idemstore::{Begin, CompleteError, Config, Store};

use crate::http_support::{post, request, send, start_layer};
use crate::support::{execute, fp, key, open_with, resp, scope};

/// One series: its name and its labels, sorted, as `k=v`.
type Series = (String, Vec<String>);

/// What every series recorded so far, kept across snapshots: a snapshot hands counters and
/// histograms over and zeroes them, so the tests, which run at once, take theirs from here.
#[derive(Default)]
struct Seen {
    counters: HashMap<Series, u64>,
    gauges: HashMap<Series, f64>,
    histograms: HashMap<Series, usize>,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

/// The process's recorder, installed once, before any test of this module opens a store.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        snapshotter
    })
}

/// Takes a snapshot into [`SEEN`], and answers `f` on what the store `store` recorded.
fn seen<T>(store: &str, f: impl FnOnce(&Seen) -> T) -> T {
    let mut seen = SEEN.lock();
    let seen = seen.get_or_insert_with(Seen::default);
    for (ck, _, _, value) in snapshotter().snapshot().into_vec() {
        let mut labels: Vec<String> = ck
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let series = (ck.key().name().to_owned(), labels);
        match value {
            DebugValue::Counter(n) => *seen.counters.entry(series).or_default() += n,
            DebugValue::Gauge(v) => {
                // A publish sets every gauge again; a zero is only a snapshot's reset.
                if v.into_inner() != 0.0 || !seen.gauges.contains_key(&series) {
                    seen.gauges.insert(series, v.into_inner());
                }
            }
            DebugValue::Histogram(v) => *seen.histograms.entry(series).or_default() += v.len(),
        }
    }
    let mine = format!("store={store}");
    let keep = |s: &Series| s.1.contains(&mine);
    let filtered = Seen {
        counters: seen
            .counters
            .iter()
            .filter(|(s, _)| keep(s))
            .map(|(s, v)| (s.clone(), *v))
            .collect(),
        gauges: seen
            .gauges
            .iter()
            .filter(|(s, _)| keep(s))
            .map(|(s, v)| (s.clone(), *v))
            .collect(),
        histograms: seen
            .histograms
            .iter()
            .filter(|(s, _)| keep(s))
            .map(|(s, v)| (s.clone(), *v))
            .collect(),
    };
    f(&filtered)
}

impl Seen {
    fn find<V: Copy + Default>(map: &HashMap<Series, V>, name: &str, label: &str) -> V {
        map.iter()
            .find(|((n, labels), _)| {
                n == name && (label.is_empty() || labels.iter().any(|l| l == label))
            })
            .map(|(_, v)| *v)
            .unwrap_or_default()
    }
    fn counter(&self, name: &str, label: &str) -> u64 {
        Seen::find(&self.counters, name, label)
    }
    fn gauge(&self, name: &str, label: &str) -> f64 {
        Seen::find(&self.gauges, name, label)
    }
    fn histogram(&self, name: &str) -> usize {
        Seen::find(&self.histograms, name, "")
    }
}

/// The store's counters and histograms as a file store works: each `begin` answer, its
/// latency, completions, a takeover and the holder it fenced, group commit's batches, the
/// removal of expired records and the checkpoint at close; and its gauges once published.
#[test]
fn m1_a_store_records_its_answers_latencies_and_gauges() {
    snapshotter();
    let name = "metered-file";
    let t = open_with(|c| c.name(name).lease(Duration::from_secs(10)));
    let (s, f) = (scope("acct"), fp("{}"));
    let done = key("done");
    execute(t.store.begin(&s, &done, &f).unwrap())
        .complete(resp(201, "made"))
        .unwrap();
    assert!(matches!(
        t.store.begin(&s, &done, &f).unwrap(),
        Begin::Replay(_)
    ));
    assert!(matches!(
        t.store.begin(&s, &done, &fp("other")).unwrap(),
        Begin::Conflict
    ));
    let held = key("held");
    let stale = execute(t.store.begin(&s, &held, &f).unwrap());
    assert!(matches!(
        t.store.begin(&s, &held, &f).unwrap(),
        Begin::InProgress { .. }
    ));
    t.clock.advance(Duration::from_secs(10));
    let taker = execute(t.store.begin(&s, &held, &f).unwrap());
    assert!(matches!(
        stale.complete(resp(201, "late")),
        Err(CompleteError::Fenced { .. })
    ));

    idemstore::metrics::publish(&t.store);
    seen(name, |m| {
        assert_eq!(m.counter("idemstore_begin_total", "answer=execute"), 3);
        assert_eq!(m.counter("idemstore_begin_total", "answer=replay"), 1);
        assert_eq!(m.counter("idemstore_begin_total", "answer=conflict"), 1);
        assert_eq!(m.counter("idemstore_begin_total", "answer=in_progress"), 1);
        assert_eq!(m.counter("idemstore_lease_takeovers_total", ""), 1);
        assert_eq!(m.counter("idemstore_fenced_total", ""), 1);
        assert_eq!(m.histogram("idemstore_begin_seconds"), 6);
        assert_eq!(m.histogram("idemstore_complete_seconds"), 2);
        assert!(m.histogram("idemstore_commit_ops") >= 1);
        assert!(m.histogram("idemstore_commit_seconds") >= 1);
        assert_eq!(m.gauge("idemstore_records", "state=live"), 2.0);
        assert_eq!(m.gauge("idemstore_records", "state=in_flight"), 1.0);
        assert_eq!(m.gauge("idemstore_records", "state=completed"), 1.0);
        assert!(m.gauge("idemstore_file_bytes", "") > 0.0);
    });

    taker.complete(resp(201, "made")).unwrap();
    t.clock.advance(Duration::from_secs(2 * 86_400));
    assert_eq!(t.store.compact_now().unwrap(), 2);
    assert_eq!(t.store.stats().live_records, Some(0));
    let store = t.store.clone();
    t.store.close().unwrap();
    seen(name, |m| {
        assert_eq!(m.counter("idemstore_expired_removed_total", ""), 2);
        assert!(m.histogram("idemstore_checkpoint_seconds") >= 1);
    });
    drop(store);
}

/// The live and in-flight counts in `Stats` agree with the records, across a restart of a
/// file store (they are read from the file at open) and on the memory engine.
#[test]
fn m2_stats_count_live_and_in_flight_records_on_every_local_engine() {
    let t = open_with(|c| c.release_in_flight_on_open(false));
    let s = scope("acct");
    for i in 0..3 {
        execute(
            t.store
                .begin(&s, &key(&format!("done-{i}")), &fp("{}"))
                .unwrap(),
        )
        .complete(resp(201, "made"))
        .unwrap();
    }
    std::mem::forget(execute(t.store.begin(&s, &key("held"), &fp("{}")).unwrap()));
    let counts = |store: &Store| {
        let stats = store.stats();
        (stats.live_records, stats.in_flight_records)
    };
    assert_eq!(counts(&t.store), (Some(4), Some(1)));
    let t = t.reopen_with(|c| c.release_in_flight_on_open(false));
    assert_eq!(counts(&t.store), (Some(4), Some(1)));

    let memory = crate::support::memory(&t.clock);
    let kept = execute(memory.begin(&s, &key("a"), &fp("{}")).unwrap());
    execute(memory.begin(&s, &key("b"), &fp("{}")).unwrap())
        .complete(resp(201, "made"))
        .unwrap();
    assert_eq!(counts(&memory), (Some(2), Some(1)));
    assert_eq!(memory.stats().file_bytes, None);
    drop(kept);
}

/// The HTTP layer counts every response by what it did, under its store's name.
#[tokio::test]
async fn m3_the_layer_counts_requests_by_outcome() {
    snapshotter();
    let name = "metered-http";
    let store = Store::in_memory(Config::builder().name(name).build().unwrap()).unwrap();
    let layer = IdempotencyLayer::new(store.clone(), Contract::default()).unwrap();
    let app = start_layer(store, layer).await;
    let body = r#"{"room":101}"#;
    for _ in 0..2 {
        send(app.addr, post("/v1/bookings", "metered-key-1", body))
            .await
            .unwrap();
    }
    send(
        app.addr,
        post("/v1/bookings", "metered-key-1", r#"{"room":9}"#),
    )
    .await
    .unwrap();
    send(app.addr, request("POST", "/v1/bookings", None, body))
        .await
        .unwrap();
    send(app.addr, request("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    seen(name, |m| {
        let n = |outcome: &str| {
            m.counter(
                "idemstore_http_requests_total",
                &format!("outcome={outcome}"),
            )
        };
        assert_eq!(
            [
                n("executed"),
                n("replayed"),
                n("conflict"),
                n("refused"),
                n("unguarded")
            ],
            [1, 1, 1, 1, 1]
        );
    });
}
