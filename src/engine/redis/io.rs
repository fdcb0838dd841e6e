//! The Redis engine's own I/O threads: each takes every call queued to it and hands them to
//! its link (`link.rs`) as one pipelined batch.
//!
//! Why: the store's blocking and async callers must share a few connections without either
//! bringing an async runtime. Like the file engine's writer, one thread takes every call that
//! is queued, sends them in one write per server node, reads the replies in order and hands
//! each to its caller's reply slot: a batch a round trip, so 64 concurrent callers cost about
//! one round trip each, not 64. A thread has one batch in flight at a time, so the engine
//! runs a few of them ("lanes", `RedisOptions::connections`), each with its own connections,
//! and the server works on one lane's batch while another's replies travel.
//!
//! Invariants:
//! - every call of a key goes to one lane (chosen by its Cluster slot), and a lane's calls
//!   reach a node in the order they were queued, a batch sent only once the one before it is
//!   answered: a `begin` queued after a release of the same key sees the key released;
//! - every call is answered exactly once: with the server's reply, `NotSent` (nothing left
//!   this process before its deadline) or `NoReply` (sent, unanswered by its deadline); a call
//!   still queued when the engine stops is dropped, and its caller hears the store's state.

use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

use ::redis::{Cmd, Value};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::engine::Shared;
use crate::error::Cause;
use crate::poison::PoisonDart;
use crate::reply::{self, Closed};

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
    /// A command sent right after it on the same connection (`WAIT`), whose reply comes with
    /// the command's: the call is answered `[reply, then's reply]`.
    pub(crate) then: Option<Cmd>,
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

/// Where calls are queued: one queue a lane. Cheap to clone (reply closures hold one to queue
/// a release).
#[derive(Clone)]
pub(crate) struct Queue {
    lanes: Arc<[Sender<Job>]>,
}

impl Queue {
    /// Queues `call` on the lane of its slot (node calls on the first lane). A refusal (the
    /// lane's thread is gone) drops the call, and its caller hears the store's state.
    pub(crate) fn call(&self, call: Call) {
        let lane = match call.target {
            Target::Slot(slot) => usize::from(slot) % self.lanes.len(),
            Target::Node(_) => 0,
        };
        let _ = self.lanes[lane].send(Job::Call(call));
    }

    /// Runs `job` on the first lane once every call queued on any lane before it is
    /// answered.
    pub(crate) fn exclusive(&self, job: Box<dyn FnOnce(&mut Link) + Send>) -> Result<(), Closed> {
        self.drain()?;
        self.lanes[0]
            .send(Job::Exclusive(job))
            .map_err(|_| Closed::default())
    }

    /// Returns once every call queued before it, on every lane, is answered.
    pub(crate) fn drain(&self) -> Result<(), Closed> {
        let waits: Vec<_> = self
            .lanes
            .iter()
            .map(|lane| {
                let (tx, rx) = reply::channel();
                let job = Job::Exclusive(Box::new(move |_| {
                    let _ = tx.send(());
                }));
                lane.send(job).map_err(|_| Closed::default())?;
                Ok(rx)
            })
            .collect::<Result<_, Closed>>()?;
        for rx in waits {
            rx.wait()?;
        }
        Ok(())
    }
}

/// The engine's lanes: their queue and their threads.
pub(crate) struct Lanes {
    pub(crate) queue: Queue,
    threads: Mutex<Vec<JoinHandle<()>>>,
    ids: Vec<ThreadId>,
}

impl Lanes {
    /// Starts a thread for each link.
    pub(crate) fn start(links: Vec<Link>, shared: &Arc<Shared>) -> std::io::Result<Lanes> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for (i, link) in links.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let shared = Arc::clone(shared);
            let thread = std::thread::Builder::new()
                .name(format!("idemstore-redis-{i}"))
                .spawn(move || {
                    // A panic below poisons the store before the replies it drops are read.
                    let _dart = PoisonDart(shared.poison_flag());
                    run(rx, link);
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Lanes {
            queue: Queue {
                lanes: senders.into(),
            },
            ids: threads.iter().map(|t| t.thread().id()).collect(),
            threads: Mutex::new(threads),
        })
    }

    /// Whether the calling thread is one of the lanes'.
    pub(crate) fn is_own_thread(&self) -> bool {
        self.ids.contains(&std::thread::current().id())
    }

    /// Answers what each lane holds, ends the threads and, unless called on one of them,
    /// waits for them.
    pub(crate) fn stop(&self) {
        for lane in self.queue.lanes.iter() {
            let _ = lane.send(Job::Stop);
        }
        if self.is_own_thread() {
            // The loop ends once this call returns and reaches `Stop`.
            return;
        }
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }
}
