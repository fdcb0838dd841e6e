//! Power loss at a random I/O call, on a simulated disk (C10, C11).
//!
//! Each case opens a store on a fresh [`SimDisk`], arms the disk to lose power after a random
//! number of mutating calls, and runs a random single-threaded workload on a few keys while a
//! model records what the test was told: acknowledged completions, acknowledged reservations,
//! purges, and which answers a failed operation leaves open. When the power goes (the store
//! poisons itself), the test builds what the disk could hold (the synced bytes plus a random,
//! possibly torn, subset of the unsynced writes), sometimes loses power again while a store
//! repairs that image, then opens the result on a clean disk and checks the model against it:
//! the store opens, every acknowledged completion replays byte for byte (C10), no key replays a
//! response the test never gave it, acknowledged reservations are still in flight (C11), and
//! fencing tokens stay above every token handed out before (C8).
//!
//! A negative control runs the same cases on a disk whose fsync lies; the checks must catch it.
//!
//! `IDEMSTORE_CRASH_SEED` (decimal or 0x-hex) and `IDEMSTORE_CRASH_CASES` override the seed and
//! the number of cases; a failure prints the seed of its case, which reproduces it with
//! `IDEMSTORE_CRASH_CASES=1`.

use std::any::Any;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use idemstore::{
    Begin, BeginError, CompleteError, Completion, Config, Fingerprint, Key, LeaseError,
    ManualClock, Reservation, Response, Scope, State, StorageBackend, Store,
};

use crate::sim_disk::{Mode, Rng, SECTOR, SimDisk};
use crate::support::{T0, fp, key, scope};

/// Keys the workload touches.
const KEYS: usize = 4;
/// Operations per workload, at most.
const MAX_OPS: usize = 120;
/// The power goes at a mutating call drawn from `1..=ARM_MAX`, or `1..=ARM_MAX_LOGGED` when the
/// store acknowledges through a write-ahead log (about two calls per batch instead of eight).
const ARM_MAX: u64 = 400;
const ARM_MAX_LOGGED: u64 = 150;
/// The second power loss, during recovery, at a mutating call drawn from `1..=REARM_MAX`.
const REARM_MAX: u64 = 120;
const DEFAULT_SEED: u64 = 0x1DE5_70CE_C4A5_0001;
const DEFAULT_CASES: u64 = 1000;
const DEFAULT_LYING_CASES: u64 = 200;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v} is not a number: {e}")))
}

/// The smallest write-ahead log, so a workload of a few kilobytes wraps it and checkpoints.
const LOG_CAPACITY: u64 = 64 << 10;

fn cfg(clock: &ManualClock) -> Config {
    Config::builder()
        .clock(clock.clone())
        .compactor_interval(Duration::from_secs(3600))
        // In-flight records keep their leases, so the check sees what the crash left.
        .release_in_flight_on_open(false)
        .log_capacity(LOG_CAPACITY)
        // Checkpoints by log volume only: a case then does not depend on the machine's speed.
        .checkpoint_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// The two disks of the simulated machine: the database's and the write-ahead log's. They
/// share one power supply, so a crash point counts the calls of both.
struct Disks {
    db: SimDisk,
    log: SimDisk,
}

impl Disks {
    fn new(mode: Mode) -> Disks {
        let db = SimDisk::new(mode);
        let log = db.sibling(Vec::new());
        Disks { db, log }
    }

    fn from_images((db, log): Images) -> Disks {
        let db = SimDisk::from_image(db);
        let log = db.sibling(log);
        Disks { db, log }
    }

    fn set_lying(&self, lying: bool) {
        self.db.set_lying(lying);
        self.log.set_lying(lying);
    }

    fn crash_images(&self, rng: &mut Rng, mode: Mode) -> Images {
        (
            self.db.crash_image(rng, mode),
            self.log.crash_image(rng, mode),
        )
    }
}

/// What the database's and the log's disks hold after a power loss.
type Images = (Vec<u8>, Vec<u8>);

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_owned()
    }
}

/// What the test knows about a key.
#[derive(Debug, Clone)]
enum Expect {
    /// Never reserved, or purged (purges are durable).
    Absent,
    /// An acknowledged, durable reservation: in flight, with this token if known.
    InFlight(Option<u64>),
    /// An acknowledged completion: replays exactly this.
    Replay(Response),
    /// An acknowledged completion whose purge failed: replays this, or is gone.
    ReplayOrAbsent(Response),
    /// Purged with `Ok(false)` while an unsynced release was the reason the key was absent:
    /// the acknowledged purge makes that release durable, so it reads as absent.
    PurgedOverRelease,
    /// Anything consistent with the responses given to the key (non-durable releases, failed
    /// operations).
    Free,
}

