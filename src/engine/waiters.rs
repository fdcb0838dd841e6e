//! Retries that wait for a key in flight to settle, and the wake-up an engine gives them when
//! it does.
//!
//! Why: a retry that arrives while the first attempt runs can wait for its outcome and replay
//! it instead of answering `409` (`Store::begin_waiting_async`). Polling would cost a store
//! call per interval and answer late; instead the engine that completes, releases or removes a
//! key wakes the retries waiting on it, in this process.
//!
//! Invariants:
//! - a waiter registers before it asks the store, and an engine wakes after the key's new
//!   state is visible to `begin`, so a change between the two is never missed: either the
//!   waiter's `begin` sees it, or the wake finds the registration (the fences in [`Waiters`]
//!   order the registration's count against the engine's check);
//! - a wake fires every registration of its key at most once, and closing the store fires them
//!   all; a registration dropped unfired leaves nothing behind;
//! - a wake marks every registration it takes fired, and takes all their wakers out, before it
//!   wakes any; each waker runs inside `poison::catch`, so a waker that panics (a fault of the
//!   executor that made it) neither keeps the others asleep nor reaches the engine's thread or
//!   the caller whose change woke it;
//! - the map is keyed through the seeded hasher (H10) and holds one entry per waiting call;
//!   each entry knows its index in its key's list, so a wait dropped unfired takes out its own
//!   entry at a constant cost, however many wait on the key, under the lock every wake takes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::rules::key::KeyHash;
use crate::seeded::Seeded;

/// The retries waiting on keys in flight.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<[u8; 32], Vec<Arc<Signal>>, Seeded>>,
    /// Registrations alive: lets `wake` skip the lock when nobody waits.
    count: AtomicUsize,
    /// Entries of a key's list looked at to unregister a wait, so far.
    #[cfg(test)]
    looked_at: AtomicUsize,
}

#[derive(Default)]
struct Signal {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// Its index in its key's list while the list holds it; read and written under the map's
    /// lock only.
    slot: AtomicUsize,
}

impl Waiters {
    /// Registers a wait on `hash`; the returned future ends once an engine wakes it.
    pub(crate) fn register(self: &Arc<Self>, hash: KeyHash) -> Woken {
        let signal = Arc::new(Signal::default());
        let mut map = self.map.lock();
        let list = map.entry(hash.0).or_default();
        signal.slot.store(list.len(), Ordering::Relaxed);
        list.push(Arc::clone(&signal));
        drop(map);
        self.count.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Woken {
            waiters: Arc::clone(self),
            hash,
            signal,
        }
    }

    /// How many waits are registered now.
    pub(crate) fn waiting(&self) -> u64 {
        self.count.load(Ordering::SeqCst) as u64
    }

    /// Wakes every wait registered on `hash`: its key was completed, released or removed.
    pub(crate) fn wake(&self, hash: &KeyHash) {
        fence(Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let fired = self.map.lock().remove(&hash.0);
        wake_each(fired.into_iter().flatten());
    }

    /// Wakes every wait: the store closed, and each wait's next look says so.
    pub(crate) fn wake_all(&self) {
        let fired: Vec<_> = self.map.lock().drain().flat_map(|(_, list)| list).collect();
        wake_each(fired);
    }
}

/// Fires every signal, then wakes their wakers one by one, each on its own: a waker that
/// panics is the fault of the executor that made it, and the others are woken all the same.
fn wake_each(fired: impl IntoIterator<Item = Arc<Signal>>) {
    let wakers: Vec<Waker> = fired
        .into_iter()
        .filter_map(|signal| {
            signal.fired.store(true, Ordering::SeqCst);
            signal.waker.lock().take()
        })
        .collect();
    for waker in wakers {
        // Its panic was reported by the panic hook; nothing of the store is left half-done.
        let _ = crate::poison::catch(move || waker.wake());
    }
}

/// One registered wait: a future that ends when its key is woken. Dropping it unregisters.
pub(crate) struct Woken {
    waiters: Arc<Waiters>,
    hash: KeyHash,
    signal: Arc<Signal>,
}

impl Future for Woken {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        *self.signal.waker.lock() = Some(cx.waker().clone());
        // A wake between the check and the waker's store found no waker: look again.
        if self.signal.fired.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Woken {
    fn drop(&mut self) {
        self.waiters.count.fetch_sub(1, Ordering::SeqCst);
        if self.signal.fired.load(Ordering::SeqCst) {
            return;
        }
        let mut map = self.waiters.map.lock();
        let Some(list) = map.get_mut(&self.hash.0) else {
            return;
        };
        // Its own entry only, whatever the number of waits on the key: the global lock, which
        // every wake takes, is held for no scan of the list.
        let slot = self.signal.slot.load(Ordering::Relaxed);
        #[cfg(test)]
        self.waiters.looked_at.fetch_add(1, Ordering::Relaxed);
        // A wake may have taken the signal out, unfired as yet, and a new list hold the key.
        if !list.get(slot).is_some_and(|s| Arc::ptr_eq(s, &self.signal)) {
            return;
        }
        list.swap_remove(slot);
        if let Some(moved) = list.get(slot) {
            moved.slot.store(slot, Ordering::Relaxed);
        }
        if list.is_empty() {
            map.remove(&self.hash.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_fires_the_waits_of_its_key_only_and_dropped_waits_leave_nothing() {
        let waiters = Arc::new(Waiters::default());
        let (a, b) = (KeyHash([1; 32]), KeyHash([2; 32]));
        let on_a = waiters.register(a);
        let on_b = waiters.register(b);
        waiters.wake(&a);
        assert!(on_a.signal.fired.load(Ordering::SeqCst));
        assert!(!on_b.signal.fired.load(Ordering::SeqCst));
        drop(on_a);
        drop(on_b);
        assert!(waiters.map.lock().is_empty());
        assert_eq!(waiters.count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dropping_a_wait_looks_at_its_own_entry_only() {
        const N: usize = 1_000;
        let waiters = Arc::new(Waiters::default());
        let key = KeyHash([1; 32]);
        let mut waits: Vec<Woken> = (0..N).map(|_| waiters.register(key)).collect();
        // The first half dropped from the front: a scan of the list would cost the most.
        let mut rest = waits.split_off(N / 2);
        drop(waits);
        // Then every other one of the rest, so that entries move about the list.
        let mut i = 0;
        rest.retain(|_| {
            i += 1;
            i % 2 == 0
        });
        assert_eq!(waiters.looked_at.load(Ordering::Relaxed), N / 2 + N / 4);
        assert_eq!(waiters.count.load(Ordering::SeqCst), N / 4);
        // The rest are registered still, each once: a wake fires them all and leaves nothing.
        waiters.wake(&key);
        assert!(rest.iter().all(|w| w.signal.fired.load(Ordering::SeqCst)));
        assert!(waiters.map.lock().is_empty());
        drop(rest);
        assert_eq!(waiters.count.load(Ordering::SeqCst), 0);
    }
}
