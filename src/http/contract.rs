//! What the layer promises over HTTP: which requests it guards, how it names and scopes keys,
//! what it fingerprints, its limits, and how it words its answers.
//!
//! Why: one value holds every HTTP-level choice (rules H1-H9), so a service states its
//! idempotency contract in one place and the presets can be compared field by field.
//! Invariant: every `Contract` is usable as it is; the only checks that need the store (its
//! cache policy and response limit) are made by [`IdempotencyLayer::new`](super::IdempotencyLayer::new).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method, StatusCode};

use super::responder::{ErrorAnswer, Errors};
use crate::{CachePolicy, Scope};

/// A function that names the owner of a request's key (rule H7); `None` refuses the request
/// with `401`.
pub type ScopeFn = Arc<dyn Fn(&Parts) -> Option<Scope> + Send + Sync>;

/// Who sent a request, as an authentication layer outside the idempotency layer established
/// it: insert it into the request's extensions and take the scope from it with
/// [`Contract::scope_from_principal`] (rule H14).
///
/// ```
/// use idemstore::Scope;
/// use idemstore::http::Principal;
/// // In an authentication middleware, once the token is verified:
/// let mut request = http::Request::post("/v1/orders").body(())?;
/// request.extensions_mut().insert(Principal(Scope::new("user_42")?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(pub Scope);

/// Where a contract takes its scope from.
#[derive(Clone)]
pub(crate) enum ScopeSource {
    /// The `Authorization` header, digested under this secret, or the store's when `None`.
    Authorization(Option<[u8; 32]>),
    /// The caller's function.
    Custom(ScopeFn),
}

impl ScopeSource {
    /// The function this source names, with `store_secret` for a digest that has none.
    pub(crate) fn resolve(&self, store_secret: &[u8; 32]) -> ScopeFn {
        match self {
            ScopeSource::Authorization(secret) => {
                let secret = secret.unwrap_or(*store_secret);
                Arc::new(move |parts: &Parts| scope_from_authorization(parts, &secret))
            }
            ScopeSource::Custom(f) => Arc::clone(f),
        }
    }
}

/// The body style of the layer's own answers (rule H8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorStyle {
    /// `application/json`: `{"error": {"code": "...", "message": "..."}}` (the default).
    #[default]
    Json,
    /// RFC 9457 `application/problem+json`: `type`, `title`, `status`, `detail`, and the
    /// machine-readable `code` as an extension member.
    Problem,
}

/// What the layer does when the store cannot answer (`Unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Answer `503` with code `idempotency_unavailable` and run nothing (the default): a
    /// retry can never run the operation twice.
    #[default]
    FailClosed,
    /// Run the request without idempotency protection: the service stays up, and a retry
    /// during the outage may run the operation again.
    FailOpen,
}

/// The status of a key reused for a different request (rule H5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConflictStatus {
    /// `409 Conflict` (the default, as in the bookings API).
    #[default]
    Conflict,
    /// `422 Unprocessable Content`, as in the IETF draft.
    UnprocessableContent,
}

