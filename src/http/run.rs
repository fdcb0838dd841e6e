//! Where a guarded call runs once its inner service has been called, and who can wait for it.
//!
//! Why: hyper drops a response future when its connection closes. A handler's effect does
//! not stop with it: a commit already sent, a `spawn_blocking` already running, an outbound
//! call already made all land anyway. If the key were released then, the client's retry
//! would run the operation a second time. So once the inner service has been called, the call
//! is never cancelled by the layer's own future: it is spawned (tokio when the `tokio` feature
//! is on and a runtime is current, or an executor the caller supplies) and runs to completion,
//! storing its response for the retry to replay; and when there is nowhere to spawn it, a
//! cancelled call leaves its key in flight until its lease ends instead of releasing it.
//!
//! Invariants: a [`Started`] reservation is released only on an outcome the contract says
//! releases (the service failed, panicked, or answered a status that is not kept, or its body
//! failed) and is otherwise completed or, if dropped without either, abandoned; the layer's
//! running count includes every call from the store's `Execute` to the end of its completion,
//! spawned or not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;

use super::context::{Handled, Hold};
use crate::Reservation;
use crate::rules::key::{KeyHash, Scope};
use crate::sleep::Sleep;
use crate::store::Lease;

/// A task the layer hands to an executor: a guarded call, from the inner service's future
/// to the stored response.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A function that runs a [`Task`] to completion in the background (for example
/// `|task| { tokio::spawn(task); }`).
pub type SpawnFn = Arc<dyn Fn(Task) + Send + Sync>;

/// Where guarded calls run.
#[derive(Clone, Default)]
pub(crate) enum Executor {
    /// tokio's current runtime if there is one (feature `tokio`), else in the request's
    /// own future.
    #[default]
    Auto,
    /// The caller's executor.
    Custom(SpawnFn),
    /// Always in the request's own future.
    Inline,
}

impl Executor {
    /// Runs `task` (made by [`bounded`]) in the background, or hands it back if there is
    /// nowhere to run it.
    pub(crate) fn spawn(&self, task: Task) -> Result<(), Task> {
        match self {
            Executor::Custom(spawn) => {
                spawn(task);
                Ok(())
            }
            Executor::Inline => Err(task),
            Executor::Auto => spawn_on_tokio(task),
        }
    }
}

/// Whether the request whose call a task runs is gone (its future dropped), and the task to
/// wake when it goes.
#[derive(Clone, Default)]
pub(crate) struct Detached(Arc<DetachedState>);

#[derive(Default)]
struct DetachedState {
    gone: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Detached {
    /// A guard that marks the request gone when it is dropped.
    pub(crate) fn mark_on_drop(&self) -> MarkGone {
        MarkGone(self.clone())
    }

    /// Whether the request is gone; if not, `cx` is woken when it goes.
    fn poll_gone(&self, cx: &Context<'_>) -> bool {
        if self.0.gone.load(Ordering::Acquire) {
            return true;
        }
        let mut waker = self.0.waker.lock();
        // Checked again under the lock the marking side wakes under: no wake-up is lost.
        if self.0.gone.load(Ordering::Acquire) {
            return true;
        }
        *waker = Some(cx.waker().clone());
        false
    }
}

/// Marks its request gone when dropped.
pub(crate) struct MarkGone(Detached);

impl Drop for MarkGone {
    fn drop(&mut self) {
        let state = &(self.0).0;
        let waker = {
            let mut waker = state.waker.lock();
            state.gone.store(true, Ordering::Release);
            waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Executor::Auto => "Auto",
            Executor::Custom(_) => "Custom",
            Executor::Inline => "Inline",
        })
    }
}

#[cfg(feature = "tokio")]
fn spawn_on_tokio(task: Task) -> Result<(), Task> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(task);
            Ok(())
        }
        Err(_) => Err(task),
    }
}

#[cfg(not(feature = "tokio"))]
fn spawn_on_tokio(task: Task) -> Result<(), Task> {
    Err(task)
}

