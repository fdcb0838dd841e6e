//! The Redis engine: records on a Redis or Valkey server (7.0 or later), shared by every
//! machine of a service.
//!
//! Why: an embedded file serves one process, and a service with several replicas sends a
//! retry to whichever replica the load balancer picks. Here every decision is a Lua function
//! (`scripts.rs`) that the server runs atomically on one key, so every replica pointed at the
//! same server and prefix keeps one contract. The engine's own threads (`io.rs`, a few lanes)
//! pipeline the calls of all callers over their connections (`link.rs`, one per server node),
//! so neither a runtime nor a connection per call is needed. Completed records are also kept
//! in memory (`cache.rs`), so a replay needs no round trip.
//!
//! Invariants:
//! - every state change is one function call on one record (and, in the scope layout, its
//!   scope's count, in the same slot); nothing is decided from a client-side read (the replay cache answers only for completed records, which do not
//!   change before they expire);
//! - every mutating call carries a nonce that its script stores, so a call re-sent after a
//!   lost reply is recognised and answered as the first was;
//! - the store's secret lives on the server (`<prefix>meta`), written once by the first
//!   store to open, so every machine names records alike and digests credentials alike;
//! - an answer is given once the server has applied the call, so it is as durable as the
//!   server's `appendfsync` makes it, which `open` checks against the store's durability.

mod cache;
mod decode;
mod io;
mod link;
mod open;
mod options;
mod record;
mod scan;
mod scripts;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ::redis::{Cmd, Value};

use crate::backend::{Claim, Completion};
use crate::config::{Config, Terms};
use crate::engine::{Answer, Engine, ExpireReport, Release, Shared};
use crate::error::{BeginError, CompleteError, LeaseError, Message, OpenError, Unavailable};
use crate::format::blob;
use crate::reply;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::rules::state::State;
use crate::stats::{Stats, bump};
use crate::view::{CheckReport, MAX_PROBLEMS, RecordInfo};

use cache::{Deadline, Hit, ReplayCache};
use decode::{
    Completed, Life, decode_claim, decode_completion, holder_refusal, unavailable, verdict,
};
use io::{Call, Lanes, Queue, Target};
use link::Link;
use record::{Fields, Names, number};
use scan::Scan;
use scripts::Script;

use options::Wait;
pub use options::{RedisClock, RedisOptions};

/// The Redis engine.
pub(crate) struct RedisEngine {
    shared: Arc<Shared>,
    options: RedisOptions,
    names: Names,
    lanes: Lanes,
    /// Completed records, answered without a round trip (`cache.rs`).
    cache: Arc<ReplayCache>,
    /// Nonces: a random prefix for this process, then a counter.
    nonce_base: u128,
    nonce_next: AtomicU64,
}

