//! Entry points for the fuzz targets in `fuzz/` into the decoders that read file bytes, and
//! into step mode.
//!
//! Why: the record and response-blob decoders take bytes straight from the file, so they must
//! refuse anything malformed with an error and never panic; they are crate-private, and the
//! fuzz targets reach them through this module, which exists only with the `fuzzing` feature
//! and is not part of the API (no semver promise). The same goes for step mode (`engine/file/step.rs`),
//! which runs a store's writer, checkpoints and compactor on the caller's thread so that a fuzz
//! execution starts no thread and one input gives one schedule. Invariant: each function
//! forwards to the very decoder, encoder or engine code the store uses, adding no checks of its
//! own, so what the fuzzer finds here is what a damaged file (or a schedule of the threads)
//! would meet.

use crate::config::Checkpoints;
use crate::config::ConfigBuilder;
use crate::format::blob;
use crate::format::record::{FIXED_LEN, Hot, Record};
use crate::rules::response::Response;
use crate::store::Store;

/// When a store in step mode runs a checkpoint the writer hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepCheckpoints {
    /// At once, where the writer hands it to the checkpoint thread.
    AtHandOff,
    /// Held until [`run_checkpoint`] runs it, or until the writer must wait for it (the log
    /// is full, a synchronous checkpoint, close), as a slow checkpoint thread would be.
    Held,
}

/// `builder` with step mode on: a store opened with it on a file or device starts no thread.
/// Each call that waits for an answer runs the writer's batches on the caller's thread until
/// its answer is in (a dropped reservation's release waits in the queue for the next such
/// call); checkpoints run as `checkpoints` says; the compactor runs only in
/// [`Store::compact_now`]. What is acknowledged and what survives a power loss are as with the
/// threads; only the schedule is fixed.
pub fn step_mode(builder: ConfigBuilder, checkpoints: StepCheckpoints) -> ConfigBuilder {
    builder.step(match checkpoints {
        StepCheckpoints::AtHandOff => Checkpoints::AtHandOff,
        StepCheckpoints::Held => Checkpoints::Held,
    })
}

/// For a store in step mode with [`StepCheckpoints::Held`]: runs the checkpoint the writer
/// handed over, if one is waiting, as the checkpoint thread would finish it now (the writer
/// collects it at its next batch). Returns whether one ran; false for any other store.
pub fn run_checkpoint(store: &Store) -> bool {
    store.run_held_checkpoint()
}

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