impl ConflictStatus {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ConflictStatus::Conflict => StatusCode::CONFLICT,
            ConflictStatus::UnprocessableContent => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// A route pattern: literal segments, `{name}` or `:name` for any one segment, and a final
/// `{*name}` or `*` for any rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

impl Route {
    fn parse(pattern: &str) -> Route {
        Route(
            segments(pattern)
                .map(|s| {
                    if s == "*" || s.starts_with("{*") {
                        Segment::Rest
                    } else if s.starts_with(':') || (s.starts_with('{') && s.ends_with('}')) {
                        Segment::Any
                    } else {
                        Segment::Literal(s.to_owned())
                    }
                })
                .collect(),
        )
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = segments(path);
        for seg in &self.0 {
            match seg {
                Segment::Rest => return true,
                Segment::Any => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The layer's HTTP contract: every setting, with the bookings API's defaults.
///
/// Start from a preset and change what differs:
///
/// ```
/// use idemstore::http::{Contract, ErrorStyle};
/// let contract = Contract::default()
///     .routes(["/v1/bookings", "/v1/bookings/{uid}/cancel"])
///     .fingerprint_query(true)
///     .max_request_body(64 * 1024)
///     .error_style(ErrorStyle::Problem);
/// assert!(contract.guards(&http::Method::POST, "/v1/bookings/bk_1/cancel"));
/// assert!(!contract.guards(&http::Method::GET, "/v1/bookings"));
/// ```
#[derive(Clone)]
pub struct Contract {
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    routes: Vec<Route>,
    pub(crate) key_required: bool,
    pub(crate) scope: ScopeSource,
    pub(crate) fingerprint_query: bool,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) max_request_body: usize,
    pub(crate) max_stored_response: Option<usize>,
    pub(crate) cache_policy: Option<CachePolicy>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) conflict: ConflictStatus,
    pub(crate) errors: Errors,
    pub(crate) replay_header: HeaderName,
    pub(crate) replayed_headers: Vec<HeaderName>,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) wait_in_progress: Duration,
}

/// The response headers stored and replayed by default: those that say what the body is
/// (`Content-Type`, `Content-Encoding`, `Content-Language`, `Content-Disposition`,
/// `Content-Location`), where the result lives (`Location`), its validators (`ETag`,
/// `Last-Modified`) and what it varies by (`Vary`). A replay without `Content-Encoding` would
/// hand out compressed bytes as if they were plain.
pub const REPRESENTATION_HEADERS: [HeaderName; 9] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_LANGUAGE,
    http::header::CONTENT_DISPOSITION,
    http::header::CONTENT_LOCATION,
    http::header::LOCATION,
    http::header::ETAG,
    http::header::LAST_MODIFIED,
    http::header::VARY,
];

/// The default request body limit: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1024 * 1024;

impl Default for Contract {
    /// The bookings API (seed 000): `Idempotency-Key` required on `POST` and `PATCH`, scoped
    /// by the `Authorization` credentials, `409` on conflict, JSON errors, 2xx stored (the
    /// store's policy), `Idempotent-Replay: true` on replays, fail closed.
    fn default() -> Contract {
        Contract {
            header: HeaderName::from_static("idempotency-key"),
            methods: vec![Method::POST, Method::PATCH],
            routes: Vec::new(),
            key_required: true,
            scope: ScopeSource::Authorization(None),
            fingerprint_query: true,
            fingerprint_headers: Vec::new(),
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_stored_response: None,
            cache_policy: None,
            ttl: None,
            lease: None,
            conflict: ConflictStatus::Conflict,
            errors: Errors::default(),
            replay_header: HeaderName::from_static("idempotent-replay"),
            replayed_headers: REPRESENTATION_HEADERS.to_vec(),
            on_store_error: OnStoreError::FailClosed,
            wait_in_progress: Duration::ZERO,
        }
    }
}

/// The fallback scope (rules H7, H14): a digest of the `Authorization` credentials keyed by
/// `secret`, so the same key sent with two credentials names two records, no credential is
/// stored in clear, and one cannot be guessed from a scope an operator tool prints without the
/// secret. The scheme is case-insensitive and the space after it may be any run of spaces and
/// tabs (RFC 9110), so `Bearer t` and `bearer  t` are one scope; the credentials, and a value
/// sent without a scheme (a bare API key), compare byte for byte. `None` (no header, or a
/// blank one) refuses the request.
///
/// A credential is not a principal: a refreshed OAuth token is another scope, so a retry sent
/// after a refresh runs the operation again, and behind a gateway with one service credential
/// every user shares a scope. Take the scope from the authenticated principal
/// ([`Contract::scope_from_principal`]) wherever there is one.
///
/// ```
/// let req = http::Request::post("/").header("authorization", "Bearer t1").body(())?;
/// let (parts, _) = req.into_parts();
/// let secret = [7u8; 32];
/// let scope = idemstore::http::scope_from_authorization(&parts, &secret).unwrap();
/// assert!(scope.as_str().starts_with("auth:"));
/// let req = http::Request::post("/").header("authorization", "BEARER\tt1").body(())?;
/// let (parts, _) = req.into_parts();
/// assert_eq!(idemstore::http::scope_from_authorization(&parts, &secret), Some(scope));
/// # Ok::<(), http::Error>(())
/// ```
pub fn scope_from_authorization(parts: &Parts, secret: &[u8; 32]) -> Option<Scope> {
    let value = parts.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    let mut hasher = blake3::Hasher::new_keyed(secret);
    match value.iter().position(|&b| b == b' ' || b == b'\t') {
        // `scheme credentials`: the scheme in any case, the credentials as sent.
        Some(split) => {
            let (scheme, credentials) = value.split_at(split);
            hasher.update(&scheme.to_ascii_lowercase());
            hasher.update(b" ");
            hasher.update(credentials.trim_ascii_start());
        }
        // A bare value (an API key sent alone): compared as sent, case included.
        None => {
            hasher.update(value);
        }
    }
    let hex: String = hasher.finalize().as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Scope::new(format!("auth:{hex}")).ok()
}

impl Contract {
    /// The IETF draft (`draft-ietf-httpapi-idempotency-key-header`): the bookings defaults,
    /// but a key reused for another request gets `422`, and every error is RFC 9457
    /// `application/problem+json`.
    pub fn ietf() -> Contract {
        Contract::default()
            .conflict_status(ConflictStatus::UnprocessableContent)
            .error_style(ErrorStyle::Problem)
    }

