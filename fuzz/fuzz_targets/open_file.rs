//! Opening arbitrary or damaged database files (C11, C12): an error or a usable store, never a
//! panic, never a hang (libFuzzer's `-timeout` turns a hang into a finding).
//!
//! The first input byte picks the files: the rest of the input as raw bytes, or a real store
//! file (closed cleanly, or left as a crash leaves it) damaged by edits the input describes
//! (bytes flipped or set, runs zeroed, the file cut short), or the database and write-ahead log
//! a power loss leaves (completions acknowledged through the log, not yet checkpointed), with
//! the log or the database damaged, or the rest of the input as the log. A store that opens must answer
//! every known key with a value and accept a new completion. With `verify_on_open`, a store
//! that opens must never replay a response other than the one stored for that key: damage is
//! refused or rolled back, never served.
//!
//! Every store runs in step mode (`idemstore::__fuzz::step_mode`): no thread, the writer's
//! batches and the checkpoints on this thread, so an input gives one behaviour. With
//! `IDEMSTORE_FUZZ_TWICE` set in the environment, every input runs twice and the digests of
//! what the two runs observed must agree.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use idemstore::__fuzz::{StepCheckpoints, step_mode};
use idemstore::{Begin, Config, Fingerprint, Key, ManualClock, Response, Scope, Store};
use idemstore_fuzz::sim_disk::{Mode, SimDisk};
use idemstore_fuzz::{Src, Trace, guarded, ready, twice};
use libfuzzer_sys::fuzz_target;

const T0: u64 = 1_767_225_600_000;
const KEYS: usize = 24;

fn config(verify: bool) -> Config {
    step_mode(Config::builder(), StepCheckpoints::AtHandOff)
        .clock(ManualClock::new(T0))
        .log_capacity(64 << 10)
        .checkpoint_interval(Duration::from_secs(3600))
        .compactor_interval(Duration::from_secs(3600))
        // A small index: building and dropping the default 65 536 slots dominated each run.
        .index_capacity(64)
        .verify_on_open(verify)
        .page_cache_bytes(1 << 20)
        .build()
        .unwrap()
}

fn scope() -> Scope {
    Scope::new("acct").unwrap()
}

fn key(i: usize) -> Key {
    Key::new(format!("k{i}")).unwrap()
}

fn fp(i: usize) -> Fingerprint {
    Fingerprint::of_bytes(format!("request {i}").as_bytes())
}

/// The response stored for key `i`, if the base file completes it.
fn response(i: usize) -> Option<Response> {
    (i % 3 != 2).then(|| {
        Response::new(
            200 + (i % 7) as u16,
            [("content-type", "text/plain"), ("x-i", "v")],
            format!("response {i} ").repeat(i + 1),
        )
    })
}

/// The base files.
struct Bases {
    /// Without a log, closed cleanly.
    clean: Vec<u8>,
    /// Without a log, as a crash after the last commit leaves it.
    crashed: Vec<u8>,
    /// With a log, as a power loss leaves both: the database as of its last durable commit
    /// (the opening one) and the log holding every acknowledged completion.
    logged: (Vec<u8>, Vec<u8>),
}

/// Writes the known keys: completes those with a response, returns the others held.
fn write_keys(store: &Store) -> Vec<idemstore::Reservation> {
    let mut held = Vec::new();
    for i in 0..KEYS {
        let Ok(Begin::Execute(r)) = store.begin(&scope(), &key(i), &fp(i)) else {
            panic!("base file: begin {i}");
        };
        match response(i) {
            Some(resp) => {
                r.complete(resp).unwrap();
            }
            None => held.push(r),
        }
    }
    held
}

fn bases() -> &'static Bases {
    static BASES: OnceLock<Bases> = OnceLock::new();
    BASES.get_or_init(|| {
        let disk = SimDisk::new(Mode::Subset);
        let store = Store::open_with_backend(disk.clone(), config(false)).unwrap();
        let held = write_keys(&store);
        // Nothing is pending after a durable commit: this is what a crash leaves.
        let crashed = disk.synced_image();
        drop(held);
        store.close().unwrap();
        let clean = disk.synced_image();

        let db = SimDisk::new(Mode::Subset);
        let log = db.sibling(Vec::new());
        let store = Store::open_with_backends(db.clone(), log.clone(), config(false)).unwrap();
        let held = write_keys(&store);
        let logged = (db.synced_image(), log.synced_image());
        drop(held);
        drop(store);
        Bases {
            clean,
            crashed,
            logged,
        }
    })
}

