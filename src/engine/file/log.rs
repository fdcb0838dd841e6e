//! The write-ahead log: one circular file of fixed size in front of the database.
//!
//! Why: a durable database commit costs several page writes and an fsync on a file whose layout
//! changes (about 0.7 ms here), while overwriting a few kilobytes of a file whose blocks already
//! exist and calling `fdatasync` costs about 0.12 ms. So the writer appends each batch's
//! resulting record states here as one checksummed entry (and keeps them in the overlay, where
//! readers see them at once), syncs the log, and only then answers. A checkpoint, a durable
//! database commit, records the sequence number and log position up to which the database
//! holds everything; the log space before that position is reused.
//!
//! Invariants:
//! - entries carry consecutive sequence numbers and lie end to end from the checkpoint
//!   position, wrapping to the start of the data area (behind a wrap marker when one fits);
//! - the bytes from the checkpoint position to the write position are never overwritten: an
//!   entry that would not fit is refused, and the writer checkpoints instead of logging;
//! - an entry is acknowledged only after a sync that followed its write, so an acknowledged
//!   entry is preceded by intact entries back to the checkpoint; recovery stops at the first
//!   entry whose magic, sequence number, length or checksum is wrong (the unacknowledged tail);
//! - an entry holds whole record states (a record with its response, or a deletion), never
//!   deltas, so replaying it twice, or over a database that already holds it, changes nothing;
//! - the file's length is set once, when it is created, and never changes afterwards; blocks
//!   are written with zeros when the log is created (and, for a log whose `zeroed` mark says
//!   otherwise, ahead of the first entries that use them), so a sync in the
//!   steady state only writes data, never file-system metadata.
//!
//! The layout is byte by byte in `docs/format.md` ("Write-ahead log").

use std::io;

use super::change::Change;
use crate::format::bytes::{Reader, Truncated, u32_at, u64_at};
use crate::storage::StorageBackend;

/// The file header's magic bytes.
const FILE_MAGIC: [u8; 8] = *b"IDEMWAL\0";
/// The log format this build writes and reads.
pub(crate) const LOG_VERSION: u32 = 1;
/// Bytes of the file header that carry data (the rest of the header page is zero).
const FILE_HEADER_USED: usize = 48;
/// Where the data area starts: the header has a page of its own, so no entry write ever
/// touches it.
pub(crate) const DATA_START: u64 = 4096;
/// An entry's header: magic, payload length, sequence number, checksum.
pub(crate) const ENTRY_HEADER: usize = 32;
const ENTRY_MAGIC: [u8; 4] = *b"IDLE";
const WRAP_MAGIC: [u8; 4] = *b"IDLW";
/// The size of the zero writes: at creation, and ahead of the write position in a log whose
/// blocks were not all written at creation.
const ZERO_CHUNK: u64 = 1 << 20;
/// The smallest log accepted: the header page and room for a few batches.
pub(crate) const MIN_CAPACITY: u64 = crate::config::MIN_LOG_CAPACITY;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// Where the log stands at a checkpoint: the last sequence number the database holds, the
/// position of the next entry, and how far the file's blocks are known to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) seq: u64,
    pub(crate) pos: u64,
    pub(crate) zeroed: u64,
}

/// Why a log file could not be used.
#[derive(Debug)]
pub(crate) enum LogError {
    Io(io::Error),
    /// The header is not an idemstore log header of a version this build reads.
    BadHeader(String),
    /// An entry passed its checksum but does not decode.
    BadEntry {
        seq: u64,
        detail: String,
    },
}

impl From<io::Error> for LogError {
    fn from(e: io::Error) -> Self {
        LogError::Io(e)
    }
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Io(e) => write!(f, "I/O error on the write-ahead log: {e}"),
            LogError::BadHeader(d) => write!(f, "the write-ahead log's header is not valid: {d}"),
            LogError::BadEntry { seq, detail } => {
                write!(f, "write-ahead log entry {seq} does not decode: {detail}")
            }
        }
    }
}

/// What the header of an existing log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) capacity: u64,
}

