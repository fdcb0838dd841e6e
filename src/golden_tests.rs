//! Golden bytes: the on-disk layouts of `docs/format.md`, pinned.