    /// Stripe's behaviour: the key is optional (a request without one runs unguarded), every
    /// result is stored and replayed, 5xx included ([`CachePolicy::All`]: the transient `408`,
    /// `429` and `503` are not stored), and replays carry `Idempotent-Replayed: true`. It works
    /// on a store opened with any cache policy: the layer stores under the contract's.
    pub fn stripe_like() -> Contract {
        Contract::default()
            .key_required(false)
            .cache_policy(CachePolicy::All)
            .replay_header(HeaderName::from_static("idempotent-replayed"))
    }

    /// The request header that carries the key (default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The methods guarded (rule H1; default `POST`, `PATCH`). Other methods pass through
    /// untouched, whatever headers they carry.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Guards only these route patterns (default: every path). A pattern is a path whose
    /// segments are literals, `{name}` or `:name` (any one segment), or a final `{*name}` or
    /// `*` (any rest): `/v1/bookings/{uid}/cancel`.
    pub fn routes<I, P>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.routes = patterns
            .into_iter()
            .map(|p| Route::parse(p.as_ref()))
            .collect();
        self
    }

    /// Whether a request without the header is refused with `400 missing_idempotency_key`
    /// (`true`, the default) or passed through unguarded (`false`) (rule H2).
    pub fn key_required(mut self, required: bool) -> Self {
        self.key_required = required;
        self
    }

    /// How the scope is taken from the request (rule H7; default: the `Authorization`
    /// credentials, [`scope_from_authorization`] keyed by the store's secret). Returning `None`
    /// refuses the request with `401 unauthenticated`.
    ///
    /// ```
    /// use idemstore::{Scope, http::Contract};
    /// // An authentication layer outside this one put the account in the extensions.
    /// #[derive(Clone)]
    /// struct Account(Scope);
    /// let contract = Contract::default()
    ///     .scope(|parts| parts.extensions.get::<Account>().map(|a| a.0.clone()));
    /// ```
    pub fn scope(mut self, f: impl Fn(&Parts) -> Option<Scope> + Send + Sync + 'static) -> Self {
        self.scope = ScopeSource::Custom(Arc::new(f));
        self
    }

    /// Takes the scope from the [`Principal`] an authentication layer put in the request's
    /// extensions (rule H14); a request without one is refused with `401`. The layer must sit
    /// inside the authentication layer (added before it in axum's `Router::layer` order).
    /// This is the scope to choose wherever requests are authenticated: it survives a token
    /// refresh, and it tells apart users behind one gateway credential.
    pub fn scope_from_principal(self) -> Self {
        self.scope(|parts| parts.extensions.get::<Principal>().map(|p| p.0.clone()))
    }

