//! Request fingerprints.
//!
//! # Why
//!
//! An idempotency key alone cannot tell a retry from a *different* request
//! that reuses the same key (rule C4). Each stored key therefore keeps a
//! fingerprint of the request that first used it; a later request with the
//! same key is a retry only if its fingerprint matches.
//!
//! # Invariant
//!
//! The same method, path (and query and headers, when given) and an equal
//! body give the same fingerprint. For a JSON body (see
//! [`is_json_content_type`]) "equal" means an equal JSON value: key order,
//! whitespace, string escapes and number spelling (`1.0` vs `1`) do not
//! matter (see the `canonical_json` module). Any other body is compared byte by
//! byte. Every fingerprint carries the version of the algorithm that
//! produced it ([`Fingerprint::CURRENT_VERSION`]), so fingerprints made by a
//! future algorithm can be told apart from stored ones instead of silently
//! never matching.
//!
//! # Algorithm, version 1
//!
//! The digest is BLAKE3 (32 bytes) of this byte stream:
//!
//! 1. the domain tag `b"idemstore.fingerprint"` (21 bytes, no length prefix);
//! 2. the version byte `1`;
//! 3. a sequence of framed fields, each `[tag: u8][len: u64 LE][len bytes]`,
//!    always in this order, whatever order the builder methods were called in:
//!    * tag 1, method: the bytes as given (HTTP methods are case-sensitive);
//!      absent if never set;
//!    * tag 2, path: the bytes as given; absent if never set;
//!    * tag 3, query: the bytes as given; absent if never set;
//!    * tag 4, one field per header: `[name_len: u32 LE][name][value]`, where
//!      `name` is the header name with ASCII letters lowercased; headers are
//!      sorted by (lowercased name, value) bytes, duplicates kept;
//!    * tag 5, body: `[kind: u8][body bytes]`, where kind 1 means the bytes
//!      are the canonical JSON of the body (the content type is JSON per
//!      [`is_json_content_type`] and the body parses as JSON) and kind 0 means
//!      the raw body bytes (any other content type, no content type, or JSON
//!      that does not parse: invalid JSON falls back to its raw bytes and is
//!      never an error). A builder whose body was never set hashes as if
//!      `body(None, b"")` had been called, so this field is always present.
//!
//! [`Fingerprint::of_bytes`] hashes the same domain tag and version byte
//! followed by a single field with tag 6 holding the raw payload. Tag 6
//! never occurs in a request stream, so such fingerprints never equal request
//! fingerprints.
//!
//! Because every field carries its tag and length, two different sets of
//! inputs never produce the same byte stream.

use std::fmt;

use crate::rules::canonical_json::canonicalize;

/// Domain separation tag at the start of every hashed stream.
const DOMAIN_TAG: &[u8] = b"idemstore.fingerprint";

const TAG_METHOD: u8 = 1;
const TAG_PATH: u8 = 2;
const TAG_QUERY: u8 = 3;
const TAG_HEADER: u8 = 4;
const TAG_BODY: u8 = 5;
const TAG_OPAQUE: u8 = 6;

/// Body kind byte: raw bytes.
const BODY_RAW: u8 = 0;
/// Body kind byte: canonical JSON.
const BODY_CANONICAL_JSON: u8 = 1;

/// 32-byte blake3 digest of a request plus the algorithm version that produced it.
///
/// Displayed (and debug-printed) as `v<version>:` followed by the digest in
/// 64 lowercase hex digits, e.g. `v1:af13…`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    version: u8,
    digest: [u8; 32],
}

impl Fingerprint {
    /// Version of the algorithm used by [`Fingerprint::of_request`],
    /// [`Fingerprint::of_bytes`] and [`FingerprintBuilder::finish`].
    pub const CURRENT_VERSION: u8 = 1;

    /// Fingerprint of an HTTP request from its method, path, content type and
    /// body.
    ///
    /// Same as
    /// `Fingerprint::builder().method(method).path(path).body(content_type, body).finish()`.
    #[must_use]
    pub fn of_request(
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Fingerprint {
        Fingerprint::builder()
            .method(method)
            .path(path)
            .body(content_type, body)
            .finish()
    }

    /// Fingerprint of an opaque payload, for callers that are not HTTP
    /// requests.
    ///
    /// The bytes are hashed as is (no JSON canonicalisation), in a stream that
    /// can never equal one from [`Fingerprint::of_request`] or the builder.
    #[must_use]
    pub fn of_bytes(bytes: &[u8]) -> Fingerprint {
        let mut hasher = start_hasher();
        write_field(&mut hasher, TAG_OPAQUE, &[bytes]);
        finish_hasher(&hasher)
    }

    /// Starts building a request fingerprint from optional parts.
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder::default()
    }

