//! The idempotency state machine, free of any storage: given what is known about a key, what
//! happens to a `begin`, a `complete`, a renewal or a release.
//!
//! Why: the rules (C1-C9) must be decided the same way by the group-commit writer (which sees
//! the authoritative record inside its write transaction) and by the hot index fast path (which
//! sees a copy), and a future distributed backend must decide them the same way too. Keeping
//! the decisions here, as pure functions of (record, request, now), makes that true by
//! construction and lets the model test check them directly.
//!
//! Invariants:
//! - a completed record that has not expired is never executed again (C3), and is replayed only
//!   to a request with an equal fingerprint (C4);
//! - an in-flight record is taken over only once its lease deadline has passed (C8), and the
//!   taker gets a fresh, higher fencing token (handed out by the caller of [`decide_begin`]);
//! - a lease holder's mutation is accepted only while the record is in flight with its token.

use crate::error::LeaseError;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::state::{Hot, State};

/// What a `begin` must do, given the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeginDecision {
    /// Reserve the key and execute (C2). `takeover` is set when an in-flight record whose
    /// lease ran out is replaced (C8).
    Execute { takeover: bool },
    /// Replay the stored response (C3).
    Replay,
    /// Another attempt holds a live lease (C5).
    InProgress,
    /// The key was used for a different request (C4).
    Conflict,
    /// The key's outcome is unknown (E6): nothing runs until the application resolves it.
    OutcomeUnknown,
}

/// Whether a record is past its expiry and so behaves as absent (C9).
pub(crate) fn expired(hot: &Hot, now: u64) -> bool {
    now >= hot.expires_at
}

/// Decides a `begin` for a request with fingerprint `fp` at time `now`.
pub(crate) fn decide_begin(current: Option<&Hot>, fp: &Fingerprint, now: u64) -> BeginDecision {
    let Some(hot) = current else {
        return BeginDecision::Execute { takeover: false };
    };
    if expired(hot, now) {
        return BeginDecision::Execute { takeover: false };
    }
    if hot.fingerprint != *fp {
        return BeginDecision::Conflict;
    }
    match hot.state {
        State::Completed => BeginDecision::Replay,
        State::InFlight if now < hot.lease_deadline => BeginDecision::InProgress,
        State::InFlight => BeginDecision::Execute { takeover: true },
        State::OutcomeUnknown => BeginDecision::OutcomeUnknown,
    }
}

/// The record a takeover or a resolution reserves for reservation `token` at `now`, in place
/// of `old` (C8, E6): a fresh reservation of `old`'s request that keeps `old`'s recovery
/// point (P2), so the new holder resumes where the old one stopped.
pub(crate) fn taken_over(old: &Hot, token: u64, now: u64, lease_ms: u64, ttl_ms: u64) -> Hot {
    Hot {
        response_len: if old.has_point() { old.response_len } else { 0 },
        ..reserved(old.fingerprint, token, now, lease_ms, ttl_ms)
    }
}

/// What letting go of the held record `held` leaves (C6, P3, E6), under `token`, a token its
/// holder does not have (so that the holder is refused from then on, C8):
/// - nothing, so the next attempt executes afresh;
/// - when the record carries a recovery point, the record in flight with its lease ended
///   (`lease_deadline` 0: let go, not lapsed), so the next attempt takes it over at once and
///   resumes from the point instead of repeating steps that committed;
/// - for a record whose outcome is unknown, given up without a verdict (`explicit` false: a
///   dropped reservation, a closure that failed, a status not kept), the record unknown as
///   before, for another resolution: only an explicit release says the effect did not happen.
pub(crate) fn released(held: Hot, token: u64, explicit: bool) -> Option<Hot> {
    if held.state == State::OutcomeUnknown && !explicit {
        return Some(Hot {
            lease_deadline: 0,
            token,
            ..held
        });
    }
    held.has_point().then_some(Hot {
        state: State::InFlight,
        lease_deadline: 0,
        token,
        ..held
    })
}

/// The record a resolution of `old`, a record whose outcome is unknown, holds for
/// reservation `token` from `now` (E6): still unknown (a retry meanwhile is told so, and no
/// lease running out lets one execute), with a lease for the resolution and its point.
pub(crate) fn resolving(old: Hot, token: u64, now: u64, lease_ms: u64) -> Hot {
    let lease_deadline = now.saturating_add(lease_ms);
    Hot {
        token,
        lease_deadline,
        expires_at: old.expires_at.max(lease_deadline),
        ..old
    }
}

/// Whether `hot` is a record whose outcome is unknown and that no resolution holds at `now`,
/// in a store whose current open hands out tokens from `first_token`: none ever did, its lease
/// has run out, or it was made before this open (its token is lower), whatever its lease says.
/// One process uses a file at a time (C11), so a resolution, like any reservation, does not
/// survive a restart: its holder is gone, and waiting out its lease would hide the key from
/// the resolver hook run right after the open.
pub(crate) fn resolvable(hot: &Hot, now: u64, first_token: u64) -> bool {
    let held = now < hot.lease_deadline && hot.token >= first_token;
    hot.state == State::OutcomeUnknown && !expired(hot, now) && !held
}

/// The record `held` with its outcome unknown (E6): kept, with no lease, until it expires or
/// the application resolves it.
pub(crate) fn outcome_unknown(held: Hot) -> Hot {
    Hot {
        state: State::OutcomeUnknown,
        lease_deadline: 0,
        ..held
    }
}

