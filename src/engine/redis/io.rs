//! The Redis engine's own I/O thread: it takes every call that is queued and hands them to
//! the link (`link.rs`) as one pipelined batch.
//!
//! Why: the store's blocking and async callers must share a few connections without either
//! bringing an async runtime. Like the file engine's writer, one thread takes every call that
//! is queued, sends them in one write per server node, reads the replies in order and hands
//! each to its caller's reply slot: a batch a round trip, so 64 concurrent callers cost about
//! one round trip each, not 64.
//!
//! Invariants:
//! - calls reach a node in the order they were queued, and a batch is sent only once the one
//!   before it is answered, so a `begin` queued after a release sees the key released;
//! - every call is answered exactly once: with the server's reply, `NotSent` (nothing left
//!   this process before its deadline) or `NoReply` (sent, unanswered by its deadline); a call
//!   still queued when the engine stops is dropped, and its caller hears the store's state.

use std::time::Instant;

use ::redis::{Cmd, Value};
use crossbeam_channel::Receiver;

use crate::error::Cause;

use super::link::Link;

/// Calls sent in one batch at most.
const MAX_BATCH: usize = 256;

/// What came of a call.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing was sent before the call's deadline.
    NotSent(Cause),
    /// Sent, and unanswered by the call's deadline: the server may have applied it.
    NoReply(Cause),
    /// The server answered with an error: its code, a space, its detail.
    Server(String),
}

/// Where a call's answer goes.
pub(crate) type Reply = Box<dyn FnOnce(Result<Value, Failure>) + Send>;

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The node that owns this Cluster slot (the one server, without Cluster).
    Slot(u16),
    /// This node of the link.
    Node(usize),
}

/// One command and its caller.
pub(crate) struct Call {
    pub(crate) cmd: Cmd,
    pub(crate) target: Target,
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply,
}

/// Work for the I/O thread.
pub(crate) enum Job {
    Call(Call),
    /// Runs on the I/O thread with the link, after every call queued before it is answered:
    /// walks that take several round trips (`SCAN`).
    Exclusive(Box<dyn FnOnce(&mut Link) + Send>),
    /// Answers what is queued before it and ends the thread.
    Stop,
}

/// The I/O thread's loop: batches of the calls queued, in order, until `Stop` or until every
/// sender is gone.
pub(crate) fn run(jobs: Receiver<Job>, mut link: Link) {
    let mut pending: Vec<Call> = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                Job::Call(call) => pending.push(call),
                Job::Exclusive(f) => {
                    link.pipeline(&mut pending);
                    f(&mut link);
                }
                Job::Stop => {
                    link.pipeline(&mut pending);
                    return;
                }
            }
            if pending.len() >= MAX_BATCH {
                link.pipeline(&mut pending);
            }
            job = jobs.try_recv().ok();
        }
        link.pipeline(&mut pending);
    }
}
