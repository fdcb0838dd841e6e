//! What an answer means to a retrying caller: hand it back, send again, or stop.
//!
//! Why: a retry is safe only with the same key, and useful only when the failure may pass; a
//! conflict, a refused request or an outcome the server itself does not know will not pass,
//! and retrying them hides a bug or loops until the deadline. Invariant: only connection
//! failures, timeouts, `5xx`, `408`, `429` and `409 idempotency_in_progress` are retried;
//! `409 idempotency_key_conflict`, `409 idempotency_outcome_unknown`, `400` and `422` stop
//! with a typed error; every other answer is the answer.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};

use crate::http::code;

/// What a caller does with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The answer to hand back (a success, or a final answer such as `404` or an
    /// application's own `409`).
    Answer,
    /// Send again with the same key, after at least `after` if the server said so
    /// (`Retry-After`).
    Retry {
        /// The server's `Retry-After`, in seconds.
        after: Option<Duration>,
    },
    /// The key was used for a different request (`409 idempotency_key_conflict`, or a `422`
    /// with that code under the IETF contract).
    Conflict,
    /// The server does not know whether the operation took effect, and will not run it until
    /// someone there resolves the key (`409 idempotency_outcome_unknown`).
    OutcomeUnknown,
    /// The request itself is refused (`400`, `422`): sending it again cannot help.
    Rejected {
        /// The body's error code, if any.
        code: Option<String>,
    },
}

/// Sorts an answer by its status, headers and body (the body is read only for `409`, `400`
/// and `422`, whose error code decides).
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use idemstore::client::{Verdict, classify};
/// let busy = br#"{"error":{"code":"idempotency_in_progress","message":"..."}}"#;
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", "1".parse()?);
/// assert_eq!(
///     classify(StatusCode::CONFLICT, &headers, busy),
///     Verdict::Retry { after: Some(std::time::Duration::from_secs(1)) }
/// );
/// let conflict = br#"{"error":{"code":"idempotency_key_conflict","message":"..."}}"#;
/// assert_eq!(classify(StatusCode::CONFLICT, &HeaderMap::new(), conflict), Verdict::Conflict);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
    let retry = || Verdict::Retry {
        after: retry_after(headers),
    };
    match status {
        StatusCode::CONFLICT => match error_code(body).as_deref() {
            Some(code::IN_PROGRESS) => retry(),
            Some(code::CONFLICT | REUSED) => Verdict::Conflict,
            Some(code::OUTCOME_UNKNOWN) => Verdict::OutcomeUnknown,
            _ => Verdict::Answer,
        },
        StatusCode::UNPROCESSABLE_ENTITY => match error_code(body) {
            Some(c) if c == code::CONFLICT || c == REUSED => Verdict::Conflict,
            code => Verdict::Rejected { code },
        },
        StatusCode::BAD_REQUEST => Verdict::Rejected {
            code: error_code(body),
        },
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => retry(),
        s if s.is_server_error() => retry(),
        _ => Verdict::Answer,
    }
}

/// Another spelling of a conflict, used by some APIs.
const REUSED: &str = "idempotency_key_reused";

/// The error code of a JSON error body: `{"error": {"code": ...}}` (idemstore's JSON style)
/// or a top-level `"code"` (RFC 9457 problem details, as the layer writes them).
pub fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value
        .get("error")
        .and_then(|e| e.get("code"))
        .or_else(|| value.get("code"))?;
    code.as_str().map(str::to_owned)
}

/// `Retry-After` as delta-seconds (the form idemstore and most APIs send; an HTTP date is
/// ignored, and the backoff applies).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Whether the server marked the answer a replay of an earlier attempt's response:
/// `Idempotent-Replay: true` (idemstore's default) or `Idempotent-Replayed: true` (its
/// Stripe-like contract).
pub fn is_replay(headers: &HeaderMap) -> bool {
    ["idempotent-replay", "idempotent-replayed"]
        .iter()
        .any(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> Vec<u8> {
        format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#).into_bytes()
    }

    fn with_retry_after(secs: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, secs.parse().unwrap());
        h
    }

    #[test]
    fn k6_transient_answers_are_retried_with_the_servers_wait() {
        let none = HeaderMap::new();
        assert_eq!(
            classify(
                StatusCode::CONFLICT,
                &with_retry_after("1"),
                &body(code::IN_PROGRESS)
            ),
            Verdict::Retry {
                after: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &with_retry_after("7"), b""),
            Verdict::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        for status in [500, 502, 503, 504, 408, 429] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classify(status, &none, b"oops"),
                Verdict::Retry { after: None },
                "{status}"
            );
        }
        // An HTTP date or garbage is not a wait.
        assert_eq!(
            retry_after(&with_retry_after("Wed, 21 Oct 2026 07:28:00 GMT")),
            None
        );
        assert_eq!(retry_after(&with_retry_after("-1")), None);
    }

    #[test]
    fn k6_conflicts_refusals_and_unknown_outcomes_stop() {
        let none = HeaderMap::new();
        assert_eq!(
            classify(StatusCode::CONFLICT, &none, &body(code::CONFLICT)),
            Verdict::Conflict
        );
        assert_eq!(
            classify(StatusCode::CONFLICT, &none, &body("idempotency_key_reused")),
            Verdict::Conflict
        );
        let problem = br#"{"type":"about:blank","status":422,"code":"idempotency_key_conflict"}"#;
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, &none, problem),
            Verdict::Conflict
        );
        assert_eq!(
            classify(StatusCode::CONFLICT, &none, &body(code::OUTCOME_UNKNOWN)),
            Verdict::OutcomeUnknown
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, &none, &body(code::MISSING_KEY)),
            Verdict::Rejected {
                code: Some(code::MISSING_KEY.to_owned())
            }
        );
        assert_eq!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, &none, b"not json"),
            Verdict::Rejected { code: None }
        );
    }

    #[test]
    fn k6_other_answers_are_the_answer() {
        let none = HeaderMap::new();
        for status in [200, 201, 204, 401, 403, 404, 412] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify(status, &none, b"{}"), Verdict::Answer, "{status}");
        }
        // An application's own conflict (a slot already taken) is an answer, not a retry.
        assert_eq!(
            classify(StatusCode::CONFLICT, &none, &body("slot_taken")),
            Verdict::Answer
        );
        let mut replay = HeaderMap::new();
        replay.insert("idempotent-replay", "true".parse().unwrap());
        assert!(is_replay(&replay));
        let mut stripe = HeaderMap::new();
        stripe.insert("idempotent-replayed", "TRUE".parse().unwrap());
        assert!(is_replay(&stripe));
        assert!(!is_replay(&none));
    }
}