impl RedisEngine {
    /// Connects, checks the server, loads or makes the store's secret and starts the I/O
    /// thread.
    pub(crate) fn open(options: RedisOptions, config: Config) -> Result<RedisEngine, OpenError> {
        let (link, secret, layout) = open::connect(&options, &config)?;
        let mut base = [0u8; 16];
        getrandom::fill(&mut base).map_err(|e| OpenError::Storage {
            cause: Arc::new(Message(format!("no random source for nonces: {e}"))),
        })?;
        let shared = Arc::new(Shared::new(config, secret));
        let mut links: Vec<Link> = (1..options.connections).map(|_| link.sibling()).collect();
        links.insert(0, link);
        let lanes = Lanes::start(links, &shared).map_err(OpenError::Spawn)?;
        Ok(RedisEngine {
            cache: Arc::new(ReplayCache::new(options.replay_cache_bytes)),
            shared,
            names: Names::new(&options.prefix, secret, layout),
            options,
            lanes,
            nonce_base: u128::from_le_bytes(base),
            nonce_next: AtomicU64::new(0),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A nonce no other call of any process uses.
    fn nonce(&self) -> String {
        let n = self.nonce_next.fetch_add(1, Ordering::Relaxed);
        format!("{:032x}{n:x}", self.nonce_base)
    }

    /// The deciding time as the scripts take it: the store's clock, or empty for the
    /// server's.
    fn now_arg(&self) -> String {
        match self.options.clock {
            RedisClock::Server => String::new(),
            RedisClock::Store => self.shared.now().to_string(),
        }
    }

    fn grace_ms(&self) -> u64 {
        crate::clock::millis(self.options.grace)
    }

    /// `FCALL` of `script` on the record of `hash`, of `scope`.
    fn fcall(&self, script: Script, hash: &KeyHash, scope: &Scope) -> ScriptCall {
        ScriptCall::new(&self.names, script, (hash, scope))
    }

    /// Queues `call`; its reply goes to `reply`. A refusal to queue (the thread is gone) drops
    /// `reply`, and its caller hears the store's state.
    fn send(&self, call: ScriptCall, reply: io::Reply) {
        call.queue(&self.lanes.queue, self.options.timeout, reply);
    }

    /// [`send`](RedisEngine::send) for a call whose caller waits on `rx`: a blocking caller
    /// sends it itself when its lane is idle (`io.rs`).
    fn send_waited<T>(&self, call: ScriptCall, reply: io::Reply, rx: &reply::Receiver<T>) {
        let call = call.into_call(self.options.timeout, reply);
        self.lanes.queue.call_waited(call, rx);
    }

    /// Ok while the store may serve and change records: refused when opened read-only.
    fn writable(&self) -> Result<(), Unavailable> {
        self.shared.check()?;
        if self.options.read_only {
            return Err(Unavailable::Refused {
                detail: "the store was opened read-only (RedisOptions::read_only)".into(),
            });
        }
        Ok(())
    }

    /// Queues `cmd` and answers through a reply slot what `decode` makes of its reply.
    fn call<T, E>(
        &self,
        cmd: ScriptCall,
        decode: impl FnOnce(&Shared, Value) -> Result<T, E> + Send + 'static,
    ) -> Answer<T, E>
    where
        T: Send + 'static,
        E: From<Unavailable> + Send + 'static,
    {
        if let Err(e) = self.writable() {
            return Answer::Now(Err(E::from(e)));
        }
        let (tx, rx) = reply::channel();
        let shared = Arc::clone(&self.shared);
        self.send_waited(
            cmd,
            Box::new(move |out| {
                let _ = tx.send(
                    out.map_err(unavailable)
                        .map_err(E::from)
                        .and_then(|v| decode(&shared, v)),
                );
            }),
            &rx,
        );
        Answer::later(rx, &self.shared)
    }

    /// Runs `f` on an I/O thread with its link, after every call queued before on any lane,
    /// and waits for its answer.
    fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Link, &Scan) -> Result<T, Unavailable> + Send + 'static,
    ) -> Result<T, Unavailable> {
        self.shared.check()?;
        let (tx, rx) = reply::channel();
        let view = Scan::new(self.names.clone(), self.now_arg(), self.options.timeout);
        let job = Box::new(move |link: &mut Link| {
            let _ = tx.send(f(link, &view));
        });
        if let Err(c) = self.lanes.queue.exclusive(job) {
            return Err(self.shared.lost_reply(c));
        }
        rx.wait().unwrap_or_else(|c| Err(self.shared.lost_reply(c)))
    }

    /// What a reply closure needs to put a completed record in the cache.
    fn keeper(&self) -> Keeper {
        Keeper {
            cache: Arc::clone(&self.cache),
            clock: self.options.clock,
            sent: Instant::now(),
        }
    }

    fn release_cmd(&self, hash: &KeyHash, scope: &Scope, token: u64) -> ScriptCall {
        let mut cmd = self.fcall(Script::Release, hash, scope);
        cmd.arg(token).arg(self.grace_ms()).arg(self.nonce());
        cmd
    }
}

/// Puts what the server answered of a completed record in the cache, with a deadline no
/// later than the record's expiry (`cache.rs`).
struct Keeper {
    cache: Arc<ReplayCache>,
    clock: RedisClock,
    /// When the call was sent: before the server read the time it answered with.
    sent: Instant,
}

impl Keeper {
    fn keep(&self, hash: &KeyHash, fp: Fingerprint, response: Response, life: Life) {
        let deadline = match self.clock {
            RedisClock::Server => {
                let left = life.expires_at.saturating_sub(life.now);
                Deadline::Instant(self.sent + std::time::Duration::from_millis(left))
            }
            RedisClock::Store => Deadline::Clock(life.expires_at),
        };
        self.cache.insert(hash, fp, response, deadline);
    }
}

/// The command sent after a completion on the same connection, for `wait`.
fn wait_cmd(wait: Wait) -> Cmd {
    match wait {
        Wait::Replicas { replicas, timeout } => {
            let mut w = ::redis::cmd("WAIT");
            w.arg(replicas).arg(crate::clock::millis(timeout).max(1));
            w
        }
        Wait::Aof {
            local,
            replicas,
            timeout,
        } => {
            let mut w = ::redis::cmd("WAITAOF");
            w.arg(u8::from(local))
                .arg(replicas)
                .arg(crate::clock::millis(timeout).max(1));
            w
        }
    }
}

/// The completion's reply out of `[reply, the wait's reply]`, once what `wait` asks for is
/// confirmed; otherwise the completion is on the primary only (or not yet on its disk), which
/// a failover or a power loss can lose: its outcome for the caller is unknown.
fn confirmed(v: Value, wait: Wait) -> Result<Value, Unavailable> {
    let Value::Array(mut both) = v else {
        return Err(record::malformed("a completion and its wait", &v));
    };
    let (Some(acked), Some(reply)) = (both.pop(), both.pop()) else {
        return Err(Unavailable::Corrupted {
            detail: "a completion and its wait answered other than two replies".into(),
        });
    };
    let unknown = |what: String| Unavailable::OutcomeUnknown {
        cause: Arc::new(Message(format!(
            "the completion is stored on the primary, but {what}; a failover or a power loss \
             may lose it"
        ))),
    };
    if matches!(reply, Value::ServerError(_)) {
        // The completion itself was refused: its own error says what happened.
        return Ok(reply);
    }
    let name = match wait {
        Wait::Replicas { .. } => "WAIT",
        Wait::Aof { .. } => "WAITAOF",
    };
    match (wait, acked) {
        // The completion ran; the wait could not: it is stored, not confirmed.
        (_, Value::ServerError(e)) => Err(unknown(format!(
            "{name} failed ({} {}), so nothing confirmed it",
            e.code(),
            e.details().unwrap_or("")
        ))),
        (Wait::Replicas { replicas, .. }, Value::Int(n)) => {
            if n >= i64::from(replicas) {
                Ok(reply)
            } else {
                Err(unknown(format!(
                    "{n} of {replicas} replicas acknowledged it in time"
                )))
            }
        }
        (
            Wait::Aof {
                local, replicas, ..
            },
            Value::Array(counts),
        ) => match counts.as_slice() {
            [Value::Int(on_disk), Value::Int(n)] => {
                if local && *on_disk < 1 {
                    Err(unknown("the primary did not fsync it in time".into()))
                } else if *n < i64::from(replicas) {
                    Err(unknown(format!(
                        "{n} of {replicas} replicas fsynced it in time"
                    )))
                } else {
                    Ok(reply)
                }
            }
            _ => Err(record::malformed("WAITAOF", &Value::Array(counts))),
        },
        (Wait::Replicas { .. }, other) => Err(record::malformed("WAIT", &other)),
        (Wait::Aof { .. }, other) => Err(record::malformed("WAITAOF", &other)),
    }
}

/// A script call on one record: the command, and where the record's key lives. In the scope
/// layout the scope's count is its second key, in the same slot.
struct ScriptCall {
    cmd: Cmd,
    target: Target,
    /// `WAIT` or `WAITAOF` after it, on the same connection.
    then: Option<Cmd>,
    /// Never sent again (`io::Call::once`).
    once: bool,
}

impl ScriptCall {
    fn new(names: &Names, script: Script, (hash, scope): (&KeyHash, &Scope)) -> ScriptCall {
        let key = names.record(scope, hash);
        let target = Target::Slot(link::slot_of(key.as_bytes()));
        let mut cmd = ::redis::cmd("FCALL");
        cmd.arg(script.function());
        match names.scope_count(scope) {
            Some(count) => cmd.arg(2).arg(key).arg(count),
            None => cmd.arg(1).arg(key),
        };
        ScriptCall {
            cmd,
            target,
            then: None,
            once: false,
        }
    }

