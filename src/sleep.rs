//! [`Sleep`]: a future that ends at an instant, on any executor.
//!
//! Why: the HTTP layer bounds the calls whose clients left (`http/run.rs`) and a waiting retry
//! bounds its wait (`store/wait.rs`), on whatever executor polls them. tokio's timer panics on a runtime built without it, and other
//! executors have none, so the layer keeps its own: one thread, started on first use, that
//! wakes each sleeping future when its instant has passed.
//!
//! Invariants: a `Sleep` is ready once its instant has passed and never before (one too far ahead
//! for the clock, never); each pending `Sleep` is woken at most once by the thread, after its
//! instant; the thread takes the wakers of all the entries due before it wakes any, and wakes each
//! inside `poison::catch`, so a waker that panics neither ends the thread nor keeps another `Sleep`
//! from its wake; the thread holds a small entry per `Sleep` until that entry's instant, and
//! nothing of a `Sleep` dropped before it but the entry, which goes once such entries are half of
//! those held (and 1,024 or more). If the thread cannot be started, a `Sleep` never ends, and a
//! bound that waits for it never applies.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A future that ends `after` its creation.
pub(crate) struct Sleep {
    /// `None`: later than the clock can say, so never.
    at: Option<Instant>,
    entry: Option<Arc<Timer>>,
}

impl Sleep {
    pub(crate) fn new(after: Duration) -> Sleep {
        Sleep {
            at: Instant::now().checked_add(after),
            entry: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.at else {
            return Poll::Pending;
        };
        if Instant::now() >= at {
            return Poll::Ready(());
        }
        match &self.entry {
            Some(entry) => {
                let mut waker = entry.waker.lock();
                if entry.fired.load(AtomicOrdering::Acquire) {
                    return Poll::Ready(());
                }
                *waker = Some(cx.waker().clone());
            }
            None => {
                let entry = Arc::new(Timer {
                    fired: AtomicBool::new(false),
                    given_up: AtomicBool::new(false),
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                if let Some(wheel) = wheel() {
                    wheel.add(at, Arc::clone(&entry));
                }
                self.entry = Some(entry);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        // The waker need not live on; the entry is counted as given up, and the thread drops
        // such entries in bulk once they are half of what it holds.
        if let Some(entry) = &self.entry {
            entry.waker.lock().take();
            if let Some(wheel) = wheel() {
                // Under the heap's lock, where the thread marks an entry fired as it takes
                // it out: an entry is counted as given up only while the heap holds it.
                let _due = wheel.due.lock();
                if !entry.fired.load(AtomicOrdering::Acquire)
                    && !entry.given_up.swap(true, AtomicOrdering::AcqRel)
                {
                    wheel.given_up.fetch_add(1, AtomicOrdering::Relaxed);
                }
            }
        }
    }
}

struct Timer {
    fired: AtomicBool,
    /// Its `Sleep` was dropped before its instant.
    given_up: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// An entry in the thread's heap, earliest first.
struct Due {
    at: Instant,
    seq: u64,
    entry: Arc<Timer>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap, and the earliest instant must come first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Wheel {
    due: Mutex<BinaryHeap<Due>>,
    changed: Condvar,
    seq: AtomicU64,
    /// Entries held whose `Sleep` was dropped (about: a heuristic for when to sweep).
    given_up: AtomicUsize,
}

/// Below this many entries, given-up ones are left to their instants.
const SWEEP_FROM: usize = 1024;

impl Wheel {
    fn add(&self, at: Instant, entry: Arc<Timer>) {
        let seq = self.seq.fetch_add(1, AtomicOrdering::Relaxed);
        let mut due = self.due.lock();
        // A client can make many sleeps and drop them (waits it gives up): their entries go
        // once they are half of the heap, so memory follows the sleeps alive, not the ones made.
        let given_up = self.given_up.load(AtomicOrdering::Relaxed);
        if due.len() >= SWEEP_FROM && given_up.saturating_mul(2) > due.len() {
            let before = due.len();
            due.retain(|d| !d.entry.given_up.load(AtomicOrdering::Acquire));
            let swept = before - due.len();
            let _ =
                self.given_up
                    .fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |n| {
                        Some(n.saturating_sub(swept))
                    });
        }
        let earliest = due.peek().is_none_or(|d| at < d.at);
        due.push(Due { at, seq, entry });
        drop(due);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut due = self.due.lock();
        loop {
            let now = Instant::now();
            let mut fire = Vec::new();
            while due.peek().is_some_and(|d| d.at <= now) {
                if let Some(d) = due.pop() {
                    d.entry.fired.store(true, AtomicOrdering::Release);
                    if d.entry.given_up.load(AtomicOrdering::Acquire) {
                        let _ = self.given_up.fetch_update(
                            AtomicOrdering::Relaxed,
                            AtomicOrdering::Relaxed,
                            |n| Some(n.saturating_sub(1)),
                        );
                    }
                    fire.push(d);
                }
            }
            if !fire.is_empty() {
                drop(due);
                let wakers: Vec<Waker> = fire
                    .iter()
                    .filter_map(|d| {
                        let mut waker = d.entry.waker.lock();
                        d.entry.fired.store(true, AtomicOrdering::Release);
                        waker.take()
                    })
                    .collect();
                drop(fire);
                for w in wakers {
                    // A waker that panics is its executor's fault; the thread, which every
                    // other `Sleep` needs, goes on (the panic hook has reported it).
                    let _ = crate::poison::catch(move || w.wake());
                }
                due = self.due.lock();
                continue;
            }
            match due.peek().map(|d| d.at) {
                Some(at) => {
                    let _ = self.changed.wait_until(&mut due, at);
                }
                None => self.changed.wait(&mut due),
            }
        }
    }
}

/// The timer thread, started on first use; `None` if it could not be started.
fn wheel() -> Option<&'static Arc<Wheel>> {
    static WHEEL: OnceLock<Option<Arc<Wheel>>> = OnceLock::new();
    WHEEL
        .get_or_init(|| {
            let wheel = Arc::new(Wheel {
                due: Mutex::new(BinaryHeap::new()),
                changed: Condvar::new(),
                seq: AtomicU64::new(0),
                given_up: AtomicUsize::new(0),
            });
            let runs = Arc::clone(&wheel);
            std::thread::Builder::new()
                .name("idemstore-timer".into())
                .spawn(move || runs.run())
                .ok()
                .map(|_| wheel)
        })
        .as_ref()
}

/// Runs `f` to its end on the calling thread, parking between polls: the blocking form of a
/// future the crate made (a wait woken by the engine or by a [`Sleep`]).
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_ends_after_its_instant_and_not_before() {
        let start = Instant::now();
        block_on(Sleep::new(Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(30));
        // Sleeps made in any order each end, none before its own instant. (Only lower bounds:
        // how late a sleep ends depends on the machine's load.)
        let second = Instant::now();
        let later = Sleep::new(Duration::from_millis(40));
        let sooner = Sleep::new(Duration::from_millis(10));
        block_on(sooner);
        assert!(second.elapsed() >= Duration::from_millis(10));
        block_on(later);
        assert!(second.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn sleeps_dropped_before_their_instant_do_not_stay_held() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..5_000 {
            let mut sleep = Sleep::new(Duration::from_secs(3600));
            assert!(Pin::new(&mut sleep).poll(&mut cx).is_pending());
        }
        let mut last = Sleep::new(Duration::from_secs(3600));
        assert!(Pin::new(&mut last).poll(&mut cx).is_pending());
        let held = wheel().map_or(0, |w| w.due.lock().len());
        assert!(held < 5_000, "{held} entries held for dropped sleeps");
    }
}
