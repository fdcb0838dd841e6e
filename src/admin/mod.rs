//! The operator's tools on a running store (feature `admin`): an admin interface the service
//! serves, and what it and the `idemstore` command line share.
//!
//! Why: one process opens a store file at a time, so while a service runs, the operator
//! commands (`idemstore list`, `release`, `purge`, `export`...) cannot open its file; the
//! service answers them instead, through [`AdminService`], on a listener of its own (`idemstore
//! serve --admin ADDR`, or any service that mounts it). The selection of records
//! ([`ListQuery`]), their JSON ([`record_json`]), bulk purges ([`purge_matching`]), exports
//! and imports ([`import`]) are functions of a store, so that the command line on a file and
//! the interface of a running service give the same answers in the same shapes.
//!
//! Invariants: the admin interface has no authentication of its own and must only be
//! reachable by the operator: bind it to a loopback address or to a Unix socket of mode 0600,
//! never to a public address; every change it makes goes through the store's public
//! operations, so every rule of the contract holds for it (rules O5-O10 in
//! `docs/contract.md`).
//!
//! Serving it with axum, on a loopback listener of its own:
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn run(store: idemstore::Store) -> std::io::Result<()> {
//! // The whole router is the admin interface; `nest_service("/admin", ...)` would put it
//! // under a prefix instead.
//! let admin: axum::Router = axum::Router::new().fallback_service(idemstore::admin::service(store));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! // axum::serve(listener, admin).await?;
//! # let _ = (admin, listener);
//! # Ok(())
//! # }
//! ```

mod bulk;
mod json;
mod query;
mod service;

pub use crate::error::ImportError;
pub use bulk::{
    ImportBatch, ImportReport, PurgeReport, check_json, export_lines, import, import_batch,
    parse_import, purge_matching, stats_json,
};
pub use json::{record_json, rfc3339, state_name, token_text};
pub use query::{ListQuery, Listing, Sort, record_query};
pub use service::{
    ADMIN_HEADER, AdminBody, AdminService, BODY_TIMEOUT, MAX_IMPORT_BYTES, NOT_FOUND, service,
};
