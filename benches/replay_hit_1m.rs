//! `replay_hit_1m`: `begin` that replays, over 1,000,000 completed records: on the memory
//! engine, and on a file-backed store with the default 64 MiB response cache and with a cache
//! large enough for every response; for random keys and for the 1,000 most recent ones; beside
//! it the same lookup in a plain `HashMap` (the floor on this machine) and the cost of the key's
//! blake3 hash alone. `benches/common/mod.rs` gives the environment (`IDEMSTORE_BENCH_VARIANTS`,
//! `IDEMSTORE_BENCH_RECORDS`, `IDEMSTORE_BENCH_PRELOAD_THREADS`); `docs/benchmarks.md` the
//! results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput};
use idemstore::{Begin, Durability, Fingerprint, Key, Response, Scope, Store};

use common::process::rss_mib;
use common::{
    BUFFERED_DELAY, Plan, SCOPES, config, key, mix, mode_name, open, percentile, response, scopes,
    stats_line,
};

/// A response cache large enough for 1M responses of 300 bytes (286 MiB) with room to spare.
const LARGE_CACHE: usize = 1 << 30;

/// The `replay_hit_1m` criterion group with its settings: the floor, the hash and every
/// store's rows are timed alike.
fn replay_group(c: &mut Criterion) -> BenchmarkGroup<'_, WallTime> {
    let mut group = c.benchmark_group("replay_hit_1m");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group
}

/// Salt of the replay keys.
const REPLAY_SALT: u64 = 0x5e7;

/// The request for replay key `i`: scope index, key, fingerprint. Built fresh for each call, as
/// a server builds them from the request it just parsed, so the caller's own data is in cache
/// and what is timed is the store's work (a pre-built table of 1M keys would add three cache and
/// TLB misses, about 300 ns on this machine, to every call).
fn replay_request(i: usize) -> (usize, Key, Fingerprint) {
    let k = key(REPLAY_SALT, i as u64);
    let fp = Fingerprint::of_bytes(k.as_str().as_bytes());
    (i % SCOPES, k, fp)
}

/// Completes keys `0..n` through `begin` + `complete` from `threads` threads, so the writer's
/// group commit batches them; returns the wall time.
fn preload(store: &Store, scopes: &[Scope], n: usize, threads: usize) -> Duration {
    const CHUNK: usize = 64;
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let first = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if first >= n {
                        break;
                    }
                    for i in first..(first + CHUNK).min(n) {
                        let (s, k, fp) = replay_request(i);
                        match store.begin(&scopes[s], &k, &fp).unwrap() {
                            Begin::Execute(r) => {
                                r.complete(response(i as u64)).unwrap();
                            }
                            other => panic!("preload key {i} gave {other:?}"),
                        }
                    }
                }
            });
        }
    });
    start.elapsed()
}

