//! Many threads, thousands of keys, the same requests at once (C1, C3).

use std::collections::HashMap;
use std::sync::{Barrier, Mutex};

use idemstore::{Begin, Durability, Response, Store};

use crate::support::*;

const THREADS: usize = 16;
const KEYS: usize = 3000;

#[test]
fn c1_same_key_storm_executes_each_key_once_and_replays_identically() {
    let t = open();
    storm(&t.store);
    assert!(t.store.stats().mean_batch() >= 1.0);
}

/// The memory engine decides on the callers' threads, under per-shard locks: the same storm.
#[test]
fn c1_same_key_storm_on_the_memory_engine() {
    let t = open_with(|c| c.durability(Durability::Memory));
    storm(&t.store);
    assert_eq!(t.store.stats().commits, 0, "no writer, no commits");
}

fn storm(store: &Store) {
    let s = scope("acct");
    let winners: Mutex<HashMap<usize, Response>> = Mutex::new(HashMap::new());
    let start = Barrier::new(THREADS);
    std::thread::scope(|threads| {
        for th in 0..THREADS {
            let (s, winners, start) = (&s, &winners, &start);
            threads.spawn(move || {
                start.wait();
                // Each thread walks the keys from a different offset, so every key is hit by
                // several threads at nearly the same moment.
                for i in 0..KEYS {
                    let k = (i + th * KEYS / THREADS) % KEYS;
                    let b = store
                        .begin(s, &key(&format!("k{k}")), &fp(&format!("{k}")))
                        .unwrap();
                    if let Begin::Execute(r) = b {
                        let response = resp(201, &format!("{{\"key\":{k},\"thread\":{th}}}"));
                        let previous = winners.lock().unwrap().insert(k, response.clone());
                        assert!(previous.is_none(), "C1: key {k} executed twice");
                        r.complete(response).unwrap();
                    }
                }
            });
        }
    });
    let winners = winners.into_inner().unwrap();
    assert_eq!(winners.len(), KEYS, "every key executed exactly once");
    for (k, expected) in &winners {
        let got = replay(
            store
                .begin(&s, &key(&format!("k{k}")), &fp(&format!("{k}")))
                .unwrap(),
        );
        assert_eq!(&got, expected, "C3: replay of key {k}");
    }
    let stats = store.stats();
    assert_eq!(stats.executes, KEYS as u64);
    assert_eq!(stats.index_entries, KEYS as u64);
}
