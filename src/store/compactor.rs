//! The background compactor: removes expired records in bounded, throttled batches (C9).
//!
//! Why: records must not outlive their TTL on disk or in memory, or the file and the index grow
//! with every request ever served. Invariants: the compactor never writes itself; it queues
//! `Expire` operations through the writer like any caller, so there is one writer and foreground
//! operations queued meanwhile share or follow its commit instead of waiting behind a second
//! write transaction; each pass removes at most `compactor_batch` records and is followed by a
//! `compactor_pause` while more are due, so it never holds the writer for long. With
//! `Durability::Memory` there is no writer: the same passes run in the memory engine, on this
//! thread, one shard lock at a time.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::ops::{ExpireReport, Op};
use crate::reply;
use crate::route::Route;
use crate::shared::{PoisonDart, Shared};

/// Runs one expiry pass through the writer (or the memory engine) and waits for it.
pub(crate) fn expire_once(
    shared: &Shared,
    ops: &Route,
    limit: usize,
) -> Result<ExpireReport, crate::Unavailable> {
    shared.check()?;
    let (tx, rx) = reply::channel();
    ops.send(shared, Op::Expire { limit, reply: tx })
        .map_err(|_| shared.lost_reply(reply::Closed::default()))?;
    rx.wait().map_err(|c| shared.lost_reply(c))?
}

/// Starts the compactor thread. It stops when `stop` is dropped or sent to.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    ops: Route,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("idemstore-compactor".into())
        .spawn(move || {
            let _dart = PoisonDart(&shared);
            let config = &shared.config;
            let mut wait = config.compactor_interval;
            loop {
                match stop.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                wait = match expire_once(&shared, &ops, config.compactor_batch) {
                    Ok(report) if report.scanned >= config.compactor_batch => {
                        config.compactor_pause
                    }
                    _ => config.compactor_interval,
                };
            }
        })
}
