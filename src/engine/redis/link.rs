//! The Redis engine's connections: one per server node, the Cluster's slot map, and the rounds
//! in which a batch of calls is sent, answered, redirected and sent again.
//!
//! Why: one server and a Redis Cluster differ only in where a call goes. A single server is a
//! cluster of one node that owns every slot; with Cluster, each call goes to the primary that
//! owns its key's slot (the record's hash tag), `MOVED` reloads the slot map, `ASK` sends the
//! call once to the node named (after `ASKING`), and `TRYAGAIN` or `CLUSTERDOWN` wait and
//! send again.
//!
//! Invariants:
//! - the calls of one node go in one write and their replies are read in order, so two calls
//!   on one key (one slot, one node) are applied in the order they were queued;
//! - a call whose reply was not read (a broken connection, a read past the timeout, a
//!   redirection) is sent again, to where the slot map now says, until its deadline; the
//!   scripts make a repeated call harmless (`scripts.rs`);
//! - a call that asks for a wait (`WAIT`, `WAITAOF`) is answered only with the reply of a wait
//!   sent after it on the same connection, one for all such calls of a node's batch: a wait
//!   blocks its connection, so a wait for each call would hold the lane once per call; a call whose
//!   wait went unanswered is sent again;
//! - a connection given up while calls on it were unanswered is closed on the server
//!   (`CLIENT KILL`, by its id and address) before anything is sent on the next one, so that
//!   no copy of a call it still carries (in the server's buffers, or a proxy's) is applied
//!   after the calls sent again: a late purge, claim, point or renewal would undo newer
//!   changes of its key;
//! - a call sent on a connection that broke before its reply (or its wait's) was read may have
//!   been applied: if the server refuses it when it is sent again, its outcome is unknown
//!   (`NoReply`), never a refusal that says nothing was applied;
//! - every call is answered exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{Client, Cmd, Connection, ConnectionAddr, RedisError, Value};
use parking_lot::Mutex;

use crate::error::{Cause, Message};

use super::io::{Call, Failure, Target};
use super::scripts;

/// How many hash slots a Redis Cluster has.
pub(crate) const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first `{` and the
/// next `}`, if not empty) or of the whole key, modulo 16384.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

struct Node {
    /// `host:port`, as the cluster names it (or the seed's URL).
    addr: String,
    client: Client,
    conn: Option<Connection>,
    /// `conn` as the server knows it (`CLIENT INFO`), if the server told.
    known: Option<Known>,
    /// Connections given up while calls on them were unanswered: the server may still hold
    /// their bytes (in its buffers, or a proxy's), so each is closed on the server (`CLIENT
    /// KILL`) before anything is sent on the next connection.
    dropped: Vec<Known>,
}

/// A connection as the server knows it. `CLIENT KILL` must match both, so that once a
/// restarted server hands the same id out again, no other client's connection is closed.
struct Known {
    id: String,
    addr: String,
}

impl Node {
    fn new(addr: String, client: Client) -> Node {
        Node {
            addr,
            client,
            conn: None,
            known: None,
            dropped: Vec::new(),
        }
    }

    /// Gives the connection up; see `dropped`.
    fn lose(&mut self) {
        self.conn = None;
        self.dropped.extend(self.known.take());
    }
}

/// A call on its way: where an `ASK` sent it, whether it may have reached a server, and
/// whether a server may have applied it without this process reading the reply.
struct Pending {
    call: Call,
    ask: Option<usize>,
    sent: bool,
    /// Sent on a connection that broke before its reply was read (or a wait's was): a later
    /// refusal of the call sent again says nothing of the first send.
    lost: bool,
}

impl Pending {
    /// Answers the call with the server's refusal, `text`; of a call sent before without an
    /// answer, the outcome is unknown instead, since the first send may have been applied.
    fn refused(self, text: String) {
        let failure = if self.lost {
            Failure::NoReply(cause_of(&format!(
                "sent again after its reply was lost, and refused: {text}"
            )))
        } else {
            Failure::Server(text)
        };
        (self.call.reply)(Err(failure));
    }

    fn lost(self) -> Pending {
        Pending { lost: true, ..self }
    }
}

