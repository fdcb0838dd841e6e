//! `idemstore serve`: the bookings API of the README, guarded by the idempotency layer.
//!
//! Why: it shows the layer in a real service (authentication outside it, the scope taken from
//! the authenticated account, `ETag`/`If-Match` beside `Idempotency-Key`) and it is what the
//! end-to-end tests and the benchmark run. Invariants: nothing blocks the runtime (bookings are
//! read and written on the blocking pool, the store is used through its async calls); every
//! error body is the contract's JSON shape; on SIGINT or SIGTERM the server stops taking
//! connections, lets the requests in hand finish for at most the grace period, and closes the
//! store (making it durable). The connections themselves (accept loop, limits, timeouts, the
//! grace period) are `server`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use idemstore::http::{
    Contract, DEFAULT_MAX_REQUEST_BODY, IdempotencyContext, IdempotencyLayer, Principal,
};
use idemstore::{
    CompleteWithError, Config, Durability, InFlightAtOpen, PointWithError, Scope, Store,
};
use serde_json::{Value, json};

use crate::bookings::{Booking, BookingError, Bookings, KeyedRequest, NewBooking, file};
use crate::redact::{self, redact};
use crate::{admin_serve, server};

/// How `serve` keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DurabilityArg {
    /// Acknowledge after fsync (the store's default).
    Immediate,
    /// Acknowledge before fsync; fsync within 10 ms.
    Buffered,
    /// Keep everything in memory (for benchmarks): nothing survives the process.
    Memory,
}

/// What opening the store does with the keys a stopped process left in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InFlightArg {
    /// Release them: a retry books afresh, or resumes a create that held its id.
    Release,
    /// Keep them until their leases run out.
    KeepLease,
    /// Mark their outcome unknown, then resolve each before serving: complete it with its
    /// booking if it was made, or release it so that the retry resumes the create.
    MarkUnknown,
}

/// The longest timeout or grace period the flags take, in ms (a day): deadlines are instants
/// computed by adding the setting to the time now, which must not overflow.
const DAY_MS: u64 = 86_400_000;

/// The settings of `idemstore serve`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeArgs {
    /// The store file; the bookings are tables in it, beside the idempotency records.
    #[arg(long, default_value = "idemstore.redb")]
    pub(crate) db: PathBuf,
    /// Keep the idempotency records and the bookings on this Redis server
    /// (`redis://host:port`), or on the Redis Cluster it is a node of, instead of files (`--db`
    /// is then unused), so that several `serve` processes are one service. The server must run with `appendonly yes`, `appendfsync
    /// always` (`everysec` with `--durability buffered`) and `maxmemory-policy noeviction`.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// With `--redis`: do not read the server's settings (for managed services that hide
    /// `CONFIG`); the operator vouches that it never evicts keys and persists every write.
    #[arg(long, requires = "redis")]
    pub(crate) trust_server_settings: bool,
    /// The address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) addr: SocketAddr,
    /// Hold each guarded handler this long, so in-progress answers can be seen.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) handler_delay_ms: u64,
    /// When writes are acknowledged.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Immediate)]
    pub(crate) durability: DurabilityArg,
    /// Serve without the idempotency layer (to measure what it costs).
    #[arg(long)]
    pub(crate) without_idempotency: bool,
    /// How long a completed idempotency key (and the booking it made) is remembered, in
    /// seconds (1 to 31,622,400).
    #[arg(long, default_value_t = 86_400, value_name = "N")]
    pub(crate) ttl_secs: u64,
    /// How long a request header may take to arrive, in ms (also how long an idle keep-alive
    /// connection stays open); 1 to 86,400,000.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=DAY_MS))]
    pub(crate) header_timeout_ms: u64,
    /// How long a request body may take to arrive, in ms, counted from the end of its header
    /// (`408 request_timeout` after that); 1 to 86,400,000.
    #[arg(long, default_value_t = 30_000, value_name = "N")]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=DAY_MS))]
    pub(crate) body_timeout_ms: u64,
    /// How many connections may be open at once; more wait, unaccepted, until one closes.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections: u32,
    /// On SIGINT or SIGTERM, how long the requests in hand may take to finish, in ms; the
    /// connections still open then are dropped; 0 to 86,400,000.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    #[arg(value_parser = clap::value_parser!(u64).range(0..=DAY_MS))]
    pub(crate) shutdown_grace_ms: u64,
    /// Serve the store's admin interface (for `idemstore list --admin ADDR` and the other
    /// operator commands) on this address: a loopback `IP:PORT` (port 0 picks a free port;
    /// the address is printed) or `unix:PATH` (a socket of mode 0600). It has no
    /// authentication: any other address is refused. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<String>,
    /// What opening the store's file does with the creates a stopped process left in flight.
    #[arg(long, value_enum, default_value_t = InFlightArg::Release)]
    pub(crate) in_flight_at_open: InFlightArg,
}

