//! The integration tests, built as one binary. Each module is a scenario; test names carry the
//! contract rule they check (C1-C12, H1-H9, O1-O10, see docs/contract.md).

// Tests state their expectations with unwrap and panic; a failure is the test's verdict.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

mod sim_disk;
mod support;

#[cfg(feature = "http")]
mod adversarial;
mod async_api;
mod basics;
mod conformance;
mod crash;
mod damaged;
mod durability;
mod exactly_once;
mod expiry;
mod files;
mod fixtures;
mod inspect;
mod kill;
mod lease;
mod limits;
mod memory_bound;
// Read through metrics-util's recording recorder; the layer's counts need `http`.
#[cfg(all(feature = "metrics", feature = "http"))]
mod metered;
mod model;
mod outcome_unknown;
mod points;
mod poison;
mod policy;
mod recovery;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_support;
#[cfg(feature = "fuzzing")]
mod step;
mod storm;
#[cfg(all(feature = "tracing", feature = "http"))]
mod traced;
mod wait;
mod wal;

// The HTTP layer (feature `http`).
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "axum")]
mod http_exactly_once;
#[cfg(feature = "http")]
mod http_support;
