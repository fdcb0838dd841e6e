//! The read-only inspector (rules O1 to O3): it sees every acknowledged change, the log's
//! included, and writes nothing: not the store file, not its log, no file beside them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idemstore::{Config, Inspector, ManualClock, OpenError, RecordInfo, Store};

use crate::files::{chmod, foreign_redb, logged_crash_image, snapshot};
use crate::support::{T0, key, scope, within};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies fixture `name` (and its log, if it has one) into a new directory.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    let log = format!("{name}.wal");
    if fixture(&log).exists() {
        std::fs::copy(fixture(&log), dir.path().join(&log)).unwrap();
    }
    (dir, path)
}

/// The fixtures' records live from `T0` on, for a day. In-flight records keep their leases at
/// open, so a store opened to compare with the inspector sees the file as it was.
fn at_fixture_time() -> Config {
    Config::builder()
        .clock(ManualClock::new(T0 + 60_000))
        .compactor_interval(Duration::from_secs(3600))
        .release_in_flight_on_open(false)
        .build()
        .unwrap()
}

/// The records as (scope, key, state, token, response), comparable across a store and an
/// inspector.
fn view(records: &[RecordInfo]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{}/{} {:?} {} {:?} {:?}",
                r.scope, r.key, r.state, r.token, r.fingerprint, r.response
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn o1_o2_the_inspector_shows_a_crash_images_logged_records_and_writes_nothing() {
    for name in ["v2-logged.redb", "v2-crashed.redb", "v2-clean.redb"] {
        for verify in [false, true] {
            let (dir, path) = copy_fixture(name);
            let before = snapshot(dir.path());
            let config = Config::builder()
                .clock(ManualClock::new(T0 + 60_000))
                .verify_on_open(verify)
                .build()
                .unwrap();
            let inspector = Inspector::open(&path, config).unwrap();
            let seen = inspector.records(None, 100).unwrap();
            let report = inspector.check().unwrap();
            let got = inspector
                .get(&scope("acct"), &key("fixture-2"))
                .unwrap()
                .unwrap();
            let applied = inspector.log_entries();
            drop(inspector);
            assert_eq!(snapshot(dir.path()), before, "{name}: the files changed");
            assert_eq!(
                applied > 0,
                name == "v2-logged.redb",
                "{name}: {applied} log entries"
            );
            // Five completed records and one in flight; the logged fixture's file holds none
            // of them (the database as of its opening commit): they come from the log.
            assert_eq!(seen.len(), 6, "{name}");
            assert!(report.is_sound(), "{name}: {:?}", report.problems);
            assert_eq!(report.records, 6, "{name}");
            assert_eq!(got.response.unwrap().status(), 200);

            // Exactly what the store sees once it has recovered the file (a copy of it).
            let (_copy, copied) = copy_fixture(name);
            let store = Store::open(&copied, at_fixture_time()).unwrap();
            assert_eq!(
                view(&store.records(None, 100).unwrap()),
                view(&seen),
                "{name}"
            );
            store.close().unwrap();
        }
    }
}

#[test]
fn o1_o2_a_crash_image_with_records_in_the_file_and_in_the_log_is_inspected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = logged_crash_image(dir.path(), "live.redb", 3, 4);
    let before = snapshot(dir.path());
    let inspector = Inspector::open(&path, Config::default()).unwrap();
    assert!(inspector.log_entries() >= 5, "{}", inspector.log_entries());
    let records = inspector.records(None, 100).unwrap();
    let mut names: Vec<String> = records
        .iter()
        .map(|r| format!("{}/{}", r.scope, r.key))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "acct_a/file-0",
            "acct_a/file-1",
            "acct_a/file-2",
            "acct_a/log-0",
            "acct_a/log-1",
            "acct_a/log-2",
            "acct_a/log-3",
            "acct_b/held"
        ]
    );
    let log_3 = inspector
        .get(&scope("acct_a"), &key("log-3"))
        .unwrap()
        .unwrap();
    assert_eq!(log_3.response.unwrap().body(), br#"{"n":3}"#);
    assert!(inspector.check().unwrap().is_sound());
    drop(inspector);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn o1_a_file_without_write_permission_is_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let path = logged_crash_image(dir.path(), "ro.redb", 2, 2);
    let wal = dir.path().join("ro.redb.wal");
    chmod(&path, 0o444);
    chmod(&wal, 0o444);
    chmod(dir.path(), 0o555);
    let before = snapshot(dir.path());
    let outcome = std::panic::catch_unwind(|| {
        let inspector = Inspector::open(&path, Config::default()).unwrap();
        let n = inspector.records(None, 100).unwrap().len();
        let sound = inspector.check().unwrap().is_sound();
        (n, sound)
    });
    let after = snapshot(dir.path());
    chmod(dir.path(), 0o755);
    assert_eq!(outcome.unwrap(), (5, true));
    assert_eq!(after, before);
}

