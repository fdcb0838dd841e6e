//! Durability modes (C10), including a real process crash in the default mode.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use idemstore::{Config, Durability, Store};

use crate::support::*;

const CRASH_DB: &str = "IDEMSTORE_TEST_CRASH_DB";
/// Set for the child to acknowledge in `Buffered` mode (through the write-ahead log).
const CRASH_BUFFERED: &str = "IDEMSTORE_TEST_CRASH_BUFFERED";
const ACKED: usize = 40;

/// The child's buffered mode: a delay far longer than the child lives, so no sync happens.
fn crash_buffered() -> Config {
    Config::builder()
        .durability(Durability::Buffered {
            max_delay: Duration::from_secs(10),
        })
        .build()
        .unwrap()
}

/// Run only as the child of `c10_acknowledged_completions_survive_a_process_crash`: completes
/// records, reports each acknowledgement on stdout, then aborts without any shutdown.
#[test]
#[ignore = "child process of the crash test"]
fn crash_child() {
    let Ok(path) = std::env::var(CRASH_DB) else {
        return;
    };
    let config = if std::env::var_os(CRASH_BUFFERED).is_some() {
        crash_buffered()
    } else {
        Config::default()
    };
    let store = Store::open(&path, config).unwrap();
    let s = scope("acct");
    for i in 0..ACKED {
        let k = key(&format!("k{i}"));
        let r = execute(store.begin(&s, &k, &fp(&i.to_string())).unwrap());
        r.complete(resp(201, &format!("response {i}"))).unwrap();
        println!("ACK {i}");
    }
    // One more reservation left in flight, then the process dies mid-flight.
    let _in_flight = execute(store.begin(&s, &key("in-flight"), &fp("x")).unwrap());
    std::process::abort();
}

#[test]
fn c10_acknowledged_completions_survive_a_process_crash() {
    process_crash(false);
}

/// With the write-ahead log, a buffered acknowledgement has been written to the operating
/// system (not synced): a process crash loses nothing; only a power loss could.
#[test]
fn c10_buffered_acknowledgements_through_the_log_survive_a_process_crash() {
    process_crash(true);
}

fn process_crash(buffered: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            "durability::crash_child",
            "--nocapture",
        ])
        .env(CRASH_DB, &path);
    if buffered {
        command.env(CRASH_BUFFERED, "1");
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let acked: Vec<usize> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("ACK ").and_then(|n| n.parse().ok()))
        .collect();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have crashed");
    assert_eq!(acked.len(), ACKED);
    let config = Config::builder()
        .release_in_flight_on_open(false)
        .build()
        .unwrap();
    let store = Store::open(&path, config).unwrap();
    if buffered {
        assert!(store.stats().log_entries_replayed > 0);
    }
    let s = scope("acct");
    for i in acked {
        let got = replay(
            store
                .begin(&s, &key(&format!("k{i}")), &fp(&i.to_string()))
                .unwrap(),
        );
        assert_eq!(got, resp(201, &format!("response {i}")), "C10: ack {i}");
    }
    // C11: the reservation that was in flight at the crash is still in flight.
    let info = store.get(&s, &key("in-flight")).unwrap().unwrap();
    assert_eq!(info.state, idemstore::State::InFlight);
    // C8: after a crash, fencing tokens jump past any the dead process may have handed out.
    let after = execute(store.begin(&s, &key("after"), &fp("x")).unwrap());
    assert!(
        after.token() > info.token + (1 << 31),
        "{} vs {}",
        after.token(),
        info.token
    );
}

#[test]
fn c10_memory_mode_touches_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.redb");
    let clock = idemstore::ManualClock::new(T0);
    let store = Store::open(
        &path,
        config(&clock)
            .durability(Durability::Memory)
            .build()
            .unwrap(),
    )
    .unwrap();
    execute(store.begin(&scope("a"), &key("k"), &fp("1")).unwrap())
        .complete(resp(200, "m"))
        .unwrap();
    replay(store.begin(&scope("a"), &key("k"), &fp("1")).unwrap());
    store.close().unwrap();
    assert!(!path.exists());
}

#[test]
fn c10_buffered_mode_is_durable_after_flush_and_close() {
    let buffered = |c: idemstore::ConfigBuilder| {
        c.durability(Durability::Buffered {
            max_delay: Duration::from_millis(5),
        })
    };
    let t = open_with(buffered);
    let (s, k) = (scope("acct"), key("k"));
    execute(t.store.begin(&s, &k, &fp("1")).unwrap())
        .complete(resp(201, "buffered"))
        .unwrap();
    t.store.flush().unwrap();
    let before = t.store.stats().durable_commits;
    assert!(before >= 1);
    let t = t.reopen_with(buffered);
    assert_eq!(
        replay(t.store.begin(&s, &k, &fp("1")).unwrap()).body(),
        b"buffered"
    );
}

#[test]
fn c10_immediate_mode_makes_every_completion_commit_durable() {
    let t = open();
    let s = scope("acct");
    for i in 0..10 {
        execute(t.store.begin(&s, &key(&format!("k{i}")), &fp("1")).unwrap())
            .complete(resp(200, "x"))
            .unwrap();
    }
    let stats = t.store.stats();
    assert_eq!(stats.commits, stats.durable_commits);
    assert!(stats.commits >= 10);
}

#[test]
fn c10_buffered_mode_flushes_within_its_delay_under_steady_load() {
    let t = open_with(|c| {
        c.durability(Durability::Buffered {
            max_delay: Duration::from_millis(1),
        })
    });
    let s = scope("acct");
    std::thread::scope(|threads| {
        for th in 0..8 {
            let (store, s) = (&t.store, &s);
            threads.spawn(move || {
                for i in 0..250 {
                    let k = key(&format!("t{th}i{i}"));
                    let r = execute(store.begin(s, &k, &fp("1")).unwrap());
                    r.complete(resp(200, "x")).unwrap();
                }
            });
        }
    });
    // Operations never stopped arriving for a millisecond, yet the deadline was honoured.
    let stats = t.store.stats();
    assert!(stats.commits > 100, "{stats:?}");
    assert!(stats.durable_commits >= 1, "{stats:?}");
}

#[test]
fn c2_c11_a_reservation_is_durable_exactly_when_the_store_keeps_in_flight_records_at_open() {
    for (release_at_open, synced) in [(true, false), (false, true)] {
        let t = open_with(|c| c.release_in_flight_on_open(release_at_open));
        let before = t.store.stats();
        let r = execute(t.store.begin(&scope("acct"), &key("k"), &fp("1")).unwrap());
        let after = t.store.stats();
        assert_eq!(
            after.log_syncs > before.log_syncs,
            synced,
            "release_in_flight_on_open({release_at_open}): {before:?} -> {after:?}"
        );
        // The explicit setting wins over the default.
        r.release().unwrap();
        let t = t.reopen_with(|c| {
            c.release_in_flight_on_open(release_at_open)
                .reservations_durable(!synced)
        });
        let before = t.store.stats();
        let _held = execute(t.store.begin(&scope("acct"), &key("k2"), &fp("1")).unwrap());
        assert_eq!(t.store.stats().log_syncs > before.log_syncs, !synced);
    }
}