#[derive(Debug)]
struct KeyModel {
    name: Key,
    fp: Fingerprint,
    expect: Expect,
    /// Every response the test passed to `complete` for this key since its last acknowledged
    /// purge: the only ones it may ever replay.
    given: Vec<Response>,
}

struct Held {
    key: usize,
    res: Reservation,
}

#[derive(Debug, Default)]
struct Summary {
    cases: u64,
    crashed_in_workload: u64,
    crash_points: BTreeSet<u64>,
    ops: u64,
    double_crash_tried: u64,
    double_crash_fired: u64,
    torn: u64,
    acked_checked: u64,
    /// Completions acknowledged by a recovering store, before its own crash, checked.
    acked_after_recovery_checked: u64,
    in_flight_checked: u64,
    violations: Vec<String>,
    panics: u64,
    open_errors: u64,
    /// Cases whose store acknowledged through a write-ahead log.
    logged: u64,
}

/// One case: the workload until the power goes, and the model of what it was told.
struct Case {
    seed: u64,
    rng: Rng,
    clock: ManualClock,
    scope: Scope,
    keys: Vec<KeyModel>,
    held: Vec<Held>,
    max_token: u64,
    attempt: u64,
    /// Print every operation (`IDEMSTORE_CRASH_TRACE=1`), to follow one case.
    trace: bool,
    /// The store acknowledges through a write-ahead log (most cases, as by default).
    wal: bool,
    /// Padding added to response bodies, at most, so the log fills up and wraps.
    pad_max: u64,
    /// A completion acknowledged by the store that recovered the image, before the power went
    /// again: it must replay after that crash too (the session after a recovery writes its
    /// log where the torn tail began).
    probe_acked: Option<Response>,
}

/// What an operation's outcome means for the workload.
enum Step {
    Go,
    /// The store refused: the power is gone.
    Down,
}

impl Case {
    fn new(seed: u64) -> Case {
        let keys = (0..KEYS)
            .map(|k| KeyModel {
                name: key(&format!("k{k}")),
                fp: fp(&format!("{{\"key\":{k}}}")),
                expect: Expect::Absent,
                given: Vec::new(),
            })
            .collect();
        Case {
            seed,
            rng: Rng::new(seed),
            clock: ManualClock::new(T0),
            scope: scope("acct"),
            keys,
            held: Vec::new(),
            max_token: 0,
            attempt: 0,
            trace: std::env::var_os("IDEMSTORE_CRASH_TRACE").is_some(),
            wal: true,
            pad_max: 0,
            probe_acked: None,
        }
    }

    fn open(&self, disks: &Disks) -> Result<Store, idemstore::OpenError> {
        if self.wal {
            Store::open_with_backends(disks.db.clone(), disks.log.clone(), cfg(&self.clock))
        } else {
            Store::open_with_backend(disks.db.clone(), cfg(&self.clock))
        }
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!(
            "crash case seed {:#x}: {msg} (reproduce: IDEMSTORE_CRASH_SEED={:#x} IDEMSTORE_CRASH_CASES=1)",
            self.seed, self.seed
        )
    }

    fn down(&self, disk: &SimDisk, what: &str, e: impl std::fmt::Display) -> Step {
        if !disk.is_dead() {
            self.fail(format!("{what} failed with the power on: {e}"));
        }
        Step::Down
    }

