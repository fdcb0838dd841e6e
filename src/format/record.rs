//! The on-disk layout: tables (format version 4), the record, and the expiry index key.
//!
//! Why: the file must outlive any version of this crate, so its bytes are defined here and in
//! `docs/format.md`, not by a serialisation library, and golden-bytes tests pin them.
//! Invariants: `Record::decode(&record.encode())` gives back `record`; `decode` never panics
//! and refuses any version, state or length it does not know; offsets below are chained
//! constants checked at compile time against the documented header length.

use std::cmp::Ordering;
use std::fmt;

use redb::{Key as RedbKey, TableDefinition, TypeName, Value, WriteTransaction};

use super::bytes::{u8_at, u16_at, u32_at, u64_at};
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::KeyHash;
pub(crate) use crate::rules::state::{Hot, State};

/// Main table: key hash → record.
pub(crate) const RECORDS: TableDefinition<&[u8; 32], RecordBytes> =
    TableDefinition::new("idem_records");
/// Expiry index with the stored responses: (expires_at big-endian, key hash) → the record's
/// response blob, or no bytes while it has none. Keyed by time, so the entries a checkpoint
/// writes land at the right edge of the tree instead of on random leaves.
pub(crate) const EXPIRY: TableDefinition<ExpiryKey, ExpiryValue> =
    TableDefinition::new("idem_expiry_responses");
/// Live records per scope: scope → how many records of that scope the file holds (expired
/// ones not removed yet included); a scope with none has no entry. Kept in step with the
/// records by every transaction that adds or removes one (`scope_count.rs`); built from the
/// records by the migration from format 2.
pub(crate) const SCOPE_COUNTS: TableDefinition<&str, u64> =
    TableDefinition::new("idem_scope_counts");
/// Format 1's responses table: key hash → response blob. Read only by the migration.
pub(crate) const V1_RESPONSES: TableDefinition<&[u8; 32], Blob> =
    TableDefinition::new("idem_responses");
/// Format 1's expiry index: (expires_at big-endian, key hash) → (). Read only by the migration.
pub(crate) const V1_EXPIRY: TableDefinition<ExpiryKey, ()> = TableDefinition::new("idem_expiry");
/// Opens each of the format's tables on its own and closes it again (creating those that do not
/// exist), so that opening them together afterwards only repeats lookups that have succeeded.
///
/// Why: on some damaged files redb panics inside `open_table` while holding its lock on the
/// transaction's tables. If another table of the transaction is open then, dropping it during
/// the unwind finds that lock poisoned and panics again, and a panic during a panic aborts the
/// process. Opened alone, a table's panic unwinds to the store's `catch_unwind` and becomes an
/// error. Call this before opening two tables of one write transaction together.
pub(crate) fn open_each_alone(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    drop(txn.open_table(META)?);
    drop(txn.open_table(RECORDS)?);
    drop(txn.open_table(EXPIRY)?);
    drop(txn.open_table(SCOPE_COUNTS)?);
    Ok(())
}

/// Store-wide counters: name → u64.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("idem_meta");

