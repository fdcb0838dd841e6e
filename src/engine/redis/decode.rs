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

pub(crate) fn decode_claim(shared: &Shared, v: Value) -> Result<Claim, BeginError> {
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
            Ok(Claim::Conflict)
        }
        (b"busy", []) => {
            bump(&counters.in_progress);
            Ok(Claim::InProgress {
                retry_after: shared.config.retry_after,
            })
        }
        (b"replay", [blob]) => {
            let response = record::response(blob)?;
            bump(&counters.replays);
            Ok(Claim::Replay(response))
        }
        (b"execute", [token, deadline, takeover]) => {
            let token = number("token", token)?;
            let lease_deadline = number("lease deadline", deadline)?;
            bump(&counters.executes);
            if takeover.as_slice() == b"1" {
                bump(&counters.lease_takeovers);
            }
            Ok(Claim::Execute {
                token,
                lease_deadline,
            })
        }
        _ => Err(bad(&rest)),
    }
}

/// A refusal of a holder's call: `fenced` or `not_reserved`.
pub(crate) fn holder_refusal(
    shared: &Shared,
    what: &str,
    first: &[u8],
    rest: &[Vec<u8>],
) -> Result<Option<u64>, Unavailable> {
    match (first, rest) {
        (b"fenced", [current]) => {
            bump(&shared.counters.fenced);
            Ok(Some(number("token", current)?))
        }
        (b"not_reserved", []) => Ok(None),
        _ => Err(Unavailable::Corrupted {
            detail: format!("unexpected reply to {what}: {first:?} {rest:?}"),
        }),
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
