//! `begin_complete_threads`: `begin` on a new key then `complete` with a 300-byte response,
//! 1, 16 and 64 threads, per durability mode, as pairs per second (plus the default mode with
//! `reservations_durable(false)` at 64 threads). `benches/common/mod.rs` gives the environment;
//! `docs/benchmarks.md` the results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use idemstore::Durability;

use common::process::io;
use common::{
    BUFFERED_DELAY, Plan, booking_fingerprint, config, latency_line, open, pairs_run,
    print_stats_io, response, scopes,
};

fn begin_complete_threads(c: &mut Criterion, plan: &Plan) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes();
    let fp = booking_fingerprint();
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
            print_stats_io(&label, (&before, io_before), (&after, io_after));
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

fn main() {
    common::main("begin_complete_threads", begin_complete_threads);
}
