//! The write-ahead log: acknowledgements through the log survive a power loss, the log wraps
//! and checkpoints, and a missing or foreign log is refused when the file needs it (C10, C11).

use std::time::Duration;

use idemstore::{Begin, Config, ConfigBuilder, Durability, ManualClock, OpenError, Store};

use crate::sim_disk::{Mode, SimDisk};
use crate::support::*;

fn cfg(clock: &ManualClock) -> ConfigBuilder {
    config(clock)
        .log_capacity(64 << 10)
        .checkpoint_interval(Duration::from_secs(3600))
}

/// A machine with a database disk and a log disk.
struct Machine {
    db: SimDisk,
    log: SimDisk,
}

impl Machine {
    fn new() -> Machine {
        let db = SimDisk::new(Mode::Subset);
        let log = db.sibling(Vec::new());
        Machine { db, log }
    }

    fn open(&self, c: ConfigBuilder) -> Result<Store, OpenError> {
        Store::open_with_backends(self.db.clone(), self.log.clone(), c.build().unwrap())
    }

    /// What both disks hold after a power loss that keeps no unsynced write.
    fn power_loss(&self) -> Machine {
        let db = SimDisk::from_image(self.db.synced_image());
        let log = db.sibling(self.log.synced_image());
        Machine { db, log }
    }
}

fn complete_n(store: &Store, prefix: &str, n: usize, body_len: usize) {
    let body = "b".repeat(body_len);
    for i in 0..n {
        let k = key(&format!("{prefix}{i}"));
        execute(store.begin(&scope("acct"), &k, &fp("1")).unwrap())
            .complete(resp(201, &format!("{prefix}{i}:{body}")))
            .unwrap();
    }
}

fn assert_replays(store: &Store, prefix: &str, n: usize, body_len: usize) {
    let body = "b".repeat(body_len);
    for i in 0..n {
        let k = key(&format!("{prefix}{i}"));
        let r = replay(store.begin(&scope("acct"), &k, &fp("1")).unwrap());
        assert_eq!(
            r.body(),
            format!("{prefix}{i}:{body}").as_bytes(),
            "{prefix}{i}"
        );
    }
}

#[test]
fn c10_completions_acknowledged_through_the_log_survive_power_loss() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    complete_n(&store, "k", 20, 10);
    let stats = store.stats();
    assert!(stats.log_syncs >= 20, "{stats:?}");
    // Only the opening commit was a durable database commit: the completions live in the log.
    assert_eq!(stats.checkpoints, 0, "{stats:?}");
    let after = m.power_loss();
    drop(store);
    let store = after.open(cfg(&clock)).unwrap();
    assert!(store.stats().log_entries_replayed >= 20);
    assert_replays(&store, "k", 20, 10);
}

#[test]
fn c10_the_log_wraps_and_checkpoints_without_losing_an_acknowledgement() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    // About 300 KiB of entries through a 64 KiB log.
    complete_n(&store, "w", 150, 2000);
    let stats = store.stats();
    assert!(stats.checkpoints >= 4, "{stats:?}");
    assert!(stats.log_bytes > 4 * (64 << 10), "{stats:?}");
    // The log's size never changes.
    assert_eq!(m.log.live_image().len(), 64 << 10);
    let after = m.power_loss();
    drop(store);
    let store = after.open(cfg(&clock)).unwrap();
    assert_replays(&store, "w", 150, 2000);
    // Replayed entries are only those after the last checkpoint.
    assert!(store.stats().log_entries_replayed < 100);
}