    /// Rebuilds a stored fingerprint from its version and digest.
    ///
    /// Any version is accepted; compare [`Fingerprint::version`] with
    /// [`Fingerprint::CURRENT_VERSION`] to tell fingerprints made by another
    /// algorithm version.
    #[must_use]
    pub const fn from_parts(version: u8, digest: [u8; 32]) -> Fingerprint {
        Fingerprint { version, digest }
    }

    /// Version of the algorithm that produced this fingerprint.
    #[must_use]
    pub const fn version(&self) -> u8 {
        self.version
    }

    /// The 32-byte BLAKE3 digest.
    #[must_use]
    pub const fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The first 8 digest bytes read as a little-endian `u64`, for use as a
    /// compact index key (not unique: compare the full fingerprint too).
    #[must_use]
    pub const fn prefix(&self) -> u64 {
        let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = self.digest;
        u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}:", self.version)?;
        for byte in &self.digest {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Builds a request [`Fingerprint`] from parts; the `fingerprint` module
/// docs say exactly what is hashed.
///
/// Calling `method`, `path`, `query` or `body` again replaces the earlier
/// value; `header` adds one header per call. The order of calls does not
/// change the result.
///
/// Its `Debug` output shows the method, path and header names but not the
/// query, header values or body, which may hold credentials or personal
/// data.
#[must_use]
#[derive(Clone, Default)]
pub struct FingerprintBuilder {
    method: Option<String>,
    path: Option<String>,
    query: Option<String>,
    /// (lowercased name, value), in call order; sorted by `finish`.
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// (kind byte, bytes to hash); `None` hashes as a raw empty body.
    body: Option<(u8, Vec<u8>)>,
}

impl FingerprintBuilder {
    /// Sets the request method, hashed as given (HTTP methods are
    /// case-sensitive).
    pub fn method(mut self, m: &str) -> Self {
        self.method = Some(m.to_owned());
        self
    }

    /// Sets the request path, hashed as given.
    pub fn path(mut self, p: &str) -> Self {
        self.path = Some(p.to_owned());
        self
    }

    /// Sets the query string, hashed as given. Without this call no query is
    /// hashed, which differs from an empty query.
    pub fn query(mut self, q: &str) -> Self {
        self.query = Some(q.to_owned());
        self
    }

    /// Adds a header. Names are compared ASCII case-insensitively; values are
    /// hashed byte for byte. The order of `header` calls does not matter;
    /// repeating a header with the same value adds it again.
    pub fn header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers
            .push((name.to_ascii_lowercase().into_bytes(), value.to_vec()));
        self
    }

    /// Sets the body. If `content_type` is JSON (see
    /// [`is_json_content_type`]) and the body is valid JSON, its canonical
    /// form is hashed; otherwise the raw bytes are hashed. Invalid JSON under
    /// a JSON content type is not an error: it is hashed as raw bytes, exactly
    /// as under any non-JSON content type.
    pub fn body(mut self, content_type: Option<&str>, body: &[u8]) -> Self {
        let canonical = match content_type {
            Some(ct) if is_json_content_type(ct) => canonicalize(body),
            _ => None,
        };
        self.body = Some(match canonical {
            Some(json) => (BODY_CANONICAL_JSON, json),
            None => (BODY_RAW, body.to_vec()),
        });
        self
    }

    /// Computes the fingerprint with the current algorithm version.
    pub fn finish(mut self) -> Fingerprint {
        let mut hasher = start_hasher();
        if let Some(method) = &self.method {
            write_field(&mut hasher, TAG_METHOD, &[method.as_bytes()]);
        }
        if let Some(path) = &self.path {
            write_field(&mut hasher, TAG_PATH, &[path.as_bytes()]);
        }
        if let Some(query) = &self.query {
            write_field(&mut hasher, TAG_QUERY, &[query.as_bytes()]);
        }
        self.headers.sort_unstable();
        for (name, value) in &self.headers {
            // A name over 4 GiB cannot occur in practice; saturate rather
            // than panic.
            let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes();
            write_field(&mut hasher, TAG_HEADER, &[&name_len, name, value]);
        }
        let (kind, body) = match &self.body {
            Some((kind, bytes)) => (*kind, bytes.as_slice()),
            None => (BODY_RAW, &[][..]),
        };
        write_field(&mut hasher, TAG_BODY, &[&[kind], body]);
        finish_hasher(&hasher)
    }
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<String> = self
            .headers
            .iter()
            .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
            .collect();
        let body = self.body.as_ref().map(|(kind, bytes)| {
            let kind = if *kind == BODY_CANONICAL_JSON {
                "json"
            } else {
                "raw"
            };
            format!("{kind}, {} bytes", bytes.len())
        });
        f.debug_struct("FingerprintBuilder")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("has_query", &self.query.is_some())
            .field("header_names", &header_names)
            .field("body", &body)
            .finish()
    }
}

