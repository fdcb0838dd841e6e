//! Outcome unknown (E6): a store opened with `InFlightAtOpen::MarkUnknown` keeps the keys that
//! were in flight, answers their retries `OutcomeUnknown` whatever the time, and hands each to
//! the application to resolve; reservations are durable under that policy by default, so a
//! power loss right after `begin` still leaves the key unknown rather than free.

use std::time::Duration;

use idemstore::{Begin, InFlightAtOpen, ManualClock, State};

use crate::sim_disk::{Mode, Rng, SimDisk, disk_config, open_on};
use crate::support::{T0, TestStore, execute, fp, key, memory, open_with, replay, resp, scope};

const LEASE: Duration = Duration::from_secs(10);

fn marking(log: bool) -> TestStore {
    open_with(|c| {
        c.lease(LEASE)
            .write_ahead_log(log)
            .in_flight_at_open(InFlightAtOpen::MarkUnknown)
    })
}

fn reopen(t: TestStore, log: bool) -> TestStore {
    t.reopen_with(|c| {
        c.lease(LEASE)
            .write_ahead_log(log)
            .in_flight_at_open(InFlightAtOpen::MarkUnknown)
    })
}

#[test]
fn e6_a_key_in_flight_at_open_is_answered_outcome_unknown_until_resolved() {
    for log in [true, false] {
        let t = marking(log);
        let (s, k, f) = (scope("acct"), key("pay-1"), fp("pay 10"));
        let mut r = execute(t.store.begin(&s, &k, &f).unwrap());
        r.save_point("sent-to-provider", b"req-77").unwrap();
        r.abandon();
        let t = reopen(t, log);
        assert_eq!(t.store.stats().marked_unknown, 1, "log={log}");
        let info = t.store.get(&s, &k).unwrap().unwrap();
        assert_eq!(info.state, State::OutcomeUnknown);
        assert_eq!(info.lease_deadline, None);
        // No lease runs out: the key waits for the application, not for a clock.
        t.clock.advance(LEASE * 3);
        assert!(matches!(
            t.store.begin(&s, &k, &f).unwrap(),
            Begin::OutcomeUnknown
        ));
        assert!(matches!(
            t.store.begin(&s, &k, &fp("other")).unwrap(),
            Begin::Conflict
        ));
        assert_eq!(t.store.stats().outcome_unknown, 1);
        // Resolution: a reservation with the point; a retry meanwhile is in progress.
        let resolving = t.store.resolve(&s, &k).unwrap().unwrap();
        assert_eq!(
            resolving.recovery_point().unwrap().payload(),
            b"req-77",
            "log={log}"
        );
        assert!(
            t.store.resolve(&s, &k).unwrap().is_none(),
            "one resolution at a time"
        );
        // Still unknown to a retry while it is resolved: no lease running out lets one run.
        assert!(matches!(
            t.store.begin(&s, &k, &f).unwrap(),
            Begin::OutcomeUnknown
        ));
        // The provider has the payment: the key completes with the response it deserves.
        resolving.complete(resp(201, "paid")).unwrap();
        assert_eq!(replay(t.store.begin(&s, &k, &f).unwrap()).body(), b"paid");
        assert!(t.store.resolve(&s, &k).unwrap().is_none());
        assert!(t.store.check().unwrap().is_sound());
        // A completed key stays completed at the next open.
        let t = reopen(t, log);
        assert_eq!(t.store.stats().marked_unknown, 0);
        assert_eq!(replay(t.store.begin(&s, &k, &f).unwrap()).body(), b"paid");
    }
}

#[test]
fn e6_a_resolution_that_releases_lets_the_retry_run_and_the_hook_sees_every_key() {
    let t = marking(true);
    let s = scope("acct");
    for i in 0..5 {
        execute(t.store.begin(&s, &key(&format!("k{i}")), &fp("x")).unwrap()).abandon();
    }
    // A completed key and a free one are not the hook's business.
    execute(t.store.begin(&s, &key("done"), &fp("x")).unwrap())
        .complete(resp(201, "done"))
        .unwrap();
    let t = reopen(t, true);
    assert_eq!(t.store.stats().marked_unknown, 5);
    let mut seen = Vec::new();
    let handed = t
        .store
        .resolve_unknown(usize::MAX, |record, reservation| {
            assert_eq!(record.state, State::OutcomeUnknown);
            seen.push(record.key.clone());
            // Even keys had their effect; odd ones did not and run again.
            let i: usize = record.key[1..].parse().unwrap();
            if i.is_multiple_of(2) {
                reservation.complete(resp(201, &record.key)).unwrap();
            } else {
                reservation.release().unwrap();
            }
        })
        .unwrap();
    assert_eq!(handed, 5);
    seen.sort();
    assert_eq!(seen, ["k0", "k1", "k2", "k3", "k4"]);
    for i in 0..5_u32 {
        let k = key(&format!("k{i}"));
        match t.store.begin(&s, &k, &fp("x")).unwrap() {
            Begin::Replay(r) => {
                assert!(i.is_multiple_of(2) && r.body() == format!("k{i}").as_bytes())
            }
            Begin::Execute(r) => {
                assert!(!i.is_multiple_of(2), "k{i}");
                r.complete(resp(201, "again")).unwrap();
            }
            other => panic!("k{i}: {other:?}"),
        }
    }
    assert_eq!(t.store.resolve_unknown(usize::MAX, |_, _| {}).unwrap(), 0);
}