#[derive(Clone)]
struct AppState {
    bookings: Bookings,
    delay: Duration,
    /// The store's time to live: how long a create stays tied to its idempotency key.
    ttl: Duration,
}

/// Runs the server until SIGINT or SIGTERM.
pub(crate) fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let durability = match args.durability {
        DurabilityArg::Immediate => Durability::Immediate,
        DurabilityArg::Buffered => Durability::Buffered {
            max_delay: Duration::from_millis(10),
        },
        DurabilityArg::Memory => Durability::Memory,
    };
    // Installed before the store opens: a store registers its metric handles at open.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    // One process owns the file, so whatever it finds in flight at open was cut short.
    let config = Config::builder()
        .name("bookings")
        .in_flight_at_open(match args.in_flight_at_open {
            InFlightArg::Release => InFlightAtOpen::Release,
            InFlightArg::KeepLease => InFlightAtOpen::KeepLease,
            InFlightArg::MarkUnknown => InFlightAtOpen::MarkUnknown,
        })
        .durability(durability)
        .ttl(Duration::from_secs(args.ttl_secs))
        .build()
        .map_err(|e| format!("bad setting: {e}"))?;
    let (store, bookings) = match (&args.redis, args.durability) {
        (Some(_), DurabilityArg::Memory) => {
            return Err(
                "--durability memory keeps nothing; with --redis the server keeps it".into(),
            );
        }
        (Some(url), _) => {
            let mut options = idemstore::RedisOptions::new(url.as_str());
            if args.trust_server_settings {
                options = options.trust_server_settings();
            }
            // The URL may hold a password: printed only without it, also where an error
            // quotes it.
            let store = Store::open_redis_with(options, config).map_err(|e| {
                format!(
                    "cannot open the store on {}: {}",
                    redact(url),
                    redact::scrub(&e.to_string(), url)
                )
            })?;
            let bookings = Bookings::on_redis(url, "idem:").map_err(|e| {
                format!(
                    "cannot keep bookings on {}: {}",
                    redact(url),
                    redact::scrub(&format!("{e:?}"), url)
                )
            })?;
            (store, bookings)
        }
        (None, DurabilityArg::Memory) => (
            Store::in_memory(config)?,
            Bookings::in_memory().map_err(|e| format!("bookings: {e:?}"))?,
        ),
        (None, _) => {
            let store = Store::open(&args.db, config)
                .map_err(|e| format!("cannot open {}: {e}", args.db.display()))?;
            // The bookings are tables in the store's own file: a create commits with its
            // stored response.
            let bookings = Bookings::in_store(&store)
                .map_err(|e| format!("cannot keep bookings in {}: {e:?}", args.db.display()))?;
            resolve_unknown(&store, &bookings)?;
            (store, bookings)
        }
    };
    let ttl = store.config().ttl();
    let (app, layer) = app(
        store.clone(),
        bookings,
        Duration::from_millis(args.handler_delay_ms),
        ttl,
        !args.without_idempotency,
    )?;
    let app = app.merge(metrics_route(store.clone(), metrics));
    let shutdown = shutdown_signal()?;
    // Bound first, so that an address refused stops the service before it serves anything.
    let admin_listener = match &args.admin {
        Some(addr) => Some(admin_serve::bind(addr).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    println!("idemstore serve: listening on http://{addr}");
    tracing::info!(
        %addr,
        db = %args.db.display(),
        redis = ?args.redis.as_deref().map(redact),
        durability = ?args.durability,
        idempotency = !args.without_idempotency,
        "serving the bookings API"
    );
    let limits = server::Limits {
        header_timeout: Duration::from_millis(args.header_timeout_ms),
        body_timeout: Duration::from_millis(args.body_timeout_ms),
        max_connections: args.max_connections as usize,
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
    };
    let grace = limits.shutdown_grace;
    let (stop_admin, admin_stopping) = tokio::sync::watch::channel(false);
    let admin = match admin_listener {
        Some((listener, bound)) => {
            println!("idemstore serve: admin interface on {bound}");
            tracing::info!(admin = %bound, "serving the admin interface");
            Some(tokio::spawn(admin_serve::run(
                listener,
                store.clone(),
                admin_stopping,
            )))
        }
        None => None,
    };
    server::run(listener, app, limits, shutdown).await;
    // The operator's interface stops with the service, before the store closes.
    let _ = stop_admin.send(true);
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(layer) = layer {
        // A grace of their own: connections dropped at the end of theirs leave their started
        // handlers running (rule H11), which need the time to store their responses.
        let grace_ends = tokio::time::Instant::now() + grace;
        wait_for_detached_calls(&layer, grace_ends).await;
    }
    tracing::info!("shutting down: closing the store");
    store.close()?;
    Ok(())
}

/// Waits, until `grace_ends` at the latest, for the idempotency layer's guarded calls that
/// outlived their connections (rule H11: a started handler runs to completion on its own
/// task), so that their responses are stored before the store closes. A call still running at
/// the deadline keeps its key in flight, and the next open releases it.
async fn wait_for_detached_calls(layer: &IdempotencyLayer, grace_ends: tokio::time::Instant) {
    let running = layer.running();
    if running == 0 {
        return;
    }
    tracing::info!(running, "waiting for guarded handlers to finish");
    if tokio::time::timeout_at(grace_ends, layer.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            running = layer.running(),
            "guarded handlers still running at the end of the grace period"
        );
    }
}

