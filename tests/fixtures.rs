//! Committed database files in `tests/fixtures/` (C10, C11, C12).
//!
//! `v1-clean.redb` was written by format version 1 with the records [`known`] lists, and
//! `v2-clean.redb` by format version 2 with the same records; every later build must open both
//! and replay those records byte for byte, which pins format compatibility (a format 1 file is
//! migrated at open). `vN-logged.redb` with `vN-logged.redb.wal` is what a power loss leaves of
//! a store that acknowledged the same records through its write-ahead log: the database as of
//! its opening commit and the log holding every record, which pins the log's format too. When
//! the format changes, the generator writes the new version's files beside the old ones, which
//! stay. The other files are damaged copies or a crash image: each must give
//! `OpenError::Corrupted` or a store that answers every key with a value (a replay of the right
//! response, an error, or an execution), never a panic and never a wrong response.
//!
//! Write missing fixtures (existing files are kept; delete one to write it again, which a file
//! of an older format version must never be):
//! `IDEMSTORE_WRITE_FIXTURES=1 cargo test --test integration fixtures::write_fixtures -- --ignored`

use std::path::{Path, PathBuf};
use std::time::Duration;

use idemstore::{
    Begin, Config, ConfigBuilder, Durability, ManualClock, OpenError, Response, State, Store,
};

use crate::sim_disk::{Mode, SimDisk};
use crate::support::{T0, execute, fp, key, scope};

/// A record the clean file holds: (scope, key, request body, response or in flight).
struct Known {
    scope: &'static str,
    key: &'static str,
    body: &'static str,
    response: Option<Response>,
    token: u64,
}

