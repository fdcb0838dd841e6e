//! Exactly-once effects (E1-E5, docs/exactly-once.md): the caller's writes and the stored
//! response commit together, through `Reservation::complete_with`, `Store::write` and
//! `Store::read`; and a power loss at every I/O point of them leaves both or neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idemstore::redb::{ReadableTable, TableDefinition};
use idemstore::{
    Begin, CompleteError, CompleteWithError, Completion, Key, ManualClock, Response, Store,
    TransactionError, Unavailable,
};

use crate::sim_disk::{Mode, Rng, SimDisk, disk_config, open_on};
use crate::support::{T0, execute, fp, key, memory, open_with, replay, resp, scope, within};

/// The caller's table in the tests: booking id → what was booked.
const BOOKINGS: TableDefinition<&str, &str> = TableDefinition::new("bookings");
/// A caller's counter, written by `Store::write`.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

type Fallible<T> = Result<T, idemstore::redb::Error>;

/// The booking row `id`, if the file holds it.
fn booking(store: &Store, id: &str) -> Option<String> {
    store
        .read(|txn| -> Fallible<_> {
            let Ok(table) = txn.open_table(BOOKINGS) else {
                return Ok(None);
            };
            Ok(table.get(id)?.map(|g| g.value().to_owned()))
        })
        .unwrap()
}

/// Books `id` and answers 201 with `id` as the body.
fn book(
    id: &'static str,
) -> impl FnOnce(&idemstore::redb::WriteTransaction) -> Fallible<Response> + Send + 'static {
    move |txn| {
        txn.open_table(BOOKINGS)?.insert(id, "room 101")?;
        Ok(resp(201, id))
    }
}

fn both_logs(test: impl Fn(bool)) {
    for log in [true, false] {
        test(log);
    }
}

#[test]
fn e1_complete_with_commits_the_writes_and_the_response_together() {
    both_logs(|log| {
        let t = open_with(|c| c.write_ahead_log(log));
        let (s, k, f) = (scope("acct"), key("k1"), fp("{\"room\":101}"));
        // Something logged first, so the direct batch has an overlay to fold in.
        let other = execute(t.store.begin(&s, &key("k0"), &f).unwrap());
        other.complete(resp(201, "b-0")).unwrap();
        let r = execute(t.store.begin(&s, &k, &f).unwrap());
        assert_eq!(r.complete_with(book("b-1")).unwrap(), Completion::Stored);
        assert_eq!(
            booking(&t.store, "b-1").as_deref(),
            Some("room 101"),
            "log={log}"
        );
        assert_eq!(replay(t.store.begin(&s, &k, &f).unwrap()).body(), b"b-1");
        let t = t.reopen();
        assert_eq!(booking(&t.store, "b-1").as_deref(), Some("room 101"));
        assert_eq!(replay(t.store.begin(&s, &k, &f).unwrap()).body(), b"b-1");
        assert_eq!(
            replay(t.store.begin(&s, &key("k0"), &f).unwrap()).body(),
            b"b-0"
        );
        assert!(t.store.check().unwrap().is_sound());
    });
}

