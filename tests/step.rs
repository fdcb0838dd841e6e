//! Step mode (`idemstore::__fuzz::step_mode`, feature `fuzzing`): the writer, the checkpoints
//! and the compactor of a file store run on the caller's thread. It must answer as the threads
//! do, run nothing behind the caller's back, and give one behaviour for one workload, power
//! losses included, so that a fuzz finding reproduces from its input.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use idemstore::__fuzz::{StepCheckpoints, run_checkpoint, step_mode};
use idemstore::{Begin, Completion, Config, ManualClock, Response, Store};

use crate::sim_disk::{Mode, Rng, SimDisk};
use crate::support::{T0, fp, key, scope};

/// How a store is run in these tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Threads,
    Step(StepCheckpoints),
}

fn config(clock: &ManualClock, run: Run) -> Config {
    let builder = Config::builder()
        .clock(clock.clone())
        // The smallest log: the workloads below wrap it and checkpoint.
        .log_capacity(64 << 10)
        .checkpoint_interval(Duration::from_secs(3600))
        .compactor_interval(Duration::from_secs(3600))
        .index_capacity(64);
    match run {
        Run::Threads => builder,
        Run::Step(checkpoints) => step_mode(builder, checkpoints),
    }
    .build()
    .unwrap()
}

fn open(db: &SimDisk, log: &SimDisk, clock: &ManualClock, run: Run) -> Store {
    Store::open_with_backends(db.clone(), log.clone(), config(clock, run)).unwrap()
}

/// A future's output, from a store in step mode: the first poll runs the writer.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a store in step mode left a future pending"),
    }
}

/// One answer, in a form that compares across runs.
fn answer(b: &Result<Begin, idemstore::BeginError>) -> String {
    match b {
        Ok(Begin::Execute(r)) => format!("execute {}", r.token()),
        Ok(Begin::Replay(r)) => format!("replay {}", r.body().len()),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error {e}"),
    }
}

/// A workload of begins, completions (padded, so the log wraps), releases and purges on a few
/// keys, with time passing; `held` runs a held checkpoint now and then. Returns what it was
/// told, and what a reopened store holds afterwards.
fn scripted(run: Run) -> Vec<String> {
    let clock = ManualClock::new(T0);
    let db = SimDisk::new(Mode::Subset);
    let log = db.sibling(Vec::new());
    let store = open(&db, &log, &clock, run);
    let s = scope("acct");
    let mut told = Vec::new();
    for round in 0..40usize {
        let k = key(&format!("k{}", round % 6));
        let f = fp(&format!("request {}", round % 6));
        let begun = store.begin(&s, &k, &f);
        told.push(answer(&begun));
        if let Ok(Begin::Execute(r)) = begun {
            match round % 5 {
                0 => told.push(format!("{:?}", r.release())),
                1 => told.push(format!(
                    "{:?}",
                    r.complete(Response::new(503, [("a", "b")], ""))
                )),
                _ => {
                    let body = "x".repeat(1500 + round * 10);
                    let done = r.complete(Response::new(201, [("a", "b")], body));
                    told.push(format!("{done:?}"));
                }
            }
        }
        if round % 7 == 6 {
            told.push(format!("{:?}", store.purge(&s, &k)));
        }
        if round % 4 == 3 {
            clock.advance(Duration::from_secs(30));
        }
        if run == Run::Step(StepCheckpoints::Held) && round % 9 == 8 {
            run_checkpoint(&store);
        }
    }
    store.close().unwrap();
    let store = open(&db, &log, &clock, run);
    for i in 0..6 {
        let info = store.get(&s, &key(&format!("k{i}"))).unwrap();
        told.push(format!(
            "k{i}: {:?}",
            info.map(|i| (i.state, i.token, i.response.map(|r| r.body().len())))
        ));
    }
    store.close().unwrap();
    told
}

#[test]
fn step_mode_answers_as_the_threads_do() {
    let threads = scripted(Run::Threads);
    assert!(threads.iter().any(|a| a.starts_with("replay")));
    for checkpoints in [StepCheckpoints::AtHandOff, StepCheckpoints::Held] {
        assert_eq!(
            scripted(Run::Step(checkpoints)),
            threads,
            "step mode with checkpoints {checkpoints:?}"
        );
    }
}