/// The engine's connections.
pub(crate) struct Link {
    nodes: Vec<Node>,
    /// `(first slot, last slot, node)`, sorted; empty for a single server (node 0).
    slots: Vec<(u16, u16, usize)>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Link {
    /// A link to the server of `client`; [`discover`](Link::discover) finds out whether it is
    /// a Cluster.
    pub(crate) fn new(client: Client, timeout: Duration, connect_timeout: Duration) -> Link {
        let addr = client.get_connection_info().addr().to_string();
        Link {
            nodes: vec![Node::new(addr, client)],
            slots: Vec::new(),
            timeout,
            connect_timeout,
        }
    }

    /// A link to the same nodes, with the same slot map, and connections of its own.
    pub(crate) fn sibling(&self) -> Link {
        Link {
            nodes: self
                .nodes
                .iter()
                .map(|n| Node::new(n.addr.clone(), n.client.clone()))
                .collect(),
            slots: self.slots.clone(),
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        }
    }

    /// Asks the first server whether it runs in Cluster mode and, if so, loads the slot map.
    pub(crate) fn discover(&mut self, deadline: Instant) -> Result<bool, Failure> {
        let mut info = ::redis::cmd("INFO");
        info.arg("cluster");
        let text = match self.query(Target::Node(0), &info, deadline)? {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            other => format!("{other:?}"),
        };
        let cluster = text.lines().any(|l| l.trim() == "cluster_enabled:1");
        if cluster {
            self.refresh_slots(deadline)?;
        }
        Ok(cluster)
    }

    /// The nodes that own slots (every node of a single server): where a walk or a check of
    /// the server's settings goes.
    pub(crate) fn primaries(&self) -> Vec<usize> {
        if self.slots.is_empty() {
            return vec![0];
        }
        let mut nodes: Vec<usize> = self.slots.iter().map(|&(_, _, n)| n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The name of node `i`, for messages.
    pub(crate) fn addr(&self, i: usize) -> &str {
        self.nodes.get(i).map_or("?", |n| n.addr.as_str())
    }

    fn node_of_slot(&self, slot: u16) -> usize {
        self.slots
            .iter()
            .find(|&&(lo, hi, _)| lo <= slot && slot <= hi)
            .map_or(0, |&(_, _, n)| n)
    }

    /// The node named `host:port`, added if it is new.
    fn node_named(&mut self, addr: &str) -> Option<usize> {
        if let Some(i) = self.nodes.iter().position(|n| n.addr == addr) {
            return Some(i);
        }
        let (host, port) = addr.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?;
        let info = self.nodes[0]
            .client
            .get_connection_info()
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.to_owned(), port));
        let client = Client::open(info).ok()?;
        self.nodes.push(Node::new(addr.to_owned(), client));
        Some(self.nodes.len() - 1)
    }

    /// Loads the slot map from the first node that answers `CLUSTER SLOTS`.
    fn refresh_slots(&mut self, deadline: Instant) -> Result<(), Failure> {
        let mut last = Failure::NotSent(cause_of("no node to ask for the slot map"));
        for i in 0..self.nodes.len() {
            let mut cmd = ::redis::cmd("CLUSTER");
            cmd.arg("SLOTS");
            match self.ask_node(i, &cmd, deadline) {
                Ok(v) => return self.load_slots(i, v),
                Err(f) => last = f,
            }
        }
        Err(last)
    }

    fn load_slots(&mut self, asked: usize, v: Value) -> Result<(), Failure> {
        let bad = || Failure::Server(format!("CLUSTER SLOTS answered {v:?}"));
        let Value::Array(ranges) = &v else {
            return Err(bad());
        };
        let mut slots = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(bad());
            };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(primary))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err(bad());
            };
            let host = match primary.first() {
                Some(Value::BulkString(h)) if !h.is_empty() && h.as_slice() != b"?" => {
                    String::from_utf8_lossy(h).into_owned()
                }
                // A node that does not know its own address: the one that answered does.
                _ => self
                    .addr(asked)
                    .rsplit_once(':')
                    .map_or_else(|| "127.0.0.1".to_owned(), |(h, _)| h.to_owned()),
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                return Err(bad());
            };
            let node = self.node_named(&format!("{host}:{port}")).ok_or_else(bad)?;
            let (Ok(lo), Ok(hi)) = (u16::try_from(*lo), u16::try_from(*hi)) else {
                return Err(bad());
            };
            slots.push((lo, hi, node));
        }
        slots.sort_unstable();
        self.slots = slots;
        Ok(())
    }

    /// The connection to node `i`, connecting first with backoff, until `deadline`.
    fn connection(&mut self, i: usize, deadline: Instant) -> Result<&mut Connection, Cause> {
        if i >= self.nodes.len() {
            return Err(cause_of("no such node"));
        }
        let mut pause = Duration::from_millis(5);
        let mut last: Option<Cause> = None;
        while self.nodes[i].conn.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last.unwrap_or_else(|| cause_of("deadline passed before connecting")));
            }
            let node = &self.nodes[i];
            match node
                .client
                .get_connection_with_timeout(left.min(self.connect_timeout))
                .and_then(|mut c| {
                    c.set_read_timeout(Some(self.timeout))?;
                    c.set_write_timeout(Some(self.timeout))?;
                    let known = fence(&mut c, &node.dropped)?;
                    Ok((c, known))
                }) {
                Ok((conn, known)) => {
                    let node = &mut self.nodes[i];
                    node.dropped.clear();
                    node.known = known;
                    node.conn = Some(conn);
                }
                Err(e) if e.kind() == ::redis::ErrorKind::AuthenticationFailed => {
                    // Credentials the server refuses stay refused: trying them again until
                    // the deadline only hides the cause from the caller for that long.
                    return Err(Arc::new(e));
                }
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
        self.nodes[i]
            .conn
            .as_mut()
            .ok_or_else(|| cause_of("no connection"))
    }

    /// Loads the engine's functions on node `i` (a library already there is kept: its name
    /// carries the digest of its code).
    pub(crate) fn load_functions(&mut self, i: usize, deadline: Instant) -> Result<(), Failure> {
        let mut cmd = ::redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg(scripts::library_source());
        match self.ask_node(i, &cmd, deadline) {
            Ok(_) => Ok(()),
            Err(Failure::Server(e)) if e.contains("already exists") => Ok(()),
            Err(f) => Err(f),
        }
    }

    /// One command to node `i`, once, without redirection: for `CLUSTER SLOTS`.
    fn ask_node(&mut self, i: usize, cmd: &Cmd, deadline: Instant) -> Result<Value, Failure> {
        let conn = self.connection(i, deadline).map_err(Failure::NotSent)?;
        match ::redis::ConnectionLike::req_command(conn, cmd) {
            Ok(Value::ServerError(e)) => Err(Failure::Server(server_text(e.code(), e.details()))),
            Ok(v) => Ok(v),
            Err(e) => {
                if broken(&e) {
                    self.nodes[i].lose();
                }
                Err(Failure::NoReply(Arc::new(e)))
            }
        }
    }

    /// Sends one command to `target` and waits for its reply, redirected and sent again as a
    /// batch's calls are. Only for commands that are safe to repeat (reads, and the scripts).
    pub(crate) fn query(
        &mut self,
        target: Target,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<Value, Failure> {
        let out: Arc<Mutex<Option<Result<Value, Failure>>>> = Arc::default();
        let slot = Arc::clone(&out);
        let mut calls = vec![Call {
            cmd: cmd.clone(),
            then: None,
            target,
            deadline,
            once: false,
            reply: Box::new(move |r| *slot.lock() = Some(r)),
        }];
        self.pipeline(&mut calls);
        let answer = out.lock().take();
        answer.unwrap_or_else(|| Err(Failure::NoReply(cause_of("the call was not answered"))))
    }

    /// Sends `calls`, node by node, and answers each; see the module invariants.
    pub(crate) fn pipeline(&mut self, calls: &mut Vec<Call>) {
        let mut todo: Vec<Pending> = calls
            .drain(..)
            .map(|call| Pending {
                call,
                ask: None,
                sent: false,
                lost: false,
            })
            .collect();
        let mut last: Cause = cause_of("deadline passed before sending");
        let mut pause = Duration::from_millis(5);
        while !todo.is_empty() {
            // Calls past their deadline are answered now; the others go (again).
            let now = Instant::now();
            let (late, live): (Vec<Pending>, Vec<Pending>) =
                todo.into_iter().partition(|p| p.call.deadline <= now);
            for p in late {
                (p.call.reply)(Err(unsent_or_lost(p.sent, Arc::clone(&last))));
            }
            todo = live;
            let Some(deadline) = todo.iter().map(|p| p.call.deadline).max() else {
                return;
            };
            let mut groups: BTreeMap<usize, Vec<Pending>> = BTreeMap::new();
            for p in todo.drain(..) {
                let node = match (p.ask, p.call.target) {
                    (Some(n), _) | (None, Target::Node(n)) => n,
                    (None, Target::Slot(s)) => self.node_of_slot(s),
                };
                groups.entry(node).or_default().push(p);
            }
            let mut refresh = false;
            let mut wait = false;
            let mut missing = Vec::new();
            let mut sent = Vec::new();
            for (node, group) in groups {
                // A call sent once whose reply was lost is answered, its outcome unknown, once
                // a new connection has closed the old one on the server (`connection`): its
                // first send was applied by then, or never will be.
                let (once_lost, mut group): (Vec<Pending>, Vec<Pending>) =
                    group.into_iter().partition(|p| p.call.once && p.lost);
                let conn = match self.connection(node, deadline) {
                    Ok(conn) => conn,
                    Err(cause) if credentials_refused(&cause) => {
                        // No later attempt can succeed: the calls are answered now.
                        for p in group.into_iter().chain(once_lost) {
                            (p.call.reply)(Err(unsent_or_lost(p.sent, Arc::clone(&cause))));
                        }
                        continue;
                    }
                    Err(cause) => {
                        last = cause;
                        todo.extend(group);
                        todo.extend(once_lost);
                        continue;
                    }
                };
                for p in once_lost {
                    (p.call.reply)(Err(Failure::NoReply(Arc::clone(&last))));
                }
                if group.is_empty() {
                    continue;
                }
                let mut packed = Vec::new();
                for p in &mut group {
                    if p.ask.is_some() {
                        ::redis::cmd("ASKING").write_packed_command(&mut packed);
                    }
                    p.call.cmd.write_packed_command(&mut packed);
                    p.sent = true;
                }
                // One wait after the node's last command covers every write of the connection
                // before it: the calls that asked for it share it.
                if let Some(then) = group.iter().rev().find_map(|p| p.call.then.as_ref()) {
                    then.write_packed_command(&mut packed);
                }
                match conn.send_packed_command(&packed) {
                    Ok(()) => sent.push((node, group)),
                    Err(e) => {
                        // Part of the write may have reached the server.
                        self.nodes[node].lose();
                        last = Arc::new(e);
                        todo.extend(group.into_iter().map(Pending::lost));
                    }
                }
            }
            for (node, group) in sent {
                let shared_wait = group.iter().any(|p| p.call.then.is_some());
                // Calls answered, waiting for the wait's reply: `[reply, the wait's reply]`.
                let mut waiting: Vec<(Pending, Value)> = Vec::new();
                let mut broken_at = None;
                for p in group {
                    if broken_at.is_some() {
                        todo.push(p.lost());
                        continue;
                    }
                    let reply = match self.read(node, p.ask.is_some()) {
                        Ok(Value::ServerError(e)) => Err(server_text(e.code(), e.details())),
                        Err(e) if !broken(&e) && e.code().is_some() => {
                            Err(server_text(e.code().unwrap_or(""), e.detail()))
                        }
                        other => Ok(other),
                    };
                    match reply {
                        Err(text) => match redirect(&text) {
                            Some(Redirect::Moved) => {
                                refresh = true;
                                todo.push(Pending { ask: None, ..p });
                            }
                            Some(Redirect::Ask(addr)) => {
                                let ask = self.node_named(&addr);
                                refresh |= ask.is_none();
                                todo.push(Pending { ask, ..p });
                            }
                            Some(Redirect::Wait) => {
                                wait = true;
                                todo.push(Pending { ask: None, ..p });
                            }
                            Some(Redirect::Missing) => {
                                missing.push(node);
                                todo.push(p);
                            }
                            None => p.refused(text),
                        },
                        Ok(Ok(value)) if p.call.then.is_some() => waiting.push((p, value)),
                        Ok(Ok(value)) => (p.call.reply)(Ok(value)),
                        Ok(Err(e)) if broken(&e) => {
                            self.nodes[node].lose();
                            last = Arc::new(e);
                            broken_at = Some(node);
                            todo.push(p.lost());
                        }
                        Ok(Err(e)) => p.refused(e.to_string()),
                    }
                }
                if shared_wait {
                    let waited = match broken_at {
                        Some(_) => None,
                        // A wait's error reply is a value; an error reading it leaves the
                        // connection out of step, so it is dropped and the calls sent again.
                        None => match self.read(node, false) {
                            Err(e) => {
                                self.nodes[node].lose();
                                last = Arc::new(e);
                                None
                            }
                            Ok(v) => Some(v),
                        },
                    };
                    for (p, value) in waiting {
                        match (&waited, value) {
                            // Its wait went unanswered: sent again, which its nonce makes
                            // harmless, with a wait of its own.
                            (None, _) => todo.push(p.lost()),
                            // The call itself was refused: its own error says what happened,
                            // unless an earlier send of it went unanswered.
                            (_, Value::ServerError(e)) if p.lost => {
                                p.refused(server_text(e.code(), e.details()));
                            }
                            (_, v @ Value::ServerError(_)) => (p.call.reply)(Ok(v)),
                            (Some(w), v) => (p.call.reply)(Ok(Value::Array(vec![v, w.clone()]))),
                        }
                    }
                }
            }
            if refresh && self.refresh_slots(deadline).is_err() {
                wait = true;
            }
            missing.dedup();
            for node in missing {
                if self.load_functions(node, deadline).is_err() {
                    wait = true;
                }
            }
            if wait && !todo.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }

    /// Reads the next reply of node `i` (after the `+OK` of an `ASKING` if one was sent).
    fn read(&mut self, i: usize, asking: bool) -> Result<Value, RedisError> {
        let Some(conn) = self.nodes.get_mut(i).and_then(|n| n.conn.as_mut()) else {
            return Err(RedisError::from(std::io::Error::from(
                std::io::ErrorKind::NotConnected,
            )));
        };
        if asking {
            conn.recv_response()?;
        }
        conn.recv_response()
    }
}

enum Redirect {
    /// The slot lives elsewhere now: reload the map.
    Moved,
    /// The node lacks the engine's functions (a node new to the Cluster, or one whose
    /// functions were flushed): load them there and send again.
    Missing,
    /// The slot is migrating: send this call once to that node.
    Ask(String),
    /// The cluster cannot serve now: wait and send again.
    Wait,
}

fn redirect(error: &str) -> Option<Redirect> {
    let mut words = error.split_whitespace();
    match words.next()? {
        "MOVED" => Some(Redirect::Moved),
        "ASK" => words.nth(1).map(|addr| Redirect::Ask(addr.to_owned())),
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Wait),
        "ERR" if error.contains("Function not found") => Some(Redirect::Missing),
        _ => None,
    }
}

