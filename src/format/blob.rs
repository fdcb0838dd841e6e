//! The response blob: how a stored response is laid out in its record's expiry entry (response
//! blob format version 1, `docs/format.md`).
//!
//! Why: rule C3 promises the first response back byte for byte, so the response is kept as the
//! exact status, headers and body bytes the caller gave, in a layout we own and pin with golden
//! bytes. Invariant: `decode(encode(r)) == r` for every response that `encode` accepts, and
//! `decode` never panics: anything it does not recognise is an error.

use std::fmt;

use super::bytes::{Reader, Truncated};
use crate::error::CompleteError;
use crate::rules::response::Response;

/// Response blob format version written by this build.
pub(crate) const RESPONSE_VERSION: u8 = 1;

/// Why a stored response blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Version(u8),
    Truncated,
    TrailingBytes,
    HeaderName,
    TooLarge,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Version(v) => write!(f, "response blob has unknown version {v}"),
            DecodeError::Truncated => f.write_str("response blob is truncated"),
            DecodeError::TrailingBytes => f.write_str("response blob has trailing bytes"),
            DecodeError::HeaderName => f.write_str("response header name is not UTF-8"),
            DecodeError::TooLarge => {
                f.write_str("more than 65 535 headers or a header name longer than 65 535 bytes")
            }
        }
    }
}

/// Whether [`encode`] would accept the response, without encoding it.
pub(crate) fn encodable(r: &Response) -> Result<(), DecodeError> {
    let fits = u16::try_from(r.headers().len()).is_ok()
        && r.headers()
            .iter()
            .all(|(n, v)| u16::try_from(n.len()).is_ok() && u32::try_from(v.len()).is_ok())
        && u32::try_from(r.body().len()).is_ok();
    if fits {
        Ok(())
    } else {
        Err(DecodeError::TooLarge)
    }
}

/// Why a response cannot be stored, if it cannot (rule C12): too large for `max` bytes
/// encoded, or not encodable at all. Checked before any completion.
pub(crate) fn refusal(r: &Response, max: usize) -> Option<CompleteError> {
    let len = r.encoded_len();
    match encodable(r) {
        Ok(()) if len <= max => None,
        Ok(()) => Some(CompleteError::ResponseTooLarge { len, max }),
        Err(e) => Some(CompleteError::InvalidResponse {
            reason: e.to_string(),
        }),
    }
}

/// Encodes a response (layout in `docs/format.md`). Fails when a field exceeds its length
/// field: more than 65 535 headers or a header name over 65 535 bytes (possible within
/// `max_response_bytes`), or a value or body over 4 GiB (ruled out by it).
pub(crate) fn encode(r: &Response) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(r.encoded_len());
    out.push(RESPONSE_VERSION);
    out.extend_from_slice(&r.status().to_le_bytes());
    let count = u16::try_from(r.headers().len()).map_err(|_| DecodeError::TooLarge)?;
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in r.headers() {
        let nl = u16::try_from(name.len()).map_err(|_| DecodeError::TooLarge)?;
        let vl = u32::try_from(value.len()).map_err(|_| DecodeError::TooLarge)?;
        out.extend_from_slice(&nl.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&vl.to_le_bytes());
        out.extend_from_slice(value);
    }
    let bl = u32::try_from(r.body().len()).map_err(|_| DecodeError::TooLarge)?;
    out.extend_from_slice(&bl.to_le_bytes());
    out.extend_from_slice(r.body());
    Ok(out)
}

/// Decodes a response blob.
pub(crate) fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != RESPONSE_VERSION {
        return Err(DecodeError::Version(version));
    }
    let status = r.u16()?;
    let count = r.u16()?;
    // Each header takes at least 6 bytes, so `count` cannot ask for more than the blob holds.
    let mut headers = Vec::with_capacity(usize::from(count).min(bytes.len() / 6));
    for _ in 0..count {
        let nl = r.u16()?;
        let name = r.take(usize::from(nl))?;
        let name = std::str::from_utf8(name).map_err(|_| DecodeError::HeaderName)?;
        let vl = r.len32()?;
        let value = r.take(vl)?;
        headers.push((name.to_owned(), value.to_vec()));
    }
    let bl = r.len32()?;
    let body = r.take(bl)?;
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Response::from_parts(status, headers, body.to_vec()))
}

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> Self {
        DecodeError::Truncated
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The memory engine checks with `encodable` what the writer learns from `encode`.
    #[test]
    fn encodable_agrees_with_encode() {
        let many: Vec<(String, &[u8])> = (0..70_000).map(|i| (format!("h{i}"), &b""[..])).collect();
        let long_name = [("n".repeat(70_000), &b"v"[..])];
        let fine = Response::new(200, [("a", "b")], "ok");
        for r in [
            Response::new(200, many, ""),
            Response::new(200, long_name, ""),
            fine,
        ] {
            assert_eq!(encodable(&r).is_ok(), encode(&r).is_ok());
        }
        assert!(encodable(&Response::new(200, [("a", "b")], "ok")).is_ok());
    }

    #[test]
    fn roundtrip_and_length() {
        let r = Response::new(
            201,
            [("content-type", &b"a/b"[..]), ("etag", b"\"1\"")],
            "hi",
        );
        let e = encode(&r).unwrap();
        assert_eq!(e.len(), r.encoded_len());
        assert_eq!(decode(&e).unwrap(), r);
    }

    #[test]
    fn decode_never_panics_on_prefixes_and_flips() {
        let r = Response::new(200, [("x", "y")], vec![7u8; 40]);
        let e = encode(&r).unwrap();
        for n in 0..e.len() {
            assert!(decode(&e[..n]).is_err());
        }
        for i in 0..e.len() {
            for bit in 0..8 {
                let mut m = e.clone();
                m[i] ^= 1 << bit;
                let _ = decode(&m);
            }
        }
        let mut long = e.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::TrailingBytes));
    }
}