    fn begin(&mut self, store: &Store, disk: &SimDisk, k: usize) -> Step {
        let km = &self.keys[k];
        match store.begin(&self.scope, &km.name, &km.fp) {
            Ok(Begin::Execute(res)) => {
                if matches!(km.expect, Expect::Replay(_)) {
                    self.fail(format!("k{k}: a completed key executed again"));
                }
                if res.token() <= self.max_token {
                    self.fail(format!(
                        "k{k}: token {} not above {} (C8)",
                        res.token(),
                        self.max_token
                    ));
                }
                self.max_token = res.token();
                self.keys[k].expect = Expect::InFlight(Some(res.token()));
                self.held.push(Held { key: k, res });
            }
            Ok(Begin::Replay(r)) => {
                if !km.given.contains(&r) {
                    self.fail(format!("k{k}: replayed a response never given: {r:?}"));
                }
                if let Expect::Replay(want) = &km.expect
                    && *want != r
                {
                    self.fail(format!("k{k}: replayed {r:?}, acknowledged {want:?}"));
                }
                if matches!(km.expect, Expect::Absent | Expect::PurgedOverRelease) {
                    self.fail(format!("k{k}: an absent key replayed"));
                }
            }
            Ok(Begin::InProgress { .. }) => {
                if matches!(
                    km.expect,
                    Expect::Absent | Expect::PurgedOverRelease | Expect::Replay(_)
                ) {
                    self.fail(format!("k{k}: InProgress, expected {:?}", km.expect));
                }
            }
            Ok(Begin::Conflict) => self.fail(format!("k{k}: conflict on its own fingerprint")),
            Ok(Begin::OutcomeUnknown) => self.fail(format!("k{k}: outcome unknown under Release")),
            Err(BeginError::Unavailable(e)) => {
                let km = &mut self.keys[k];
                km.expect = match &km.expect {
                    Expect::Absent | Expect::PurgedOverRelease => Expect::Free,
                    // A takeover may have landed with a token we never saw.
                    Expect::InFlight(_) => Expect::InFlight(None),
                    other => other.clone(),
                };
                return self.down(disk, "begin", e);
            }
            Err(e) => self.fail(format!("k{k}: begin: {e}")),
        }
        Step::Go
    }

    fn complete(&mut self, disk: &SimDisk, i: usize) -> Step {
        let Held { key: k, res } = self.held.swap_remove(i);
        self.attempt += 1;
        let token = res.token();
        // One in eight attempts fail with a status the default policy does not keep.
        let status = if self.rng.chance(1, 8) { 500 } else { 201 };
        let pad = "p".repeat(self.rng.range(0, self.pad_max) as usize);
        let body = format!(
            "{{\"key\":\"k{k}\",\"attempt\":{},\"token\":{token},\"pad\":\"{pad}\"}}",
            self.attempt
        );
        let response = Response::new(
            status,
            [
                ("content-type", "application/json".to_owned()),
                ("x-attempt", self.attempt.to_string()),
            ],
            body,
        );
        if status == 201 {
            self.keys[k].given.push(response.clone());
        }
        let outcome = res.complete(response.clone());
        if let Ok(Completion::Stored) = outcome {
            if matches!(
                self.keys[k].expect,
                Expect::Replay(_) | Expect::ReplayOrAbsent(_)
            ) {
                self.fail(format!("k{k}: completed twice"));
            }
            if status != 201 {
                self.fail(format!("k{k}: stored a {status}"));
            }
        }
        let km = &mut self.keys[k];
        match outcome {
            Ok(Completion::Stored) => km.expect = Expect::Replay(response),
            Ok(Completion::Released) => {
                if matches!(km.expect, Expect::InFlight(_)) {
                    km.expect = Expect::Free;
                }
            }
            Err(CompleteError::Fenced { .. } | CompleteError::NotReserved { .. }) => {}
            Err(CompleteError::Unavailable(e)) => {
                if matches!(km.expect, Expect::InFlight(_) | Expect::Absent) {
                    km.expect = Expect::Free;
                }
                return self.down(disk, "complete", e);
            }
            Err(e) => self.fail(format!("k{k}: complete: {e}")),
        }
        Step::Go
    }

    fn release(&mut self, disk: &SimDisk, i: usize) -> Step {
        let Held { key: k, res } = self.held.swap_remove(i);
        let outcome = res.release();
        let km = &mut self.keys[k];
        match outcome {
            // A release is not durable: after a crash the key may be in flight again.
            Ok(()) => {
                if matches!(km.expect, Expect::InFlight(_)) {
                    km.expect = Expect::Free;
                }
            }
            Err(LeaseError::Fenced { .. } | LeaseError::NotReserved { .. }) => {}
            Err(LeaseError::Unavailable(e)) => {
                if matches!(km.expect, Expect::InFlight(_)) {
                    km.expect = Expect::Free;
                }
                return self.down(disk, "release", e);
            }
            Err(e) => self.fail(format!("k{k}: release: {e}")),
        }
        Step::Go
    }

    fn renew(&mut self, disk: &SimDisk, i: usize) -> Step {
        match self.held[i].res.renew() {
            Ok(()) | Err(LeaseError::Fenced { .. } | LeaseError::NotReserved { .. }) => Step::Go,
            Err(LeaseError::Unavailable(e)) => self.down(disk, "renew", e),
            Err(e) => self.fail(format!("renew: {e}")),
        }
    }

