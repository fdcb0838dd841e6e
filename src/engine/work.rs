//! Caller work that an engine runs inside one of its own write transactions: the caller's
//! writes alone ([`Store::write`](crate::Store::write)) or together with a reservation's
//! response ([`Reservation::complete_with`](crate::Reservation::complete_with)).
//!
//! Why: an effect and the response that reports it must become durable together, or a crash
//! between them either loses the response (the retry runs the effect again) or keeps it
//! without the effect. Only an engine that owns a database the caller can write to can do
//! that, so the work travels to the engine as a closure over the engine's transaction. The
//! caller's own result type stays on the caller's side: the closure stores it there and tells
//! the engine only whether to commit.
//!
//! Invariants:
//! - a closure runs at most once, inside [`run_inside`], which turns its panic into a value;
//! - while it runs, every call into the store from its thread that would wait for the engine
//!   is refused with [`Unavailable::Reentrant`](crate::Unavailable::Reentrant) instead of
//!   waiting for itself ([`inside`]).

use std::cell::Cell;

use redb::WriteTransaction;

use crate::backend::Completion;
use crate::config::Terms;
use crate::poison;
use crate::rules::key::KeyHash;
use crate::rules::response::Response;

/// The caller's writes: true to commit them, false to roll them back.
pub(crate) type WriteFn = Box<dyn FnOnce(&WriteTransaction) -> bool + Send>;

/// The caller's writes and the response to store with them; `None` rolls them back and
/// releases the key.
pub(crate) type CompleteFn = Box<dyn FnOnce(&WriteTransaction) -> Option<Response> + Send>;

/// The caller's writes and the payload of the recovery point to save with them; `None` rolls
/// them back.
pub(crate) type PointFn = Box<dyn FnOnce(&WriteTransaction) -> Option<Vec<u8>> + Send>;

/// Work for an engine's write transaction.
pub(crate) enum Work {
    /// The caller's writes alone.
    Write(WriteFn),
    /// The caller's writes and the completion of reservation `token` on `hash`, under
    /// `terms`.
    Complete {
        hash: KeyHash,
        token: u64,
        terms: Terms,
        run: CompleteFn,
    },
    /// The caller's writes and a recovery point named `name` of reservation `token` on
    /// `hash`, whose payload the closure returns (P1).
    Point {
        hash: KeyHash,
        token: u64,
        name: String,
        run: PointFn,
    },
}

impl Work {
    /// The public call that asked for it, for an engine that cannot do it.
    pub(crate) fn operation(&self) -> &'static str {
        match self {
            Work::Write(_) => "Store::write",
            Work::Complete { .. } => "Reservation::complete_with",
            Work::Point { .. } => "Reservation::save_point_with",
        }
    }
}

/// What became of work the engine ran.
#[derive(Debug)]
pub(crate) enum Ran {
    /// Committed durably: the writes, and for a completion what it did with the response
    /// (`Released`: the policy does not keep its status, so the writes were rolled back with
    /// it; a write alone or with a recovery point answers `Stored`).
    Committed(Completion),
    /// The closure asked to roll back: its writes are gone (a completion's key released).
    Declined,
    /// The closure panicked: its writes are gone (a completion's key released).
    Panicked(String),
}

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is running caller work for an engine right now.
pub(crate) fn inside() -> bool {
    INSIDE.with(Cell::get)
}

/// Runs caller work, marked as such for [`inside`], turning a panic into its text.
pub(crate) fn run_inside<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            INSIDE.with(|c| c.set(false));
        }
    }
    INSIDE.with(|c| c.set(true));
    let _unmark = Unmark;
    poison::catch(f)
}