    /// Adds an argument (`ARGV`).
    fn arg<T: ::redis::ToRedisArgs>(&mut self, arg: T) -> &mut Cmd {
        self.cmd.arg(arg)
    }

    fn queue(self, queue: &Queue, timeout: std::time::Duration, reply: io::Reply) {
        queue.call(self.into_call(timeout, reply));
    }

    fn into_call(self, timeout: std::time::Duration, reply: io::Reply) -> Call {
        Call {
            cmd: self.cmd,
            then: self.then,
            target: self.target,
            deadline: Instant::now() + timeout,
            once: self.once,
            reply,
        }
    }
}

impl Engine for RedisEngine {
    fn begin(
        &self,
        hash: KeyHash,
        scope: &Scope,
        key: &Key,
        fp: &Fingerprint,
        terms: Terms,
    ) -> Answer<Claim, BeginError> {
        if let Err(e) = self.writable() {
            return Answer::Now(Err(e.into()));
        }
        let counters = &self.shared.counters;
        match self.cache.lookup(&hash, fp, self.shared.now()) {
            Some(Hit::Replay(response)) => {
                bump(&counters.replays);
                bump(&counters.answered_from_index);
                return Answer::Now(Ok(Claim::Replay(response)));
            }
            Some(Hit::Conflict) => {
                bump(&counters.conflicts);
                bump(&counters.answered_from_index);
                return Answer::Now(Ok(Claim::Conflict));
            }
            None => {}
        }
        let mut cmd = self.fcall(Script::Claim, &hash, scope);
        cmd.arg(self.now_arg())
            .arg(terms.lease_ms())
            .arg(terms.ttl_ms())
            .arg(self.grace_ms())
            .arg(record::fingerprint_bytes(fp))
            .arg(self.nonce())
            .arg(scope.as_str())
            .arg(key.as_str())
            .arg(self.shared.config.max_records_per_scope);
        let (tx, rx) = reply::channel();
        let shared = Arc::clone(&self.shared);
        // A reservation whose caller went away is released, so that the key is not held
        // without a holder until its lease runs out (C6): by the I/O thread if the answer
        // comes after the caller left, or by the caller's drop if it came before.
        let jobs = self.lanes.queue.clone();
        let release = {
            let grace = self.grace_ms();
            let names = self.names.clone();
            let base = self.nonce();
            let timeout = self.options.timeout;
            let scope = scope.clone();
            move |token: u64| {
                let mut call = ScriptCall::new(&names, Script::Release, (&hash, &scope));
                call.arg(token).arg(grace).arg(format!("{base}r"));
                call.queue(&jobs, timeout, Box::new(|_| {}));
            }
        };
        let release = Arc::new(release);
        let on_answer = Arc::clone(&release);
        let keeper = self.keeper();
        let fp = *fp;
        self.send_waited(
            cmd,
            Box::new(move |out| {
                let out = out
                    .map_err(unavailable)
                    .map_err(BeginError::from)
                    .and_then(|v| decode_claim(&shared, v))
                    .map(|(claim, life)| {
                        if let (Claim::Replay(response), Some(life)) = (&claim, life) {
                            keeper.keep(&hash, fp, response.clone(), life);
                        }
                        claim
                    });
                if let Err(Ok(Claim::Execute { token, .. })) = tx.send(out) {
                    on_answer(token);
                }
            }),
            &rx,
        );
        Answer::later_or(
            rx,
            &self.shared,
            Box::new(move |rx| {
                if let Some(Ok(Claim::Execute { token, .. })) = rx.abandon(|| ()) {
                    release(token);
                }
            }),
        )
    }

