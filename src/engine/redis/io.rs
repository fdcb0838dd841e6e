//! The Redis engine's own I/O thread: one connection, calls sent in pipelined batches,
//! reconnection with backoff, and re-sends.
//!
//! Why: the store's blocking and async callers must share a few connections without either
//! bringing an async runtime. Like the file engine's writer, one thread takes every call that
//! is queued, sends them in one write, reads the replies in order and hands each to its
//! caller's reply slot: a batch a round trip, so 64 concurrent callers cost about one round
//! trip each, not 64.
//!
//! Invariants:
//! - calls reach the server in the order they were queued, and a batch is sent only once the
//!   one before it is answered, so a `begin` queued after a release sees the key released;
//! - a batch whose replies were lost (a broken connection, a read past the deadline) is sent
//!   again, whole and in order, on a new connection until each call's deadline: every script
//!   recognises a call it has already applied by its nonce (`scripts.rs`), so a re-send never
//!   applies anything twice;
//! - every call is answered exactly once: with the server's reply, `NotSent` (nothing left
//!   this process before its deadline) or `NoReply` (sent, unanswered by its deadline); a call
//!   still queued when the engine stops is dropped, and its caller hears the store's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Client, Cmd, Connection, ConnectionLike, RedisError, Value};
use crossbeam_channel::Receiver;

use crate::error::{Cause, Message};

/// Calls sent in one write at most.
const MAX_BATCH: usize = 256;

/// What came of a call.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing was sent before the call's deadline.
    NotSent(Cause),
    /// Sent, and unanswered by the call's deadline: the server may have applied it.
    NoReply(Cause),
    /// The server answered with an error.
    Server(String),
}

/// Where a call's answer goes.
pub(crate) type Reply = Box<dyn FnOnce(Result<Value, Failure>) + Send>;

/// One command and its caller.
pub(crate) struct Call {
    pub(crate) cmd: Cmd,
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply,
}

/// Work for the I/O thread.
pub(crate) enum Job {
    Call(Call),
    /// Runs on the I/O thread with the connection, after every call queued before it is
    /// answered: walks that take several round trips (`SCAN`).
    Exclusive(Box<dyn FnOnce(&mut Link) + Send>),
    /// Answers what is queued before it and ends the thread.
    Stop,
}

/// The connection, made again whenever it breaks.
pub(crate) struct Link {
    client: Client,
    conn: Option<Connection>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Link {
    pub(crate) fn new(client: Client, timeout: Duration, connect_timeout: Duration) -> Link {
        Link {
            client,
            conn: None,
            timeout,
            connect_timeout,
        }
    }

    /// The connection, connecting first with backoff if there is none, until `deadline`.
    fn connection(&mut self, deadline: Instant) -> Result<&mut Connection, Cause> {
        let mut pause = Duration::from_millis(5);
        let mut last: Option<Cause> = None;
        while self.conn.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last.unwrap_or_else(|| cause_of("deadline passed before connecting")));
            }
            match self.open(left.min(self.connect_timeout)) {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => {
                    last = Some(Arc::new(e));
                    // Backoff between attempts, never past the deadline: a server that is
                    // restarting gets time, and a caller past its deadline gets its answer.
                    let left = deadline.saturating_duration_since(Instant::now());
                    std::thread::sleep(pause.min(left));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        match self.conn.as_mut() {
            Some(conn) => Ok(conn),
            None => Err(cause_of("no connection")),
        }
    }

    fn open(&self, timeout: Duration) -> Result<Connection, RedisError> {
        let conn = self.client.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(self.timeout))?;
        conn.set_write_timeout(Some(self.timeout))?;
        Ok(conn)
    }

    /// Sends one command, re-sending it on a new connection until `deadline` if its reply is
    /// lost. Only for commands that are safe to repeat (reads, and the scripts).
    pub(crate) fn query(&mut self, cmd: &Cmd, deadline: Instant) -> Result<Value, Failure> {
        let mut sent = false;
        loop {
            let conn = match self.connection(deadline) {
                Ok(conn) => conn,
                Err(cause) => return Err(unsent_or_lost(sent, cause)),
            };
            sent = true;
            match conn.req_command(cmd) {
                Ok(Value::ServerError(e)) => return Err(Failure::Server(e.to_string())),
                Ok(value) => return Ok(value),
                Err(e) if broken(&e) => {
                    self.conn = None;
                    if Instant::now() >= deadline {
                        return Err(Failure::NoReply(Arc::new(e)));
                    }
                }
                Err(e) => return Err(Failure::Server(e.to_string())),
            }
        }
    }

    /// Sends `calls` as one pipeline and answers each; see the module invariants.
    fn pipeline(&mut self, calls: &mut Vec<Call>) {
        if calls.is_empty() {
            return;
        }
        let mut calls = std::mem::take(calls);
        let mut sent = false;
        let mut last: Cause = cause_of("deadline passed before sending");
        loop {
            // Calls past their deadline are answered now; the others go (again).
            let now = Instant::now();
            let (late, live): (Vec<Call>, Vec<Call>) =
                calls.into_iter().partition(|c| c.deadline <= now);
            for call in late {
                (call.reply)(Err(unsent_or_lost(sent, Arc::clone(&last))));
            }
            calls = live;
            let Some(deadline) = calls.iter().map(|c| c.deadline).max() else {
                return;
            };
            let conn = match self.connection(deadline) {
                Ok(conn) => conn,
                Err(cause) => {
                    last = cause;
                    continue;
                }
            };
            let mut packed = Vec::new();
            for call in &calls {
                call.cmd.write_packed_command(&mut packed);
            }
            sent = true;
            match conn.req_packed_commands(&packed, 0, calls.len()) {
                Ok(values) if values.len() == calls.len() => {
                    for (call, value) in calls.into_iter().zip(values) {
                        let out = match value {
                            Value::ServerError(e) => Err(Failure::Server(e.to_string())),
                            value => Ok(value),
                        };
                        (call.reply)(out);
                    }
                    return;
                }
                Ok(values) => {
                    let detail = format!("{} replies to {} calls", values.len(), calls.len());
                    self.conn = None;
                    for call in calls {
                        (call.reply)(Err(Failure::NoReply(cause_of(&detail))));
                    }
                    return;
                }
                Err(e) if broken(&e) => {
                    self.conn = None;
                    last = Arc::new(e);
                }
                Err(e) => {
                    let detail = e.to_string();
                    for call in calls {
                        (call.reply)(Err(Failure::Server(detail.clone())));
                    }
                    return;
                }
            }
        }
    }
}

/// Whether an error leaves the connection unusable, replies unread: then the calls go again.
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

fn unsent_or_lost(sent: bool, cause: Cause) -> Failure {
    if sent {
        Failure::NoReply(cause)
    } else {
        Failure::NotSent(cause)
    }
}

fn cause_of(text: &str) -> Cause {
    Arc::new(Message(text.to_owned()))
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
