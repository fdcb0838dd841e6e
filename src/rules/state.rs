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
    /// In flight when the store last stopped without closing, and kept so by the policy
    /// [`InFlightAtOpen::MarkUnknown`](crate::InFlightAtOpen::MarkUnknown): the operation may
    /// or may not have had its effect. No attempt runs and none may start until the
    /// application resolves the key ([`Store::resolve`](crate::Store::resolve)); a retry is
    /// answered `OutcomeUnknown` (rule E6).
    OutcomeUnknown,
}

/// The fixed-size part of a record: everything a duplicate check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hot {
    pub(crate) state: State,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) status: u16,
    /// Bytes of the record's expiry entry value: the stored response once completed, the
    /// recovery point (none: 0) before.
    pub(crate) response_len: u32,
    pub(crate) created_at: u64,
    /// When the lease runs out (in flight); 0 once completed.
    pub(crate) lease_deadline: u64,
    /// When the record expires and is removed.
    pub(crate) expires_at: u64,
    pub(crate) token: u64,
}

impl Hot {
    /// Whether the record carries a recovery point: it is not completed and its expiry entry
    /// holds one.
    pub(crate) fn has_point(&self) -> bool {
        self.state != State::Completed && self.response_len > 0
    }
}
