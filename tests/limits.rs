//! Input limits (C12): clear errors, never a panic, never a partial write.

use idemstore::{BeginError, CompleteError, Key, KeyError, Response, Scope, ScopeError};

use crate::support::*;

#[test]
fn c12_bad_keys_are_refused() {
    assert_eq!(Key::new(""), Err(KeyError::Empty));
    assert_eq!(
        Key::new("x".repeat(256)),
        Err(KeyError::TooLong { len: 256, max: 255 })
    );
    assert!(Key::new("x".repeat(255)).is_ok());
    for (bad, index, byte) in [
        ("a b", 1, b' '),
        ("tab\there", 3, b'\t'),
        ("nul\0", 3, 0),
        ("del\x7f", 3, 0x7f),
        ("caf\u{e9}", 3, 0xc3),
    ] {
        assert_eq!(
            Key::new(bad),
            Err(KeyError::InvalidByte { index, byte }),
            "{bad:?}"
        );
    }
    let message = Key::new("a b").unwrap_err().to_string();
    assert!(message.contains("visible ASCII"), "{message}");
}

#[test]
fn c12_bad_scopes_are_refused() {
    assert_eq!(Scope::new(""), Err(ScopeError::Empty));
    assert!(matches!(
        Scope::new("s".repeat(256)),
        Err(ScopeError::TooLong { .. })
    ));
    assert_eq!(
        Scope::new("a\nb"),
        Err(ScopeError::ControlCharacter { index: 1 })
    );
    assert!(Scope::new("acct_42 \u{e9}").is_ok());
}

#[test]
fn c12_the_configured_key_limit_applies_to_begin() {
    let t = open_with(|c| c.max_key_len(16));
    let long = Key::new("k".repeat(17)).unwrap();
    match t.store.begin(&scope("a"), &long, &fp("1")) {
        Err(BeginError::InvalidKey(KeyError::TooLong { len: 17, max: 16 })) => {}
        other => panic!("{other:?}"),
    }
    assert!(t.store.key("k".repeat(17)).is_err());
    assert!(t.store.key("k".repeat(16)).is_ok());
    let wide = open_with(|c| c.max_key_len(1000));
    let k = wide.store.key("k".repeat(1000)).unwrap();
    drop(execute(
        wide.store.begin(&scope("a"), &k, &fp("1")).unwrap(),
    ));
}

#[test]
fn c12_a_response_that_cannot_be_encoded_is_refused_and_the_key_released() {
    let t = open();
    let (s, k) = (scope("acct"), key("k"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let headers = (0..70_000).map(|i| (format!("x{i}"), Vec::new()));
    match r.complete(Response::new(200, headers, "")) {
        Err(CompleteError::InvalidResponse { reason }) => assert!(reason.contains("65 535")),
        other => panic!("{other:?}"),
    }
    drop(execute(t.store.begin(&s, &k, &fp("1")).unwrap()));
}

#[test]
fn c12_an_oversized_response_is_refused_and_the_key_released() {
    let t = open_with(|c| c.max_response_bytes(1024));
    let (s, k) = (scope("acct"), key("k"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let big = Response::new(201, [("content-type", "text/plain")], vec![b'x'; 2000]);
    match r.complete(big.clone()) {
        Err(CompleteError::ResponseTooLarge { len, max: 1024 }) => {
            assert_eq!(len, big.encoded_len())
        }
        other => panic!("{other:?}"),
    }
    assert!(t.store.get(&s, &k).unwrap().is_none(), "no partial write");
    // C6: the next attempt executes; a response exactly at the limit is stored.
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let body_len = 1024 - Response::new(201, [("content-type", "text/plain")], "").encoded_len();
    let fits = Response::new(201, [("content-type", "text/plain")], vec![b'y'; body_len]);
    assert_eq!(fits.encoded_len(), 1024);
    r.complete(fits.clone()).unwrap();
    assert_eq!(replay(t.store.begin(&s, &k, &fp("1")).unwrap()), fits);
}