#[test]
fn e2_an_error_rolls_back_its_own_writes_only_even_in_a_shared_batch() {
    both_logs(|log| {
        let t = open_with(|c| c.write_ahead_log(log));
        const N: usize = 16;
        let ids: Vec<&'static str> = (0..N)
            .map(|i| &*Box::leak(format!("b-{i}").into_boxed_str()))
            .collect();
        let held: Vec<_> = ids
            .iter()
            .map(|&id| execute(t.store.begin(&scope("acct"), &key(id), &fp(id)).unwrap()))
            .collect();
        // Hold the writer inside a transaction while the completions queue up behind it, so
        // that they are all in its next batch.
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let blocker = t.store.write_async(move |_| {
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            Ok::<_, ()>(())
        });
        started.recv().unwrap();
        let batches_before = t.store.stats().commits;
        let futures: Vec<_> = held
            .into_iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (r, &id))| {
                r.complete_with_async(move |txn| {
                    txn.open_table(BOOKINGS)
                        .and_then(|mut t| t.insert(id, "room").map(drop).map_err(Into::into))
                        .map_err(|e| e.to_string())?;
                    if i % 2 == 1 {
                        return Err(format!("{id} refused"));
                    }
                    Ok(resp(201, id))
                })
            })
            .collect();
        go.send(()).unwrap();
        block_on(blocker).unwrap();
        let outcomes: Vec<_> = futures.into_iter().map(block_on).collect();
        let stats = t.store.stats();
        assert_eq!(
            stats.commits - batches_before,
            2,
            "log={log}: the blocker's batch, then one"
        );
        assert!(stats.max_batch >= N as u64, "{stats:?}");
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let (id, k) = (ids[i], key(ids[i]));
            if i % 2 == 1 {
                assert!(
                    matches!(&outcome, Err(CompleteWithError::Aborted(e)) if *e == format!("{id} refused")),
                    "{outcome:?}"
                );
                assert_eq!(booking(&t.store, id), None, "log={log}: {id} rolled back");
                // The key was released: the retry executes.
                let again = execute(t.store.begin(&scope("acct"), &k, &fp(id)).unwrap());
                again.release().unwrap();
            } else {
                assert_eq!(outcome.unwrap(), Completion::Stored);
                assert!(booking(&t.store, id).is_some(), "log={log}: {id} kept");
                replay(t.store.begin(&scope("acct"), &k, &fp(id)).unwrap());
            }
        }
        assert!(t.store.check().unwrap().is_sound());
    });
}

#[test]
fn e2_a_panic_rolls_back_and_releases_and_the_store_carries_on() {
    let t = open_with(|c| c);
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let r = execute(t.store.begin(&s, &k, &f).unwrap());
    let outcome = r.complete_with(|txn| -> Fallible<Response> {
        txn.open_table(BOOKINGS)?.insert("b-1", "room")?;
        panic!("the handler's bug");
    });
    assert!(
        matches!(&outcome, Err(CompleteWithError::Panicked { message }) if message.contains("the handler's bug")),
        "{outcome:?}"
    );
    assert_eq!(booking(&t.store, "b-1"), None);
    let r = execute(t.store.begin(&s, &k, &f).unwrap());
    r.complete_with(book("b-2")).unwrap();
    assert_eq!(replay(t.store.begin(&s, &k, &f).unwrap()).body(), b"b-2");
    let written = t.store.write(|_| -> Fallible<()> { panic!("again") });
    assert!(matches!(written, Err(TransactionError::Panicked { .. })));
    assert!(t.store.check().unwrap().is_sound());
}

#[test]
fn e3_a_stale_holders_closure_never_runs() {
    let t = open_with(|c| c.lease(Duration::from_secs(5)));
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let stale = execute(t.store.begin(&s, &k, &f).unwrap());
    t.clock.advance(Duration::from_secs(6));
    let holder = execute(t.store.begin(&s, &k, &f).unwrap());
    let ran = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&ran);
    let outcome = stale.complete_with(move |txn| {
        seen.store(true, Ordering::SeqCst);
        book("b-stale")(txn)
    });
    assert!(
        matches!(outcome, Err(CompleteWithError::Complete(CompleteError::Fenced { current, .. })) if current == holder.token()),
        "{outcome:?}"
    );
    assert!(!ran.load(Ordering::SeqCst), "a fenced closure ran");
    assert_eq!(
        holder.complete_with(book("b-1")).unwrap(),
        Completion::Stored
    );
    assert_eq!(booking(&t.store, "b-stale"), None);
}

#[test]
fn e3_a_response_the_store_does_not_keep_rolls_the_writes_back() {
    let t = open_with(|c| c.max_response_bytes(1024));
    let (s, f) = (scope("acct"), fp("{}"));
    // A status the default policy does not keep: released, and the writes with it.
    let r = execute(t.store.begin(&s, &key("k500"), &f).unwrap());
    let outcome = r.complete_with(|txn| -> Fallible<Response> {
        txn.open_table(BOOKINGS)?.insert("b-500", "room")?;
        Ok(resp(503, "try later"))
    });
    assert_eq!(outcome.unwrap(), Completion::Released);
    assert_eq!(booking(&t.store, "b-500"), None);
    execute(t.store.begin(&s, &key("k500"), &f).unwrap())
        .release()
        .unwrap();
    // Too large to store.
    let r = execute(t.store.begin(&s, &key("big"), &f).unwrap());
    let outcome = r.complete_with(|txn| -> Fallible<Response> {
        txn.open_table(BOOKINGS)?.insert("b-big", "room")?;
        Ok(resp(201, &"x".repeat(4096)))
    });
    assert!(
        matches!(
            outcome,
            Err(CompleteWithError::Complete(
                CompleteError::ResponseTooLarge { .. }
            ))
        ),
        "{outcome:?}"
    );
    assert_eq!(booking(&t.store, "b-big"), None);
    execute(t.store.begin(&s, &key("big"), &f).unwrap())
        .release()
        .unwrap();
}

