//! Records, times and tokens as operators read them: the JSON of a record, RFC 3339 times,
//! `epoch.n` tokens; and the reading back of an exported record.
//!
//! Why: `idemstore list --json` on a file, the admin interface of a running service and an
//! export must print one shape, so that a script does not care where a record came from; one
//! function makes it. Invariants: a record's JSON loses nothing an import needs (a body or a
//! header value that is not UTF-8 is given as text, with U+FFFD for the bytes that are not,
//! and again exactly, in hex, beside it); [`rfc3339`] and [`parse_rfc3339`] are inverses on
//! every millisecond from 1970 to 9999.

use serde_json::{Value, json};

use crate::rules::fingerprint::Fingerprint;
use crate::rules::response::Response;
use crate::rules::state::State;
use crate::view::RecordInfo;

/// A record as `idemstore list --json`, `get --json`, the admin interface and `export` give
/// it: `scope`, `key`, `state` (`in_flight`, `completed`, `outcome_unknown`), `fingerprint`
/// (`v1:` and 64 hex digits), `token` (the number) and `token_readable` (`epoch.n`, see
/// [`token_text`]), `created_at`, `expires_at` and `lease_deadline` (RFC 3339, the deadline
/// `null` unless in flight), `recovery_point` (`{name, payload}` or `null`) and `response`
/// (`{status, headers: [[name, value]], body}` or `null`). A body that is not UTF-8 is given
/// with U+FFFD for its bad bytes and whole in `body_hex`; a header value likewise gets its
/// hex as a third element.
pub fn record_json(r: &RecordInfo) -> Value {
    json!({
        "scope": r.scope,
        "key": r.key,
        "state": state_name(r.state),
        "fingerprint": r.fingerprint.to_string(),
        "token": r.token,
        "token_readable": token_text(r.token),
        "created_at": rfc3339(r.created_at),
        "expires_at": rfc3339(r.expires_at),
        "lease_deadline": r.lease_deadline.map(rfc3339),
        "recovery_point": r.recovery_point.as_ref().map(|p| json!({
            "name": p.name(),
            "payload": String::from_utf8_lossy(p.payload()),
        })),
        "response": r.response.as_ref().map(response_json),
    })
}

fn response_json(x: &Response) -> Value {
    let headers: Vec<Value> = x
        .headers()
        .iter()
        .map(|(n, v)| match std::str::from_utf8(v) {
            Ok(text) => json!([n, text]),
            Err(_) => json!([n, String::from_utf8_lossy(v), hex(v)]),
        })
        .collect();
    let mut out = json!({
        "status": x.status(),
        "headers": headers,
        "body": String::from_utf8_lossy(x.body()),
    });
    if std::str::from_utf8(x.body()).is_err()
        && let Some(o) = out.as_object_mut()
    {
        o.insert("body_hex".into(), Value::String(hex(x.body())));
    }
    out
}

/// The name a state has in JSON and in tables: `in_flight`, `completed`, `outcome_unknown`.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::InFlight => "in_flight",
        State::Completed => "completed",
        State::OutcomeUnknown => "outcome_unknown",
    }
}