fn checksum(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The header bytes of a log with this identity and size.
pub(crate) fn encode_header(h: Header) -> [u8; FILE_HEADER_USED] {
    let mut b = [0u8; FILE_HEADER_USED];
    b[0..8].copy_from_slice(&FILE_MAGIC);
    b[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
    // 12..16 reserved, zero.
    b[16..24].copy_from_slice(&h.capacity.to_le_bytes());
    b[24..32].copy_from_slice(&h.id.to_le_bytes());
    let sum = checksum(&[&b[0..32]]);
    b[32..48].copy_from_slice(&sum);
    b
}

/// Reads the header: `Ok(None)` for a device that was never initialised (empty, or a header
/// of zeros: a creation cut short before its sync).
pub(crate) fn read_header(dev: &dyn StorageBackend) -> Result<Option<Header>, LogError> {
    let len = dev.len()?;
    if len < FILE_HEADER_USED as u64 {
        return Ok(None);
    }
    let mut b = [0u8; FILE_HEADER_USED];
    dev.read(0, &mut b)?;
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if b[0..8] != FILE_MAGIC {
        return Err(LogError::BadHeader("wrong magic bytes".into()));
    }
    if checksum(&[&b[0..32]]) != b[32..48] {
        return Err(LogError::BadHeader("header checksum mismatch".into()));
    }
    let version = u32_at(&b, 8);
    if version != LOG_VERSION {
        return Err(LogError::BadHeader(format!(
            "log format version {version}; this build reads version {LOG_VERSION}"
        )));
    }
    let capacity = u64_at(&b, 16);
    if capacity < MIN_CAPACITY || capacity > len {
        return Err(LogError::BadHeader(format!(
            "capacity {capacity} does not match a file of {len} bytes"
        )));
    }
    Ok(Some(Header {
        id: u64_at(&b, 24),
        capacity,
    }))
}

/// The entry being built for one batch: a header slot, then the payload.
///
/// Payload: `next_token` (u64), change count (u32), then each change: tag (u8), key hash
/// (32 bytes), and for a put the record's length (u32) and bytes, a response flag (u8) and,
/// when set, the response's length (u32) and bytes.
pub(crate) struct EntryBuf {
    buf: Vec<u8>,
    count: u32,
}

const PAYLOAD_PREFIX: usize = 12;

impl Default for EntryBuf {
    fn default() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.resize(ENTRY_HEADER + PAYLOAD_PREFIX, 0);
        EntryBuf { buf, count: 0 }
    }
}

impl EntryBuf {
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the entry takes in the log, header included.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The record under `hash` is now `record`, holding `response` (none for a record in
    /// flight: replaying removes any stored response).
    pub(crate) fn put(&mut self, hash: &[u8; 32], record: &[u8], response: Option<&[u8]>) {
        self.buf.push(TAG_PUT);
        self.buf.extend_from_slice(hash);
        self.buf.extend_from_slice(&len32(record).to_le_bytes());
        self.buf.extend_from_slice(record);
        match response {
            Some(r) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&len32(r).to_le_bytes());
                self.buf.extend_from_slice(r);
            }
            None => self.buf.push(0),
        }
        self.count += 1;
    }

    /// The record under `hash` is gone.
    pub(crate) fn delete(&mut self, hash: &[u8; 32]) {
        self.buf.push(TAG_DELETE);
        self.buf.extend_from_slice(hash);
        self.count += 1;
    }

    /// Completes the entry with its sequence number and the next fencing token; returns the
    /// bytes to write.
    fn seal(&mut self, id: u64, seq: u64, next_token: u64) -> &[u8] {
        let payload_len = self.buf.len() - ENTRY_HEADER;
        let p = ENTRY_HEADER;
        self.buf[p..p + 8].copy_from_slice(&next_token.to_le_bytes());
        self.buf[p + 8..p + 12].copy_from_slice(&self.count.to_le_bytes());
        self.buf[0..4].copy_from_slice(&ENTRY_MAGIC);
        let len = len32(&self.buf[ENTRY_HEADER..]);
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let sum = checksum(&[
            &id.to_le_bytes(),
            &self.buf[0..16],
            &self.buf[ENTRY_HEADER..ENTRY_HEADER + payload_len],
        ]);
        self.buf[16..32].copy_from_slice(&sum);
        &self.buf
    }
}

