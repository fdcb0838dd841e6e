//! `open_full_log`: not a criterion benchmark: the time from `Store::open` to the first
//! answered `begin` when the write-ahead log holds about 30 MiB of entries to replay (the
//! `RECOVERY` line). `benches/common/mod.rs` gives the environment; `docs/benchmarks.md` the
//! results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use idemstore::{Begin, Durability, Store};

use common::{Plan, booking_fingerprint, config, key, open, pairs_run, response, scopes};

/// Fills the default 64 MiB log to just under the volume that starts a checkpoint (half of it)
/// with begin-then-complete pairs, 64 threads, in the buffered mode (every entry is written,
/// few syncs), then copies the database and its log while the store is quiet: the copy is what
/// a crash at that moment leaves (the database at its opening checkpoint, every entry after it
/// in the log). Times `Store::open` on the copy up to the first answered `begin`.
fn open_full_log(plan: &Plan) {
    let dir = tempfile::tempdir().unwrap();
    let scopes = scopes();
    let fp = booking_fingerprint();
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
    common::main("open_full_log", |_, plan| open_full_log(plan));
}