#[test]
fn e6_an_unknown_key_expires_like_any_record() {
    let t = marking(false);
    let (s, k, f) = (scope("acct"), key("k"), fp("x"));
    execute(t.store.begin(&s, &k, &f).unwrap()).abandon();
    let t = reopen(t, false);
    assert!(matches!(
        t.store.begin(&s, &k, &f).unwrap(),
        Begin::OutcomeUnknown
    ));
    t.clock.advance(Duration::from_secs(24 * 3600));
    assert!(t.store.get(&s, &k).unwrap().is_none());
    assert!(t.store.resolve(&s, &k).unwrap().is_none());
    execute(t.store.begin(&s, &k, &f).unwrap())
        .complete(resp(201, "new"))
        .unwrap();
    assert!(t.store.check().unwrap().is_sound());
}

#[test]
fn e6_memory_stores_never_mark_a_key() {
    let clock = ManualClock::new(T0);
    let store = memory(&clock);
    let (s, k, f) = (scope("acct"), key("k"), fp("x"));
    let r = execute(store.begin(&s, &k, &f).unwrap());
    assert!(store.resolve(&s, &k).unwrap().is_none());
    r.complete(resp(201, "ok")).unwrap();
}

/// E6 with C10: under `MarkUnknown` a reservation is durable before `begin` answers, so a
/// power loss right after it leaves the key unknown, never free for a second execution;
/// under `Release` (by default not durable) the key is free after the crash either way.
#[test]
fn e6_reservation_durability_follows_the_policy_through_a_power_loss() {
    for log in [true, false] {
        for policy in [InFlightAtOpen::MarkUnknown, InFlightAtOpen::Release] {
            let clock = ManualClock::new(T0);
            let db = SimDisk::new(Mode::Subset);
            let log_disk = log.then(|| db.sibling(Vec::new()));
            let open = |db: &SimDisk, log_disk: Option<&SimDisk>| {
                let config = disk_config(&clock).lease(LEASE).in_flight_at_open(policy);
                open_on(db, log_disk, config.build().unwrap())
            };
            let store = open(&db, log_disk.as_ref());
            let (s, k, f) = (scope("acct"), key("k"), fp("x"));
            execute(store.begin(&s, &k, &f).unwrap()).abandon();
            // Power loss now: only what was synced survives.
            let mut rng = Rng::new(0xE6);
            let db_image = db.crash_image(&mut rng, Mode::Subset);
            let log_image = log_disk
                .as_ref()
                .map(|l| l.crash_image(&mut rng, Mode::Subset));
            drop(store);
            let db = SimDisk::from_image(db_image);
            let log_disk = log_image.map(|image| db.sibling(image));
            let store = open(&db, log_disk.as_ref());
            let case = format!("{policy:?} log={log}");
            match policy {
                InFlightAtOpen::MarkUnknown => assert!(
                    matches!(store.begin(&s, &k, &f).unwrap(), Begin::OutcomeUnknown),
                    "{case}"
                ),
                _ => assert!(
                    matches!(store.begin(&s, &k, &f).unwrap(), Begin::Execute(_)),
                    "{case}"
                ),
            }
            store.close().unwrap();
        }
    }
}

