//! The layer's own answers: error bodies (rule H8), replays (rule H4) and the note that stands
//! in for a response too large to keep.
//!
//! Why: every answer the layer makes without the inner service is built here, so the codes,
//! statuses and body styles stay consistent. Invariant: an error body is valid JSON in the
//! configured style, with a stable machine-readable `code`.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderName, Response, StatusCode};

use super::body::ResponseBody;
use super::contract::ErrorStyle;

/// The machine-readable codes of the layer's answers.
pub(crate) mod code {
    pub(crate) const MISSING_KEY: &str = "missing_idempotency_key";
    pub(crate) const INVALID_KEY: &str = "invalid_idempotency_key";
    pub(crate) const CONFLICT: &str = "idempotency_key_conflict";
    pub(crate) const IN_PROGRESS: &str = "idempotency_in_progress";
    pub(crate) const UNAVAILABLE: &str = "idempotency_unavailable";
    pub(crate) const TOO_LARGE: &str = "request_too_large";
    pub(crate) const UNREADABLE: &str = "request_body_unreadable";
    pub(crate) const UNAUTHENTICATED: &str = "unauthenticated";
    pub(crate) const RESPONSE_NOT_KEPT: &str = "idempotent_response_too_large";
    pub(crate) const HANDLER_FAILED: &str = "idempotency_handler_failed";
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

/// An error answer of the layer.
pub(crate) fn error<B>(
    style: ErrorStyle,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ResponseBody<B>> {
    let (content_type, body) = error_body(style, status, code, message);
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `409 idempotency_in_progress` with `Retry-After` (rule H6).
pub(crate) fn in_progress<B>(
    style: ErrorStyle,
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
    headers.insert(replay_header.clone(), HeaderValue::from_static("true"));
    response
}

/// The body stored in place of a response too large to keep.
pub(crate) fn not_kept_body(
    style: ErrorStyle,
    status: StatusCode,
    len: usize,
) -> (&'static str, String) {
    error_body(
        style,
        status,
        code::RESPONSE_NOT_KEPT,
        &format!(
            "the operation ran once; its response body ({len} bytes or more) was too large to keep for replay"
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
}
