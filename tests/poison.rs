//! A failed write or fsync poisons the store; reopening recovers everything acknowledged.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use idemstore::{BeginError, Config, StorageBackend, Store, Unavailable};
use parking_lot::Mutex;

use crate::support::*;

/// An in-memory device whose syncs or writes can be made to fail.
#[derive(Debug, Default, Clone)]
struct Flaky {
    bytes: Arc<Mutex<Vec<u8>>>,
    fail_sync: Arc<AtomicBool>,
    fail_write: Arc<AtomicBool>,
    panic_on_write: Arc<AtomicBool>,
    /// Mutating calls (write, set_len, sync_data) made so far.
    calls: Arc<AtomicU64>,
    /// When non-zero: the mutating call with this number and every later one fail, with
    /// `StorageFull` if `full` is set, else `EIO`.
    fail_from: Arc<AtomicU64>,
    full: Arc<AtomicBool>,
}

impl Flaky {
    /// A second device of the same machine: its own bytes, the same faults and call count.
    fn sibling(&self) -> Flaky {
        Flaky {
            bytes: Arc::default(),
            ..self.clone()
        }
    }

    /// Counts a mutating call and fails it if the countdown says so.
    fn mutate(&self) -> io::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let from = self.fail_from.load(Ordering::SeqCst);
        if from != 0 && n >= from {
            return Err(if self.full.load(Ordering::SeqCst) {
                io::Error::from(io::ErrorKind::StorageFull)
            } else {
                io::Error::other("injected EIO")
            });
        }
        Ok(())
    }
}

impl StorageBackend for Flaky {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes.lock();
        let start = offset as usize;
        let src = bytes
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate()?;
        if self.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.bytes.lock().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.mutate()?;
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.panic_on_write.load(Ordering::SeqCst) {
            panic!("injected panic in the storage device");
        }
        self.mutate()?;
        if self.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let mut bytes = self.bytes.lock();
        let end = offset as usize + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

fn cfg() -> Config {
    // A reservation is synced, so the injected failure lands on the `begin` that makes one.
    Config::builder()
        .log_capacity(64 << 10)
        .reservations_durable(true)
        .build()
        .unwrap()
}

/// The database's device and, when the store acknowledges through a write-ahead log, the
/// log's, sharing faults.
#[derive(Debug, Clone)]
struct Devices {
    db: Flaky,
    log: Option<Flaky>,
}

impl Devices {
    fn new(wal: bool) -> Devices {
        let db = Flaky::default();
        let log = wal.then(|| db.sibling());
        Devices { db, log }
    }