#[test]
fn e4_write_commits_or_rolls_back_and_read_sees_only_what_committed() {
    both_logs(|log| {
        let t = open_with(|c| c.write_ahead_log(log));
        let add = |n: u64| {
            move |txn: &idemstore::redb::WriteTransaction| -> Result<u64, String> {
                let mut table = txn.open_table(COUNTERS).map_err(|e| e.to_string())?;
                let now = table
                    .get("seats")
                    .map_err(|e| e.to_string())?
                    .map_or(0, |g| g.value());
                table.insert("seats", now + n).map_err(|e| e.to_string())?;
                if now + n > 10 {
                    return Err(format!("{} seats is too many", now + n));
                }
                Ok(now + n)
            }
        };
        assert_eq!(t.store.write(add(4)).unwrap(), 4);
        assert_eq!(t.store.write(add(5)).unwrap(), 9);
        let refused = t.store.write(add(5));
        assert!(matches!(refused, Err(TransactionError::Aborted(ref e)) if e.contains("14")));
        let seats = |store: &Store| {
            store
                .read(|txn| -> Fallible<u64> {
                    Ok(txn
                        .open_table(COUNTERS)?
                        .get("seats")?
                        .map_or(0, |g| g.value()))
                })
                .unwrap()
        };
        assert_eq!(seats(&t.store), 9);
        let aborted = t.store.read(|_| Err::<(), _>("no"));
        assert!(matches!(aborted, Err(TransactionError::Aborted("no"))));
        let t = t.reopen();
        assert_eq!(seats(&t.store), 9, "log={log}");
    });
}

#[test]
fn e4_calls_into_the_store_from_inside_a_transaction_are_refused_not_deadlocked() {
    let t = open_with(|c| c);
    let store = t.store.clone();
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let seen = t
        .store
        .write(move |_| -> Fallible<Vec<String>> {
            let mut seen = Vec::new();
            seen.push(format!("{:?}", store.begin(&s, &k, &f).map(|_| ())));
            seen.push(format!("{:?}", store.flush()));
            seen.push(format!("{:?}", store.get(&s, &k)));
            seen.push(format!("{:?}", store.read(|_| Ok::<_, ()>(()))));
            seen.push(format!("{:?}", store.write(|_| Ok::<_, ()>(()))));
            Ok(seen)
        })
        .unwrap();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert!(s.contains("Reentrant"), "{seen:?}");
    }
    // The store carries on.
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    execute(t.store.begin(&s, &k, &f).unwrap())
        .complete(resp(201, "{}"))
        .unwrap();
}

#[test]
fn e5_engines_without_a_database_refuse_unrun_and_release_the_key() {
    let clock = ManualClock::new(T0);
    let store = memory(&clock);
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let r = execute(store.begin(&s, &k, &f).unwrap());
    let ran = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&ran);
    let outcome = r.complete_with(move |_| -> Fallible<Response> {
        seen.store(true, Ordering::SeqCst);
        Ok(resp(201, "{}"))
    });
    assert!(
        matches!(
            outcome,
            Err(CompleteWithError::Complete(CompleteError::Unavailable(
                Unavailable::Unsupported { .. }
            )))
        ),
        "{outcome:?}"
    );
    assert!(!ran.load(Ordering::SeqCst));
    // Released: the retry executes.
    execute(store.begin(&s, &k, &f).unwrap()).release().unwrap();
    assert!(matches!(
        store.write(|_| Ok::<_, ()>(())),
        Err(TransactionError::Unavailable(
            Unavailable::Unsupported { .. }
        ))
    ));
    assert!(matches!(
        store.read(|_| Ok::<_, ()>(())),
        Err(TransactionError::Unavailable(
            Unavailable::Unsupported { .. }
        ))
    ));
}