/// Installs the SIGINT and SIGTERM handlers now, so that a signal sent as soon as the address
/// is printed is not lost to the default action (which kills the process without closing the
/// store), and returns a future that completes on the first of them.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The bookings API: authentication, then (optionally) the idempotency layer, then the
/// routes; and the layer, whose running calls shutdown waits for.
fn app(
    store: Store,
    bookings: Bookings,
    delay: Duration,
    ttl: Duration,
    idempotency: bool,
) -> Result<(Router, Option<IdempotencyLayer>), Box<dyn std::error::Error>> {
    let state = AppState {
        bookings,
        delay,
        ttl,
    };
    let routes = Router::new()
        .route("/v1/bookings", post(create).get(list))
        .route("/v1/bookings/{uid}", get(show).patch(patch))
        .route("/v1/bookings/{uid}/cancel", post(cancel))
        .route("/v1/bookings/{uid}/reschedule", post(reschedule));
    let (routes, layer) = if idempotency {
        // The scope is the account `authenticate` put in the extensions (rule H14).
        let layer = IdempotencyLayer::new(store, Contract::default().scope_from_principal())?;
        (routes.layer(layer.clone()), Some(layer))
    } else {
        (routes, None)
    };
    let app = routes
        .fallback(not_found)
        .layer(middleware::from_fn(authenticate))
        .with_state(state);
    Ok((app, layer))
}

/// `GET /metrics`: the store's and the layer's metrics in the Prometheus text format, its
/// gauges published at each scrape. Outside authentication and the idempotency layer, as a
/// scraper expects.
fn metrics_route(store: Store, handle: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || async move {
            idemstore::metrics::publish(&store);
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }),
    )
}

