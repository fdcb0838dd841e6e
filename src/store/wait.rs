//! A retry that waits for the first attempt instead of answering "in progress":
//! [`Store::begin_waiting_async`] and [`Store::begin_waiting`].
//!
//! Why: a client that retries while its first attempt still runs gets `409` and must retry
//! again later, usually with a guess at the delay. The store knows when the attempt ends: the
//! engine that completes, releases or removes a key wakes the calls waiting on it
//! (`engine/waiters.rs`), so the retry can be answered with the outcome itself, as soon as it
//! exists, with no polling (except on an engine whose keys other processes change too, where
//! the wait also looks again with a growing pause). Invariants: the wait is registered before each look at the key, so
//! no change between the look and the wait is missed; a wait never outlasts its bound; what
//! ends it is always a fresh `begin`, so its answer is one `begin` could give.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::config::Terms;
use crate::engine::work;
use crate::error::{BeginError, Unavailable};
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::sleep::{Sleep, block_on};

use super::{Begin, Store};

/// How long a wait on an engine whose keys other processes change (Redis) sleeps before it
/// looks at the key again, at first and at most: a settled key is seen within a few
/// milliseconds at first, and a long attempt costs a look every 200 ms.
const LOOK_AGAIN_FIRST: Duration = Duration::from_millis(10);
const LOOK_AGAIN_MAX: Duration = Duration::from_millis(200);

impl Store {
    /// [`begin_async`](Store::begin_async), but a key in flight (another attempt executing it)
    /// is waited for, up to `within`, instead of answered [`Begin::InProgress`] at once: the
    /// call ends as soon as that attempt completes (a [`Begin::Replay`] of its response),
    /// releases the key (a [`Begin::Execute`]: run the operation now), or the bound passes (the
    /// usual `InProgress`).
    ///
    /// The wait is woken by the engine when the key settles in this process (the file and
    /// memory engines), not by polling. On the Redis engine, an attempt running on another
    /// machine wakes nothing here, so the wait also looks again by itself, after 10 ms, then
    /// twice as long each time up to 200 ms. A key
    /// whose holder died waits for its lease as any retry does (C8): keep `within` well below
    /// the lease. Dropping the future gives the wait up; it holds no key while it waits.
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};
    /// let store = Store::in_memory(Config::default())?;
    /// let (scope, key) = (Scope::new("acct_1")?, store.key("k-1")?);
    /// let fp = Fingerprint::of_bytes(b"book room 101");
    /// let Begin::Execute(first) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// let retry = store.begin_waiting_async(&scope, &key, &fp, Duration::from_secs(5));
    /// first.complete(Response::new(201, [("location", "/b/1")], ""))?;
    /// assert!(matches!(retry.await?, Begin::Replay(r) if r.status() == 201));
    /// # Ok(())
    /// # }
    /// # futures_executor_stand_in(run());
    /// # fn futures_executor_stand_in<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    pub fn begin_waiting_async(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        within: Duration,
    ) -> impl Future<Output = Result<Begin, BeginError>> + Send + 'static {
        let terms = self.config().terms();
        self.begin_waiting_with_async(scope, key, fp, within, terms)
    }

    /// [`begin_waiting_async`](Store::begin_waiting_async) under `terms` instead of the
    /// store's (see [`begin_with`](Store::begin_with)).
    pub fn begin_waiting_with_async(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        within: Duration,
        terms: Terms,
    ) -> impl Future<Output = Result<Begin, BeginError>> + Send + 'static {
        let store = self.clone();
        let (scope, key, fp) = (scope.clone(), key.clone(), *fp);
        let hash = KeyHash::of(&scope, &key);
        let until = Instant::now().checked_add(within);
        let woken_by_engine = store.inner.engine.wakes_every_waiter();
        async move {
            if work::inside() {
                // Polled on the writer, inside a transaction's closure: the wait would hold
                // the writer, which alone could end it.
                return Err(Unavailable::Reentrant.into());
            }
            let mut look_again = LOOK_AGAIN_FIRST;
            loop {
                let woken = store.inner.shared.waiters.register(hash);
                let begun = store.begin_with_async(&scope, &key, &fp, terms).await?;
                let Begin::InProgress { .. } = begun else {
                    return Ok(begun);
                };
                // A bound too far ahead for the clock is no bound.
                let left = until.map(|u| u.saturating_duration_since(Instant::now()));
                if left.is_some_and(|l| l.is_zero()) {
                    return Ok(begun);
                }
                let nap = match left {
                    Some(l) if woken_by_engine || l <= look_again => Some(l),
                    None if woken_by_engine => None,
                    _ => Some(look_again),
                };
                if !woken_before(woken, nap.map(Sleep::new)).await {
                    if nap != left {
                        // Another process may have settled the key: look again.
                        look_again = (look_again * 2).min(LOOK_AGAIN_MAX);
                        continue;
                    }
                    // The bound passed: one last look, answered as it is.
                    return store.begin_with_async(&scope, &key, &fp, terms).await;
                }
            }
        }
    }

    /// [`begin_waiting_async`](Store::begin_waiting_async), blocking the calling thread.
    pub fn begin_waiting(
        &self,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        within: Duration,
    ) -> Result<Begin, BeginError> {
        block_on(self.begin_waiting_async(scope, key, fp, within))
    }
}

impl Store {
    /// The record named `hash`, as [`get`](Store::get) gives it.
    #[cfg(feature = "http")]
    pub(crate) fn record_of(
        &self,
        (hash, scope): (KeyHash, &Scope),
    ) -> Result<Option<crate::RecordInfo>, Unavailable> {
        self.inner.shared.check()?;
        self.inner.engine.get(hash, scope)
    }

    /// A wait on `hash`, woken when its key settles (`engine/waiters.rs`).
    #[cfg(feature = "http")]
    pub(crate) fn watch(&self, hash: KeyHash) -> crate::engine::waiters::Woken {
        self.inner.shared.waiters.register(hash)
    }
}

/// Whether `woken` ends before `bound` does (without a bound, it waits for `woken`).
pub(crate) async fn woken_before(woken: impl Future<Output = ()>, bound: Option<Sleep>) -> bool {
    let (mut woken, mut bound) = (pin!(woken), pin!(bound));
    std::future::poll_fn(|cx| {
        if woken.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        match bound.as_mut().as_pin_mut() {
            Some(b) => b.poll(cx).map(|()| false),
            None => Poll::Pending,
        }
    })
    .await
}