    fn complete(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        response: Response,
        terms: Terms,
    ) -> Answer<Completion, CompleteError> {
        let blob = match blob::encode(&response) {
            Ok(blob) => blob,
            // The store checked the response first: not reached.
            Err(e) => {
                self.send(self.release_cmd(&hash, scope, token), Box::new(|_| {}));
                return Answer::Now(Err(CompleteError::InvalidResponse {
                    reason: e.to_string(),
                }));
            }
        };
        let keep = terms.cache_policy().keeps(response.status());
        let mut cmd = self.fcall(Script::Complete, &hash, scope);
        cmd.arg(self.now_arg())
            .arg(token)
            .arg(if keep { "1" } else { "0" })
            .arg(terms.ttl_ms())
            .arg(self.grace_ms())
            .arg(self.nonce())
            .arg(blob)
            .arg(self.shared.config.max_records_per_scope);
        let keeper = self.keeper();
        let kept = keep.then_some(response);
        let wait = self.options.wait;
        cmd.then = wait.map(wait_cmd);
        self.call(cmd, move |shared, v| {
            let v = match wait {
                Some(wait) => confirmed(v, wait)?,
                None => v,
            };
            match decode_completion(shared, (&hash, token), v)? {
                Ok(Completed::Stored(fp, life)) => {
                    if let (Some(response), Ok(fp)) = (kept, record::fingerprint(&fp)) {
                        keeper.keep(&hash, fp, response, life);
                    }
                    shared.waiters.wake(&hash);
                    Ok(Completion::Stored)
                }
                Ok(Completed::Released) => {
                    shared.waiters.wake(&hash);
                    Ok(Completion::Released)
                }
                Err(Some(current)) => Err(CompleteError::Fenced { token, current }),
                Err(None) => Err(CompleteError::NotReserved { token }),
            }
        })
    }