/// Runs `task` until it ends, or, once its request is gone, until a lease has passed since it
/// started: returning drops `task`, and a call given up leaves its key in flight (`Started`).
/// A handler or a response body that never ends so holds no task for ever. The timer starts
/// only when the request goes, so a call whose client waits costs none. (Run inline, the task
/// is the request's own future: dropping the request drops it.)
pub(crate) async fn bounded<F: Future<Output = ()>>(task: F, lease: Duration, gone: Detached) {
    let mut task = std::pin::pin!(task);
    let started = std::time::Instant::now();
    let mut timer: Option<Sleep> = None;
    std::future::poll_fn(|cx| {
        if task.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if timer.is_none() && gone.poll_gone(cx) {
            timer = Some(Sleep::new(lease.saturating_sub(started.elapsed())));
        }
        match timer.as_mut() {
            Some(t) => Pin::new(t).poll(cx),
            None => Poll::Pending,
        }
    })
    .await
}

/// A reservation whose operation has started. Dropped without being completed or released
/// (the future running the call was dropped: the client went away and nothing else runs the
/// rest, or something beside the handler panicked), it leaves the key in flight until its
/// lease ends: the operation may have had its effect. The handler's own panic is caught where
/// it happens and releases the key, as any failure does (C6): see `future.rs`. The handler may
/// have taken the reservation to complete it itself (`IdempotencyContext::complete_with`).
pub(crate) struct Started(Option<Arc<Hold>>);

impl Started {
    pub(crate) fn new(hold: Option<Arc<Hold>>) -> Started {
        Started(hold)
    }

    /// Whether the call is guarded: false when the request runs unguarded (failed open).
    pub(crate) fn holds(&self) -> bool {
        self.0.is_some()
    }

    /// The reservation, to complete; `None` when the request runs unguarded (failed open) or
    /// the handler took it.
    pub(crate) fn take(mut self) -> Option<Reservation> {
        self.0.take().and_then(|hold| hold.take())
    }

    /// Whether the handler took the reservation to complete it: then `Some`, with what its
    /// completion did.
    pub(crate) fn handled(&self) -> Option<Handled> {
        self.0.as_ref().and_then(|hold| hold.handled())
    }

    /// The reservation's key and token.
    pub(crate) fn held_key(&self) -> Option<((KeyHash, Scope), u64)> {
        self.0
            .as_ref()
            .map(|hold| ((hold.hash, hold.scope.clone()), hold.token))
    }

    /// The lease, to renew while the call runs.
    pub(crate) fn lease(&self) -> Option<Lease> {
        self.0.as_ref().map(|hold| hold.lease().clone())
    }

    /// Releases the key: the call ended in an outcome that is not kept (C6, C7).
    pub(crate) fn release(mut self) {
        drop(self.0.take().and_then(|hold| hold.take()));
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(reservation) = self.0.take().and_then(|hold| hold.take()) {
            reservation.abandon();
        }
    }
}

/// Guarded calls running now, and the tasks waiting for there to be none.
#[derive(Default)]
pub(crate) struct Running {
    count: AtomicUsize,
    idle: Mutex<Vec<Waker>>,
}

impl Running {
    /// Counts one call until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> RunningGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        RunningGuard(Arc::clone(self))
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// A future that resolves once no guarded call is running.
    pub(crate) fn idle(self: &Arc<Self>) -> Idle {
        Idle(Arc::clone(self))
    }
}

/// One running call, counted in [`Running`] while it lives.
pub(crate) struct RunningGuard(Arc<Running>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Taken under the lock that `Idle::poll` registers under, so a waiter that saw a
            // non-zero count has its waker here.
            let wakers = std::mem::take(&mut *self.0.idle.lock());
            for w in wakers {
                w.wake();
            }
        }
    }
}

/// The future of [`IdempotencyLayer::idle`](super::IdempotencyLayer::idle).
#[must_use = "a future does nothing unless polled"]
pub struct Idle(Arc<Running>);

impl Future for Idle {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.count() == 0 {
            return Poll::Ready(());
        }
        let mut wakers = self.0.idle.lock();
        // Checked again under the lock: the last guard takes the wakers under it.
        if self.0.count() == 0 {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("running", &self.0.count())
            .finish()
    }
}