/// An error answer in the contract's shape (rule H8).
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`, on an answer worth sending again.
    retry_after: Option<u32>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

/// Every request needs `Authorization: Bearer <token>`; the account is named after the token.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer <token>",
        )
        .into_response();
    };
    let hex = account_id(token);
    match Scope::new(format!("acct_{hex}")) {
        Ok(scope) => {
            req.extensions_mut().insert(Principal(scope));
            next.run(req).await
        }
        Err(e) => error(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()).into_response(),
    }
}

/// Milliseconds since the Unix epoch, the store's time base.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110, 11.1), and any run of spaces and tabs may separate it from the token; the
/// token is one non-empty word (RFC 6750's `b64token` holds no whitespace).
fn bearer_token(value: &str) -> Option<&str> {
    const WS: [char; 2] = [' ', '\t'];
    let (scheme, rest) = value.split_once(WS)?;
    let token = rest.trim_matches(WS);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(WS))
        .then_some(token)
}

/// The account id of a token: 128 bits of a BLAKE3 key derivation from it, in hex.
///
/// Two tokens that share an account id share their bookings and their idempotency keys, so
/// the id must be too long to find two such tokens: 128 bits puts a collision at about 2^64
/// hashes (two tokens sharing the 48 bits it had were found in 17.5 s). `acct_` and 32 hex
/// digits are 37 bytes, well within a scope's 255.
fn account_id(token: &str) -> String {
    let digest = blake3::derive_key("idemstore serve account id v1", token.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest = blake3::hash(format!("{}/{nanos}/{n}", std::process::id()).as_bytes());
    let hex: String = digest.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("req_{hex}")
}

fn booking_response(status: StatusCode, booking: &Booking, location: bool) -> Response {
    let body = json!({"data": booking, "meta": {"request_id": request_id()}});
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&booking.etag()) {
        headers.insert(header::ETAG, v);
    }
    if location && let Ok(v) = HeaderValue::from_str(&format!("/v1/bookings/{}", booking.uid)) {
        headers.insert(header::LOCATION, v);
    }
    response
}

fn booking_error(e: BookingError) -> ApiError {
    match e {
        BookingError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such booking"),
        BookingError::Stale { current } => error(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            format!("If-Match does not name the current version {current}; read it again"),
        ),
        BookingError::InvalidState(why) => error(StatusCode::CONFLICT, "invalid_state", why),
        BookingError::Unavailable(why) => {
            tracing::warn!(%why, "bookings storage unavailable");
            let mut e = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the bookings storage is unavailable for a moment; send the request again",
            );
            e.retry_after = Some(1);
            e
        }
        BookingError::Storage(why) => {
            tracing::error!(%why, "bookings storage failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the bookings storage failed",
            )
        }
    }
}

/// Runs a bookings call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BookingError> + Send + 'static,
) -> Result<T, BookingError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BookingError::Storage(format!("bookings task failed: {e}"))))
}

fn invalid(message: impl Into<String>) -> ApiError {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

/// Reads a request body of at most [`DEFAULT_MAX_REQUEST_BODY`] bytes: the layer's limit
/// (rule H9), kept here too so that `--without-idempotency` does not read bodies without one.
/// A declared length over it is refused without reading; `413 request_too_large` either way.
async fn read_body(body: axum::body::Body) -> Result<Bytes, ApiError> {
    let limit = DEFAULT_MAX_REQUEST_BODY;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(invalid(format!("the body could not be read: {e}"))),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))
}

fn string_field(v: &Value, name: &str) -> Result<String, ApiError> {
    match v.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(invalid(format!("`{name}` must be a non-empty string"))),
    }
}

/// `start` must be an RFC 3339 UTC timestamp, `YYYY-MM-DDTHH:MM:SSZ`.
fn start_field(v: &Value) -> Result<String, ApiError> {
    let s = string_field(v, "start")?;
    let b = s.as_bytes();
    let shape = b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if shape {
        Ok(s)
    } else {
        Err(invalid("`start` must look like 2026-05-20T15:00:00Z"))
    }
}

fn email_field(v: &Value) -> Result<String, ApiError> {
    let email = v
        .get("attendee")
        .and_then(|a| a.get("email"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    match email.split_once('@') {
        Some((user, host)) if !user.is_empty() && host.contains('.') => Ok(email.to_owned()),
        _ => Err(invalid("`attendee.email` must be an email address")),
    }
}

fn account(headers_ext: &axum::http::Extensions) -> Result<String, ApiError> {
    headers_ext
        .get::<Principal>()
        .map(|a| a.0.as_str().to_owned())
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unauthenticated", "no account"))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn create(State(st): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let account = account(&parts.extensions)?;
        let v = parse_json(&body)?;
        let new = NewBooking {
            event_type_id: string_field(&v, "event_type_id")?,
            start: start_field(&v)?,
            email: email_field(&v)?,
        };
        let ctx = parts.extensions.get::<IdempotencyContext>().cloned();
        if let (Some(ctx), Some(_)) = (&ctx, st.bookings.store()) {
            return create_in_two_steps(ctx, account, new, st.delay).await;
        }
        hold(st.delay).await;
        // On Redis, tie the booking to the key the layer reserved, as it parsed it, and to
        // this request's fingerprint; unguarded (`--without-idempotency`), there is no key.
        let keyed = ctx.map(|ctx| KeyedRequest {
            scope: ctx.scope().as_str().to_owned(),
            key: ctx.key().as_str().to_owned(),
            fingerprint: (ctx.fingerprint().version(), *ctx.fingerprint().digest()),
            ttl_ms: u64::try_from(st.ttl.as_millis()).unwrap_or(u64::MAX),
        });
        let bookings = st.bookings.clone();
        blocking(move || bookings.create(&account, keyed.as_ref(), now_ms(), new))
            .await
            .map(Some)
            .map_err(booking_error)
    }
    .await;
    match result {
        Ok(Some(b)) => booking_response(StatusCode::CREATED, &b, true),
        // Stored with the booking: the layer sends the stored response instead of this one.
        Ok(None) => StatusCode::CREATED.into_response(),
        Err(r) => r.into_response(),
    }
}

/// A create whose bookings live in the store's file, in two steps that each commit with what
/// the key needs to resume: the booking id is taken, held and saved as the key's recovery
/// point in one transaction; then (after the configured delay, where a crash lands between the steps)
/// the booking is written under that id with its response in another. A retry that takes the
/// key over after a crash between them finds the point and skips the first step, so the
/// booking keeps the id the first attempt held. `Ok(None)`: the layer sends the stored
/// response.
async fn create_in_two_steps(
    ctx: &IdempotencyContext,
    account: String,
    new: NewBooking,
    delay: Duration,
) -> Result<Option<Booking>, ApiError> {
    let unavailable = |what: &dyn std::fmt::Display| {
        tracing::error!(error = %what, "a booking could not be stored");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the booking could not be stored; retry with the same key",
        )
    };
    let uid = match ctx.recovery_point().filter(|p| p.name() == "id-held") {
        Some(point) => {
            let uid = String::from_utf8_lossy(point.payload()).into_owned();
            tracing::debug!(%uid, "create resumed from its recovery point");
            uid
        }
        None => {
            let holder = account.clone();
            let point = ctx
                .save_point_with("id-held", move |txn| {
                    Ok::<_, BookingError>(file::hold_next(txn, &holder)?.into_bytes())
                })
                .await
                .map_err(|e| match e {
                    PointWithError::Aborted(e) => booking_error(e),
                    other => unavailable(&other),
                })?;
            let uid = String::from_utf8_lossy(point.payload()).into_owned();
            tracing::debug!(%uid, "booking id held and saved as the create's recovery point");
            uid
        }
    };
    hold(delay).await;
    let done = ctx
        .complete_with(move |txn| {
            let booking = file::insert_held(txn, &account, &uid, new)?;
            created_response(&booking)
        })
        .await
        .map_err(|e| match e {
            CompleteWithError::Aborted(e) => booking_error(e),
            other => unavailable(&other),
        })?;
    match done {
        // Stored with its booking: the layer sends the stored response.
        idemstore::Completion::Stored => Ok(None),
        // Not kept by the policy: the booking was rolled back with it.
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the booking was not stored; retry with the same key",
        )),
    }
}

/// Resolves every create whose outcome is unknown (`--in-flight-at-open mark-unknown`): one
/// whose booking exists completes with that booking's `201`, so its retry replays it; any
/// other is released, and its retry resumes from the id it held, or books afresh.
fn resolve_unknown(store: &Store, bookings: &Bookings) -> Result<(), String> {
    let resolved = store.resolve_unknown(usize::MAX, |record, reservation| {
        let uid = record
            .recovery_point
            .as_ref()
            .filter(|p| p.name() == "id-held")
            .map(|p| String::from_utf8_lossy(p.payload()).into_owned());
        let booked = uid.as_deref().and_then(|uid| bookings.get(&record.scope, uid).ok());
        let how = match booked.as_ref().map(created_response) {
            Some(Ok(response)) => reservation
                .complete(response)
                .map(|_| "completed with its booking")
                .map_err(idemstore::Error::from),
            _ => reservation
                .release()
                .map(|()| "released: nothing was booked, its retry resumes")
                .map_err(idemstore::Error::from),
        };
        match how {
            Ok(how) => tracing::info!(key = %record.key, uid = ?uid, "outcome-unknown create {how}"),
            Err(e) => tracing::error!(key = %record.key, error = %e, "outcome-unknown create not resolved"),
        }
    });
    resolved
        .map(|n| {
            if n > 0 {
                tracing::info!(
                    resolved = n,
                    "creates whose outcome was unknown are resolved"
                );
            }
        })
        .map_err(|e| format!("cannot resolve the creates whose outcome is unknown: {e}"))
}

/// The `201` of a create, as stored with its booking: the bytes `booking_response` sends.
fn created_response(booking: &Booking) -> Result<idemstore::Response, BookingError> {
    let body = serde_json::to_vec(&json!({"data": booking, "meta": {"request_id": request_id()}}))?;
    Ok(idemstore::Response::new(
        201,
        [
            ("content-type", "application/json".to_owned()),
            ("etag", booking.etag()),
            ("location", format!("/v1/bookings/{}", booking.uid)),
        ],
        body,
    ))
}

async fn hold(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

async fn list(State(st): State<AppState>, req: Request) -> Response {
    let account = match account(req.extensions()) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let bookings = st.bookings.clone();
    match blocking(move || bookings.list(&account)).await {
        Ok(list) => {
            let body = json!({"data": list, "meta": {"request_id": request_id()}});
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => booking_error(e).into_response(),
    }
}

async fn show(State(st): State<AppState>, UrlPath(uid): UrlPath<String>, req: Request) -> Response {
    let account = match account(req.extensions()) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let bookings = st.bookings.clone();
    match blocking(move || bookings.get(&account, &uid)).await {
        Ok(b) => booking_response(StatusCode::OK, &b, false),
        Err(e) => booking_error(e).into_response(),
    }
}

/// A change to apply to a booking inside its write transaction (on Redis, again on the
/// version that won if another change got in first).
type Edit = Box<dyn Fn(&mut Booking) -> Result<(), BookingError> + Send>;

/// A change to one booking: parse, wait the configured delay, apply under `If-Match`.
async fn change(
    st: AppState,
    uid: String,
    req: Request,
    apply: impl FnOnce(&Value) -> Result<Edit, ApiError>,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let account = account(&parts.extensions)?;
        let v = if body.is_empty() {
            Value::Object(Default::default())
        } else {
            parse_json(&body)?
        };
        let f = apply(&v)?;
        let if_match = header_str(&parts.headers, header::IF_MATCH);
        hold(st.delay).await;
        let bookings = st.bookings.clone();
        blocking(move || bookings.update(&account, &uid, if_match.as_deref(), f))
            .await
            .map_err(booking_error)
    }
    .await;
    match result {
        Ok(b) => booking_response(StatusCode::OK, &b, false),
        Err(r) => r.into_response(),
    }
}

fn must_be_active(b: &Booking) -> Result<(), BookingError> {
    if b.status == "cancelled" {
        Err(BookingError::InvalidState(format!(
            "booking {} is cancelled",
            b.uid
        )))
    } else {
        Ok(())
    }
}

async fn cancel(
    State(st): State<AppState>,
    UrlPath(uid): UrlPath<String>,
    req: Request,
) -> Response {
    change(st, uid, req, |_| {
        Ok(Box::new(|b: &mut Booking| {
            must_be_active(b)?;
            b.status = "cancelled".to_owned();
            Ok(())
        }))
    })
    .await
}

async fn reschedule(
    State(st): State<AppState>,
    UrlPath(uid): UrlPath<String>,
    req: Request,
) -> Response {
    change(st, uid, req, |v| {
        let start = start_field(v)?;
        Ok(Box::new(move |b: &mut Booking| {
            must_be_active(b)?;
            b.start.clone_from(&start);
            Ok(())
        }))
    })
    .await
}

async fn patch(
    State(st): State<AppState>,
    UrlPath(uid): UrlPath<String>,
    req: Request,
) -> Response {
    change(st, uid, req, |v| {
        let email = if v.get("attendee").is_some() {
            Some(email_field(v)?)
        } else {
            None
        };
        let start = if v.get("start").is_some() {
            Some(start_field(v)?)
        } else {
            None
        };
        if email.is_none() && start.is_none() {
            return Err(invalid("send `start` or `attendee.email` to change"));
        }
        Ok(Box::new(move |b: &mut Booking| {
            must_be_active(b)?;
            if let Some(e) = &email {
                b.attendee.email.clone_from(e);
            }
            if let Some(s) = &start {
                b.start.clone_from(s);
            }
            Ok(())
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_one_word() {
        for ok in [
            "Bearer t",
            "bearer t",
            "BEARER t",
            "bEaReR t",
            "Bearer   t",
            "Bearer\tt",
            "Bearer \t t ",
        ] {
            assert_eq!(bearer_token(ok), Some("t"), "{ok:?}");
        }
        for refused in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer \t ",
            "Basic t",
            "Bearert",
            "Bearer a b",
            " t",
        ] {
            assert_eq!(bearer_token(refused), None, "{refused:?}");
        }
    }
}
