//! Criterion benchmarks of the store; `docs/benchmarks.md` gives the method and the results.
//!
//! Run with `cargo bench --bench store` (about six minutes). The groups, in the order they run:
//!
//! - `disk`: not a criterion benchmark: a raw 4 KiB write + `fdatasync` loop (1000 times, same
//!   block and appending) in the temp directory, run first and again last, so the store's
//!   durable figures can be read against the disk's physical limit in the same session;
//! - `fingerprint_1k_json`: `Fingerprint::of_request` over a 1 KiB JSON body, and the same bytes
//!   as `text/plain`;
//! - `begin_new_key`: `begin` on a never-seen key, per durability mode;
//! - `begin_complete_threads`: `begin` on a new key then `complete` with a 300-byte response,
//!   1, 16 and 64 threads, per durability mode, as pairs per second (plus the default mode with
//!   `reservations_durable(false)` at 64 threads);
//! - `replay_hit_1m`: `begin` that replays, over 1,000,000 completed records: on the memory
//!   engine, and on a file-backed store with the default 64 MiB response cache and with a cache
//!   large enough for every response; for random keys and for the 1,000 most recent ones;
//!   beside it the same lookup in a plain `HashMap` (the floor on this machine) and the cost of
//!   the key's blake3 hash alone.
//!
//! - `open_full_log`: not a criterion benchmark: the time from `Store::open` to
//!   the first answered `begin` when the write-ahead log holds about 30 MiB of entries to
//!   replay.
//!
//! Environment:
//! - `IDEMSTORE_BENCH=disk,replay_hit_1m` runs only the named groups (the criterion name filter
//!   still applies inside them, but cannot skip the 1M-record preload);
//! - `IDEMSTORE_BENCH_VARIANTS=memory,file/cache_1gib` runs only the replay stores whose
//!   label contains one of the names (each file-backed one takes about 35 s to fill);
//! - `IDEMSTORE_BENCH_RECORDS` and `IDEMSTORE_BENCH_PRELOAD_THREADS` change the replay store's
//!   size and the number of preloading threads.
//!
//! Under `cargo test --benches` (criterion's test mode) every size is cut down so the run takes
//! seconds. Lines starting with `DISK`, `PRELOAD`, `STATS`, `IO`, `LAT` and `TARGET` are the
//! figures that are not criterion's own; the document quotes them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use idemstore::{Begin, Config, Durability, Fingerprint, Key, Response, Scope, Stats, Store};

/// Encoded size of every stored response (`Response::encoded_len`).
const RESPONSE_BYTES: usize = 300;
/// Number of distinct scopes the keys are spread over.
const SCOPES: usize = 1000;
/// The buffered mode's flush delay.
const BUFFERED_DELAY: Duration = Duration::from_millis(2);
/// A response cache large enough for 1M responses of 300 bytes (286 MiB) with room to spare.
const LARGE_CACHE: usize = 1 << 30;

/// Sizes for a real run, or for criterion's test mode.
struct Plan {
    quick: bool,
    replay_records: usize,
    preload_threads: usize,
    probe_iters: usize,
    thread_counts: &'static [usize],
    groups: Option<Vec<String>>,
    variants: Option<Vec<String>>,
}

impl Plan {
    fn from_env() -> Plan {
        let args: Vec<String> = std::env::args().collect();
        let benching = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
        let list = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        };
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        let groups = list("IDEMSTORE_BENCH");
        let variants = list("IDEMSTORE_BENCH_VARIANTS");
        let mut plan = if benching {
            Plan {
                quick: false,
                replay_records: 1_000_000,
                preload_threads: 64,
                probe_iters: 1000,
                thread_counts: &[1, 16, 64],
                groups,
                variants,
            }
        } else {
            Plan {
                quick: true,
                replay_records: 2_000,
                preload_threads: 4,
                probe_iters: 20,
                thread_counts: &[1, 4],
                groups,
                variants,
            }
        };
        if let Some(n) = number("IDEMSTORE_BENCH_RECORDS") {
            plan.replay_records = n;
        }
        if let Some(n) = number("IDEMSTORE_BENCH_PRELOAD_THREADS") {
            plan.preload_threads = n;
        }
        plan
    }

    /// Whether to run the replay store `label`.
    fn wants_variant(&self, label: &str) -> bool {
        self.variants
            .as_ref()
            .is_none_or(|v| v.iter().any(|name| label.contains(name.as_str())))
    }

    fn wants(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|g| g.iter().any(|name| name == group))
    }
}

// ---------------------------------------------------------------------------------------------
// Workload data.