    fn purge(&mut self, store: &Store, disk: &SimDisk, k: usize) -> Step {
        let outcome = store.purge(&self.scope, &self.keys[k].name);
        let km = &mut self.keys[k];
        match outcome {
            Ok(existed) => {
                km.expect = if !existed && matches!(km.expect, Expect::Free) {
                    Expect::PurgedOverRelease
                } else {
                    Expect::Absent
                };
                km.given.clear();
                Step::Go
            }
            Err(e) => {
                km.expect = match &km.expect {
                    Expect::Replay(r) | Expect::ReplayOrAbsent(r) => {
                        Expect::ReplayOrAbsent(r.clone())
                    }
                    Expect::Absent => Expect::Absent,
                    _ => Expect::Free,
                };
                self.down(disk, "purge", e)
            }
        }
    }

    /// Runs the workload until the power goes or the operations run out; returns how many
    /// operations ran and whether the power went.
    fn workload(&mut self, store: &Store, disk: &SimDisk) -> (u64, bool) {
        for n in 0..MAX_OPS {
            let k = self.rng.below(KEYS as u64) as usize;
            let roll = self.rng.below(100);
            let pick =
                (!self.held.is_empty()).then(|| self.rng.below(self.held.len() as u64) as usize);
            let step = match (roll, pick) {
                (0..=34, _) | (35..=74, None) | (90.., _) => self.begin(store, disk, k),
                (35..=59, Some(i)) => self.complete(disk, i),
                (60..=69, Some(i)) => self.release(disk, i),
                (70..=74, Some(i)) => self.renew(disk, i),
                (75..=81, _) => self.purge(store, disk, k),
                _ => {
                    self.clock
                        .advance(Duration::from_millis(self.rng.range(1, 90_000)));
                    Step::Go
                }
            };
            if self.trace {
                let expect: Vec<_> = self.keys.iter().map(|km| &km.expect).collect();
                eprintln!(
                    "op {n}: roll {roll} key {k} pick {pick:?}: down={} expect {expect:?}",
                    matches!(step, Step::Down)
                );
            }
            if let Step::Down = step {
                return (n as u64 + 1, true);
            }
        }
        // The power held: release what is held and close, as a clean shutdown would.
        while !self.held.is_empty() {
            if let Step::Down = self.release(disk, 0) {
                return (MAX_OPS as u64, true);
            }
        }
        (MAX_OPS as u64, disk.is_dead())
    }

    /// Opens `image` on a disk that loses power again a few calls into the repair or the first
    /// operations after it, and returns what that disk could hold afterwards.
    fn crash_during_recovery(
        &mut self,
        images: Images,
        mode: Mode,
        summary: &mut Summary,
    ) -> Result<Images, String> {
        let disks = Disks::from_images(images);
        let disk = &disks.db;
        disk.arm(self.rng.range(1, REARM_MAX));
        summary.double_crash_tried += 1;
        let opened = catch_unwind(AssertUnwindSafe(|| self.open(&disks)));
        match opened {
            Err(p) => {
                summary.panics += 1;
                return Err(format!("the recovery open panicked: {}", panic_text(&*p)));
            }
            Ok(Err(e)) => {
                if !disk.is_dead() {
                    summary.open_errors += 1;
                    return Err(format!("the recovery open failed: {e}"));
                }
            }
            Ok(Ok(store)) => {
                // Operations on a key outside the model, so the model stays as it was.
                let probe = key("probe");
                let probe_fp = fp("{\"probe\":1}");
                if let Ok(Begin::Execute(res)) = store.begin(&self.scope, &probe, &probe_fp) {
                    self.max_token = self.max_token.max(res.token());
                    let r = Response::new(200, [("p", "1")], "probe");
                    if let Ok(Completion::Stored) = res.complete(r.clone()) {
                        self.probe_acked = Some(r);
                    }
                }
                let _ = store.begin(&self.scope, &probe, &probe_fp);
                if let Err(e) = store.close()
                    && !disk.is_dead()
                {
                    return Err(format!("close after recovery failed: {e}"));
                }
            }
        }
        if disk.is_dead() {
            summary.double_crash_fired += 1;
        }
        Ok(disks.crash_images(&mut self.rng, mode))
    }