    fn release(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        how: Release,
    ) -> Answer<(), LeaseError> {
        let cmd = self.release_cmd(&hash, scope, token);
        let decode = move |shared: &Shared, v: Value| {
            let (first, rest) = verdict("a release", v)?;
            if first.as_slice() == b"ok" {
                bump(&shared.counters.releases);
                shared.waiters.wake(&hash);
                return Ok(());
            }
            match holder_refusal(shared, (&hash, token), "a release", (&first, &rest))? {
                Some(current) => Err(LeaseError::Fenced { token, current }),
                None => Err(LeaseError::NotReserved { token }),
            }
        };
        match how {
            Release::Answered | Release::Detached => self.call(cmd, decode),
            Release::Forget => {
                // Queued before this returns, so a `begin` or `get` made after it is sent
                // after it (C6).
                let shared = Arc::clone(&self.shared);
                self.send(
                    cmd,
                    Box::new(move |out| {
                        if let Ok(v) = out {
                            let _ = decode(&shared, v);
                        }
                    }),
                );
                Answer::Now(Ok(()))
            }
        }
    }

    fn save_point(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        point: RecoveryPoint,
    ) -> Answer<(), LeaseError> {
        let mut cmd = self.fcall(Script::Point, &hash, scope);
        cmd.arg(token).arg(crate::format::point::encode(&point));
        self.call(cmd, move |shared, v| {
            let (first, rest) = verdict("a recovery point", v)?;
            if first.as_slice() == b"ok" {
                bump(&shared.counters.points_saved);
                return Ok(());
            }
            match holder_refusal(shared, (&hash, token), "a recovery point", (&first, &rest))? {
                Some(current) => Err(LeaseError::Fenced { token, current }),
                None => Err(LeaseError::NotReserved { token }),
            }
        })
    }