#[test]
fn o1_a_store_open_for_writing_and_an_inspector_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let store = Store::open(&path, Config::default()).unwrap();
    match Inspector::open(&path, Config::default()) {
        Err(OpenError::AlreadyOpen) => {}
        other => panic!("{other:?}"),
    }
    store.close().unwrap();
    let first = Inspector::open(&path, Config::default()).unwrap();
    let second = Inspector::open(&path, Config::default()).unwrap();
    match Store::open(&path, Config::default()) {
        Err(OpenError::AlreadyOpen) => {}
        other => panic!("{other:?}"),
    }
    drop(first);
    match Store::open(&path, Config::default()) {
        Err(OpenError::AlreadyOpen) => {}
        other => panic!("{other:?}"),
    }
    drop(second);
    Store::open(&path, Config::default())
        .unwrap()
        .close()
        .unwrap();

    // A file that needs a repair, which the storage engine's read-only open refuses after it
    // has taken its reader locks: the inspector keeps them.
    let crashed = logged_crash_image(dir.path(), "crashed.redb", 1, 1);
    let inspector = Inspector::open(&crashed, Config::default()).unwrap();
    match Store::open(&crashed, Config::default()) {
        Err(OpenError::AlreadyOpen) => {}
        other => panic!("{other:?}"),
    }
    drop(inspector);
    Store::open(&crashed, Config::default())
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn o3_foreign_files_are_not_idemstore_files_to_the_inspector_and_to_store_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = d.join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let text = d.join("notes.txt");
    std::fs::write(&text, "not a database\n".repeat(100)).unwrap();
    let random = d.join("random.bin");
    let mut rng = crate::sim_disk::Rng::new(7);
    std::fs::write(
        &random,
        (0..10_000)
            .map(|_| rng.next_u64() as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let tiny = d.join("tiny.bin");
    std::fs::write(&tiny, b"x").unwrap();
    let bookings = d.join("bookings.redb");
    foreign_redb(&bookings);
    let no_tables = d.join("no-tables.redb");
    drop(redb::Database::create(&no_tables).unwrap());

    // (file, what Store::open does with it: refuses it untouched, refuses it, or makes a
    // store of it)
    #[derive(PartialEq)]
    enum ByStore {
        RefusedUntouched,
        Refused,
        Opened,
    }
    let cases = [
        (&empty, ByStore::Opened),
        (&text, ByStore::RefusedUntouched),
        (&random, ByStore::RefusedUntouched),
        (&tiny, ByStore::RefusedUntouched),
        // The storage engine's own open and close may rewrite a redb file's header: the store
        // refuses the file before it adds anything, and leaves no log beside it.
        (&bookings, ByStore::Refused),
        // A redb database that never got a table is what a crash leaves between its creation
        // and the store's first commit: the store makes it a store; it is not one yet.
        (&no_tables, ByStore::Opened),
    ];
    for (path, by_store) in cases {
        let before = snapshot(d);
        match Inspector::open(path, Config::default()) {
            Err(e @ OpenError::NotAnIdemstoreFile { .. }) => {
                assert!(e.to_string().contains("not an idemstore"), "{e}")
            }
            other => panic!("{}: {other:?}", path.display()),
        }
        assert_eq!(snapshot(d), before, "{}", path.display());
        let opened = Store::open(path, Config::default());
        if by_store == ByStore::Opened {
            opened.unwrap().close().unwrap();
            continue;
        }
        assert!(
            matches!(opened, Err(OpenError::NotAnIdemstoreFile { .. })),
            "{}: {opened:?}",
            path.display()
        );
        let after = snapshot(d);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{}: no file is created",
            path.display()
        );
        if by_store == ByStore::RefusedUntouched {
            assert_eq!(after, before, "{}", path.display());
        }
    }
    // The foreign database is untouched by the refusal: it still holds its table alone.
    let db = redb::Database::open(&bookings).unwrap();
    use redb::{ReadableDatabase, TableHandle};
    let names: Vec<String> = db
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    assert_eq!(names, ["bookings"]);
}