/// A server's error as it sent it: the code, a space, the detail.
fn server_text(code: &str, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("{code} {d}"),
        None => code.to_owned(),
    }
}

/// Whether an error leaves the connection unusable, replies unread: then the calls go again.
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Readies a new connection: closes on the server the connections in `dropped`, so that
/// nothing they still carry is applied after the calls sent again on this one, and answers
/// how the server knows this one. A server that refuses either command (a managed service's
/// ACL) leaves that protection out; only an I/O error fails the connection.
/// Whether a connection failed because the server refused the store's credentials.
fn credentials_refused(cause: &Cause) -> bool {
    cause
        .downcast_ref::<RedisError>()
        .is_some_and(|e| e.kind() == ::redis::ErrorKind::AuthenticationFailed)
}

fn fence(conn: &mut Connection, dropped: &[Known]) -> Result<Option<Known>, RedisError> {
    use ::redis::ConnectionLike;
    for old in dropped {
        // Filters must all match; the caller's own connection is never closed (`SKIPME`).
        let mut kill = ::redis::cmd("CLIENT");
        kill.arg("KILL")
            .arg("ID")
            .arg(&old.id)
            .arg("ADDR")
            .arg(&old.addr);
        match conn.req_command(&kill) {
            Err(e) if broken(&e) => return Err(e),
            _ => {}
        }
    }
    match conn.req_command(::redis::cmd("CLIENT").arg("INFO")) {
        Ok(Value::BulkString(info)) => Ok(known(&String::from_utf8_lossy(&info))),
        Ok(Value::VerbatimString { text, .. }) => Ok(known(&text)),
        Err(e) if broken(&e) => Err(e),
        _ => Ok(None),
    }
}

