//! Operation sequences with power losses, on the simulated disk of the crash tests (C8, C10,
//! C11).
//!
//! The input chooses everything: whether the store acknowledges through its write-ahead log (a
//! second disk on the same power supply) or through durable database commits, the mutating
//! I/O call of either disk at which the power goes, the operations
//! (begin, complete with a kept or an unkept status, release, renew, purge, time passing), which
//! unsynced writes the disk keeps (whole or torn at 512-byte sectors), and whether the power
//! goes again while a store recovers the image. Afterwards the image must open; every
//! acknowledged completion replays byte for byte, both through `get` and through a retry; no key
//! holds a response the test never gave it; fencing tokens stay above every token handed out;
//! the recovered store completes a new key and closes. tests/crash.rs runs a fuller model of
//! the same workload from seeds; this target lets coverage steer the choices.
//!
//! Every store runs in step mode (`idemstore::__fuzz::step_mode`): no thread, the writer's
//! batches and the checkpoints on this thread, so an input gives one schedule, which the input
//! also chooses: checkpoints run where the writer hands them over, or (bit 3 of the first byte,
//! with the log) wait until an operation of the input runs them or the writer needs them. Each
//! case keeps a digest of what it observed; with `IDEMSTORE_FUZZ_TWICE` set in the environment,
//! every input runs twice and the two digests must agree.
#![no_main]

use std::time::Duration;

use idemstore::__fuzz::{StepCheckpoints, run_checkpoint, step_mode};
use idemstore::{
    Begin, Completion, Config, Fingerprint, Key, ManualClock, Reservation, Response, Scope, State,
    Store,
};
use idemstore_fuzz::sim_disk::{Mode, Rng, SimDisk};
use idemstore_fuzz::{Src, Trace, guarded, ready, twice};
use libfuzzer_sys::fuzz_target;

const T0: u64 = 1_767_225_600_000;
const KEYS: usize = 4;
const MAX_OPS: usize = 48;

/// The smallest log, so a workload of a few kilobytes wraps it and checkpoints.
const LOG_CAPACITY: u64 = 64 << 10;

fn config(clock: &ManualClock, checkpoints: StepCheckpoints) -> Config {
    step_mode(Config::builder(), checkpoints)
        .clock(clock.clone())
        .log_capacity(LOG_CAPACITY)
        // Checkpoints by log volume only, so a case does not depend on the machine's speed.
        .checkpoint_interval(Duration::from_secs(3600))
        .compactor_interval(Duration::from_secs(3600))
        // A small index: building and dropping the default 65 536 slots dominated each run.
        .index_capacity(64)
        .build()
        .unwrap()
}

#[derive(Debug, Clone, PartialEq)]
enum Acked {
    /// No completion acknowledged since the last acknowledged purge.
    Nothing,
    /// This completion was acknowledged: it must replay.
    Stored(Response),
    /// Acknowledged, then a purge that failed: it replays or is gone.
    StoredOrPurged(Response),
}

struct KeyModel {
    key: Key,
    fp: Fingerprint,
    acked: Acked,
    /// Every kept response passed to `complete` since the last acknowledged purge.
    given: Vec<Response>,
}

/// The database's disk and the log's, sharing one power supply.
struct Disks {
    db: SimDisk,
    log: SimDisk,
}

impl Disks {
    fn new() -> Disks {
        let db = SimDisk::new(Mode::Subset);
        let log = db.sibling(Vec::new());
        Disks { db, log }
    }

    fn from_images((db, log): (Vec<u8>, Vec<u8>)) -> Disks {
        let db = SimDisk::from_image(db);
        let log = db.sibling(log);
        Disks { db, log }
    }

    fn crash_images(&self, rng: &mut Rng, mode: Mode) -> (Vec<u8>, Vec<u8>) {
        (
            self.db.crash_image(rng, mode),
            self.log.crash_image(rng, mode),
        )
    }
}

