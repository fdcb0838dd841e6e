//! The rules of the contract as values and pure functions: keys and scopes, request
//! fingerprints (with canonical JSON), the response a key replays, and the state machine that
//! decides every operation.
//!
//! Why: every engine must answer alike (C1-C13), so what decides is written once, here, and
//! does no I/O: no file, no thread, no clock of its own (the time is a parameter). Invariant:
//! nothing in this folder imports an engine, the store or the file format.

pub(crate) mod canonical_json;
pub(crate) mod fingerprint;
pub(crate) mod key;
pub(crate) mod machine;
pub(crate) mod point;
pub(crate) mod response;
pub(crate) mod state;
