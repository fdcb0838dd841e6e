//! [`Outcome`]: what the layer did with a request, as a response extension.
//!
//! Why: an access log, a metrics layer or a test around the layer needs to tell a replay from
//! an execution and an in-progress `409` from a conflict `409`, which the status alone cannot.
//! Invariant: every response the layer answers carries exactly one `Outcome` in its
//! extensions, set where the answer is made (`answer.rs` for the layer's own answers,
//! `guarded.rs` for a response of the inner service, `future.rs` for a request it does not
//! guard).

use super::answer::code;

/// What the layer did with a request: read it with
/// `response.extensions().get::<Outcome>()` in an outer layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The inner service ran under a reservation of the key: this is its one execution
    /// (including answers about that execution: a handler that failed, a response too large
    /// to keep).
    Executed,
    /// The stored response of an earlier execution, replayed (H4).
    Replayed,
    /// `409`: another attempt holds the key (H6).
    InProgress,
    /// `409` or `422`: the key was used for another request (H5).
    Conflict,
    /// `409`: the key's outcome is unknown until it is resolved (E6, H18).
    OutcomeUnknown,
    /// The request was refused before the store was asked or reserved anything: a missing or
    /// invalid key, no credentials, a body too large or unreadable, a full scope, a replay the
    /// client does not accept.
    Refused,
    /// `503`: the store cannot answer, and the contract fails closed.
    StoreUnavailable,
    /// The store could not answer and the contract fails open: the inner service ran without
    /// protection ([`OnStoreError::FailOpen`](super::OnStoreError::FailOpen)).
    Unprotected,
    /// The contract does not guard this request: it passed through untouched.
    Unguarded,
}

impl Outcome {
    /// Every outcome, for the metric handles registered per outcome.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Outcome; 9] = [
        Outcome::Executed,
        Outcome::Replayed,
        Outcome::InProgress,
        Outcome::Conflict,
        Outcome::OutcomeUnknown,
        Outcome::Refused,
        Outcome::StoreUnavailable,
        Outcome::Unprotected,
        Outcome::Unguarded,
    ];

    /// A short lowercase name, for logs and metric labels: `executed`, `replayed`,
    /// `in_progress`, `conflict`, `outcome_unknown`, `refused`, `store_unavailable`,
    /// `unprotected`, `unguarded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InProgress => "in_progress",
            Outcome::Conflict => "conflict",
            Outcome::OutcomeUnknown => "outcome_unknown",
            Outcome::Refused => "refused",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::Unprotected => "unprotected",
            Outcome::Unguarded => "unguarded",
        }
    }

    /// The outcome of one of the layer's error answers, by its code.
    pub(crate) fn of_code(c: &str) -> Outcome {
        match c {
            code::CONFLICT => Outcome::Conflict,
            code::IN_PROGRESS => Outcome::InProgress,
            code::OUTCOME_UNKNOWN => Outcome::OutcomeUnknown,
            code::UNAVAILABLE => Outcome::StoreUnavailable,
            // Answers about the one execution of the key.
            code::HANDLER_FAILED | code::RESPONSE_NOT_KEPT => Outcome::Executed,
            _ => Outcome::Refused,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
