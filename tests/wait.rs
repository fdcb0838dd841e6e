//! A retry that waits for the first attempt (C5, C6, H17): woken by the completion or the
//! release itself, bounded, on the file and the memory engine.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use idemstore::{Begin, Store};

use crate::support::{T0, execute, fp, key, memory, open, resp, scope};

/// A waker that records that it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `f` once with a waker that records its wake.
fn poll_once<F: Future + Unpin>(f: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::clone(flag));
    std::pin::Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// Drives `f` to its end on a runtime of its own.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn stores() -> Vec<(&'static str, Store, Option<crate::support::TestStore>)> {
    let file = open();
    let clock = idemstore::ManualClock::new(T0);
    vec![
        ("file", file.store.clone(), Some(file)),
        ("memory", memory(&clock), None),
    ]
}

#[test]
fn c5_a_waiting_retry_is_woken_by_the_completion_and_replays_it() {
    for (engine, store, _keep) in stores() {
        let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
        let first = execute(store.begin(&s, &k, &f).unwrap());
        let mut retry = Box::pin(store.begin_waiting_async(&s, &k, &f, Duration::from_secs(600)));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        assert!(poll_once(&mut retry, &flag).is_pending(), "{engine}: waits");
        assert_eq!(store.stats().waiting, 1, "{engine}");
        first.complete(resp(201, "first")).unwrap();
        assert!(
            flag.0.load(Ordering::SeqCst),
            "{engine}: the completion woke it"
        );
        // Woken, it looks again: an answer the engine may give later (the file engine's
        // writer), so it is driven to its end.
        let Ok(Begin::Replay(r)) = block_on(&mut retry) else {
            panic!("{engine}: not a replay");
        };
        assert_eq!(r.body(), b"first");
        drop(retry);
        assert_eq!(store.stats().waiting, 0, "{engine}");
    }
}

#[test]
fn c6_a_waiting_retry_is_woken_by_a_release_and_executes() {
    for (engine, store, _keep) in stores() {
        let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
        let first = execute(store.begin(&s, &k, &f).unwrap());
        let mut retry = Box::pin(store.begin_waiting_async(&s, &k, &f, Duration::from_secs(600)));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        assert!(poll_once(&mut retry, &flag).is_pending(), "{engine}");
        drop(first);
        // A dropped reservation's release is sent without waiting: let it land.
        store.get(&s, &k).unwrap();
        assert!(
            flag.0.load(Ordering::SeqCst),
            "{engine}: the release woke it"
        );
        let Ok(Begin::Execute(second)) = block_on(&mut retry) else {
            panic!("{engine}: not an execute");
        };
        second.complete(resp(201, "second")).unwrap();
    }
}

#[test]
fn c5_a_wait_ends_at_its_bound_in_progress_and_a_dropped_wait_leaves_nothing() {
    for (engine, store, _keep) in stores() {
        let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
        let _first = execute(store.begin(&s, &k, &f).unwrap());
        let begun = store
            .begin_waiting(&s, &k, &f, Duration::from_millis(30))
            .unwrap();
        assert!(
            matches!(begun, Begin::InProgress { .. }),
            "{engine}: {begun:?}"
        );
        let mut retry = Box::pin(store.begin_waiting_async(&s, &k, &f, Duration::from_secs(600)));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        assert!(poll_once(&mut retry, &flag).is_pending());
        assert_eq!(store.stats().waiting, 1);
        drop(retry);
        assert_eq!(store.stats().waiting, 0, "{engine}");
        // Other keys' completions wake nothing.
        let other = execute(store.begin(&s, &key("k2"), &f).unwrap());
        let mut retry = Box::pin(store.begin_waiting_async(&s, &k, &f, Duration::from_secs(600)));
        assert!(poll_once(&mut retry, &flag).is_pending());
        flag.0.store(false, Ordering::SeqCst);
        other.complete(resp(201, "other")).unwrap();
        assert!(
            !flag.0.load(Ordering::SeqCst),
            "{engine}: woken by another key"
        );
    }
}