#[test]
fn c3_c9_reads_see_every_change_while_checkpoints_fold_it_into_the_file() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    let body = "b".repeat(2000);
    let s = scope("acct");
    for i in 0..150 {
        let k = key(&format!("r{i}"));
        execute(store.begin(&s, &k, &fp("1")).unwrap())
            .complete(resp(201, &format!("r{i}:{body}")))
            .unwrap();
        // Every earlier record reads back, whether it is in the overlay, in a generation being
        // checkpointed, or in the file.
        for j in [0, i / 2, i] {
            let info = store.get(&s, &key(&format!("r{j}"))).unwrap();
            let purged = j % 10 == 4 && j + 5 < i;
            match info {
                None => assert!(purged, "r{j} missing after r{i}"),
                Some(info) => {
                    assert!(!purged, "r{j} purged but read after r{i}");
                    let response = info.response.expect("completed");
                    assert_eq!(response.body(), format!("r{j}:{body}").as_bytes());
                }
            }
        }
        if i % 10 == 9 {
            // A deletion on top of a record that may already be in the file.
            assert!(store.purge(&s, &key(&format!("r{}", i - 5))).unwrap());
            assert!(
                store
                    .get(&s, &key(&format!("r{}", i - 5)))
                    .unwrap()
                    .is_none()
            );
        }
    }
    let stats = store.stats();
    assert!(stats.checkpoints >= 4, "{stats:?}");
    // A whole-file read checkpoints first, so it sees everything.
    let listed = store.records(None, usize::MAX).unwrap();
    assert_eq!(listed.len(), 150 - 15);
    let report = store.check().unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!(report.records, 150 - 15);
    store.close().unwrap();
}

#[test]
fn c8_fencing_tokens_stay_above_those_handed_out_before_a_power_loss() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    let mut last = 0;
    for i in 0..5 {
        let r = execute(
            store
                .begin(&scope("acct"), &key(&format!("t{i}")), &fp("1"))
                .unwrap(),
        );
        last = r.token();
        std::mem::forget(r);
    }
    let after = m.power_loss();
    drop(store);
    let store = after.open(cfg(&clock)).unwrap();
    let r = execute(store.begin(&scope("acct"), &key("new"), &fp("1")).unwrap());
    assert!(r.token() > last, "{} <= {last}", r.token());
    // The reservations were acknowledged durable: still in flight (C11).
    assert!(matches!(
        store.begin(&scope("acct"), &key("t4"), &fp("1")).unwrap(),
        Begin::InProgress { .. }
    ));
}

#[test]
fn c10_replaying_twice_gives_the_same_state() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    complete_n(&store, "r", 10, 100);
    // A key completed, then purged: the purge is logged as a deletion.
    assert!(store.purge(&scope("acct"), &key("r3")).unwrap());
    let first = m.power_loss();
    drop(store);
    // Recover once, then lose power before the recovery's own commit could matter: the
    // synced images still hold the log entries, so the second recovery replays them again.
    let second = {
        let store = first.open(cfg(&clock)).unwrap();
        assert!(store.get(&scope("acct"), &key("r3")).unwrap().is_none());
        let images = Machine {
            db: SimDisk::from_image(first.db.live_image()),
            log: SimDisk::from_image(first.log.synced_image()),
        };
        drop(store);
        images
    };
    let store = second.open(cfg(&clock)).unwrap();
    assert!(store.get(&scope("acct"), &key("r3")).unwrap().is_none());
    for i in [0, 1, 2, 4, 9] {
        let r = replay(
            store
                .begin(&scope("acct"), &key(&format!("r{i}")), &fp("1"))
                .unwrap(),
        );
        assert_eq!(r.body(), format!("r{i}:{}", "b".repeat(100)).as_bytes());
    }
}