    fn renew(
        &self,
        hash: KeyHash,
        scope: &Scope,
        token: u64,
        terms: Terms,
    ) -> Answer<u64, LeaseError> {
        let mut cmd = self.fcall(Script::Renew, &hash, scope);
        cmd.arg(self.now_arg())
            .arg(token)
            .arg(terms.lease_ms())
            .arg(self.grace_ms())
            .arg(self.shared.config.max_records_per_scope);
        self.call(cmd, move |shared, v| {
            let (first, rest) = verdict("a renewal", v)?;
            match (first.as_slice(), rest.as_slice()) {
                (b"renewed", [deadline]) => Ok(number("lease deadline", deadline)?),
                _ => match holder_refusal(shared, (&hash, token), "a renewal", (&first, &rest))? {
                    Some(current) => Err(LeaseError::Fenced { token, current }),
                    None => Err(LeaseError::NotReserved { token }),
                },
            }
        })
    }

    fn purge(&self, hash: KeyHash, scope: &Scope) -> Answer<bool, Unavailable> {
        self.cache.remove(&hash);
        // Again once answered: the calls of the key sent before the purge are answered before
        // it (a lane answers in order), and a replay or a completion among them puts the
        // record it learned of back into the cache.
        let cache = Arc::clone(&self.cache);
        let mut cmd = self.fcall(Script::Purge, &hash, scope);
        cmd.arg(self.grace_ms()).arg(self.nonce());
        // Its nonce lives on the tombstone it leaves, which the next claim of the key (another
        // store's, maybe) replaces: sent again after that, it would purge the new record.
        cmd.once = true;
        self.call(cmd, move |shared, v| {
            cache.remove(&hash);
            match v {
                Value::Int(n) => {
                    if n == 1 {
                        shared.waiters.wake(&hash);
                    }
                    Ok(n == 1)
                }
                other => Err(record::malformed("a purge", &other)),
            }
        })
    }

    fn get(&self, hash: KeyHash, scope: &Scope) -> Result<Option<RecordInfo>, Unavailable> {
        if self.options.read_only {
            // No function may be loaded: the hash itself, judged on the deciding clock.
            let key = self.names.record(scope, &hash);
            return self.exclusive(move |link, scan| {
                let now = scan.now(link)?;
                let fields = scan.fields(link, &key)?;
                if fields.is_record() && fields.expires_at()? > now {
                    fields.info().map(Some)
                } else {
                    Ok(None)
                }
            });
        }
        let mut cmd = self.fcall(Script::Get, &hash, scope);
        cmd.arg(self.now_arg());
        self.call(cmd, |_, v| {
            let fields = Fields::of("a read", v)?;
            if fields.is_record() {
                fields.info().map(Some)
            } else {
                Ok(None)
            }
        })
        .wait()
    }

    fn expire(&self, _limit: usize) -> Result<ExpireReport, Unavailable> {
        // The server removes each record once its TTL (its expiry plus the grace) runs out;
        // every script reads the expiry itself, so nothing expired is ever served.
        self.shared.check()?;
        Ok(ExpireReport::default())
    }

    fn flush(&self) -> Result<(), Unavailable> {
        // Every call is answered once the server applied it, as durably as its `appendfsync`
        // (checked at open); a job queued behind the calls made so far runs once they are.
        self.exclusive(|_, _| Ok(()))
    }

    fn list(
        &self,
        (scope, state): (Option<&Scope>, Option<State>),
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        let scope = scope.map(|s| s.as_str().to_owned());
        self.exclusive(move |link, view| {
            let now = view.now(link)?;
            let mut lowest: std::collections::BTreeMap<KeyHash, RecordInfo> = Default::default();
            view.walk(link, |_, fields| {
                let fields = fields?;
                if !fields.is_record() || fields.expires_at()? <= now {
                    return Ok(());
                }
                let hash = fields.key_hash()?;
                let info = fields.info()?;
                if scope.as_ref().is_some_and(|s| *s != info.scope)
                    || state.is_some_and(|s| s != info.state)
                {
                    return Ok(());
                }
                lowest.insert(hash, info);
                if lowest.len() > limit {
                    lowest.pop_last();
                }
                Ok(())
            })?;
            Ok(lowest.into_values().collect())
        })
    }