/// splitmix64: a fast, well-mixed sequence for key names and random picks.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A UUID-shaped key (36 bytes), distinct for each `n` within one `salt`.
fn key(salt: u64, n: u64) -> Key {
    let a = mix(n ^ salt.rotate_left(32));
    let b = mix(a ^ n);
    let s = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n as u32,
        (a >> 48) as u16,
        (a >> 36) & 0xfff,
        (a >> 24) & 0xfff,
        b & 0xffff_ffff_ffff
    );
    Key::new(s).unwrap()
}

fn scopes() -> Vec<Scope> {
    (0..SCOPES)
        .map(|i| Scope::new(format!("acct_{i:04}")).unwrap())
        .collect()
}

/// A response whose encoded size is exactly [`RESPONSE_BYTES`], with a body unique to `n`.
fn response(n: u64) -> Response {
    const FIXED: usize = 5 + (2 + 12 + 4 + 16) + 4; // status/count, one header, body length
    let mut body = format!("{{\"id\":\"bk_{n:016x}\",\"status\":\"confirmed\",\"note\":\"");
    let pad = RESPONSE_BYTES - FIXED - body.len() - 2;
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    let r = Response::new(201, [("content-type", "application/json")], body);
    debug_assert_eq!(r.encoded_len(), RESPONSE_BYTES);
    r
}

/// A ~1 KiB JSON request body with nesting, arrays, numbers, escapes and unicode.
fn json_body() -> Vec<u8> {
    let mut items = String::new();
    for i in 0..6 {
        if i > 0 {
            items.push(',');
        }
        items.push_str(&format!(
            r#"{{"sku":"SKU-{i:05}","qty":{q},"unit_price":{p}.{c:02},"tags":["a","b\u00e9",null,true],"meta":{{"z":1,"a":[1.0,2e3,-0.5]}}}}"#,
            q = i + 1,
            p = 10 + i * 7,
            c = i * 13 % 100
        ));
    }
    let body = format!(
        r#"{{"customer":{{"id":"cus_8f2k1x","email":"ann.o\"neil@example.com","name":"Ann O'Neil"}},"currency":"EUR","items":[{items}],"shipping":{{"method":"express","address":{{"line1":"12 Rue de l\u2019Église","city":"Lyon","zip":"69002","country":"FR"}}}},"start":"2026-05-20T15:00:00Z","notes":"leave at door \t thanks"}}"#
    );
    body.into_bytes()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// This process's write counters from `/proc/self/io`: bytes passed to `write`-family calls,
/// the number of those calls, and bytes sent to the storage layer.
#[derive(Clone, Copy, Default)]
struct Io {
    wchar: u64,
    syscw: u64,
    write_bytes: u64,
}

fn io() -> Io {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Io {
        wchar: field("wchar:"),
        syscw: field("syscw:"),
        write_bytes: field("write_bytes:"),
    }
}

/// Write volume per durable commit between two snapshots.
fn io_line(label: &str, before: (&Stats, Io), after: (&Stats, Io)) -> String {
    let commits = (after.0.commits - before.0.commits).max(1);
    let durable = (after.0.durable_commits - before.0.durable_commits).max(1);
    let wchar = after.1.wchar - before.1.wchar;
    format!(
        "IO {label}: written {:.1} MiB in {} write calls; per commit {:.1} KiB and {:.1} calls; \
         per durable commit {:.1} KiB; sent to storage {:.1} MiB",
        wchar as f64 / (1 << 20) as f64,
        after.1.syscw - before.1.syscw,
        wchar as f64 / commits as f64 / 1024.0,
        (after.1.syscw - before.1.syscw) as f64 / commits as f64,
        wchar as f64 / durable as f64 / 1024.0,
        (after.1.write_bytes - before.1.write_bytes) as f64 / (1 << 20) as f64,
    )
}

fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::Immediate => "immediate",
        Durability::Buffered { .. } => "buffered_2ms",
        Durability::Memory => "memory",
        _ => "other",
    }
}

/// Opens a store in `dir` (ignored for the memory mode).
fn open(dir: &Path, name: &str, config: Config) -> Store {
    Store::open(dir.join(format!("{name}.redb")), config).unwrap()
}

fn config(durability: Durability) -> idemstore::ConfigBuilder {
    Config::builder().durability(durability)
}

// ---------------------------------------------------------------------------------------------
// Reporting helpers.

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// `p50/p90/p99/max` of nanosecond samples, in microseconds.
fn latency_line(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    format!(
        "n={} p50={:.1}us p90={:.1}us p99={:.1}us max={:.1}us",
        ns.len(),
        percentile(&ns, 0.50) as f64 / 1e3,
        percentile(&ns, 0.90) as f64 / 1e3,
        percentile(&ns, 0.99) as f64 / 1e3,
        ns.last().copied().unwrap_or(0) as f64 / 1e3
    )
}

