//! A failed write or fsync poisons the store; reopening recovers everything acknowledged.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        if self.fail_write.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.bytes.lock().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.panic_on_write.load(Ordering::SeqCst) {
            panic!("injected panic in the storage device");
        }
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
    Config::default()
}

fn check_poisoned_then_recovered(device: Flaky, arm: impl Fn(&Flaky, bool)) {
    let store = Store::open_with_backend(device.clone(), cfg()).unwrap();
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
    let store = Store::open_with_backend(device, cfg()).unwrap();
    assert_eq!(
        replay(store.begin(&s, &key("acked"), &fp("1")).unwrap()).body(),
        b"acked"
    );
    drop(execute(store.begin(&s, &key("new"), &fp("1")).unwrap()));
    store.close().unwrap();
}

#[test]
fn c10_a_failed_fsync_poisons_the_store_and_reopening_recovers() {
    check_poisoned_then_recovered(Flaky::default(), |d, on| {
        d.fail_sync.store(on, Ordering::SeqCst)
    });
}

#[test]
fn c10_a_full_disk_poisons_the_store_and_reopening_recovers() {
    check_poisoned_then_recovered(Flaky::default(), |d, on| {
        d.fail_write.store(on, Ordering::SeqCst)
    });
}

#[test]
fn a_panic_in_the_writer_poisons_the_store_and_its_callers_hear_so() {
    let device = Flaky::default();
    let store = Store::open_with_backend(device.clone(), cfg()).unwrap();
    let s = scope("acct");
    device.panic_on_write.store(true, Ordering::SeqCst);
    for attempt in 0..2 {
        match store.begin(&s, &key("k"), &fp("1")) {
            Err(BeginError::Unavailable(e @ Unavailable::Poisoned { .. })) => {
                assert!(e.to_string().contains("panicked"), "attempt {attempt}: {e}");
                if attempt == 1 {
                    // The store keeps the panic's own message.
                    assert!(e.to_string().contains("injected panic"), "{e}");
                }
            }
            other => panic!("attempt {attempt}: expected Poisoned, got {other:?}"),
        }
    }
    device.panic_on_write.store(false, Ordering::SeqCst);
    assert!(store.close().is_err());
}
