//! The stored response and its on-disk encoding (response blob, format version 1).
//!
//! Why: rule C3 promises the first response back byte for byte, so the response is kept as the
//! exact status, headers and body bytes the caller gave, in a layout we own and pin with golden
//! bytes. Invariant: `decode(encode(r)) == r` for every response that `encode` accepts, and
//! `decode` never panics: anything it does not recognise is an error.

use std::fmt;
use std::sync::Arc;

/// A response to store and replay: status code, the headers worth replaying, and the body.
///
/// Cloning is cheap (the contents are shared), so a replay hands out the stored response
/// without copying it.
///
/// ```
/// let r = idemstore::Response::new(201, [("content-type", "application/json")], b"{}".to_vec());
/// assert_eq!(r.status(), 201);
/// assert_eq!(r.header("Content-Type"), Some(&b"application/json"[..]));
/// assert_eq!(r.body(), b"{}");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Response(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with a status code, headers (name, value) in the order given, and a body.
    ///
    /// With no headers at all, `[]` leaves their types unknown to the compiler (E0283): write
    /// [`Response::without_headers`] instead.
    pub fn new<N, V>(
        status: u16,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl Into<Vec<u8>>,
    ) -> Response
    where
        N: Into<String>,
        V: Into<Vec<u8>>,
    {
        Response(Arc::new(Inner {
            status,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
            body: body.into(),
        }))
    }

    /// A response with a status code and a body, and no headers.
    ///
    /// ```
    /// let r = idemstore::Response::without_headers(204, "");
    /// assert_eq!((r.status(), r.headers().len(), r.body().len()), (204, 0, 0));
    /// ```
    pub fn without_headers(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, std::iter::empty::<(String, Vec<u8>)>(), body)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The headers, in the order they were given.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.0.headers
    }

    /// The first header with this name (compared ASCII case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// Size of the encoded response in bytes, the figure `max_response_bytes` limits.
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self
            .0
            .headers
            .iter()
            .map(|(n, v)| 2 + n.len() + 4 + v.len())
            .sum();
        HEADER_LEN + headers + 4 + self.0.body.len()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.0.status)
            .field("headers", &self.0.headers.len())
            .field("body_len", &self.0.body.len())
            .finish()
    }
}

/// Response blob format version written by this build.
pub(crate) const RESPONSE_VERSION: u8 = 1;
/// version u8, status u16, header count u16.
const HEADER_LEN: usize = 5;

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
    let inner = &*r.0;
    let fits = u16::try_from(inner.headers.len()).is_ok()
        && inner
            .headers
            .iter()
            .all(|(n, v)| u16::try_from(n.len()).is_ok() && u32::try_from(v.len()).is_ok())
        && u32::try_from(inner.body.len()).is_ok();
    if fits {
        Ok(())
    } else {
        Err(DecodeError::TooLarge)
    }
}

/// Encodes a response (layout in `docs/format.md`). Fails when a field exceeds its length
/// field: more than 65 535 headers or a header name over 65 535 bytes (possible within
/// `max_response_bytes`), or a value or body over 4 GiB (ruled out by it).
pub(crate) fn encode(r: &Response) -> Result<Vec<u8>, DecodeError> {
    let inner = &*r.0;
    let mut out = Vec::with_capacity(r.encoded_len());
    out.push(RESPONSE_VERSION);
    out.extend_from_slice(&inner.status.to_le_bytes());
    let count = u16::try_from(inner.headers.len()).map_err(|_| DecodeError::TooLarge)?;
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in &inner.headers {
        let nl = u16::try_from(name.len()).map_err(|_| DecodeError::TooLarge)?;
        let vl = u32::try_from(value.len()).map_err(|_| DecodeError::TooLarge)?;
        out.extend_from_slice(&nl.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&vl.to_le_bytes());
        out.extend_from_slice(value);
    }
    let bl = u32::try_from(inner.body.len()).map_err(|_| DecodeError::TooLarge)?;
    out.extend_from_slice(&bl.to_le_bytes());
    out.extend_from_slice(&inner.body);
    Ok(out)
}

/// A cursor over a byte slice that never panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

/// Decodes a response blob.
pub(crate) fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut r = Reader(bytes);
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
        let vl = r.u32()?;
        let value = r.take(usize::try_from(vl).map_err(|_| DecodeError::Truncated)?)?;
        headers.push((name.to_owned(), value.to_vec()));
    }
    let bl = r.u32()?;
    let body = r.take(usize::try_from(bl).map_err(|_| DecodeError::Truncated)?)?;
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Response(Arc::new(Inner {
        status,
        headers,
        body: body.to_vec(),
    })))
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