/// E6 without a verdict: a resolution dropped, one whose `complete_with` closure fails, one
/// that answers a status the policy does not keep, and one whose lease runs out all give the
/// key back, unknown, to the next resolution; the stale resolver is fenced. Only an explicit
/// release frees the key.
#[test]
fn e6_only_an_explicit_release_frees_an_unknown_key() {
    for log in [true, false] {
        let t = marking(log);
        let (s, k, f) = (scope("acct"), key("pay"), fp("x"));
        execute(t.store.begin(&s, &k, &f).unwrap()).abandon();
        let t = reopen(t, log);
        let unknown =
            |t: &TestStore| matches!(t.store.begin(&s, &k, &f).unwrap(), Begin::OutcomeUnknown);
        // Dropped.
        drop(t.store.resolve(&s, &k).unwrap().unwrap());
        assert!(unknown(&t), "log={log}: dropped");
        // A failing closure.
        let r = t.store.resolve(&s, &k).unwrap().unwrap();
        assert!(
            r.complete_with(|_| Err::<idemstore::Response, _>("provider down"))
                .is_err()
        );
        assert!(unknown(&t), "log={log}: failed closure");
        // A status the policy does not keep.
        let r = t.store.resolve(&s, &k).unwrap().unwrap();
        assert_eq!(
            r.complete(resp(503, "later")).unwrap(),
            idemstore::Completion::Released
        );
        assert!(unknown(&t), "log={log}: 503");
        // A resolver that hangs past its lease: another resolution takes over and fences it.
        let mut hung = t.store.resolve(&s, &k).unwrap().unwrap();
        assert!(t.store.resolve(&s, &k).unwrap().is_none());
        t.clock.advance(LEASE);
        assert!(unknown(&t), "log={log}: a lapsed resolution runs nothing");
        let second = t.store.resolve(&s, &k).unwrap().unwrap();
        assert!(matches!(
            hung.renew(),
            Err(idemstore::LeaseError::Fenced { .. })
        ));
        // The explicit release: the effect did not happen, the retry runs.
        second.release().unwrap();
        execute(t.store.begin(&s, &k, &f).unwrap())
            .complete(resp(201, "paid once"))
            .unwrap();
        assert!(t.store.check().unwrap().is_sound());
    }
}

/// E6 and P3: a key its holder let go of with a recovery point has a known outcome (a failed
/// attempt, resumable), so an open under `MarkUnknown` leaves it for the retry to resume.
#[test]
fn e6_a_key_let_go_with_a_point_is_not_marked_unknown() {
    let t = marking(true);
    let (s, f) = (scope("acct"), fp("x"));
    let mut r = execute(t.store.begin(&s, &key("let-go"), &f).unwrap());
    r.save_point("step-1", b"1").unwrap();
    r.release().unwrap();
    let mut r = execute(t.store.begin(&s, &key("cut"), &f).unwrap());
    r.save_point("step-1", b"1").unwrap();
    r.abandon();
    let t = reopen(t, true);
    assert_eq!(t.store.stats().marked_unknown, 1);
    let resumed = execute(t.store.begin(&s, &key("let-go"), &f).unwrap());
    assert_eq!(resumed.recovery_point().unwrap().name(), "step-1");
    assert!(matches!(
        t.store.begin(&s, &key("cut"), &f).unwrap(),
        Begin::OutcomeUnknown
    ));
}

/// E6 with C12: the hook hands over every unknown key, however long, up to the longest key a
/// store may be configured for, and whatever limit the store was opened with this time.
#[test]
fn e6_the_hook_hands_over_keys_of_any_length_the_store_took() {
    for log in [true, false] {
        let limit = |max: usize| {
            move |c: idemstore::ConfigBuilder| {
                c.lease(LEASE)
                    .write_ahead_log(log)
                    .in_flight_at_open(InFlightAtOpen::MarkUnknown)
                    .max_key_len(max)
            }
        };
        let t = open_with(limit(4096));
        let (s, f) = (scope("acct"), fp("x"));
        // Under the limit reopened with, under the default 255, over it, the longest.
        let lengths = [5, 200, 300, 4096];
        for len in lengths {
            let k = t.store.key("k".repeat(len)).unwrap();
            execute(t.store.begin(&s, &k, &f).unwrap()).abandon();
        }
        // Reopened with a smaller limit than the keys were made under.
        let t = t.reopen_with(limit(100));
        assert_eq!(t.store.stats().marked_unknown, 4, "log={log}");
        let mut seen = Vec::new();
        let handed = t
            .store
            .resolve_unknown(usize::MAX, |record, reservation| {
                seen.push(record.key.len());
                reservation.release().unwrap();
            })
            .unwrap();
        seen.sort();
        assert_eq!((handed, seen.as_slice()), (4, &lengths[..]), "log={log}");
        let left = t
            .store
            .records_in_state(None, Some(State::OutcomeUnknown), usize::MAX)
            .unwrap();
        assert!(left.is_empty(), "log={log}: {left:?}");
        execute(t.store.begin(&s, &key(&"k".repeat(5)), &f).unwrap())
            .complete(resp(201, "once"))
            .unwrap();
    }
}