#[test]
fn c5_a_wait_from_inside_a_transaction_is_refused_at_once() {
    let t = open();
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let _held = execute(t.store.begin(&s, &k, &f).unwrap());
    let store = t.store.clone();
    let seen = t
        .store
        .write(move |_| -> Result<String, ()> {
            Ok(format!(
                "{:?}",
                store.begin_waiting(&s, &k, &f, Duration::from_secs(600))
            ))
        })
        .unwrap();
    assert!(seen.contains("Reentrant"), "{seen}");
}

#[test]
fn c5_a_wait_without_a_bound_lasts_until_woken_and_closing_the_store_ends_every_wait() {
    let t = open();
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let _held = execute(t.store.begin(&s, &k, &f).unwrap());
    let mut forever = Box::pin(t.store.begin_waiting_async(&s, &k, &f, Duration::MAX));
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    assert!(
        poll_once(&mut forever, &flag).is_pending(),
        "Duration::MAX waits"
    );
    assert!(poll_once(&mut forever, &flag).is_pending());
    t.store.clone().close().unwrap();
    assert!(flag.0.load(Ordering::SeqCst), "the close woke it");
    let closed = block_on(&mut forever);
    assert!(
        matches!(
            closed,
            Err(idemstore::BeginError::Unavailable(
                idemstore::Unavailable::Closed
            ))
        ),
        "{closed:?}"
    );
}

#[test]
fn c5_a_store_that_stops_ends_every_wait() {
    const LEAKED: idemstore::redb::TableDefinition<&str, u64> =
        idemstore::redb::TableDefinition::new("leaked");
    let t = open();
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let _held = execute(t.store.begin(&s, &k, &f).unwrap());
    let mut waiting = Box::pin(
        t.store
            .begin_waiting_async(&s, &k, &f, Duration::from_secs(600)),
    );
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    assert!(poll_once(&mut waiting, &flag).is_pending());
    // A closure that leaks a table stops the store (`exactly_once.rs`).
    let leaked = t.store.write(|txn| -> Result<(), idemstore::redb::Error> {
        std::mem::forget(txn.open_table(LEAKED)?);
        Ok(())
    });
    assert!(leaked.is_err());
    assert!(
        flag.0.load(Ordering::SeqCst),
        "stopping did not wake the wait"
    );
    let answer = block_on(&mut waiting);
    assert!(format!("{answer:?}").contains("Poisoned"), "{answer:?}");
}

/// A waker that records that it was woken, then panics: a fault of the executor that polled
/// with it.
struct Panicky(AtomicBool);

impl Wake for Panicky {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
        panic!("a waker that panics");
    }
}

/// Polls `f` once with a waker that panics.
fn poll_panicking<F: Future + Unpin>(f: &mut F) -> (Poll<F::Output>, Arc<Panicky>) {
    let panicky = Arc::new(Panicky(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&panicky));
    let polled = std::pin::Pin::new(f).poll(&mut Context::from_waker(&waker));
    (polled, panicky)
}

/// A wait, boxed.
type Waiting = std::pin::Pin<Box<dyn Future<Output = Result<Begin, idemstore::BeginError>> + Send>>;

/// Waits on `k` twice: first polled with a waker that panics, then with a flag.
fn waits_behind_a_panicking_waker(
    store: &Store,
    k: &idemstore::Key,
) -> (Waiting, Arc<Panicky>, Waiting, Arc<Flag>) {
    let (s, f) = (scope("acct"), fp("{}"));
    let mut broken: Waiting = Box::pin(store.begin_waiting_async(&s, k, &f, Duration::MAX));
    let (polled, panicky) = poll_panicking(&mut broken);
    assert!(polled.is_pending());
    let mut other: Waiting = Box::pin(store.begin_waiting_async(&s, k, &f, Duration::MAX));
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    assert!(poll_once(&mut other, &flag).is_pending());
    (broken, panicky, other, flag)
}

