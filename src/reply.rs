//! A one-shot reply slot from the writer thread to one waiting caller, usable both by blocking
//! and by async callers.
//!
//! Why: every operation that waits on disk has a blocking and an async form, and neither may
//! tie up a thread per waiting call beyond the caller's own: a blocking caller parks on a
//! condition variable, an async caller leaves a waker, and the writer wakes whichever is there.
//! No async runtime is involved. In step mode (`engine/file/step.rs`) there is no writer thread: the slot
//! knows the writer, and the waiting caller runs its turns until the reply is in; a blocking
//! caller of the Redis engine likewise sends its own call when its lane is idle. Invariants: a
//! receiver always ends, either with the value or, if the sender was dropped without sending
//! (the writer stopped or panicked), with `Closed`; a value is either taken by the receiver or
//! handed back to the sender (when the receiver was abandoned first), never silently lost,
//! because both sides decide under the slot's lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Callers watching a slot for their reply right now (blocking or async), in the whole
/// process. Only a caller that waits alone watches: with more, the CPUs are better left to the
/// writer and the others.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Async receivers that left a waker and have not been answered yet, in the whole process.
/// While there are any, the executor has other waiting work, and a poll does not watch.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Work that runs on the threads waiting for its answers: the file engine's writer in step
/// mode (`engine/file/step.rs`), a Redis lane whose link is idle (`engine/redis/io.rs`).
pub(crate) trait Drive: Send + Sync {
    /// Runs one turn of the work; false when it had nothing to do.
    fn turn(&self) -> bool;

    /// Whether a turn may block on I/O. An async receiver's poll must not, so it only
    /// [`nudge`](Drive::nudge)s such work, as does a receiver dropped before its answer.
    fn turn_blocks(&self) -> bool {
        false
    }

    /// Makes sure the work's own thread takes what a receiver left queued.
    fn nudge(&self) {}
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
    /// Set once `closed` is: lets a spinning receiver watch without taking the lock.
    done: AtomicBool,
    /// How long a blocking receiver waiting alone watches `done` before it parks.
    spin: Duration,
    /// The work the receiver runs (or nudges) until the reply is in.
    driver: OnceLock<Weak<dyn Drive>>,
}

struct SlotState<T> {
    value: Option<T>,
    closed: bool,
    /// Closed by a sender dropped while its thread panicked.
    panicked: bool,
    /// The receiver went away; a later `send` gets its value back.
    abandoned: bool,
    waker: Option<Waker>,
}

/// The writer's end.
pub(crate) struct Sender<T>(Option<Arc<Slot<T>>>);

/// The caller's end; also a `Future`.
pub(crate) struct Receiver<T> {
    slot: Arc<Slot<T>>,
    /// Left a waker and is counted in `PARKED`.
    parked: bool,
}

/// The sender went away without replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Closed {
    /// It was dropped by a panicking thread: the store is being poisoned.
    pub(crate) panicked: bool,
}

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    spinning_channel(Duration::ZERO)
}

/// A channel whose blocking receiver, when no other caller is waiting, watches for the reply
/// for up to `spin` before it parks.
pub(crate) fn spinning_channel<T>(spin: Duration) -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            value: None,
            closed: false,
            panicked: false,
            abandoned: false,
            waker: None,
        }),
        ready: Condvar::new(),
        done: AtomicBool::new(false),
        spin,
        driver: OnceLock::new(),
    });
    (
        Sender(Some(slot.clone())),
        Receiver {
            slot,
            parked: false,
        },
    )
}

impl<T> Sender<T> {
    /// Whether the receiver has given up already.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|slot| slot.state.lock().abandoned)
    }

    /// Step mode: the receiver runs `driver` until the reply is in.
    pub(crate) fn drive_with(&self, driver: Weak<dyn Drive>) {
        if let Some(slot) = &self.0 {
            let _ = slot.driver.set(driver);
        }
    }

    /// Delivers `value`, or hands it back if the receiver was abandoned.
    pub(crate) fn send(mut self, value: T) -> Result<(), T> {
        match self.0.take() {
            Some(slot) => finish(&slot, Some(value)),
            None => Err(value),
        }
    }
}

