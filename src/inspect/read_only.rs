//! Devices for reading a store file without writing it: the inspector's view of the database
//! and of its write-ahead log.
//!
//! Why: an operator inspecting a store must see every acknowledged change, which after a crash
//! means what recovery would see: the database repaired (the storage engine rebuilds its
//! allocator state from the trees) and the log's entries past the last checkpoint applied. The
//! engine does both only through a writable database, and writes the results into the file.
//! Copying the file first would cost its whole size in time and disk. Instead the database is
//! opened on [`CopyOnWrite`], which reads the file through a descriptor opened read-only and
//! keeps every page the engine writes in memory: the repair and the replay happen there, and
//! the file never sees them.
//!
//! Invariants:
//! - the store file and its log are only ever opened read-only ([`open_regular`]), so nothing
//!   here can write, truncate or create them, and a file without write permission (mode 0444,
//!   a read-only mount) works; and only regular files are read: the open does not block (a
//!   FIFO put in their place would otherwise wait for a writer forever) and the descriptor's
//!   own metadata must say regular file, so no rename between a check and the open can slip
//!   another kind of file in;
//! - the only file locks taken are the shared locks of the storage engine's own read-only
//!   handle ([`SharedLocks`]), which need no write access, keep a writer (a running service, a
//!   `Store::open`) out while the inspection lasts, and are refused while a writer holds the
//!   file;
//! - a read through [`CopyOnWrite`] returns the last bytes written to it, and for bytes never
//!   written, the file's bytes (or zeros past the file's end or past a shrink), exactly as a
//!   writable file would.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use redb::BackendError;
use redb::backends::FileBackend;

use crate::engine::file::device::{self, read_exact_at};
use crate::storage::StorageBackend;

/// The unit of the in-memory copy: whole pages of the storage engine (4 KiB).
const BLOCK: u64 = 4096;

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a read-only inspection never writes the file",
    )
}

/// The store file, opened read-only, shared by the lock holder and the copy-on-write device.
/// Its locks last until the last handle is dropped and the descriptor closes.
pub(crate) type BaseFile = Arc<FileBackend>;

/// Opens `path` for reading, without blocking, and only if it is a regular file (see
/// [`device::open_regular`]).
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    device::open_regular(path, std::fs::OpenOptions::new().read(true))
}

/// Wraps `file`, opened for reading only, for the storage engine.
pub(crate) fn open_base(file: File) -> io::Result<BaseFile> {
    // redb's 4.x constructor is fallible in its signature only.
    let backend = FileBackend::new(file).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Arc::new(backend))
}

/// Presents the read-only file to the storage engine's read-only open, only so that the open
/// takes the shared locks of its own protocol on it; it keeps them past the open (its release
/// calls are ignored), until the file is closed. The engine refuses a read-only open of a file
/// that needs a repair, after it has taken its locks: this is how the inspector holds the
/// engine's reader locks on such a file too.
#[derive(Debug)]
pub(crate) struct SharedLocks {
    base: BaseFile,
    /// A lock call failed with an error (not a refusal, not "unsupported"): the locks may not
    /// be held. Shared, since the storage engine owns the device.
    failed: Arc<AtomicBool>,
}

impl SharedLocks {
    pub(crate) fn new(base: BaseFile) -> SharedLocks {
        SharedLocks {
            base,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once a lock call fails with an error other than a refusal.
    pub(crate) fn failed_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.failed)
    }