/// The writer's figures between two snapshots.
fn stats_line(label: &str, before: &Stats, after: &Stats) -> String {
    let commits = after.commits - before.commits;
    let ops = after.batched_ops - before.batched_ops;
    let micros = after.commit_micros_total - before.commit_micros_total;
    format!(
        "STATS {label}: commits={commits} durable_commits={} ops={ops} mean_batch={:.1} \
         mean_commit={:.0}us max_batch(since open)={} max_commit(since open)={:.1}ms \
         executes={} completions={} replays={} answered_from_index={} index_entries={} \
         log_syncs={} log_bytes={} checkpoints={} max_checkpoint(since open)={:.0}ms \
         log_full_waits={}",
        after.durable_commits - before.durable_commits,
        if commits == 0 {
            0.0
        } else {
            ops as f64 / commits as f64
        },
        if commits == 0 {
            0.0
        } else {
            micros as f64 / commits as f64
        },
        after.max_batch,
        after.commit_micros_max as f64 / 1e3,
        after.executes - before.executes,
        after.completions - before.completions,
        after.replays - before.replays,
        after.answered_from_index - before.answered_from_index,
        after.index_entries,
        after.log_syncs - before.log_syncs,
        after.log_bytes - before.log_bytes,
        after.checkpoints - before.checkpoints,
        after.checkpoint_micros_max as f64 / 1e3,
        after.log_full_waits - before.log_full_waits,
    )
}

// ---------------------------------------------------------------------------------------------
// disk: raw write + fdatasync.

fn disk_probe(plan: &Plan, when: &str) {
    let dir = tempfile::tempdir().unwrap();
    let block = vec![0x5au8; 4096];
    for variant in ["same_block", "append"] {
        let path = dir.path().join(format!("probe_{variant}"));
        let file: File = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&block, 0).unwrap();
        file.sync_all().unwrap();
        let mut lat = Vec::with_capacity(plan.probe_iters);
        let start = Instant::now();
        for i in 0..plan.probe_iters {
            let t = Instant::now();
            let offset = if variant == "append" {
                (i as u64 + 1) * 4096
            } else {
                0
            };
            file.write_all_at(&block, offset).unwrap();
            file.sync_data().unwrap();
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let total = start.elapsed();
        println!(
            "DISK {when} 4KiB write+fdatasync {variant}: {:.0} ops/s, {}",
            plan.probe_iters as f64 / total.as_secs_f64(),
            latency_line(lat)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// begin_new_key.

fn begin_new_key(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes();
    let fp = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), b"{}");
    let mut group = c.benchmark_group("begin_new_key");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    let modes = [
        Durability::Memory,
        Durability::Buffered {
            max_delay: BUFFERED_DELAY,
        },
        Durability::Immediate,
    ];
    for (m, durability) in modes.into_iter().enumerate() {
        let name = mode_name(durability);
        let store = open(
            dir.path(),
            &format!("begin_{name}"),
            config(durability).build().unwrap(),
        );
        let counter = AtomicU64::new(0);
        let salt = 0xb0 + m as u64;
        let before = store.stats();
        let io_before = io();
        let mut lat = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let keys: Vec<Key> = (0..iters)
                    .map(|_| key(salt, counter.fetch_add(1, Ordering::Relaxed)))
                    .collect();
                let mut held = Vec::with_capacity(keys.len());
                let start = Instant::now();
                for (i, k) in keys.iter().enumerate() {
                    let t = Instant::now();
                    match store.begin(&scopes[i % SCOPES], k, &fp).unwrap() {
                        Begin::Execute(r) => held.push(r),
                        other => panic!("a new key gave {other:?}"),
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                let elapsed = start.elapsed();
                // Untimed: release every reservation (one release op each, dropped) and wait
                // until the writer has applied them, so the next sample starts from a quiet
                // writer and the store does not grow.
                drop(held);
                store.flush().unwrap();
                elapsed
            });
        });
        let (after, io_after) = (store.stats(), io());
        let label = format!("begin_new_key/{name}");
        println!("{}", stats_line(&label, &before, &after));
        println!(
            "{}",
            io_line(&label, (&before, io_before), (&after, io_after))
        );
        println!("LAT begin_new_key/{name}: {}", latency_line(lat));
        store.close().unwrap();
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// replay_hit_1m.

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
    let mut group = c.benchmark_group("replay_hit_1m");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
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
    let mut group = c.benchmark_group("replay_hit_1m");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
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

// ---------------------------------------------------------------------------------------------
// begin_complete_threads.

/// Runs `pairs` begin+complete pairs spread over `threads` threads on new keys; returns the
/// wall time from the moment all threads are released to the moment the last one finished.
#[allow(clippy::too_many_arguments)]
fn pairs_run(
    store: &Store,
    scopes: &[Scope],
    fp: &Fingerprint,
    body: &Response,
    threads: usize,
    pairs: u64,
    counter: &AtomicU64,
    salt: u64,
    lat: &mut Vec<u64>,
    acks: &mut Vec<u64>,
) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let mut start = Instant::now();
    let mut per_thread = Vec::with_capacity(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let n = pairs / threads as u64 + u64::from(t < pairs % threads as u64);
                let first = counter.fetch_add(n, Ordering::Relaxed);
                let keys: Vec<Key> = (first..first + n).map(|i| key(salt, i)).collect();
                let barrier = &barrier;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(keys.len());
                    let mut acks = Vec::with_capacity(2 * keys.len());
                    barrier.wait();
                    for (i, k) in keys.iter().enumerate() {
                        let t = Instant::now();
                        let Begin::Execute(r) = store.begin(&scopes[i % SCOPES], k, fp).unwrap()
                        else {
                            panic!("a new key was not executed");
                        };
                        let begun = t.elapsed();
                        r.complete(body.clone()).unwrap();
                        let pair = t.elapsed();
                        lat.push(pair.as_nanos() as u64);
                        acks.push(begun.as_nanos() as u64);
                        acks.push((pair - begun).as_nanos() as u64);
                    }
                    (lat, acks)
                })
            })
            .collect();
        barrier.wait();
        start = Instant::now();
        for h in handles {
            per_thread.push(h.join().unwrap());
        }
    });
    let elapsed = start.elapsed();
    for (l, a) in per_thread {
        lat.extend(l);
        acks.extend(a);
    }
    elapsed
}

