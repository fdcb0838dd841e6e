//! The Redis engine's lanes: each takes every call queued to it and hands them to its link
//! (`link.rs`) as one pipelined batch, on the thread of a caller that waits for its answer or
//! on the lane's own thread.
//!
//! Why: the store's blocking and async callers must share a few connections without either
//! bringing an async runtime. Like the file engine's writer, whoever holds a lane's link takes
//! every call that is queued, sends them in one write per server node, reads the replies in
//! order and hands each to its caller's reply slot: a batch a round trip, so 64 concurrent
//! callers cost about one round trip each, not 64. A blocking caller that finds its lane idle
//! sends the calls in front of the queue that one round trip answers (no wait for replicas,
//! no walk) itself and reads its own answer, with no thread woken on either side (on
//! this 2-vCPU machine each hand-off cost tens of microseconds, a fifth of a flow); an async
//! caller never blocks its executor, so its first poll wakes the lane's own thread instead,
//! which also takes whatever a caller leaves queued when it hands the link back. A link has
//! one batch in flight at a time, so the engine runs a few lanes
//! (`RedisOptions::connections`), each with its own connections, and the server works on one
//! lane's batch while another's replies travel.
//!
//! Invariants:
//! - every call of a key goes to one lane (chosen by its Cluster slot), and a lane's calls
//!   reach a node in the order they were queued: a batch is taken from the front of the queue
//!   only by the holder of the link, and sent only once the one before it is answered, so a
//!   `begin` queued after a release of the same key sees the key released;
//! - a queued call is always taken: by the thread that holds the link when it is queued (which
//!   looks at the queue again before it lets the link go, and wakes the lane's thread if
//!   anything is left), by its own waiting caller, or by the lane's thread, woken when a call
//!   is queued for nobody to wait on, polled by an async caller, or given up;
//! - every call is answered exactly once: with the server's reply, `NotSent` (nothing left
//!   this process before its deadline) or `NoReply` (sent, unanswered by its deadline); a call
//!   queued after the engine stopped is dropped, and its caller hears the store's state; a
//!   panic while any thread holds a link poisons the store, breaks the lane and drops what is
//!   queued.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

use ::redis::{Cmd, Value};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::engine::Shared;
use crate::error::{Cause, Message};
use crate::poison::PoisonDart;
use crate::reply::{self, Closed, Drive};

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
    /// A wait (`WAIT`, `WAITAOF`) sent after it on the same connection, whose reply comes
    /// with the command's: the call is answered `[reply, the wait's reply]`. One wait after
    /// the last such call of a batch on a node serves them all, since it covers every write
    /// the connection made before it.
    pub(crate) then: Option<Cmd>,
    pub(crate) target: Target,
    pub(crate) deadline: Instant,
    /// Sent at most once: a call whose reply is lost is answered `NoReply` (outcome unknown)
    /// instead of being sent again. For a call that cannot tell its own earlier effect from
    /// another store's later change (a purge: its tombstone, which a re-send would find, goes
    /// with the next claim of the key).
    pub(crate) once: bool,
    pub(crate) reply: Reply,
}

/// Work for a lane.
enum Job {
    Call(Call),
    /// Runs with the link, after every call queued before it is answered: walks that take
    /// several round trips (`SCAN`).
    Exclusive(Box<dyn FnOnce(&mut Link) + Send>),
}

thread_local! {
    /// This thread holds a lane's link: a store dropped by a reply it hands out must not
    /// wait for the lanes (`Lanes::is_own_thread`).
    static DRIVING: Cell<bool> = const { Cell::new(false) };
}

/// One lane: its queue, its link while nobody sends on it, and its thread.
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    /// Wakes the lane's thread.
    work: Condvar,
    shared: Arc<Shared>,
}

struct LaneState {
    jobs: VecDeque<Job>,
    /// The link, while no thread sends a batch on it.
    link: Option<Link>,
    /// No job is taken any more; the thread ends once the queue is empty.
    stopping: bool,
    /// A thread panicked holding the link: it is gone.
    broken: bool,
}