/// A fencing token as `epoch.n`: a file store's tokens are `epoch << 32 | n`, where the epoch
/// grows by one at each open after a crash (tokens handed out before it may have been lost)
/// and `n` counts the tokens of that epoch. A Redis store's tokens are `now × 1024` or more,
/// split the same way (the number is what counts; `token` in JSON keeps it).
///
/// ```
/// assert_eq!(idemstore::admin::token_text(7), "0.7");
/// assert_eq!(idemstore::admin::token_text(3 << 32 | 12), "3.12");
/// ```
pub fn token_text(token: u64) -> String {
    format!("{}.{}", token >> 32, token & 0xffff_ffff)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2026-05-20T15:00:00.000Z`).
///
/// ```
/// assert_eq!(idemstore::admin::rfc3339(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
/// ```
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Reads back what [`rfc3339`] writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`), as milliseconds since the
/// Unix epoch; `None` for anything else.
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || s.get(23..) != Some("Z") {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let seps = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ];
    if seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms;
    u64::try_from(total).ok().filter(|&t| rfc3339(t) == s)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| hex_byte(s.get(i..i + 2)?))
        .collect()
}

/// Two hex digits as a byte; anything else (`u8::from_str_radix` would take `+f`) is `None`.
pub(crate) fn hex_byte(two: &str) -> Option<u8> {
    if two.len() != 2 || !two.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(two, 16).ok()
}

/// A fingerprint as [`Fingerprint`]'s `Display` writes it: `v<version>:` and 64 hex digits.
pub(crate) fn parse_fingerprint(s: &str) -> Option<Fingerprint> {
    let (version, digest) = s.strip_prefix('v')?.split_once(':')?;
    let version: u8 = version.parse().ok()?;
    let digest: [u8; 32] = unhex(digest)?.try_into().ok()?;
    Some(Fingerprint::from_parts(version, digest))
}

/// One exported record, read back for an import.
#[derive(Debug)]
pub(crate) struct Exported {
    pub(crate) scope: String,
    pub(crate) key: String,
    pub(crate) state: State,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) expires_at: u64,
    /// The stored response, for a completed record.
    pub(crate) response: Option<Response>,
}

/// Reads one line of an export (a [`record_json`] object); the error says what is wrong.
pub(crate) fn parse_exported(line: &str) -> Result<Exported, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let text = |field: &str| {
        v.get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no text field \"{field}\""))
    };
    let state = match text("state")? {
        "in_flight" => State::InFlight,
        "completed" => State::Completed,
        "outcome_unknown" => State::OutcomeUnknown,
        other => return Err(format!("unknown state \"{other}\"")),
    };
    let fingerprint = parse_fingerprint(text("fingerprint")?).ok_or("a bad fingerprint")?;
    let expires_at = parse_rfc3339(text("expires_at")?).ok_or("a bad expires_at")?;
    let response = match (state, v.get("response")) {
        (State::Completed, Some(r)) if r.is_object() => Some(parse_response(r)?),
        (State::Completed, _) => return Err("a completed record without its response".into()),
        _ => None,
    };
    Ok(Exported {
        scope: text("scope")?.to_owned(),
        key: text("key")?.to_owned(),
        state,
        fingerprint,
        expires_at,
        response,
    })
}

fn parse_response(r: &Value) -> Result<Response, String> {
    let status = r
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .ok_or("a bad response status")?;
    let mut headers = Vec::new();
    for h in r
        .get("headers")
        .and_then(Value::as_array)
        .ok_or("no response headers")?
    {
        let parts = h.as_array().ok_or("a bad header")?;
        let part = |i: usize| parts.get(i).and_then(Value::as_str);
        let name = part(0).ok_or("a bad header name")?;
        let value = match part(2) {
            Some(h) => unhex(h).ok_or("a bad header value in hex")?,
            None => part(1).ok_or("a bad header value")?.as_bytes().to_vec(),
        };
        headers.push((name.to_owned(), value));
    }
    let body = match r.get("body_hex").and_then(Value::as_str) {
        Some(h) => unhex(h).ok_or("a bad body_hex")?,
        None => r
            .get("body")
            .and_then(Value::as_str)
            .ok_or("no response body")?
            .as_bytes()
            .to_vec(),
    };
    Ok(Response::new(status, headers, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o5_tokens_read_as_epoch_dot_n() {
        assert_eq!(token_text(1), "0.1");
        assert_eq!(token_text((1 << 32) + 5), "1.5");
        assert_eq!(token_text(u64::MAX), "4294967295.4294967295");
    }

    #[test]
    fn o5_times_are_rfc3339_and_read_back() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        for ms in [
            0,
            1,
            86_399_999,
            1_709_210_096_789,
            1_767_225_600_000,
            253_402_300_799_999,
        ] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{ms}");
        }
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00.000Z",
            "2026-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn o9_a_record_reads_back_whole_even_when_not_utf8() {
        let fp = Fingerprint::of_bytes(b"x");
        assert_eq!(parse_fingerprint(&fp.to_string()), Some(fp));
        let response = Response::new(
            201,
            [("a", &b"\xff1"[..]), ("b", b"ok")],
            b"\x00\xfe".to_vec(),
        );
        let line = json!({
            "scope": "s", "key": "k", "state": "completed", "fingerprint": fp.to_string(),
            "expires_at": rfc3339(5), "response": response_json(&response),
        })
        .to_string();
        let back = parse_exported(&line).unwrap();
        let r = back.response.unwrap();
        assert_eq!(
            (r.status(), r.headers(), r.body()),
            (201, response.headers(), response.body())
        );
        assert_eq!(back.expires_at, 5);
        assert!(parse_exported(r#"{"state":"completed"}"#).is_err());
    }
}