    /// Opens `image` on a clean disk and checks it against the model.
    fn verify(&self, images: Images, summary: &mut Summary) -> Result<(), String> {
        let disks = Disks::from_images(images);
        let opened = catch_unwind(AssertUnwindSafe(|| self.open(&disks)));
        let store = match opened {
            Err(p) => {
                summary.panics += 1;
                return Err(format!("open panicked: {}", panic_text(&*p)));
            }
            Ok(Err(e)) => {
                summary.open_errors += 1;
                return Err(format!("open failed: {e}"));
            }
            Ok(Ok(store)) => store,
        };
        let checked = catch_unwind(AssertUnwindSafe(|| self.check(&store, summary)));
        match checked {
            Err(p) => {
                summary.panics += 1;
                Err(format!("panic while checking: {}", panic_text(&*p)))
            }
            Ok(result) => result,
        }
    }

    fn check(&self, store: &Store, summary: &mut Summary) -> Result<(), String> {
        let mut reservations = Vec::new();
        for (k, km) in self.keys.iter().enumerate() {
            let info = store
                .get(&self.scope, &km.name)
                .map_err(|e| format!("k{k}: get failed: {e}"))?;
            let shown = info
                .as_ref()
                .map(|i| (i.state, i.token, i.response.clone()));
            if let Some(i) = &info {
                if i.key != km.name.as_str() || i.fingerprint != km.fp {
                    return Err(format!("k{k}: record of another key: {i:?}"));
                }
                match (i.state, &i.response) {
                    (State::Completed, Some(r)) if km.given.contains(r) => {}
                    (State::Completed, other) => {
                        return Err(format!(
                            "k{k}: completed with a response never given to it: {other:?}"
                        ));
                    }
                    (State::InFlight, _) => {}
                    (State::OutcomeUnknown, _) => {
                        return Err(format!("k{k}: outcome unknown under Release"));
                    }
                }
            }
            match (&km.expect, &shown) {
                (Expect::Absent | Expect::PurgedOverRelease, None) | (Expect::Free, _) => {}
                (Expect::InFlight(tok), Some((State::InFlight, t, _)))
                    if tok.is_none_or(|tok| tok == *t) =>
                {
                    summary.in_flight_checked += 1;
                }
                (Expect::Replay(want), Some((State::Completed, _, Some(r)))) if r == want => {
                    summary.acked_checked += 1;
                }
                (Expect::ReplayOrAbsent(want), Some((State::Completed, _, Some(r))))
                    if r == want => {}
                (Expect::ReplayOrAbsent(_), None) => {}
                (want, got) => {
                    return Err(format!("k{k}: expected {want:?}, found {got:?}"));
                }
            }
            // A retry with the same fingerprint (C10, C11).
            let answer = store
                .begin(&self.scope, &km.name, &km.fp)
                .map_err(|e| format!("k{k}: begin failed: {e}"))?;
            match (&shown, answer) {
                (Some((State::Completed, _, Some(r))), Begin::Replay(got)) if got == *r => {}
                (Some((State::InFlight, ..)), Begin::InProgress { .. }) => {}
                (Some((State::InFlight, _, _)) | None, Begin::Execute(res)) => {
                    if res.token() <= self.max_token {
                        return Err(format!(
                            "k{k}: token {} after the crash, not above {} (C8)",
                            res.token(),
                            self.max_token
                        ));
                    }
                    reservations.push(res);
                }
                (got, answer) => {
                    return Err(format!(
                        "k{k}: the record reads {got:?} but a retry got {answer:?}"
                    ));
                }
            }
        }
        drop(reservations);
        if let Some(want) = &self.probe_acked {
            match store.begin(&self.scope, &key("probe"), &fp("{\"probe\":1}")) {
                Ok(Begin::Replay(got)) if got == *want => summary.acked_after_recovery_checked += 1,
                other => {
                    return Err(format!(
                        "the completion acknowledged after the first recovery: {other:?}"
                    ));
                }
            }
        }
        // The recovered store still works and closes cleanly.
        let fresh = key("after-crash");
        let fresh_fp = fp("{\"after\":1}");
        match store.begin(&self.scope, &fresh, &fresh_fp) {
            Ok(Begin::Execute(res)) => {
                if res.token() <= self.max_token {
                    return Err(format!(
                        "token {} after the crash, not above {} (C8)",
                        res.token(),
                        self.max_token
                    ));
                }
                let r = Response::new(201, [("a", "b")], "after");
                match res.complete(r.clone()) {
                    Ok(Completion::Stored) => {}
                    other => return Err(format!("complete after the crash: {other:?}")),
                }
                match store.begin(&self.scope, &fresh, &fresh_fp) {
                    Ok(Begin::Replay(got)) if got == r => {}
                    other => return Err(format!("replay after the crash: {other:?}")),
                }
            }
            other => return Err(format!("begin of a new key after the crash: {other:?}")),
        }
        // The recovered file agrees with itself, its counts of live records per scope and in
        // flight included (C13): they moved in the same transactions as the records.
        let report = store
            .check()
            .map_err(|e| format!("check after the crash: {e}"))?;
        if !report.is_sound() {
            return Err(format!("check after the crash: {:?}", report.problems));
        }
        store
            .clone()
            .close()
            .map_err(|e| format!("close after the crash: {e}"))
    }
}

