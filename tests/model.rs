//! Model-based property tests (C1-C12): random operation sequences run against the real
//! `Store` and against a small reference model, comparing every answer call by call, in
//! every durability mode; and a concurrent property for C1 (one execution per key).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Barrier;
use std::time::Duration;

use idemstore::{
    Begin, CompleteError, Completion, ConfigBuilder, Durability, Fingerprint, LeaseError,
    OpenError, RecordInfo, Reservation, Response, State, Store, Unavailable,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use crate::support::*;

const LEASE_MS: u64 = 10_000;
const TTL_MS: u64 = 100_000;
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Small enough that one of the generated responses exceeds it (C12).
const MAX_RESPONSE_BYTES: usize = 256;
const SCOPES: [&str; 2] = ["acct_a", "acct_b"];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const BODIES: [&str; 3] = [
    r#"{"amount":5}"#,
    r#"{"amount":7}"#,
    r#"{"amount":5,"note":"x"}"#,
];
const STATUSES: [u16; 4] = [200, 201, 409, 500];

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Touch {
    Renew,
    Complete,
    Release,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Begin {
        scope: usize,
        key: usize,
        body: usize,
    },
    /// Completes live reservation `res % len` with `STATUSES[status]` and response `resp`.
    Complete {
        res: usize,
        status: usize,
        resp: usize,
    },
    Release {
        res: usize,
    },
    Renew {
        res: usize,
    },
    /// Drops a live reservation without completing it (C6).
    Drop {
        res: usize,
    },
    Purge {
        scope: usize,
        key: usize,
    },
    Get {
        scope: usize,
        key: usize,
    },
    Advance {
        ms: u64,
    },
    CompactNow,
    /// `close()` while reservations may be alive; they become orphans, then reopen.
    Reopen,
    /// Drop the `Store` handle instead of closing it, then reopen. Live reservations hold
    /// clones of the store, so with a file the old store stays open (a second open gets
    /// `AlreadyOpen`) until they are dropped too, which releases their keys (C6) before the
    /// last handle shuts it down. In memory the new store is a new one at once, and the old
    /// reservations' drops must not reach it.
    DropReopen,
    /// Uses an orphan (a reservation of a closed store): it must have no effect.
    Orphan {
        res: usize,
        touch: Touch,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let scope = 0..SCOPES.len();
    let key = 0..KEYS.len();
    // Exact lease boundaries now and then; mostly jumps that make leases and records expire.
    let advance = prop_oneof![
        1 => Just(0u64),
        1 => Just(1u64),
        1 => Just(LEASE_MS - 1),
        1 => Just(LEASE_MS),
        2 => 0..=40_000u64,
        // Whole seconds, mostly long ones: sums land exactly on lease and TTL boundaries.
        2 => (0..=40u64).prop_map(|s| s * 1_000),
        6 => (20..=40u64).prop_map(|s| s * 1_000),
    ];
    // Body 0 more often than the others, so retries of one request (replays) are common.
    let body = prop_oneof![4 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)];
    let touch = prop_oneof![
        Just(Touch::Renew),
        Just(Touch::Complete),
        Just(Touch::Release),
        Just(Touch::Drop),
    ];
    // Response 3 is over `MAX_RESPONSE_BYTES`; keep it rare.
    let resp = prop_oneof![6 => 0..3usize, 1 => Just(3usize)];
    // Kept (2xx) statuses more often than not, so replays are common.
    let status = prop_oneof![3 => 0..2usize, 1 => 2..STATUSES.len()];
    prop_oneof![
        10 => (scope.clone(), key.clone(), body)
            .prop_map(|(scope, key, body)| Op::Begin { scope, key, body }),
        6 => (0..8usize, status, resp)
            .prop_map(|(res, status, resp)| Op::Complete { res, status, resp }),
        2 => (0..8usize).prop_map(|res| Op::Release { res }),
        2 => (0..8usize).prop_map(|res| Op::Renew { res }),
        2 => (0..8usize).prop_map(|res| Op::Drop { res }),
        1 => (scope.clone(), key.clone()).prop_map(|(scope, key)| Op::Purge { scope, key }),
        3 => (scope, key).prop_map(|(scope, key)| Op::Get { scope, key }),
        11 => advance.prop_map(|ms| Op::Advance { ms }),
        3 => Just(Op::CompactNow),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropReopen),
        1 => (0..8usize, touch).prop_map(|(res, touch)| Op::Orphan { res, touch }),
    ]
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_strategy(), 1..=40)
}

/// The response a `Complete` op stores: `resp` picks its shape, `status` its status.
fn response(status: u16, resp: usize) -> Response {
    match resp {
        0 => Response::new(
            status,
            [("content-type", "application/json")],
            r#"{"uid":"b1"}"#,
        ),
        1 => Response::new(
            status,
            [
                ("Content-Type", &b"application/json"[..]),
                ("Location", &b"/v1/bookings/b2"[..]),
                ("etag", &b"\"v1\""[..]),
            ],
            Vec::new(),
        ),
        2 => Response::new(
            status,
            [("x-bin", vec![0u8, 0xff, b'\r'])],
            vec![0, 1, 0xfe, 0xff],
        ),
        _ => Response::new(status, [("content-type", "text/plain")], vec![b'x'; 400]),
    }
}