struct Case {
    /// The store acknowledges through the write-ahead log.
    wal: bool,
    /// When the checkpoints handed over by the writer run.
    checkpoints: StepCheckpoints,
    /// Padding added to response bodies, at most, so the log fills up and wraps.
    pad_max: usize,
    clock: ManualClock,
    scope: Scope,
    keys: Vec<KeyModel>,
    held: Vec<(usize, Reservation)>,
    max_token: u64,
    attempt: u64,
    /// What the case saw, for the check that an input gives one behaviour.
    trace: Trace,
}

impl Case {
    fn new(wal: bool, checkpoints: StepCheckpoints, pad_max: usize) -> Case {
        Case {
            wal,
            checkpoints,
            pad_max,
            clock: ManualClock::new(T0),
            scope: Scope::new("acct").unwrap(),
            keys: (0..KEYS)
                .map(|k| KeyModel {
                    key: Key::new(format!("k{k}")).unwrap(),
                    fp: Fingerprint::of_bytes(format!("request {k}").as_bytes()),
                    acked: Acked::Nothing,
                    given: Vec::new(),
                })
                .collect(),
            held: Vec::new(),
            max_token: 0,
            attempt: 0,
            trace: Trace::default(),
        }
    }

    fn open(&self, disks: &Disks) -> Result<Store, idemstore::OpenError> {
        let config = config(&self.clock, self.checkpoints);
        if self.wal {
            Store::open_with_backends(disks.db.clone(), disks.log.clone(), config)
        } else {
            Store::open_with_backend(disks.db.clone(), config)
        }
    }

    /// Runs operations until the input or the power runs out.
    fn workload(&mut self, store: &Store, disk: &SimDisk, src: &mut Src) {
        for _ in 0..MAX_OPS {
            if src.is_empty() || disk.is_dead() {
                return;
            }
            let k = usize::from(src.below(KEYS as u8));
            let op = src.below(8);
            let mut failure = None;
            let ok = match op {
                0..=2 => self.begin(store, k, &mut failure),
                3 | 4 if !self.held.is_empty() => {
                    let i = usize::from(src.byte()) % self.held.len();
                    let kept = src.below(4) != 0;
                    let pad = if self.pad_max == 0 {
                        0
                    } else {
                        usize::from(src.u16()) % self.pad_max
                    };
                    self.complete(i, kept, pad)
                }
                5 if !self.held.is_empty() => {
                    let i = usize::from(src.byte()) % self.held.len();
                    let (_, r) = self.held.swap_remove(i);
                    match r.release() {
                        Err(idemstore::LeaseError::Unavailable(e)) => {
                            failure = Some(format!("release: {e}"));
                            false
                        }
                        // Fenced or no longer reserved: the lease ran out and another attempt
                        // took over.
                        _ => true,
                    }
                }
                6 => self.purge(store, k),
                _ => {
                    self.clock
                        .advance(Duration::from_millis(u64::from(src.u16()) * 16));
                    // A held checkpoint finishes now, if the input says so.
                    if self.wal && self.checkpoints == StepCheckpoints::Held && src.flag() {
                        self.trace.note(u64::from(run_checkpoint(store)));
                    }
                    true
                }
            };
            assert!(
                ok || disk.is_dead(),
                "an operation failed with the power on: op {op}, {failure:?}"
            );
            self.trace.note(u64::from(op));
            self.trace.note(u64::from(ok));
            self.trace.note(disk.mutations());
            let stats = store.stats();
            self.trace.note(stats.commits);
            self.trace.note(stats.checkpoints);
            self.trace.note(stats.log_syncs);
        }
    }

