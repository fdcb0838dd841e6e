//! A recovery point: how far an operation of several steps got, named, with a small payload.
//!
//! Why: an operation that commits its effects in steps (reserve stock, then charge, then
//! ship) must not start again from the first step when an attempt dies between two of them;
//! the attempt that takes the key over resumes from the last step that committed. The point
//! belongs to the key's in-flight record, so it lives exactly as long as the reservation it
//! describes: a completion replaces it with the response, and a purge or an expiry removes it.
//! Invariant: a [`RecoveryPoint`] always satisfies the limits below, checked by [`validate`]
//! before it reaches an engine, so a stored point always fits its encoding.

use std::fmt;

use crate::error::PointError;

/// The longest name a recovery point may have, in bytes.
pub const MAX_POINT_NAME: usize = 255;
/// The largest payload a recovery point may carry, in bytes.
pub const MAX_POINT_PAYLOAD: usize = 64 << 10;

/// A named step an operation has committed, with the data the next step needs (say, the id of
/// the row the step created). Saved with
/// [`Reservation::save_point`](crate::Reservation::save_point); handed to the attempt that takes
/// the key over through [`Reservation::recovery_point`](crate::Reservation::recovery_point).
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    name: String,
    payload: Vec<u8>,
}

impl RecoveryPoint {
    /// The point, if `name` (1 to 255 bytes) and `payload` (at most 64 KiB) are within the
    /// limits; otherwise [`PointError::Invalid`] says why not.
    pub fn new(name: &str, payload: &[u8]) -> Result<RecoveryPoint, PointError> {
        validate(name, payload).map_err(|reason| PointError::Invalid { reason })?;
        Ok(RecoveryPoint {
            name: name.to_owned(),
            payload: payload.to_vec(),
        })
    }

    /// The step's name, as saved.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The step's payload, as saved.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl fmt::Debug for RecoveryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload is the caller's data: its size says enough in a log line.
        f.debug_struct("RecoveryPoint")
            .field("name", &self.name)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Checks a point's name and payload against the limits.
pub(crate) fn validate(name: &str, payload: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("the recovery point's name is empty".to_owned());
    }
    if name.len() > MAX_POINT_NAME {
        return Err(format!(
            "the recovery point's name is {} bytes; the limit is {MAX_POINT_NAME}",
            name.len()
        ));
    }
    if payload.len() > MAX_POINT_PAYLOAD {
        return Err(format!(
            "the recovery point's payload is {} bytes; the limit is {MAX_POINT_PAYLOAD}",
            payload.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert!(RecoveryPoint::new("", b"").is_err());
        assert!(RecoveryPoint::new(&"n".repeat(MAX_POINT_NAME + 1), b"").is_err());
        assert!(RecoveryPoint::new("n", &vec![0; MAX_POINT_PAYLOAD + 1]).is_err());
        let p = RecoveryPoint::new(&"n".repeat(MAX_POINT_NAME), &vec![7; MAX_POINT_PAYLOAD]);
        assert!(p.is_ok_and(|p| p.payload().len() == MAX_POINT_PAYLOAD));
        let shown = format!("{:?}", RecoveryPoint::new("held", b"secret").ok());
        assert!(
            shown.contains("held") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
