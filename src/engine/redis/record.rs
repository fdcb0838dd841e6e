//! The record as the Redis engine keeps it: its key's name, its hash's fields, and the replies
//! of the scripts, read back into the crate's values.
//!
//! Why: what the server holds is bytes another program could have written; everything read
//! back is checked here once, so the engine either gets a well-formed value or a
//! `Corrupted` error naming what was wrong, never a panic.
//!
//! Invariants:
//! - a record's key tag is 32 hex digits of BLAKE3 keyed by the store's secret over the
//!   record's key hash, and a scope's tag 32 hex digits of the same keyed BLAKE3 over the
//!   scope's name (with a domain of its own): a client cannot choose keys that crowd one
//!   Cluster slot, and every machine holding the secret (kept in `<prefix>meta`) names a
//!   record alike;
//! - a store laid out by key (made before per-scope counts) names a record
//!   `<prefix>r:{<key tag>}`; one laid out by scope names it `<prefix>r:{<scope tag>}<key tag>`
//!   and keeps its scope's count in `<prefix>s:{<scope tag>}` (C13): the braces make the tag
//!   the key's Redis Cluster hash tag, so a record, and in the scope layout all of its scope's
//!   records with their count, are one slot.

use ::redis::Value;

use crate::error::Unavailable;
use crate::format::blob;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{KeyHash, Scope};
use crate::rules::point::RecoveryPoint;
use crate::rules::response::Response;
use crate::rules::state::State;
use crate::view::RecordInfo;

/// How many hex digits of the keyed digest name a record (128 bits).
const TAG_HEX: usize = 32;

/// How a store's records are named, recorded in `<prefix>meta` when the store is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Each record a slot of its own; no count per scope (stores made before the layout).
    ByKey,
    /// A scope's records and their count in one slot, so a script can cap the scope (C13).
    ByScope,
}

impl Layout {
    /// The `layout` field of `<prefix>meta` (absent: [`Layout::ByKey`]).
    pub(crate) const BY_SCOPE: &'static str = "scope";
}

/// The names of a store's keys on the server.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
    secret: [u8; 32],
    layout: Layout,
}

impl Names {
    pub(crate) fn new(prefix: &str, secret: [u8; 32], layout: Layout) -> Names {
        Names {
            prefix: prefix.to_owned(),
            secret,
            layout,
        }
    }

    /// The key of the store's metadata (its secret and format version).
    pub(crate) fn meta(prefix: &str) -> String {
        format!("{prefix}meta")
    }

    /// The key of the record named `hash`, of `scope`.
    pub(crate) fn record(&self, scope: &Scope, hash: &KeyHash) -> String {
        let digest = blake3::keyed_hash(&self.secret, &hash.0);
        let hex = digest.to_hex();
        let key_tag = &hex.as_str()[..TAG_HEX];
        match self.layout {
            Layout::ByKey => format!("{}r:{{{key_tag}}}", self.prefix),
            Layout::ByScope => format!("{}r:{{{}}}{key_tag}", self.prefix, self.scope_tag(scope)),
        }
    }

    /// The key of `scope`'s count (a sorted set: each live record's key tag, scored by its
    /// expiry), in the scope layout only.
    pub(crate) fn scope_count(&self, scope: &Scope) -> Option<String> {
        match self.layout {
            Layout::ByKey => None,
            Layout::ByScope => Some(format!("{}s:{{{}}}", self.prefix, self.scope_tag(scope))),
        }
    }

    fn scope_tag(&self, scope: &Scope) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        // A domain of its own, so that no scope's tag is any record's key tag.
        h.update(b"idemstore scope tag\0");
        h.update(scope.as_str().as_bytes());
        let hex = h.finalize().to_hex();
        hex.as_str()[..TAG_HEX].to_owned()
    }

    /// The `SCAN` pattern that matches every record key of the store.
    pub(crate) fn records_pattern(&self) -> String {
        self.pattern("r:{*")
    }

    /// The `SCAN` pattern of every scope's count (the scope layout).
    pub(crate) fn counts_pattern(&self) -> String {
        self.pattern("s:{*")
    }

    fn pattern(&self, tail: &str) -> String {
        let mut p = String::with_capacity(self.prefix.len() + tail.len());
        for c in self.prefix.chars() {
            // The prefix is visible ASCII; glob characters in it are matched literally.
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push_str(tail);
        p
    }
}