/// Why a lease holder's mutation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HolderRefusal {
    /// Another reservation holds the key now (C8).
    Fenced { current: u64 },
    /// No reservation with this token exists.
    NotReserved,
}

/// Checks that the holder of `token` still owns the key: the record is in flight (or being
/// resolved, E6) with that token. A lease that ran out without a takeover still owns the key.
pub(crate) fn check_holder(current: Option<&Hot>, token: u64) -> Result<(), HolderRefusal> {
    match current {
        Some(hot) if hot.state != State::Completed && hot.token == token => Ok(()),
        // Tokens grow store-wide, so a record with a higher token was reserved after ours.
        Some(hot) if hot.token > token => Err(HolderRefusal::Fenced { current: hot.token }),
        _ => Err(HolderRefusal::NotReserved),
    }
}

/// The record of reservation `token`, made at `now` for a request with fingerprint `fp`
/// (C2, C8): in flight, holding a lease of `lease_ms`, expiring `ttl_ms` after creation but
/// never before its lease runs out.
pub(crate) fn reserved(fp: Fingerprint, token: u64, now: u64, lease_ms: u64, ttl_ms: u64) -> Hot {
    let lease_deadline = now.saturating_add(lease_ms);
    Hot {
        state: State::InFlight,
        fingerprint: fp,
        status: 0,
        response_len: 0,
        created_at: now,
        lease_deadline,
        expires_at: in_flight_expiry(now, lease_deadline, ttl_ms),
        token,
    }
}

/// The record `held` completed at `now` with a stored response of `status` and `len` encoded
/// bytes (C3): no lease, expiring `ttl_ms` from now.
pub(crate) fn completed(held: Hot, status: u16, len: usize, now: u64, ttl_ms: u64) -> Hot {
    Hot {
        state: State::Completed,
        status,
        response_len: u32::try_from(len).unwrap_or(u32::MAX),
        lease_deadline: 0,
        expires_at: now.saturating_add(ttl_ms),
        ..held
    }
}

/// The error a refused lease holder gets.
pub(crate) fn lease_refusal(r: HolderRefusal, token: u64) -> LeaseError {
    match r {
        HolderRefusal::Fenced { current } => LeaseError::Fenced { token, current },
        HolderRefusal::NotReserved => LeaseError::NotReserved { token },
    }
}

/// The expiry time of an in-flight record: the TTL counted from creation, but never before
/// its lease runs out, so a record cannot vanish while its holder still owns it.
pub(crate) fn in_flight_expiry(created_at: u64, lease_deadline: u64, ttl_ms: u64) -> u64 {
    created_at.saturating_add(ttl_ms).max(lease_deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(state: State, fp: u8, lease: u64, expires: u64, token: u64) -> Hot {
        Hot {
            state,
            fingerprint: Fingerprint::from_parts(1, [fp; 32]),
            status: 200,
            response_len: 0,
            created_at: 0,
            lease_deadline: lease,
            expires_at: expires,
            token,
        }
    }

    #[test]
    fn begin_rules() {
        let fp = Fingerprint::from_parts(1, [1; 32]);
        let other = Fingerprint::from_parts(1, [2; 32]);
        use BeginDecision::*;
        assert_eq!(
            decide_begin(None, &fp, 5),
            Execute { takeover: false },
            "C2"
        );
        let done = hot(State::Completed, 1, 0, 100, 1);
        assert_eq!(decide_begin(Some(&done), &fp, 5), Replay, "C3");
        assert_eq!(decide_begin(Some(&done), &other, 5), Conflict, "C4");
        assert_eq!(
            decide_begin(Some(&done), &fp, 100),
            Execute { takeover: false },
            "C9"
        );
        let busy = hot(State::InFlight, 1, 50, 100, 1);
        assert_eq!(decide_begin(Some(&busy), &fp, 5), InProgress, "C5");
        assert_eq!(decide_begin(Some(&busy), &other, 5), Conflict, "C4");
        assert_eq!(
            decide_begin(Some(&busy), &fp, 50),
            Execute { takeover: true },
            "C8"
        );
        assert_eq!(decide_begin(Some(&busy), &other, 50), Conflict, "C4");
    }

    #[test]
    fn resolution_rules() {
        // Marked at open: no lease, resolvable at once; a completed record never is.
        let unknown = hot(State::OutcomeUnknown, 1, 0, 100, 7);
        assert!(resolvable(&unknown, 5, 8), "E6");
        assert!(!resolvable(&hot(State::Completed, 1, 0, 100, 7), 5, 8));
        assert!(!resolvable(&unknown, 100, 8), "C9: expired");
        // Held by a resolution of this open until its lease runs out.
        let held = resolving(unknown, 9, 5, 10);
        assert!(!resolvable(&held, 14, 8), "E6: one resolution at a time");
        assert!(resolvable(&held, 15, 8), "C8: its lease ran out");
        // A resolution made before this open (tokens from 20 now) is gone with its process.
        assert!(
            resolvable(&held, 6, 20),
            "C11: no reservation survives a restart"
        );
    }

    #[test]
    fn holder_rules() {
        let busy = hot(State::InFlight, 1, 50, 100, 7);
        assert_eq!(check_holder(Some(&busy), 7), Ok(()));
        assert_eq!(
            check_holder(Some(&busy), 6),
            Err(HolderRefusal::Fenced { current: 7 })
        );
        assert_eq!(
            check_holder(Some(&hot(State::Completed, 1, 0, 100, 7)), 7),
            Err(HolderRefusal::NotReserved)
        );
        assert_eq!(check_holder(None, 7), Err(HolderRefusal::NotReserved));
    }
}
