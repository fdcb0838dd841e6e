//! Read-only views of a store: one record as the store holds it, and what a check found.
//!
//! Why: the store, every engine and the read-only inspector hand out the same views, so they
//! are values of their own that import no engine. Invariant: a view is a copy; changing it
//! changes nothing stored.

use crate::format::record::State;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;

/// A read-only view of a record.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordInfo {
    /// The scope, as given to `begin`.
    pub scope: String,
    /// The key, as given to `begin`.
    pub key: String,
    /// In flight or completed.
    pub state: State,
    /// The fingerprint of the request that reserved the key.
    pub fingerprint: Fingerprint,
    /// When the key was reserved (ms since the Unix epoch).
    pub created_at: u64,
    /// When the lease runs out, while in flight (ms since the Unix epoch).
    pub lease_deadline: Option<u64>,
    /// When the record expires (ms since the Unix epoch).
    pub expires_at: u64,
    /// The fencing token of the reservation that created or completed it.
    pub token: u64,
    /// The stored response, once completed.
    pub response: Option<Response>,
    /// The last recovery point saved, while not completed (engines that read it: the file and
    /// memory engines).
    pub recovery_point: Option<RecoveryPoint>,
}

impl RecordInfo {
    /// The view of a decoded record and its stored response.
    pub(crate) fn of(rec: crate::format::record::Record, response: Option<Response>) -> RecordInfo {
        let h = rec.hot;
        RecordInfo {
            scope: rec.scope,
            key: rec.key,
            state: h.state,
            fingerprint: h.fingerprint,
            created_at: h.created_at,
            lease_deadline: (h.state == State::InFlight).then_some(h.lease_deadline),
            recovery_point: None,
            expires_at: h.expires_at,
            token: h.token,
            response,
        }
    }
}

/// What [`Store::check`](crate::Store::check) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Records in the file, expired ones included.
    pub records: u64,
    /// Of them, in flight.
    pub in_flight: u64,
    /// Of them, completed.
    pub completed: u64,
    /// Of them, expired and not removed yet.
    pub expired: u64,
    /// Stored response blobs, and recovery points of records not completed.
    pub responses: u64,
    /// Bytes of the stored response blobs and recovery points.
    pub response_bytes: u64,
    /// Entries in the expiry index. With `Durability::Memory`, entries in the engine's expiry
    /// heaps, which may hold leftovers of records that moved on or left (about four entries a
    /// record at most, plus 1,024 a shard).
    pub expiry_entries: u64,
    /// Every inconsistency found, one line each; empty for a sound file.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The most problems a report lists; more are counted in the last line.
pub(crate) const MAX_PROBLEMS: usize = 100;