/// A reply that does not have the shape its script gives.
pub(crate) fn malformed(what: &str, v: &Value) -> Unavailable {
    Unavailable::Corrupted {
        detail: format!("unexpected reply to {what}: {v:?}"),
    }
}

/// The words of a script's array reply (bulk or simple strings; integers as their digits).
pub(crate) fn words(what: &str, v: Value) -> Result<Vec<Vec<u8>>, Unavailable> {
    let Value::Array(items) = v else {
        return Err(malformed(what, &v));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::BulkString(b) => Ok(b),
            Value::SimpleString(s) => Ok(s.into_bytes()),
            Value::Int(i) => Ok(i.to_string().into_bytes()),
            other => Err(malformed(what, &other)),
        })
        .collect()
}

/// A decimal number of a reply or a field.
pub(crate) fn number(what: &str, b: &[u8]) -> Result<u64, Unavailable> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Unavailable::Corrupted {
            detail: format!("{what} is not a number: {:?}", String::from_utf8_lossy(b)),
        })
}

/// A stored response blob.
pub(crate) fn response(b: &[u8]) -> Result<Response, Unavailable> {
    blob::decode(b).map_err(|e| Unavailable::Corrupted {
        detail: format!("stored response: {e}"),
    })
}

/// A fingerprint as the scripts store it: the version byte, then the digest.
/// A recovery point as the scripts keep it (`format/point.rs`'s encoding); empty for none.
pub(crate) fn point(b: &[u8]) -> Result<Option<RecoveryPoint>, Unavailable> {
    if b.is_empty() {
        return Ok(None);
    }
    crate::format::point::decode(b)
        .map(Some)
        .map_err(|e| corrupt(&format!("recovery point: {e}")))
}

pub(crate) fn fingerprint_bytes(fp: &Fingerprint) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(fp.version());
    out.extend_from_slice(fp.digest());
    out
}

pub(crate) fn fingerprint(b: &[u8]) -> Result<Fingerprint, Unavailable> {
    match b.split_first() {
        Some((&version, digest)) => match <[u8; 32]>::try_from(digest) {
            Ok(digest) => Ok(Fingerprint::from_parts(version, digest)),
            Err(_) => Err(corrupt("fingerprint is not 33 bytes")),
        },
        None => Err(corrupt("fingerprint is empty")),
    }
}

fn corrupt(detail: &str) -> Unavailable {
    Unavailable::Corrupted {
        detail: format!("record: {detail}"),
    }
}

/// A record's hash, field by field, as `HGETALL` gives it.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    st: Option<Vec<u8>>,
    fp: Option<Vec<u8>>,
    tk: Option<Vec<u8>>,
    cr: Option<Vec<u8>>,
    ld: Option<Vec<u8>>,
    ex: Option<Vec<u8>>,
    sc: Option<Vec<u8>>,
    k: Option<Vec<u8>>,
    rs: Option<Vec<u8>>,
    pt: Option<Vec<u8>>,
}