/// A seeded workload with a power loss at a drawn I/O call, a crash image and a reopen; returns
/// everything it observed, I/O counts included.
fn crash_case(seed: u64, checkpoints: StepCheckpoints) -> Vec<u64> {
    let mut rng = Rng::new(seed);
    let clock = ManualClock::new(T0);
    let run = Run::Step(checkpoints);
    let db = SimDisk::new(Mode::Subset);
    let log = db.sibling(Vec::new());
    let store = open(&db, &log, &clock, run);
    db.arm(rng.range(1, 120));
    let s = scope("acct");
    let mut seen = Vec::new();
    let mut held = Vec::new();
    for _ in 0..40 {
        if db.is_dead() {
            break;
        }
        let k = rng.below(4);
        let (key, fp) = (key(&format!("k{k}")), fp(&format!("r{k}")));
        match rng.below(5) {
            0 | 1 => match store.begin(&s, &key, &fp) {
                Ok(Begin::Execute(r)) => {
                    seen.push(r.token());
                    held.push(r);
                }
                other => seen.push(answer(&other).len() as u64),
            },
            2 if !held.is_empty() => {
                let r = held.swap_remove(rng.below(held.len() as u64) as usize);
                let body = "p".repeat(rng.range(0, 3000) as usize);
                let done = r.complete(Response::new(201, [("a", "b")], body));
                seen.push(u64::from(matches!(done, Ok(Completion::Stored))));
            }
            3 => seen.push(u64::from(store.purge(&s, &key).is_ok())),
            _ => {
                clock.advance(Duration::from_millis(rng.below(100_000)));
                seen.push(u64::from(run_checkpoint(&store)));
            }
        }
        seen.push(db.mutations());
        let stats = store.stats();
        seen.extend([stats.commits, stats.checkpoints, stats.log_syncs]);
    }
    held.clear();
    let _ = store.close();
    let (db, log) = (
        SimDisk::from_image(db.crash_image(&mut rng, Mode::Torn)),
        log.crash_image(&mut rng, Mode::Torn),
    );
    let log = db.sibling(log);
    let store = open(&db, &log, &clock, run);
    for k in 0..4 {
        let info = store.get(&s, &key(&format!("k{k}"))).unwrap();
        seen.push(info.map_or(0, |i| i.token));
    }
    store.close().unwrap();
    seen.push(db.mutations());
    seen
}

#[test]
fn step_mode_gives_one_behaviour_for_one_workload() {
    for seed in 0..24u64 {
        for checkpoints in [StepCheckpoints::AtHandOff, StepCheckpoints::Held] {
            let first = crash_case(seed, checkpoints);
            assert_eq!(
                crash_case(seed, checkpoints),
                first,
                "seed {seed}, checkpoints {checkpoints:?}"
            );
        }
    }
}

#[test]
fn a_held_checkpoint_runs_when_stepped_or_when_the_writer_needs_it() {
    let clock = ManualClock::new(T0);
    let db = SimDisk::new(Mode::Subset);
    let log = db.sibling(Vec::new());
    let store = open(&db, &log, &clock, Run::Step(StepCheckpoints::Held));
    let s = scope("acct");
    let complete = |i: usize| {
        let Ok(Begin::Execute(r)) = store.begin(&s, &key(&format!("k{i}")), &fp("r")) else {
            panic!("k{i} did not execute");
        };
        let body = "x".repeat(4000);
        assert!(matches!(
            r.complete(Response::new(201, [("a", "b")], body)),
            Ok(Completion::Stored)
        ));
    };
    // Half of the 60 KiB of log space, then one more batch: the writer hands a checkpoint
    // over, and it waits.
    let mut i = 0;
    while !run_checkpoint(&store) {
        assert!(i < 20, "no checkpoint was handed over");
        assert_eq!(
            store.stats().checkpoints,
            0,
            "a held checkpoint ran on its own"
        );
        complete(i);
        i += 1;
    }
    // Run now: the writer collects it at its next batch.
    complete(i);
    assert_eq!(store.stats().checkpoints, 1);
    // Held again until the log is full: the writer then runs it itself and carries on.
    for j in i + 1..i + 40 {
        complete(j);
    }
    let stats = store.stats();
    assert!(stats.log_full_waits > 0, "{stats:?}");
    assert!(stats.checkpoints > 1, "{stats:?}");
    store.close().unwrap();
}

#[test]
fn a_waiting_caller_runs_one_batch_for_all_that_is_queued() {
    let clock = ManualClock::new(T0);
    let db = SimDisk::new(Mode::Subset);
    let log = db.sibling(Vec::new());
    let store = open(&db, &log, &clock, Run::Step(StepCheckpoints::AtHandOff));
    let s = scope("acct");
    let (k1, k2, f) = (key("k1"), key("k2"), fp("r"));
    let first = store.begin_async(&s, &k1, &f);
    let second = store.begin_async(&s, &k2, &f);
    // Nothing runs until a caller waits: the writer has no thread.
    assert_eq!(store.stats().commits, 0);
    let Ok(Begin::Execute(r1)) = ready(first) else {
        panic!("k1 did not execute")
    };
    let Ok(Begin::Execute(r2)) = ready(second) else {
        panic!("k2 did not execute")
    };
    let stats = store.stats();
    assert_eq!((stats.commits, stats.max_batch), (1, 2), "{stats:?}");
    // A dropped reservation's release waits in the queue for the next caller that waits.
    drop(r1);
    assert_eq!(store.stats().releases, 0);
    assert!(matches!(
        r2.complete(Response::new(201, [("a", "b")], "done")),
        Ok(Completion::Stored)
    ));
    let stats = store.stats();
    assert_eq!((stats.releases, stats.commits), (1, 2), "{stats:?}");
    // The compactor runs when asked: nothing has expired.
    assert_eq!(store.compact_now().unwrap(), 0);
    store.close().unwrap();
}