/// Whether `ct` (a `Content-Type` header value) denotes JSON.
///
/// The media type is the part before the first `;`, trimmed and compared
/// ASCII case-insensitively. It is JSON if it is `application/json` or has
/// the form `type/subtype+json` with non-empty `type` and `subtype` made of
/// HTTP token characters, e.g. `application/problem+json;
/// charset=utf-8`.
#[must_use]
pub fn is_json_content_type(ct: &str) -> bool {
    let media_type = ct.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = media_type.split_once('/') else {
        return false;
    };
    if !is_token(kind) || !is_token(subtype) {
        return false;
    }
    if kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json") {
        return true;
    }
    let suffix = b"+json";
    subtype.len() > suffix.len()
        && subtype
            .as_bytes()
            .get(subtype.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// Whether `s` is a non-empty HTTP token (RFC 9110 `token`).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn start_hasher() -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN_TAG);
    hasher.update(&[Fingerprint::CURRENT_VERSION]);
    hasher
}

fn finish_hasher(hasher: &blake3::Hasher) -> Fingerprint {
    Fingerprint::from_parts(Fingerprint::CURRENT_VERSION, *hasher.finalize().as_bytes())
}

/// Writes one framed field `[tag][len u64 LE][bytes]` whose bytes are the
/// concatenation of `parts`.
fn write_field(hasher: &mut blake3::Hasher, tag: u8, parts: &[&[u8]]) {
    let len = parts
        .iter()
        .fold(0usize, |acc, part| acc.saturating_add(part.len()));
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    hasher.update(&[tag]);
    hasher.update(&len.to_le_bytes());
    for part in parts {
        hasher.update(part);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");
    const PROBLEM_JSON: Option<&str> = Some("application/problem+json; charset=utf-8");
    const TEXT: Option<&str> = Some("text/plain");

    fn post(content_type: Option<&str>, body: &str) -> Fingerprint {
        Fingerprint::of_request("POST", "/v1/bookings", content_type, body.as_bytes())
    }

    #[test]
    fn json_equivalent_bodies_are_equal() {
        let variants = [
            r#"{"a":1,"b":[true,null],"c":"é"}"#,
            r#"{"c":"\u00e9","b":[true,null],"a":1}"#,
            " { \"b\" : [ true , null ] ,\n \"a\" : 1.0 , \"c\" : \"\\u00E9\" } ",
            r#"{"a":10e-1,"c":"é","b":[true,null]}"#,
            r#"{"a":0.1e1,"b":[true,null],"c":"é"}"#,
        ];
        for content_type in [
            JSON,
            PROBLEM_JSON,
            Some("Application/JSON"),
            Some("application/vnd.api+json"),
        ] {
            let first = post(content_type, variants[0]);
            for variant in variants {
                assert_eq!(
                    post(content_type, variant),
                    first,
                    "{content_type:?} {variant}"
                );
            }
        }
        // The canonical JSON digest does not depend on which JSON content type was used.
        assert_eq!(post(JSON, variants[0]), post(PROBLEM_JSON, variants[1]));
    }

    #[test]
    fn differing_bodies_differ() {
        assert_ne!(post(JSON, r#"{"a":1}"#), post(JSON, r#"{"a":2}"#));
        assert_ne!(post(JSON, r#"{"a":1}"#), post(JSON, r#"{"b":1}"#));
        assert_ne!(post(JSON, "[1,2]"), post(JSON, "[2,1]"));
        assert_ne!(
            post(JSON, "12345678901234567890"),
            post(JSON, "12345678901234567891")
        );
        assert_ne!(post(JSON, r#""1""#), post(JSON, "1"));
        assert_ne!(post(JSON, "{}"), post(JSON, ""));
    }

    #[test]
    fn raw_bodies_are_byte_sensitive() {
        assert_ne!(
            post(TEXT, r#"{"a":1,"b":2}"#),
            post(TEXT, r#"{"b":2,"a":1}"#)
        );
        assert_ne!(post(TEXT, "{\"a\":1}"), post(TEXT, "{ \"a\":1}"));
        assert_ne!(post(None, "1.0"), post(None, "1"));
        assert_eq!(post(TEXT, "hello"), post(None, "hello"));
        assert_eq!(
            post(TEXT, "hello"),
            post(Some("application/octet-stream"), "hello")
        );
        // Valid JSON under a JSON type is not the same as the same bytes raw.
        assert_ne!(post(JSON, "[1]"), post(TEXT, "[1]"));
    }

    #[test]
    fn invalid_json_falls_back_to_raw_bytes() {
        for body in [
            r#"{"a":1"#,
            "{'a':1}",
            r#"{"a":1,"a":2}"#,
            "\u{feff}{}",
            "",
            "NaN",
        ] {
            assert_eq!(post(JSON, body), post(TEXT, body), "{body:?}");
            assert_eq!(post(PROBLEM_JSON, body), post(None, body), "{body:?}");
        }
        assert_ne!(post(JSON, r#"{"a":1"#), post(JSON, r#"{"a":2"#));
        assert_eq!(
            Fingerprint::of_request("POST", "/", JSON, b"\xff\xfe"),
            Fingerprint::of_request("POST", "/", TEXT, b"\xff\xfe")
        );
    }

    #[test]
    fn unset_body_equals_empty_raw_body() {
        let unset = Fingerprint::builder().method("GET").path("/x").finish();
        let empty = Fingerprint::builder()
            .method("GET")
            .path("/x")
            .body(None, b"")
            .finish();
        assert_eq!(unset, empty);
        assert_eq!(unset, Fingerprint::of_request("GET", "/x", None, b""));
        assert_eq!(unset, Fingerprint::of_request("GET", "/x", JSON, b""));
    }

    #[test]
    fn request_parts_change_the_fingerprint() {
        let base = || {
            Fingerprint::builder()
                .method("POST")
                .path("/a")
                .body(JSON, b"{}")
        };
        let reference = base().finish();
        assert_eq!(reference, base().finish());
        assert_eq!(
            reference,
            Fingerprint::of_request("POST", "/a", JSON, b"{}")
        );
        let changed = [
            base().method("PUT").finish(),
            base().method("post").finish(),
            base().path("/b").finish(),
            base().path("/A").finish(),
            base().query("").finish(),
            base().query("x=1").finish(),
            base().header("x-a", b"1").finish(),
            Fingerprint::builder().path("/a").body(JSON, b"{}").finish(),
            Fingerprint::builder()
                .method("POST")
                .body(JSON, b"{}")
                .finish(),
        ];
        for (i, fp) in changed.iter().enumerate() {
            assert_ne!(*fp, reference, "variant {i}");
            for (j, other) in changed.iter().enumerate().skip(i + 1) {
                assert_ne!(fp, other, "variants {i} and {j}");
            }
        }
        assert_ne!(base().query("x=1").finish(), base().query("x=2").finish());
        assert_ne!(
            base().header("x-a", b"1").finish(),
            base().header("x-a", b"2").finish()
        );
        assert_ne!(
            base().header("x-a", b"1").finish(),
            base().header("x-b", b"1").finish()
        );
        // Framing: moving bytes between fields changes the digest.
        assert_ne!(
            Fingerprint::builder().method("POST/").path("a").finish(),
            Fingerprint::builder().method("POST").path("/a").finish()
        );
        assert_ne!(
            base().header("ab", b"c").finish(),
            base().header("a", b"bc").finish()
        );
        // Duplicate headers are kept.
        assert_ne!(
            base().header("x-a", b"1").finish(),
            base().header("x-a", b"1").header("x-a", b"1").finish()
        );
        // The last call wins.
        assert_eq!(base().path("/z").path("/a").finish(), reference);
    }

    #[test]
    fn builder_call_order_and_header_case_are_irrelevant() {
        let a = Fingerprint::builder()
            .method("POST")
            .path("/p")
            .query("q=1")
            .header("X-Tenant", b"t1")
            .header("Accept", b"application/json")
            .header("x-multi", b"2")
            .header("X-Multi", b"1")
            .body(JSON, br#"{"b":1,"a":2}"#)
            .finish();
        let b = Fingerprint::builder()
            .body(JSON, br#"{"a":2,"b":1}"#)
            .header("x-multi", b"1")
            .header("accept", b"application/json")
            .header("x-MULTI", b"2")
            .query("q=1")
            .header("x-tenant", b"t1")
            .path("/p")
            .method("POST")
            .finish();
        assert_eq!(a, b);
        // Header values stay case-sensitive.
        let c = Fingerprint::builder().header("X-Tenant", b"T1").finish();
        let d = Fingerprint::builder().header("x-tenant", b"t1").finish();
        assert_ne!(c, d);
    }

    #[test]
    fn display_and_accessors() {
        let fp = Fingerprint::from_parts(1, [0xab; 32]);
        let shown = fp.to_string();
        assert_eq!(shown, format!("v1:{}", "ab".repeat(32)));
        assert_eq!(format!("{fp:?}"), shown);
        assert_eq!(fp.version(), 1);
        assert_eq!(fp.digest(), &[0xab; 32]);

        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let fp = Fingerprint::from_parts(1, digest);
        assert_eq!(fp.prefix(), 0x0807_0605_0403_0201);
        assert!(fp.to_string().starts_with("v1:0102030405060708000000"));

        let fresh = post(JSON, "{}");
        assert_eq!(fresh.version(), Fingerprint::CURRENT_VERSION);
        let text = fresh.to_string();
        assert_eq!(text.len(), 3 + 64);
        assert!(text.starts_with("v1:"));
        assert!(
            text[3..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(
            Fingerprint::from_parts(fresh.version(), *fresh.digest()),
            fresh
        );
        assert_ne!(Fingerprint::from_parts(2, *fresh.digest()), fresh);
        assert!(
            Fingerprint::from_parts(2, [0; 32])
                .to_string()
                .starts_with("v2:")
        );
    }

    #[test]
    fn of_bytes_is_domain_separated() {
        let body = br#"{"a":1}"#;
        assert_eq!(Fingerprint::of_bytes(body), Fingerprint::of_bytes(body));
        assert_ne!(
            Fingerprint::of_bytes(body),
            Fingerprint::of_bytes(b"{\"a\":2}")
        );
        assert_ne!(
            Fingerprint::of_bytes(body),
            Fingerprint::of_request("", "", None, body)
        );
        assert_ne!(
            Fingerprint::of_bytes(body),
            Fingerprint::of_request("POST", "/", JSON, body)
        );
        assert_ne!(Fingerprint::of_bytes(b""), Fingerprint::builder().finish());
        assert_ne!(
            Fingerprint::of_bytes(b""),
            Fingerprint::of_request("", "", None, b"")
        );
        // No JSON canonicalisation for opaque payloads.
        assert_ne!(
            Fingerprint::of_bytes(b"[1]"),
            Fingerprint::of_bytes(b"[1.0]")
        );
        assert_eq!(
            Fingerprint::of_bytes(b"x").version(),
            Fingerprint::CURRENT_VERSION
        );
    }

    #[test]
    fn json_content_type_detection() {
        for yes in [
            "application/json",
            "APPLICATION/JSON",
            " application/json ",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/problem+json",
            "application/problem+json; charset=utf-8",
            "application/vnd.api+JSON",
            "application/merge-patch+json",
            "text/x.y+json",
        ] {
            assert!(is_json_content_type(yes), "{yes:?}");
        }
        for no in [
            "",
            "json",
            "text/plain",
            "text/json",
            "application/jsonx",
            "application/json5",
            "application/x-ndjson",
            "application/+json",
            "/x+json",
            "application/",
            "application/problem+json/x",
            "application/prob lem+json",
            "application / json",
            "application/problem+xml",
            "application/problem+jsonp",
            "multipart/form-data; boundary=x+json",
            "application/ジ+json",
        ] {
            assert!(!is_json_content_type(no), "{no:?}");
        }
    }

    /// The documented byte stream, rebuilt by hand, gives the same digest.
    #[test]
    fn matches_documented_layout() {
        fn field(stream: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
            stream.push(tag);
            stream.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            stream.extend_from_slice(bytes);
        }
        fn header(name: &[u8], value: &[u8]) -> Vec<u8> {
            let mut bytes = (name.len() as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value);
            bytes
        }
        let mut stream = b"idemstore.fingerprint\x01".to_vec();
        field(&mut stream, 1, b"PATCH");
        field(&mut stream, 2, b"/v1/items/7");
        field(&mut stream, 3, b"dry_run=true");
        field(&mut stream, 4, &header(b"accept", b"*/*"));
        field(&mut stream, 4, &header(b"x-tenant", b"a"));
        field(&mut stream, 4, &header(b"x-tenant", b"b"));
        field(&mut stream, 5, b"\x01{\"a\":[1,\"\xc3\xa9\"],\"b\":1}");
        let expected = Fingerprint::from_parts(1, *blake3::hash(&stream).as_bytes());
        let got = Fingerprint::builder()
            .header("X-Tenant", b"b")
            .body(
                Some("application/json"),
                br#" { "b" : 1.0, "a" : [ 1e0, "\u00e9" ] } "#,
            )
            .header("ACCEPT", b"*/*")
            .query("dry_run=true")
            .header("x-tenant", b"a")
            .path("/v1/items/7")
            .method("PATCH")
            .finish();
        assert_eq!(got, expected);

        let mut stream = b"idemstore.fingerprint\x01".to_vec();
        field(&mut stream, 5, b"\x00raw");
        let expected = Fingerprint::from_parts(1, *blake3::hash(&stream).as_bytes());
        assert_eq!(Fingerprint::builder().body(TEXT, b"raw").finish(), expected);

        let mut stream = b"idemstore.fingerprint\x01".to_vec();
        field(&mut stream, 6, b"payload");
        let expected = Fingerprint::from_parts(1, *blake3::hash(&stream).as_bytes());
        assert_eq!(Fingerprint::of_bytes(b"payload"), expected);
    }

    /// Pinned digests: if any of these change, the algorithm changed and
    /// `CURRENT_VERSION` must be bumped (stored fingerprints would no longer
    /// match).
    #[test]
    fn golden_values() {
        let booking = post(
            JSON,
            r#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#,
        );
        let empty = Fingerprint::of_request("GET", "/v1/bookings", None, b"");
        let array = post(JSON, r#"[1,2.0,"x"]"#);
        let text = post(TEXT, "hello, world\n");
        let full = Fingerprint::builder()
            .method("POST")
            .path("/v1/bookings")
            .query("dry_run=true&lang=en")
            .header("Idempotency-Key", b"key-123")
            .header("X-Tenant-Id", b"tenant_42")
            .body(JSON, br#"{"b":2,"a":1}"#)
            .finish();
        let bytes = Fingerprint::of_bytes(b"opaque payload");
        let got = [booking, empty, array, text, full, bytes].map(|fp| fp.to_string());
        assert_eq!(got, GOLDEN);
    }

    /// booking, empty GET, `[1,2.0,"x"]`, text/plain, query + headers, `of_bytes`.
    const GOLDEN: [&str; 6] = [
        "v1:fa51e65991fec6f9a3fc251df1ceb060ddcae005ad39d616b052785d0f20aa53",
        "v1:ef30c986a57db8b250204d1bf8446f668988b7ee1685d2af483cc2919456e9ea",
        "v1:e3142f3ef2a7aba76db3ae8bacfd09cd6087a56be769d79116e80b9eb769e6f6",
        "v1:04d9558e405083fcbd59d1b23bd1b08de6a1f1589e812f38a34bc4444bbcb004",
        "v1:75c252f26e5218ebb565bd231f531a271543748041d323787a2e7f01afcd0243",
        "v1:dbcf125473f352ae9d98450eb57e599d836f55e18133a118993422acb1d808e3",
    ];
}