// ---------------------------------------------------------------------------------------------
// What a call answered, in a form both sides can produce and compare exactly

/// A response with a readable debug form (status, headers and body as text).
#[derive(Clone, PartialEq)]
struct Resp(Response);

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self
            .0
            .headers()
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect();
        write!(
            f,
            "{} {:?} {:?}",
            self.0.status(),
            headers,
            String::from_utf8_lossy(self.0.body())
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    Fenced { token: u64, current: u64 },
    NotReserved { token: u64 },
    TooLarge { len: usize, max: usize },
    Closed,
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Info {
    scope: String,
    key: String,
    state: State,
    fingerprint: Fingerprint,
    created_at: u64,
    lease_deadline: Option<u64>,
    expires_at: u64,
    token: u64,
    response: Option<Resp>,
}

#[derive(Debug, Clone, PartialEq)]
enum Out {
    /// Nothing to observe (no reservation to act on, a drop, a clock move, a reopen).
    Nothing,
    Execute {
        token: u64,
        lease_deadline: u64,
    },
    Replay(Resp),
    InProgress(Duration),
    Conflict,
    BeginFailed(String),
    Complete(Result<Completion, Refusal>),
    Release(Result<(), Refusal>),
    /// The result of a renewal and the reservation's `lease_deadline()` after it.
    Renew(Result<(), Refusal>, u64),
    Purge(bool),
    Compact(u64),
    Get(Option<Info>),
    Failed(String),
}

fn begin_out(b: Result<Begin, idemstore::BeginError>) -> (Out, Option<Reservation>) {
    match b {
        Ok(Begin::Execute(r)) => (
            Out::Execute {
                token: r.token(),
                lease_deadline: r.lease_deadline(),
            },
            Some(r),
        ),
        Ok(Begin::Replay(r)) => (Out::Replay(Resp(r)), None),
        Ok(Begin::InProgress { retry_after }) => (Out::InProgress(retry_after), None),
        Ok(Begin::Conflict) => (Out::Conflict, None),
        Ok(Begin::OutcomeUnknown) => (Out::BeginFailed("outcome unknown".to_owned()), None),
        Err(e) => (Out::BeginFailed(format!("{e:?}")), None),
    }
}

fn complete_err(e: CompleteError) -> Refusal {
    match e {
        CompleteError::Fenced { token, current } => Refusal::Fenced { token, current },
        CompleteError::NotReserved { token } => Refusal::NotReserved { token },
        CompleteError::ResponseTooLarge { len, max } => Refusal::TooLarge { len, max },
        CompleteError::Unavailable(Unavailable::Closed) => Refusal::Closed,
        other => Refusal::Other(format!("{other:?}")),
    }
}

fn lease_err(e: LeaseError) -> Refusal {
    match e {
        LeaseError::Fenced { token, current } => Refusal::Fenced { token, current },
        LeaseError::NotReserved { token } => Refusal::NotReserved { token },
        LeaseError::Unavailable(Unavailable::Closed) => Refusal::Closed,
        other => Refusal::Other(format!("{other:?}")),
    }
}

fn info(i: RecordInfo) -> Info {
    Info {
        scope: i.scope,
        key: i.key,
        state: i.state,
        fingerprint: i.fingerprint,
        created_at: i.created_at,
        lease_deadline: i.lease_deadline,
        expires_at: i.expires_at,
        token: i.token,
        response: i.response.map(Resp),
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model

#[derive(Debug, Clone)]
enum MState {
    InFlight { lease_deadline: u64 },
    Completed { response: Response },
}

#[derive(Debug, Clone)]
struct MRecord {
    state: MState,
    fingerprint: Fingerprint,
    created_at: u64,
    expires_at: u64,
    token: u64,
}

type Sk = (usize, usize);

#[derive(Debug)]
struct Model {
    records: HashMap<Sk, MRecord>,
    next_token: u64,
    now: u64,
    memory: bool,
    release_in_flight_on_open: bool,
    /// The most records a scope may hold (C13), expired ones not compacted yet included.
    cap: u64,
}

impl Model {
    fn new(v: Variant) -> Model {
        Model {
            records: HashMap::new(),
            next_token: 1,
            now: T0,
            memory: v.durability == Durability::Memory,
            release_in_flight_on_open: v.release_in_flight_on_open,
            cap: v.max_records_per_scope.unwrap_or(u64::MAX),
        }
    }

    /// C2-C5, C8, C9.
    fn begin(&mut self, sk: Sk, fp: Fingerprint) -> Out {
        let now = self.now;
        if let Some(r) = self.records.get(&sk)
            && now < r.expires_at
        {
            if r.fingerprint != fp {
                return Out::Conflict;
            }
            match &r.state {
                MState::Completed { response } => return Out::Replay(Resp(response.clone())),
                MState::InFlight { lease_deadline } if now < *lease_deadline => {
                    return Out::InProgress(RETRY_AFTER);
                }
                // The lease ran out: take over with a new token (C8).
                MState::InFlight { .. } => {}
            }
        }
        // C13: a key without a record adds one to its scope, which must have room.
        let held = self.records.keys().filter(|k| k.0 == sk.0).count() as u64;
        if !self.records.contains_key(&sk) && held >= self.cap {
            let limit = self.cap;
            return Out::BeginFailed(format!("{:?}", idemstore::BeginError::ScopeFull { limit }));
        }
        let token = self.next_token;
        self.next_token += 1;
        let lease_deadline = now + LEASE_MS;
        self.records.insert(
            sk,
            MRecord {
                state: MState::InFlight { lease_deadline },
                fingerprint: fp,
                created_at: now,
                expires_at: (now + TTL_MS).max(lease_deadline),
                token,
            },
        );
        Out::Execute {
            token,
            lease_deadline,
        }
    }

    /// The holder of `token` owns the record while it is in flight with that token, expired
    /// or not, as long as nobody took it over and it is still present.
    fn holder(&self, sk: Sk, token: u64) -> Result<(), Refusal> {
        match self.records.get(&sk) {
            Some(r) if matches!(r.state, MState::InFlight { .. }) && r.token == token => Ok(()),
            Some(r) if r.token > token => Err(Refusal::Fenced {
                token,
                current: r.token,
            }),
            _ => Err(Refusal::NotReserved { token }),
        }
    }

    /// C3, C6, C7, C8, C12.
    fn complete(&mut self, sk: Sk, token: u64, response: Response) -> Result<Completion, Refusal> {
        let len = response.encoded_len();
        if len > MAX_RESPONSE_BYTES {
            // Refused, and the key is released as for any failed attempt.
            self.release(sk, token).ok();
            return Err(Refusal::TooLarge {
                len,
                max: MAX_RESPONSE_BYTES,
            });
        }
        self.holder(sk, token)?;
        if (200..300).contains(&response.status()) {
            let now = self.now;
            let r = self
                .records
                .get_mut(&sk)
                .ok_or(Refusal::Other("model".into()))?;
            r.state = MState::Completed { response };
            r.expires_at = now + TTL_MS;
            Ok(Completion::Stored)
        } else {
            self.records.remove(&sk);
            Ok(Completion::Released)
        }
    }

    /// C6.
    fn release(&mut self, sk: Sk, token: u64) -> Result<(), Refusal> {
        self.holder(sk, token)?;
        self.records.remove(&sk);
        Ok(())
    }

    /// C8: returns the new lease deadline.
    fn renew(&mut self, sk: Sk, token: u64) -> Result<u64, Refusal> {
        self.holder(sk, token)?;
        let lease_deadline = self.now + LEASE_MS;
        let r = self
            .records
            .get_mut(&sk)
            .ok_or(Refusal::Other("model".into()))?;
        r.state = MState::InFlight { lease_deadline };
        r.expires_at = r.expires_at.max(lease_deadline);
        Ok(lease_deadline)
    }

    fn purge(&mut self, sk: Sk) -> bool {
        self.records.remove(&sk).is_some()
    }

    /// C9: absent or expired reads as none.
    fn get(&self, sk: Sk) -> Option<Info> {
        let r = self.records.get(&sk)?;
        if self.now >= r.expires_at {
            return None;
        }
        let (state, lease_deadline, response) = match &r.state {
            MState::InFlight { lease_deadline } => (State::InFlight, Some(*lease_deadline), None),
            MState::Completed { response } => {
                (State::Completed, None, Some(Resp(response.clone())))
            }
        };
        Some(Info {
            scope: SCOPES[sk.0].to_owned(),
            key: KEYS[sk.1].to_owned(),
            state,
            fingerprint: r.fingerprint,
            created_at: r.created_at,
            lease_deadline,
            expires_at: r.expires_at,
            token: r.token,
            response,
        })
    }

    /// C9: every record with `expires_at <= now` goes.
    fn compact(&mut self) -> u64 {
        let now = self.now;
        let before = self.records.len();
        self.records.retain(|_, r| r.expires_at > now);
        (before - self.records.len()) as u64
    }

    /// C10, C11: a file keeps everything (and the token counter); memory starts over.
    fn reopen(&mut self) {
        if self.memory {
            self.records.clear();
            self.next_token = 1;
        } else if self.release_in_flight_on_open {
            self.records
                .retain(|_, r| matches!(r.state, MState::Completed { .. }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test

#[derive(Debug, Clone, Copy)]
struct Variant {
    durability: Durability,
    release_in_flight_on_open: bool,
    /// `Some(0)`: no response is cached in memory, every replay reads the file.
    response_cache_bytes: Option<usize>,
    /// `Some(1)`: the index drops all but the newest completed record.
    index_max_completed: Option<usize>,
    /// The cap on live records per scope (C13); `None`: the default, never reached here.
    max_records_per_scope: Option<u64>,
}

impl Variant {
    fn configure(self, c: ConfigBuilder) -> ConfigBuilder {
        let c = c
            .lease(Duration::from_millis(LEASE_MS))
            .ttl(Duration::from_millis(TTL_MS))
            .max_response_bytes(MAX_RESPONSE_BYTES)
            .durability(self.durability)
            .release_in_flight_on_open(self.release_in_flight_on_open);
        let c = match self.index_max_completed {
            Some(records) => c.index_max_completed(records),
            None => c,
        };
        let c = match self.max_records_per_scope {
            Some(records) => c.max_records_per_scope(records),
            None => c,
        };
        match self.response_cache_bytes {
            Some(bytes) => c.response_cache_bytes(bytes),
            None => c,
        }
    }

    fn open(self, path: &std::path::Path, t_clock: &idemstore::ManualClock) -> Store {
        Store::open(path, self.configure(config(t_clock)).build().unwrap()).unwrap()
    }
}

/// A reservation and what the model knows of it.
struct Live {
    r: Reservation,
    sk: Sk,
    token: u64,
    lease_deadline: u64,
}

struct Harness {
    v: Variant,
    t: Option<TestStore>,
    live: Vec<Live>,
    /// Reservations of closed stores; kept to the end of the case.
    orphans: Vec<Live>,
    model: Model,
}

fn sk_of(scope: usize, key: usize) -> Sk {
    (scope, key)
}

impl Harness {
    fn new(v: Variant) -> Harness {
        Harness {
            v,
            t: Some(open_with(|c| v.configure(c))),
            live: Vec::new(),
            orphans: Vec::new(),
            model: Model::new(v),
        }
    }

    fn store(&self) -> &Store {
        &self.t.as_ref().unwrap().store
    }

    fn take_live(&mut self, res: usize) -> Option<Live> {
        if self.live.is_empty() {
            return None;
        }
        let i = res % self.live.len();
        Some(self.live.remove(i))
    }

    /// Runs `op` against the store and the model; returns (store's answer, model's answer).
    fn step(&mut self, op: Op) -> (Out, Out) {
        match op {
            Op::Begin {
                scope: s,
                key: k,
                body,
            } => {
                let f = fp(BODIES[body]);
                let (real, r) = begin_out(self.store().begin(&scope(SCOPES[s]), &key(KEYS[k]), &f));
                let expected = self.model.begin(sk_of(s, k), f);
                if let Some(r) = r {
                    let (token, lease_deadline) = (r.token(), r.lease_deadline());
                    self.live.push(Live {
                        r,
                        sk: sk_of(s, k),
                        token,
                        lease_deadline,
                    });
                }
                (real, expected)
            }
            Op::Complete { res, status, resp } => {
                let Some(l) = self.take_live(res) else {
                    return (Out::Nothing, Out::Nothing);
                };
                let response = response(STATUSES[status], resp);
                let real = Out::Complete(l.r.complete(response.clone()).map_err(complete_err));
                let expected = Out::Complete(self.model.complete(l.sk, l.token, response));
                (real, expected)
            }
            Op::Release { res } => {
                let Some(l) = self.take_live(res) else {
                    return (Out::Nothing, Out::Nothing);
                };
                let real = Out::Release(l.r.release().map_err(lease_err));
                let expected = Out::Release(self.model.release(l.sk, l.token));
                (real, expected)
            }
            Op::Renew { res } => {
                if self.live.is_empty() {
                    return (Out::Nothing, Out::Nothing);
                }
                let i = res % self.live.len();
                let l = &mut self.live[i];
                let result = l.r.renew().map_err(lease_err);
                let real = Out::Renew(result, l.r.lease_deadline());
                let expected = match self.model.renew(l.sk, l.token) {
                    Ok(deadline) => {
                        l.lease_deadline = deadline;
                        Out::Renew(Ok(()), deadline)
                    }
                    Err(e) => Out::Renew(Err(e), l.lease_deadline),
                };
                (real, expected)
            }
            Op::Drop { res } => {
                let Some(l) = self.take_live(res) else {
                    return (Out::Nothing, Out::Nothing);
                };
                drop(l.r);
                self.model.release(l.sk, l.token).ok();
                (Out::Nothing, Out::Nothing)
            }
            Op::Purge { scope: s, key: k } => {
                let real = match self.store().purge(&scope(SCOPES[s]), &key(KEYS[k])) {
                    Ok(b) => Out::Purge(b),
                    Err(e) => Out::Failed(format!("{e:?}")),
                };
                (real, Out::Purge(self.model.purge(sk_of(s, k))))
            }
            Op::Get { scope: s, key: k } => (self.real_get(s, k), self.model_get(s, k)),
            Op::Advance { ms } => {
                self.t
                    .as_ref()
                    .unwrap()
                    .clock
                    .advance(Duration::from_millis(ms));
                self.model.now += ms;
                (Out::Nothing, Out::Nothing)
            }
            Op::CompactNow => {
                let real = match self.store().compact_now() {
                    Ok(n) => Out::Compact(n),
                    Err(e) => Out::Failed(format!("{e:?}")),
                };
                (real, Out::Compact(self.model.compact()))
            }
            Op::Reopen => {
                // The live reservations become orphans: their records stay in flight on disk.
                self.orphans.append(&mut self.live);
                let v = self.v;
                let t = self.t.take().unwrap();
                self.t = Some(t.reopen_with(|c| v.configure(c)));
                self.model.reopen();
                (Out::Nothing, Out::Nothing)
            }
            Op::DropReopen => self.drop_reopen(),
            Op::Orphan { res, touch } => {
                if self.orphans.is_empty() {
                    return (Out::Nothing, Out::Nothing);
                }
                let i = res % self.orphans.len();
                match touch {
                    Touch::Renew => {
                        let l = &mut self.orphans[i];
                        let result = l.r.renew().map_err(lease_err);
                        (
                            Out::Renew(result, l.r.lease_deadline()),
                            Out::Renew(Err(Refusal::Closed), l.lease_deadline),
                        )
                    }
                    Touch::Complete => {
                        let l = self.orphans.remove(i);
                        let real = l.r.complete(response(200, 0)).map_err(complete_err);
                        (Out::Complete(real), Out::Complete(Err(Refusal::Closed)))
                    }
                    Touch::Release => {
                        let l = self.orphans.remove(i);
                        let real = l.r.release().map_err(lease_err);
                        (Out::Release(real), Out::Release(Err(Refusal::Closed)))
                    }
                    Touch::Drop => {
                        drop(self.orphans.remove(i));
                        (Out::Nothing, Out::Nothing)
                    }
                }
            }
        }
    }

    /// Drops the `Store` handle instead of closing it. Live reservations hold clones of the
    /// store, so the store (and its file) stays open until the last of them is dropped.
    fn drop_reopen(&mut self) -> (Out, Out) {
        let TestStore {
            store,
            clock,
            path,
            dir,
        } = self.t.take().unwrap();
        let live = std::mem::take(&mut self.live);
        drop(store);
        let mut real = Out::Nothing;
        if self.model.memory {
            // Memory: the new store is a new, empty one; the old reservations' drops go to
            // the old store and must not touch the new one.
            let store = self.v.open(&path, &clock);
            drop(live);
            self.t = Some(TestStore {
                store,
                clock,
                path,
                dir,
            });
        } else {
            if !live.is_empty() {
                // The file is still open through the reservations' handles.
                match Store::open(&path, self.v.configure(config(&clock)).build().unwrap()) {
                    Err(OpenError::AlreadyOpen) => {}
                    Err(e) => real = Out::Failed(format!("open while held: {e:?}")),
                    Ok(_) => real = Out::Failed("opened twice while held".into()),
                }
            }
            // Dropping them releases their keys (C6), the last one shuts the store down.
            for l in live {
                drop(l.r);
                self.model.release(l.sk, l.token).ok();
            }
            let store = self.v.open(&path, &clock);
            self.t = Some(TestStore {
                store,
                clock,
                path,
                dir,
            });
        }
        self.model.reopen();
        (real, Out::Nothing)
    }

    fn real_get(&self, s: usize, k: usize) -> Out {
        match self.store().get(&scope(SCOPES[s]), &key(KEYS[k])) {
            Ok(i) => Out::Get(i.map(info)),
            Err(e) => Out::Failed(format!("{e:?}")),
        }
    }

    fn model_get(&self, s: usize, k: usize) -> Out {
        Out::Get(self.model.get(sk_of(s, k)))
    }
}

fn run_case(v: Variant, ops: &[Op]) -> Result<(), TestCaseError> {
    run_case_collect(v, ops).map(drop)
}

/// [`run_case`], returning the store's answers.
fn run_case_collect(v: Variant, ops: &[Op]) -> Result<Vec<Out>, TestCaseError> {
    let mut h = Harness::new(v);
    let mut outs = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let (real, expected) = h.step(*op);
        prop_assert_eq!(&real, &expected, "step {} {:?}", i, op);
        outs.push(real);
    }
    // Whatever the last operations were, every key reads as the model says.
    for s in 0..SCOPES.len() {
        for k in 0..KEYS.len() {
            prop_assert_eq!(h.real_get(s, k), h.model_get(s, k), "final get {} {}", s, k);
        }
    }
    // The file agrees with itself: every record has its expiry entry and response, and the
    // live records of each scope are counted as they are (C13). `check` checkpoints first, so
    // what the checkpoint folds into the file is checked too.
    if v.durability != Durability::Memory && h.t.is_some() {
        let report = h.store().check();
        prop_assert!(
            report.as_ref().is_ok_and(|r| r.is_sound()),
            "check: {:?}",
            report.map(|r| r.problems)
        );
    }
    // Orphans dropped last: nothing of theirs may reach the store that replaced theirs.
    let Harness {
        t, live, orphans, ..
    } = h;
    drop(live);
    drop(orphans);
    drop(t);
    Ok(outs)
}

/// `PROPTEST_CASES` when set, else `default`; no failure files in the source tree.
fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

fn run_model(v: Variant, cases: u32) {
    let result = runner(cases).run(&ops_strategy(), |ops| run_case(v, &ops));
    if let Err(e) = result {
        panic!("{v:?}: {e}");
    }
}

/// Runs one frozen sequence (from a shrunk failure) and panics on the first divergence.
fn replay_ops(v: Variant, ops: &[Op]) {
    if let Err(e) = run_case(v, ops) {
        panic!("{e}");
    }
}

const IMMEDIATE: Variant = Variant {
    durability: Durability::Immediate,
    release_in_flight_on_open: false,
    response_cache_bytes: None,
    index_max_completed: None,
    max_records_per_scope: None,
};

#[test]
fn model_c1_c12_immediate() {
    run_model(IMMEDIATE, 256);
}

#[test]
fn model_c1_c12_buffered() {
    run_model(
        Variant {
            durability: Durability::Buffered {
                max_delay: Duration::from_millis(5),
            },
            release_in_flight_on_open: false,
            response_cache_bytes: None,
            index_max_completed: None,
            max_records_per_scope: None,
        },
        192,
    );
}

#[test]
fn model_c1_c12_memory() {
    run_model(
        Variant {
            durability: Durability::Memory,
            release_in_flight_on_open: false,
            response_cache_bytes: None,
            index_max_completed: None,
            max_records_per_scope: None,
        },
        1024,
    );
}

#[test]
fn model_c11_release_in_flight_on_open() {
    run_model(
        Variant {
            durability: Durability::Immediate,
            release_in_flight_on_open: true,
            response_cache_bytes: None,
            index_max_completed: None,
            max_records_per_scope: None,
        },
        128,
    );
}

#[test]
fn model_c3_replay_from_storage_without_response_cache() {
    run_model(
        Variant {
            durability: Durability::Immediate,
            release_in_flight_on_open: false,
            response_cache_bytes: Some(0),
            index_max_completed: None,
            max_records_per_scope: None,
        },
        192,
    );
}

#[test]
fn model_c3_c4_c5_answered_by_the_writer_once_the_index_drops_completed_records() {
    run_model(
        Variant {
            durability: Durability::Immediate,
            release_in_flight_on_open: false,
            response_cache_bytes: None,
            index_max_completed: Some(1),
            max_records_per_scope: None,
        },
        192,
    );
}

/// C13 with a cap of two records per scope (of three keys): first attempts past it are
/// refused until a record leaves, on the logged file store and on the memory engine.
#[test]
fn model_c13_scope_cap() {
    for durability in [Durability::Immediate, Durability::Memory] {
        run_model(
            Variant {
                durability,
                release_in_flight_on_open: true,
                response_cache_bytes: None,
                index_max_completed: None,
                max_records_per_scope: Some(2),
            },
            192,
        );
    }
}

/// A hand-written sequence through every kind of operation, so the model's paths are
/// exercised deterministically whatever proptest draws.
#[test]
fn model_walkthrough_c2_c12() {
    use Op::*;
    #[rustfmt::skip]
    let ops = [
        Begin { scope: 0, key: 0, body: 0 },              // C2: execute, token 1
        Begin { scope: 0, key: 0, body: 0 },              // C5: in progress
        Begin { scope: 0, key: 0, body: 1 },              // C4: conflict
        Begin { scope: 1, key: 0, body: 1 },              // another scope: execute, token 2
        Renew { res: 0 },                                 // C8: token 1 renews
        Advance { ms: LEASE_MS },                         // now == token 1's lease deadline
        Begin { scope: 0, key: 0, body: 0 },              // C8: takeover, token 3
        Complete { res: 0, status: 1, resp: 0 },          // C8: token 1 fenced by 3
        Renew { res: 1 },                                 // token 3 renews
        Complete { res: 1, status: 0, resp: 1 },          // C3: token 3 stored
        Begin { scope: 0, key: 0, body: 0 },              // C3: replay
        Get { scope: 0, key: 0 },                         // completed, token 3
        Begin { scope: 0, key: 1, body: 2 },              // token 4
        Complete { res: 1, status: 2, resp: 2 },          // C7: 409 released
        Begin { scope: 0, key: 1, body: 2 },              // C6: executes again, token 5
        Complete { res: 1, status: 0, resp: 3 },          // C12: too large, released
        Begin { scope: 0, key: 2, body: 0 },              // token 6
        Reopen,                                           // tokens 2 and 6 become orphans
        Orphan { res: 0, touch: Touch::Renew },           // closed
        Orphan { res: 0, touch: Touch::Complete },        // closed
        Get { scope: 0, key: 2 },                         // C11: still in flight (or released)
        Begin { scope: 0, key: 2, body: 0 },              // C5 (or C2 when released at open)
        DropReopen,
        Get { scope: 1, key: 0 },
        Advance { ms: 40_000 },
        Advance { ms: 40_000 },
        Advance { ms: 40_000 },
        Get { scope: 0, key: 0 },                         // C9: expired reads as none
        Purge { scope: 0, key: 0 },                       // expired but present: true
        Purge { scope: 0, key: 0 },                       // false
        CompactNow,                                       // C9: the expired in-flight ones
        Begin { scope: 1, key: 0, body: 0 },
        Drop { res: 0 },                                  // C6
        Get { scope: 1, key: 0 },                         // none
        CompactNow,                                       // 0
    ];
    // The model's answers, checked by hand once (the store must give the same).
    let outs = run_case_collect(IMMEDIATE, &ops).unwrap();
    let lease = |n: u64| T0 + n * LEASE_MS;
    let execute = |token: u64, lease_deadline: u64| Out::Execute {
        token,
        lease_deadline,
    };
    assert_eq!(outs[0], execute(1, lease(1)));
    assert_eq!(outs[1], Out::InProgress(RETRY_AFTER));
    assert_eq!(outs[2], Out::Conflict);
    assert_eq!(outs[3], execute(2, lease(1)));
    assert_eq!(outs[4], Out::Renew(Ok(()), lease(1)));
    assert_eq!(outs[6], execute(3, lease(2)));
    let fenced = Refusal::Fenced {
        token: 1,
        current: 3,
    };
    assert_eq!(outs[7], Out::Complete(Err(fenced)));
    assert_eq!(outs[8], Out::Renew(Ok(()), lease(2)));
    assert_eq!(outs[9], Out::Complete(Ok(Completion::Stored)));
    assert_eq!(outs[10], Out::Replay(Resp(response(200, 1))));
    assert!(matches!(&outs[11], Out::Get(Some(i)) if i.token == 3 && i.state == State::Completed));
    assert_eq!(outs[13], Out::Complete(Ok(Completion::Released)));
    assert_eq!(outs[14], execute(5, lease(2)));
    assert!(matches!(
        outs[15],
        Out::Complete(Err(Refusal::TooLarge { .. }))
    ));
    assert_eq!(outs[18], Out::Renew(Err(Refusal::Closed), lease(1)));
    assert_eq!(outs[19], Out::Complete(Err(Refusal::Closed)));
    assert!(matches!(&outs[20], Out::Get(Some(i)) if i.token == 6 && i.state == State::InFlight));
    assert_eq!(outs[21], Out::InProgress(RETRY_AFTER));
    assert!(matches!(&outs[23], Out::Get(Some(i)) if i.token == 2));
    assert_eq!(outs[27], Out::Get(None));
    assert_eq!(outs[28..30], [Out::Purge(true), Out::Purge(false)]);
    assert_eq!(outs[30], Out::Compact(2));
    assert_eq!(outs[31], execute(7, lease(14)));
    assert_eq!(outs[33..], [Out::Get(None), Out::Compact(0)]);
    for v in [
        Variant {
            durability: Durability::Memory,
            release_in_flight_on_open: false,
            response_cache_bytes: None,
            index_max_completed: None,
            max_records_per_scope: None,
        },
        Variant {
            durability: Durability::Immediate,
            release_in_flight_on_open: true,
            response_cache_bytes: None,
            index_max_completed: None,
            max_records_per_scope: None,
        },
    ] {
        replay_ops(v, &ops);
    }
}

// ---------------------------------------------------------------------------------------------
// The concurrent property (C1)

/// One thread's request: which key, which body (0 or 1).
type Request = (usize, usize);

/// What the raced keys hold before the race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prior {
    /// Never seen (C2).
    Absent,
    /// Reserved by body 0 whose lease ran out; its holder is still alive (C8 takeover).
    LeaseExpired,
    /// Completed by body 1 and expired (C9: behaves as new).
    Expired,
}

fn race_response(k: usize, token: u64) -> Response {
    Response::new(
        201,
        [("content-type", "application/json")],
        format!(r#"{{"key":{k},"token":{token}}}"#),
    )
}

fn concurrent_case(
    durability: Durability,
    prior: Prior,
    requests: &[Request],
) -> Result<(), TestCaseError> {
    let v = Variant {
        durability,
        release_in_flight_on_open: false,
        response_cache_bytes: None,
        index_max_completed: None,
        max_records_per_scope: None,
    };
    let t = open_with(|c| v.configure(c));
    let s = scope("acct");
    let keys: BTreeSet<usize> = requests.iter().map(|r| r.0).collect();

    // Set the keys up; `stale` are the live holders whose lease runs out.
    let mut stale: HashMap<usize, Reservation> = HashMap::new();
    for &k in &keys {
        match prior {
            Prior::Absent => {}
            Prior::LeaseExpired => {
                let r = execute(t.store.begin(&s, &key(KEYS[k]), &fp(BODIES[0])).unwrap());
                stale.insert(k, r);
            }
            Prior::Expired => {
                let r = execute(t.store.begin(&s, &key(KEYS[k]), &fp(BODIES[1])).unwrap());
                let token = r.token();
                r.complete(race_response(k, token)).unwrap();
            }
        }
    }
    let tokens_before = if prior == Prior::Absent {
        0
    } else {
        keys.len() as u64
    };
    match prior {
        Prior::Absent => {}
        Prior::LeaseExpired => t.clock.advance(Duration::from_millis(LEASE_MS)),
        Prior::Expired => t.clock.advance(Duration::from_millis(TTL_MS)),
    }

    // The race: every thread waits at the barrier, then begins.
    let start = Barrier::new(requests.len());
    let outcomes: Vec<Begin> = std::thread::scope(|threads| {
        let handles: Vec<_> = requests
            .iter()
            .map(|&(k, body)| {
                let (store, s, start) = (&t.store, &s, &start);
                threads.spawn(move || {
                    let (k, f) = (key(KEYS[k]), fp(BODIES[body]));
                    start.wait();
                    store.begin(s, &k, &f).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // Per key: at most one Execute (C1).
    let mut winners: HashMap<usize, (usize, Reservation)> = HashMap::new();
    let mut losers: Vec<(Request, Begin)> = Vec::new();
    for (&req, outcome) in requests.iter().zip(outcomes) {
        match outcome {
            Begin::Execute(r) => {
                let (k, body) = req;
                prop_assert!(
                    !winners.contains_key(&k),
                    "C1: two executions of key {} ({:?})",
                    k,
                    requests
                );
                winners.insert(k, (body, r));
            }
            other => losers.push((req, other)),
        }
    }
    // Exactly one where one can execute: every key, except a key still held (in flight with
    // body 0) that nobody asked for with body 0.
    for &k in &keys {
        let can_execute = match prior {
            Prior::LeaseExpired => requests.contains(&(k, 0)),
            Prior::Absent | Prior::Expired => true,
        };
        prop_assert_eq!(
            winners.contains_key(&k),
            can_execute,
            "C1: key {}, {:?}, {:?}",
            k,
            prior,
            requests
        );
    }
    // The others: C5 with the executor's body, C4 with another.
    for ((k, body), outcome) in &losers {
        let holder_body = winners.get(k).map_or(0, |w| w.0);
        if *body == holder_body {
            prop_assert!(
                matches!(outcome, Begin::InProgress { retry_after } if *retry_after == RETRY_AFTER),
                "C5: key {} body {}: {:?}",
                k,
                body,
                outcome
            );
        } else {
            prop_assert!(
                matches!(outcome, Begin::Conflict),
                "C4: key {} body {}: {:?}",
                k,
                body,
                outcome
            );
        }
    }
    // C8: distinct fencing tokens, the next ones after those handed out before the race.
    let tokens: BTreeSet<u64> = winners.values().map(|(_, r)| r.token()).collect();
    prop_assert_eq!(tokens.len(), winners.len(), "C8: tokens repeat");
    prop_assert_eq!(
        tokens.into_iter().collect::<Vec<_>>(),
        (tokens_before + 1..=tokens_before + winners.len() as u64).collect::<Vec<_>>()
    );

    // A stale holder was fenced by the taker; where nobody took over, it still owns the key.
    let mut stored: HashMap<usize, (usize, Response)> = HashMap::new();
    for (k, r) in stale {
        let token = r.token();
        let result = r.complete(race_response(k, token));
        match winners.get(&k) {
            Some((_, w)) => prop_assert!(
                matches!(result, Err(CompleteError::Fenced { token: t, current })
                    if t == token && current == w.token()),
                "C8: stale holder of key {}: {:?}",
                k,
                result
            ),
            None => {
                prop_assert!(matches!(result, Ok(Completion::Stored)), "{:?}", result);
                stored.insert(k, (0, race_response(k, token)));
            }
        }
    }
    // Complete the winners; every later begin with the winner's body replays it (C3).
    for (k, (body, r)) in winners {
        let response = race_response(k, r.token());
        prop_assert_eq!(r.complete(response.clone()).unwrap(), Completion::Stored);
        stored.insert(k, (body, response));
    }
    let check = |store: &Store| -> Result<(), TestCaseError> {
        for (&k, (body, response)) in &stored {
            for (b, text) in BODIES.iter().enumerate().take(2) {
                let got = store.begin(&s, &key(KEYS[k]), &fp(text)).unwrap();
                if b == *body {
                    let Begin::Replay(r) = got else {
                        return Err(TestCaseError::fail(format!("C3: key {k}: {got:?}")));
                    };
                    prop_assert_eq!(r.body(), response.body());
                    prop_assert_eq!(&r, response);
                } else {
                    prop_assert!(matches!(got, Begin::Conflict), "C4: key {}: {:?}", k, got);
                }
            }
        }
        Ok(())
    };
    check(&t.store)?;
    if durability != Durability::Memory {
        // C10: the same after a restart.
        let t = t.reopen_with(|c| v.configure(c));
        check(&t.store)?;
    }
    Ok(())
}

fn durabilities() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Immediate),
        Just(Durability::Buffered {
            max_delay: Duration::from_millis(5)
        }),
        Just(Durability::Memory),
    ]
}

/// 2 to 8 threads on 3 keys (so keys overlap), bodies 0 and 1.
fn race_requests() -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec((0..KEYS.len(), 0..2usize), 2..=8)
}

fn run_race(prior: impl Strategy<Value = Prior>) {
    let result = runner(96).run(
        &(durabilities(), prior, race_requests()),
        |(d, prior, reqs)| concurrent_case(d, prior, &reqs),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn concurrent_begins_c1() {
    run_race(Just(Prior::Absent));
}

#[test]
fn concurrent_takeover_and_expiry_c1_c8_c9() {
    run_race(prop_oneof![Just(Prior::LeaseExpired), Just(Prior::Expired)]);
}