/// Meta key holding the file's format version.
pub(crate) const META_FORMAT: &str = "format_version";
/// Meta key holding the next fencing token to hand out.
pub(crate) const META_NEXT_TOKEN: &str = "next_token";
/// Meta key present (= 1) only while the file is closed cleanly: written by the final commit
/// of a close, removed by the commit that opens the file.
pub(crate) const META_CLEAN: &str = "clean_shutdown";
/// Meta key holding the identity of the write-ahead log bound to this file (absent: none).
pub(crate) const META_LOG_ID: &str = "log_id";
/// Meta key holding the sequence number of the last log entry this file holds durably.
pub(crate) const META_LOG_SEQ: &str = "log_checkpoint_seq";
/// Meta key holding the log position where the entries after that one start.
pub(crate) const META_LOG_POS: &str = "log_checkpoint_pos";
/// Meta key holding how far the log's blocks are known to be written (a performance hint).
pub(crate) const META_LOG_ZEROED: &str = "log_zeroed";
/// The store's secret, 32 random bytes as four little-endian `u64`s, made when a file is
/// first opened by a release that knows it: it keys the HTTP layer's digest of credentials.
pub(crate) const META_SCOPE_SECRET: [&str; 4] = [
    "scope_secret_0",
    "scope_secret_1",
    "scope_secret_2",
    "scope_secret_3",
];
/// Meta key holding how many records are in flight, kept in step like [`SCOPE_COUNTS`]: an open
/// that releases in-flight records scans the records only when it is not zero.
pub(crate) const META_IN_FLIGHT: &str = "in_flight_records";
/// How far the token counter jumps when a file is opened after a crash. Tokens handed out
/// after the last durable commit were lost with it (buffered mode, non-durable reservations),
/// and must never be handed out again: no session issues 2^32 tokens between durable commits.
pub(crate) const TOKEN_SKIP_AFTER_CRASH: u64 = 1 << 32;
/// The format version this build writes and the newest it reads. Format 4 adds the record
/// state "outcome unknown" and recovery points (`docs/format.md`); a format 3 file is a valid
/// format 4 file, so its migration only writes the new version, which keeps builds that
/// would misread the additions from opening the file.
pub(crate) const FORMAT_VERSION: u64 = 4;
/// The oldest format version this build migrates at open.
pub(crate) const OLDEST_MIGRATED: u64 = 1;

/// Record layout version written in byte 0.
pub(crate) const RECORD_VERSION: u8 = 1;

// Byte offsets of the fixed part, chained so each follows from the one before.
const OFF_VERSION: usize = 0;
const OFF_STATE: usize = OFF_VERSION + 1;
const OFF_FP_VERSION: usize = OFF_STATE + 1;
const OFF_FLAGS: usize = OFF_FP_VERSION + 1;
const OFF_STATUS: usize = OFF_FLAGS + 1;
const OFF_SCOPE_LEN: usize = OFF_STATUS + 2;
const OFF_KEY_LEN: usize = OFF_SCOPE_LEN + 2;
const OFF_RESERVED: usize = OFF_KEY_LEN + 2;
const OFF_RESPONSE_LEN: usize = OFF_RESERVED + 2;
const OFF_FP: usize = OFF_RESPONSE_LEN + 4;
const OFF_CREATED: usize = OFF_FP + 32;
const OFF_LEASE: usize = OFF_CREATED + 8;
const OFF_EXPIRES: usize = OFF_LEASE + 8;
const OFF_TOKEN: usize = OFF_EXPIRES + 8;
/// Length of the fixed part; the scope and key bytes follow it.
pub(crate) const FIXED_LEN: usize = OFF_TOKEN + 8;
const _: () = assert!(
    FIXED_LEN == 80,
    "docs/format.md documents an 80-byte fixed part"
);

/// The byte a state is stored as.
fn state_byte(state: State) -> u8 {
    match state {
        State::InFlight => 1,
        State::Completed => 2,
        State::OutcomeUnknown => 3,
    }
}

/// Flag bit: the record's expiry entry holds a recovery point (`format/point.rs`). Set exactly
/// when the record is not completed and `response_len`, the point's length, is not zero.
const FLAG_POINT: u8 = 0x01;

/// The state stored as `b`, if any.
fn state_of_byte(b: u8) -> Option<State> {
    match b {
        1 => Some(State::InFlight),
        2 => Some(State::Completed),
        3 => Some(State::OutcomeUnknown),
        _ => None,
    }
}

/// A whole record: the hot part plus the raw scope and key, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) hot: Hot,
    pub(crate) scope: String,
    pub(crate) key: String,
}

/// Why record bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordError {
    Short(usize),
    Version(u8),
    State(u8),
    Flags(u8),
    Length { expected: usize, found: usize },
    Text,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Short(n) => write!(f, "record is {n} bytes, shorter than its fixed part"),
            RecordError::Version(v) => write!(f, "record has unknown layout version {v}"),
            RecordError::State(s) => write!(f, "record has unknown state {s}"),
            RecordError::Flags(x) => write!(f, "record has unknown flags 0x{x:02x}"),
            RecordError::Length { expected, found } => {
                write!(f, "record is {found} bytes; its lengths say {expected}")
            }
            RecordError::Text => f.write_str("record scope or key is not valid text"),
        }
    }
}

