//! Shared helpers: stores on temporary files with a controllable clock.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use idemstore::{
    Begin, Config, ConfigBuilder, Durability, Fingerprint, Key, ManualClock, Reservation, Response,
    Scope, Store,
};

/// Start of every manual clock: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000;

pub struct TestStore {
    pub store: Store,
    pub clock: ManualClock,
    pub path: PathBuf,
    pub dir: tempfile::TempDir,
}

pub fn config(clock: &ManualClock) -> ConfigBuilder {
    Config::builder()
        .clock(clock.clone())
        // In-flight records keep their leases at open: these tests look at them after
        // restarts (the default releases them; `recovery.rs` tests both).
        .release_in_flight_on_open(false)
        // Keep the background compactor out of the way: tests call compact_now.
        .compactor_interval(Duration::from_secs(3600))
        // A new log is written in full when it is created: keep the many stores the tests
        // create small (the log tests choose their own sizes).
        .log_capacity(1 << 20)
}

pub fn open_with(f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let clock = ManualClock::new(T0);
    let store = Store::open(&path, f(config(&clock)).build().unwrap()).unwrap();
    TestStore {
        store,
        clock,
        path,
        dir,
    }
}

pub fn open() -> TestStore {
    open_with(|c| c)
}

impl TestStore {
    /// Closes and reopens the same file with the same clock and settings `f`.
    pub fn reopen_with(self, f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> TestStore {
        let TestStore {
            store,
            clock,
            path,
            dir,
        } = self;
        store.close().unwrap();
        let store = Store::open(&path, f(config(&clock)).build().unwrap()).unwrap();
        TestStore {
            store,
            clock,
            path,
            dir,
        }
    }

    pub fn reopen(self) -> TestStore {
        self.reopen_with(|c| c)
    }
}

pub fn scope(s: &str) -> Scope {
    Scope::new(s).unwrap()
}

pub fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

pub fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_request(
        "POST",
        "/v1/bookings",
        Some("application/json"),
        body.as_bytes(),
    )
}

pub fn resp(status: u16, body: &str) -> Response {
    Response::new(
        status,
        [("content-type", "application/json")],
        body.to_owned(),
    )
}

pub fn memory(clock: &ManualClock) -> Store {
    Store::open(
        "unused",
        config(clock)
            .durability(Durability::Memory)
            .build()
            .unwrap(),
    )
    .unwrap()
}

pub fn execute(b: Begin) -> Reservation {
    match b {
        Begin::Execute(r) => r,
        other => panic!("expected Execute, got {other:?}"),
    }
}

pub fn replay(b: Begin) -> Response {
    match b {
        Begin::Replay(r) => r,
        other => panic!("expected Replay, got {other:?}"),
    }
}

/// Eight threads each try 10 new keys in scope `crowd`, through `stores` in turn, holding every
/// reservation they get until all are done (so no release makes room mid-race); how many were
/// reserved and how many refused as over the scope's cap (C13).
pub fn race_for_a_scope(stores: &[Store]) -> (u64, u64) {
    let threads: Vec<_> = (0..8)
        .map(|th| {
            let store = stores[th % stores.len()].clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let mut full = 0;
                for i in 0..10 {
                    let k = key(&format!("t{th}-{i}"));
                    match store.begin(&scope("crowd"), &k, &fp("1")) {
                        Ok(b) => held.push(execute(b)),
                        Err(idemstore::BeginError::ScopeFull { .. }) => full += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (held.into_iter().map(|r| r.abandon()).count() as u64, full)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(r, f), (r2, f2)| (r + r2, f + f2))
}

/// Runs `f` on a thread of its own and waits for its answer at most `limit`: `None` then, so
/// a call that blocks or deadlocks fails its test instead of hanging the run.
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}