fn begin_complete_threads(c: &mut Criterion, plan: &Plan) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes();
    let fp = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), b"{}");
    // One shared response: the writer encodes it per pair anyway; sharing keeps the caller's
    // allocation out of a measurement of the store.
    let body = response(0);
    let buffered = Durability::Buffered {
        max_delay: BUFFERED_DELAY,
    };
    // (name, durability, reservations_durable, write-ahead log, thread counts). The default
    // mode runs with its write-ahead log and without it (a durable database commit per batch),
    // side by side. The last row is not in the brief: the default mode with
    // `reservations_durable(false)`, which spends one fsync per pair instead of two; it shows
    // what the second fsync costs.
    let last = plan.thread_counts.len() - 1;
    let modes = [
        (
            "immediate",
            Durability::Immediate,
            true,
            true,
            plan.thread_counts,
        ),
        (
            "immediate_no_wal",
            Durability::Immediate,
            true,
            false,
            plan.thread_counts,
        ),
        ("buffered_2ms", buffered, true, true, plan.thread_counts),
        ("memory", Durability::Memory, true, true, plan.thread_counts),
        (
            "immediate_lazy_reservations",
            Durability::Immediate,
            false,
            true,
            &plan.thread_counts[last..],
        ),
    ];
    let mut group = c.benchmark_group("begin_complete_threads");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    for (m, (name, durability, reservations_durable, wal, thread_counts)) in
        modes.into_iter().enumerate()
    {
        for &threads in thread_counts {
            let store = open(
                dir.path(),
                &format!("pairs_{name}_{threads}"),
                config(durability)
                    .reservations_durable(reservations_durable)
                    .write_ahead_log(wal)
                    .build()
                    .unwrap(),
            );
            let counter = AtomicU64::new(0);
            let salt = 0xc0 + m as u64 * 1000 + threads as u64;
            let before = store.stats();
            let io_before = io();
            let (mut lat, mut acks) = (Vec::new(), Vec::new());
            let mut measured = (0u64, Duration::ZERO);
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|pairs| {
                    let took = pairs_run(
                        &store, &scopes, &fp, &body, threads, pairs, &counter, salt, &mut lat,
                        &mut acks,
                    );
                    measured.0 += pairs;
                    measured.1 += took;
                    took
                });
            });
            let after = store.stats();
            let io_after = io();
            let label = format!("begin_complete_threads/{name}/{threads}");
            println!("{}", stats_line(&label, &before, &after));
            println!(
                "{}",
                io_line(&label, (&before, io_before), (&after, io_after))
            );
            println!(
                "LAT {label} (per pair, warm-up included): {}; overall {:.0} pairs/s over {} pairs",
                latency_line(lat),
                measured.0 as f64 / measured.1.as_secs_f64(),
                measured.0
            );
            // One acknowledgement: a `begin` that reserves, or a `complete`, each answered
            // after its own log sync in the durable modes.
            println!(
                "LAT {label} (per acknowledgement, begin or complete): {}",
                latency_line(acks)
            );
            if name == "immediate" && threads == 64 {
                let rate = measured.0 as f64 / measured.1.as_secs_f64();
                println!(
                    "TARGET {label}: {rate:.0} pairs/s vs target > 20000: {}",
                    if rate > 20_000.0 { "met" } else { "MISSED" }
                );
            }
            store.close().unwrap();
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// fingerprint_1k_json.