impl Fields {
    /// The fields of an `HGETALL` reply (alternating names and values, or a map).
    pub(crate) fn of(what: &str, v: Value) -> Result<Fields, Unavailable> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = match v {
            Value::Map(pairs) => pairs
                .into_iter()
                .map(|(a, b)| Ok((bytes(what, a)?, bytes(what, b)?)))
                .collect::<Result<_, Unavailable>>()?,
            other => {
                let flat = words(what, other)?;
                if flat.len() % 2 != 0 {
                    return Err(corrupt("odd number of fields"));
                }
                let mut it = flat.into_iter();
                let mut pairs = Vec::new();
                while let (Some(a), Some(b)) = (it.next(), it.next()) {
                    pairs.push((a, b));
                }
                pairs
            }
        };
        let mut f = Fields::default();
        for (name, value) in pairs {
            let slot = match name.as_slice() {
                b"st" => &mut f.st,
                b"fp" => &mut f.fp,
                b"tk" => &mut f.tk,
                b"cr" => &mut f.cr,
                b"ld" => &mut f.ld,
                b"ex" => &mut f.ex,
                b"sc" => &mut f.sc,
                b"k" => &mut f.k,
                b"rs" => &mut f.rs,
                b"pt" => &mut f.pt,
                // The nonces, and anything a later version adds.
                _ => continue,
            };
            *slot = Some(value);
        }
        Ok(f)
    }

    /// Whether the hash is a tombstone (or empty): a released or purged key.
    pub(crate) fn is_record(&self) -> bool {
        matches!(self.st.as_deref(), Some(b"f" | b"c"))
    }

    /// When the record expires.
    pub(crate) fn expires_at(&self) -> Result<u64, Unavailable> {
        number("record expiry", need(&self.ex, "ex")?)
    }

    /// The key hash of the record's scope and key.
    pub(crate) fn key_hash(&self) -> Result<KeyHash, Unavailable> {
        Ok(KeyHash::of_raw(need(&self.sc, "sc")?, need(&self.k, "k")?))
    }

    /// The stored response's length in bytes, if it holds one.
    pub(crate) fn response_len(&self) -> Option<usize> {
        self.rs.as_ref().map(Vec::len)
    }

    /// The record as a view; with its response decoded when completed.
    pub(crate) fn info(self) -> Result<RecordInfo, Unavailable> {
        let state = match self.st.as_deref() {
            Some(b"f") => State::InFlight,
            Some(b"c") => State::Completed,
            _ => return Err(corrupt("no state")),
        };
        let text = |v: &Option<Vec<u8>>, name: &str| -> Result<String, Unavailable> {
            String::from_utf8(need(v, name)?.to_vec())
                .map_err(|_| corrupt(&format!("{name} is not UTF-8")))
        };
        let response = match (state, &self.rs) {
            (State::Completed, Some(b)) => Some(response(b)?),
            (State::Completed, None) => return Err(corrupt("completed without a response")),
            (State::InFlight | State::OutcomeUnknown, _) => None,
        };
        Ok(RecordInfo {
            scope: text(&self.sc, "sc")?,
            key: text(&self.k, "k")?,
            state,
            fingerprint: fingerprint(need(&self.fp, "fp")?)?,
            created_at: number("record creation", need(&self.cr, "cr")?)?,
            lease_deadline: match state {
                State::InFlight => Some(number("lease deadline", need(&self.ld, "ld")?)?),
                State::Completed | State::OutcomeUnknown => None,
            },
            expires_at: self.expires_at()?,
            token: number("token", need(&self.tk, "tk")?)?,
            response,
            recovery_point: match &self.pt {
                Some(b) => point(b)?,
                None => None,
            },
        })
    }
}

fn need<'a>(v: &'a Option<Vec<u8>>, name: &str) -> Result<&'a [u8], Unavailable> {
    v.as_deref()
        .ok_or_else(|| corrupt(&format!("field {name} is missing")))
}

fn bytes(what: &str, v: Value) -> Result<Vec<u8>, Unavailable> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(malformed(what, &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_are_one_slot_and_keyed_by_the_secret() {
        let scope = Scope::new("acct").unwrap();
        let hash = KeyHash::of(&scope, &crate::rules::key::Key::new("k1").unwrap());
        let a = Names::new("idem:", [1; 32], Layout::ByKey).record(&scope, &hash);
        let b = Names::new("idem:", [2; 32], Layout::ByKey).record(&scope, &hash);
        assert_ne!(a, b);
        assert!(a.starts_with("idem:r:{") && a.ends_with('}'));
        assert_eq!(a.len(), "idem:r:{}".len() + TAG_HEX);
        // In the scope layout, the record and its scope's count share the scope's tag.
        let names = Names::new("idem:", [1; 32], Layout::ByScope);
        let (r, s) = (
            names.record(&scope, &hash),
            names.scope_count(&scope).unwrap(),
        );
        assert_eq!(r.len(), "idem:r:{}".len() + 2 * TAG_HEX);
        assert_eq!(
            r["idem:r:".len()..].split('}').next(),
            s["idem:s:".len()..].split('}').next()
        );
        assert!(r.ends_with(&a["idem:r:{".len()..a.len() - 1]));
    }

    #[test]
    fn glob_characters_of_a_prefix_are_matched_literally() {
        let names = Names::new("a*b?[", [0; 32], Layout::ByScope);
        assert_eq!(names.records_pattern(), "a\\*b\\?\\[r:{*");
    }

    #[test]
    fn damaged_fields_are_errors_not_panics() {
        let v = Value::Array(vec![
            Value::BulkString(b"st".to_vec()),
            Value::BulkString(b"c".to_vec()),
            Value::BulkString(b"tk".to_vec()),
            Value::BulkString(b"x".to_vec()),
        ]);
        let f = Fields::of("test", v);
        assert!(matches!(
            f.map(Fields::info),
            Ok(Err(Unavailable::Corrupted { .. }))
        ));
        assert!(Fields::of("test", Value::Int(3)).is_err());
        assert!(Fields::of("test", Value::Array(vec![Value::Nil])).is_err());
    }
}