/// Runs one case; `Err` is a violation found after the crash.
fn run_case(seed: u64, lying: bool, summary: &mut Summary) -> Result<(), String> {
    let mut case = Case::new(seed);
    // A lying disk lies from the start in half the cases (nothing is ever durable, so the
    // image is mostly garbage), and only after the store has created its file in the others
    // (a valid file whose later commits are lost: the oracle must see the lost records).
    let lie_from_start = lying && case.rng.chance(1, 2);
    case.wal = case.rng.chance(3, 4);
    if case.wal && case.rng.chance(1, 2) {
        case.pad_max = 3000;
    }
    if case.wal {
        summary.logged += 1;
    }
    let disks = Disks::new(if lie_from_start {
        Mode::Lying
    } else {
        Mode::Subset
    });
    let disk = &disks.db;
    let store = case
        .open(&disks)
        .unwrap_or_else(|e| case.fail(format!("open of a fresh disk: {e}")));
    if lying {
        disks.set_lying(true);
    }
    let arm = case
        .rng
        .range(1, if case.wal { ARM_MAX_LOGGED } else { ARM_MAX });
    disk.arm(arm);
    let (ops, crashed) = case.workload(&store, disk);
    summary.ops += ops;
    if crashed {
        summary.crashed_in_workload += 1;
        summary.crash_points.insert(arm);
    }
    // The process dies with the power: reservations and store go without a word to the disk.
    case.held.clear();
    if let Err(e) = store.close()
        && !disk.is_dead()
    {
        case.fail(format!("close with the power on: {e}"));
    }
    let mode = if !lying && case.rng.chance(1, 2) {
        summary.torn += 1;
        Mode::Torn
    } else {
        Mode::Subset
    };
    let mut images = disks.crash_images(&mut case.rng, mode);
    if case.rng.chance(1, 3) {
        images = case.crash_during_recovery(images, mode, summary)?;
    }
    case.verify(images, summary)
}

fn run_cases(lying: bool, default_cases: u64) -> (Summary, u64, Duration) {
    let base = env_u64("IDEMSTORE_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("IDEMSTORE_CRASH_CASES").unwrap_or(default_cases);
    let started = Instant::now();
    let mut summary = Summary::default();
    for i in 0..cases {
        let seed = base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(seed, lying, &mut summary)));
        summary.cases += 1;
        let violation = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(v)) => v,
            Err(p) => {
                summary.panics += 1;
                format!("panic: {}", panic_text(&*p))
            }
        };
        summary.violations.push(format!(
            "seed {seed:#x} (IDEMSTORE_CRASH_SEED={seed:#x} IDEMSTORE_CRASH_CASES=1): {violation}"
        ));
    }
    (summary, base, started.elapsed())
}

fn report(name: &str, s: &Summary, base: u64, took: Duration) {
    eprintln!(
        "{name}: base seed {base:#x}, {} cases in {took:.1?}: {} power losses in the workload at {} \
         distinct crash points (of 1..={ARM_MAX}), {} cases with a write-ahead log, {} operations, {} torn images, {} recoveries \
         crashed again (of {} tried), {} acknowledged completions, {} more made after a \
         recovery, and {} acknowledged reservations checked; {} violations ({} open errors, \
         {} panics)",
        s.cases,
        s.crashed_in_workload,
        s.crash_points.len(),
        s.logged,
        s.ops,
        s.torn,
        s.double_crash_fired,
        s.double_crash_tried,
        s.acked_checked,
        s.acked_after_recovery_checked,
        s.in_flight_checked,
        s.violations.len(),
        s.open_errors,
        s.panics,
    );
}