#[test]
fn e1_complete_with_async_is_not_undone_by_dropping_its_future() {
    let t = open_with(|c| c);
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let r = execute(t.store.begin(&s, &k, &f).unwrap());
    drop(r.complete_with_async(book("b-1")));
    // The work was queued when the future was made: a flush after it sees it done.
    t.store.flush().unwrap();
    assert_eq!(booking(&t.store, "b-1").as_deref(), Some("room 101"));
    assert_eq!(replay(t.store.begin(&s, &k, &f).unwrap()).body(), b"b-1");
    let r = execute(t.store.begin(&s, &key("k2"), &f).unwrap());
    let done = block_on(r.complete_with_async(book("b-2")));
    assert_eq!(done.unwrap(), Completion::Stored);
    let n = block_on(t.store.write_async(|_| Ok::<_, ()>(7)));
    assert_eq!(n.unwrap(), 7);
}

/// Polls a future to its end on this thread (the store's futures need no runtime).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(f)
}

// ---------------------------------------------------------------------------------------------
// Power loss at every I/O point.

/// What one step of the crash workload was told.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    /// `complete_with` stored the booking `id` with its response.
    Stored(&'static str),
    /// The closure refused: nothing of `id` may exist.
    Refused(&'static str),
    /// `Store::write` added one to the counter, which then read `n`.
    Counted(u64),
    /// A plain `complete` stored the response of `plain-<i>`.
    Plain(usize),
}

/// The crash workload: bookings through `complete_with` (every third one refused by its
/// closure), counters through `Store::write`, and plain completions between them, so that
/// direct batches meet logged ones. Returns what was acknowledged before the first error.
fn crash_workload(store: &Store, told: &mut Vec<Told>) -> Result<(), String> {
    const IDS: [&str; 6] = ["b0", "b1", "b2", "b3", "b4", "b5"];
    let s = scope("acct");
    for (i, id) in IDS.into_iter().enumerate() {
        let k = key(id);
        let f = fp(id);
        // A plain completion, logged (or committed) on its own.
        let plain = Key::new(format!("plain-{i}")).map_err(|e| e.to_string())?;
        match store.begin(&s, &plain, &f).map_err(|e| e.to_string())? {
            Begin::Execute(r) => {
                r.complete(resp(201, "plain")).map_err(|e| e.to_string())?;
                told.push(Told::Plain(i));
            }
            other => return Err(format!("plain-{i}: {other:?}")),
        }
        let Begin::Execute(r) = store.begin(&s, &k, &f).map_err(|e| e.to_string())? else {
            return Err(format!("{id}: not executed"));
        };
        let refuse = i % 3 == 2;
        let outcome = r.complete_with(move |txn| {
            txn.open_table(BOOKINGS)
                .map_err(|e| e.to_string())?
                .insert(id, "room")
                .map_err(|e| e.to_string())?;
            if refuse {
                return Err("refused".to_owned());
            }
            Ok(resp(201, id))
        });
        match outcome {
            Ok(Completion::Stored) => told.push(Told::Stored(id)),
            Err(CompleteWithError::Aborted(_)) if refuse => told.push(Told::Refused(id)),
            other => return Err(format!("{id}: {other:?}")),
        }
        let n = store
            .write(|txn| -> Result<u64, String> {
                let mut t = txn.open_table(COUNTERS).map_err(|e| e.to_string())?;
                let n = t
                    .get("n")
                    .map_err(|e| e.to_string())?
                    .map_or(0, |g| g.value())
                    + 1;
                t.insert("n", n).map_err(|e| e.to_string())?;
                Ok(n)
            })
            .map_err(|e| e.to_string())?;
        told.push(Told::Counted(n));
    }
    Ok(())
}

fn open_disks(db: &SimDisk, log: Option<&SimDisk>, clock: &ManualClock) -> Store {
    open_on(db, log, disk_config(clock).build().unwrap())
}

/// Checks a store opened after a crash against what the workload was told: every booking
/// exists exactly when its key replays its response; acknowledged bookings and counts survive;
/// refused bookings left nothing.
fn check_after_crash(store: &Store, told: &[Told], case: &str) {
    let s = scope("acct");
    for id in ["b0", "b1", "b2", "b3", "b4", "b5"] {
        let row = booking(store, id).is_some();
        let record = store.get(&s, &key(id)).unwrap();
        let completed = record
            .as_ref()
            .is_some_and(|r| r.state == idemstore::State::Completed);
        assert_eq!(
            row, completed,
            "{case}: {id}: booking row {row}, completed record {completed}"
        );
        if told.contains(&Told::Stored(id)) {
            assert!(row, "{case}: acknowledged booking {id} lost");
            let Begin::Replay(r) = store.begin(&s, &key(id), &fp(id)).unwrap() else {
                panic!("{case}: {id} does not replay");
            };
            assert_eq!(r.body(), id.as_bytes(), "{case}");
        }
        if told.contains(&Told::Refused(id)) {
            assert!(!row, "{case}: refused booking {id} exists");
        }
    }
    for t in told {
        if let Told::Plain(i) = t {
            let plain = Key::new(format!("plain-{i}")).unwrap();
            let Begin::Replay(r) = store.begin(&s, &plain, &fp(&format!("b{i}"))).unwrap() else {
                panic!("{case}: acknowledged plain-{i} does not replay");
            };
            assert_eq!(r.body(), b"plain", "{case}");
        }
    }
    let acked = told
        .iter()
        .filter_map(|t| match t {
            Told::Counted(n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let n = store
        .read(|txn| -> Fallible<u64> {
            let Ok(t) = txn.open_table(COUNTERS) else {
                return Ok(0);
            };
            Ok(t.get("n")?.map_or(0, |g| g.value()))
        })
        .unwrap();
    assert!(n >= acked, "{case}: counter {n} below acknowledged {acked}");
    assert!(store.check().unwrap().is_sound(), "{case}");
}

/// E1: a power loss after every mutating I/O call of the workload, with and without the log.
#[test]
fn e1_power_loss_at_every_io_point_leaves_the_writes_and_the_response_both_or_neither() {
    for log in [true, false] {
        // A clean run counts the workload's mutating calls.
        let clock = ManualClock::new(T0);
        let db = SimDisk::new(Mode::Subset);
        let log_disk = log.then(|| db.sibling(Vec::new()));
        let store = open_disks(&db, log_disk.as_ref(), &clock);
        let opened = db.mutations();
        let mut told = Vec::new();
        crash_workload(&store, &mut told).unwrap();
        let total = db.mutations() - opened;
        drop(store);
        assert!(total > 20, "{total}");
        let mut rng = Rng::new(0xE1_0001 + u64::from(log));
        for n in 1..=total {
            let clock = ManualClock::new(T0);
            let db = SimDisk::new(Mode::Subset);
            let log_disk = log.then(|| db.sibling(Vec::new()));
            let store = open_disks(&db, log_disk.as_ref(), &clock);
            db.arm(n);
            let mut told = Vec::new();
            let _ = crash_workload(&store, &mut told);
            drop(store);
            let mode = if n % 2 == 0 { Mode::Torn } else { Mode::Subset };
            let db_image = db.crash_image(&mut rng, mode);
            let log_image = log_disk.as_ref().map(|l| l.crash_image(&mut rng, mode));
            let db = SimDisk::from_image(db_image);
            let log_disk = log_image.map(|image| db.sibling(image));
            let store = open_disks(&db, log_disk.as_ref(), &clock);
            check_after_crash(&store, &told, &format!("log={log} crash after call {n}"));
            store.close().unwrap();
        }
    }
}

#[test]
fn e4_a_release_or_complete_from_inside_a_transaction_is_refused_and_frees_the_key() {
    let t = open_with(|c| c);
    let (s, f) = (scope("acct"), fp("{}"));
    for (k, how) in [("k-release", 0), ("k-complete", 1), ("k-release-async", 2)] {
        let held = execute(t.store.begin(&s, &key(k), &f).unwrap());
        let store = t.store.clone();
        let seen = within(Duration::from_secs(30), move || {
            store.write(move |_| -> Result<String, ()> {
                Ok(match how {
                    0 => format!("{:?}", held.release()),
                    1 => format!("{:?}", held.complete(resp(201, "x"))),
                    _ => {
                        // Dropped unpolled: a release sent without waiting.
                        drop(held.release_async());
                        "queued".to_owned()
                    }
                })
            })
        });
        let seen = seen.expect("the store deadlocked").unwrap();
        assert!(how == 2 || seen.contains("Reentrant"), "{k}: {seen}");
        // The key is free: the refused call's reservation released it as it was dropped.
        execute(t.store.begin(&s, &key(k), &f).unwrap())
            .release()
            .unwrap();
    }
}

#[test]
fn e4_a_read_does_not_wait_for_a_running_closure() {
    let t = open_with(|c| c);
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (started, running) = std::sync::mpsc::channel::<()>();
    let store = t.store.clone();
    let writing = std::thread::spawn(move || {
        store.write(move |txn| -> Fallible<()> {
            txn.open_table(COUNTERS)?.insert("n", 1)?;
            started.send(()).unwrap();
            wait.recv().unwrap();
            Ok(())
        })
    });
    running.recv().unwrap();
    let store = t.store.clone();
    let read = within(Duration::from_secs(30), move || {
        store
            .read(|txn| -> Fallible<bool> { Ok(txn.open_table(COUNTERS).is_ok()) })
            .unwrap()
    });
    assert_eq!(
        read,
        Some(false),
        "the read waited for the closure, or saw its write"
    );
    go.send(()).unwrap();
    writing.join().unwrap().unwrap();
}

#[test]
fn e2_a_closure_that_leaks_a_table_stops_the_store_with_a_cause_instead_of_hanging_it() {
    let t = open_with(|c| c);
    let store = t.store.clone();
    let outcome = within(Duration::from_secs(30), move || {
        let leaked = store.write(|txn| -> Fallible<()> {
            std::mem::forget(txn.open_table(COUNTERS)?);
            Ok(())
        });
        (format!("{leaked:?}"), format!("{:?}", store.flush()))
    });
    let (leaked, after) = outcome.expect("the store hung");
    assert!(leaked.contains("left a table open"), "{leaked}");
    assert!(
        after.contains("Poisoned") && after.contains("left a table open"),
        "{after}"
    );
}

// ---------------------------------------------------------------------------------------------
// A model: random sequences of completions with and without the caller's writes, plain writes,
// releases and reopens, against a reference model of the records and the caller's tables.

mod model {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Begin(usize),
        /// Completes the held reservation of a key: 0 stores with a row, 1 refuses (error),
        /// 2 panics, 3 answers a status the policy does not keep, 4 plain `complete`.
        Complete(usize, u8),
        Release(usize),
        /// Adds one to the counter, or refuses to.
        Write(bool),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize).prop_map(Op::Begin),
            4 => (0..3usize, 0..5u8).prop_map(|(k, how)| Op::Complete(k, how)),
            1 => (0..3usize).prop_map(Op::Release),
            2 => any::<bool>().prop_map(Op::Write),
            1 => Just(Op::Reopen),
        ]
    }

    /// What the model expects of a key.
    #[derive(Debug, Clone, PartialEq)]
    enum Expect {
        Absent,
        InFlight,
        /// Completed with this body; `row` says whether a booking row goes with it.
        Completed {
            body: String,
            row: bool,
        },
    }

    fn run(log: bool, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut t = open_with(|c| c.write_ahead_log(log));
        let s = scope("acct");
        let mut expect = vec![Expect::Absent; 3];
        let mut held: HashMap<usize, idemstore::Reservation> = HashMap::new();
        let mut counter = 0u64;
        for (n, op) in ops.iter().enumerate() {
            let k = |i: usize| key(&format!("m{i}"));
            let f = |i: usize| fp(&format!("m{i}"));
            match *op {
                Op::Begin(i) => match t.store.begin(&s, &k(i), &f(i)).unwrap() {
                    Begin::Execute(r) => {
                        prop_assert_eq!(&expect[i], &Expect::Absent, "op {}: executed", n);
                        expect[i] = Expect::InFlight;
                        held.insert(i, r);
                    }
                    Begin::Replay(r) => match &expect[i] {
                        Expect::Completed { body, .. } => {
                            prop_assert_eq!(r.body(), body.as_bytes(), "op {}", n)
                        }
                        other => prop_assert!(false, "op {n}: replayed, expected {other:?}"),
                    },
                    Begin::InProgress { .. } => {
                        prop_assert_eq!(&expect[i], &Expect::InFlight, "op {}", n)
                    }
                    Begin::Conflict => prop_assert!(false, "op {n}: conflict"),
                    Begin::OutcomeUnknown => prop_assert!(false, "op {n}: outcome unknown"),
                },
                Op::Complete(i, how) => {
                    let Some(r) = held.remove(&i) else { continue };
                    let body = format!("b{n}");
                    let id = format!("m{i}");
                    let out = if how == 4 {
                        r.complete(resp(201, &body)).map_err(|e| e.to_string())
                    } else {
                        let (row_id, row_body) = (id.clone(), body.clone());
                        r.complete_with(move |txn| {
                            let mut t = txn.open_table(BOOKINGS).map_err(|e| e.to_string())?;
                            t.insert(row_id.as_str(), row_body.as_str())
                                .map_err(|e| e.to_string())?;
                            match how {
                                0 => Ok(resp(201, &row_body)),
                                1 => Err("refused".to_owned()),
                                2 => panic!("the model's closure panics"),
                                _ => Ok(resp(503, &row_body)),
                            }
                        })
                        .map_err(|e| e.to_string())
                    };
                    match (how, out) {
                        (0, Ok(Completion::Stored)) => {
                            expect[i] = Expect::Completed { body, row: true };
                        }
                        (4, Ok(Completion::Stored)) => {
                            expect[i] = Expect::Completed { body, row: false };
                        }
                        (3, Ok(Completion::Released)) | (1 | 2, Err(_)) => {
                            expect[i] = Expect::Absent;
                        }
                        (how, out) => prop_assert!(false, "op {n}: how {how}: {out:?}"),
                    }
                }
                Op::Release(i) => {
                    if let Some(r) = held.remove(&i) {
                        r.release().unwrap();
                        expect[i] = Expect::Absent;
                    }
                }
                Op::Write(ok) => {
                    let wrote = t.store.write(move |txn| -> Result<u64, String> {
                        let mut c = txn.open_table(COUNTERS).map_err(|e| e.to_string())?;
                        let v = c
                            .get("n")
                            .map_err(|e| e.to_string())?
                            .map_or(0, |g| g.value())
                            + 1;
                        c.insert("n", v).map_err(|e| e.to_string())?;
                        if ok { Ok(v) } else { Err("no".to_owned()) }
                    });
                    match (ok, wrote) {
                        (true, Ok(v)) => {
                            counter += 1;
                            prop_assert_eq!(v, counter, "op {}", n);
                        }
                        (false, Err(TransactionError::Aborted(_))) => {}
                        (_, other) => prop_assert!(false, "op {n}: write: {other:?}"),
                    }
                }
                Op::Reopen => {
                    // Held reservations are dropped (released) first; in-flight keys are
                    // released at open anyway.
                    held.clear();
                    for e in &mut expect {
                        if *e == Expect::InFlight {
                            *e = Expect::Absent;
                        }
                    }
                    t = t.reopen_with(|c| c.write_ahead_log(log).release_in_flight_on_open(true));
                }
            }
            // After every step: each booking row exists exactly when the model says, and holds
            // the completed response's body; the counter is the model's.
            for (i, e) in expect.iter().enumerate() {
                let row = booking(&t.store, &format!("m{i}"));
                match e {
                    Expect::Completed { body, row: true } => {
                        prop_assert_eq!(row.as_deref(), Some(body.as_str()), "op {}: m{}", n, i)
                    }
                    _ => prop_assert_eq!(row, None, "op {}: m{}: a row without its response", n, i),
                }
            }
            let n_now = t
                .store
                .read(|txn| -> Fallible<u64> {
                    let Ok(c) = txn.open_table(COUNTERS) else {
                        return Ok(0);
                    };
                    Ok(c.get("n")?.map_or(0, |g| g.value()))
                })
                .unwrap();
            prop_assert_eq!(n_now, counter, "op {}: counter", n);
        }
        prop_assert!(t.store.check().unwrap().is_sound());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn model_e1_e4_with_the_log(ops in proptest::collection::vec(op(), 1..40)) {
            run(true, &ops)?;
        }

        #[test]
        fn model_e1_e4_without_the_log(ops in proptest::collection::vec(op(), 1..40)) {
            run(false, &ops)?;
        }
    }
}