impl Hot {
    /// Decodes the fixed part from the first [`FIXED_LEN`] bytes of a record.
    pub(crate) fn decode(b: &[u8]) -> Result<Hot, RecordError> {
        if b.len() < FIXED_LEN {
            return Err(RecordError::Short(b.len()));
        }
        let version = u8_at(b, OFF_VERSION);
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let state =
            state_of_byte(u8_at(b, OFF_STATE)).ok_or(RecordError::State(u8_at(b, OFF_STATE)))?;
        let flags = u8_at(b, OFF_FLAGS);
        let response_len = u32_at(b, OFF_RESPONSE_LEN);
        let point = state != State::Completed && response_len > 0;
        if flags != if point { FLAG_POINT } else { 0 } {
            return Err(RecordError::Flags(flags));
        }
        let mut digest = [0u8; 32];
        if let Some(s) = b.get(OFF_FP..OFF_FP + 32) {
            digest.copy_from_slice(s);
        }
        Ok(Hot {
            state,
            fingerprint: Fingerprint::from_parts(u8_at(b, OFF_FP_VERSION), digest),
            status: u16_at(b, OFF_STATUS),
            response_len,
            created_at: u64_at(b, OFF_CREATED),
            lease_deadline: u64_at(b, OFF_LEASE),
            expires_at: u64_at(b, OFF_EXPIRES),
            token: u64_at(b, OFF_TOKEN),
        })
    }
}

