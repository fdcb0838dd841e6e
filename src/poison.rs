//! Panics turned into values: the poison flag, the one place a panic is caught, and its text.
//!
//! Why: the storage engine may panic on a damaged page, and a background thread may panic on a
//! bug; neither may reach a caller as a panic or leave it waiting. Once a write or an fsync has
//! failed (or a writer panicked), the process can no longer tell what the file holds, so every
//! later operation must refuse with one clear error until the store is reopened (which
//! repairs). Invariants: the poison flag is set before any caller of the failed work is
//! answered, keeps the first cause, and is never cleared for the life of the store; every
//! `catch_unwind` of the library (outside the HTTP layer, which hands a handler's panic back to
//! its caller) goes through [`catch`].

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Cause, Message, Unavailable};

/// The poison flag and its first cause.
#[derive(Default)]
pub(crate) struct Poison {
    set: AtomicBool,
    cause: Mutex<Option<Cause>>,
}

impl Poison {
    /// Poisons; the first cause is kept.
    pub(crate) fn set(&self, cause: Cause) {
        let mut slot = self.cause.lock();
        if slot.is_none() {
            *slot = Some(cause);
        }
        self.set.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// What a refused caller is told.
    pub(crate) fn error(&self) -> Unavailable {
        let cause = self
            .cause
            .lock()
            .clone()
            .unwrap_or_else(|| Arc::new(Message("unknown failure".into())));
        Unavailable::Poisoned { cause }
    }
}

/// Poisons if dropped while the thread is panicking: declared in a worker's scope so that a
/// panic anywhere below it poisons before the work's reply slots are dropped.
pub(crate) struct PoisonDart<'a>(pub(crate) &'a Poison);

impl Drop for PoisonDart<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.set(Arc::new(Message(
                "a background thread panicked; see the process's stderr".into(),
            )));
        }
    }
}

/// Runs `f`, turning a panic into its text.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_text(&*payload))
}

/// Drops `value`, whose drop may panic: after a panic inside the storage engine its locks are
/// poisoned, and closing the database panics too.
pub(crate) fn drop_quietly<T>(value: T) {
    let _ = catch(move || drop(value));
}

/// Text of a caught panic payload.
fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