/// The records of `v1-clean.redb`, in the order they were written.
fn known() -> Vec<Known> {
    let json = |status: u16, body: &str| {
        Response::new(
            status,
            [("content-type", "application/json")],
            body.to_owned(),
        )
    };
    vec![
        Known {
            scope: "acct",
            key: "fixture-0",
            body: r#"{"amount":100}"#,
            response: Some(json(201, r#"{"id":"pay_0"}"#)),
            token: 1,
        },
        Known {
            scope: "acct",
            key: "fixture-1",
            body: r#"{"amount":1.5e3}"#,
            response: Some(Response::new(
                202,
                [("x-one", b"1".to_vec()), ("x-bin", vec![0, 255, 10, 13])],
                vec![0u8, 1, 2, 254, 255],
            )),
            token: 2,
        },
        Known {
            scope: "acct",
            key: "fixture-2",
            body: "not json",
            response: Some(Response::new(
                200,
                [("content-type", "text/plain")],
                "large response body, spanning pages. ".repeat(200),
            )),
            token: 3,
        },
        Known {
            scope: "acct",
            key: "fixture-3",
            body: "{}",
            response: Some(Response::new(204, Vec::<(&str, &str)>::new(), "")),
            token: 4,
        },
        Known {
            scope: "other",
            key: "fixture-0",
            body: r#"{"amount":100}"#,
            response: Some(json(201, r#"{"id":"other_0"}"#)),
            token: 5,
        },
        Known {
            scope: "acct",
            key: "fixture-in-flight",
            body: r#"{"amount":7}"#,
            response: None,
            token: 7,
        },
    ]
}

/// The format versions with committed fixtures, oldest first; the generator writes the last.
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// The name of a fixture of format `version`: `v2-clean.redb` for (`v2`, `clean.redb`).
fn named(version: &str, name: &str) -> String {
    format!("{version}-{name}")
}

/// The key written and then purged (token 6): absent from the clean file.
const PURGED: &str = "fixture-purged";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn builder(clock: &ManualClock, verify: bool) -> ConfigBuilder {
    Config::builder()
        .clock(clock.clone())
        .compactor_interval(Duration::from_secs(3600))
        // The fixtures' in-flight records must be found as they were written.
        .release_in_flight_on_open(false)
        .verify_on_open(verify)
}

fn config(clock: &ManualClock, verify: bool) -> Config {
    builder(clock, verify).build().unwrap()
}

/// Copies a fixture (and its log, if it has one) into a temporary directory (opening writes to
/// the files) and opens it at `T0` plus a minute, within every record's lifetime.
fn open_copy(name: &str, verify: bool) -> (tempfile::TempDir, Result<Store, OpenError>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(name);
    std::fs::copy(dir().join(name), &path)
        .unwrap_or_else(|e| panic!("fixture {name} is missing: {e}"));
    let log = format!("{name}.wal");
    if dir().join(&log).exists() {
        std::fs::copy(dir().join(&log), tmp.path().join(&log)).unwrap();
    }
    let clock = ManualClock::new(T0 + 60_000);
    let opened = Store::open(&path, config(&clock, verify));
    (tmp, opened)
}

fn replace_all(bytes: &mut [u8], needle: &[u8], f: impl Fn(&mut [u8])) -> usize {
    let mut found = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        let start = at + pos;
        f(&mut bytes[start..start + needle.len()]);
        found += 1;
        at = start + needle.len();
    }
    found
}

/// Writes every fixture of the current format version.
#[test]
#[ignore = "writes tests/fixtures/; run with IDEMSTORE_WRITE_FIXTURES=1"]
fn write_fixtures() {
    if std::env::var_os("IDEMSTORE_WRITE_FIXTURES").is_none() {
        return;
    }
    let out = dir();
    std::fs::create_dir_all(&out).unwrap();
    let version = VERSIONS[VERSIONS.len() - 1];
    // Existing files are kept: they pin what the build that wrote them wrote.
    let write = |name: &str, data: &[u8]| {
        let path = out.join(named(version, name));
        if !path.exists() {
            std::fs::write(path, data).unwrap();
        }
    };
    let clean = out.join(named(version, "clean.redb"));
    if !clean.exists() {
        let clock = ManualClock::new(T0);
        let store = Store::open(
            &clean,
            Config::builder()
                .clock(clock.clone())
                .compactor_interval(Duration::from_secs(3600))
                .release_in_flight_on_open(false)
                .durability(Durability::Immediate)
                .write_ahead_log(false)
                .build()
                .unwrap(),
        )
        .unwrap();
        let in_flight = write_known(&store, &clock);
        // The file as a crash after the last commit leaves it: not closed, the in-flight key
        // held.
        let crashed = std::fs::read(&clean).unwrap();
        // Close with the reservation still held: the file keeps it in flight.
        store.close().unwrap();
        drop(in_flight);
        write("crashed.redb", &crashed);
    }
    write_damaged(&std::fs::read(&clean).unwrap(), &write);
    if !out.join(named(version, "logged.redb")).exists() {
        write_logged(&write);
    }
    // The logged pair with one byte of the log flipped, in the middle of its entries.
    let db = std::fs::read(out.join(named(version, "logged.redb"))).unwrap();
    let mut log = std::fs::read(out.join(named(version, "logged.redb.wal"))).unwrap();
    let at = log
        .windows(9)
        .position(|w| w == b"fixture-2")
        .expect("the log holds fixture-2");
    log[at] ^= 0x20;
    write("logged-flipped-log.redb", &db);
    write("logged-flipped-log.redb.wal", &log);
}

/// Writes the known records through a write-ahead log, then what a power loss that keeps no
/// unsynced write of either disk leaves.
fn write_logged(write: &dyn Fn(&str, &[u8])) {
    let clock = ManualClock::new(T0);
    let db = SimDisk::new(Mode::Subset);
    let log = db.sibling(Vec::new());
    let store = Store::open_with_backends(
        db.clone(),
        log.clone(),
        Config::builder()
            .clock(clock.clone())
            .compactor_interval(Duration::from_secs(3600))
            .release_in_flight_on_open(false)
            .write_ahead_log(true)
            .log_capacity(64 << 10)
            .checkpoint_interval(Duration::from_secs(3600))
            .build()
            .unwrap(),
    )
    .unwrap();
    let held = write_known(&store, &clock);
    assert_eq!(
        store.stats().checkpoints,
        0,
        "the records must live in the log only"
    );
    write("logged.redb", &db.synced_image());
    write("logged.redb.wal", &log.synced_image());
    drop(held);
    drop(store);
}

/// Writes the known records (and the purged key) to `store`; returns the reservation of the
/// in-flight one.
fn write_known(store: &Store, clock: &ManualClock) -> Option<idemstore::Reservation> {
    let mut in_flight = None;
    for k in known() {
        if k.response.is_none() {
            // Token 6 goes to the purged key, just before the in-flight one.
            let r = execute(
                store
                    .begin(&scope("acct"), &key(PURGED), &fp("purged"))
                    .unwrap(),
            );
            assert_eq!(r.token(), 6);
            r.complete(Response::new(201, [("a", "b")], "purged"))
                .unwrap();
            assert!(store.purge(&scope("acct"), &key(PURGED)).unwrap());
        }
        let r = execute(
            store
                .begin(&scope(k.scope), &key(k.key), &fp(k.body))
                .unwrap(),
        );
        assert_eq!(r.token(), k.token, "{}", k.key);
        match k.response {
            Some(resp) => {
                r.complete(resp).unwrap();
            }
            None => in_flight = Some(r),
        }
        clock.advance(Duration::from_millis(10));
    }
    in_flight
}

/// Writes the damaged copies of the clean file's `bytes`.
fn write_damaged(bytes: &[u8], write: &dyn Fn(&str, &[u8])) {
    write("truncated-half.redb", &bytes[..bytes.len() / 2]);
    write("truncated-100.redb", &bytes[..100]);
    let mut zeroed = bytes.to_vec();
    zeroed[..512].fill(0);
    write("zeroed-header.redb", &zeroed);
    // Every copy of fixture-3's record (pages are copied on write): its version byte flipped.
    let mut flipped = bytes.to_vec();
    let needle = b"acctfixture-3";
    let mut hits = 0;
    let mut at = 0;
    while let Some(pos) = flipped[at..]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        let start = at + pos;
        flipped[start - 80] ^= 0xff;
        hits += 1;
        at = start + needle.len();
    }
    assert!(hits > 0);
    write("flipped-record.redb", &flipped);
    // One byte of fixture-2's response body changed, in every copy.
    let mut body = bytes.to_vec();
    let n = replace_all(&mut body, b"spanning pages. large", |w| w[0] = b'S');
    assert!(n > 0);
    write("flipped-response.redb", &body);
    // Every 4 KiB page holding a copy of fixture-0's record zeroed (pages are copied on
    // write, and which copy is live depends on the layout; format 1's file had the live one
    // last, and only that page was zeroed in `v1-zeroed-page.redb`).
    let mut page = bytes.to_vec();
    let starts: Vec<usize> = bytes
        .windows(13)
        .enumerate()
        .filter(|(_, w)| *w == b"acctfixture-0")
        .map(|(pos, _)| pos / 4096 * 4096)
        .collect();
    assert!(!starts.is_empty());
    for start in starts {
        page[start..start + 4096].fill(0);
    }
    write("zeroed-page.redb", &page);
}

/// Checks a store opened from a fixture: every known record either replays exactly or the
/// store says it cannot (an error); the in-flight key is in flight; unless `may_serve_damage`,
/// nothing replays a response other than the one stored for its key. Returns how many known
/// records replayed exactly.
fn check_answers(store: &Store, name: &str, damaged: bool, may_serve_damage: bool) -> usize {
    let same = |got: Option<&Response>, want: Option<&Response>, what: &str| {
        assert!(
            may_serve_damage || got == want,
            "{name}: {what}: {got:?}, stored {want:?}"
        );
        got == want
    };
    let mut replayed = 0;
    for k in known() {
        let (s, kk) = (scope(k.scope), key(k.key));
        let info = store.get(&s, &kk);
        match (&info, &k.response) {
            (Ok(Some(i)), Some(want)) => {
                assert_eq!(i.state, State::Completed, "{name}: {}", k.key);
                same(i.response.as_ref(), Some(want), k.key);
                if !damaged {
                    assert_eq!(i.token, k.token, "{name}: {}", k.key);
                    assert_eq!(i.fingerprint, fp(k.body), "{name}: {}", k.key);
                }
            }
            (Ok(Some(i)), None) => assert_eq!(i.state, State::InFlight, "{name}: {}", k.key),
            (Ok(None), _) | (Err(_), _) => {
                assert!(damaged, "{name}: {} is {info:?}", k.key);
            }
        }
        match store.begin(&s, &kk, &fp(k.body)) {
            Ok(Begin::Replay(got)) => {
                if same(Some(&got), k.response.as_ref(), k.key) {
                    replayed += 1;
                }
            }
            Ok(Begin::InProgress { .. }) => {
                assert!(k.response.is_none() || damaged, "{name}: {}", k.key)
            }
            other => assert!(damaged, "{name}: {}: {other:?}", k.key),
        }
    }
    let purged = store.get(&scope("acct"), &key(PURGED));
    assert!(
        matches!(purged, Ok(None)) || damaged,
        "{name}: the purged key is {purged:?}"
    );
    replayed
}

#[test]
fn c10_c12_the_clean_files_of_every_format_replay_their_known_records() {
    for (version, verify) in VERSIONS.into_iter().flat_map(|v| [(v, false), (v, true)]) {
        let name = named(version, "clean.redb");
        let (_tmp, opened) = open_copy(&name, verify);
        let store = opened.unwrap();
        let replayed = check_answers(&store, &name, false, false);
        assert_eq!(replayed, known().len() - 1);
        // A clean close: no token jump, the next token follows the last one written.
        let r = execute(
            store
                .begin(&scope("acct"), &key("new"), &fp("new"))
                .unwrap(),
        );
        assert_eq!(r.token(), 8);
        drop(r);
        store.close().unwrap();
    }
}

#[test]
fn c10_c12_the_logged_files_of_every_format_replay_every_record_from_the_log() {
    for (version, verify) in VERSIONS.into_iter().flat_map(|v| [(v, false), (v, true)]) {
        let name = named(version, "logged.redb");
        let (_tmp, opened) = open_copy(&name, verify);
        let store = opened.unwrap();
        assert!(store.stats().log_entries_replayed > 0);
        assert_eq!(
            check_answers(&store, &name, false, false),
            known().len() - 1
        );
        store.close().unwrap();
    }
}

#[test]
fn c11_the_crash_image_fixtures_are_repaired_and_keep_every_record() {
    for (version, verify) in VERSIONS.into_iter().flat_map(|v| [(v, false), (v, true)]) {
        let name = named(version, "crashed.redb");
        let (_tmp, opened) = open_copy(&name, verify);
        let store = opened.unwrap();
        assert_eq!(
            check_answers(&store, &name, false, false),
            known().len() - 1
        );
        // C8: after a crash the token counter jumps.
        let r = execute(
            store
                .begin(&scope("acct"), &key("new"), &fp("new"))
                .unwrap(),
        );
        assert!(r.token() > 1 << 32, "token {}", r.token());
    }
}

#[test]
fn c11_damaged_fixtures_give_corrupted_or_a_store_that_never_lies() {
    // (file, whether a plain open refuses it, whether an open with verification does, whether
    // a plain open may serve the damaged bytes). A response blob carries no checksum of its own
    // and the storage engine checks page checksums only at repair and verification, so a
    // changed byte in a stored body is served by a plain open: `verify_on_open` is the defence
    // (docs/reliability.md, "Not guaranteed").
    let cases = [
        ("truncated-half.redb", true, true, false),
        ("truncated-100.redb", true, true, false),
        ("zeroed-header.redb", true, true, false),
        ("flipped-record.redb", false, true, false),
        ("flipped-response.redb", false, true, true),
        ("zeroed-page.redb", true, true, false),
        // The log's entries are checksummed: replay stops at the damaged one.
        ("logged-flipped-log.redb", false, false, false),
    ];
    let cases = VERSIONS.into_iter().flat_map(|v| {
        cases.map(|(name, plain, verify, serves)| (named(v, name), plain, verify, serves))
    });
    for (name, plain_refused, verify_refused, plain_serves_damage) in cases {
        let name = name.as_str();
        for (verify, expect_refused) in [(false, plain_refused), (true, verify_refused)] {
            let may_serve_damage = !verify && plain_serves_damage;
            let outcome = std::panic::catch_unwind(|| {
                let (_tmp, opened) = open_copy(name, verify);
                match opened {
                    Err(OpenError::Corrupted { detail }) => {
                        assert!(!detail.is_empty());
                        None
                    }
                    Err(other) => panic!("{name}: not a clear Corrupted error: {other:?}"),
                    Ok(store) => {
                        let n = check_answers(&store, name, true, may_serve_damage);
                        let _ = store.close();
                        Some(n)
                    }
                }
            });
            let Ok(result) = outcome else {
                panic!("{name} (verify_on_open {verify}): panicked");
            };
            eprintln!("fixture {name}, verify_on_open {verify}: {result:?} replayed");
            assert_eq!(result.is_none(), expect_refused, "{name}, verify {verify}");
        }
    }
}

/// `v1-fuzz-freed-pages.redb`: a cleanly closed file the `open_file` fuzz target damaged
/// (input `IQMAMRAD6BH/////Qf//Gv+K////5wtPThhprW1fcGFnZXNfdW5yZWFjaGFicGx4AQ==`, the image
/// dumped from the target, kept as it is). Its damage is in the storage engine's list of freed
/// pages. With format 1's code, an open without `verify_on_open` and without the log made the
/// storage engine panic, then panic again while unwinding, which aborted the process (a
/// process that aborts ends this test binary, so a regression fails the whole run). Now every
/// open gives a value: `verify_on_open` refuses the file, and a plain open, with or without the
/// log, gives an error or a store that answers with errors and never serves a wrong response.
#[test]
fn c12_a_damaged_freed_page_list_is_refused_by_verify_on_open_and_never_aborts() {
    let (_tmp, opened) = open_copy("v1-fuzz-freed-pages.redb", true);
    match opened {
        Err(OpenError::Corrupted { detail }) => assert!(!detail.is_empty()),
        other => panic!("expected Corrupted, got {:?}", other.map(|_| "a store")),
    }
    for log in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("freed-pages.redb");
        std::fs::copy(dir().join("v1-fuzz-freed-pages.redb"), &path).unwrap();
        let config = builder(&ManualClock::new(T0 + 60_000), false)
            .write_ahead_log(log)
            .build()
            .unwrap();
        match Store::open(&path, config) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(store) => {
                check_answers(&store, "v1-fuzz-freed-pages", true, false);
                let _ = store.close();
            }
        }
    }
}

