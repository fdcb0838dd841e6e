//! What the store's criterion bench targets share: the run plan read from the environment, the
//! workload data, store builders, the reporting lines, the disk probe, and each target's `main`.
//! `docs/benchmarks.md` gives the method and the results.
//!
//! One bench target a group, named as the group, in the order the full run takes them (about
//! six minutes in all):
//!
//! - `disk` (`benches/disk.rs`): not a criterion benchmark: a raw 4 KiB write + `fdatasync`
//!   loop (1000 times, same block and appending) in the temp directory, run twice, so the
//!   store's durable figures can be read against the disk's physical limit;
//! - `fingerprint_1k_json` (`benches/fingerprint_1k_json.rs`);
//! - `begin_new_key` (`benches/begin_new_key.rs`);
//! - `begin_complete_threads` (`benches/begin_complete_threads.rs`);
//! - `replay_hit_1m` (`benches/replay_hit_1m.rs`);
//! - `open_full_log` (`benches/open_full_log.rs`): not a criterion benchmark.
//!
//! Each runs with `cargo bench --bench <group>`; `cargo bench` runs them all (and `memory`).
//!
//! Environment:
//! - `IDEMSTORE_BENCH=disk,replay_hit_1m` runs only the named groups: a target whose group is
//!   not named does nothing (the criterion name filter still applies inside a group, but cannot
//!   skip the 1M-record preload). Where the list names `disk` beside a group, the disk probe
//!   runs before and after that group, in the same process, as `DISK start` and `DISK end`;
//! - `IDEMSTORE_BENCH_VARIANTS=memory,file/cache_1gib` runs only the replay stores whose
//!   label contains one of the names (each file-backed one takes about 35 s to fill);
//! - `IDEMSTORE_BENCH_RECORDS` and `IDEMSTORE_BENCH_PRELOAD_THREADS` change the replay store's
//!   size and the number of preloading threads.
//!
//! Under `cargo test --benches` (criterion's test mode) every size is cut down so the run takes
//! seconds. Lines starting with `DISK`, `PRELOAD`, `STATS`, `IO`, `LAT`, `TARGET` and `RECOVERY`
//! are the figures that are not criterion's own; the document quotes them.

// Each bench target uses its own part of this module.
#![allow(dead_code)]

pub(crate) mod process;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use idemstore::{Begin, Config, Durability, Fingerprint, Key, Response, Scope, Stats, Store};

use process::Io;

/// Encoded size of every stored response (`Response::encoded_len`).
pub(crate) const RESPONSE_BYTES: usize = 300;
/// Number of distinct scopes the keys are spread over.
pub(crate) const SCOPES: usize = 1000;
/// The buffered mode's flush delay.
pub(crate) const BUFFERED_DELAY: Duration = Duration::from_millis(2);

/// Sizes for a real run, or for criterion's test mode.
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) replay_records: usize,
    pub(crate) preload_threads: usize,
    pub(crate) probe_iters: usize,
    pub(crate) thread_counts: &'static [usize],
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
    pub(crate) fn wants_variant(&self, label: &str) -> bool {
        self.variants
            .as_ref()
            .is_none_or(|v| v.iter().any(|name| label.contains(name.as_str())))
    }

    /// Whether to run `group`: `IDEMSTORE_BENCH` names it, or is not set.
    fn wants(&self, group: &str) -> bool {
        self.groups.is_none() || self.names(group)
    }

    /// Whether `IDEMSTORE_BENCH` names `group`.
    fn names(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|name| name == group))
    }
}

/// The `main` of the bench target for `group` (the target's name, and the group's name in
/// `IDEMSTORE_BENCH`): runs `bench` unless `IDEMSTORE_BENCH` leaves the group out, between two
/// disk probes when the list names `disk` too.
pub(crate) fn main(group: &str, bench: impl FnOnce(&mut Criterion, &Plan)) {
    let plan = Plan::from_env();
    if !plan.wants(group) {
        return;
    }
    let probe = group != "disk" && plan.names("disk");
    let mut c = Criterion::default().configure_from_args();
    if probe {
        disk_probe(&plan, "start");
    }
    bench(&mut c, &plan);
    if probe {
        disk_probe(&plan, "end");
    }
    c.final_summary();
}

// ---------------------------------------------------------------------------------------------
// Workload data.

/// splitmix64: a fast, well-mixed sequence for key names and random picks.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A UUID-shaped key (36 bytes), distinct for each `n` within one `salt`.
pub(crate) fn key(salt: u64, n: u64) -> Key {
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

pub(crate) fn scopes() -> Vec<Scope> {
    (0..SCOPES)
        .map(|i| Scope::new(format!("acct_{i:04}")).unwrap())
        .collect()
}

/// A response whose encoded size is exactly [`RESPONSE_BYTES`], with a body unique to `n`.
pub(crate) fn response(n: u64) -> Response {
    const FIXED: usize = 5 + (2 + 12 + 4 + 16) + 4; // status/count, one header, body length
    let mut body = format!("{{\"id\":\"bk_{n:016x}\",\"status\":\"confirmed\",\"note\":\"");
    let pad = RESPONSE_BYTES - FIXED - body.len() - 2;
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    let r = Response::new(201, [("content-type", "application/json")], body);
    debug_assert_eq!(r.encoded_len(), RESPONSE_BYTES);
    r
}

/// The fingerprint of the bookings request every new key is begun with.
pub(crate) fn booking_fingerprint() -> Fingerprint {
    Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), b"{}")
}

pub(crate) fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::Immediate => "immediate",
        Durability::Buffered { .. } => "buffered_2ms",
        Durability::Memory => "memory",
        _ => "other",
    }
}

/// Opens a store in `dir` (ignored for the memory mode).
pub(crate) fn open(dir: &Path, name: &str, config: Config) -> Store {
    Store::open(dir.join(format!("{name}.redb")), config).unwrap()
}

pub(crate) fn config(durability: Durability) -> idemstore::ConfigBuilder {
    Config::builder().durability(durability)
}

/// Runs `pairs` begin+complete pairs spread over `threads` threads on new keys; returns the
/// wall time from the moment all threads are released to the moment the last one finished.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pairs_run(
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

// ---------------------------------------------------------------------------------------------
// Reporting helpers.

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// `p50/p90/p99/max` of nanosecond samples, in microseconds.
pub(crate) fn latency_line(mut ns: Vec<u64>) -> String {
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
pub(crate) fn stats_line(label: &str, before: &Stats, after: &Stats) -> String {
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

/// Write volume per durable commit between two snapshots.
pub(crate) fn io_line(label: &str, before: (&Stats, Io), after: (&Stats, Io)) -> String {
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

/// The `STATS` and `IO` lines of `label` between two snapshots of the store and the process.
pub(crate) fn print_stats_io(label: &str, before: (&Stats, Io), after: (&Stats, Io)) {
    println!("{}", stats_line(label, before.0, after.0));
    println!("{}", io_line(label, before, after));
}

// ---------------------------------------------------------------------------------------------
// disk: raw write + fdatasync.

pub(crate) fn disk_probe(plan: &Plan, when: &str) {
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
