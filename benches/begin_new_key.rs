//! `begin_new_key`: `begin` on a never-seen key, per durability mode. `benches/common/mod.rs`
//! gives the environment; `docs/benchmarks.md` the results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use idemstore::{Begin, Durability, Key};

use common::process::io;
use common::{
    BUFFERED_DELAY, SCOPES, booking_fingerprint, config, key, latency_line, mode_name, open,
    print_stats_io, scopes,
};

fn begin_new_key(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes();
    let fp = booking_fingerprint();
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
        print_stats_io(&label, (&before, io_before), (&after, io_after));
        println!("LAT begin_new_key/{name}: {}", latency_line(lat));
        store.close().unwrap();
    }
    group.finish();
}

fn main() {
    common::main("begin_new_key", |c, _| begin_new_key(c));
}
