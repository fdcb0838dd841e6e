//! The device under the database of a store in memory: bytes in fixed-size chunks.
//!
//! Why: the storage engine's own in-memory device is one growing byte vector behind a lock, so
//! growing the database copies all of it while every reader waits (a begin stalled for 214 ms
//! behind a checkpoint at a few hundred thousand records). Here the bytes live in chunks of
//! one MiB that never move: growing the device adds chunks, and a read or a write holds the
//! lock only for its own copy.
//!
//! Invariant: the bytes between `len` and the end of the chunks are zero, so a device that
//! shrinks and grows again reads zeros there, as a file would.

use std::io;

use parking_lot::RwLock;

use crate::storage::StorageBackend;

const CHUNK: usize = 1 << 20;

#[derive(Debug, Default)]
pub(crate) struct MemoryDevice {
    inner: RwLock<Chunks>,
}

#[derive(Debug, Default)]
struct Chunks {
    chunks: Vec<Box<[u8]>>,
    len: u64,
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "beyond the end of the device")
}

/// Calls `f` with each (chunk index, range in the chunk, range in the caller's buffer) that
/// `len` bytes at `offset` cover.
fn spans(offset: u64, len: usize, mut f: impl FnMut(usize, std::ops::Range<usize>, usize)) {
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let chunk = (at / CHUNK as u64) as usize;
        let start = (at % CHUNK as u64) as usize;
        let n = (CHUNK - start).min(len - done);
        f(chunk, start..start + n, done);
        done += n;
    }
}

impl Chunks {
    fn covers(&self, offset: u64, len: usize) -> bool {
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.len)
    }
}

impl StorageBackend for MemoryDevice {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.read().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let c = self.inner.read();
        if !c.covers(offset, out.len()) {
            return Err(out_of_range());
        }
        spans(offset, out.len(), |i, r, at| {
            let n = r.len();
            out[at..at + n].copy_from_slice(&c.chunks[i][r]);
        });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let want = usize::try_from(len.div_ceil(CHUNK as u64)).map_err(|_| out_of_range())?;
        let mut c = self.inner.write();
        if len < c.len {
            // Zero what is cut off, so growing again reads zeros.
            let old = c.len;
            let cut = usize::try_from(old - len).map_err(|_| out_of_range())?;
            spans(len, cut, |i, r, _| c.chunks[i][r].fill(0));
            c.chunks.truncate(want);
        }
        while c.chunks.len() < want {
            c.chunks.push(vec![0u8; CHUNK].into_boxed_slice());
        }
        c.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut c = self.inner.write();
        if !c.covers(offset, data.len()) {
            return Err(out_of_range());
        }
        spans(offset, data.len(), |i, r, at| {
            let n = r.len();
            c.chunks[i][r].copy_from_slice(&data[at..at + n]);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_chunks_and_shrinking_zeroes_the_cut() {
        let d = MemoryDevice::default();
        d.set_len(3 * CHUNK as u64).unwrap();
        let data: Vec<u8> = (0..CHUNK + 100).map(|i| (i % 251) as u8).collect();
        let at = CHUNK as u64 - 50;
        d.write(at, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        d.read(at, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(d.read(3 * CHUNK as u64 - 1, &mut [0u8; 2]).is_err());
        assert!(d.write(u64::MAX - 1, &[1, 2, 3]).is_err());
        d.set_len(at + 10).unwrap();
        assert_eq!(d.len().unwrap(), at + 10);
        d.set_len(3 * CHUNK as u64).unwrap();
        let mut tail = vec![1u8; 100];
        d.read(at + 10, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
        let mut head = vec![0u8; 10];
        d.read(at, &mut head).unwrap();
        assert_eq!(head, data[..10]);
    }
}
