//! The state of a record: in flight or completed, and the fixed part every decision reads.
//!
//! Why: the state machine (`machine.rs`) decides on these values, and every engine keeps
//! them; how they are laid out in a file is the format's business (`format/record.rs`).
//! Invariant: `lease_deadline` is meaningful only while in flight, and `expires_at` is never
//! before it.

use crate::rules::fingerprint::Fingerprint;

/// The state of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reserved: an attempt is executing (or was, before a crash) and holds a lease.
    InFlight,
    /// Completed: the response is stored and replays until the record expires.
    Completed,
}

/// The fixed-size part of a record: everything a duplicate check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hot {
    pub(crate) state: State,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) status: u16,
    pub(crate) response_len: u32,
    pub(crate) created_at: u64,
    /// When the lease runs out (in flight); 0 once completed.
    pub(crate) lease_deadline: u64,
    /// When the record expires and is removed.
    pub(crate) expires_at: u64,
    pub(crate) token: u64,
}
