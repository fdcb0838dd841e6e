//! The background compactor: removes expired records in bounded, throttled passes (C9).
//!
//! Why: records must not outlive their TTL on disk or in memory, or the file and the index grow
//! with every request ever served. Invariants: the compactor never writes itself; it asks the
//! engine for `expire` passes like any caller (the file engine queues them through its writer,
//! so there is one writer and foreground operations share or follow its commit); each pass
//! removes at most `compactor_batch` records and is followed by a `compactor_pause` while more
//! are due, so it never holds the engine for long. Stopping never joins the compactor from its
//! own thread: a pass wakes waiting retries, and a woken task dropped there may hold the last
//! handle, whose close then detaches the thread (it ends at its next look at the stop channel)
//! and goes on to close the engine and wake every wait.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::engine::{Engine, ExpireReport, Shared};
use crate::error::Unavailable;
use crate::poison::PoisonDart;

/// Runs one expiry pass and waits for it.
pub(super) fn expire_once(
    shared: &Shared,
    engine: &dyn Engine,
    limit: usize,
) -> Result<ExpireReport, Unavailable> {
    shared.check()?;
    let report = engine.expire(limit)?;
    crate::trace::compaction(report.scanned, report.removed);
    shared.metrics.expired(report.removed);
    Ok(report)
}

/// The compactor thread's handle.
#[derive(Default)]
pub(super) struct Compactor {
    thread: Option<JoinHandle<()>>,
    /// Dropping it stops the thread.
    stop: Option<Sender<()>>,
}

impl Compactor {
    /// Starts the compactor thread.
    pub(super) fn spawn(shared: Arc<Shared>, engine: Arc<dyn Engine>) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("idemstore-compactor".into())
            .spawn(move || run(&shared, &*engine, &stopped))?;
        Ok(Compactor {
            thread: Some(thread),
            stop: Some(stop),
        })
    }

    /// Stops the thread and waits for it, unless called on the thread itself (the last handle
    /// dropped by a task its pass woke): that cannot wait for itself, and only detaches.
    pub(super) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }

    /// Stops the thread without waiting for it.
    pub(super) fn detach(&mut self) {
        drop(self.stop.take());
        self.thread.take();
    }
}

fn run(shared: &Shared, engine: &dyn Engine, stop: &Receiver<()>) {
    let _dart = PoisonDart(shared.poison_flag());
    let config = &shared.config;
    let mut wait = config.compactor_interval;
    loop {
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        wait = match expire_once(shared, engine, config.compactor_batch) {
            Ok(report) if report.scanned >= config.compactor_batch => config.compactor_pause,
            _ => config.compactor_interval,
        };
    }
}