    fn check(&self) -> Result<CheckReport, Unavailable> {
        self.exclusive(move |link, view| {
            let now = view.now(link)?;
            let mut report = CheckReport::default();
            // In the scope layout: each live record's key tag, by its scope's count key (C13).
            let mut counts: std::collections::BTreeMap<
                String,
                std::collections::BTreeSet<Vec<u8>>,
            > = Default::default();
            view.walk(link, |key, fields| {
                let fields = match fields {
                    Ok(fields) => fields,
                    Err(e) => {
                        if report.problems.len() < MAX_PROBLEMS {
                            report.problems.push(format!("{key}: {e}"));
                        }
                        return Ok(());
                    }
                };
                if !fields.is_record() {
                    return Ok(());
                }
                report.records += 1;
                let len = fields.response_len();
                let problem = match fields.expires_at() {
                    Ok(ex) => {
                        if ex <= now {
                            report.expired += 1;
                        }
                        match fields.info() {
                            Ok(info) => {
                                let count = Scope::new(&info.scope)
                                    .ok()
                                    .and_then(|s| view.scope_count(&s));
                                if let (true, Some(count), Some((_, member))) =
                                    (ex > now, count, key.split_once('}'))
                                {
                                    counts
                                        .entry(count)
                                        .or_default()
                                        .insert(member.as_bytes().to_vec());
                                }
                                match info.response {
                                    Some(_) => {
                                        report.completed += 1;
                                        report.responses += 1;
                                        report.response_bytes += len.unwrap_or(0) as u64;
                                    }
                                    None => report.in_flight += 1,
                                }
                                (info.response.is_none() && len.is_some())
                                    .then(|| "is in flight and holds a response".to_owned())
                            }
                            Err(e) => Some(e.to_string()),
                        }
                    }
                    Err(e) => Some(e.to_string()),
                };
                if let Some(p) = problem
                    && report.problems.len() < MAX_PROBLEMS
                {
                    report.problems.push(format!("{key}: {p}"));
                }
                Ok(())
            })?;
            // A count whose scope has no live record left still names what it counts.
            view.counts(link, |count| {
                counts.entry(count.to_owned()).or_default();
                Ok(())
            })?;
            for (count, live) in counts {
                let counted: std::collections::BTreeSet<Vec<u8>> =
                    match view.counted(link, &count, now) {
                        Ok(members) => members.into_iter().collect(),
                        // Another program's key under the prefix: a problem, not the end.
                        Err(e) => {
                            if report.problems.len() < MAX_PROBLEMS {
                                report.problems.push(format!("{count}: {e}"));
                            }
                            continue;
                        }
                    };
                let tag = |m: &Vec<u8>| String::from_utf8_lossy(m).into_owned();
                let missing = live
                    .difference(&counted)
                    .map(|m| format!("{count}: a live record ({}) is not counted (C13)", tag(m)));
                let extra = counted
                    .difference(&live)
                    .map(|m| format!("{count}: counts {} with no live record (C13)", tag(m)));
                for problem in missing.chain(extra) {
                    if report.problems.len() < MAX_PROBLEMS {
                        report.problems.push(problem);
                    }
                }
            }
            Ok(report)
        })
    }

    fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.cache.len())
    }

    fn close(&self) -> Result<(), Unavailable> {
        self.shared.mark_closed();
        self.lanes.stop();
        self.shared.check_poison()
    }

    fn wakes_every_waiter(&self) -> bool {
        // Another machine's completion or release wakes nothing here.
        false
    }

    fn closing_on_own_thread(&self) -> bool {
        self.lanes.is_own_thread()
    }
}