impl Record {
    /// Encodes the record (layout in `docs/format.md`).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let h = &self.hot;
        let scope = self.scope.as_bytes();
        let key = self.key.as_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + scope.len() + key.len());
        out.push(RECORD_VERSION);
        out.push(state_byte(h.state));
        out.push(h.fingerprint.version());
        out.push(if h.has_point() { FLAG_POINT } else { 0 });
        out.extend_from_slice(&h.status.to_le_bytes());
        // Scope and key lengths are bounded by their validation (255 and 4096 bytes).
        out.extend_from_slice(&(scope.len() as u16).to_le_bytes());
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]); // reserved
        out.extend_from_slice(&h.response_len.to_le_bytes());
        out.extend_from_slice(h.fingerprint.digest());
        out.extend_from_slice(&h.created_at.to_le_bytes());
        out.extend_from_slice(&h.lease_deadline.to_le_bytes());
        out.extend_from_slice(&h.expires_at.to_le_bytes());
        out.extend_from_slice(&h.token.to_le_bytes());
        out.extend_from_slice(scope);
        out.extend_from_slice(key);
        out
    }

    /// The scope of an encoded record, read from its header alone: present whenever the
    /// header's scope length fits the bytes and they are UTF-8, so that a record whose other
    /// parts are damaged is still counted against its scope.
    pub(crate) fn scope_of(b: &[u8]) -> Option<&str> {
        let scope_len = usize::from(u16_at(b, OFF_SCOPE_LEN));
        let scope = b.get(FIXED_LEN..FIXED_LEN.checked_add(scope_len)?)?;
        std::str::from_utf8(scope).ok()
    }

    /// Decodes a record.
    pub(crate) fn decode(b: &[u8]) -> Result<Record, RecordError> {
        let hot = Hot::decode(b)?;
        let scope_len = usize::from(u16_at(b, OFF_SCOPE_LEN));
        let key_len = usize::from(u16_at(b, OFF_KEY_LEN));
        let expected = FIXED_LEN + scope_len + key_len;
        if b.len() != expected {
            return Err(RecordError::Length {
                expected,
                found: b.len(),
            });
        }
        let scope = b.get(FIXED_LEN..FIXED_LEN + scope_len).unwrap_or(&[]);
        let key = b.get(FIXED_LEN + scope_len..).unwrap_or(&[]);
        let scope = std::str::from_utf8(scope).map_err(|_| RecordError::Text)?;
        let key = std::str::from_utf8(key).map_err(|_| RecordError::Text)?;
        Ok(Record {
            hot,
            scope: scope.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// Declares a redb value type that stores raw bytes under an idemstore type name (redb keeps
/// the name in the file and refuses a table opened under another one).
macro_rules! byte_value {
    ($(#[$doc:meta])* $name:ident, $type_name:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) struct $name;

        impl Value for $name {
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
                TypeName::new($type_name)
            }
        }
    };
}

byte_value!(
    /// redb value type of the records table: raw record bytes, decoded by [`Record::decode`].
    RecordBytes,
    "idemstore::Record"
);
byte_value!(
    /// redb value type of format 1's responses table: a response blob.
    Blob,
    "idemstore::ResponseBlob"
);
byte_value!(
    /// redb value type of the expiry index: a response blob, or no bytes for a record without a
    /// stored response (a blob is never empty: it starts with its version byte).
    ExpiryValue,
    "idemstore::ResponseOrNone"
);

/// The stored response in an expiry index value, if it holds one.
pub(crate) fn stored_response(value: &[u8]) -> Option<&[u8]> {
    (!value.is_empty()).then_some(value)
}

/// Expiry index key: `expires_at` big-endian then the key hash, so byte order is time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExpiryKey(pub(crate) [u8; 40]);

impl ExpiryKey {
    pub(crate) fn new(expires_at: u64, hash: &KeyHash) -> ExpiryKey {
        let mut k = [0u8; 40];
        k[..8].copy_from_slice(&expires_at.to_be_bytes());
        k[8..].copy_from_slice(&hash.0);
        ExpiryKey(k)
    }

    /// The largest key with this expiry time: the end of a range "expired by `t`".
    pub(crate) fn upper(expires_at: u64) -> ExpiryKey {
        let mut k = [0xffu8; 40];
        k[..8].copy_from_slice(&expires_at.to_be_bytes());
        ExpiryKey(k)
    }

    pub(crate) fn expires_at(&self) -> u64 {
        le_u64_be(&self.0)
    }

    pub(crate) fn hash(&self) -> KeyHash {
        let mut h = [0u8; 32];
        h.copy_from_slice(&self.0[8..]);
        KeyHash(h)
    }
}

fn le_u64_be(b: &[u8; 40]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Value for ExpiryKey {
    type SelfType<'a>
        = ExpiryKey
    where
        Self: 'a;
    type AsBytes<'a>
        = [u8; 40]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        Some(40)
    }

    fn from_bytes<'a>(data: &'a [u8]) -> ExpiryKey
    where
        Self: 'a,
    {
        // redb only hands back bytes it stored with the fixed width of 40.
        let mut k = [0u8; 40];
        let n = data.len().min(40);
        k[..n].copy_from_slice(&data[..n]);
        ExpiryKey(k)
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a ExpiryKey) -> [u8; 40]
    where
        Self: 'b,
    {
        value.0
    }

    fn type_name() -> TypeName {
        TypeName::new("idemstore::ExpiryKey")
    }
}

impl RedbKey for ExpiryKey {
    fn compare(data1: &[u8], data2: &[u8]) -> Ordering {
        data1.cmp(data2)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            hot: Hot {
                state: State::Completed,
                fingerprint: Fingerprint::from_parts(1, [0xab; 32]),
                status: 201,
                response_len: 300,
                created_at: 1_000,
                lease_deadline: 0,
                expires_at: 86_401_000,
                token: 7,
            },
            scope: "acct".into(),
            key: "k-1".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let r = sample();
        let e = r.encode();
        assert_eq!(e.len(), FIXED_LEN + 4 + 3);
        assert_eq!(Record::decode(&e).unwrap(), r);
    }

    #[test]
    fn decode_refuses_damage_without_panicking() {
        let e = sample().encode();
        for n in 0..e.len() {
            assert!(Record::decode(&e[..n]).is_err(), "prefix {n}");
        }
        for i in 0..e.len() {
            for bit in 0..8 {
                let mut m = e.clone();
                m[i] ^= 1 << bit;
                let _ = Record::decode(&m);
            }
        }
    }

    #[test]
    fn expiry_key_orders_by_time() {
        let a = ExpiryKey::new(5, &KeyHash([0xff; 32]));
        let b = ExpiryKey::new(6, &KeyHash([0; 32]));
        assert_eq!(ExpiryKey::compare(&a.0, &b.0), Ordering::Less);
        assert_eq!(a.expires_at(), 5);
        assert_eq!(b.hash(), KeyHash([0; 32]));
        assert!(ExpiryKey::compare(&ExpiryKey::upper(5).0, &b.0) == Ordering::Less);
    }
}