#[test]
fn c10_c11_power_loss_at_any_io_call_keeps_every_acknowledged_record() {
    let (summary, base, took) = run_cases(false, DEFAULT_CASES);
    report("crash (honest disk)", &summary, base, took);
    assert!(
        summary.violations.is_empty(),
        "{} of {} crash cases failed (base seed {base:#x}):\n{}",
        summary.violations.len(),
        summary.cases,
        summary.violations.join("\n")
    );
    if summary.cases >= 50 {
        assert!(
            summary.crashed_in_workload * 2 > summary.cases,
            "most cases should lose power in the workload (base seed {base:#x}): {summary:?}"
        );
        assert!(
            summary.acked_checked > 0,
            "no acknowledged completion was ever checked (base seed {base:#x})"
        );
    }
}

#[test]
fn negative_control_a_disk_whose_fsync_lies_is_caught() {
    let (summary, base, took) = run_cases(true, DEFAULT_LYING_CASES);
    report("crash (lying disk)", &summary, base, took);
    let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
    for v in &summary.violations {
        let kind = if v.contains("open failed") {
            "open error"
        } else if v.contains("panic") {
            "panic"
        } else if v.contains("expected Replay") {
            "acknowledged completion lost or changed"
        } else if v.contains("expected InFlight") {
            "acknowledged reservation lost"
        } else {
            "other"
        };
        *kinds.entry(kind).or_default() += 1;
    }
    eprintln!("  caught by kind: {kinds:?}");
    let shown = if std::env::var_os("IDEMSTORE_CRASH_VERBOSE").is_some() {
        usize::MAX
    } else {
        5
    };
    for v in summary.violations.iter().take(shown) {
        eprintln!("  caught: {v}");
    }
    assert!(
        !summary.violations.is_empty(),
        "a disk whose fsync lies went undetected in {} cases (base seed {base:#x}): the crash \
         harness cannot see lost writes",
        summary.cases
    );
}

// ---- The simulated disk itself ---------------------------------------------------------------

#[test]
fn sim_disk_keeps_synced_bytes_and_fails_after_the_countdown() {
    let disk = SimDisk::new(Mode::Subset);
    disk.set_len(1024).unwrap();
    disk.write(0, b"durable").unwrap();
    disk.sync_data().unwrap();
    disk.write(0, b"pending").unwrap();
    let mut out = [0u8; 7];
    disk.read(0, &mut out).unwrap();
    assert_eq!(&out, b"pending");
    disk.arm(2);
    disk.write(512, b"x").unwrap();
    assert!(disk.write(600, b"y").is_err());
    assert!(disk.read(0, &mut out).is_err());
    assert!(disk.sync_data().is_err());
    let mut seen_durable = false;
    let mut seen_pending = false;
    let mut rng = Rng::new(7);
    for _ in 0..64 {
        let image = disk.crash_image(&mut rng, Mode::Subset);
        assert_eq!(image.len(), 1024);
        match &image[..7] {
            b"durable" => seen_durable = true,
            b"pending" => seen_pending = true,
            other => panic!("unexpected bytes {other:?}"),
        }
        assert_eq!(image[600], 0, "the failed write never landed");
    }
    assert!(seen_durable && seen_pending);
}

#[test]
fn sim_disk_tears_writes_by_sector_and_a_lying_disk_keeps_nothing() {
    let disk = SimDisk::new(Mode::Subset);
    disk.write(0, &[1u8; 4 * SECTOR as usize]).unwrap();
    let mut rng = Rng::new(11);
    let mut torn = false;
    for _ in 0..200 {
        let image = disk.crash_image(&mut rng, Mode::Torn);
        for sector in image.chunks(SECTOR as usize) {
            assert!(sector.iter().all(|&b| b == sector[0]), "a sector is whole");
        }
        if image.contains(&0) {
            torn = true;
        }
    }
    assert!(torn);

    let lying = SimDisk::new(Mode::Lying);
    lying.write(0, b"acked").unwrap();
    lying.sync_data().unwrap();
    let restored = SimDisk::from_image(b"image".to_vec());
    let mut out = [0u8; 5];
    restored.read(0, &mut out).unwrap();
    assert_eq!(&out, b"image");
    assert_eq!(restored.crash_image(&mut Rng::new(1), Mode::Torn), b"image");
    let mut rng = Rng::new(3);
    let lost = (0..64).any(|_| lying.crash_image(&mut rng, Mode::Subset).is_empty());
    assert!(lost, "a lying sync leaves the write pending");
}

