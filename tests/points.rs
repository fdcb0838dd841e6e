//! Recovery points (P1-P4, docs/exactly-once.md): an operation of several steps saves how far it
//! got; the attempt that takes its key over resumes there; a release never throws the point
//! away; a step's writes and its point commit together, and a power loss at every I/O point
//! of a three-step operation resumes it at the step that committed last.

use std::time::Duration;

use idemstore::redb::{ReadableTable, TableDefinition};
use idemstore::{
    Begin, InFlightAtOpen, LeaseError, ManualClock, PointError, PointWithError, State, Store,
};

use crate::sim_disk::{Mode, Rng, SimDisk, disk_config, open_on};
use crate::support::{T0, TestStore, execute, fp, key, memory, open_with, replay, resp, scope};

/// The caller's table of the three-step operation: step name → the key it ran for.
const STEPS: TableDefinition<&str, &str> = TableDefinition::new("steps");

const LEASE: Duration = Duration::from_secs(10);

fn file(log: bool) -> TestStore {
    open_with(|c| c.lease(LEASE).write_ahead_log(log))
}

/// Runs `test` on the file engine with and without the log, on the memory engine, and on a
/// Redis server when there is one (feature `redis`).
fn every_engine(test: impl Fn(&Store, &ManualClock, &str)) {
    for log in [true, false] {
        let t = file(log);
        test(&t.store, &t.clock, &format!("file log={log}"));
    }
    let clock = ManualClock::new(T0);
    test(&memory_with_lease(&clock), &clock, "memory");
    #[cfg(feature = "redis")]
    if let Some((store, clock, _server)) = redis_with_lease() {
        test(&store, &clock, "redis");
        assert!(store.check().unwrap().is_sound());
    }
}

/// A store with the tests' lease on a Redis server of its own (which lives as long as the
/// server handle), when there is one; its own clock decides.
#[cfg(feature = "redis")]
fn redis_with_lease() -> Option<(Store, ManualClock, crate::redis_support::Server)> {
    let server = crate::redis_support::Server::start()?;
    let clock = ManualClock::new(T0);
    let cfg = crate::support::config(&clock).lease(LEASE).build().unwrap();
    let options = idemstore::RedisOptions::new(server.url()).clock(idemstore::RedisClock::Store);
    let store = Store::open_redis_with(options, cfg).unwrap();
    Some((store, clock, server))
}