/// `v3-fuzz-page-order.redb`: the cleanly closed file of the `open_file` fuzz target (24 keys
/// of scope `acct`) with one bit flipped (byte `0x6002`, input
/// `fuzz/corpus/open_file/seed-finding-page-order-alloc`): a page number in the storage
/// engine's allocator state now claims a page of order 17, 512 MiB. Opened without
/// `verify_on_open`, the engine sizes its read buffer from that order and fills it with zeros
/// before the read fails, so the open peaks at about 520 MiB of resident memory for a 140 KiB
/// file (and up to 4 GiB for order 20) before it reports `Corrupted`: the `open_file` fuzz
/// target's unexplained jumps to 2 GiB were this, an order-19 page. The allocation is inside the
/// storage engine (`TransactionalMemory::get_page`, redb 4.6 and 5.0), out of reach of this
/// crate. `verify_on_open(true)` refuses the file without that read.
#[test]
fn c12_a_damaged_page_order_is_refused_by_verify_on_open() {
    for log in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("page-order.redb");
        std::fs::copy(dir().join("v3-fuzz-page-order.redb"), &path).unwrap();
        let config = builder(&ManualClock::new(T0), true)
            .write_ahead_log(log)
            .build()
            .unwrap();
        match Store::open(&path, config) {
            Err(OpenError::Corrupted { detail }) => assert!(!detail.is_empty()),
            other => panic!("expected Corrupted, got {:?}", other.map(|_| "a store")),
        }
    }
}