#[test]
fn o3_damaged_files_are_corrupted_or_answer_and_are_never_written() {
    for name in [
        "v2-zeroed-header.redb",
        "v2-truncated-100.redb",
        "v2-truncated-half.redb",
        "v2-zeroed-page.redb",
        "v2-flipped-record.redb",
        "v2-flipped-response.redb",
        "v2-logged-flipped-log.redb",
        "v1-fuzz-freed-pages.redb",
    ] {
        for verify in [false, true] {
            let (dir, path) = copy_fixture(name);
            let before = snapshot(dir.path());
            let config = Config::builder()
                .clock(ManualClock::new(T0 + 60_000))
                .verify_on_open(verify)
                .build()
                .unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match Inspector::open(&path, config) {
                    Ok(inspector) => {
                        let _ = inspector.records(None, 100);
                        let _ = inspector.check();
                        let _ = inspector.get(&scope("acct"), &key("fixture-0"));
                        "answered".to_owned()
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                OpenError::Corrupted { .. } | OpenError::NeedsMigration { .. }
                            ),
                            "{name}: {e:?}"
                        );
                        format!("{e:?}")
                    }
                }
            }));
            assert!(outcome.is_ok(), "{name}, verify {verify}: panicked");
            if name.contains("zeroed-header") || name.contains("truncated") {
                assert!(
                    outcome.as_ref().unwrap().starts_with("Corrupted"),
                    "{name}: {outcome:?}"
                );
            }
            assert_eq!(snapshot(dir.path()), before, "{name}");
        }
    }
}