    fn note<T>(&self, r: Result<T, BackendError>) -> Result<T, BackendError> {
        if matches!(&r, Err(e) if !matches!(e, BackendError::Unsupported)) {
            self.failed.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl redb::StorageBackend for SharedLocks {
    fn len(&self) -> io::Result<u64> {
        redb::StorageBackend::len(&*self.base)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        redb::StorageBackend::read(&*self.base, offset, out)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(refused())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(refused())
    }

    fn close(&self) -> io::Result<()> {
        // The locks stay until the file is closed: see the type's documentation.
        Ok(())
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.note(self.base.try_lock_range(start, end))
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.note(self.base.try_lock_shared_range(start, end))
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.note(self.base.lock_range(start, end))
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.note(self.base.lock_shared_range(start, end))
    }

    fn unlock_range(&self, _start: Bound<u64>, _end: Bound<u64>) -> Result<(), BackendError> {
        // Kept until the file is closed: see the type's documentation.
        Ok(())
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.note(self.base.query_lock_range(start, end))
    }
}

/// A device that reads the store file and keeps every write in memory, page by page.
///
/// It offers no locks (the storage engine then takes none, as on a platform without them): the
/// inspector holds the reader locks through [`SharedLocks`] on the same file before it opens
/// the database on this device.
#[derive(Debug)]
pub(crate) struct CopyOnWrite {
    base: BaseFile,
    state: Mutex<Pages>,
}

#[derive(Debug)]
struct Pages {
    /// The device's length, as the storage engine set it.
    len: u64,
    /// Bytes of the file below this offset show through where no page was written; above it,
    /// unwritten bytes read as zeros (the file's end, or the lowest length the device was cut
    /// to since).
    visible: u64,
    /// The pages written, by index (offset / `BLOCK`), each `BLOCK` bytes.
    written: HashMap<u64, Box<[u8]>>,
}

impl CopyOnWrite {
    /// A device showing `base`, whose length is `len`.
    pub(crate) fn new(base: BaseFile, len: u64) -> CopyOnWrite {
        CopyOnWrite {
            base,
            state: Mutex::new(Pages {
                len,
                visible: len,
                written: HashMap::new(),
            }),
        }
    }

    /// Bytes held in memory.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().written.len() * BLOCK as usize
    }

    /// Fills `out` with the bytes at `offset` as they stand below the written pages: the file's
    /// below `visible`, zeros above.
    fn read_under(&self, pages: &Pages, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let end = offset + out.len() as u64;
        let from_file = end.min(pages.visible).saturating_sub(offset);
        let from_file = usize::try_from(from_file)
            .unwrap_or(out.len())
            .min(out.len());
        let (file_part, zero_part) = out.split_at_mut(from_file);
        if !file_part.is_empty() {
            redb::StorageBackend::read(&*self.base, offset, file_part)?;
        }
        zero_part.fill(0);
        Ok(())
    }
}

/// The overlap of `[offset, offset + len)` with page `index`: (start in the page, start in the
/// range, length).
fn overlap(index: u64, offset: u64, len: u64) -> (usize, usize, usize) {
    let page_start = index * BLOCK;
    let start = offset.max(page_start);
    let end = (offset + len).min(page_start + BLOCK);
    (
        (start - page_start) as usize,
        (start - offset) as usize,
        end.saturating_sub(start) as usize,
    )
}

impl redb::StorageBackend for CopyOnWrite {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let pages = self.state.lock();
        let len = out.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= pages.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        self.read_under(&pages, offset, out)?;
        if len == 0 || pages.written.is_empty() {
            return Ok(());
        }
        for index in offset / BLOCK..=(end - 1) / BLOCK {
            if let Some(page) = pages.written.get(&index) {
                let (in_page, in_out, n) = overlap(index, offset, len);
                out[in_out..in_out + n].copy_from_slice(&page[in_page..in_page + n]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut pages = self.state.lock();
        if len < pages.len {
            pages.visible = pages.visible.min(len);
            pages.written.retain(|&index, _| index * BLOCK < len);
            if !len.is_multiple_of(BLOCK)
                && let Some(page) = pages.written.get_mut(&(len / BLOCK))
            {
                page[(len % BLOCK) as usize..].fill(0);
            }
        }
        pages.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        // Nothing is durable, and nothing needs to be: the copy lives as long as the inspector.
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut pages = self.state.lock();
        let len = data.len() as u64;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Ok(());
        }
        for index in offset / BLOCK..=(end - 1) / BLOCK {
            if !pages.written.contains_key(&index) {
                let mut page = vec![0u8; BLOCK as usize].into_boxed_slice();
                // The part of the page below the device's end shows what was there.
                let start = index * BLOCK;
                let below = pages.len.saturating_sub(start).min(BLOCK) as usize;
                self.read_under(&pages, start, &mut page[..below])?;
                pages.written.insert(index, page);
            }
            let (in_page, in_data, n) = overlap(index, offset, len);
            if let Some(page) = pages.written.get_mut(&index) {
                page[in_page..in_page + n].copy_from_slice(&data[in_data..in_data + n]);
            }
        }
        pages.len = pages.len.max(end);
        Ok(())
    }
}

/// The write-ahead log, opened read-only, as the log reader's device: every write is refused.
#[derive(Debug)]
pub(crate) struct ReadOnlyLog(File);

impl ReadOnlyLog {
    /// Opens the log at `path` for reading; `None` when there is no such file.
    pub(crate) fn open(path: &Path) -> io::Result<Option<ReadOnlyLog>> {
        match open_regular(path) {
            Ok(f) => Ok(Some(ReadOnlyLog(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl StorageBackend for ReadOnlyLog {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_exact_at(&self.0, offset, out)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(refused())
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(refused())
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend as _;

    fn device(bytes: &[u8]) -> (tempfile::NamedTempFile, CopyOnWrite) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        let base = open_base(File::open(f.path()).unwrap()).unwrap();
        let dev = CopyOnWrite::new(base, bytes.len() as u64);
        (f, dev)
    }

    fn read(dev: &CopyOnWrite, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xee; len];
        dev.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn writes_stay_in_memory_and_reads_see_them_over_the_file() {
        let file: Vec<u8> = (0..3 * BLOCK as usize + 100).map(|i| i as u8).collect();
        let (f, dev) = device(&file);
        assert_eq!(read(&dev, 10, 5000), file[10..5010]);
        // A write across a page boundary.
        dev.write(BLOCK - 2, &[1, 2, 3, 4]).unwrap();
        let mut want = file.clone();
        want[BLOCK as usize - 2..BLOCK as usize + 2].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(read(&dev, 0, want.len()), want);
        assert_eq!(dev.held(), 2 * BLOCK as usize);
        // Growth reads as zeros, and writes past the end grow the device.
        dev.set_len(file.len() as u64 + 10).unwrap();
        assert_eq!(read(&dev, file.len() as u64, 10), vec![0; 10]);
        dev.write(5 * BLOCK, &[9]).unwrap();
        assert_eq!(dev.len().unwrap(), 5 * BLOCK + 1);
        assert_eq!(read(&dev, 5 * BLOCK - 1, 2), vec![0, 9]);
        // A shrink then a growth: the cut bytes read as zeros, not as the file's.
        dev.set_len(BLOCK + 1).unwrap();
        assert!(dev.read(BLOCK, &mut [0; 2]).is_err(), "past the end");
        dev.set_len(3 * BLOCK).unwrap();
        assert_eq!(read(&dev, BLOCK - 2, 4), vec![1, 2, 3, 0]);
        assert_eq!(read(&dev, 2 * BLOCK, 8), vec![0; 8]);
        // The file itself never changed.
        assert_eq!(std::fs::read(f.path()).unwrap(), file);
        assert!(dev.read(u64::MAX, &mut [0; 2]).is_err());
    }

    #[test]
    fn the_log_device_refuses_writes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"abc").unwrap();
        let log = ReadOnlyLog::open(f.path()).unwrap().unwrap();
        let mut out = [0; 2];
        log.read(1, &mut out).unwrap();
        assert_eq!(&out, b"bc");
        assert!(log.write(0, b"x").is_err());
        assert!(log.set_len(0).is_err());
        assert_eq!(std::fs::read(f.path()).unwrap(), b"abc");
        assert!(
            ReadOnlyLog::open(&f.path().with_extension("none"))
                .unwrap()
                .is_none()
        );
    }
}