/// A memory store with the tests' lease.
fn memory_with_lease(clock: &ManualClock) -> Store {
    Store::open(
        "unused",
        crate::support::config(clock)
            .lease(LEASE)
            .durability(idemstore::Durability::Memory)
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn p2_a_lease_takeover_receives_the_last_point_and_a_completion_removes_it() {
    every_engine(|store, clock, case| {
        let (s, k, f) = (scope("acct"), key("order-1"), fp("order 1"));
        let mut first = execute(store.begin(&s, &k, &f).unwrap());
        assert!(first.recovery_point().is_none(), "{case}");
        first.save_point("reserved", b"r-1").unwrap();
        first.save_point("charged", b"ch-1").unwrap();
        assert_eq!(first.recovery_point().unwrap().name(), "charged", "{case}");
        let shown = store.get(&s, &k).unwrap().unwrap();
        assert_eq!(shown.state, State::InFlight, "{case}");
        assert_eq!(
            shown.recovery_point.as_ref().map(|p| p.payload().to_vec()),
            Some(b"ch-1".to_vec()),
            "{case}"
        );
        // The holder goes quiet; a retry within the lease waits, after it takes over.
        first.abandon();
        assert!(
            matches!(store.begin(&s, &k, &f).unwrap(), Begin::InProgress { .. }),
            "{case}"
        );
        clock.advance(LEASE);
        let mut second = execute(store.begin(&s, &k, &f).unwrap());
        let point = second.recovery_point().cloned().unwrap();
        assert_eq!(
            (point.name(), point.payload()),
            ("charged", &b"ch-1"[..]),
            "{case}"
        );
        // A renewal keeps the point.
        second.renew().unwrap();
        assert!(store.get(&s, &k).unwrap().unwrap().recovery_point.is_some());
        second.complete(resp(201, "shipped")).unwrap();
        let done = store.get(&s, &k).unwrap().unwrap();
        assert!(done.recovery_point.is_none(), "{case}");
        assert_eq!(replay(store.begin(&s, &k, &f).unwrap()).body(), b"shipped");
        // Another request with the key is still a conflict (C4), point or not.
        assert!(matches!(
            store.begin(&s, &k, &fp("order 2")).unwrap(),
            Begin::Conflict
        ));
        assert!(store.check().unwrap().is_sound(), "{case}");
        assert!(store.stats().points_saved >= 2, "{case}");
    });
}

#[test]
fn p3_a_release_of_a_key_with_a_point_ends_its_lease_and_the_retry_resumes() {
    every_engine(|store, _clock, case| {
        let (s, f) = (scope("acct"), fp("x"));
        // Explicit release, drop, and a completion whose status the policy does not keep.
        for (i, how) in ["release", "drop", "503"].into_iter().enumerate() {
            let k = key(&format!("k-{i}"));
            let mut r = execute(store.begin(&s, &k, &f).unwrap());
            r.save_point("step-1", how.as_bytes()).unwrap();
            match how {
                "release" => r.release().unwrap(),
                "drop" => drop(r),
                _ => {
                    let done = r.complete(resp(503, "later")).unwrap();
                    assert_eq!(done, idemstore::Completion::Released, "{case}");
                }
            }
            let info = store.get(&s, &k).unwrap().unwrap();
            assert_eq!(info.state, State::InFlight, "{case} {how}");
            // At once: no lease to wait for.
            let retry = execute(store.begin(&s, &k, &f).unwrap());
            let point = retry.recovery_point().cloned().unwrap();
            assert_eq!(point.payload(), how.as_bytes(), "{case} {how}");
            // The same request only: another body is a conflict, as for any in-flight key.
            assert!(matches!(
                store.begin(&s, &k, &fp("other")).unwrap(),
                Begin::Conflict
            ));
            retry.complete(resp(201, how)).unwrap();
        }
        // A key without a point is released to nothing, as always (C6).
        let k = key("plain");
        execute(store.begin(&s, &k, &f).unwrap()).release().unwrap();
        assert!(store.get(&s, &k).unwrap().is_none(), "{case}");
        // A purge removes the key with its point.
        let k = key("purged");
        let mut r = execute(store.begin(&s, &k, &f).unwrap());
        r.save_point("step-1", b"").unwrap();
        assert!(store.purge(&s, &k).unwrap());
        assert!(
            execute(store.begin(&s, &k, &f).unwrap())
                .recovery_point()
                .is_none()
        );
        assert!(store.check().unwrap().is_sound(), "{case}");
    });
}

#[test]
fn p1_only_the_holder_saves_a_point_and_bad_points_are_refused() {
    every_engine(|store, clock, case| {
        let (s, k, f) = (scope("acct"), key("k"), fp("x"));
        let mut stale = execute(store.begin(&s, &k, &f).unwrap());
        assert!(matches!(
            stale.save_point("", b""),
            Err(PointError::Invalid { .. })
        ));
        assert!(matches!(
            stale.save_point("big", &vec![0; idemstore::MAX_POINT_PAYLOAD + 1]),
            Err(PointError::Invalid { .. })
        ));
        assert!(
            stale.recovery_point().is_none(),
            "{case}: a refused point is not kept"
        );
        clock.advance(LEASE);
        let mut holder = execute(store.begin(&s, &k, &f).unwrap());
        assert!(
            matches!(
                stale.save_point("late", b""),
                Err(PointError::Lease(LeaseError::Fenced { .. }))
            ),
            "{case}"
        );
        assert!(
            holder.recovery_point().is_none(),
            "{case}: the stale point was not saved"
        );
        holder.save_point("mine", b"1").unwrap();
        holder.complete(resp(201, "ok")).unwrap();
        assert!(matches!(
            stale.save_point("late", b""),
            Err(PointError::Lease(LeaseError::Fenced { .. }))
        ));
    });
}

#[test]
fn p2_a_restart_hands_the_point_to_the_first_retry_under_every_policy() {
    for policy in [InFlightAtOpen::Release, InFlightAtOpen::KeepLease] {
        for log in [true, false] {
            let case = format!("{policy:?} log={log}");
            let t = open_with(|c| {
                c.lease(LEASE)
                    .write_ahead_log(log)
                    .in_flight_at_open(policy)
            });
            let (s, k, f) = (scope("acct"), key("k"), fp("x"));
            let mut r = execute(t.store.begin(&s, &k, &f).unwrap());
            r.save_point("charged", b"ch-9").unwrap();
            r.abandon();
            let t = t.reopen_with(|c| {
                c.lease(LEASE)
                    .write_ahead_log(log)
                    .in_flight_at_open(policy)
            });
            if policy == InFlightAtOpen::KeepLease {
                assert!(
                    matches!(t.store.begin(&s, &k, &f).unwrap(), Begin::InProgress { .. }),
                    "{case}"
                );
                t.clock.advance(LEASE);
            }
            // Under Release the key was not released: its lease was ended at open.
            let retry = execute(t.store.begin(&s, &k, &f).unwrap());
            assert_eq!(
                retry.recovery_point().map(|p| p.payload().to_vec()),
                Some(b"ch-9".to_vec()),
                "{case}"
            );
            retry.complete(resp(201, "done")).unwrap();
            assert!(t.store.check().unwrap().is_sound(), "{case}");
        }
    }
}

/// Runs a three-step operation for `k`: each step writes its row and saves its point in one
/// transaction, skipping the steps the key's recovery point says have committed; then it
/// completes. Returns the steps it ran.
fn three_steps(store: &Store, k: &str) -> Result<Vec<&'static str>, String> {
    const ORDER: [&str; 3] = ["reserve", "charge", "ship"];
    let (s, f) = (scope("acct"), fp(k));
    let mut r = match store.begin(&s, &key(k), &f).map_err(|e| e.to_string())? {
        Begin::Execute(r) => r,
        Begin::Replay(_) => return Ok(Vec::new()),
        other => return Err(format!("{k}: {other:?}")),
    };
    let done = r
        .recovery_point()
        .and_then(|p| ORDER.iter().position(|s| *s == p.name()))
        .map_or(0, |i| i + 1);
    let mut ran = Vec::new();
    for step in &ORDER[done..] {
        let (step, owner) = (*step, k.to_owned());
        r.save_point_with(step, move |txn| {
            let mut t = txn.open_table(STEPS)?;
            // A step that ran twice is the bug this test looks for.
            if t.get(format!("{owner}/{step}").as_str())?.is_some() {
                return Err(idemstore::redb::Error::Corrupted(format!(
                    "{owner}/{step} ran twice"
                )));
            }
            t.insert(format!("{owner}/{step}").as_str(), step)?;
            Ok::<_, idemstore::redb::Error>(owner.into_bytes())
        })
        .map_err(|e| e.to_string())?;
        ran.push(step);
    }
    r.complete(resp(201, k)).map_err(|e| e.to_string())?;
    Ok(ran)
}

/// The steps of `k` whose rows exist.
fn rows(store: &Store, k: &str) -> Vec<String> {
    store
        .read(|txn| -> Result<Vec<String>, idemstore::redb::Error> {
            let Ok(t) = txn.open_table(STEPS) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for step in ["reserve", "charge", "ship"] {
                if t.get(format!("{k}/{step}").as_str())?.is_some() {
                    out.push(step.to_owned());
                }
            }
            Ok(out)
        })
        .unwrap()
}

fn open_disks(db: &SimDisk, log: Option<&SimDisk>, clock: &ManualClock) -> Store {
    open_on(db, log, disk_config(clock).lease(LEASE).build().unwrap())
}

/// P4: a power loss after every mutating I/O call of two three-step operations, with and
/// without the log. After the crash each operation's rows are a prefix of its steps, its
/// recovery point names the last row (or it is completed with all three), and the retry runs
/// exactly the steps that are missing: none twice, none lost.
#[test]
fn p4_power_loss_at_every_io_point_resumes_at_the_last_committed_step() {
    const KEYS: [&str; 2] = ["op-a", "op-b"];
    for log in [true, false] {
        let clock = ManualClock::new(T0);
        let db = SimDisk::new(Mode::Subset);
        let log_disk = log.then(|| db.sibling(Vec::new()));
        let store = open_disks(&db, log_disk.as_ref(), &clock);
        let opened = db.mutations();
        for k in KEYS {
            assert_eq!(three_steps(&store, k).unwrap().len(), 3);
        }
        let total = db.mutations() - opened;
        drop(store);
        assert!(total > 10, "{total}");
        let mut rng = Rng::new(0x9_0004 + u64::from(log));
        for n in 1..=total {
            let case = format!("log={log} crash after call {n}");
            let clock = ManualClock::new(T0);
            let db = SimDisk::new(Mode::Subset);
            let log_disk = log.then(|| db.sibling(Vec::new()));
            let store = open_disks(&db, log_disk.as_ref(), &clock);
            db.arm(n);
            let mut acked = Vec::new();
            for k in KEYS {
                match three_steps(&store, k) {
                    Ok(_) => acked.push(k),
                    Err(_) => break,
                }
            }
            drop(store);
            let mode = if n % 2 == 0 { Mode::Torn } else { Mode::Subset };
            let db = SimDisk::from_image(db.crash_image(&mut rng, mode));
            let log_disk = log_disk.map(|l| db.sibling(l.crash_image(&mut rng, mode)));
            let store = open_disks(&db, log_disk.as_ref(), &clock);
            for k in KEYS {
                let before = rows(&store, k);
                let record = store.get(&scope("acct"), &key(k)).unwrap();
                let completed = record.as_ref().is_some_and(|r| r.state == State::Completed);
                if acked.contains(&k) {
                    assert!(completed, "{case}: {k} was acknowledged");
                }
                if completed {
                    assert_eq!(before.len(), 3, "{case}: {k} completed without its steps");
                } else {
                    let point = record.and_then(|r| r.recovery_point);
                    assert_eq!(
                        point.as_ref().map(|p| p.name().to_owned()),
                        before.last().cloned(),
                        "{case}: {k}: rows {before:?}, point {point:?}"
                    );
                }
                let ran = three_steps(&store, k).unwrap_or_else(|e| panic!("{case}: {e}"));
                assert_eq!(
                    before.len() + ran.len(),
                    3,
                    "{case}: {k} ran {ran:?} after {before:?}"
                );
                assert_eq!(rows(&store, k).len(), 3, "{case}: {k}");
            }
            assert!(store.check().unwrap().is_sound(), "{case}");
            store.close().unwrap();
        }
    }
}

#[test]
fn p4_a_step_that_fails_rolls_back_its_writes_and_keeps_the_key_and_the_last_point() {
    let t = file(true);
    let (s, k, f) = (scope("acct"), key("k"), fp("x"));
    let mut r = execute(t.store.begin(&s, &k, &f).unwrap());
    r.save_point_with("reserve", |txn| {
        txn.open_table(STEPS)?.insert("k/reserve", "reserve")?;
        Ok::<_, idemstore::redb::Error>(b"r".to_vec())
    })
    .unwrap();
    let failed = r.save_point_with("charge", |txn| {
        let mut t = txn.open_table(STEPS).map_err(|e| e.to_string())?;
        t.insert("k/charge", "charge").map_err(|e| e.to_string())?;
        Err::<Vec<u8>, _>("card declined".to_owned())
    });
    assert!(matches!(failed, Err(PointWithError::Aborted(e)) if e == "card declined"));
    let panicked = r.save_point_with("charge", |_| -> Result<Vec<u8>, String> {
        panic!("step bug")
    });
    assert!(matches!(panicked, Err(PointWithError::Panicked { .. })));
    // A payload over the limit, made inside the step: the step's writes go with it.
    let too_big = r.save_point_with("charge", |txn| {
        let mut t = txn.open_table(STEPS).map_err(|e| e.to_string())?;
        t.insert("k/charge", "charge").map_err(|e| e.to_string())?;
        Ok::<_, String>(vec![0; idemstore::MAX_POINT_PAYLOAD + 1])
    });
    assert!(matches!(
        too_big,
        Err(PointWithError::Point(PointError::Invalid { .. }))
    ));
    assert!(matches!(
        r.save_point_with("", |_| Ok::<_, String>(Vec::new())),
        Err(PointWithError::Point(PointError::Invalid { .. }))
    ));
    assert_eq!(r.recovery_point().unwrap().name(), "reserve");
    assert_eq!(rows(&t.store, "k"), ["reserve"]);
    let shown = t.store.get(&s, &k).unwrap().unwrap();
    assert_eq!(shown.recovery_point.unwrap().name(), "reserve");
    // The reservation still holds the key and completes.
    r.complete(resp(201, "ok")).unwrap();
    assert!(t.store.check().unwrap().is_sound());
}

#[test]
fn p1_the_memory_engine_has_no_database_for_a_point_with_writes() {
    let clock = ManualClock::new(T0);
    let store = memory(&clock);
    let mut r = execute(store.begin(&scope("a"), &key("k"), &fp("x")).unwrap());
    let refused = r.save_point_with("s", |_| Ok::<_, String>(Vec::new()));
    assert!(matches!(
        refused,
        Err(PointWithError::Point(PointError::Lease(
            LeaseError::Unavailable(idemstore::Unavailable::Unsupported { .. })
        )))
    ));
    // The plain point works, and the reservation is untouched.
    r.save_point("s", b"").unwrap();
    r.complete(resp(201, "ok")).unwrap();
}

#[test]
fn p3_a_completion_with_writes_that_fails_keeps_the_point_of_the_steps_before() {
    let t = file(false);
    let (s, k, f) = (scope("acct"), key("k"), fp("x"));
    let mut r = execute(t.store.begin(&s, &k, &f).unwrap());
    r.save_point_with("reserve", |txn| {
        txn.open_table(STEPS)?.insert("k/reserve", "reserve")?;
        Ok::<_, idemstore::redb::Error>(b"r".to_vec())
    })
    .unwrap();
    // A completion with writes whose closure fails releases the key: the point stays.
    let failed = r.complete_with(|_| Err::<idemstore::Response, _>("charge failed"));
    assert!(failed.is_err());
    let retry = execute(t.store.begin(&s, &k, &f).unwrap());
    assert_eq!(retry.recovery_point().unwrap().name(), "reserve");
    assert_eq!(rows(&t.store, "k"), ["reserve"]);
    drop(retry);
    assert!(t.store.check().unwrap().is_sound());
}

/// P1-P3 against a reference model: random sequences of begins, points (plain and with
/// writes, some failing), releases, drops, abandons, completions (kept and not), lease
/// expiries and reopens, on the file engine with and without the log, on the memory engine
/// and on Redis. After every step each key's state and point are the model's, and every `begin`
/// answers as the model says, with the model's point.
mod model {
    use std::collections::HashMap;

    use idemstore::Reservation;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Begin(usize),
        /// Saves point `n` on the held reservation: 0 plain, 1 with a write, 2 with a write
        /// that fails.
        Save(usize, u8, u8),
        Release(usize),
        Drop(usize),
        Abandon(usize),
        /// Completes with a kept status (true) or one the policy does not keep.
        Complete(usize, bool),
        /// Lets every lease run out.
        Expire,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize).prop_map(Op::Begin),
            4 => (0..3usize, 0..3u8, 0..4u8).prop_map(|(k, how, n)| Op::Save(k, how, n)),
            1 => (0..3usize).prop_map(Op::Release),
            1 => (0..3usize).prop_map(Op::Drop),
            1 => (0..3usize).prop_map(Op::Abandon),
            2 => (0..3usize, any::<bool>()).prop_map(|(k, kept)| Op::Complete(k, kept)),
            1 => Just(Op::Expire),
            1 => Just(Op::Reopen),
        ]
    }

    /// The model of one key.
    #[derive(Debug, Clone, PartialEq)]
    enum Key {
        Absent,
        InFlight {
            token: u64,
            lease_ended: bool,
            point: Option<String>,
        },
        Completed,
    }

    enum Engine {
        File(Option<TestStore>, bool),
        Memory(Store, ManualClock),
        #[cfg(feature = "redis")]
        /// The server lives as long as the store.
        Redis {
            store: Store,
            clock: ManualClock,
            _server: crate::redis_support::Server,
        },
    }

    impl Engine {
        fn store(&self) -> &Store {
            match self {
                Engine::File(t, _) => &t.as_ref().unwrap().store,
                Engine::Memory(s, _) => s,
                #[cfg(feature = "redis")]
                Engine::Redis { store, .. } => store,
            }
        }
        fn clock(&self) -> &ManualClock {
            match self {
                Engine::File(t, _) => &t.as_ref().unwrap().clock,
                Engine::Memory(_, c) => c,
                #[cfg(feature = "redis")]
                Engine::Redis { clock, .. } => clock,
            }
        }
    }

    /// What the model says a release (or a completion not kept) leaves.
    fn let_go(k: &mut Key) {
        if let Key::InFlight { point, .. } = k {
            *k = match point.take() {
                Some(p) => Key::InFlight {
                    token: 0,
                    lease_ended: true,
                    point: Some(p),
                },
                None => Key::Absent,
            };
        }
    }

    fn run(mut engine: Engine, ops: &[Op]) -> Result<(), TestCaseError> {
        let s = scope("acct");
        let k = |i: usize| key(&format!("m{i}"));
        let f = |i: usize| fp(&format!("m{i}"));
        let mut model = vec![Key::Absent; 3];
        let mut held: HashMap<usize, Reservation> = HashMap::new();
        let holds = |model: &[Key], i: usize, r: &Reservation| matches!(model[i], Key::InFlight { token, .. } if token == r.token());
        for (n, op) in ops.iter().enumerate() {
            let store = engine.store().clone();
            match *op {
                Op::Begin(i) => match store.begin(&s, &k(i), &f(i)).unwrap() {
                    Begin::Execute(r) => {
                        let inherited = match &model[i] {
                            Key::Absent => None,
                            Key::InFlight {
                                lease_ended: true,
                                point,
                                ..
                            } => point.clone(),
                            other => {
                                return Err(TestCaseError::fail(format!(
                                    "op {n}: executed over {other:?}"
                                )));
                            }
                        };
                        prop_assert_eq!(
                            r.recovery_point().map(|p| p.name().to_owned()),
                            inherited.clone(),
                            "op {}: inherited point",
                            n
                        );
                        model[i] = Key::InFlight {
                            token: r.token(),
                            lease_ended: false,
                            point: inherited,
                        };
                        // The one taken over, if still held, is stale now.
                        if let Some(old) = held.insert(i, r) {
                            old.abandon();
                        }
                    }
                    Begin::Replay(_) => prop_assert_eq!(&model[i], &Key::Completed, "op {}", n),
                    Begin::InProgress { .. } => prop_assert!(
                        matches!(
                            model[i],
                            Key::InFlight {
                                lease_ended: false,
                                ..
                            }
                        ),
                        "op {n}: in progress, model {:?}",
                        model[i]
                    ),
                    other => prop_assert!(false, "op {n}: {other:?}"),
                },
                Op::Save(i, how, p) => {
                    let file = matches!(engine, Engine::File(..));
                    let Some(r) = held.get_mut(&i) else { continue };
                    let name = format!("s{p}");
                    let holder = holds(&model, i, r);
                    let saved = match how {
                        0 => r.save_point(&name, b"x").map_err(|e| e.to_string()),
                        _ => {
                            let fail = how == 2;
                            r.save_point_with(&name, move |_| {
                                if fail {
                                    Err("step failed")
                                } else {
                                    Ok(b"x".to_vec())
                                }
                            })
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                        }
                    };
                    let expect_ok = holder && (how == 0 || (file && how == 1));
                    prop_assert_eq!(saved.is_ok(), expect_ok, "op {}: {:?}", n, saved);
                    if expect_ok && let Key::InFlight { point, .. } = &mut model[i] {
                        *point = Some(name);
                    }
                }
                Op::Release(i) => {
                    let Some(r) = held.remove(&i) else { continue };
                    let holder = holds(&model, i, &r);
                    prop_assert_eq!(r.release().is_ok(), holder, "op {}", n);
                    if holder {
                        let_go(&mut model[i]);
                    }
                }
                Op::Drop(i) => {
                    let Some(r) = held.remove(&i) else { continue };
                    if holds(&model, i, &r) {
                        let_go(&mut model[i]);
                    }
                    drop(r);
                }
                Op::Abandon(i) => {
                    if let Some(r) = held.remove(&i) {
                        r.abandon();
                    }
                }
                Op::Complete(i, kept) => {
                    let Some(r) = held.remove(&i) else { continue };
                    let holder = holds(&model, i, &r);
                    let done = r.complete(resp(if kept { 201 } else { 503 }, "ok"));
                    prop_assert_eq!(done.is_ok(), holder, "op {}: {:?}", n, done);
                    if holder {
                        if kept {
                            model[i] = Key::Completed;
                        } else {
                            let_go(&mut model[i]);
                        }
                    }
                }
                Op::Expire => {
                    engine.clock().advance(LEASE);
                    for m in &mut model {
                        if let Key::InFlight { lease_ended, .. } = m {
                            *lease_ended = true;
                        }
                    }
                }
                Op::Reopen => {
                    let Engine::File(t, log) = &mut engine else {
                        continue;
                    };
                    let log = *log;
                    for (_, r) in held.drain() {
                        r.abandon();
                    }
                    let reopened = t.take().unwrap().reopen_with(|c| {
                        c.lease(LEASE)
                            .write_ahead_log(log)
                            .in_flight_at_open(InFlightAtOpen::Release)
                    });
                    *t = Some(reopened);
                    for m in &mut model {
                        let_go(m);
                    }
                }
            }
            // After every step: each key's state and point are the model's.
            for (i, m) in model.iter().enumerate() {
                let got = engine.store().get(&s, &k(i)).unwrap();
                match (m, &got) {
                    (Key::Absent, None) => {}
                    (Key::Completed, Some(r)) if r.state == State::Completed => {}
                    (Key::InFlight { point, .. }, Some(r)) if r.state == State::InFlight => {
                        prop_assert_eq!(
                            r.recovery_point.as_ref().map(|p| p.name().to_owned()),
                            point.clone(),
                            "op {}: m{} point",
                            n,
                            i
                        );
                    }
                    _ => prop_assert!(false, "op {n}: m{i}: model {m:?}, store {got:?}"),
                }
            }
        }
        prop_assert!(engine.store().check().unwrap().is_sound());
        Ok(())
    }

    fn file(log: bool) -> Engine {
        Engine::File(Some(super::file(log)), log)
    }

    fn memory_engine() -> Engine {
        let clock = ManualClock::new(T0);
        Engine::Memory(memory_with_lease(&clock), clock)
    }

    /// A store on a Redis server of its own, when there is one.
    #[cfg(feature = "redis")]
    fn redis_engine() -> Option<Engine> {
        let (store, clock, server) = super::redis_with_lease()?;
        Some(Engine::Redis {
            store,
            clock,
            _server: server,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[cfg(feature = "redis")]
        #[test]
        fn model_p1_p3_redis(ops in proptest::collection::vec(op(), 1..40)) {
            if let Some(engine) = redis_engine() {
                run(engine, &ops)?;
            }
        }

        #[test]
        fn model_p1_p3_with_the_log(ops in proptest::collection::vec(op(), 1..40)) {
            run(file(true), &ops)?;
        }

        #[test]
        fn model_p1_p3_without_the_log(ops in proptest::collection::vec(op(), 1..40)) {
            run(file(false), &ops)?;
        }

        #[test]
        fn model_p1_p3_memory(ops in proptest::collection::vec(op(), 1..40)) {
            run(memory_engine(), &ops)?;
        }
    }
}

/// P1 and C8 after P3: a holder that let go of a key with a point is refused from then on
/// (the record kept for the retry is under another token): it cannot renew or complete, on
/// every engine.
#[test]
fn p3_a_holder_that_let_go_of_a_key_with_a_point_is_fenced() {
    every_engine(|store, _clock, case| {
        let (s, f) = (scope("acct"), fp("x"));
        for how in ["release", "503"] {
            let k = key(&format!("k-{how}"));
            let mut r = execute(store.begin(&s, &k, &f).unwrap());
            r.save_point("step-1", b"1").unwrap();
            let token = r.token();
            if how == "release" {
                r.release().unwrap();
            } else {
                r.complete(resp(503, "later")).unwrap();
            }
            let b: &dyn idemstore::Backend = store;
            assert!(
                matches!(b.renew(&s, &k, token), Err(LeaseError::Fenced { .. })),
                "{case} {how}: renew"
            );
            assert!(
                b.complete(&s, &k, token, resp(201, "late")).is_err(),
                "{case} {how}: complete"
            );
            // The retry takes over at once, with the point.
            let retry = execute(store.begin(&s, &k, &f).unwrap());
            assert_eq!(retry.recovery_point().unwrap().name(), "step-1", "{case}");
            assert!(retry.token() > token);
        }
    });
}
