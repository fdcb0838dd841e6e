//! The idempotency-key and scope parsers on arbitrary text, against an independent statement
//! of rule C12: a key is 1 to `max_len` bytes of visible ASCII (0x21-0x7e); a scope is 1 to 255
//! bytes of UTF-8 without control characters. Every input is accepted or refused exactly as the
//! rule says, with the error naming the first offending position, and never a panic.
#![no_main]

use idemstore::{Key, KeyError, Scope, ScopeError};
use libfuzzer_sys::fuzz_target;

fn check_key(text: &str, max_len: usize) {
    let bytes = text.as_bytes();
    let first_bad = bytes.iter().position(|b| !(0x21..=0x7e).contains(b));
    let got = Key::with_max_len(text, max_len);
    match (&got, first_bad) {
        (Ok(key), None) => {
            assert!(!bytes.is_empty() && bytes.len() <= max_len);
            assert_eq!(key.as_str(), text);
            assert_eq!(key.len(), bytes.len());
            assert!(!key.is_empty());
        }
        (Err(KeyError::Empty), _) => assert!(bytes.is_empty()),
        (Err(KeyError::InvalidByte { index, byte }), Some(bad)) => {
            assert_eq!(*index, bad);
            assert_eq!(*byte, bytes[bad]);
        }
        (Err(KeyError::TooLong { len, max }), None) => {
            assert_eq!((*len, *max), (bytes.len(), max_len));
            assert!(bytes.len() > max_len);
        }
        (other, _) => {
            panic!("key {text:?} (max {max_len}): {other:?}, first bad byte {first_bad:?}")
        }
    }
    if let Err(e) = &got {
        assert!(!e.to_string().is_empty());
    }
    if max_len == Key::DEFAULT_MAX_LEN {
        assert_eq!(Key::new(text).ok(), got.ok());
    }
}

fn check_scope(text: &str) {
    let got = Scope::new(text);
    let control = text
        .char_indices()
        .find(|(_, c)| c.is_control())
        .map(|(i, _)| i);
    match &got {
        Ok(scope) => {
            assert!(!text.is_empty() && text.len() <= Scope::MAX_LEN && control.is_none());
            assert_eq!(scope.as_str(), text);
        }
        Err(ScopeError::Empty) => assert!(text.is_empty()),
        Err(ScopeError::TooLong { len, max }) => {
            assert_eq!((*len, *max), (text.len(), Scope::MAX_LEN));
            assert!(text.len() > Scope::MAX_LEN);
        }
        Err(ScopeError::ControlCharacter { index }) => {
            assert!(!text.is_empty() && text.len() <= Scope::MAX_LEN);
            assert_eq!(Some(*index), control);
        }
        Err(other) => panic!("scope {text:?}: unexpected {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (limit, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])) % 600, rest),
        _ => (Key::DEFAULT_MAX_LEN, data),
    };
    let text = String::from_utf8_lossy(rest);
    check_key(&text, limit);
    check_key(&text, Key::DEFAULT_MAX_LEN);
    check_scope(&text);
});