    fn open(&self) -> Result<Store, idemstore::OpenError> {
        match &self.log {
            Some(log) => Store::open_with_backends(self.db.clone(), log.clone(), cfg()),
            None => Store::open_with_backend(self.db.clone(), cfg()),
        }
    }
}

impl std::ops::Deref for Devices {
    type Target = Flaky;
    fn deref(&self) -> &Flaky {
        &self.db
    }
}

fn check_poisoned_then_recovered(arm: impl Fn(&Flaky, bool)) {
    for wal in [false, true] {
        poisoned_then_recovered(Devices::new(wal), &arm);
    }
}

fn poisoned_then_recovered(device: Devices, arm: &impl Fn(&Flaky, bool)) {
    let store = device.open().unwrap();
    let s = scope("acct");
    execute(store.begin(&s, &key("acked"), &fp("1")).unwrap())
        .complete(resp(201, "acked"))
        .unwrap();
    arm(&device, true);
    match store.begin(&s, &key("doomed"), &fp("1")) {
        Err(BeginError::Unavailable(Unavailable::OutcomeUnknown { .. })) => {}
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    // Every later operation refuses, saying what to do.
    match store.begin(&s, &key("acked"), &fp("1")) {
        Err(BeginError::Unavailable(e @ Unavailable::Poisoned { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains("open it again"), "{msg}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected Poisoned, got {other:?}"),
    }
    assert!(matches!(
        store.compact_now(),
        Err(Unavailable::Poisoned { .. })
    ));
    assert!(store.close().is_err());
    arm(&device, false);
    let store = device.open().unwrap();
    assert_eq!(
        replay(store.begin(&s, &key("acked"), &fp("1")).unwrap()).body(),
        b"acked"
    );
    drop(execute(store.begin(&s, &key("new"), &fp("1")).unwrap()));
    store.close().unwrap();
}

#[test]
fn c10_a_failed_fsync_poisons_the_store_and_reopening_recovers() {
    check_poisoned_then_recovered(|d, on| d.fail_sync.store(on, Ordering::SeqCst));
}

#[test]
fn c10_a_full_disk_poisons_the_store_and_reopening_recovers() {
    check_poisoned_then_recovered(|d, on| d.fail_write.store(on, Ordering::SeqCst));
}

/// C10: a panic inside a commit (the storage engine's, here its device's) is a failed commit:
/// the commit may have reached the disk, so its callers hear `OutcomeUnknown`, and every later
/// call `Poisoned`, both with the panic's own message.
#[test]
fn c10_a_panic_during_a_commit_is_outcome_unknown_then_the_store_is_poisoned() {
    use idemstore::TransactionError;
    for wal in [false, true] {
        // A reservation (through the log, with one) and the caller's writes (to the file).
        for work in [false, true] {
            let device = Devices::new(wal);
            let store = device.open().unwrap();
            device.panic_on_write.store(true, Ordering::SeqCst);
            let answer = if work {
                match store.write(|_| Ok::<_, ()>(())) {
                    Err(TransactionError::Unavailable(e)) => e,
                    other => panic!("wal {wal}: expected a refusal, got {other:?}"),
                }
            } else {
                match store.begin(&scope("acct"), &key("k"), &fp("1")) {
                    Err(BeginError::Unavailable(e)) => e,
                    other => panic!("wal {wal}: expected a refusal, got {other:?}"),
                }
            };
            match answer {
                Unavailable::OutcomeUnknown { .. } => {
                    assert!(answer.to_string().contains("injected panic"), "{answer}")
                }
                other => panic!("wal {wal}, work {work}: expected OutcomeUnknown, got {other:?}"),
            }
            match store.begin(&scope("acct"), &key("k"), &fp("1")) {
                Err(BeginError::Unavailable(e @ Unavailable::Poisoned { .. })) => {
                    assert!(e.to_string().contains("panicked"), "{e}");
                    assert!(e.to_string().contains("injected panic"), "{e}");
                }
                other => panic!("wal {wal}, work {work}: expected Poisoned, got {other:?}"),
            }
            device.panic_on_write.store(false, Ordering::SeqCst);
            assert!(store.close().is_err());
        }
    }
}

/// A workload of begins and completions; returns the keys whose completion was acknowledged.
fn workload(store: &Store, acked: &mut Vec<usize>) {
    let s = scope("acct");
    for i in 0..12 {
        let k = key(&format!("k{i}"));
        let Ok(idemstore::Begin::Execute(r)) = store.begin(&s, &k, &fp(&i.to_string())) else {
            return;
        };
        if r.complete(resp(201, &format!("body {i}"))).is_err() {
            return;
        }
        acked.push(i);
    }
}

#[test]
fn c10_an_io_error_at_any_position_loses_nothing_acknowledged() {
    io_error_at_any_position(false);
}

#[test]
fn c10_an_io_error_at_any_position_of_database_or_log_loses_nothing_acknowledged() {
    io_error_at_any_position(true);
}

fn io_error_at_any_position(wal: bool) {
    // How many mutating calls the workload makes when nothing fails.
    let probe = Devices::new(wal);
    let store = probe.open().unwrap();
    let before = probe.calls.load(Ordering::SeqCst);
    workload(&store, &mut Vec::new());
    store.close().unwrap();
    let total = probe.calls.load(Ordering::SeqCst);
    assert!(total > before + 20, "{before}..{total}");
    let mut poisoned_log = false;
    let mut positions = 0;
    for fail_at in (before + 1)..=total {
        for full in [false, true] {
            let device = Devices::new(wal);
            device.full.store(full, Ordering::SeqCst);
            let store = device.open().unwrap();
            // Opening makes the same calls every time, so positions line up with the probe.
            assert_eq!(device.calls.load(Ordering::SeqCst), before);
            device.fail_from.store(fail_at, Ordering::SeqCst);
            let mut acked = Vec::new();
            workload(&store, &mut acked);
            if let Err(e) = store.begin(&scope("acct"), &key("after"), &fp("1")) {
                poisoned_log |= e.to_string().contains("write-ahead log");
            }
            let _ = store.close();
            // The error goes away (the disk had room again, the fault cleared): reopen.
            device.fail_from.store(0, Ordering::SeqCst);
            let store = device
                .open()
                .unwrap_or_else(|e| panic!("call {fail_at}, full {full}: reopen failed: {e}"));
            let s = scope("acct");
            for i in acked {
                let got = replay(
                    store
                        .begin(&s, &key(&format!("k{i}")), &fp(&i.to_string()))
                        .unwrap(),
                );
                assert_eq!(
                    got,
                    resp(201, &format!("body {i}")),
                    "call {fail_at}, full {full}"
                );
            }
            store.close().unwrap();
            positions += 1;
        }
    }
    assert!(positions >= 40);
    // With a log, some positions are the log's own writes and syncs, and the poisoned store
    // says which file failed.
    assert_eq!(poisoned_log, wal);
}

/// The caller's table the work below writes to.
const COUNT: idemstore::redb::TableDefinition<&str, u64> =
    idemstore::redb::TableDefinition::new("count");

/// Work with the caller's writes, of each kind the writer commits directly: a plain write
/// (`kind` 0), a completion (1) and a recovery point (2), setting `count` to `n`. A key the
/// work needs is reserved here; the work runs when the returned closure is called, and a
/// refusal is the store's.
fn caller_work(store: &Store, kind: usize, n: u64) -> impl FnOnce() -> Result<(), Unavailable> {
    use idemstore::{CompleteError, CompleteWithError, LeaseError, PointError, PointWithError};
    use idemstore::{TransactionError, redb};
    let set = move |txn: &redb::WriteTransaction| -> Result<(), redb::Error> {
        txn.open_table(COUNT)?.insert("n", n)?;
        Ok(())
    };
    let store = store.clone();
    let reserved = (kind > 0).then(|| {
        execute(
            store
                .begin(&scope("acct"), &key(&format!("k{n}")), &fp("1"))
                .unwrap(),
        )
    });
    move || match (kind, reserved) {
        (1, Some(r)) => match r.complete_with(move |txn| set(txn).map(|()| resp(201, "done"))) {
            Ok(_) => Ok(()),
            Err(CompleteWithError::Complete(CompleteError::Unavailable(e))) => Err(e),
            Err(e) => panic!("complete_with: {e:?}"),
        },
        (_, Some(mut r)) => {
            match r.save_point_with("set", move |txn| set(txn).map(|()| b"p".to_vec())) {
                Ok(_) => Ok(()),
                Err(PointWithError::Point(PointError::Lease(LeaseError::Unavailable(e)))) => Err(e),
                Err(e) => panic!("save_point_with: {e:?}"),
            }
        }
        (_, None) => match store.write(set) {
            Ok(()) => Ok(()),
            Err(TransactionError::Unavailable(e)) => Err(e),
            Err(e) => panic!("write: {e:?}"),
        },
    }
}

/// C10: a failed commit of the caller's writes (its fsync) may have been applied, so its
/// caller hears `OutcomeUnknown`, as the callers of any failed commit do, and only later calls
/// hear `Poisoned`: a `Store::write` answered `Poisoned` would be retried and run twice.
#[test]
fn c10_a_failed_commit_of_the_callers_writes_is_outcome_unknown() {
    for wal in [false, true] {
        for kind in 0..3 {
            let device = Devices::new(wal);
            let store = device.open().unwrap();
            caller_work(&store, kind, 1)().unwrap();
            let doomed = caller_work(&store, kind, 2);
            device.fail_sync.store(true, Ordering::SeqCst);
            let answer = doomed();
            assert!(
                matches!(answer, Err(Unavailable::OutcomeUnknown { .. })),
                "wal {wal}, kind {kind}: {answer:?}"
            );
            assert!(matches!(
                store.write(|_| Ok::<_, ()>(())),
                Err(idemstore::TransactionError::Unavailable(
                    Unavailable::Poisoned { .. }
                ))
            ));
            assert!(store.close().is_err());
            device.fail_sync.store(false, Ordering::SeqCst);
            // The commit was written before its fsync failed: the writes are there.
            let store = device.open().unwrap();
            let n = store
                .read(|txn| {
                    let count = txn.open_table(COUNT)?;
                    Ok::<_, idemstore::redb::Error>(count.get("n")?.map(|g| g.value()))
                })
                .unwrap();
            assert_eq!(n, Some(2), "wal {wal}, kind {kind}");
            store.close().unwrap();
        }
    }
}
