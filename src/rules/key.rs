//! Scopes, keys and the 32-byte hash that names a record on disk and in memory.
//!
//! Why: a record belongs to a (scope, key) pair, and two pairs must never share a record.
//! Invariant: [`KeyHash::of`] frames both parts with their lengths before hashing, so
//! `("ab", "c")` and `("a", "bc")` hash differently; a [`Key`] or [`Scope`] value is always valid
//! (its constructor checks), so the rest of the crate never re-validates.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::error::{KeyError, ScopeError};

/// Who owns a key: an account, a tenant, an API token's principal (1 to 255 bytes of UTF-8
/// without control characters). The same key under two scopes names two records.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(Arc<str>);

impl Scope {
    /// The longest scope accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks and wraps a scope.
    ///
    /// ```
    /// let scope = idemstore::Scope::new("acct_42")?;
    /// assert_eq!(scope.as_str(), "acct_42");
    /// assert!(idemstore::Scope::new("").is_err());
    /// # Ok::<(), idemstore::ScopeError>(())
    /// ```
    pub fn new(scope: impl AsRef<str>) -> Result<Scope, ScopeError> {
        let s = scope.as_ref();
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(ScopeError::TooLong {
                len: s.len(),
                max: Self::MAX_LEN,
            });
        }
        if let Some((index, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
            return Err(ScopeError::ControlCharacter { index });
        }
        Ok(Scope(Arc::from(s)))
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", &*self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An idempotency key: 1 to 255 bytes (by default) of visible ASCII, rule C12.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

impl Key {
    /// The default limit on a key's length, in bytes (the common 255-character limit of public APIs).
    pub const DEFAULT_MAX_LEN: usize = 255;

    /// Checks a key against the default limit of 255 bytes.
    ///
    /// ```
    /// let key = idemstore::Key::new("1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4")?;
    /// assert_eq!(key.len(), 36);
    /// assert!(idemstore::Key::new("has space").is_err());
    /// # Ok::<(), idemstore::KeyError>(())
    /// ```
    pub fn new(key: impl AsRef<str>) -> Result<Key, KeyError> {
        Self::with_max_len(key, Self::DEFAULT_MAX_LEN)
    }

    /// Checks a key against a limit of `max_len` bytes.
    pub fn with_max_len(key: impl AsRef<str>, max_len: usize) -> Result<Key, KeyError> {
        let s = key.as_ref();
        check_key_bytes(s.as_bytes(), max_len)?;
        Ok(Key(Arc::from(s)))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a key is never empty. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Rule C12 on raw bytes: non-empty, at most `max_len`, visible ASCII only.
pub(crate) fn check_key_bytes(bytes: &[u8], max_len: usize) -> Result<(), KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    if let Some((index, &byte)) = bytes
        .iter()
        .enumerate()
        .find(|&(_, &b)| !(0x21..=0x7e).contains(&b))
    {
        return Err(KeyError::InvalidByte { index, byte });
    }
    if bytes.len() > max_len {
        return Err(KeyError::TooLong {
            len: bytes.len(),
            max: max_len,
        });
    }
    Ok(())
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", &*self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 32-byte name of a record: blake3 over the length-framed scope and key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyHash(pub(crate) [u8; 32]);

impl KeyHash {
    /// `blake3(u32le(len scope) ‖ scope ‖ u32le(len key) ‖ key)`, as `docs/format.md` states.
    pub(crate) fn of(scope: &Scope, key: &Key) -> KeyHash {
        Self::of_raw(scope.as_str().as_bytes(), key.as_str().as_bytes())
    }

    pub(crate) fn of_raw(scope: &[u8], key: &[u8]) -> KeyHash {
        let mut h = blake3::Hasher::new();
        // Lengths are bounded by Scope::MAX_LEN and the key limit, far below u32::MAX.
        h.update(&(scope.len() as u32).to_le_bytes());
        h.update(scope);
        h.update(&(key.len() as u32).to_le_bytes());
        h.update(key);
        KeyHash(*h.finalize().as_bytes())
    }

    /// The first 8 bytes: what a map's seeded hasher is fed (`seeded.rs`). Never a bucket
    /// hash on its own: a client can grind keys whose digests agree in any bits it likes.
    pub(crate) fn low64(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }
}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.low64());
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_separates_scope_and_key() {
        assert_ne!(KeyHash::of_raw(b"ab", b"c"), KeyHash::of_raw(b"a", b"bc"));
    }

    #[test]
    fn key_rules() {
        assert_eq!(Key::new(""), Err(KeyError::Empty));
        assert_eq!(
            Key::new("a b"),
            Err(KeyError::InvalidByte {
                index: 1,
                byte: b' '
            })
        );
        assert_eq!(
            Key::new("é"),
            Err(KeyError::InvalidByte {
                index: 0,
                byte: 0xc3
            })
        );
        assert!(Key::new("x".repeat(255)).is_ok());
        assert_eq!(
            Key::new("x".repeat(256)),
            Err(KeyError::TooLong { len: 256, max: 255 })
        );
    }
}