fn fingerprint_1k_json(c: &mut Criterion) {
    let body = json_body();
    // The JSON row must time canonicalisation, not the fallback for a body that does not parse.
    assert!(
        idemstore::canonicalize(&body).is_some(),
        "the body must parse"
    );
    println!("fingerprint_1k_json: body is {} bytes", body.len());
    let mut group = c.benchmark_group("fingerprint_1k_json");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(body.len() as u64));
    for (name, content_type) in [("json", "application/json"), ("text_plain", "text/plain")] {
        group.bench_function(name, |b| {
            b.iter(|| {
                Fingerprint::of_request(
                    black_box("POST"),
                    black_box("/v1/bookings"),
                    Some(black_box(content_type)),
                    black_box(&body),
                )
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// open_full_log: recovery time with a log full of entries to replay.

/// Fills the default 64 MiB log to just under the volume that starts a checkpoint (half of it)
/// with begin-then-complete pairs, 64 threads, in the buffered mode (every entry is written,
/// few syncs), then copies the database and its log while the store is quiet: the copy is what
/// a crash at that moment leaves (the database at its opening checkpoint, every entry after it
/// in the log). Times `Store::open` on the copy up to the first answered `begin`.
fn open_full_log(plan: &Plan) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes();
    let fp = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), b"{}");
    let body = response(0);
    let config = || {
        config(Durability::Buffered {
            max_delay: Duration::from_millis(50),
        })
        .checkpoint_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
    };
    let store = open(dir.path(), "full_log", config());
    let target = if plan.quick {
        1 << 20
    } else {
        (32 << 20) - (4 << 20)
    };
    let counter = AtomicU64::new(0);
    let (mut lat, mut acks) = (Vec::new(), Vec::new());
    let mut pairs = 0u64;
    while store.stats().log_bytes < target {
        pairs_run(
            &store, &scopes, &fp, &body, 64, 1024, &counter, 0xf1, &mut lat, &mut acks,
        );
        pairs += 1024;
    }
    store.flush().unwrap();
    let stats = store.stats();
    assert_eq!(
        stats.checkpoints, 0,
        "the fill must not checkpoint: {stats:?}"
    );
    let copy = dir.path().join("copy.redb");
    std::fs::copy(dir.path().join("full_log.redb"), &copy).unwrap();
    std::fs::copy(
        dir.path().join("full_log.redb.wal"),
        dir.path().join("copy.redb.wal"),
    )
    .unwrap();
    store.close().unwrap();
    let started = Instant::now();
    let reopened = Store::open(&copy, config()).unwrap();
    let first = reopened.begin(&scopes[0], &key(0xf1, 0), &fp).unwrap();
    let took = started.elapsed();
    assert!(matches!(first, Begin::Replay(_)));
    let replayed = reopened.stats().log_entries_replayed;
    println!(
        "RECOVERY open_full_log: {pairs} pairs, {:.1} MiB of log in {replayed} entries replayed; \
         open to first answered begin {:.0} ms",
        stats.log_bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64() * 1e3
    );
    reopened.close().unwrap();
}

fn main() {
    let plan = Plan::from_env();
    let mut c = Criterion::default().configure_from_args();
    if plan.wants("disk") {
        disk_probe(&plan, "start");
    }
    if plan.wants("fingerprint_1k_json") {
        fingerprint_1k_json(&mut c);
    }
    if plan.wants("begin_new_key") {
        begin_new_key(&mut c);
    }
    if plan.wants("begin_complete_threads") {
        begin_complete_threads(&mut c, &plan);
    }
    if plan.wants("replay_hit_1m") {
        replay_hit_1m(&mut c, &plan);
    }
    if plan.wants("open_full_log") {
        open_full_log(&plan);
    }
    if plan.wants("disk") {
        disk_probe(&plan, "end");
    }
    c.final_summary();
}