    /// Gives every request the same scope: for a service without authentication, where keys
    /// are global (rule H14). Keys from different clients then share one namespace, so they
    /// must be unguessable (UUID v4), and the store's cap on one scope's live records
    /// ([`max_records_per_scope`](crate::ConfigBuilder::max_records_per_scope), C13) caps the
    /// whole service: set it from the service's write rate times the TTL.
    pub fn constant_scope(self, scope: Scope) -> Self {
        self.scope(move |_| Some(scope.clone()))
    }

    /// Keys the `Authorization` digest with a secret of the deployment instead of the store's
    /// own (rule H14): for stores that several services share, so that they agree on scopes.
    /// The secret is hashed into the key, so any length works; keep it out of source control.
    pub fn authorization_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let key = blake3::derive_key("idemstore 2026 authorization scope", secret.as_ref());
        self.scope = ScopeSource::Authorization(Some(key));
        self
    }

    /// Whether the query string is part of the fingerprint (default `true`). Turn it off only
    /// if no handler reads the query on a guarded route: otherwise `POST /transfer?to=mallory`
    /// with the key of `POST /transfer?to=alice` would replay alice's answer.
    pub fn fingerprint_query(mut self, on: bool) -> Self {
        self.fingerprint_query = on;
        self
    }

    /// Adds a request header to the fingerprint: all its values, whose order does not count.
    pub fn fingerprint_header(mut self, name: HeaderName) -> Self {
        self.fingerprint_headers.push(name);
        self
    }

    /// The largest request body of a guarded request, in bytes (rule H9; default 1 MiB). A
    /// larger one gets `413 request_too_large` before any reservation is made.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// The largest response kept for replay, as the store counts it (status, headers and
    /// body; default: the store's `max_response_bytes`, which is also the upper bound).
    ///
    /// A larger response is still sent whole to the client that ran the operation, and the
    /// key is completed with the same status and headers but a short JSON body saying that
    /// the original was too large to keep: a retry is told what happened and never runs the
    /// operation again (under a limit too small for the note, the status alone is kept).
    /// [`IdempotencyLayer::new`](super::IdempotencyLayer::new) refuses a limit below 64 bytes.
    pub fn max_stored_response(mut self, bytes: usize) -> Self {
        self.max_stored_response = Some(bytes);
        self
    }

    /// Which statuses are stored (rule C7; default: the store's own policy). A status not
    /// kept releases the key, so the next attempt runs again. It applies to this layer's
    /// completions whatever the store's own policy.
    pub fn cache_policy(mut self, policy: CachePolicy) -> Self {
        self.cache_policy = Some(policy);
        self
    }

    /// How long a completed request's response is replayed on this contract's routes, instead
    /// of the store's time to live (rule H21): a payments route may keep its keys for a week
    /// while a search route keeps them for an hour, on one store. Between 1 s and 366 days,
    /// checked by [`IdempotencyLayer::new`](super::IdempotencyLayer::new).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long a request on this contract's routes holds its key before a retry may take it
    /// over, instead of the store's lease (rule H21): a slow route needs a longer one. Between
    /// 10 ms and 24 h, checked by [`IdempotencyLayer::new`](super::IdempotencyLayer::new). The
    /// layer renews it while the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The status of a key reused for a different request (rule H5; default `409`).
    pub fn conflict_status(mut self, status: ConflictStatus) -> Self {
        self.conflict = status;
        self
    }

    /// The body style of the layer's own answers (rule H8; default JSON).
    pub fn error_style(mut self, style: ErrorStyle) -> Self {
        self.errors.style = style;
        self
    }

    /// Shapes the layer's own error answers with `responder` instead of the error style (rule
    /// H20): it gets each error's status, stable [`code`](super::code) and message, and
    /// returns the response to send, so the layer's refusals carry the application's own
    /// envelope. The layer still adds `Retry-After` to an in-progress answer and tags every
    /// answer with its [`Outcome`](super::Outcome) by code. It must not panic, and it runs on
    /// the request's task, so it must not block.
    ///
    /// ```
    /// use idemstore::http::{Contract, ErrorAnswer, code};
    ///
    /// let contract = Contract::default().error_responder(|e: &ErrorAnswer<'_>| {
    ///     let retryable = e.code() == code::IN_PROGRESS;
    ///     let body = format!(
    ///         r#"{{"errors":[{{"code":"{}","retryable":{retryable}}}]}}"#,
    ///         e.code()
    ///     );
    ///     http::Response::builder()
    ///         .status(e.status())
    ///         .header("content-type", "application/vnd.api+json")
    ///         .body(bytes::Bytes::from(body))
    ///         .unwrap_or_default()
    /// });
    /// # let _ = contract;
    /// ```
    pub fn error_responder<F>(mut self, responder: F) -> Self
    where
        F: Fn(&ErrorAnswer<'_>) -> http::Response<bytes::Bytes> + Send + Sync + 'static,
    {
        self.errors.responder = Some(Arc::new(responder));
        self
    }

    /// The header set to `true` on replays (rule H4; default `Idempotent-Replay`).
    pub fn replay_header(mut self, name: HeaderName) -> Self {
        self.replay_header = name;
        self
    }

    /// Adds a response header to those stored and replayed (default:
    /// [`REPRESENTATION_HEADERS`]).
    pub fn replay_response_header(mut self, name: HeaderName) -> Self {
        if !self.replayed_headers.contains(&name) {
            self.replayed_headers.push(name);
        }
        self
    }

    /// How long a retry that arrives while the first attempt runs waits for that attempt's
    /// outcome before it is answered `409` in progress (rule H17; default zero: at once). The
    /// wait is woken by the first attempt's completion itself
    /// ([`Store::begin_waiting_async`](crate::Store::begin_waiting_async)): the retry is then
    /// answered with the replay, or, if the first attempt was released, runs the operation.
    /// Keep it well below the store's lease and the client's own timeout.
    pub fn wait_in_progress(mut self, within: Duration) -> Self {
        self.wait_in_progress = within;
        self
    }

    /// What to do when the store cannot answer (default [`OnStoreError::FailClosed`]).
    pub fn on_store_error(mut self, choice: OnStoreError) -> Self {
        self.on_store_error = choice;
        self
    }

    /// Whether a request with this method and path is guarded (rule H1). Methods compare
    /// ASCII case-insensitively: a `post` that a server routes as `POST` is guarded as one.
    pub fn guards(&self, method: &Method, path: &str) -> bool {
        self.methods
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str()))
            && (self.routes.is_empty() || self.routes.iter().any(|r| r.matches(path)))
    }
}

