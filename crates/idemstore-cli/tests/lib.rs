//! The `idemstore` binary's tests, built as one binary: the demo service, the operator
//! subcommands and the caller's side against the demo, each run as a process. Test names carry
//! the contract rule they check (H, O and K rules, see docs/contract.md).
//!
//! The helpers shared with the library's tests (a store's files, the simulated disk, Redis
//! servers, HTTP over loopback) are the library's own `tests/` modules, compiled here too.

// Tests state their expectations with unwrap and panic; a failure is the test's verdict.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

#[path = "../../../tests/files.rs"]
mod files;
#[path = "../../../tests/http_support.rs"]
mod http_support;
#[path = "../../../tests/redis_support.rs"]
mod redis_support;
#[path = "../../../tests/sim_disk.rs"]
mod sim_disk;
#[path = "../../../tests/support.rs"]
mod support;

mod admin;
mod cli;
mod client;
mod client_proxy;
mod serve;
