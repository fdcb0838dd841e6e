//! # idemstore
//!
//! An embedded storage engine that makes write APIs safe to retry. A client that times out
//! retries its request with the same idempotency key; idemstore makes sure the operation runs
//! once, and that every retry gets the first response back, byte for byte, even after the
//! server crashed in between.
//!
//! Records live in a [redb](https://docs.rs/redb) file. A lock-free in-memory hot index answers
//! duplicate checks without a disk read, a group-commit writer thread turns many concurrent
//! operations into one durable transaction, and a background compactor removes expired
//! records. The rules the store keeps are stated in `docs/contract.md` (C1-C12); the design, with
//! its crash analysis, in `docs/design.md`; the file format, byte by byte, in `docs/format.md`.
//! [`Inspector`] reads a store file without writing anything (rules O1-O4), for operators.
//! With the feature `admin`, the module `admin` answers the operator commands for a store
//! that a running service holds (rules O5-O10).
//!
//! ```
//! use idemstore::{Begin, Config, Fingerprint, Key, Response, Scope, Store};
//!
//! let store = Store::in_memory(Config::default())?;
//! let scope = Scope::new("acct_42")?;
//! let key = Key::new("1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4")?;
//! let fp = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), br#"{"a":1}"#);
//!
//! let Begin::Execute(reservation) = store.begin(&scope, &key, &fp)? else { unreachable!() };
//! reservation.complete(Response::new(201, [("content-type", "application/json")], "{}"))?;
//!
//! // The retry, with the body's keys in another order, replays the stored response.
//! let retry = Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), br#"{ "a" : 1.0 }"#);
//! assert!(matches!(store.begin(&scope, &key, &retry)?, Begin::Replay(r) if r.status() == 201));
//! # Ok::<(), idemstore::Error>(())
//! ```

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_support.rs"]
pub mod __fuzz;
#[cfg(feature = "admin")]
pub mod admin;
mod backend;
#[cfg(feature = "client")]
pub mod client;
mod clock;
mod config;
mod engine;
mod error;
mod format;
#[cfg(feature = "http")]
pub mod http;
mod inspect;
pub mod metrics;
mod poison;
mod reply;
mod rules;
mod seeded;
mod sleep;
mod stats;
mod storage;
mod store;
mod trace;
mod view;

pub use backend::{Backend, Claim, Completion};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{CachePolicy, Config, ConfigBuilder, Durability, InFlightAtOpen, Terms};
#[cfg(feature = "redis")]
pub use engine::redis::{RedisClock, RedisOptions};
pub use error::{
    BeginError, CompleteError, CompleteWithError, ConfigError, Error, KeyError, LeaseError,
    OpenError, PointError, PointWithError, ReleaseError, ResolveError, ScopeError,
    TransactionError, Unavailable,
};
pub use inspect::Inspector;
/// The storage engine under the file store, re-exported so that the caller's own tables
/// ([`Store::write`], [`Reservation::complete_with`]) use the very version the store does.
pub use redb;
pub use rules::canonical_json::canonicalize;
pub use rules::fingerprint::{Fingerprint, FingerprintBuilder, is_json_content_type};
pub use rules::key::{Key, Scope};
pub use rules::point::{MAX_POINT_NAME, MAX_POINT_PAYLOAD, RecoveryPoint};
pub use rules::response::Response;
pub use rules::state::State;
pub use stats::Stats;
pub use storage::StorageBackend;
pub use store::{Begin, Reservation, Store};
pub use view::{CheckReport, RecordInfo};

/// The README's Rust programs, compiled (and the self-contained ones run) as doc tests, so
/// that the front page cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
