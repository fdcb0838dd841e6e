//! Memory and file bytes per live key.
//!
//! `cargo bench --bench memory -- [KEYS]` (default 1 000 000) loads KEYS completed records with
//! ~300-byte responses through 8 threads, then reports the growth of the process's resident
//! memory per key (the hot index holds every key touched, up to `index_max_completed`, default
//! 1,048,576; responses are kept out of memory with
//! `response_cache_bytes(0)` and the page cache is held at 8 MiB, so the growth is the index plus
//! allocator overhead) and the file size per key.

// A bench aborts on any failure: there is no result to report then.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use idemstore::{Begin, Config, Durability, Fingerprint, Key, Response, Scope, Store};

// The store's bench targets read the same counters (`benches/common`); this one needs only the
// resident memory.
#[allow(dead_code)]
#[path = "common/process.rs"]
mod process;

use process::rss_bytes;

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("memory.redb");
    let config = Config::builder()
        // Every record in one scope: no cap (C13) in the way of the load.
        .max_records_per_scope(1 << 40)
        .durability(Durability::Buffered {
            max_delay: Duration::from_millis(10),
        })
        .response_cache_bytes(0)
        .page_cache_bytes(8 << 20)
        .index_capacity(keys)
        .build()
        .expect("config");
    let before = rss_bytes();
    let store = Store::open(&path, config).expect("open");
    let opened = rss_bytes();
    let scope = Scope::new("acct").expect("scope");
    let body = vec![b'r'; 300];
    let started = Instant::now();
    let threads = 8;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (store, scope, body) = (&store, &scope, &body);
            s.spawn(move || {
                for i in (t..keys).step_by(threads) {
                    let key = Key::new(format!("key-{i:010}")).expect("key");
                    let fp = Fingerprint::of_bytes(&i.to_le_bytes());
                    if let Ok(Begin::Execute(r)) = store.begin(scope, &key, &fp) {
                        let _ = r.complete(Response::new(
                            201,
                            [("content-type", "application/json")],
                            body.clone(),
                        ));
                    }
                }
            });
        }
    });
    let loaded = started.elapsed();
    store.flush().expect("flush");
    let after = rss_bytes();
    let stats = store.stats();
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "keys loaded:            {keys} in {:.1} s",
        loaded.as_secs_f64()
    );
    println!("index entries:          {}", stats.index_entries);
    println!(
        "rss before open:        {:.1} MiB",
        before as f64 / 1048576.0
    );
    println!(
        "rss after open:         {:.1} MiB",
        opened as f64 / 1048576.0
    );
    println!(
        "rss after load:         {:.1} MiB",
        after as f64 / 1048576.0
    );
    println!(
        "rss growth per key:     {:.1} B",
        after.saturating_sub(opened) as f64 / keys as f64
    );
    println!("file size:              {:.1} MiB", file as f64 / 1048576.0);
    println!("file bytes per key:     {:.1} B", file as f64 / keys as f64);
    let _ = store.close();
}
