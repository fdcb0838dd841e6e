//! [`AdminService`]: the admin interface as a tower service, JSON over HTTP.
//!
//! Why: the operator commands must reach a store while its service holds it (one process opens
//! a file at a time), so the service answers them itself, on a listener of its own. Invariants:
//! every answer is JSON (export: JSON Lines) and every error is `{"error": {"code",
//! "message"}}`; a request that changes the store is a `POST`; the store's blocking calls run
//! on tokio's blocking pool when there is a runtime, never on a worker thread; nothing here
//! authenticates anyone, so the service must only be reachable by the operator (a Unix socket
//! of mode 0600, or a loopback address, which every local user can reach). What a browser on
//! the operator's machine could be made to send is refused: every request must carry
//! [`ADMIN_HEADER`] (a page cannot add it without the browser asking first, which is refused),
//! none may carry `Origin`, and a `Host` must name the loopback (a rebound DNS name cannot).
//! Parameters are checked strictly (an unknown one, or a flag that is not `true`/`false`,
//! is a `400`), a bulk purge needs a filter or `all=true`, and one import or export runs at a
//! time, its body read within [`BODY_TIMEOUT`].

use std::convert::Infallible;
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use crate::error::{ImportError, ReleaseError};
use crate::rules::key::Scope;
use crate::sleep::Sleep;
use crate::store::Store;

use super::bulk::{check_json, export_lines, import, purge_matching, stats_json};
use super::json::{record_json, token_text};
use super::query::{ListQuery, decode_pairs};

/// The body of every answer of the admin interface.
pub type AdminBody = Full<Bytes>;

/// The largest import the admin interface takes in one request: 256 MiB.
pub const MAX_IMPORT_BYTES: usize = 256 << 20;

/// The header every request to the admin interface carries, with the value `1`: a web page
/// cannot send it to another origin without a preflight, which the interface refuses, so a
/// browser on the operator's machine cannot be made to purge or export.
pub const ADMIN_HEADER: &str = "x-idemstore-admin";

/// The error code of a `404` the admin interface answers (no such record, no such route): a
/// client tells it from another service's `404`, which says nothing about a record.
pub const NOT_FOUND: &str = "not_found";

/// How long an import's body may take to arrive whole.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// The admin interface of a store, as a tower service of `http::Request`s: mount it on a
/// listener of its own, bound to a loopback address or a Unix socket (`axum::Router::
/// nest_service`, or hyper's `TowerToHyperService`). It has **no authentication**: anyone who
/// can reach it can read every stored response and purge any record.
///
/// | Request | Answer |
/// |---|---|
/// | `GET /v1/stats` | the record counts and the store's counters ([`stats_json`](super::stats_json)) |
/// | `GET /v1/check` | what [`Store::check`] found ([`check_json`](super::check_json)) |
/// | `GET /v1/records?scope&state&older_than_ms&sort&limit` | `{"records": [...], "truncated": bool}` ([`ListQuery`], [`record_json`](super::record_json)) |
/// | `GET /v1/record?scope&key` | one record, or `404 not_found` |
/// | `GET /v1/export` | every live record, JSON Lines (`application/x-ndjson`) |
/// | `POST /v1/purge?scope&key` | `{"purged": bool}` |
/// | `POST /v1/purge-matching?scope&state&older_than_ms&sort&limit&dry_run=true` | what it purged or would ([`PurgeReport`](super::PurgeReport)) |
/// | `POST /v1/release?scope&key[&not_applied=true]` | `{"released": true, "token", "token_readable"}`, or `409 release_refused` ([`Store::release_held`], [`Store::release_unknown`]) |
/// | `POST /v1/compact` | `{"removed": n}` |
/// | `POST /v1/import` with an export as the body | what it did ([`ImportReport`](super::ImportReport)) |
///
/// Errors: `400 bad_request` (a bad parameter), `404 not_found`, `405 method_not_allowed`,
/// `409 release_refused`, `413 too_large`, `503 unavailable` (the store cannot serve).
///
/// ```
/// use http::Request;
/// use http_body_util::{BodyExt, Empty};
/// use idemstore::{Config, Store, admin::AdminService};
/// use tower::ServiceExt;
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let admin = AdminService::new(Store::in_memory(Config::default())?);
/// let req = Request::get("/v1/records?limit=10")
///     .header(idemstore::admin::ADMIN_HEADER, "1")
///     .body(Empty::<bytes::Bytes>::new())?;
/// let answer = admin.oneshot(req).await?;
/// let body: serde_json::Value = serde_json::from_slice(&answer.into_body().collect().await?.to_bytes())?;
/// assert_eq!(body, serde_json::json!({"records": [], "truncated": false}));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdminService {
    store: Store,
    /// Held by the import or export running now: one at a time, since each holds every record
    /// in memory.
    heavy: Arc<AtomicBool>,
}

