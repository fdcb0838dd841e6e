//! The scripts' replies, read into the store's answers, and the I/O thread's failures into
//! errors.
//!
//! Why: one place says what each reply means and which counter it moves, so the engine's
//! methods only build calls. Invariant: a reply of an unexpected shape is `Corrupted`, never a
//! panic and never a guess.

use ::redis::Value;

use crate::backend::Claim;
use crate::engine::Shared;
use crate::error::{BeginError, Unavailable};
use crate::rules::key::KeyHash;
use crate::stats::bump;

use super::io::Failure;
use super::record::{self, number, words};

/// What a caller is told when a call failed on its way.
pub(crate) fn unavailable(f: Failure) -> Unavailable {
    match f {
        Failure::NotSent(cause) => Unavailable::Unreachable { cause },
        Failure::NoReply(cause) => Unavailable::OutcomeUnknown { cause },
        Failure::Server(detail) => {
            // Errors the server gives before running a command: nothing was applied.
            const REFUSALS: [&str; 11] = [
                "OOM",
                "READONLY",
                "NOPERM",
                "NOAUTH",
                "LOADING",
                "BUSY",
                "MASTERDOWN",
                "CLUSTERDOWN",
                "TRYAGAIN",
                "NOREPLICAS",
                "MOVED",
            ];
            if REFUSALS.iter().any(|r| detail.starts_with(r)) {
                Unavailable::Refused { detail }
            } else {
                Unavailable::Corrupted {
                    detail: format!("the server failed a script: {detail}"),
                }
            }
        }
    }
}

/// The first word of a script's reply, and the rest.
pub(crate) fn verdict(what: &str, v: Value) -> Result<(Vec<u8>, Vec<Vec<u8>>), Unavailable> {
    let mut w = words(what, v)?;
    if w.is_empty() {
        return Err(Unavailable::Corrupted {
            detail: format!("empty reply to {what}"),
        });
    }
    let first = w.remove(0);
    Ok((first, w))
}

/// How long a completed record the server answered with lives on: its expiry and the
/// server's time when it answered, on the deciding clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Life {
    pub(crate) expires_at: u64,
    pub(crate) now: u64,
}

impl Life {
    fn of(ex: &[u8], now: &[u8]) -> Result<Life, Unavailable> {
        Ok(Life {
            expires_at: number("record expiry", ex)?,
            now: number("clock", now)?,
        })
    }
}

/// A claim's answer, with the life of the completed record it replays.
pub(crate) fn decode_claim(shared: &Shared, v: Value) -> Result<(Claim, Option<Life>), BeginError> {
    let bad = |v: &[Vec<u8>]| {
        BeginError::Unavailable(Unavailable::Corrupted {
            detail: format!("unexpected reply to a claim: {v:?}"),
        })
    };
    let (first, rest) = verdict("a claim", v)?;
    let counters = &shared.counters;
    match (first.as_slice(), rest.as_slice()) {
        (b"conflict", []) => {
            bump(&counters.conflicts);
            Ok((Claim::Conflict, None))
        }
        (b"scope_full", []) => {
            bump(&counters.scope_full);
            Err(BeginError::ScopeFull {
                limit: shared.config.max_records_per_scope,
            })
        }
        (b"busy", []) => {
            bump(&counters.in_progress);
            Ok((
                Claim::InProgress {
                    retry_after: shared.config.retry_after,
                },
                None,
            ))
        }
        (b"replay", [blob, ex, now]) => {
            let response = record::response(blob)?;
            let life = Life::of(ex, now)?;
            bump(&counters.replays);
            Ok((Claim::Replay(response), Some(life)))
        }
        (b"execute", [token, deadline, takeover, point]) => {
            let token = number("token", token)?;
            let lease_deadline = number("lease deadline", deadline)?;
            let recovery = record::point(point)?;
            bump(&counters.executes);
            if takeover.as_slice() == b"1" {
                crate::stats::count_takeover(shared);
            }
            Ok((
                Claim::Execute {
                    token,
                    lease_deadline,
                    recovery,
                },
                None,
            ))
        }
        _ => Err(bad(&rest)),
    }
}

/// A refusal of the call of `holder` (a key hash and a token): `fenced` (counted, and said in
/// the store's events) or `not_reserved`.
pub(crate) fn holder_refusal(
    shared: &Shared,
    (hash, token): (&KeyHash, u64),
    what: &str,
    (first, rest): (&[u8], &[Vec<u8>]),
) -> Result<Option<u64>, Unavailable> {
    match (first, rest) {
        (b"fenced", [current]) => {
            let current = number("token", current)?;
            crate::stats::count_fenced(shared, hash, (token, current));
            Ok(Some(current))
        }
        (b"not_reserved", []) => Ok(None),
        _ => Err(Unavailable::Corrupted {
            detail: format!("unexpected reply to {what}: {first:?} {rest:?}"),
        }),
    }
}

/// A completion's answer: stored (with the record's fingerprint and life) or released.
pub(crate) enum Completed {
    Stored(Vec<u8>, Life),
    Released,
}

/// Reads a completion's answer; a refusal is `Err(Some(current))` (fenced) or `Err(None)`.
pub(crate) fn decode_completion(
    shared: &Shared,
    holder: (&KeyHash, u64),
    v: Value,
) -> Result<Result<Completed, Option<u64>>, Unavailable> {
    let (first, rest) = verdict("a completion", v)?;
    match (first.as_slice(), rest.as_slice()) {
        (b"stored", [fp, ex, now]) => {
            bump(&shared.counters.completions);
            Ok(Ok(Completed::Stored(fp.clone(), Life::of(ex, now)?)))
        }
        (b"released", []) => {
            bump(&shared.counters.releases);
            Ok(Ok(Completed::Released))
        }
        _ => holder_refusal(shared, holder, "a completion", (&first, &rest)).map(Err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_before_a_script_runs_are_refusals() {
        assert!(matches!(
            unavailable(Failure::Server("OOM command not allowed".into())),
            Unavailable::Refused { .. }
        ));
        assert!(matches!(
            unavailable(Failure::Server("ERR user_script:3: bad".into())),
            Unavailable::Corrupted { .. }
        ));
    }
}
