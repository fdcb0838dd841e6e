//! The one checked reader of little-endian bytes, for every decoder of the file format and the
//! write-ahead log.
//!
//! Why: every length and integer in a record, a response blob or a log entry comes from a file
//! that may be damaged, so each read must be bounds-checked; one reader does it for all.
//! Invariant: no function here panics, whatever the bytes: a read past the end is an error
//! ([`Reader`]) or, for a fixed-position field the caller has already length-checked, zero
//! ([`u16_at`] and its siblings).

/// A read went past the end of the bytes; `at` is where it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated {
    pub(crate) at: usize,
}

/// A cursor over a byte slice.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(Truncated { at: self.at })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length field of 32 bits, as a `usize`.
    pub(crate) fn len32(&mut self) -> Result<usize, Truncated> {
        let at = self.at;
        usize::try_from(self.u32()?).map_err(|_| Truncated { at })
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// `N` bytes at `at`, zeros where `b` ends first.
fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = at.checked_add(N).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    a
}

pub(crate) fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array_at(b, at))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array_at(b, at))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array_at(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_without_panicking() {
        let b = [1u8, 0, 2, 0, 0, 0, 9];
        let mut r = Reader::new(&b);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.u32(), Ok(2));
        assert_eq!(r.u16(), Err(Truncated { at: 6 }));
        assert_eq!(r.u8(), Ok(9));
        assert!(r.is_empty());
        assert_eq!(r.take(usize::MAX), Err(Truncated { at: 7 }));
        assert_eq!((u16_at(&b, 0), u32_at(&b, 2), u64_at(&b, 3)), (1, 2, 0));
        assert_eq!(
            (u8_at(&b, 6), u8_at(&b, 7), u32_at(&b, usize::MAX)),
            (9, 0, 0)
        );
    }
}
