//! Files that are not what they should be: an error, never a panic (C11, C12).

use idemstore::{Config, OpenError, Store};

use crate::support::*;

fn make_store_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("good.redb");
    let store = Store::open(&path, Config::default()).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let good = make_store_file(dir.path());
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
            let cfg = Config::builder().verify_on_open(verify).build().unwrap();
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
    // With verification, a flipped byte in a live page is found at open.
    assert!(
        refused * 2 > cases.len(),
        "verify_on_open refused only {refused} files"
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

#[test]
fn c11_a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store_file(dir.path());
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
            supported: 1,
        }) => {}
        other => panic!("{other:?}"),
    }
}