#[test]
fn o3_a_format_1_file_is_refused_without_being_migrated() {
    for name in ["v1-clean.redb", "v1-logged.redb", "v1-crashed.redb"] {
        let (dir, path) = copy_fixture(name);
        let before = snapshot(dir.path());
        match Inspector::open(&path, at_fixture_time()) {
            Err(
                e @ OpenError::NeedsMigration {
                    found: 1,
                    current: 4,
                },
            ) => {
                assert!(e.to_string().contains("Store::open"), "{e}")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(snapshot(dir.path()), before, "{name}");
        // Once the store has opened it (and migrated it), it is inspected.
        Store::open(&path, at_fixture_time())
            .unwrap()
            .close()
            .unwrap();
        let inspector = Inspector::open(&path, at_fixture_time()).unwrap();
        assert_eq!(inspector.records(None, 100).unwrap().len(), 6, "{name}");
    }
}

#[test]
fn o2_a_crash_image_without_its_log_is_refused_as_the_store_refuses_it() {
    let (dir, path) = copy_fixture("v2-logged.redb");
    std::fs::remove_file(dir.path().join("v2-logged.redb.wal")).unwrap();
    let before = snapshot(dir.path());
    match Inspector::open(&path, at_fixture_time()) {
        Err(OpenError::Log { detail }) => assert!(detail.contains("missing"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(dir.path()), before);
    // The log of another store: refused as well.
    std::fs::copy(
        fixture("v1-logged.redb.wal"),
        dir.path().join("v2-logged.redb.wal"),
    )
    .unwrap();
    match Inspector::open(&path, at_fixture_time()) {
        Err(OpenError::Log { detail }) => assert!(detail.contains("another"), "{detail}"),
        other => panic!("{other:?}"),
    }
    match Store::open(&path, at_fixture_time()) {
        Err(OpenError::Log { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// O2: a store path that is a symbolic link finds its log beside the file the link points to
/// (where the store wrote it), for the inspector and for `Store::open`, which creates no log
/// beside the link.
#[test]
fn o2_a_symlinked_store_path_finds_the_log_beside_its_target() {
    let real = tempfile::tempdir().unwrap();
    let db = logged_crash_image(real.path(), "live.redb", 2, 3);
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("link.redb");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let before = snapshot(real.path());
    let inspector = Inspector::open(&link, Config::default()).unwrap();
    assert_eq!(inspector.records(None, usize::MAX).unwrap().len(), 6);
    assert!(inspector.log_entries() >= 4);
    drop(inspector);
    assert_eq!(snapshot(real.path()), before, "the inspector wrote");
    let keep_held = Config::builder()
        .release_in_flight_on_open(false)
        .build()
        .unwrap();
    let store = Store::open(&link, keep_held).unwrap();
    assert_eq!(store.records(None, usize::MAX).unwrap().len(), 6);
    store.close().unwrap();
    let beside_link: Vec<_> = std::fs::read_dir(elsewhere.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside_link, ["link.redb"], "a log was made beside the link");
}

/// O3: the inspector refuses a FIFO at the store's path, and never reads a FIFO at its log's,
/// without blocking (opening a FIFO for reading waits for a writer).
#[test]
fn o3_the_inspector_refuses_a_fifo_for_the_file_or_its_log_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.redb");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let opened = within(Duration::from_secs(60), move || {
        Inspector::open(&fifo, Config::default()).map(drop)
    })
    .expect("the open blocked");
    match opened {
        Err(OpenError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("FIFO"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A crash image (its log must be read) whose log is a FIFO: refused, not waited on.
    let db = logged_crash_image(dir.path(), "live.redb", 2, 3);
    let log = dir.path().join("live.redb.wal");
    std::fs::remove_file(&log).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&log)
        .status()
        .unwrap();
    assert!(made.success());
    let opened = within(Duration::from_secs(60), move || {
        Inspector::open(&db, Config::default()).map(drop)
    })
    .expect("the open blocked");
    assert!(opened.is_err(), "{opened:?}");
}

/// O3 for the store itself: `Store::open` refuses a FIFO at the store's path or at its log's,
/// naming it, without blocking; neither is turned into a store.
#[test]
fn o3_store_open_refuses_a_fifo_for_the_file_or_its_log_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let mkfifo = |path: &std::path::Path| {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success());
    };
    let fifo = dir.path().join("fifo.redb");
    mkfifo(&fifo);
    let beside = dir.path().join("beside.redb");
    mkfifo(&dir.path().join("beside.redb.wal"));
    for (path, named) in [(&fifo, "fifo.redb"), (&beside, "beside.redb.wal")] {
        let path = path.clone();
        let opened = within(Duration::from_secs(60), move || {
            idemstore::Store::open(&path, Config::default()).map(drop)
        })
        .expect("the open blocked");
        match opened {
            Err(OpenError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
                let text = e.to_string();
                assert!(text.contains("FIFO") && text.contains(named), "{text}");
            }
            other => panic!("{named}: {other:?}"),
        }
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(!beside.exists(), "a store was made beside a FIFO log");
}
