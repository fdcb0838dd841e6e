//! The encoding of a recovery point, as an in-flight record's expiry entry holds it.
//!
//! Why: a record's expiry entry already travels with the record everywhere (the log entry, the
//! overlay, the checkpoint, the open-time pass) and holds nothing while the record is in
//! flight; a recovery point is in-flight data of the same lifetime, so it lives there, and the
//! record's flag ([`super::record`]) says it does. Layout (`docs/format.md`): a version byte
//! (1), the name's length (one byte), the name's UTF-8 bytes, then the payload to the end.
//! Invariants: `decode(&encode(p)) == p`; `decode` never panics and refuses unknown versions,
//! short input, names that are not UTF-8 and points past the limits.

use super::bytes::Reader;
use crate::rules::point::RecoveryPoint;

/// The version byte of the point encoding.
pub(crate) const POINT_VERSION: u8 = 1;

/// Encodes a point. A valid point's name fits its one-byte length.
pub(crate) fn encode(p: &RecoveryPoint) -> Vec<u8> {
    let name = p.name().as_bytes();
    let mut out = Vec::with_capacity(2 + name.len() + p.payload().len());
    out.push(POINT_VERSION);
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.extend_from_slice(p.payload());
    out
}

/// The length of a point's encoding, without encoding it.
pub(crate) fn encoded_len(p: &RecoveryPoint) -> usize {
    2 + p.name().len() + p.payload().len()
}

/// Decodes a point, or says why the bytes are not one.
pub(crate) fn decode(b: &[u8]) -> Result<RecoveryPoint, String> {
    let mut r = Reader::new(b);
    let short = |_| "recovery point is truncated".to_owned();
    let version = r.u8().map_err(short)?;
    if version != POINT_VERSION {
        return Err(format!("recovery point has unknown version {version}"));
    }
    let len = usize::from(r.u8().map_err(short)?);
    let name = r.take(len).map_err(short)?;
    let name = std::str::from_utf8(name)
        .map_err(|_| "recovery point name is not valid text".to_owned())?;
    let payload = b.get(2 + len..).unwrap_or(&[]);
    RecoveryPoint::new(name, payload).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let p = RecoveryPoint::new("charged", b"ch_123").unwrap();
        let e = encode(&p);
        assert_eq!(e, b"\x01\x07chargedch_123");
        assert_eq!(encoded_len(&p), e.len());
        assert_eq!(decode(&e).unwrap(), p);
        for n in 0..9 {
            assert!(decode(&e[..n]).is_err(), "prefix {n}");
        }
        for i in 0..e.len() {
            for bit in 0..8 {
                let mut m = e.clone();
                m[i] ^= 1 << bit;
                let _ = decode(&m);
            }
        }
        assert!(decode(b"\x02\x01a").is_err());
        assert!(decode(b"\x01\x00").is_err(), "an empty name is refused");
    }
}