impl AdminService {
    /// The admin interface of `store`.
    pub fn new(store: Store) -> AdminService {
        AdminService {
            store,
            heavy: Arc::default(),
        }
    }
}

/// [`AdminService::new`].
pub fn service(store: Store) -> AdminService {
    AdminService::new(store)
}

impl<B> tower_service::Service<Request<B>> for AdminService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<AdminBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let store = self.store.clone();
        let heavy = Arc::clone(&self.heavy);
        Box::pin(async move { Ok(answer(store, heavy, req).await) })
    }
}

/// What went wrong, as an answer.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn failure(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        message: message.into(),
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    failure(StatusCode::BAD_REQUEST, "bad_request", message)
}

impl From<crate::error::Unavailable> for Failure {
    fn from(e: crate::error::Unavailable) -> Failure {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

/// A successful answer: its content type and body.
struct Done {
    content_type: &'static str,
    body: Vec<u8>,
}

fn json_answer(v: &Value) -> Done {
    Done {
        content_type: "application/json",
        body: v.to_string().into_bytes(),
    }
}

async fn answer<B>(store: Store, heavy: Arc<AtomicBool>, req: Request<B>) -> Response<AdminBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = req.into_parts();
    if let Err(refused) = from_the_operator(&parts.headers) {
        return respond(Err(refused));
    }
    let path = parts.uri.path();
    let _heavy = if matches!(path, "/v1/import" | "/v1/export") {
        match Heavy::take(&heavy) {
            Some(held) => Some(held),
            None => {
                return respond(Err(failure(
                    StatusCode::TOO_MANY_REQUESTS,
                    "busy",
                    "an import or export is running; one at a time",
                )));
            }
        }
    } else {
        None
    };
    let body = if parts.method == Method::POST && path == "/v1/import" {
        let reading = Limited::new(body, MAX_IMPORT_BYTES).collect();
        match within(BODY_TIMEOUT, reading).await {
            Some(Ok(collected)) => collected.to_bytes(),
            Some(Err(e)) => {
                return respond(Err(failure(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "the import could not be read whole (at most {MAX_IMPORT_BYTES} bytes): {e}"
                    ),
                )));
            }
            None => {
                return respond(Err(failure(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the import did not arrive whole within {BODY_TIMEOUT:?}"),
                )));
            }
        }
    } else {
        Bytes::new()
    };
    let method = parts.method;
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let work = move || route(&store, &method, &path, &query, body);
    let result = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the request's task failed: {e}"),
            ))
        }),
        Err(_) => work(),
    };
    respond(result)
}

/// Refuses what a browser on the operator's machine could be made to send: a request without
/// [`ADMIN_HEADER`], with an `Origin`, or with a `Host` that does not name the loopback (a
/// DNS name rebound to 127.0.0.1).
fn from_the_operator(headers: &http::HeaderMap) -> Result<(), Failure> {
    let forbidden = |message: &str| failure(StatusCode::FORBIDDEN, "forbidden", message);
    if headers.get(ADMIN_HEADER).map(|v| v.as_bytes()) != Some(b"1") {
        return Err(forbidden(
            "an admin request carries the header x-idemstore-admin: 1",
        ));
    }
    if headers.contains_key(header::ORIGIN) {
        return Err(forbidden("a request from a web page (Origin) is refused"));
    }
    match headers.get(header::HOST).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(host)) if loopback_host(host) => Ok(()),
        Some(_) => Err(forbidden("the Host of an admin request names the loopback")),
    }
}

/// Whether `host` (a `Host` header: a name or address, with or without a port) is
/// `localhost`, an address in 127.0.0.0/8, or `[::1]`.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The right to run the one import or export allowed at a time, given back on drop.
struct Heavy(Arc<AtomicBool>);

impl Heavy {
    fn take(flag: &Arc<AtomicBool>) -> Option<Heavy> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Heavy(Arc::clone(flag)))
    }
}

impl Drop for Heavy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `work`'s output, unless `limit` passes first (on the crate's own timer: any runtime).
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    let (mut work, mut timer) = (std::pin::pin!(work), std::pin::pin!(Sleep::new(limit)));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

