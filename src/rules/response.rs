//! The response a key replays: status, headers and body, exactly as the caller gave them.
//!
//! Why: rule C3 promises the first response back byte for byte, so the response is a value
//! that keeps the exact bytes; how it is laid out on disk is `format/blob.rs`. Invariant:
//! [`Response::encoded_len`] is the length of the blob `format::blob::encode` writes.

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
        // Version, status and header count (5 bytes), the headers, the body's length and bytes.
        5 + headers + 4 + self.0.body.len()
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

impl Response {
    /// A response from parts already owned (a decoded blob).
    pub(crate) fn from_parts(status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> Self {
        Response(Arc::new(Inner {
            status,
            headers,
            body,
        }))
    }
}
