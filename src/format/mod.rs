//! The bytes on disk: the checked byte reader, the record and its expiry entry (which holds
//! the response blob), the tables and their meta keys, the per-scope counts, and the migration
//! from older formats; pinned by golden bytes.
//!
//! Why: a file outlives the build that wrote it, so its layout is a concept of its own,
//! specified byte by byte in `docs/format.md` and tested against frozen bytes. Invariants:
//! every decoder here refuses malformed bytes with an error and never panics (it reads through
//! [`bytes`]); nothing here imports an engine or the store.

pub(crate) mod blob;
pub(crate) mod bytes;
#[cfg(test)]
mod golden_tests;
pub(crate) mod migrate;
pub(crate) mod point;
pub(crate) mod record;
pub(crate) mod scope_count;
pub(crate) mod tables;
