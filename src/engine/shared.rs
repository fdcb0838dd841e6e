//! What the store and its engine share: the configuration, the counters and metric handles,
//! the poison flag, the
//! closed flag, the store's secret and the retries waiting on keys in flight.
//!
//! Why: the store checks, before it hands an operation on, that it may still serve; the engine
//! counts what it did and poisons the store when it can no longer tell what it holds; both
//! read one configuration. Invariant: nothing here belongs to one engine (no database, no
//! index); once closed or poisoned, a store never serves again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::waiters::Waiters;
use crate::config::Config;
use crate::error::{Cause, Message, OpenError, Unavailable};
use crate::metrics::Metrics;
use crate::poison::Poison;
use crate::reply::Closed;
use crate::stats::Counters;

/// A new store's secret: 32 bytes from the operating system's random source. Every engine
/// draws it here, once, when it makes a store that has none yet.
pub(crate) fn random_secret() -> Result<[u8; 32], OpenError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| OpenError::Io(std::io::Error::other(format!("no random source: {e}"))))?;
    Ok(secret)
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    /// The store's metric handles (feature `metrics`), registered at open.
    pub(crate) metrics: Metrics,
    poison: Poison,
    closed: AtomicBool,
    /// The store's secret: kept in the file (`META_SCOPE_SECRET`), or drawn for this process
    /// by the memory engine, whose records do not outlive it either. Read by the HTTP layer.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) secret: [u8; 32],
    /// The retries waiting for keys in flight, which the engine wakes as keys settle.
    pub(crate) waiters: Arc<Waiters>,
}

impl Shared {
    pub(crate) fn new(config: Config, secret: [u8; 32]) -> Shared {
        Shared {
            metrics: Metrics::new(config.name()),
            config,
            counters: Counters::default(),
            poison: Poison::default(),
            closed: AtomicBool::new(false),
            secret,
            waiters: Arc::default(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.config.clock.now_millis()
    }

    /// Poisons the store; the first cause is kept. Waiting retries look again, and hear it.
    pub(crate) fn poison(&self, cause: Cause) {
        crate::trace::poisoned(&cause);
        self.poison.set(cause);
        self.waiters.wake_all();
    }

    /// The poison flag, for a worker's [`PoisonDart`](crate::poison::PoisonDart).
    pub(crate) fn poison_flag(&self) -> &Poison {
        &self.poison
    }

    /// Marks the store closed: every later call is refused.
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Ok while the store can serve; otherwise the reason it cannot.
    pub(crate) fn check(&self) -> Result<(), Unavailable> {
        self.check_poison()?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Unavailable::Closed);
        }
        Ok(())
    }

    /// Ok unless poisoned (the writer keeps serving a closing store's last operations).
    pub(crate) fn check_poison(&self) -> Result<(), Unavailable> {
        if self.poison.is_set() {
            return Err(self.poison.error());
        }
        Ok(())
    }

    pub(crate) fn poisoned_error(&self) -> Unavailable {
        self.poison.error()
    }

    /// What a caller is told when the engine dropped its reply without answering (or, with
    /// `Closed::default()`, when the engine's queue is gone).
    pub(crate) fn lost_reply(&self, closed: Closed) -> Unavailable {
        match self.check() {
            Err(e) => e,
            // The panic's handler poisons the store right after the unwinding that dropped
            // this reply; the caller hears the same verdict now.
            Ok(()) if closed.panicked => Unavailable::Poisoned {
                cause: Arc::new(Message("the writer thread panicked".into())),
            },
            Ok(()) => Unavailable::Closed,
        }
    }
}
