//! The HTTP layer's public header parsing on arbitrary header values: the default scope taken
//! from the `Authorization` header (rule H7). Any value the `http` crate accepts as a header
//! gives no scope when it is empty and otherwise a valid scope of the fixed form
//! `auth:<32 hex digits>`, the same for the same value and distinct for distinct values;
//! never a panic. (The idempotency-key header's parser is crate-private; its rules are those
//! of `Key::new`, fuzzed by `key_parse`.)
#![no_main]

use http::HeaderValue;
use http::request::Parts;
use idemstore::Scope;
use libfuzzer_sys::fuzz_target;

fn parts(authorization: Option<&HeaderValue>) -> Parts {
    let mut builder = http::Request::post("/v1/bookings");
    if let Some(value) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, value.clone());
    }
    builder.body(()).unwrap().into_parts().0
}

fn scope_of(value: &[u8]) -> Option<Option<Scope>> {
    let value = HeaderValue::from_bytes(value).ok()?;
    Some(idemstore::http::scope_from_authorization(
        &parts(Some(&value)),
        &SECRET,
    ))
}

const SECRET: [u8; 32] = [0x5c; 32];

/// The credentials as rule H14 compares them, without surrounding blanks: with a scheme, the
/// scheme in lower case, one space, the rest without leading blanks; without one (no blank
/// inside), the value as it is, marked apart.
fn normalized(value: &[u8]) -> Vec<u8> {
    let value = value.trim_ascii();
    match value.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(split) => {
            let (scheme, rest) = value.split_at(split);
            let mut out = scheme.to_ascii_lowercase();
            out.push(b' ');
            out.extend_from_slice(rest.trim_ascii_start());
            out
        }
        None => [&b"bare:"[..], value].concat(),
    }
}

fuzz_target!(|data: &[u8]| {
    assert!(idemstore::http::scope_from_authorization(&parts(None), &SECRET).is_none());
    // Two header values: the input split at its first 0xff byte (never valid in a header).
    let (a, b) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"Bearer t"[..]),
    };
    let Some(sa) = scope_of(a) else {
        return;
    };
    match &sa {
        None => assert!(
            a.trim_ascii().is_empty(),
            "a non-blank Authorization header gave no scope"
        ),
        Some(scope) => {
            let text = scope.as_str();
            assert!(!a.trim_ascii().is_empty());
            assert_eq!(text.len(), 5 + 32, "{text}");
            assert!(text.starts_with("auth:"), "{text}");
            assert!(
                text[5..]
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{text}"
            );
            assert_eq!(Scope::new(text).as_ref(), Ok(scope));
        }
    }
    assert_eq!(
        scope_of(a),
        Some(sa.clone()),
        "the same value, another scope"
    );
    if let Some(sb) = scope_of(b)
        && sa.is_some()
    {
        if normalized(a) == normalized(b) {
            assert_eq!(sa, sb, "one credential spelled two ways, two scopes");
        } else {
            assert_ne!(sa, sb, "two credentials share a scope");
        }
    }
});