    fn begin(&mut self, store: &Store, k: usize, failure: &mut Option<String>) -> bool {
        let km = &self.keys[k];
        let got = store.begin(&self.scope, &km.key, &km.fp);
        self.trace.note(match &got {
            Ok(Begin::Execute(r)) => r.token(),
            Ok(Begin::Replay(_)) => 1,
            Ok(Begin::InProgress { .. }) => 2,
            Ok(Begin::Conflict) => 3,
            Ok(Begin::OutcomeUnknown) => 5,
            Err(_) => 4,
        });
        match got {
            Ok(Begin::Execute(r)) => {
                assert!(
                    !matches!(km.acked, Acked::Stored(_)),
                    "k{k}: a completed key executed again"
                );
                assert!(
                    r.token() > self.max_token,
                    "k{k}: token not increasing (C8)"
                );
                self.max_token = r.token();
                self.held.push((k, r));
            }
            Ok(Begin::Replay(got)) => {
                assert!(
                    km.given.contains(&got),
                    "k{k}: replayed a response never given"
                );
                if let Acked::Stored(want) = &km.acked {
                    assert_eq!(&got, want, "k{k}: replayed another response");
                }
            }
            Ok(Begin::InProgress { .. }) => {
                assert!(
                    !matches!(km.acked, Acked::Stored(_)),
                    "k{k}: a completed key is in progress"
                );
            }
            Ok(other) => panic!("k{k}: unexpected {other:?}"),
            Err(e) => {
                *failure = Some(format!("begin: {e}"));
                return false;
            }
        }
        true
    }

    fn complete(&mut self, i: usize, kept: bool, pad: usize) -> bool {
        let (k, r) = self.held.swap_remove(i);
        self.attempt += 1;
        let status = if kept { 201 } else { 503 };
        let response = Response::new(
            status,
            [("x-attempt", self.attempt.to_string())],
            format!(
                "k{k} attempt {} token {} {}",
                self.attempt,
                r.token(),
                "p".repeat(pad)
            ),
        );
        if kept {
            self.keys[k].given.push(response.clone());
        }
        let done = r.complete(response.clone());
        self.trace.note(match &done {
            Ok(Completion::Stored) => 1,
            Ok(_) => 2,
            Err(idemstore::CompleteError::Unavailable(_)) => 3,
            Err(_) => 4,
        });
        match done {
            Ok(Completion::Stored) => {
                assert!(kept, "k{k}: stored a status the policy does not keep");
                assert!(
                    !matches!(self.keys[k].acked, Acked::Stored(_)),
                    "k{k}: completed twice"
                );
                self.keys[k].acked = Acked::Stored(response);
                true
            }
            Ok(_) => true,
            Err(idemstore::CompleteError::Unavailable(_)) => false,
            // Fenced or no longer reserved: the lease ran out and another attempt took over.
            Err(_) => true,
        }
    }

    fn purge(&mut self, store: &Store, k: usize) -> bool {
        let km = &mut self.keys[k];
        let purged = store.purge(&self.scope, &km.key);
        self.trace.note(match &purged {
            Ok(existed) => u64::from(*existed),
            Err(_) => 2,
        });
        match purged {
            Ok(_) => {
                km.acked = Acked::Nothing;
                km.given.clear();
                true
            }
            Err(_) => {
                if let Acked::Stored(r) = &km.acked {
                    km.acked = Acked::StoredOrPurged(r.clone());
                }
                false
            }
        }
    }