/// Lengths written by this module are bounded by the store's limits (a response is at most
/// 1 GiB, a record at most a few hundred bytes), far below `u32::MAX`.
fn len32(b: &[u8]) -> u32 {
    u32::try_from(b.len()).unwrap_or(u32::MAX)
}

/// A decoded entry payload.
pub(crate) struct Payload<'a> {
    pub(crate) next_token: u64,
    /// Each key hash with the change it takes.
    pub(crate) changes: Vec<([u8; 32], Change<&'a [u8]>)>,
}

/// Decodes an entry's payload (whose checksum has been verified).
pub(crate) fn decode_payload(p: &[u8]) -> Result<Payload<'_>, String> {
    let mut r = Reader::new(p);
    let truncated = |t: Truncated| format!("truncated at byte {}", t.at);
    let next_token = r.u64().map_err(truncated)?;
    let count = r.u32().map_err(truncated)?;
    let mut changes = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let tag = r.u8().map_err(truncated)?;
        let hash: [u8; 32] = r.array().map_err(truncated)?;
        match tag {
            TAG_PUT => {
                let n = r.len32().map_err(truncated)?;
                let record = r.take(n).map_err(truncated)?;
                let response = match r.u8().map_err(truncated)? {
                    0 => None,
                    1 => {
                        let n = r.len32().map_err(truncated)?;
                        Some(r.take(n).map_err(truncated)?)
                    }
                    other => return Err(format!("response flag {other}")),
                };
                changes.push((hash, Change::Put { record, response }));
            }
            TAG_DELETE => changes.push((hash, Change::Delete)),
            other => return Err(format!("unknown change tag {other}")),
        }
    }
    if !r.is_empty() {
        return Err("bytes after the last change".to_owned());
    }
    Ok(Payload {
        next_token,
        changes,
    })
}

/// The log as the writer thread owns it.
pub(crate) struct Log {
    dev: Box<dyn StorageBackend>,
    id: u64,
    capacity: u64,
    /// Where the next entry goes.
    pos: u64,
    next_seq: u64,
    /// Bytes from the checkpoint position to `pos`, skipped tails included.
    used: u64,
    /// Blocks below this offset have been written at least once.
    zeroed: u64,
    /// Entries written since the last sync.
    unsynced: bool,
    /// The checkpoint position (where recovery starts reading).
    ckpt_pos: u64,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("capacity", &self.capacity)
            .field("pos", &self.pos)
            .field("next_seq", &self.next_seq)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Initialises `dev` as an empty log of `capacity` bytes with identity `id`, and makes
    /// that durable. The length is set here once, and every block is written here once (with
    /// zeros), so that no sync of an entry ever has to allocate blocks: a sync that does makes
    /// the file system commit its journal too, which took tens of milliseconds under load.
    pub(crate) fn create(
        dev: Box<dyn StorageBackend>,
        id: u64,
        capacity: u64,
    ) -> Result<Log, LogError> {
        let header = encode_header(Header { id, capacity });
        dev.set_len(capacity)?;
        let zeros = vec![0u8; ZERO_CHUNK.min(capacity - DATA_START) as usize];
        let mut at = DATA_START;
        while at < capacity {
            let n = (capacity - at).min(zeros.len() as u64);
            dev.write(at, &zeros[..n as usize])?;
            at += n;
        }
        dev.sync_data()?;
        // The header last: a log whose header is durable has all of its blocks written.
        let mut page = vec![0u8; DATA_START as usize];
        page[..FILE_HEADER_USED].copy_from_slice(&header);
        dev.write(0, &page)?;
        dev.sync_data()?;
        Ok(Log {
            dev,
            id,
            capacity,
            pos: DATA_START,
            next_seq: 1,
            used: 0,
            zeroed: capacity,
            unsynced: false,
            ckpt_pos: DATA_START,
        })
    }