/// The floor: what the same lookup costs in the simplest map that could answer it, a
/// `std::collections::HashMap` keyed by the same blake3 hash, holding the same 1M distinct
/// 300-byte responses, with the same pass-through bucket hash.
fn replay_floor(c: &mut Criterion, scopes: &[Scope], n: usize) {
    #[derive(Default, Clone, Copy)]
    struct PassThrough;
    #[derive(Default)]
    struct PassThroughHasher(u64);
    impl std::hash::Hasher for PassThroughHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            let mut b = [0u8; 8];
            let take = bytes.len().min(8);
            b[..take].copy_from_slice(&bytes[..take]);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    impl std::hash::BuildHasher for PassThrough {
        type Hasher = PassThroughHasher;
        fn build_hasher(&self) -> PassThroughHasher {
            PassThroughHasher(0)
        }
    }
    fn hash(scope: &Scope, key: &Key) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&(scope.as_str().len() as u32).to_le_bytes());
        h.update(scope.as_str().as_bytes());
        h.update(&(key.as_str().len() as u32).to_le_bytes());
        h.update(key.as_str().as_bytes());
        *h.finalize().as_bytes()
    }
    let t = Instant::now();
    let mut map: std::collections::HashMap<[u8; 32], (Fingerprint, Response), PassThrough> =
        std::collections::HashMap::with_capacity_and_hasher(n, PassThrough);
    for i in 0..n {
        let (s, k, fp) = replay_request(i);
        map.insert(hash(&scopes[s], &k), (fp, response(i as u64)));
    }
    println!(
        "PRELOAD replay_hit_1m/floor_std_hashmap: {n} entries in {:.1}s, rss {:.0} MiB",
        t.elapsed().as_secs_f64(),
        rss_mib()
    );
    let mut group = replay_group(c);
    // The CPU cost of naming the record: blake3 over the framed scope and key, in cache.
    let (s0, k0, _) = replay_request(0);
    group.bench_function("parts/key_hash_blake3", |b| {
        b.iter(|| hash(black_box(&scopes[s0]), black_box(&k0)));
    });
    for (name, keys) in [
        ("floor_std_hashmap", 0..n),
        ("floor_std_hashmap/hot_1k", n.saturating_sub(1000)..n),
    ] {
        let span = (keys.end - keys.start) as u64;
        let mut rng = 3u64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    rng = mix(rng);
                    replay_request(keys.start + (rng % span) as usize)
                },
                |(s, k, fp)| {
                    let (stored, r) = map.get(&hash(&scopes[s], &k)).unwrap();
                    assert!(*stored == fp);
                    (k, r.clone())
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// One `begin` that must replay; returns the key and response so that dropping them is not
/// timed.
fn replay_begin(
    store: &Store,
    scopes: &[Scope],
    req: (usize, Key, Fingerprint),
) -> (Key, Response) {
    let (s, k, fp) = req;
    match store.begin(&scopes[s], &k, &fp).unwrap() {
        Begin::Replay(r) => (k, r),
        other => panic!("key {k:?} gave {other:?}"),
    }
}

/// Times replays of random keys from `keys`: a criterion benchmark, then 200,000 calls timed one
/// by one for the per-call percentiles (the timer pair, about 30 ns here, is included).
fn replay_measure(
    c: &mut Criterion,
    plan: &Plan,
    store: &Store,
    scopes: &[Scope],
    label: &str,
    keys: std::ops::Range<usize>,
) {
    let span = (keys.end - keys.start) as u64;
    let pick = |rng: &mut u64| {
        *rng = mix(*rng);
        keys.start + (*rng % span) as usize
    };
    let mut group = replay_group(c);
    let mut rng = 7u64;
    group.bench_function(label, |b| {
        b.iter_batched(
            || replay_request(pick(&mut rng)),
            |req| replay_begin(store, scopes, req),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    let calls = if plan.quick { 1000 } else { 200_000 };
    let mut lat = Vec::with_capacity(calls);
    let mut rng = 11u64;
    for _ in 0..calls {
        let req = replay_request(pick(&mut rng));
        let t = Instant::now();
        let out = replay_begin(store, scopes, req);
        lat.push(t.elapsed().as_nanos() as u64);
        drop(black_box(out));
    }
    lat.sort_unstable();
    let p50 = percentile(&lat, 0.5);
    println!(
        "LAT replay_hit_1m/{label} (ns, each call timed): n={} p50={} p90={} p99={} p99.9={} \
         max={}",
        lat.len(),
        p50,
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or(0)
    );
    if !plan.quick {
        println!(
            "TARGET replay_hit_1m/{label}: per-call p50 {p50} ns vs target < 300 ns: {}",
            if p50 < 300 { "met" } else { "MISSED" }
        );
    }
}

fn replay_hit_1m(c: &mut Criterion, plan: &Plan) {
    let dir = tempfile::tempdir().unwrap();
    let n = plan.replay_records;
    let scopes = scopes();
    replay_floor(c, &scopes, n);

    // The file-backed stores are filled in the buffered mode: `begin`'s replay path does not
    // depend on the durability mode (it never reaches the writer), and the buffered preload is
    // much shorter than a durable one. `Memory` replays from the memory engine, which keeps
    // every response whatever the cache setting; a file-backed store replays from the hot index,
    // and reads responses the cache does not hold from the file.
    let variants: [(&str, Durability, usize); 3] = [
        ("memory/engine", Durability::Memory, 64 << 20),
        (
            "file/cache_1gib_all_cached",
            Durability::Buffered {
                max_delay: BUFFERED_DELAY,
            },
            LARGE_CACHE,
        ),
        (
            "file/cache_64mib_default",
            Durability::Buffered {
                max_delay: BUFFERED_DELAY,
            },
            64 << 20,
        ),
    ];

    for (label, durability, cache) in variants {
        if !plan.wants_variant(label) {
            continue;
        }
        let config = config(durability)
            .index_capacity(n + n / 4)
            .response_cache_bytes(cache)
            .build()
            .unwrap();
        let store = open(dir.path(), &label.replace('/', "_"), config);
        let rss_before = rss_mib();
        let took = preload(&store, &scopes, n, plan.preload_threads);
        store.flush().unwrap();
        let stats = store.stats();
        println!(
            "PRELOAD replay_hit_1m/{label}: {n} begin+complete pairs from {} threads ({}) in \
             {:.1}s = {:.0} pairs/s; rss {:.0} -> {:.0} MiB; index_entries={} commits={} \
             mean_batch={:.1} mean_commit={:?}",
            plan.preload_threads,
            mode_name(durability),
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            rss_before,
            rss_mib(),
            stats.index_entries,
            stats.commits,
            stats.mean_batch(),
            stats.mean_commit_latency(),
        );
        if durability != Durability::Memory {
            let path = dir.path().join(format!("{}.redb", label.replace('/', "_")));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!(
                "PRELOAD replay_hit_1m/{label}: file {:.0} MiB",
                len as f64 / (1 << 20) as f64
            );
        }

        // Every call must be a replay; check a few before timing.
        for i in [0, n / 2, n - 1] {
            replay_begin(&store, &scopes, replay_request(i));
        }
        let before = store.stats();
        replay_measure(c, plan, &store, &scopes, label, 0..n);
        // The retry-storm case: replays of the 1,000 most recently completed keys, whose index
        // entries and responses stay in the CPU caches.
        let hot = n.saturating_sub(1000)..n;
        replay_measure(c, plan, &store, &scopes, &format!("{label}/hot_1k"), hot);
        println!(
            "{}",
            stats_line(&format!("replay_hit_1m/{label}"), &before, &store.stats())
        );
        let started = Instant::now();
        store.close().unwrap();
        println!(
            "PRELOAD replay_hit_1m/{label}: close took {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    common::main("replay_hit_1m", replay_hit_1m);
}
