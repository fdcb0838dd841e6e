//! Files that are not what they should be: an error, never a panic (C11, C12).

use idemstore::{Config, OpenError, Store};

use crate::support::*;

fn make_store_file(dir: &std::path::Path, wal: bool) -> std::path::PathBuf {
    let path = dir.join(format!("good-{wal}.redb"));
    // No checkpoint and no compactor pass by time: the file's layout then does not depend on
    // the machine's speed.
    let cfg = Config::builder()
        .write_ahead_log(wal)
        .checkpoint_interval(std::time::Duration::from_secs(3600))
        .compactor_interval(std::time::Duration::from_secs(3600))
        .build()
        .unwrap();
    let store = Store::open(&path, cfg).unwrap();
    for i in 0..200 {
        execute(
            store
                .begin(&scope("acct"), &key(&format!("k{i}")), &fp("1"))
                .unwrap(),
        )
        .complete(resp(200, &"r".repeat(100)))
        .unwrap();
    }
    store.close().unwrap();
    path
}

#[test]
fn c11_garbage_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0x5a; 10_000]).unwrap();
    assert!(Store::open(&path, Config::default()).is_err());
}

#[test]
fn c11_damaged_store_files_give_errors_not_panics() {
    damaged_files(false);
}

#[test]
fn c11_damaged_store_files_written_through_the_log_give_errors_not_panics() {
    damaged_files(true);
}

/// Damages a file written with or without the write-ahead log. The log of a cleanly closed
/// store holds nothing the file lacks, so each damaged file is opened with a fresh log.
fn damaged_files(wal: bool) {
    let dir = tempfile::tempdir().unwrap();
    let good = make_store_file(dir.path(), wal);
    let bytes = std::fs::read(&good).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "truncated to half".into(),
            bytes[..bytes.len() / 2].to_vec(),
        ),
        ("truncated to 100 bytes".into(), bytes[..100].to_vec()),
        ("empty".into(), Vec::new()),
    ];
    let mut zero_header = bytes.clone();
    zero_header[..4096.min(bytes.len())].fill(0);
    cases.push(("zeroed header".into(), zero_header));
    // Flip one byte in each page of the file, one file per page.
    for page in (4096..bytes.len()).step_by(4096) {
        let mut flipped = bytes.clone();
        flipped[page + 123] ^= 0xff;
        cases.push((format!("flipped byte in page at {page}"), flipped));
    }
    let mut refused = 0;
    for (verify, name) in [(false, "plain open"), (true, "verify_on_open")] {
        for (case, data) in &cases {
            let path = dir.path().join("case.redb");
            std::fs::write(&path, data).unwrap();
            let _ = std::fs::remove_file(dir.path().join("case.redb.wal"));
            let cfg = Config::builder()
                .verify_on_open(verify)
                .write_ahead_log(wal)
                .build()
                .unwrap();
            // Whatever the outcome, it must be a value, and a store that opens must answer
            // every key with a value (a replay, an error), not a panic.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let opened = Store::open(&path, cfg);
                if case.starts_with("truncated") || case == "zeroed header" {
                    assert!(
                        matches!(opened, Err(OpenError::Corrupted { .. })),
                        "{name}, {case}: {:?}",
                        opened.as_ref().err()
                    );
                }
                if verify && case.starts_with("flipped") && opened.is_err() {
                    refused += 1;
                }
                if let Ok(store) = opened {
                    for i in 0..200 {
                        let _ = store.begin(&scope("acct"), &key(&format!("k{i}")), &fp("1"));
                        let _ = store.get(&scope("acct"), &key(&format!("k{i}")));
                    }
                    let _ = store.close();
                }
            }));
            assert!(outcome.is_ok(), "{name}, {case}: panicked");
        }
    }
    // With verification, a flipped byte in a live page is found at open. The file also holds
    // pages that no commit refers to any more (copy-on-write leaves the old ones free until
    // they are reused), where a flipped byte harms nothing; how many varies between runs
    // (42 to 72 pages here, 43% to 76% of them live), so the bound is a third: a check that
    // found nothing would refuse none.
    let live_share = 3;
    eprintln!("verify_on_open refused {refused} of {} files", cases.len());
    assert!(
        refused * live_share > cases.len(),
        "verify_on_open refused only {refused} of {} files",
        cases.len()
    );
}

