//! State shared by the store's handles, its writer thread and its compactor thread, including
//! the poison flag.
//!
//! Why: once a write or an fsync has failed, the process can no longer tell what the file
//! holds, so every later operation must refuse with one clear error until the store is
//! reopened (which repairs). Invariant: the poison flag is set before any caller of the failed
//! batch is answered, and is never cleared for the life of the store.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use redb::Database;

use crate::config::Config;
use crate::error::{Cause, Message, Unavailable};
use crate::index::HotIndex;
use crate::overlay::Overlay;
use crate::reply::Closed;
use crate::stats::Counters;

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) index: HotIndex,
    /// Logged changes not in the database file yet (empty without a log).
    pub(crate) overlay: Overlay,
    /// The database, for readers; taken out at close so the file is released.
    db: RwLock<Option<Arc<Database>>>,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<Cause>>,
    closed: AtomicBool,
    /// Releases sent by dropped reservations that the writer has not applied yet. While it is
    /// not zero, the index's copy of an in-flight record may be about to disappear, so
    /// `begin` sends such keys to the writer (which applies the queued releases first).
    pub(crate) detached_releases: AtomicU64,
    /// The store's secret: kept in the file (`META_SCOPE_SECRET`), or drawn for this process
    /// by the memory engine, whose records do not outlive it either. Read by the HTTP layer.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) secret: [u8; 32],
}

impl Shared {
    /// `db` is `None` for the memory engine, which has no database.
    pub(crate) fn new(config: Config, db: Option<Arc<Database>>, secret: [u8; 32]) -> Shared {
        // The memory engine keeps its own maps: the index stays empty there.
        let capacity = if db.is_some() {
            config.index_capacity
        } else {
            0
        };
        let index = HotIndex::with_capacity(capacity);
        Shared {
            config,
            counters: Counters::default(),
            index,
            overlay: Overlay::default(),
            db: RwLock::new(db),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            closed: AtomicBool::new(false),
            detached_releases: AtomicU64::new(0),
            secret,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.config.clock.now_millis()
    }

    /// Poisons the store; the first cause is kept.
    pub(crate) fn poison(&self, cause: Cause) {
        let mut slot = self.poison_cause.lock();
        if slot.is_none() {
            *slot = Some(cause);
        }
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Marks the store closed and lets go of the database (the writer has stopped by now).
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let db = self.db.write().take();
        // After a panic inside the storage engine its internal locks are poisoned and closing
        // it panics too; that must not reach the caller of `close` or of a drop.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
    }

    /// Runs `f` on the database, unless the store is closed; `mark_closed` waits for it.
    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, Unavailable>,
    ) -> Result<T, Unavailable> {
        let db = self.db.read();
        f(db.as_ref().ok_or(Unavailable::Closed)?)
    }

    /// Ok while the store can serve; otherwise the reason it cannot.
    pub(crate) fn check(&self) -> Result<(), Unavailable> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(self.poisoned_error());
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(Unavailable::Closed);
        }
        Ok(())
    }

    /// Ok unless poisoned (the writer keeps serving a closing store's last operations).
    pub(crate) fn check_poison(&self) -> Result<(), Unavailable> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(self.poisoned_error());
        }
        Ok(())
    }

    pub(crate) fn poisoned_error(&self) -> Unavailable {
        let cause = self
            .poison_cause
            .lock()
            .clone()
            .unwrap_or_else(|| Arc::new(Message("unknown failure".into())));
        Unavailable::Poisoned { cause }
    }

    /// What a caller is told when the writer dropped its reply without answering (or, with
    /// `Closed::default()`, when the writer's queue is gone).
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

/// Poisons the store if dropped while the thread is panicking: declared in a worker's scope so
/// that a panic anywhere below it poisons before the work's reply slots are dropped.
pub(crate) struct PoisonDart<'a>(pub(crate) &'a Shared);

impl Drop for PoisonDart<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison(Arc::new(Message(
                "a background thread panicked; see the process's stderr".into(),
            )));
        }
    }
}

/// Text of a caught panic payload.
pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