impl Lane {
    fn new(link: Link, shared: &Arc<Shared>) -> Lane {
        Lane {
            state: Mutex::new(LaneState {
                jobs: VecDeque::new(),
                link: Some(link),
                stopping: false,
                broken: false,
            }),
            work: Condvar::new(),
            shared: Arc::clone(shared),
        }
    }

    /// Queues `job`, waking the lane's thread if `wake` and the link is idle. A stopped or
    /// broken lane refuses it: dropped, its caller hears the store's state.
    fn push(&self, job: Job, wake: bool) -> Result<(), Closed> {
        let mut st = self.state.lock();
        if st.stopping || st.broken {
            return Err(Closed::default());
        }
        st.jobs.push_back(job);
        if wake && st.link.is_some() {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Takes the link and the next batch when the link is idle and work is queued: calls up
    /// to `MAX_BATCH`, ending at the first exclusive job. For a caller's thread
    /// (`caller`), only the calls in front that need neither a wait nor a walk: a caller
    /// sends what one round trip answers, and leaves the rest to the lane's thread.
    fn take(st: &mut LaneState, caller: bool) -> Option<(Link, Vec<Job>)> {
        let quick = |job: &Job| matches!(job, Job::Call(call) if call.then.is_none());
        match st.jobs.front() {
            None => return None,
            Some(job) if caller && !quick(job) => return None,
            Some(_) => {}
        }
        let link = st.link.take()?;
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            match st.jobs.front() {
                Some(job) if caller && !quick(job) => break,
                Some(_) => {}
                None => break,
            }
            let Some(job) = st.jobs.pop_front() else {
                break;
            };
            let exclusive = matches!(job, Job::Exclusive(_));
            batch.push(job);
            if exclusive {
                break;
            }
        }
        Some((link, batch))
    }

    /// After a panic while a batch was sent: poisons the store, breaks the lane and drops
    /// what is queued (their callers hear the poisoned store), waking the lane's thread so
    /// that it can end.
    fn break_down(&self, mut st: MutexGuard<'_, LaneState>, text: &str) {
        self.shared.poison_flag().set(Arc::new(Message(format!(
            "a thread panicked sending calls to the server: {text}"
        ))));
        st.broken = true;
        let jobs = std::mem::take(&mut st.jobs);
        drop(st);
        drop(jobs);
        self.work.notify_one();
    }

    /// Sends a batch, in order; exclusive jobs run once the calls before them are answered.
    fn run_batch(link: &mut Link, batch: Vec<Job>) {
        let mut pending: Vec<Call> = Vec::new();
        for job in batch {
            match job {
                Job::Call(call) => pending.push(call),
                Job::Exclusive(f) => {
                    link.pipeline(&mut pending);
                    f(link);
                }
            }
        }
        link.pipeline(&mut pending);
    }

    /// The lane's thread: batches of what is queued, until the lane stops and its queue is
    /// empty.
    fn run(&self) {
        // A panic outside a batch poisons the store too.
        let _dart = PoisonDart(self.shared.poison_flag());
        let mut st = self.state.lock();
        loop {
            if let Some((mut link, batch)) = Lane::take(&mut st, false) {
                let ran = MutexGuard::unlocked(&mut st, || {
                    crate::poison::catch(move || {
                        Lane::run_batch(&mut link, batch);
                        link
                    })
                });
                match ran {
                    Ok(link) => st.link = Some(link),
                    Err(text) => {
                        self.break_down(st, &text);
                        st = self.state.lock();
                    }
                }
                continue;
            }
            if st.stopping && st.jobs.is_empty() && (st.link.is_some() || st.broken) {
                return;
            }
            self.work.wait(&mut st);
        }
    }
}

impl Drive for Lane {
    /// Sends the next batch on the calling thread, if the link is idle. A panic there poisons
    /// the store and breaks the lane, rather than reaching the caller.
    fn turn(&self) -> bool {
        let mut st = self.state.lock();
        let Some((mut link, batch)) = Lane::take(&mut st, true) else {
            // What a caller does not send (a wait, a walk) is the lane's thread's.
            if st.link.is_some() && !st.jobs.is_empty() {
                self.work.notify_one();
            }
            return false;
        };
        drop(st);
        let outer = DRIVING.with(|d| d.replace(true));
        let ran = crate::poison::catch(move || {
            Lane::run_batch(&mut link, batch);
            link
        });
        DRIVING.with(|d| d.set(outer));
        let mut st = self.state.lock();
        match ran {
            Ok(link) => {
                st.link = Some(link);
                if !st.jobs.is_empty() || st.stopping {
                    self.work.notify_one();
                }
            }
            Err(text) => self.break_down(st, &text),
        }
        true
    }