    /// Reads the entries after checkpoint `from`, handing each decoded payload to `apply`,
    /// and returns the log positioned after the last intact one. The entries are not removed:
    /// the caller checkpoints once it has applied them durably.
    pub(crate) fn recover(
        dev: Box<dyn StorageBackend>,
        header: Header,
        from: Mark,
        mut apply: impl FnMut(u64, Payload<'_>) -> Result<(), LogError>,
    ) -> Result<Log, LogError> {
        let capacity = header.capacity;
        let region = capacity - DATA_START;
        let mut pos = if (DATA_START..capacity).contains(&from.pos) {
            from.pos
        } else {
            DATA_START
        };
        let mut expect = from.seq.saturating_add(1);
        let mut consumed: u64 = 0;
        let mut hdr = [0u8; ENTRY_HEADER];
        let mut payload = Vec::new();
        loop {
            if capacity - pos < ENTRY_HEADER as u64 {
                consumed += capacity - pos;
                pos = DATA_START;
            }
            if consumed >= region {
                break;
            }
            dev.read(pos, &mut hdr)?;
            let seq = u64_at(&hdr, 8);
            let len = u64::from(u32_at(&hdr, 4));
            if seq != expect {
                break;
            }
            if hdr[0..4] == WRAP_MAGIC {
                if len != 0 || checksum(&[&header.id.to_le_bytes(), &hdr[0..16]]) != hdr[16..32] {
                    break;
                }
                consumed += capacity - pos;
                pos = DATA_START;
                continue;
            }
            if hdr[0..4] != ENTRY_MAGIC {
                break;
            }
            let total = ENTRY_HEADER as u64 + len;
            if pos + total > capacity || consumed + total > region {
                break;
            }
            payload.resize(len as usize, 0);
            dev.read(pos + ENTRY_HEADER as u64, &mut payload)?;
            if checksum(&[&header.id.to_le_bytes(), &hdr[0..16], &payload]) != hdr[16..32] {
                break;
            }
            let entry =
                decode_payload(&payload).map_err(|detail| LogError::BadEntry { seq, detail })?;
            apply(seq, entry)?;
            pos += total;
            consumed += total;
            expect += 1;
        }
        Ok(Log {
            dev,
            id: header.id,
            capacity,
            pos,
            next_seq: expect,
            used: 0,
            zeroed: from.zeroed.clamp(DATA_START, capacity).max(pos),
            unsynced: false,
            ckpt_pos: pos,
        })
    }

    fn region(&self) -> u64 {
        self.capacity - DATA_START
    }

    /// Whether an entry of `len` bytes can be appended without overwriting entries the
    /// database does not hold durably yet. Entries larger than a quarter of the log are
    /// refused too: the writer checkpoints those batches instead, so one huge batch cannot
    /// crowd out the next ones.
    pub(crate) fn fits(&self, len: usize) -> bool {
        let total = len as u64;
        if total > self.region() / 4 {
            return false;
        }
        let skip = if self.pos + total > self.capacity {
            self.capacity - self.pos
        } else {
            0
        };
        self.used + skip + total <= self.region()
    }

    /// Whether half of the log holds entries the database does not hold durably: time for a
    /// checkpoint while the other half takes the next batches.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.used >= self.region() / 2
    }

    /// Appends `entry` (which must [`fit`](Log::fits)), not yet synced; returns its sequence
    /// number.
    pub(crate) fn append(&mut self, entry: &mut EntryBuf, next_token: u64) -> io::Result<u64> {
        let seq = self.next_seq;
        let total = entry.len() as u64;
        if self.pos + total > self.capacity {
            let skip = self.capacity - self.pos;
            if skip >= ENTRY_HEADER as u64 {
                let mut marker = [0u8; ENTRY_HEADER];
                marker[0..4].copy_from_slice(&WRAP_MAGIC);
                marker[8..16].copy_from_slice(&seq.to_le_bytes());
                let sum = checksum(&[&self.id.to_le_bytes(), &marker[0..16]]);
                marker[16..32].copy_from_slice(&sum);
                self.dev.write(self.pos, &marker)?;
            }
            self.used += skip;
            self.pos = DATA_START;
        }
        let end = self.pos + total;
        if end > self.zeroed {
            // First lap: write the blocks ahead once, so later syncs need no block allocation.
            let to = end.max(self.zeroed + ZERO_CHUNK).min(self.capacity);
            let zeros = vec![0u8; (to - self.zeroed) as usize];
            self.dev.write(self.zeroed, &zeros)?;
            self.zeroed = to;
        }
        let bytes = entry.seal(self.id, seq, next_token);
        self.dev.write(self.pos, bytes)?;
        self.pos = end;
        self.used += total;
        self.next_seq += 1;
        self.unsynced = true;
        Ok(seq)
    }