/// A disk whose next `sync_data`, once armed, waits until the test lets it go and then fails,
/// as if the power went during it: what the call was to make durable never is.
#[derive(Debug, Clone)]
struct StalledSync {
    disk: SimDisk,
    /// 0 idle, 1 armed, 2 a sync is waiting, 3 let it go.
    gate: std::sync::Arc<(std::sync::Mutex<u8>, std::sync::Condvar)>,
}

impl StalledSync {
    fn new(disk: SimDisk) -> StalledSync {
        StalledSync {
            disk,
            gate: std::sync::Arc::default(),
        }
    }

    fn arm(&self) {
        *self.gate.0.lock().unwrap() = 1;
    }

    /// Waits until an armed sync has begun; an upper bound, not a sleep.
    fn wait_for_the_sync(&self) {
        let (m, cv) = &*self.gate;
        let st = m.lock().unwrap();
        let (st, timeout) = cv
            .wait_timeout_while(st, Duration::from_secs(60), |st| *st != 2)
            .unwrap();
        assert!(!timeout.timed_out() && *st == 2, "no sync was made");
    }

    fn let_go(&self) {
        *self.gate.0.lock().unwrap() = 3;
        self.gate.1.notify_all();
    }
}

impl StorageBackend for StalledSync {
    fn len(&self) -> std::io::Result<u64> {
        self.disk.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.disk.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.disk.set_len(len)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk.write(offset, data)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let (m, cv) = &*self.gate;
        let mut st = m.lock().unwrap();
        if *st == 1 {
            *st = 2;
            cv.notify_all();
            while *st != 3 {
                st = cv.wait(st).unwrap();
            }
            return Err(std::io::Error::other("the power went during this sync"));
        }
        drop(st);
        self.disk.sync_data()
    }
}

/// C10 for readers: with the write-ahead log, a completion is seen by `get` only once it is
/// durable, whether its batch is made durable by a log sync or, when its entry does not fit in
/// the log, by the checkpoint that writes it into the file. The durability point here never
/// comes (the power goes during it), and the reopened image holds the key in flight: a read
/// that had seen the completion would have shown a state a power loss took back. Before, the
/// batch's changes reached the overlay that readers consult before the sync.
#[test]
fn c10_a_read_never_sees_a_logged_completion_before_it_is_durable() {
    // A body that fits in the log, then one larger than the whole log.
    for body_len in [16usize, 80 << 10] {
        let clock = ManualClock::new(T0);
        let db = StalledSync::new(SimDisk::new(Mode::Subset));
        let log = StalledSync::new(db.disk.sibling(Vec::new()));
        let config = crate::sim_disk::disk_config(&clock)
            .release_in_flight_on_open(false)
            .build()
            .unwrap();
        let store = Store::open_with_backends(db.clone(), log.clone(), config).unwrap();
        let (s, k) = (scope("acct"), key("k"));
        let Begin::Execute(r) = store.begin(&s, &k, &fp("a")).unwrap() else {
            panic!("a fresh key executes");
        };
        store.flush().unwrap();
        let durable_by = if body_len < 1024 { &log } else { &db };
        durable_by.arm();
        let response = Response::new(201, [("content-type", "text/plain")], vec![b'x'; body_len]);
        let completing = std::thread::spawn(move || r.complete(response));
        durable_by.wait_for_the_sync();
        let seen = store.get(&s, &k).unwrap().map(|r| r.state);
        durable_by.let_go();
        let answered = completing.join().unwrap();
        assert!(
            matches!(
                answered,
                Err(CompleteError::Unavailable(
                    idemstore::Unavailable::OutcomeUnknown { .. }
                ))
            ),
            "body {body_len}: {answered:?}"
        );
        assert_eq!(
            seen,
            Some(State::InFlight),
            "body {body_len}: read before the sync"
        );
        drop(store);
        let reopened = Store::open_with_backends(
            SimDisk::from_image(db.disk.synced_image()),
            SimDisk::from_image(log.disk.synced_image()),
            crate::sim_disk::disk_config(&clock)
                .release_in_flight_on_open(false)
                .build()
                .unwrap(),
        )
        .unwrap();
        let after = reopened.get(&s, &k).unwrap().map(|r| r.state);
        assert_eq!(
            after,
            Some(State::InFlight),
            "body {body_len}: after the power loss"
        );
    }
}
