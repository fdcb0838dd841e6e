//! A one-shot reply slot from the writer thread to one waiting caller, usable both by blocking
//! and by async callers.
//!
//! Why: every operation that waits on disk has a blocking and an async form, and neither may
//! tie up a thread per waiting call beyond the caller's own: a blocking caller parks on a
//! condition variable, an async caller leaves a waker, and the writer wakes whichever is there.
//! No async runtime is involved. Invariant: a receiver always ends, either with the value or,
//! if the sender was dropped without sending (the writer stopped or panicked), with `Closed`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

struct SlotState<T> {
    value: Option<T>,
    closed: bool,
    waker: Option<Waker>,
}

/// The writer's end.
pub(crate) struct Sender<T>(Option<Arc<Slot<T>>>);

/// The caller's end; also a `Future`.
pub(crate) struct Receiver<T>(Arc<Slot<T>>);

/// The sender went away without replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            value: None,
            closed: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (Sender(Some(slot.clone())), Receiver(slot))
}

impl<T> Sender<T> {
    pub(crate) fn send(mut self, value: T) {
        if let Some(slot) = self.0.take() {
            finish(&slot, Some(value));
        }
    }
}

fn finish<T>(slot: &Slot<T>, value: Option<T>) {
    let waker = {
        let mut st = slot.state.lock();
        st.value = value;
        st.closed = true;
        st.waker.take()
    };
    slot.ready.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            finish(&slot, None);
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks the calling thread until the reply arrives.
    pub(crate) fn wait(self) -> Result<T, Closed> {
        let mut st = self.0.state.lock();
        while !st.closed {
            self.0.ready.wait(&mut st);
        }
        st.value.take().ok_or(Closed)
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.0.state.lock();
        if st.closed {
            return Poll::Ready(st.value.take().ok_or(Closed));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
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
        drop(tx);
        assert_eq!(rx.wait(), Err(Closed));
    }
}