#[test]
fn c11_a_missing_or_foreign_log_is_refused_when_the_file_needs_it() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    complete_n(&store, "m", 3, 10);
    let after = m.power_loss();
    drop(store);
    // The log is gone.
    let no_log = Machine {
        db: SimDisk::from_image(after.db.synced_image()),
        log: SimDisk::new(Mode::Subset),
    };
    match no_log.open(cfg(&clock)) {
        Err(OpenError::Log { detail }) => assert!(detail.contains("missing"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Another store's log.
    let other = Machine::new();
    other.open(cfg(&clock)).unwrap().close().unwrap();
    let foreign = Machine {
        db: SimDisk::from_image(after.db.synced_image()),
        log: SimDisk::from_image(other.log.live_image()),
    };
    match foreign.open(cfg(&clock)) {
        Err(OpenError::Log { detail }) => assert!(detail.contains("another"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Without any log device at all.
    let bare = SimDisk::from_image(after.db.synced_image());
    assert!(matches!(
        Store::open_with_backend(bare, cfg(&clock).build().unwrap()),
        Err(OpenError::Log { .. })
    ));
    // With its own log it recovers.
    let store = after.open(cfg(&clock)).unwrap();
    assert_replays(&store, "m", 3, 10);
}

#[test]
fn c11_a_cleanly_closed_file_opens_with_a_new_log_or_none() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let store = m.open(cfg(&clock)).unwrap();
    complete_n(&store, "c", 3, 10);
    store.close().unwrap();
    let fresh = Machine {
        db: SimDisk::from_image(m.db.synced_image()),
        log: SimDisk::new(Mode::Subset),
    };
    let store = fresh.open(cfg(&clock)).unwrap();
    assert_replays(&store, "c", 3, 10);
    store.close().unwrap();
    let store = Store::open_with_backend(fresh.db.clone(), cfg(&clock).build().unwrap()).unwrap();
    assert_replays(&store, "c", 3, 10);
}

#[test]
fn c10_buffered_mode_syncs_the_log_on_flush() {
    let clock = ManualClock::new(T0);
    let m = Machine::new();
    let buffered = || {
        cfg(&clock).durability(Durability::Buffered {
            max_delay: Duration::from_secs(10),
        })
    };
    let store = m.open(buffered()).unwrap();
    complete_n(&store, "f", 5, 10);
    assert_eq!(store.stats().log_syncs, 0);
    store.flush().unwrap();
    assert_eq!(store.stats().log_syncs, 1);
    let after = m.power_loss();
    drop(store);
    let store = after.open(buffered()).unwrap();
    assert_replays(&store, "f", 5, 10);
}

#[test]
fn c10_a_store_opened_by_path_keeps_its_log_next_to_the_file() {
    let t = open_with(|c| c.log_capacity(1 << 20));
    let log = {
        let mut p = t.path.clone().into_os_string();
        p.push(".wal");
        std::path::PathBuf::from(p)
    };
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 1 << 20);
    complete_n(&t.store, "p", 30, 3000);
    assert!(t.store.stats().log_syncs >= 30);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 1 << 20);
    let t = t.reopen();
    assert_replays(&t.store, "p", 30, 3000);
    // Without the log, a cleanly closed file opens too.
    let t = t.reopen_with(|c| c.write_ahead_log(false));
    assert_replays(&t.store, "p", 30, 3000);
}

#[test]
fn config_log_settings_are_checked() {
    assert!(Config::builder().log_capacity(1000).build().is_err());
    assert!(Config::builder().log_capacity(64 << 10).build().is_ok());
    assert!(
        Config::builder()
            .checkpoint_interval(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(Config::builder().build().unwrap().write_ahead_log());
}

/// The stall counter: a batch too large for the log's free space waits for a checkpoint, and
/// `Stats` says so (with the checkpoint's time); small batches into a roomy log never wait.
#[test]
fn c10_stats_count_the_batches_that_waited_for_a_checkpoint() {
    let clock = ManualClock::new(T0);
    let roomy = Machine::new().open(config(&clock)).unwrap();
    complete_n(&roomy, "s", 50, 100);
    let stats = roomy.stats();
    assert_eq!(stats.log_full_waits, 0, "{stats:?}");
    roomy.close().unwrap();

    let tight = Machine::new().open(cfg(&clock)).unwrap();
    assert_eq!(tight.stats().checkpoint_micros_max, 0);
    // An entry larger than a quarter of the 64 KiB log never fits: its batch becomes a
    // checkpoint of its own, which the writer runs before acknowledging it.
    complete_n(&tight, "big", 1, 20 << 10);
    let stats = tight.stats();
    assert!(stats.log_full_waits >= 1, "{stats:?}");
    assert!(stats.checkpoints >= 1, "{stats:?}");
    assert!(stats.checkpoint_micros_total >= stats.checkpoint_micros_max);
    assert!(stats.checkpoint_micros_max > 0, "{stats:?}");
    assert_replays(&tight, "big", 1, 20 << 10);
}

/// The log's entries, in order from the start of its data area: (offset, length).
fn entries_of(image: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 4096;
    while at + 32 <= image.len() && &image[at..at + 4] == b"IDLE" {
        let len = u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap()) as usize + 32;
        out.push((at, len));
        at += len;
    }
    out
}

/// C10, C11: entries a power loss left behind a torn one never come back. The image keeps
/// two unsynced entries of the first session and not the one before them (a legal subset);
/// the next session writes its own entries from where the torn one began, one of them as
/// long as the stale entry after it, makes a completion durable and acknowledges it, and the
/// power goes again (or the store closes cleanly). Before, the stale entry carried exactly
/// the sequence number the reader expected after the new ones and was replayed over the
/// acknowledged completion: the key ran again (in flight, released at open) or went back to
/// an older token.
#[test]
fn c10_c11_entries_left_behind_a_torn_one_never_come_back() {
    let clock = ManualClock::new(T0);
    let base = || {
        Config::builder()
            .clock(clock.clone())
            .log_capacity(64 << 10)
            .checkpoint_interval(Duration::from_secs(3600))
            .compactor_interval(Duration::from_secs(3600))
    };
    let body = "done";
    // The lengths of a claim's entry and a completion's, on a scratch machine.
    let (claim_len, complete_len) = {
        let m = Machine::new();
        let store = m.open(base()).unwrap();
        execute(store.begin(&scope("acct"), &key("k"), &fp("1")).unwrap())
            .complete(resp(201, body))
            .unwrap();
        let e = entries_of(&m.log.live_image());
        (e[0].1, e[1].1)
    };
    // A key whose claim's entry is as long as a completion's.
    let long_key = "L".repeat(1 + complete_len - claim_len);
    for clean_close in [false, true] {
        // The first session: three claims, none synced (reservations are not durable).
        let m = Machine::new();
        let store = m.open(base()).unwrap();
        for k in ["a", long_key.as_str(), "k"] {
            std::mem::forget(execute(
                store.begin(&scope("acct"), &key(k), &fp("1")).unwrap(),
            ));
        }
        assert_eq!(store.stats().log_syncs, 0);
        let mut log = m.log.live_image();
        let e = entries_of(&log);
        assert_eq!(e[1].1, complete_len);
        for b in &mut log[e[0].0..e[1].0] {
            *b = 0;
        }
        let after = {
            let db = SimDisk::from_image(m.db.synced_image());
            let log = db.sibling(log);
            Machine { db, log }
        };
        drop(store);
        // The next session: `k` claimed and completed, durably, acknowledged.
        let store = after.open(base()).unwrap();
        assert_eq!(store.stats().log_entries_replayed, 0);
        let r = execute(store.begin(&scope("acct"), &key("k"), &fp("1")).unwrap());
        let token = r.token();
        r.complete(resp(201, body)).unwrap();
        assert!(store.stats().log_syncs >= 1);
        let next = if clean_close {
            store.close().unwrap();
            after
        } else {
            let crashed = after.power_loss();
            drop(store);
            crashed
        };
        let store = next.open(base()).unwrap();
        match store.begin(&scope("acct"), &key("k"), &fp("1")).unwrap() {
            Begin::Replay(r) => assert_eq!(r.body(), body.as_bytes()),
            other => panic!("clean close {clean_close}: {other:?}"),
        }
        let info = store.get(&scope("acct"), &key("k")).unwrap().unwrap();
        assert_eq!(info.token, token, "clean close {clean_close}");
    }
}