    /// Opens the image and checks it against the model.
    fn verify(&mut self, images: (Vec<u8>, Vec<u8>)) {
        let store = self
            .open(&Disks::from_images(images))
            .unwrap_or_else(|e| panic!("the image after a crash does not open (C11): {e}"));
        let mut found = Vec::new();
        for (k, km) in self.keys.iter().enumerate() {
            let info = store.get(&self.scope, &km.key).unwrap();
            let stored = info.as_ref().and_then(|i| i.response.clone());
            self.trace.note(match &info {
                None => 0,
                Some(i) if i.state == State::InFlight => 1,
                Some(_) => 2,
            });
            if let Some(info) = &info {
                assert_eq!(info.fingerprint, km.fp, "k{k}: record of another request");
                if info.state == State::Completed {
                    let r = stored.as_ref().expect("a completed record has a response");
                    assert!(km.given.contains(r), "k{k}: holds a response never given");
                }
            }
            match &km.acked {
                Acked::Stored(want) => {
                    assert_eq!(
                        stored.as_ref(),
                        Some(want),
                        "k{k}: acknowledged completion lost (C10)"
                    );
                }
                Acked::StoredOrPurged(want) => {
                    assert!(
                        stored.is_none() || stored.as_ref() == Some(want),
                        "k{k}: changed"
                    );
                }
                Acked::Nothing => {}
            }
            found.push((info.map(|i| i.state), stored));
        }
        // The retries of the model's keys and a new key, in one batch of the writer (futures,
        // each ready at its first poll in step mode).
        let fresh = Key::new("after-crash").unwrap();
        let fp = Fingerprint::of_bytes(b"after");
        let begins: Vec<_> = self
            .keys
            .iter()
            .map(|km| store.begin_async(&self.scope, &km.key, &km.fp))
            .collect();
        let first = store.begin_async(&self.scope, &fresh, &fp);
        for (k, (begun, (state, stored))) in begins.into_iter().zip(found).enumerate() {
            match ready(begun).unwrap() {
                Begin::Replay(got) => assert_eq!(Some(got), stored, "k{k}: retry differs from get"),
                Begin::Execute(r) => {
                    self.trace.note(r.token());
                    assert!(stored.is_none(), "k{k}: a completed key executed");
                    assert!(
                        r.token() > self.max_token,
                        "k{k}: token reused after a crash (C8)"
                    );
                }
                Begin::InProgress { .. } => {
                    assert!(
                        state == Some(State::InFlight),
                        "k{k}: in progress without an in-flight record"
                    );
                }
                other => panic!("k{k}: unexpected {other:?}"),
            }
        }
        let Begin::Execute(r) = ready(first).unwrap() else {
            panic!("a new key after the crash did not execute");
        };
        let response = Response::new(201, [("a", "b")], "after");
        assert!(matches!(
            r.complete(response.clone()),
            Ok(Completion::Stored)
        ));
        assert!(
            matches!(store.begin(&self.scope, &fresh, &fp), Ok(Begin::Replay(got)) if got == response)
        );
        store.close().unwrap();
    }
}

/// Runs one input; returns the digest of what it observed.
fn run(data: &[u8]) -> u64 {
    let mut src = Src(data);
    let how = src.byte();
    // Most cases acknowledge through the log, as the default configuration does.
    let wal = how & 3 != 0;
    let checkpoints = if how & 8 != 0 {
        StepCheckpoints::Held
    } else {
        StepCheckpoints::AtHandOff
    };
    let pad_max = if how & 4 != 0 { 3000 } else { 0 };
    let arm = u64::from(src.u16() % if wal { 192 } else { 512 }) + 1;
    let torn = src.flag();
    let crash_in_recovery = src.below(4) == 0;
    let rearm = u64::from(src.below(128)) + 1;
    let mut rng = Rng::new(src.u64());
    let mode = if torn { Mode::Torn } else { Mode::Subset };

    let mut case = Case::new(wal, checkpoints, pad_max);
    let disks = Disks::new();
    let store = case.open(&disks).unwrap();
    disks.db.arm(arm);
    case.workload(&store, &disks.db, &mut src);
    // The process dies with the power, or stops here if the power held.
    case.held.clear();
    let _ = store.close();
    let mut images = disks.crash_images(&mut rng, mode);

    if crash_in_recovery {
        let disks = Disks::from_images(images);
        disks.db.arm(rearm);
        if let Ok(store) = case.open(&disks) {
            // A key outside the model, so the model stays as it was.
            let probe = Key::new("probe").unwrap();
            let fp = Fingerprint::of_bytes(b"probe");
            if let Ok(Begin::Execute(r)) = store.begin(&case.scope, &probe, &fp) {
                case.max_token = case.max_token.max(r.token());
                let _ = r.complete(Response::new(200, [("p", "1")], "probe"));
            }
            let _ = store.close();
        } else {
            assert!(disks.db.is_dead(), "recovery failed with the power on");
        }
        images = disks.crash_images(&mut rng, mode);
    }
    case.trace.note(disks.db.mutations());
    case.verify(images);
    case.trace.digest()
}

fuzz_target!(|data: &[u8]| guarded(|| twice(data, run)));