/// Applies the damage the input describes to `image`.
fn damage(image: &mut Vec<u8>, src: &mut Src) {
    let edits = src.below(8) + 1;
    for _ in 0..edits {
        if image.is_empty() {
            return;
        }
        let kind = src.below(5);
        let at = (src.u32() as usize) % image.len();
        let value = src.byte();
        match kind {
            0 => image[at] ^= value.max(1),
            1 => image[at] = value,
            2 => {
                // A zeroed run, as a torn or lost sector leaves.
                let end = (at + 16 * usize::from(value) + 1).min(image.len());
                image[at..end].fill(0);
            }
            3 => image.truncate(at),
            _ => {
                // Bytes of one place copied over another (a misdirected write).
                let from = (src.u32() as usize) % image.len();
                let len = (usize::from(value) * 8)
                    .min(image.len() - at)
                    .min(image.len() - from);
                let chunk = image[from..from + len].to_vec();
                image[at..at + len].copy_from_slice(&chunk);
            }
        }
    }
}

/// Opens `image` (with `log` as its write-ahead log, if any); `check` says whether a response
/// read must be the base file's. Returns the digest of what it observed.
fn exercise(image: Vec<u8>, log: Option<Vec<u8>>, verify: bool, check: bool) -> u64 {
    let mut trace = Trace::default();
    let db = SimDisk::from_image(image);
    let opened = match log {
        Some(log) => {
            let log = db.sibling(log);
            Store::open_with_backends(db, log, config(verify))
        }
        None => Store::open_with_backend(db, config(verify)),
    };
    let Ok(store) = opened else {
        return trace.digest();
    };
    trace.note(1);
    let s = scope();
    for i in 0..KEYS {
        let got = store.get(&s, &key(i));
        trace.note(match &got {
            Ok(None) => 0,
            Ok(Some(info)) => 1 + u64::from(info.response.is_some()),
            Err(_) => 3,
        });
        if let Ok(Some(info)) = got
            && check
            && let Some(got) = &info.response
        {
            assert_eq!(
                Some(got),
                response(i).as_ref(),
                "k{i}: a damaged file served a wrong response"
            );
        }
    }
    // Every begin in one batch of the writer, then every completion in another (futures, each
    // ready at its first poll in step mode): the answers are checked one by one as they would
    // be one call at a time, for two commits instead of two a key.
    let keys: Vec<usize> = (0..KEYS).chain([1000]).collect();
    let requests: Vec<(Key, Fingerprint)> = keys.iter().map(|&i| (key(i), fp(i))).collect();
    let begins: Vec<_> = requests
        .iter()
        .map(|(k, f)| store.begin_async(&s, k, f))
        .collect();
    let mut completions = Vec::new();
    for (&i, begun) in keys.iter().zip(begins) {
        let begun = ready(begun);
        trace.note(match &begun {
            Ok(Begin::Execute(r)) => r.token(),
            Ok(Begin::Replay(_)) => 1,
            Ok(Begin::InProgress { .. }) => 2,
            Ok(Begin::Conflict) => 3,
            Ok(Begin::OutcomeUnknown) => 5,
            Err(_) => 4,
        });
        match begun {
            Ok(Begin::Replay(got)) if check && i < KEYS => {
                assert_eq!(
                    Some(&got),
                    response(i).as_ref(),
                    "k{i}: replayed a wrong response"
                );
            }
            Ok(Begin::Execute(r)) => {
                let body = if i < KEYS { "after" } else { "new" };
                completions.push(r.complete_async(Response::new(201, [("a", "b")], body)));
            }
            _ => {}
        }
    }
    for done in completions {
        trace.note(u64::from(ready(done).is_ok()));
    }
    trace.note(u64::from(store.close().is_ok()));
    trace.digest()
}

/// Runs one input; returns the digest of what it observed.
fn run(data: &[u8]) -> u64 {
    let mut src = Src(data);
    let how = src.byte();
    let verify = how & 0x10 != 0;
    let bases = bases();
    match how & 3 {
        // Arbitrary bytes may form a valid file holding any response.
        0 => exercise(src.0.to_vec(), None, verify, false),
        3 => {
            let (mut db, mut log) = bases.logged.clone();
            if how & 0x40 != 0 {
                // Arbitrary bytes as the log: an error or a store, whatever they hold.
                return exercise(db, Some(src.0.to_vec()), verify, false);
            }
            let damaged = !src.is_empty();
            let damage_db = how & 0x20 != 0;
            if damaged {
                damage(if damage_db { &mut db } else { &mut log }, &mut src);
            }
            // The log's entries are checksummed: damage there is never served.
            exercise(db, Some(log), verify, verify || !damaged || !damage_db)
        }
        base => {
            let mut image = if base == 1 {
                bases.clean.clone()
            } else {
                bases.crashed.clone()
            };
            let damaged = !src.is_empty();
            if damaged {
                damage(&mut image, &mut src);
            }
            // A damaged file without verification is opened on the device alone or, with
            // bit 0x40 of the first byte, the default way, with a new log.
            let log = (damaged && !verify && how & 0x40 != 0).then(Vec::new);
            exercise(image, log, verify, verify || !damaged)
        }
    }
}

fuzz_target!(|data: &[u8]| guarded(|| twice(data, run)));