/// The memory an open of `v3-fuzz-page-order.redb` without `verify_on_open` takes, measured in
/// a child process (Linux: `VmHWM`). Ignored while the storage engine sizes its read buffer
/// from the damaged page order before reading: it fails now (about 520 MiB), and is the
/// regression test for a build whose engine bounds that read by the file's length.
#[test]
#[ignore = "the storage engine allocates the damaged page's claimed size before reading it"]
#[cfg(target_os = "linux")]
fn c12_opening_a_damaged_page_order_takes_little_memory() {
    const CHILD: &str = "IDEMSTORE_PAGE_ORDER_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("page-order.redb");
        std::fs::copy(dir().join("v3-fuzz-page-order.redb"), &path).unwrap();
        let config = builder(&ManualClock::new(T0), false)
            .write_ahead_log(false)
            .build()
            .unwrap();
        let opened = Store::open(&path, config);
        assert!(matches!(opened, Err(OpenError::Corrupted { .. })));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        println!("peak {peak}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fixtures::c12_opening_a_damaged_page_order_takes_little_memory",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let kib: u64 = stdout
        .lines()
        .find_map(|l| l.split("peak VmHWM:").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {stdout}"));
    assert!(kib < 64 << 10, "the open peaked at {kib} KiB");
}

/// Opening a format 1 or 2 file migrates it: the store's own check finds the new tables sound
/// (the live records of each scope counted, C13), and once closed the file says format 4 and
/// no longer holds format 1's tables.
#[test]
fn c10_c12_c13_files_of_formats_1_and_2_are_migrated_to_format_4_at_open() {
    for name in ["v1-clean.redb", "v2-clean.redb"] {
        migrated(name);
    }
}

fn migrated(name: &str) {
    let (tmp, opened) = open_copy(name, false);
    let store = opened.unwrap();
    let report = store.check().unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
    assert_eq!(report.records, known().len() as u64);
    assert_eq!(report.responses, known().len() as u64 - 1);
    assert_eq!(report.expiry_entries, known().len() as u64);
    store.close().unwrap();

    use redb::{ReadableDatabase, ReadableTable, TableHandle};
    let db = redb::Database::open(tmp.path().join(name)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("idem_meta");
    let version = txn.open_table(meta).unwrap().get("format_version").unwrap();
    assert_eq!(version.map(|g| g.value()), Some(4));
    let counts: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("idem_scope_counts");
    let counted: u64 = txn
        .open_table(counts)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| e.unwrap().1.value())
        .sum();
    assert_eq!(counted, known().len() as u64, "{name}");
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    assert!(
        names.contains(&"idem_expiry_responses".to_owned()),
        "{names:?}"
    );
    for old in ["idem_responses", "idem_expiry"] {
        assert!(
            !names.contains(&old.to_owned()),
            "{old} is left in {names:?}"
        );
    }
}

/// A power loss at any write or sync of the migrating open leaves a file that the next open
/// migrates (again, or for the first time) with every record intact: the migration commits with
/// the open's first transaction or not at all.
#[test]
fn c10_c11_power_lost_during_the_migration_loses_nothing() {
    use crate::sim_disk::Rng;
    let image = std::fs::read(dir().join("v1-clean.redb")).unwrap();
    let open = |disk: &SimDisk| {
        let config = builder(&ManualClock::new(T0 + 60_000), false)
            .write_ahead_log(false)
            .build()
            .unwrap();
        Store::open_with_backend(disk.clone(), config)
    };
    // How many mutating calls a whole migrating open and close makes.
    let total = {
        let disk = SimDisk::from_image(image.clone());
        open(&disk).unwrap().close().unwrap();
        disk.mutations()
    };
    assert!(total > 2, "{total}");
    let mut rng = Rng::new(0x319_4a7e);
    for n in 1..=total {
        for mode in [Mode::Subset, Mode::Torn] {
            let disk = SimDisk::from_image(image.clone());
            disk.arm(n);
            if let Ok(store) = open(&disk) {
                let _ = store.close();
            }
            let after = SimDisk::from_image(disk.crash_image(&mut rng, mode));
            let store = open(&after).unwrap_or_else(|e| panic!("call {n}, {mode:?}: {e}"));
            let name = format!("v1-clean, power lost at call {n} ({mode:?})");
            assert_eq!(
                check_answers(&store, &name, false, false),
                known().len() - 1,
                "{name}"
            );
            let report = store.check().unwrap();
            assert!(report.is_sound(), "{name}: {:?}", report.problems);
        }
    }
    eprintln!(
        "migration: {total} mutating calls in a migrating open and close; power lost at each, \
         in both image modes: {} reopened images, every record intact",
        2 * total
    );
}
