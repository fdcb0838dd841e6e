//! A store's files on disk, for the tests that inspect them (the library's inspector, the
//! operator tool): a snapshot of a directory to show that nothing was written, permissions,
//! the files a power loss leaves, and a redb file of another program.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idemstore::{Config, Response, Store, SystemClock};

use crate::sim_disk::{Mode, SimDisk};
use crate::support::{execute, fp, key, scope};

/// Every file of `dir` (not recursive), with its length, a digest of its bytes and its
/// permissions: what an inspection must leave exactly as it found it.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let bytes = if meta.is_file() {
            std::fs::read(entry.path()).unwrap()
        } else {
            Vec::new()
        };
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            format!(
                "{} bytes, blake3 {}, mode {:o}",
                bytes.len(),
                blake3::hash(&bytes).to_hex(),
                mode(&meta)
            ),
        );
    }
    files
}

#[cfg(unix)]
fn mode(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
}

#[cfg(not(unix))]
fn mode(meta: &std::fs::Metadata) -> u32 {
    u32::from(meta.permissions().readonly())
}

/// Sets the mode of `path` (a no-op but for the read-only flag off Unix).
pub fn chmod(path: &Path, mode: u32) {
    #[cfg(unix)]
    let perms = std::os::unix::fs::PermissionsExt::from_mode(mode);
    #[cfg(not(unix))]
    let perms = {
        let mut p = std::fs::metadata(path).unwrap().permissions();
        p.set_readonly(mode & 0o200 == 0);
        p
    };
    std::fs::set_permissions(path, perms).unwrap();
}

/// What a power loss leaves of a store that checkpointed `in_file` records into its file and
/// then acknowledged `in_log` more through its write-ahead log: `dir/name` and
/// `dir/name.wal`, written with the system clock and a TTL of 366 days, so that they are live
/// for the operator tool too. Records are `acct_a/file-i` and `acct_a/log-i`, completed with
/// status 201 and body `{"n":i}`, and `acct_b/held`, in flight (in the log).
pub fn logged_crash_image(dir: &Path, name: &str, in_file: usize, in_log: usize) -> PathBuf {
    let db = SimDisk::new(Mode::Subset);
    let log = db.sibling(Vec::new());
    let store = Store::open_with_backends(
        db.clone(),
        log.clone(),
        Config::builder()
            .clock(SystemClock)
            .ttl(Duration::from_secs(366 * 86_400))
            .compactor_interval(Duration::from_secs(3600))
            .log_capacity(256 << 10)
            .checkpoint_interval(Duration::from_secs(3600))
            // `held`, the last reservation, is in the synced log.
            .reservations_durable(true)
            .build()
            .unwrap(),
    )
    .unwrap();
    let complete = |k: &str, i: usize| {
        execute(store.begin(&scope("acct_a"), &key(k), &fp(k)).unwrap())
            .complete(Response::new(
                201,
                [("content-type", "application/json")],
                format!("{{\"n\":{i}}}"),
            ))
            .unwrap();
    };
    for i in 0..in_file {
        complete(&format!("file-{i}"), i);
    }
    // A whole-file read checkpoints: these records are in the file.
    assert_eq!(store.records(None, usize::MAX).unwrap().len(), in_file);
    let checkpoints = store.stats().checkpoints;
    for i in 0..in_log {
        complete(&format!("log-{i}"), i);
    }
    let held = execute(
        store
            .begin(&scope("acct_b"), &key("held"), &fp("held"))
            .unwrap(),
    );
    assert_eq!(
        store.stats().checkpoints,
        checkpoints,
        "the later records must live in the log only"
    );
    let path = dir.join(name);
    std::fs::write(&path, db.synced_image()).unwrap();
    std::fs::write(dir.join(format!("{name}.wal")), log.synced_image()).unwrap();
    drop(held);
    drop(store);
    path
}

/// A redb database of another program: a table of its own, no idemstore tables.
pub fn foreign_redb(path: &Path) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("bookings");
        txn.open_table(def)
            .unwrap()
            .insert("bk_1", &b"{}"[..])
            .unwrap();
    }
    txn.commit().unwrap();
}

/// The store's tables as bytes: a redb value type under idemstore's type names
/// (`docs/format.md`), to write records the store's API would refuse (a scope or key holding
/// control characters) or to damage one, as a damaged or hostile file may hold them. `EXPIRY`
/// picks the expiry table's value type, else the records table's.
pub mod raw {
    use idemstore::redb::{TypeName, Value};

    #[derive(Debug)]
    pub struct Bytes<const EXPIRY: bool>;

    impl<const EXPIRY: bool> Value for Bytes<EXPIRY> {
        type SelfType<'a>
            = &'a [u8]
        where
            Self: 'a;
        type AsBytes<'a>
            = &'a [u8]
        where
            Self: 'a;

        fn fixed_width() -> Option<usize> {
            None
        }

        fn from_bytes<'a>(data: &'a [u8]) -> &'a [u8]
        where
            Self: 'a,
        {
            data
        }

        fn as_bytes<'a, 'b: 'a>(value: &'a &'b [u8]) -> &'a [u8]
        where
            Self: 'b,
        {
            value
        }

        fn type_name() -> TypeName {
            TypeName::new(if EXPIRY {
                "idemstore::ResponseOrNone"
            } else {
                "idemstore::Record"
            })
        }
    }
}