    /// Whether entries were written since the last sync.
    pub(crate) fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// A durable database commit made every appended entry redundant: no sync is owed.
    pub(crate) fn forget_unsynced(&mut self) {
        self.unsynced = false;
    }

    /// Makes every appended entry durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.dev.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Moves the next sequence number `by` ahead, so that entries a crash left past the end of
    /// the replayed chain (written, not synced, behind a torn one) never continue a later
    /// chain: this session's entries go where the torn one began, and with numbers of their
    /// own they are followed by no stale entry the reader would take for the next one. The
    /// new mark must reach the file before the first entry is appended.
    pub(crate) fn skip_sequence(&mut self, by: u64) {
        self.next_seq = self.next_seq.saturating_add(by);
    }

    /// Where the log stands now; a durable database commit that records this mark makes
    /// every entry so far unnecessary.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            seq: self.next_seq - 1,
            pos: self.pos,
            zeroed: self.zeroed,
        }
    }

    /// The database has durably recorded `mark()`: the space before it is free.
    pub(crate) fn checkpointed(&mut self, mark: Mark) {
        self.ckpt_pos = mark.pos;
        self.used = if self.pos >= mark.pos {
            self.pos - mark.pos
        } else {
            self.capacity - mark.pos + (self.pos - DATA_START)
        };
        // Entries written after the mark stay unsynced if they were; the ones before it no
        // longer need a sync, but a later sync covers them anyway.
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Releases the device at close.
    pub(crate) fn close(self) -> io::Result<()> {
        self.dev.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A device in memory, cloneable so a test can reopen what a log wrote.
    #[derive(Debug, Clone, Default)]
    struct Mem(Arc<Mutex<Vec<u8>>>);

    impl StorageBackend for Mem {
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let v = self.0.lock().unwrap();
            let o = offset as usize;
            if o + out.len() > v.len() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            out.copy_from_slice(&v[o..o + out.len()]);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut v = self.0.lock().unwrap();
            let o = offset as usize;
            v[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn entry(tag: u8, n: usize) -> EntryBuf {
        let mut e = EntryBuf::default();
        let hash = [tag; 32];
        let record = vec![tag; n];
        e.put(&hash, &record, Some(b"resp"));
        e.delete(&[tag.wrapping_add(1); 32]);
        e
    }

    type Seen = Vec<(u64, u64, usize)>;

    fn replay(mem: &Mem, from: Mark) -> (Log, Seen) {
        let header = read_header(mem).unwrap().unwrap();
        let mut seen = Vec::new();
        let log = Log::recover(Box::new(mem.clone()), header, from, |seq, e| {
            seen.push((seq, e.next_token, e.changes.len()));
            Ok(())
        })
        .unwrap();
        (log, seen)
    }

    #[test]
    fn entries_come_back_in_order_and_decode() {
        let mem = Mem::default();
        let mut log = Log::create(Box::new(mem.clone()), 7, MIN_CAPACITY).unwrap();
        let start = log.mark();
        for i in 0..10u8 {
            let mut e = entry(i, 100 + i as usize);
            assert_eq!(log.append(&mut e, 1000 + i as u64).unwrap(), i as u64 + 1);
        }
        log.sync().unwrap();
        let (log2, seen) = replay(&mem, start);
        assert_eq!(seen.len(), 10);
        assert_eq!(seen[3], (4, 1003, 2));
        assert_eq!(
            (log2.mark().seq, log2.mark().pos),
            (log.mark().seq, log.mark().pos)
        );
    }

    #[test]
    fn payload_round_trips() {
        let mut e = EntryBuf::default();
        e.put(&[1; 32], b"rec", None);
        e.put(&[2; 32], b"rec2", Some(b"body"));
        e.delete(&[3; 32]);
        let bytes = e.seal(9, 1, 42).to_vec();
        let p = decode_payload(&bytes[ENTRY_HEADER..]).unwrap();
        assert_eq!(p.next_token, 42);
        assert_eq!(
            p.changes,
            vec![
                (
                    [1; 32],
                    Change::Put {
                        record: &b"rec"[..],
                        response: None
                    }
                ),
                (
                    [2; 32],
                    Change::Put {
                        record: &b"rec2"[..],
                        response: Some(&b"body"[..])
                    }
                ),
                ([3; 32], Change::Delete),
            ]
        );
        for cut in 0..bytes.len() - ENTRY_HEADER {
            assert!(decode_payload(&bytes[ENTRY_HEADER..ENTRY_HEADER + cut]).is_err());
        }
    }

    #[test]
    fn recovery_starts_at_the_checkpoint_and_stops_at_a_damaged_entry() {
        let mem = Mem::default();
        let mut log = Log::create(Box::new(mem.clone()), 7, MIN_CAPACITY).unwrap();
        for i in 0..3u8 {
            log.append(&mut entry(i, 50), 1).unwrap();
        }
        let ckpt = log.mark();
        log.checkpointed(ckpt);
        let mut positions = Vec::new();
        for i in 3..8u8 {
            positions.push(log.mark().pos);
            log.append(&mut entry(i, 50), 1).unwrap();
        }
        let (_, seen) = replay(&mem, ckpt);
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8]
        );
        // Flip one payload byte of entry 6: recovery keeps 4 and 5 only.
        let at = positions[2] as usize + ENTRY_HEADER + 5;
        mem.0.lock().unwrap()[at] ^= 1;
        let (log2, seen) = replay(&mem, ckpt);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(log2.mark().pos, positions[2]);
        assert_eq!(log2.mark().seq, 5);
    }

    #[test]
    fn the_log_wraps_and_never_overwrites_unchecked_entries() {
        let mem = Mem::default();
        let mut log = Log::create(Box::new(mem.clone()), 7, MIN_CAPACITY).unwrap();
        let mut ckpt = log.mark();
        let mut appended = 0u64;
        let mut bytes = 0u64;
        let mut refused = 0;
        for round in 0..2000u32 {
            let mut e = entry((round % 250) as u8, 700 + (round as usize * 37) % 900);
            if log.fits(e.len()) {
                bytes += e.len() as u64;
                log.append(&mut e, round as u64).unwrap();
                appended += 1;
            } else {
                refused += 1;
                ckpt = log.mark();
                log.checkpointed(ckpt);
            }
            if log.wants_checkpoint() && round % 3 == 0 {
                // Recovery from the last checkpoint sees exactly the entries since it.
                let (_, seen) = replay(&mem, ckpt);
                assert_eq!(seen.len() as u64, log.mark().seq - ckpt.seq);
                ckpt = log.mark();
                log.checkpointed(ckpt);
            }
        }
        let (_, seen) = replay(&mem, ckpt);
        assert_eq!(seen.len() as u64, log.mark().seq - ckpt.seq);
        assert_eq!(log.mark().seq, appended);
        assert!(refused > 0 || appended == 2000);
        // The log went round at least twice.
        assert!(bytes > 2 * MIN_CAPACITY, "{bytes}");
    }

    #[test]
    fn headers_are_checked() {
        let mem = Mem::default();
        assert!(read_header(&mem).unwrap().is_none());
        let log = Log::create(Box::new(mem.clone()), 99, MIN_CAPACITY).unwrap();
        assert_eq!(log.capacity(), MIN_CAPACITY);
        assert_eq!(
            read_header(&mem).unwrap(),
            Some(Header {
                id: 99,
                capacity: MIN_CAPACITY
            })
        );
        mem.0.lock().unwrap()[20] ^= 1;
        assert!(matches!(read_header(&mem), Err(LogError::BadHeader(_))));
        mem.0.lock().unwrap()[0] = b'X';
        assert!(matches!(read_header(&mem), Err(LogError::BadHeader(_))));
    }
}
