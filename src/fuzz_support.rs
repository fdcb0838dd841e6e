//! Entry points for the fuzz targets in `fuzz/` into the decoders that read file bytes.
//!
//! Why: the record and response-blob decoders take bytes straight from the file, so they must
//! refuse anything malformed with an error and never panic; they are crate-private, and the
//! fuzz targets reach them through this module, which exists only with the `fuzzing` feature
//! and is not part of the API (no semver promise). Invariant: each function forwards to the
//! very decoder and encoder the store uses, adding no checks of its own, so what the fuzzer
//! finds here is what a damaged file would meet.

use crate::format::blob;
use crate::format::record::{FIXED_LEN, Hot, Record};
use crate::rules::response::Response;

/// Length of a record's fixed part (format version 1); the scope and key bytes follow it.
pub const RECORD_FIXED_LEN: usize = FIXED_LEN;

/// Byte range of the record's reserved field, which a version 1 reader ignores.
pub const RECORD_RESERVED: std::ops::Range<usize> = 10..12;

/// What the full record decoder read, in a form the fuzz targets can compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// The record encoded again by the store's own encoder.
    pub reencoded: Vec<u8>,
    /// The fixed part as the fixed-part decoder read it from the same bytes (debug form).
    pub fixed_part: String,
    /// The scope as decoded.
    pub scope: String,
    /// The key as decoded.
    pub key: String,
}

/// Decodes `bytes` as a record value with the store's decoder; on success returns it encoded
/// again, with the fixed part as the fast decoder read it.
pub fn decode_record(bytes: &[u8]) -> Result<DecodedRecord, String> {
    let record = Record::decode(bytes).map_err(|e| e.to_string())?;
    Ok(DecodedRecord {
        reencoded: record.encode(),
        fixed_part: format!("{:?}", record.hot),
        scope: record.scope,
        key: record.key,
    })
}

/// Decodes only the fixed part, as the replay path and the open-time scan do; returns its
/// debug form.
pub fn decode_record_fixed_part(bytes: &[u8]) -> Result<String, String> {
    Hot::decode(bytes)
        .map(|hot| format!("{hot:?}"))
        .map_err(|e| e.to_string())
}

/// Decodes `bytes` as a stored response blob; on success returns the response and its blob
/// encoded again by the store's encoder.
pub fn decode_response(bytes: &[u8]) -> Result<(Response, Vec<u8>), String> {
    let decoded = blob::decode(bytes).map_err(|e| e.to_string())?;
    let again = blob::encode(&decoded).map_err(|e| e.to_string())?;
    Ok((decoded, again))
}