/// Cuts the last byte off the record whose key is `key`, in the closed store's file at
/// `path`: its fixed part still reads, so its state is known, but the record does not decode.
fn damage_record(path: &std::path::Path, key: &str) {
    use idemstore::redb::{Database, ReadableTable, TableDefinition};
    const RECORDS: TableDefinition<&[u8; 32], crate::files::raw::Bytes<false>> =
        TableDefinition::new("idem_records");
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut records = txn.open_table(RECORDS).unwrap();
        let found = records
            .iter()
            .unwrap()
            .map(|e| e.unwrap())
            .map(|(k, v)| (*k.value(), v.value().to_vec()))
            .find(|(_, v)| v.ends_with(key.as_bytes()));
        let (hash, bytes) = found.unwrap();
        records.insert(&hash, &bytes[..bytes.len() - 1]).unwrap();
    }
    txn.commit().unwrap();
}

/// E6: one key the hook cannot reserve (its record is damaged) does not stop it: the others
/// are handed over, and the damaged one stays unknown, never freed, for `check` to report.
#[test]
fn e6_the_hook_goes_past_a_key_it_cannot_reserve() {
    for log in [true, false] {
        let t = marking(log);
        let (s, f) = (scope("acct"), fp("x"));
        for k in ["k0", "k1", "k2"] {
            execute(t.store.begin(&s, &key(k), &f).unwrap()).abandon();
        }
        let t = reopen(t, log);
        let TestStore {
            store,
            clock,
            path,
            dir,
        } = t;
        store.close().unwrap();
        damage_record(&path, "k1");
        let store = idemstore::Store::open(
            &path,
            crate::support::config(&clock)
                .lease(LEASE)
                .write_ahead_log(log)
                .in_flight_at_open(InFlightAtOpen::MarkUnknown)
                .build()
                .unwrap(),
        )
        .unwrap();
        let t = TestStore {
            store,
            clock,
            path,
            dir,
        };
        let mut seen = Vec::new();
        let handed = t
            .store
            .resolve_unknown(usize::MAX, |record, reservation| {
                seen.push(record.key.clone());
                reservation.release().unwrap();
            })
            .unwrap();
        seen.sort();
        assert_eq!(handed, 2, "log={log}");
        assert_eq!(seen, ["k0", "k2"], "log={log}");
        assert!(!t.store.check().unwrap().is_sound());
        // Its fixed part still reads: a retry is told the outcome is unknown, nothing runs.
        assert!(matches!(
            t.store.begin(&s, &key("k1"), &f).unwrap(),
            Begin::OutcomeUnknown
        ));
        assert!(matches!(
            t.store.begin(&s, &key("k0"), &f).unwrap(),
            Begin::Execute(_)
        ));
    }
}

/// E6 with C11: a resolution does not survive a restart, as no reservation does (one process
/// uses a file at a time): a resolver that died holding a key does not hide it from the hook
/// run right after the next open, under any policy, and the next resolution fences it.
#[test]
fn e6_a_resolution_cut_off_by_a_restart_does_not_hide_its_key() {
    for log in [true, false] {
        for policy in [
            InFlightAtOpen::MarkUnknown,
            InFlightAtOpen::Release,
            InFlightAtOpen::KeepLease,
        ] {
            let t = marking(log);
            let (s, k, f) = (scope("acct"), key("pay-1"), fp("pay 10"));
            execute(t.store.begin(&s, &k, &f).unwrap()).abandon();
            let t = reopen(t, log);
            // The resolver's process dies while it holds the key: its lease is in the file.
            let cut = t.store.resolve(&s, &k).unwrap().unwrap();
            let cut_token = cut.token();
            cut.abandon();
            let t = t.reopen_with(|c| {
                c.lease(LEASE)
                    .write_ahead_log(log)
                    .in_flight_at_open(policy)
            });
            let case = format!("log={log}, {policy:?}");
            // Still unknown to a retry: the restart freed nothing.
            assert!(
                matches!(t.store.begin(&s, &k, &f).unwrap(), Begin::OutcomeUnknown),
                "{case}"
            );
            // No clock advance: the dead resolution's lease has not run out.
            let mut tokens = Vec::new();
            let handed = t
                .store
                .resolve_unknown(usize::MAX, |_, reservation| {
                    tokens.push(reservation.token());
                    reservation.release().unwrap();
                })
                .unwrap();
            assert_eq!(handed, 1, "{case}");
            assert!(
                tokens[0] > cut_token,
                "{case}: {tokens:?} after {cut_token}"
            );
            execute(t.store.begin(&s, &k, &f).unwrap())
                .complete(resp(201, "paid once"))
                .unwrap();
        }
    }
}