fn finish<T>(slot: &Slot<T>, value: Option<T>) -> Result<(), T> {
    let waker = {
        let mut st = slot.state.lock();
        if st.abandoned {
            st.closed = true;
            return match value {
                Some(v) => Err(v),
                None => Ok(()),
            };
        }
        st.value = value;
        st.closed = true;
        slot.done.store(true, Ordering::Release);
        st.waker.take()
    };
    slot.ready.notify_all();
    if let Some(w) = waker {
        // The value is in the slot: a waker that panics (a fault of the executor that made
        // it) must not take down the thread that answers, often the engine's own.
        let _ = crate::poison::catch(|| w.wake());
    }
    Ok(())
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.state.lock().panicked = std::thread::panicking();
            let _ = finish(&slot, None);
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks the calling thread until the reply arrives, watching first when it waits alone
    /// (`watch_if_alone`).
    pub(crate) fn wait(self) -> Result<T, Closed> {
        self.drive(true);
        self.watch_if_alone();
        let mut st = self.slot.state.lock();
        while !st.closed {
            self.slot.ready.wait(&mut st);
        }
        let panicked = st.panicked;
        st.value.take().ok_or(Closed { panicked })
    }

    /// When no other caller is waiting, watches the slot for up to its spin time: a lone
    /// caller's reply comes after about one log sync, and waking a parked thread (or a parked
    /// executor worker) would add tens of microseconds to it.
    fn watch_if_alone(&self) {
        let spin = self.slot.spin;
        if spin.is_zero() || self.slot.done.load(Ordering::Acquire) {
            return;
        }
        let alone =
            WAITING.fetch_add(1, Ordering::Relaxed) == 0 && PARKED.load(Ordering::Relaxed) == 0;
        if alone {
            let start = Instant::now();
            while !self.slot.done.load(Ordering::Acquire) && start.elapsed() < spin {
                // Yield rather than spin: on a busy machine the thread this one waits for may
                // need this CPU.
                std::thread::yield_now();
            }
        }
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> Receiver<T> {
    /// The receiver runs `driver` (or nudges it) until the reply is in.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn drive_with(&self, driver: Weak<dyn Drive>) {
        let _ = self.slot.driver.set(driver);
    }

    /// Runs the driver's turns until the reply is in or it has nothing left to do; a driver
    /// whose turns block is only nudged unless `may_block`.
    fn drive(&self, may_block: bool) {
        let Some(driver) = self.slot.driver.get().and_then(Weak::upgrade) else {
            return;
        };
        if driver.turn_blocks() && !may_block {
            driver.nudge();
            return;
        }
        let mut more = true;
        while more && !self.slot.done.load(Ordering::Acquire) {
            more = driver.turn();
        }
    }

    /// Gives up on the reply: returns it if it already arrived; otherwise runs `not_yet` (under
    /// the slot's lock, so no `send` can slip in between) and a later `send` will get its value
    /// back.
    pub(crate) fn abandon(self, not_yet: impl FnOnce()) -> Option<T> {
        let mut st = self.slot.state.lock();
        st.abandoned = true;
        let value = st.value.take();
        if value.is_none() && !st.closed {
            not_yet();
        }
        value
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Closed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.drive(false);
        if !self.parked {
            // The first poll: a task waiting alone watches before it leaves its waker, as a
            // blocking caller does, so that a lone caller's worker is not parked and woken
            // for every answer.
            self.watch_if_alone();
        }
        let this = &mut *self;
        let mut st = this.slot.state.lock();
        if st.closed {
            let panicked = st.panicked;
            let out = st.value.take().ok_or(Closed { panicked });
            drop(st);
            this.unpark();
            return Poll::Ready(out);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        if !this.parked {
            this.parked = true;
            PARKED.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Pending
    }
}

impl<T> Receiver<T> {
    /// Leaves the count of parked receivers, once.
    fn unpark(&mut self) {
        if std::mem::take(&mut self.parked) {
            PARKED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.unpark();
        // Work left queued for this receiver still runs, on the driver's own thread.
        if !self.slot.done.load(Ordering::Acquire)
            && let Some(driver) = self.slot.driver.get().and_then(Weak::upgrade)
            && driver.turn_blocks()
        {
            driver.nudge();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_then_closed() {
        let (tx, rx) = channel();
        std::thread::spawn(move || tx.send(5u32));
        assert_eq!(rx.wait(), Ok(5));
        let (tx, rx) = channel::<u32>();
        let mut pending = false;
        assert_eq!(rx.abandon(|| pending = true), None);
        assert!(pending);
        assert_eq!(tx.send(6), Err(6));
        let (tx, rx) = channel::<u32>();
        assert_eq!(tx.send(7), Ok(()));
        assert_eq!(rx.abandon(|| unreachable!()), Some(7));
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(rx.wait(), Err(Closed { panicked: false }));
    }

    #[test]
    fn a_spinning_receiver_gets_its_value_or_closed() {
        for spin in [
            Duration::ZERO,
            Duration::from_micros(200),
            Duration::from_secs(5),
        ] {
            let (tx, rx) = spinning_channel(spin);
            let sender = std::thread::spawn(move || tx.send(9u32));
            assert_eq!(rx.wait(), Ok(9));
            assert_eq!(sender.join().ok(), Some(Ok(())));
            // A sender dropped without a value ends the spin too.
            let (tx, rx) = spinning_channel::<u32>(spin);
            std::thread::spawn(move || drop(tx));
            assert_eq!(rx.wait(), Err(Closed { panicked: false }));
        }
    }

    /// A task that waits alone watches the slot on its first poll, so an answer that comes
    /// within the spin is taken without parking; with no spin it parks at once, and leaves
    /// the count of parked receivers once answered.
    #[test]
    fn a_lone_async_receiver_watches_before_it_parks() {
        let mut cx = Context::from_waker(Waker::noop());
        let (tx, mut rx) = spinning_channel(Duration::from_secs(5));
        let sender = std::thread::spawn(move || tx.send(9u32));
        assert_eq!(Pin::new(&mut rx).poll(&mut cx), Poll::Ready(Ok(9)));
        assert!(!rx.parked);
        assert_eq!(sender.join().ok(), Some(Ok(())));

        let (tx, mut rx) = spinning_channel(Duration::ZERO);
        assert_eq!(Pin::new(&mut rx).poll(&mut cx), Poll::Pending);
        assert!(rx.parked);
        assert_eq!(tx.send(10u32), Ok(()));
        assert_eq!(Pin::new(&mut rx).poll(&mut cx), Poll::Ready(Ok(10)));
        assert!(!rx.parked);
    }

    /// Work whose turns block: counts its turns and nudges, and answers on its first turn.
    struct Lane {
        reply: Mutex<Option<Sender<u32>>>,
        turns: AtomicUsize,
        nudges: AtomicUsize,
    }

    impl Drive for Lane {
        fn turn(&self) -> bool {
            self.turns.fetch_add(1, Ordering::SeqCst);
            match self.reply.lock().take() {
                Some(tx) => tx.send(3).is_ok(),
                None => false,
            }
        }
        fn turn_blocks(&self) -> bool {
            true
        }
        fn nudge(&self) {
            self.nudges.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn lane(tx: Sender<u32>) -> Arc<Lane> {
        Arc::new(Lane {
            reply: Mutex::new(Some(tx)),
            turns: AtomicUsize::new(0),
            nudges: AtomicUsize::new(0),
        })
    }

    /// A blocking receiver runs work whose turns block; a poll only nudges it, and so does a
    /// receiver dropped before its answer, so that the work's own thread takes it.
    #[test]
    fn only_a_blocking_receiver_runs_turns_that_block() {
        let (tx, rx) = channel();
        let work = lane(tx);
        let driver: Arc<dyn Drive> = work.clone();
        rx.drive_with(Arc::downgrade(&driver));
        assert_eq!(rx.wait(), Ok(3));
        assert_eq!(work.turns.load(Ordering::SeqCst), 1);
        assert_eq!(work.nudges.load(Ordering::SeqCst), 0);

        let (tx, mut rx) = channel();
        let work = lane(tx);
        let driver: Arc<dyn Drive> = work.clone();
        rx.drive_with(Arc::downgrade(&driver));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Pin::new(&mut rx).poll(&mut cx), Poll::Pending);
        assert_eq!(work.turns.load(Ordering::SeqCst), 0);
        assert_eq!(work.nudges.load(Ordering::SeqCst), 1);
        drop(rx);
        assert_eq!(work.nudges.load(Ordering::SeqCst), 2);

        // Answered: dropping it nudges nothing.
        let (tx, rx) = channel();
        let work = lane(tx);
        let driver: Arc<dyn Drive> = work.clone();
        rx.drive_with(Arc::downgrade(&driver));
        assert!(work.turn());
        drop(rx);
        assert_eq!(work.nudges.load(Ordering::SeqCst), 0);
    }
}