fn respond(result: Result<Done, Failure>) -> Response<AdminBody> {
    let (status, content_type, body) = match result {
        Ok(done) => (StatusCode::OK, done.content_type, done.body),
        Err(f) => (
            f.status,
            "application/json",
            json!({"error": {"code": f.code, "message": f.message}})
                .to_string()
                .into_bytes(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// One request, on a thread that may block.
fn route(
    store: &Store,
    method: &Method,
    path: &str,
    query: &str,
    body: Bytes,
) -> Result<Done, Failure> {
    let wanted = match path {
        "/v1/stats" | "/v1/check" | "/v1/records" | "/v1/record" | "/v1/export" => Method::GET,
        "/v1/purge" | "/v1/purge-matching" | "/v1/release" | "/v1/compact" | "/v1/import" => {
            Method::POST
        }
        _ => {
            return Err(failure(
                StatusCode::NOT_FOUND,
                NOT_FOUND,
                format!("no admin route {path}"),
            ));
        }
    };
    if *method != wanted {
        return Err(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes {wanted}, not {method}"),
        ));
    }
    let now = store.config().clock.now_millis();
    let pairs = decode_pairs(query).map_err(bad_request)?;
    const LIST: &[&str] = &["scope", "state", "older_than_ms", "sort", "limit"];
    let known: &[&str] = match path {
        "/v1/records" => LIST,
        "/v1/purge-matching" => &[
            "scope",
            "state",
            "older_than_ms",
            "sort",
            "limit",
            "dry_run",
            "all",
        ],
        "/v1/record" | "/v1/purge" => &["scope", "key"],
        "/v1/release" => &["scope", "key", "not_applied"],
        _ => &[],
    };
    if let Some((unknown, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "{path} takes no parameter {unknown:?} (it takes {known:?})"
        )));
    }
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let flag = |name: &str| match param(name) {
        None | Some("0" | "false") => Ok(false),
        Some("" | "1" | "true") => Ok(true),
        Some(other) => Err(bad_request(format!(
            "{name}={other:?}: a flag is true, false, 1 or 0"
        ))),
    };
    let record = || {
        let scope = param("scope").ok_or_else(|| bad_request("scope is missing"))?;
        let key = param("key").ok_or_else(|| bad_request("key is missing"))?;
        let scope = Scope::new(scope).map_err(|e| bad_request(format!("bad scope: {e}")))?;
        let key = store
            .key(key)
            .map_err(|e| bad_request(format!("bad key: {e}")))?;
        Ok::<_, Failure>((scope, key))
    };
    let list = || ListQuery::from_query_string(query).map_err(bad_request);
    match path {
        "/v1/stats" => {
            let report = store.check()?;
            Ok(json_answer(&stats_json(&report, Some(&store.stats()))))
        }
        "/v1/check" => Ok(json_answer(&check_json(&store.check()?))),
        "/v1/records" => {
            let listing = list()?.run(now, |s, st, n| store.records_in_state(s, st, n))?;
            Ok(json_answer(&json!({
                "records": listing.records.iter().map(record_json).collect::<Vec<_>>(),
                "truncated": listing.truncated,
            })))
        }
        "/v1/record" => {
            let (scope, key) = record()?;
            match store.get(&scope, &key)? {
                Some(r) => Ok(json_answer(&record_json(&r))),
                None => Err(failure(
                    StatusCode::NOT_FOUND,
                    NOT_FOUND,
                    "no live record for this scope and key",
                )),
            }
        }
        "/v1/export" => {
            let records = store.records(None, usize::MAX)?;
            Ok(Done {
                content_type: "application/x-ndjson",
                body: export_lines(&records).into_bytes(),
            })
        }
        "/v1/purge" => {
            let (scope, key) = record()?;
            Ok(json_answer(&json!({"purged": store.purge(&scope, &key)?})))
        }
        "/v1/purge-matching" => {
            let filtered = ["scope", "state", "older_than_ms"]
                .iter()
                .any(|f| param(f).is_some());
            if !filtered && !flag("all")? {
                return Err(bad_request(
                    "a bulk purge names a filter (scope, state, older_than_ms) or all=true",
                ));
            }
            let report = purge_matching(store, &list()?, flag("dry_run")?)?;
            Ok(json_answer(&report.to_json()))
        }
        "/v1/release" => {
            let (scope, key) = record()?;
            let released = if flag("not_applied")? {
                store.release_unknown(&scope, &key)
            } else {
                store.release_held(&scope, &key)
            };
            match released {
                Ok(token) => Ok(json_answer(&json!({
                    "released": true,
                    "token": token,
                    "token_readable": token_text(token),
                }))),
                Err(ReleaseError::Unavailable(e)) => Err(e.into()),
                Err(ReleaseError::InvalidKey(e)) => Err(bad_request(format!("bad key: {e}"))),
                Err(ReleaseError::NotFound) => Err(failure(
                    StatusCode::NOT_FOUND,
                    NOT_FOUND,
                    "no live record for this scope and key",
                )),
                Err(e) => Err(failure(
                    StatusCode::CONFLICT,
                    "release_refused",
                    e.to_string(),
                )),
            }
        }
        "/v1/compact" => Ok(json_answer(&json!({"removed": store.compact_now()?}))),
        "/v1/import" => match import(store, Cursor::new(body)) {
            Ok(report) => Ok(json_answer(&report.to_json())),
            Err(ImportError::Line { line, reason }) => Err(bad_request(format!(
                "line {line} is not an exported record: {reason}"
            ))),
            Err(e) => Err(failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )),
        },
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            NOT_FOUND,
            format!("no admin route {path}"),
        )),
    }
}