#[test]
fn c5_a_waker_that_panics_keeps_no_other_wait_of_its_key_asleep() {
    for (engine, store, _keep) in stores() {
        let (s, f) = (scope("acct"), fp("{}"));
        let first = execute(store.begin(&s, &key("k1"), &f).unwrap());
        let (broken, panicky, mut other, flag) = waits_behind_a_panicking_waker(&store, &key("k1"));
        let completed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            first.complete(resp(201, "first"))
        }));
        assert!(
            matches!(completed, Ok(Ok(_))),
            "{engine}: the completion unwound or failed"
        );
        assert!(panicky.0.load(Ordering::SeqCst), "{engine}");
        assert!(
            flag.0.load(Ordering::SeqCst),
            "{engine}: the completion woke the wait after the panicking one"
        );
        let Ok(Begin::Replay(r)) = block_on(&mut other) else {
            panic!("{engine}: not a replay");
        };
        assert_eq!(r.body(), b"first");
        // The wait whose waker panicked was fired too: polled again, it replays.
        assert!(matches!(block_on(broken), Ok(Begin::Replay(_))), "{engine}");
        // Closing wakes every wait, those after a panicking waker included.
        let _held = execute(store.begin(&s, &key("k2"), &f).unwrap());
        let (_broken, panicky, mut other, flag) =
            waits_behind_a_panicking_waker(&store, &key("k2"));
        let closed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.clone().close()));
        assert!(
            matches!(closed, Ok(Ok(()))),
            "{engine}: closing unwound or failed"
        );
        assert!(panicky.0.load(Ordering::SeqCst), "{engine}");
        assert!(flag.0.load(Ordering::SeqCst), "{engine}: the close woke it");
        let answer = block_on(&mut other);
        assert!(
            matches!(
                answer,
                Err(idemstore::BeginError::Unavailable(
                    idemstore::Unavailable::Closed
                ))
            ),
            "{engine}: {answer:?}"
        );
    }
}

/// Waits, bounded, for `done` to hold.
fn eventually(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn c5_a_waker_that_panics_at_the_bound_of_its_wait_leaves_later_bounds_running() {
    let store = memory(&idemstore::ManualClock::new(T0));
    let (s, k, f) = (scope("acct"), key("k1"), fp("{}"));
    let _held = execute(store.begin(&s, &k, &f).unwrap());
    let mut broken = Box::pin(store.begin_waiting_async(&s, &k, &f, Duration::from_millis(10)));
    let (polled, panicky) = poll_panicking(&mut broken);
    assert!(polled.is_pending());
    eventually(
        || panicky.0.load(Ordering::SeqCst),
        "the bound never woke the wait",
    );
    // The bounds of every wait are kept by one timer thread, which that waker's panic must
    // not end: a later bound still wakes its wait.
    let mut later = Box::pin(store.begin_waiting_async(&s, &k, &f, Duration::from_millis(10)));
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    assert!(poll_once(&mut later, &flag).is_pending());
    eventually(
        || flag.0.load(Ordering::SeqCst),
        "the bound after a panicking waker never woke its wait",
    );
    let answer = block_on(&mut later);
    assert!(matches!(answer, Ok(Begin::InProgress { .. })), "{answer:?}");
}

/// A call's answer is handed over by waking its future, on the engine's thread (the file
/// engine's writer): a waker that panics there is the executor's fault, and must not stop the
/// engine. Before, the panic ended the writer thread and poisoned the store.
#[test]
fn c10_a_waker_that_panics_when_its_answer_comes_leaves_the_store_serving() {
    let file = open();
    let store = &file.store;
    let (s, f) = (scope("acct"), fp("{}"));
    // The writer is held in a transaction of the caller's, so the call below is answered
    // only after its future was polled and left its waker.
    let (entered, running) = std::sync::mpsc::channel();
    let (go, hold) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.write(move |_| {
                entered.send(()).unwrap();
                hold.recv().unwrap();
                Ok::<_, ()>(())
            })
        })
    };
    running.recv().unwrap();
    let mut asked = Box::pin(store.begin_async(&s, &key("k"), &f));
    let (polled, panicky) = poll_panicking(&mut asked);
    assert!(polled.is_pending());
    go.send(()).unwrap();
    assert!(matches!(holder.join().unwrap(), Ok(())));
    // An upper bound, not a sleep: the writer answers and wakes the future.
    let waited = Instant::now();
    while !panicky.0.load(Ordering::SeqCst) {
        assert!(waited.elapsed() < Duration::from_secs(30), "never answered");
        std::thread::yield_now();
    }
    assert!(matches!(block_on(asked), Ok(Begin::Execute(_))));
    let next = store.begin(&s, &key("k2"), &f);
    assert!(matches!(next, Ok(Begin::Execute(_))), "{next:?}");
}