impl fmt::Debug for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contract")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .field("routes", &self.routes)
            .field("key_required", &self.key_required)
            .field("fingerprint_query", &self.fingerprint_query)
            .field("fingerprint_headers", &self.fingerprint_headers)
            .field("max_request_body", &self.max_request_body)
            .field("max_stored_response", &self.max_stored_response)
            .field("cache_policy", &self.cache_policy)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("conflict", &self.conflict)
            .field("errors", &self.errors)
            .field("replay_header", &self.replay_header)
            .field("replayed_headers", &self.replayed_headers)
            .field("on_store_error", &self.on_store_error)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h1_route_patterns() {
        let r = Route::parse("/v1/bookings/{uid}/cancel");
        assert!(r.matches("/v1/bookings/bk_1/cancel"));
        assert!(r.matches("/v1/bookings/bk_1/cancel/"));
        assert!(!r.matches("/v1/bookings/bk_1"));
        assert!(!r.matches("/v1/bookings/bk_1/cancel/x"));
        assert!(Route::parse("/v1/:id").matches("/v1/x"));
        assert!(Route::parse("/v1/{*rest}").matches("/v1/a/b/c"));
        assert!(Route::parse("/").matches("/"));
        assert!(!Route::parse("/").matches("/a"));
    }

    #[test]
    fn h1_default_guards_post_and_patch_everywhere() {
        let c = Contract::default();
        assert!(c.guards(&Method::POST, "/anything"));
        assert!(c.guards(&Method::PATCH, "/"));
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE] {
            assert!(!c.guards(&m, "/anything"));
        }
    }
}
