//! Fresh idempotency keys: UUID version 4 from the operating system's random source.
//!
//! Why: a key must be unguessable and must never repeat across callers, restarts or a
//! database reset (the seeds' "sequential ids" mistake), so it comes from a CSPRNG, never
//! from a counter or from the request. Invariant: every key is 36 characters of lowercase
//! hex and dashes with the version (4) and variant (`10`) bits of RFC 9562 set, and 122 of
//! its bits are random; a failure of the random source is an error, never a weaker key.

/// A UUID v4 in its hyphenated lowercase form, from `getrandom`.
pub(crate) fn uuid_v4() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format_v4(bytes))
}

/// `bytes` with the version and variant bits set, as `8-4-4-4-12` hex digits.
fn format_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k1_the_version_and_variant_bits_are_set_and_the_form_is_fixed() {
        assert_eq!(
            format_v4([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(format_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn k1_two_keys_differ() {
        let (a, b) = (uuid_v4().unwrap(), uuid_v4().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
