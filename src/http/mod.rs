//! The tower middleware: HTTP write endpoints that are safe to retry (feature `http`).
//!
//! [`IdempotencyLayer`] wraps any tower [`Service`](tower_service::Service) of
//! `http::Request`s (an axum 0.8 `Router`, a hyper 1 service, a `tower::service_fn`). For each
//! guarded request (by default every `POST` and `PATCH` carrying an `Idempotency-Key`) it asks
//! the [`Store`](crate::Store) what to do, and:
//!
//! | The store says | The client gets | Rule |
//! |---|---|---|
//! | first attempt | the service's response, stored (durably, by default) before it is sent | C2, C10 |
//! | same key, same request, done | the stored status, headers and body, plus `Idempotent-Replay: true`; the service does not run | H4, C3 |
//! | same key, same request, running | `409 idempotency_in_progress`, `Retry-After: 1` | H6, C5 |
//! | same key, different request | `409 idempotency_key_conflict` (or `422`) | H5, C4 |
//! | the store cannot answer | `503 idempotency_unavailable` (or, if chosen, the request runs unguarded) | |
//!
//! and before the store is asked: no key on a guarded request → `400 missing_idempotency_key`
//! (H2); a key that is empty, too long or not visible ASCII → `400 invalid_idempotency_key`
//! (H3; `"abc"` in quotes is the key `abc`); no credentials to scope the key → `401
//! unauthenticated` (H7); a body over the limit → `413 request_too_large` (H9). Errors are
//! `{"error": {"code": "...", "message": "..."}}` (H8), or RFC 9457 problem details.
//!
//! # Using it with axum
//!
//! ```
//! use axum::{Json, Router, routing::post};
//! use idemstore::http::{Contract, IdempotencyLayer};
//! use idemstore::{Config, Store};
//!
//! async fn create_booking(Json(body): Json<serde_json::Value>) -> (http::StatusCode, String) {
//!     (http::StatusCode::CREATED, format!("booked {}", body["start"]))
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("idem.redb");
//! let store = Store::open(&path, Config::default())?;
//! let app: Router = Router::new()
//!     .route("/v1/bookings", post(create_booking))
//!     .layer(IdempotencyLayer::new(store, Contract::default())?);
//! // axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # What a retry sees
//!
//! A runnable round trip with `tower::ServiceExt::oneshot` (no network):
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use idemstore::http::{Contract, IdempotencyLayer};
//! use idemstore::{Config, Store};
//! use tower::{Layer, ServiceExt};
//!
//! # fn main() -> Result<(), idemstore::http::BoxError> {
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let store = Store::in_memory(Config::default())?;
//! let layer = IdempotencyLayer::new(store, Contract::default())?;
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counted = calls.clone();
//! let service = layer.layer(tower::service_fn(move |_req| {
//!     let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
//!     async move {
//!         let body = Full::new(bytes::Bytes::from(format!(r#"{{"booking":{n}}}"#)));
//!         let mut response = Response::new(body);
//!         *response.status_mut() = StatusCode::CREATED;
//!         Ok::<_, Infallible>(response)
//!     }
//! }));
//! let request = |body: &'static str| {
//!     Request::post("/v1/bookings")
//!         .header("authorization", "Bearer t1")
//!         .header("idempotency-key", "k-1")
//!         .header("content-type", "application/json")
//!         .body(Full::new(bytes::Bytes::from(body)))
//! };
//!
//! let first = service.clone().oneshot(request(r#"{"start":"10:00","seats":1}"#)?).await?;
//! assert_eq!(first.status(), StatusCode::CREATED);
//!
//! // The retry: keys reordered, whitespace changed; the service does not run again.
//! let retry = service.clone().oneshot(request(r#"{ "seats": 1, "start": "10:00" }"#)?).await?;
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replay"], "true");
//! assert_eq!(retry.into_body().collect().await?.to_bytes(), r#"{"booking":1}"#);
//!
//! // The same key for another request is a conflict.
//! let other = service.clone().oneshot(request(r#"{"start":"11:00","seats":1}"#)?).await?;
//! assert_eq!(other.status(), StatusCode::CONFLICT);
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
//! # Ok::<(), idemstore::http::BoxError>(())
//! # })
//! # }
//! ```
//!
//! # Choosing a contract
//!
//! [`Contract::default()`] is the bookings API: key required on `POST` and `PATCH`, scope from
//! the `Authorization` credentials, 2xx stored, `409` on conflict, JSON errors.
//! [`Contract::ietf()`] answers a conflict with `422` and every error with
//! `application/problem+json`, as the IETF draft does. [`Contract::stripe_like()`] makes the
//! key optional and stores every result but the transient `408`, `429` and `503`
//! ([`CachePolicy::All`](crate::CachePolicy::All)), marking replays `Idempotent-Replayed: true`.
//! Every setting is a method on [`Contract`]: the header, methods and routes, the scope, what the
//! fingerprint covers, the limits, the cache policy, the conflict status, the error style (or an
//! error responder of the application's, [`Contract::error_responder`]), and what happens when the store is down ([`OnStoreError`]).
//!
//! # Where the layer goes
//!
//! In axum, a layer added later wraps the ones added before it: `.layer(a).layer(b)` runs `b`
//! first. Place the idempotency layer like this:
//!
//! * **Inside authentication**, so the principal is known: add it before the authentication
//!   layer, and take the scope with [`Contract::scope_from_principal`] from the [`Principal`]
//!   that layer inserts. A scope from the raw `Authorization` header changes when an OAuth
//!   token is refreshed, so a retry sent after a refresh runs the operation again, and behind
//!   a gateway with one service credential every user shares one scope: the header is a
//!   fallback for services without a principal. [`Contract::constant_scope`] serves services
//!   without authentication (keys must then be unguessable).
//! * **Outside compression**, so the stored body is the plain one and each replay is
//!   compressed for the client asking. Inside a compression layer it still works: the
//!   response is stored with its `Content-Encoding` and `Vary`, and a retry that does not
//!   accept that coding gets `406 idempotency_replay_not_acceptable` rather than bytes it
//!   cannot read.
//! * **Inside rate limiting**, so a throttled request never reaches the store; a `429`, `408`
//!   or `503` from inside is not stored by any preset (C7), so its retry runs.
//! * **Timeouts**: a timeout outside the layer drops the request's future, which does not stop
//!   a started handler (H11): it finishes on its task and its response waits for the retry. A
//!   timeout inside the layer turns into the handler's error and releases the key, while an
//!   effect the handler already started may still land: prefer bounding the work itself.
//! * **Routers**: over the whole app or inside `Router::nest` alike, with the `axum` feature,
//!   which matches routes and fingerprints on the original path (H12). Without it, a layer
//!   inside `nest` sees `/orders` for `/v1/orders`: put it outside the nest. A layer inside
//!   another idempotency layer passes on the requests the outer one guards (H22), so a
//!   sub-router that brings its own layer under an app-wide one runs each request once, under
//!   the outer layer's contract; for routes of their own terms, put layers side by side.
//!
//! # What it guarantees, and what it does not
//!
//! * **One execution per key** (C1): of concurrent identical requests, one runs; the others get
//!   `409 idempotency_in_progress` until it is done, then the replay.
//! * **Release on failure** (C6): if the service returns an error, panics, produces a status
//!   the cache policy does not keep, or its response body fails or panics, the key is
//!   released and the next attempt runs.
//! * **A started call is never orphaned** (H11): a server drops a request's future when its
//!   client disconnects, but an effect the handler started still lands. Once the inner
//!   service has been called, the rest of the call (the handler, then storing its response)
//!   runs on a spawned task: the current tokio runtime with the `tokio` feature, or the
//!   executor given to [`IdempotencyLayer::spawn_with`]. The client's retry then replays the
//!   stored response. With nowhere to spawn ([`IdempotencyLayer::run_inline`], or no runtime),
//!   a call dropped halfway leaves its key in flight until the store's lease ends, so a retry
//!   gets `409 idempotency_in_progress` rather than a second execution. A call whose client is
//!   gone is given until its lease ends (the store's `lease`, 60 s by default) and then
//!   dropped, its key left in flight: a handler or a response body that never ends does not
//!   hold a task forever. A handler that panics has its key released (C6), and on a spawned
//!   task is answered `500 idempotency_handler_failed`. Before
//!   [`Store::close`](crate::Store::close), await [`IdempotencyLayer::idle`] so such calls can
//!   finish.
//! * **Durable before sent**: in the store's default durability mode the response is on disk
//!   before the client sees it, so a crash after a response never lets a retry run again.
//! * **Responses too large to keep**: a response whose encoded size (status, replayed headers,
//!   body) is over [`Contract::max_stored_response`] is sent whole to its client, and the key is
//!   completed with the same status and replayed headers and a short body (in the error style,
//!   code `idempotent_response_too_large`, with the content type of that style) saying that the
//!   operation ran and its body was too large to keep. A retry sees that note, never a second
//!   execution.
//! * **Stored headers**: `Content-Type`, `Location` and `ETag` (add more with
//!   [`Contract::replay_response_header`]). Trailers are neither stored nor forwarded on
//!   guarded responses.
//! * **The runtime is never blocked**: the layer uses the store's async calls, which are woken
//!   by the store's writer thread; it works on any executor.
//! * **Costs**: unguarded requests and early refusals are variants of [`ResponseFuture`] and
//!   allocate nothing extra; a guarded request boxes one future and holds its request body and
//!   (up to the stored limit) its response body in memory.
//! * **After a crash**: the keys in flight when the process died are released when the store
//!   opens again ([`release_in_flight_on_open`](crate::ConfigBuilder::release_in_flight_on_open),
//!   on by default, since one process holds a store file), so a retry runs at once instead
//!   of getting `409` for up to a lease. A handler whose effect landed before the crash but
//!   whose response was not stored runs again on that retry: keep such effects in the store's
//!   own file and commit them with the response
//!   ([`IdempotencyContext::complete_with`], `docs/exactly-once.md`), or keep them idempotent
//!   downstream (the context's key and fingerprint can tie them to the request).
//! * **Long handlers**: the layer renews a running handler's lease every third of a lease,
//!   until its response body has been read and stored, so a retry meanwhile gets `409` in
//!   progress instead of taking the key over (C8).
//! * **Not covered**: idempotency is not concurrency control: use `ETag`/`If-Match` for
//!   concurrent edits (the `idemstore serve` demo shows both).

mod answer;
mod body;
mod context;
mod contract;
mod future;
mod guarded;
mod layer;
mod outcome;
mod request;
mod responder;
mod run;
mod service;

pub use answer::code;
pub use body::{BoxError, RequestBody, ResponseBody};
pub use context::IdempotencyContext;
pub use contract::{
    ConflictStatus, Contract, DEFAULT_MAX_REQUEST_BODY, ErrorStyle, OnStoreError, Principal,
    REPRESENTATION_HEADERS, ScopeFn, scope_from_authorization,
};
pub use future::ResponseFuture;
pub use layer::{ContractError, IdempotencyLayer};
pub use outcome::Outcome;
pub use responder::ErrorAnswer;
pub use run::{Idle, SpawnFn, Task};
pub use service::Idempotency;