    fn turn_blocks(&self) -> bool {
        true
    }

    fn nudge(&self) {
        let st = self.state.lock();
        if st.link.is_some() && !st.jobs.is_empty() {
            self.work.notify_one();
        }
    }
}

/// Where calls are queued: one queue a lane. Cheap to clone (reply closures hold one to queue
/// a release).
#[derive(Clone)]
pub(crate) struct Queue {
    lanes: Arc<[Arc<Lane>]>,
}

impl Queue {
    /// The lane of a call: its slot's (node calls go on the first lane).
    fn lane(&self, call: &Call) -> &Arc<Lane> {
        let i = match call.target {
            Target::Slot(slot) => usize::from(slot) % self.lanes.len(),
            Target::Node(_) => 0,
        };
        &self.lanes[i]
    }

    /// Queues `call` for the lane's thread. A refusal (the lane stopped) drops the call, and
    /// its caller hears the store's state.
    pub(crate) fn call(&self, call: Call) {
        let _ = self.lane(&call).push(Job::Call(call), true);
    }

    /// Queues `call`, whose caller waits for its answer through `rx`: the caller sends it
    /// itself if it blocks and the lane is idle, or wakes the lane's thread when it polls.
    pub(crate) fn call_waited<T>(&self, call: Call, rx: &reply::Receiver<T>) {
        let lane = self.lane(&call);
        if lane.push(Job::Call(call), false).is_ok() {
            let lane: Arc<dyn Drive> = lane.clone();
            rx.drive_with(Arc::downgrade(&lane));
        }
    }

    /// Runs `job` on the first lane once every call queued on any lane before it is
    /// answered.
    pub(crate) fn exclusive(&self, job: Box<dyn FnOnce(&mut Link) + Send>) -> Result<(), Closed> {
        self.drain()?;
        self.lanes[0].push(Job::Exclusive(job), true)
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
                lane.push(job, true)?;
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
    /// Starts a lane, and its thread, for each link.
    pub(crate) fn start(links: Vec<Link>, shared: &Arc<Shared>) -> std::io::Result<Lanes> {
        let lanes: Vec<Arc<Lane>> = links
            .into_iter()
            .map(|link| Arc::new(Lane::new(link, shared)))
            .collect();
        let mut threads = Vec::new();
        for (i, lane) in lanes.iter().enumerate() {
            let lane = Arc::clone(lane);
            let thread = std::thread::Builder::new()
                .name(format!("idemstore-redis-{i}"))
                .spawn(move || lane.run());
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let started = Lanes {
                        queue: Queue {
                            lanes: lanes.clone().into(),
                        },
                        ids: Vec::new(),
                        threads: Mutex::new(threads),
                    };
                    started.stop();
                    return Err(e);
                }
            }
        }
        Ok(Lanes {
            queue: Queue {
                lanes: lanes.into(),
            },
            ids: threads.iter().map(|t| t.thread().id()).collect(),
            threads: Mutex::new(threads),
        })
    }

    /// Whether the calling thread is one of the lanes' or holds a lane's link.
    pub(crate) fn is_own_thread(&self) -> bool {
        DRIVING.with(Cell::get) || self.ids.contains(&std::thread::current().id())
    }

    /// Answers what each lane holds, ends the threads and, unless called on one of them (or
    /// on a thread holding a link), waits for them.
    pub(crate) fn stop(&self) {
        for lane in self.queue.lanes.iter() {
            lane.state.lock().stopping = true;
            lane.work.notify_one();
        }
        if self.is_own_thread() {
            // Each loop ends once the link is back and the queue is empty.
            return;
        }
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }
}