/// The id and address in a `CLIENT INFO` line (`id=7 addr=127.0.0.1:51234 …`).
fn known(info: &str) -> Option<Known> {
    let field = |name: &str| {
        info.split_ascii_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_owned)
    };
    Some(Known {
        id: field("id=")?,
        addr: field("addr=")?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_info_line_gives_the_id_and_address_a_kill_must_match() {
        let line = "id=7 addr=127.0.0.1:51234 laddr=127.0.0.1:6379 fd=8 name= age=0\n";
        let k = known(line).unwrap();
        assert_eq!((k.id.as_str(), k.addr.as_str()), ("7", "127.0.0.1:51234"));
        assert!(known("addr=127.0.0.1:1").is_none());
        assert!(known("").is_none());
    }

    #[test]
    fn slots_follow_the_cluster_specification() {
        // The specification's own example, and hash tags.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    #[test]
    fn redirections_are_recognised() {
        assert!(matches!(
            redirect("MOVED 3999 127.0.0.1:6381"),
            Some(Redirect::Moved)
        ));
        assert!(matches!(
            redirect("ASK 3999 127.0.0.1:6381"),
            Some(Redirect::Ask(a)) if a == "127.0.0.1:6381"
        ));
        assert!(matches!(
            redirect("TRYAGAIN Multiple keys"),
            Some(Redirect::Wait)
        ));
        assert!(redirect("ERR wrong").is_none());
        assert!(matches!(
            redirect("ERR Function not found"),
            Some(Redirect::Missing)
        ));
    }
}
