//! Reading a request: its idempotency key (rules H2, H3) and its fingerprint.
//!
//! Why: the key's syntax over HTTP (a bare token or a quoted structured-field string) and the
//! parts of a request that identify it are HTTP matters the store does not know about.
//! Invariant: `"abc"` and `abc` give the same key; anything that is not one visible-ASCII key
//! within the store's limit is refused, never truncated or guessed.

use http::request::Parts;
use http::{Extensions, HeaderMap, Uri};

use super::contract::Contract;
use crate::{Fingerprint, Key, Store};

/// What is wrong with a request's key header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// No header.
    Missing,
    /// A header that is not a valid key; the text says why.
    Invalid(String),
}

/// The key sent in `contract.header`, checked against the store's key limit.
pub(crate) fn read_key(
    headers: &HeaderMap,
    contract: &Contract,
    store: &Store,
) -> Result<Key, KeyProblem> {
    let mut values = headers.get_all(&contract.header).iter();
    let Some(value) = values.next() else {
        return Err(KeyProblem::Missing);
    };
    if values.next().is_some() {
        return Err(KeyProblem::Invalid(format!(
            "the {} header is sent more than once",
            contract.header
        )));
    }
    let raw = value.as_bytes();
    let bare = unquote(raw)
        .ok_or_else(|| KeyProblem::Invalid("the key is a malformed quoted string".to_owned()))?;
    let text = std::str::from_utf8(&bare)
        .map_err(|_| KeyProblem::Invalid("the key is not visible ASCII".to_owned()))?;
    store
        .key(text)
        .map_err(|e| KeyProblem::Invalid(format!("{e}")))
}

/// A structured-field string (`"abc"`, with `\"` and `\\` escapes) unquoted; any other value
/// as it is. `None` for a string that opens a quote and does not close it properly.
fn unquote(raw: &[u8]) -> Option<Vec<u8>> {
    let Some(inner) = raw.strip_prefix(b"\"") else {
        return Some(raw.to_vec());
    };
    let inner = inner.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => return None,
            },
            b'"' => return None,
            b => out.push(b),
        }
    }
    Some(out)
}

/// The request's URI as the client sent it: routers that strip a prefix (axum's `nest`) leave
/// the original in the extensions, and two endpoints must never share a path here (rule H12).
pub(crate) fn original_uri<'a>(uri: &'a Uri, extensions: &'a Extensions) -> &'a Uri {
    #[cfg(feature = "axum")]
    if let Some(original) = extensions.get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    let _ = extensions;
    uri
}

/// The request's fingerprint (rule H13): the method (upper case), the original path, the query
/// (unless the contract leaves it out), the media type of the body, chosen headers, and the
/// body (canonical JSON under a JSON content type).
pub(crate) fn fingerprint(parts: &Parts, body: &[u8], contract: &Contract) -> Fingerprint {
    let uri = original_uri(&parts.uri, &parts.extensions);
    let method = parts.method.as_str().to_ascii_uppercase();
    let content_type_header = parts.headers.get(http::header::CONTENT_TYPE);
    let content_type = content_type_header.and_then(|v| v.to_str().ok());
    let mut builder = Fingerprint::builder()
        .method(&method)
        .path(uri.path())
        .body(content_type, body);
    if contract.fingerprint_query {
        builder = builder.query(uri.query().unwrap_or(""));
    }
    // The same bytes under two media types are two requests (a merge patch and a JSON patch,
    // CSV and plain text). Parameters are left out: JSON's canonical form does not depend on
    // them, and a charset spelled two ways is one request.
    if let Some(value) = content_type_header {
        builder = builder.header("content-type", &media_type(value.as_bytes()));
    }
    for name in &contract.fingerprint_headers {
        for value in parts.headers.get_all(name) {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
    }
    builder.finish()
}

/// A content type's media type: the bytes before any `;`, trimmed, in ASCII lower case.
fn media_type(content_type: &[u8]) -> Vec<u8> {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h3_unquote() {
        assert_eq!(unquote(b"abc").as_deref(), Some(&b"abc"[..]));
        assert_eq!(unquote(b"\"abc\"").as_deref(), Some(&b"abc"[..]));
        assert_eq!(unquote(br#""a\"b\\c""#).as_deref(), Some(&br#"a"b\c"#[..]));
        assert_eq!(unquote(b"\"\"").as_deref(), Some(&b""[..]));
        assert_eq!(unquote(b"\"abc"), None);
        assert_eq!(unquote(b"\""), None);
        assert_eq!(unquote(br#""a"b""#), None);
        assert_eq!(unquote(br#""a\x""#), None);
    }
}
