//! The byte device under the store, for callers who supply their own.
//!
//! Why: crash and fault testing needs a device that can drop unsynced writes, tear them, or
//! fail on command, and some deployments want storage of their own. This trait is that seam,
//! in terms of the standard library only, so no type of the storage engine appears in the
//! public API. Invariant: the store calls these methods only through the storage engine, which
//! treats any error as permanent for the open store (the store poisons itself; reopening
//! repairs).

use std::fmt::Debug;
use std::io;

/// A random-access byte device with an explicit durability barrier.
///
/// The contract a correct device keeps: `read` returns what was last written at those offsets
/// (or zeros past a `set_len` growth) and fails for a range past `len`; after `sync_data`
/// returns, every earlier `write` and `set_len` survives a power loss. Methods may be called
/// from several threads at once.
pub trait StorageBackend: Debug + Send + Sync + 'static {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the device holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `out` with the bytes at `offset`.
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;

    /// Grows (with zeros) or shrinks the device.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes every earlier write durable (the fsync).
    fn sync_data(&self) -> io::Result<()>;

    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Called once when the store closes.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Presents a [`StorageBackend`] to the storage engine.
#[derive(Debug)]
pub(crate) struct Adapter<B>(pub(crate) B);

impl<B: StorageBackend> redb::StorageBackend for Adapter<B> {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.0.close()
    }
}
