//! The layer's own answers: error bodies (rule H8), replays (rule H4) and the note that stands
//! in for a response too large to keep.
//!
//! Why: every answer the layer makes without the inner service is built here, so the codes,
//! statuses and body styles stay consistent. Invariant: an error body is valid JSON in the
//! configured style, with a stable machine-readable `code`.

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, HeaderName, Response, StatusCode};

use super::body::ResponseBody;
use super::contract::ErrorStyle;
use super::layer::LayerState;
use super::outcome::Outcome;
use super::responder::Errors;

/// The machine-readable codes of the layer's error answers, as their bodies carry them
/// (`{"error": {"code": ...}}`, or the `code` member of a problem document).
pub mod code {
    /// `400`: a guarded request without the idempotency header (H2).
    pub const MISSING_KEY: &str = "missing_idempotency_key";
    /// `400`: an empty, too long, non-ASCII, badly quoted or repeated key (H3).
    pub const INVALID_KEY: &str = "invalid_idempotency_key";
    /// `409` (or `422`): the key was used for another request (H5).
    pub const CONFLICT: &str = "idempotency_key_conflict";
    /// `409` with `Retry-After`: another attempt holds the key (H6).
    pub const IN_PROGRESS: &str = "idempotency_in_progress";
    /// `409`: the key's outcome is unknown until it is resolved (E6, H18).
    pub const OUTCOME_UNKNOWN: &str = "idempotency_outcome_unknown";
    /// `503`: the store cannot answer.
    pub const UNAVAILABLE: &str = "idempotency_unavailable";
    /// `413`: a request body over the contract's limit (H9).
    pub const TOO_LARGE: &str = "request_too_large";
    /// `400` (or `408`): a request body that could not be read.
    pub const UNREADABLE: &str = "request_body_unreadable";
    /// `401`: no credentials to scope the key (H7).
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// The body kept for a response too large to store (H4).
    pub const RESPONSE_NOT_KEPT: &str = "idempotent_response_too_large";
    /// `500`: the handler stopped without an answer.
    pub const HANDLER_FAILED: &str = "idempotency_handler_failed";
    /// `406`: the stored response's encoding is refused by the retry's `Accept-Encoding`.
    pub const REPLAY_NOT_ACCEPTABLE: &str = "idempotency_replay_not_acceptable";
    /// `429`: the scope holds the most live keys it may (C13).
    pub const SCOPE_FULL: &str = "idempotency_scope_full";
}

/// Escapes `s` as the inside of a JSON string.
pub(crate) fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The body and content type of an error in `style`.
pub(crate) fn error_body(
    style: ErrorStyle,
    status: StatusCode,
    code: &str,
    message: &str,
) -> (&'static str, String) {
    let (code, message) = (json_escape(code), json_escape(message));
    match style {
        ErrorStyle::Json => (
            "application/json",
            format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#),
        ),
        ErrorStyle::Problem => (
            "application/problem+json",
            format!(
                r#"{{"type":"about:blank","title":"{}","status":{},"detail":"{message}","code":"{code}"}}"#,
                json_escape(status.canonical_reason().unwrap_or("Error")),
                status.as_u16()
            ),
        ),
    }
}

/// An error answer of the layer, shaped by the contract's style or responder.
pub(crate) fn error<B>(
    errors: &Errors,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ResponseBody<B>> {
    let mut response = errors
        .respond(status, code, message)
        .map(ResponseBody::full);
    response.extensions_mut().insert(Outcome::of_code(code));
    response
}

/// `409 idempotency_in_progress` with `Retry-After` (rule H6).
pub(crate) fn in_progress<B>(
    style: &Errors,
    retry_after: std::time::Duration,
) -> Response<ResponseBody<B>> {
    let mut response = error(
        style,
        StatusCode::CONFLICT,
        code::IN_PROGRESS,
        "a request with this idempotency key is still being processed; retry shortly",
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// A stored response as a replay (rule H4): its status, headers and body, plus the replay
/// header. A stored header that is not a valid HTTP header is left out (the layer never
/// stores one, but the file may hold records written by other callers).
pub(crate) fn replay<B>(
    stored: &crate::Response,
    replay_header: &HeaderName,
) -> Response<ResponseBody<B>> {
    let mut response = stored_response(stored);
    response
        .headers_mut()
        .insert(replay_header.clone(), HeaderValue::from_static("true"));
    response.extensions_mut().insert(Outcome::Replayed);
    response
}

/// A stored response as sent: its status, its headers in order, its body.
pub(crate) fn stored_response<B>(stored: &crate::Response) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full(Bytes::copy_from_slice(stored.body())));
    *response.status_mut() =
        StatusCode::from_u16(stored.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in stored.headers() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    response
}

/// A content coding's name as compared: lower case, `x-gzip` and `x-compress` as `gzip` and
/// `compress` (RFC 9110 8.4.1).
fn coding_name(raw: &[u8]) -> String {
    let name = String::from_utf8_lossy(raw.trim_ascii()).to_ascii_lowercase();
    match name.strip_prefix("x-") {
        Some(base @ ("gzip" | "compress")) => base.to_owned(),
        _ => name,
    }
}

/// A content coding of `stored` that the request's `Accept-Encoding` refuses, if any (RFC 9110
/// 12.5.3): every coding applied to the stored body must be acceptable, and one is when the
/// request has no `Accept-Encoding`, or names it or `*` with a non-zero weight and does not
/// name it with weight zero. A stored response without a coding (or `identity`) is always
/// replayed.
pub(crate) fn unaccepted_coding(stored: &crate::Response, request: &HeaderMap) -> Option<String> {
    let mut fields = request.get_all(ACCEPT_ENCODING).iter().peekable();
    fields.peek()?;
    // (name, weight) of each coding the request lists.
    let listed: Vec<(String, f32)> = fields
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|item| {
            let mut params = item.split(|&b| b == b';');
            let name = coding_name(params.next().unwrap_or_default());
            let weight = params
                .filter_map(|p| {
                    let p = p.trim_ascii();
                    p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q="))
                })
                .find_map(|q| std::str::from_utf8(q).ok()?.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name, weight)
        })
        .collect();
    let accepted = |coding: &str| {
        let weight_of = |name: &str| listed.iter().find(|(n, _)| n == name).map(|(_, w)| *w);
        weight_of(coding)
            .or_else(|| weight_of("*"))
            .is_some_and(|w| w > 0.0)
    };
    stored
        .headers()
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(CONTENT_ENCODING.as_str()))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(coding_name)
        .find(|c| !c.is_empty() && c != "identity" && !accepted(c))
}

