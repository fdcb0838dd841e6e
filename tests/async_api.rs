//! The async forms, driven by a minimal executor: the futures must be woken by the writer
//! thread, with no async runtime in the crate.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use idemstore::{Begin, Completion};

use crate::support::*;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` to completion, parking between polls; fails if nobody wakes it for 20 s.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "future was never woken");
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn async_begin_and_complete_are_woken_by_the_writer() {
    let t = open();
    let (s, k) = (scope("acct"), key("k"));
    let fut = t.store.begin_async(&s, &k, &fp("1"));
    let Begin::Execute(mut r) = block_on(fut).unwrap() else {
        panic!("expected Execute")
    };
    block_on(r.renew_async()).unwrap();
    let done = block_on(r.complete_async(resp(201, "async"))).unwrap();
    assert_eq!(done, Completion::Stored);
    let Begin::Replay(r) = block_on(t.store.begin_async(&s, &k, &fp("1"))).unwrap() else {
        panic!("expected Replay")
    };
    assert_eq!(r.body(), b"async");
    let other = key("other");
    let Begin::Execute(r) = block_on(t.store.begin_async(&s, &other, &fp("1"))).unwrap() else {
        panic!("expected Execute")
    };
    block_on(r.release_async()).unwrap();
    assert!(t.store.get(&s, &other).unwrap().is_none(), "C6: released");
}

#[test]
fn async_futures_are_send_and_static() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let t = open();
    let fut = t.store.begin_async(&scope("a"), &key("k"), &fp("1"));
    assert_send_static(&fut);
    let Begin::Execute(r) = block_on(fut).unwrap() else {
        panic!()
    };
    let fut = r.complete_async(resp(200, "x"));
    assert_send_static(&fut);
    block_on(fut).unwrap();
}

#[test]
fn c6_a_cancelled_future_holding_a_reservation_releases_the_key() {
    let t = open();
    let (s, k) = (scope("acct"), key("k"));
    let Begin::Execute(r) = block_on(t.store.begin_async(&s, &k, &fp("1"))).unwrap() else {
        panic!()
    };
    // A handler future that owns the reservation is dropped before it completes.
    let handler = async move {
        let _held = r;
        std::future::pending::<()>().await;
    };
    drop(handler);
    assert!(matches!(
        t.store.begin(&s, &k, &fp("1")).unwrap(),
        Begin::Execute(_)
    ));
}

#[test]
fn c6_a_begin_future_dropped_before_its_answer_leaves_no_key_in_flight() {
    begin_futures_dropped_leave_no_key_in_flight(open());
}

/// The memory engine decides at the call, before any poll: the reservation it made must be
/// released all the same.
#[test]
fn c6_a_begin_future_dropped_unpolled_on_the_memory_engine_leaves_no_key_in_flight() {
    begin_futures_dropped_leave_no_key_in_flight(open_with(|c| {
        c.durability(idemstore::Durability::Memory)
    }));
}

fn begin_futures_dropped_leave_no_key_in_flight(t: TestStore) {
    let s = scope("acct");
    for i in 0..200 {
        let k = key(&format!("k{i}"));
        // Queued at the writer, then cancelled: polled once or never.
        let mut fut = Box::pin(t.store.begin_async(&s, &k, &fp("1")));
        if i % 2 == 0 {
            let waker = Waker::noop();
            let _ = fut.as_mut().poll(&mut Context::from_waker(waker));
        }
        drop(fut);
        // The next attempt, issued after the cancellation, executes.
        match t.store.begin(&s, &k, &fp("1")).unwrap() {
            Begin::Execute(r) => r.complete(resp(200, "ok")).map(|_| ()).unwrap(),
            other => panic!("key {i}: {other:?}"),
        }
    }
}

#[test]
fn c6_a_dropped_release_future_still_frees_the_key_at_once() {
    let t = open();
    let s = scope("acct");
    for i in 0..100 {
        let k = key(&format!("k{i}"));
        let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
        drop(r.release_async());
        assert!(
            matches!(t.store.begin(&s, &k, &fp("1")).unwrap(), Begin::Execute(_)),
            "key {i}"
        );
    }
}

/// A waker that owns its task, as simple executors do: waking it after the executor is gone
/// drops the task, on whatever thread wakes it.
struct OwningWaker(std::sync::Mutex<Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>>);

impl Wake for OwningWaker {
    fn wake(self: Arc<Self>) {
        drop(self.0.lock().unwrap().take());
    }
}

#[test]
fn the_last_handle_dropped_on_the_writer_thread_does_not_hang_the_store() {
    let t = open();
    let path = t.path.clone();
    let clock = t.clock.clone();
    let fut = t.store.begin_async(&scope("a"), &key("k"), &fp("1"));
    let task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        let _ = fut.await;
    });
    let owner = Arc::new(OwningWaker(std::sync::Mutex::new(Some(task))));
    let waker = Waker::from(owner.clone());
    {
        let mut slot = owner.0.lock().unwrap();
        if let Some(task) = slot.as_mut() {
            let _ = task.as_mut().poll(&mut Context::from_waker(&waker));
        }
    }
    drop(waker);
    // Only the task holds the store now; the writer's wake drops it on the writer thread.
    let TestStore { store, dir, .. } = t;
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(20);
    let reopened = loop {
        match idemstore::Store::open(&path, config(&clock).build().unwrap()) {
            Ok(store) => break store,
            Err(idemstore::OpenError::AlreadyOpen) if Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("the store never closed: {e}"),
        }
    };
    // The reservation made for the dropped task was released.
    assert!(matches!(
        reopened.begin(&scope("a"), &key("k"), &fp("1")).unwrap(),
        Begin::Execute(_)
    ));
    drop(dir);
}

/// The name of the thread a witness was dropped on, and whether that thread was unwinding.
type Seen = Arc<std::sync::Mutex<Option<(Option<String>, bool)>>>;

/// Records, when dropped, the thread it was dropped on and whether that thread was unwinding.
struct Witness(Seen);

impl Drop for Witness {
    fn drop(&mut self) {
        let thread = std::thread::current().name().map(str::to_owned);
        if let Ok(mut seen) = self.0.lock() {
            *seen = Some((thread, std::thread::panicking()));
        }
    }
}

/// A task and its witness, dropped in that order: the witness sees how the task's drop ended.
struct Witnessed {
    task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    _witness: Witness,
}

impl Future for Witnessed {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.task.as_mut().poll(cx)
    }
}

#[test]
fn c5_the_last_handle_dropped_on_the_compactor_thread_closes_the_store_without_a_panic() {
    let clock = idemstore::ManualClock::new(T0);
    let store = idemstore::Store::in_memory(
        config(&clock)
            .ttl(Duration::from_secs(1))
            .lease(Duration::from_millis(100))
            .compactor_interval(Duration::from_millis(5))
            .build()
            .unwrap(),
    )
    .unwrap();
    let (s, k, f) = (scope("a"), key("k"), fp("1"));
    // A holder gone without a word: the key stays in flight until its record expires.
    execute(store.begin(&s, &k, &f).unwrap()).abandon();
    let waiting = store.begin_waiting_async(&s, &k, &f, Duration::from_secs(3600));
    let seen: Seen = Arc::default();
    let task = Witnessed {
        task: Box::pin(async move {
            let _ = waiting.await;
        }),
        _witness: Witness(Arc::clone(&seen)),
    };
    let owner = Arc::new(OwningWaker(std::sync::Mutex::new(Some(Box::pin(task)))));
    let waker = Waker::from(owner.clone());
    {
        let mut slot = owner.0.lock().unwrap();
        if let Some(task) = slot.as_mut() {
            assert!(
                task.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
    }
    drop(waker);
    assert_eq!(store.stats().waiting, 1);
    // Only the task holds the store now. The record expires; the compactor's pass removes it
    // and wakes the wait, which drops the task, and the last handle, on the compactor thread.
    drop(store);
    clock.advance(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(20);
    let (thread, unwinding) = loop {
        if let Some(seen) = seen.lock().unwrap().clone() {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "the compactor never woke the wait"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(thread.as_deref(), Some("idemstore-compactor"));
    assert!(
        !unwinding,
        "closing the store on the compactor thread panicked"
    );
}
