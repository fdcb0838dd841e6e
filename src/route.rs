//! Where a store's operations go: the writer thread's queue, or the memory engine.
//!
//! Why: the store's calls are written once, as operations with reply slots; a file-backed
//! store queues them for its writer thread, a `Durability::Memory` store carries them out at
//! once on the caller's thread. Invariant: an operation handed to [`Route::send`] is answered
//! exactly once through its reply slot, or its slot is dropped (the caller hears `Closed`);
//! with the memory engine the answer is in the slot before `send` returns.

use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::memory::MemoryEngine;
use crate::ops::Op;
use crate::shared::Shared;
use crate::step::Stepper;

/// The way to the component that applies operations.
#[derive(Clone)]
pub(crate) enum Route {
    /// The group-commit writer thread's queue.
    Writer(Sender<Op>),
    /// The memory engine, on the caller's thread.
    Memory(Arc<MemoryEngine>),
    /// The writer run on the caller's thread, step by step (`step.rs`).
    Step(Arc<Stepper>),
}

/// The writer has stopped: the operation was not queued.
#[derive(Debug)]
pub(crate) struct Stopped;

impl Route {
    pub(crate) fn send(&self, shared: &Shared, op: Op) -> Result<(), Stopped> {
        match self {
            Route::Writer(tx) => tx.send(op).map_err(|_| Stopped),
            Route::Memory(engine) => {
                engine.apply(shared, op);
                Ok(())
            }
            Route::Step(stepper) => stepper.send(op),
        }
    }

    /// The memory engine, when this store has one.
    pub(crate) fn memory(&self) -> Option<&MemoryEngine> {
        match self {
            Route::Writer(_) | Route::Step(_) => None,
            Route::Memory(engine) => Some(engine),
        }
    }

    /// The writer in step mode, when this store runs one.
    pub(crate) fn stepper(&self) -> Option<&Stepper> {
        match self {
            Route::Step(stepper) => Some(stepper),
            Route::Writer(_) | Route::Memory(_) => None,
        }
    }
}