#[test]
fn c11_a_foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("idem_records");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    match Store::open(&path, Config::default()) {
        Err(OpenError::NotAnIdemstoreFile { detail }) => assert!(!detail.is_empty()),
        other => panic!("{other:?}"),
    }
}

/// The names of a directory's files.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn c11_o3_a_file_that_is_not_redb_is_not_an_idemstore_file_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("notes.txt", "not a database\n".repeat(1000).into_bytes()),
        ("garbage.redb", vec![0x5a; 10_000]),
        ("one-byte.redb", b"x".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let before = listing(dir.path());
        match Store::open(&path, Config::default()) {
            Err(OpenError::NotAnIdemstoreFile { detail }) => {
                assert!(detail.contains("not a redb database"), "{name}: {detail}")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}");
        assert_eq!(listing(dir.path()), before, "{name}: no log is created");
    }
    // A redb file whose header was zeroed is damaged, not foreign.
    let good = make_store_file(dir.path(), false);
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[..512].fill(0);
    std::fs::write(&good, &bytes).unwrap();
    match Store::open(&good, Config::default()) {
        Err(OpenError::Corrupted { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn c11_o3_another_programs_redb_file_is_refused_and_gets_no_table_and_no_log() {
    use redb::{ReadableDatabase, TableHandle};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bookings.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("bookings");
            txn.open_table(def).unwrap().insert("bk_1", "{}").unwrap();
        }
        txn.commit().unwrap();
    }
    match Store::open(&path, Config::default()) {
        Err(OpenError::NotAnIdemstoreFile { detail }) => {
            assert!(detail.contains("bookings"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(listing(dir.path()), ["bookings.redb"], "no log is left");
    let db = redb::Database::open(&path).unwrap();
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
fn c11_a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store_file(dir.path(), true);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("idem_meta");
            txn.open_table(def)
                .unwrap()
                .insert("format_version", 99)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    match Store::open(&path, Config::default()) {
        Err(OpenError::UnsupportedFormat {
            found: 99,
            supported: 4,
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// Randomly damaged files (C11): `IDEMSTORE_DAMAGED_FILES` of them (default 300), seeded by
/// `IDEMSTORE_DAMAGED_SEED`. Each is a real store file (closed cleanly, or as a crash leaves
/// it) with bytes flipped, sectors or pages zeroed or copied over others, or the end cut off,
/// opened with and without `verify_on_open` on a simulated disk. Every outcome must be a value:
/// a clear `OpenError`, or a store whose every call returns; with verification, a store that
/// opens never replays a response other than the one stored for its key.
#[test]
fn c11_randomly_damaged_files_give_errors_or_answers_never_panics() {
    use crate::sim_disk::{Mode, Rng, SimDisk};
    use idemstore::{Begin, ManualClock, Response};
    use std::collections::BTreeMap;
    use std::time::Duration;

    const KEYS: usize = 40;
    let files = std::env::var("IDEMSTORE_DAMAGED_FILES")
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(300);
    let seed = std::env::var("IDEMSTORE_DAMAGED_SEED")
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(0xDA4A_6ED0);
    let config = |verify: bool| {
        Config::builder()
            .clock(ManualClock::new(T0))
            .compactor_interval(Duration::from_secs(3600))
            .index_capacity(64)
            .verify_on_open(verify)
            .build()
            .unwrap()
    };
    let response = |i: usize| {
        (i % 4 != 3).then(|| {
            Response::new(
                200 + i as u16,
                [("content-type", "text/plain")],
                format!("body {i} ").repeat(1 + i * 13),
            )
        })
    };
    let k = |i: usize| key(&format!("k{i}"));
    let f = |i: usize| fp(&format!("{{\"i\":{i}}}"));

    // The base files.
    let disk = SimDisk::new(Mode::Subset);
    let store = Store::open_with_backend(disk.clone(), config(false)).unwrap();
    let mut held = Vec::new();
    for i in 0..KEYS {
        let r = execute(store.begin(&scope("acct"), &k(i), &f(i)).unwrap());
        match response(i) {
            Some(resp) => {
                r.complete(resp).unwrap();
            }
            None => held.push(r),
        }
    }
    let crashed = disk.crash_image(&mut Rng::new(1), Mode::Subset);
    drop(held);
    store.close().unwrap();
    let clean = disk.crash_image(&mut Rng::new(1), Mode::Subset);

    let mut rng = Rng::new(seed);
    let mut outcomes = BTreeMap::<String, u64>::new();
    let mut panics = Vec::new();
    let started = std::time::Instant::now();
    for case in 0..files {
        let mut image = if rng.chance(1, 2) {
            clean.clone()
        } else {
            crashed.clone()
        };
        let len = image.len() as u64;
        let damage = rng.below(6);
        match damage {
            0 => {
                for _ in 0..rng.range(1, 8) {
                    image[rng.below(len) as usize] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let at = rng.below(len / 512) as usize * 512;
                image[at..at + 512].fill(0);
            }
            2 => {
                let at = rng.below(len / 4096) as usize * 4096;
                image[at..at + 4096].fill(0);
            }
            3 => image.truncate(rng.below(len) as usize),
            4 => {
                let from = rng.below(len / 4096) as usize * 4096;
                let to = rng.below(len / 4096) as usize * 4096;
                let page = image[from..from + 4096].to_vec();
                image[to..to + 4096].copy_from_slice(&page);
            }
            _ => {
                let at = rng.below(len - 64) as usize;
                for b in &mut image[at..at + 64] {
                    *b = rng.next_u64() as u8;
                }
            }
        }
        let verify = rng.chance(1, 2);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let opened = Store::open_with_backend(SimDisk::from_image(image), config(verify));
            let store = match opened {
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            OpenError::Corrupted { .. }
                                | OpenError::NotAnIdemstoreFile { .. }
                                | OpenError::UnsupportedFormat { .. }
                        ),
                        "not a clear error: {e:?}"
                    );
                    let kind = format!("{e:?}");
                    return format!("refused: {}", kind.split([' ', '{']).next().unwrap());
                }
                Ok(store) => store,
            };
            let mut errors = 0;
            for i in 0..KEYS {
                match store.get(&scope("acct"), &k(i)) {
                    Ok(Some(info)) if verify => {
                        if let Some(got) = &info.response {
                            assert_eq!(Some(got), response(i).as_ref(), "k{i}: wrong response");
                        }
                    }
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
                match store.begin(&scope("acct"), &k(i), &f(i)) {
                    Ok(Begin::Replay(got)) if verify => {
                        assert_eq!(Some(&got), response(i).as_ref(), "k{i}: wrong replay");
                    }
                    Ok(Begin::Execute(r)) => {
                        let _ = r.complete(Response::new(201, [("a", "b")], "again"));
                    }
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
            }
            let _ = store.close();
            if errors == 0 {
                "opened, every key answered".to_owned()
            } else {
                "opened, some keys answered with an error".to_owned()
            }
        }));
        match outcome {
            Ok(kind) => {
                let plain = if verify {
                    "verify_on_open"
                } else {
                    "plain open"
                };
                *outcomes.entry(format!("{plain}, {kind}")).or_default() += 1;
            }
            Err(p) => panics.push(format!(
                "case {case} (damage {damage}, verify {verify}): {:?}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
            )),
        }
    }
    eprintln!(
        "damaged files: seed {seed:#x}, {files} files in {:.1?}: {outcomes:?}, {} panics",
        started.elapsed(),
        panics.len()
    );
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}