/// The body stored in place of a response too large to keep, and its content type.
pub(crate) fn not_kept_body(errors: &Errors, status: StatusCode, len: usize) -> (Vec<u8>, Bytes) {
    errors.body(
        status,
        code::RESPONSE_NOT_KEPT,
        &format!(
            "the operation ran once; its response was too large to keep for replay (a body of {len} bytes or more, or headers)"
        ),
    )
}

/// `413 request_too_large` (rule H9).
pub(crate) fn too_large<B>(shared: &LayerState) -> Response<ResponseBody<B>> {
    error(
        &shared.contract.errors,
        StatusCode::PAYLOAD_TOO_LARGE,
        code::TOO_LARGE,
        &format!(
            "the request body is larger than {} bytes",
            shared.contract.max_request_body
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h8_error_bodies_are_json() {
        let (ct, body) = error_body(
            ErrorStyle::Json,
            StatusCode::BAD_REQUEST,
            "x",
            "a \"quoted\"\nline",
        );
        assert_eq!(ct, "application/json");
        assert_eq!(
            body,
            r#"{"error":{"code":"x","message":"a \"quoted\"\nline"}}"#
        );
        let (ct, body) = error_body(ErrorStyle::Problem, StatusCode::CONFLICT, "c", "m");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(
            body,
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"m","code":"c"}"#
        );
        assert_eq!(json_escape("\u{1}"), "\\u0001");
    }

    #[test]
    fn h13_a_replay_keeps_to_the_accepted_codings() {
        let gzip = crate::Response::new(
            201,
            [("content-encoding", b"gzip".to_vec())],
            b"\x1f\x8b".to_vec(),
        );
        let plain = crate::Response::new(201, [("content-type", b"text/plain".to_vec())], "x");
        let accept = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert_eq!(
            unaccepted_coding(&gzip, &accept(None)),
            None,
            "no header: any coding"
        );
        assert_eq!(unaccepted_coding(&gzip, &accept(Some("gzip, br"))), None);
        assert_eq!(unaccepted_coding(&gzip, &accept(Some("GZIP;q=0.5"))), None);
        assert_eq!(unaccepted_coding(&gzip, &accept(Some("*"))), None);
        for refused in ["identity", "br", "gzip;q=0", "*;q=0", "*, gzip;q=0", ""] {
            assert_eq!(
                unaccepted_coding(&gzip, &accept(Some(refused))).as_deref(),
                Some("gzip"),
                "{refused:?}"
            );
        }
        assert_eq!(unaccepted_coding(&plain, &accept(Some("identity"))), None);
        // Every coding applied must be accepted; x-gzip is gzip.
        let both = crate::Response::new(
            201,
            [("content-encoding", b"gzip, br".to_vec())],
            b"..".to_vec(),
        );
        assert_eq!(
            unaccepted_coding(&both, &accept(Some("gzip"))).as_deref(),
            Some("br")
        );
        assert_eq!(unaccepted_coding(&both, &accept(Some("br, gzip"))), None);
        let x = crate::Response::new(201, [("content-encoding", b"x-gzip".to_vec())], "..");
        assert_eq!(unaccepted_coding(&x, &accept(Some("gzip"))), None);
        assert_eq!(unaccepted_coding(&gzip, &accept(Some("x-gzip"))), None);
    }
}
