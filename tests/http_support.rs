//! Helpers for the HTTP tests: an axum app behind the layer on a loopback port, handlers that
//! count their calls and can be held at a gate, and a minimal HTTP/1.1 client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post as route_post;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use idemstore::http::{Contract, IdempotencyLayer};
use idemstore::{Config, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "Bearer tok_alice";

#[derive(Clone)]
struct AppState {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
}

/// Sends on `dropped` if the handler's future is dropped before it finished.
struct DropSignal(Option<mpsc::UnboundedSender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

pub struct App {
    pub addr: SocketAddr,
    pub store: Store,
    pub layer: IdempotencyLayer,
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedReceiver<()>,
    dropped: mpsc::UnboundedReceiver<()>,
    server: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl App {
    /// How many times a handler ran (entered).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until a `/slow` handler has entered and is held at the gate.
    pub async fn entered(&mut self) {
        self.entered.recv().await.unwrap();
    }

    /// Lets `n` held `/slow` handlers finish.
    pub fn open_gate(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Waits until a `/slow` handler's future was dropped before it finished.
    pub async fn dropped(&mut self) {
        self.dropped.recv().await.unwrap();
    }
}

fn json(status: StatusCode, n: usize, body: &[u8]) -> Response {
    (
        status,
        [
            ("content-type", "application/json".to_owned()),
            ("location", format!("/v1/bookings/bk_{n}")),
            ("etag", format!("\"v{n}\"")),
            ("x-not-replayed", "1".to_owned()),
        ],
        format!(
            r#"{{"data":{{"uid":"bk_{n}"}},"echo":{}}}"#,
            String::from_utf8_lossy(body)
        ),
    )
        .into_response()
}

async fn create(State(st): State<AppState>, body: Bytes) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    json(StatusCode::CREATED, n, &body)
}

async fn slow(State(st): State<AppState>, body: Bytes) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let mut signal = DropSignal(Some(st.dropped.clone()));
    let _ = st.entered.send(());
    let permit = st.gate.acquire().await.unwrap();
    permit.forget();
    signal.0 = None;
    json(StatusCode::CREATED, n, &body)
}

async fn fail(State(st): State<AppState>) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::INTERNAL_SERVER_ERROR, format!("failure {n}")).into_response()
}

async fn panics_once(State(st): State<AppState>, body: Bytes) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        panic!("the first call panics (expected by the test)");
    }
    json(StatusCode::CREATED, n, &body)
}

async fn big(State(st): State<AppState>) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/octet-stream".to_owned()),
            ("etag", format!("\"v{n}\"")),
        ],
        vec![b'x'; 10_000],
    )
        .into_response()
}

async fn list(State(st): State<AppState>) -> Response {
    let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::OK, format!("list {n}")).into_response()
}

pub fn memory_store() -> Store {
    Store::in_memory(Config::default()).unwrap()
}

/// Serves the test app behind a layer with `contract` on `store`, on 127.0.0.1 and a free port.
pub async fn start(store: Store, contract: Contract) -> App {
    let layer = IdempotencyLayer::new(store.clone(), contract).unwrap();
    start_layer(store, layer).await
}

/// Serves the test app behind `layer` (made on `store`).
pub async fn start_layer(store: Store, layer: IdempotencyLayer) -> App {
    serve_app(store, layer, false).await
}

/// [`start`], with an outer layer that copies the idempotency layer's `Outcome` extension of
/// every response into the header `x-outcome` (`none` when there is none), as an access log
/// would read it.
pub async fn start_observed(store: Store, contract: Contract) -> App {
    let layer = IdempotencyLayer::new(store.clone(), contract).unwrap();
    serve_app(store, layer, true).await
}

async fn serve_app(store: Store, layer: IdempotencyLayer, observed: bool) -> App {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let state = AppState {
        calls: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Semaphore::new(0)),
        entered: entered_tx,
        dropped: dropped_tx,
    };
    let app = Router::new()
        .route("/v1/bookings", route_post(create).patch(create).get(list))
        .route("/slow", route_post(slow))
        .route("/fail", route_post(fail))
        .route("/panic", route_post(panics_once))
        .route("/big", route_post(big))
        .route("/open", route_post(create).get(list))
        .layer(layer.clone())
        .with_state(state.clone());
    let app = if observed {
        app.layer(tower::util::MapResponseLayer::new(|mut r: Response| {
            let outcome = r
                .extensions()
                .get::<idemstore::http::Outcome>()
                .map_or("none", |o| o.as_str());
            r.headers_mut()
                .insert("x-outcome", http::HeaderValue::from_static(outcome));
            r
        }))
    } else {
        app
    };
    let (addr, server) = serve_router(app).await;
    App {
        addr,
        store,
        layer,
        calls: state.calls,
        gate: state.gate,
        entered,
        dropped,
        server,
    }
}

/// Serves `app` on 127.0.0.1 and a free port, until the handle is aborted.
pub async fn serve_router(app: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The `error.code` of an H8 error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn replayed(&self) -> bool {
        self.header("idempotent-replay") == Some("true")
    }
}

/// A JSON request with the test token and, if given, an idempotency key.
pub fn request(method: &str, path: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", TOKEN)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

pub fn post(path: &str, key: &str, body: &str) -> Request<Full<Bytes>> {
    request("POST", path, Some(key), body)
}

/// Sends one request on a new connection and reads the whole response.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Result<Reply, hyper::Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let mut req = req;
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("localhost"));
    let res = sender.send_request(req).await;
    let out = match res {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
        Err(e) => Err(e),
    };
    conn.abort();
    out
}

/// Sends a request and drops the connection once `ready` completes, without waiting for the
/// response: a client that went away.
pub async fn send_and_hang_up<B>(addr: SocketAddr, req: Request<B>, ready: impl Future<Output = ()>)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let pending = tokio::spawn(async move { sender.send_request(req).await.map(|_| ()) });
    ready.await;
    pending.abort();
    conn.abort();
    let _ = pending.await;
    let _ = conn.await;
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// The status line and the headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    /// The `error.code` of an H8 error body.
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["error"]["code"].as_str().unwrap().to_owned()
    }
}

/// Reads one response (head, then a `Content-Length` body) from a raw connection, waiting at
/// most `within`. `None` if the connection closed first; panics if `within` passed.
pub async fn read_raw_reply(stream: &TcpStream, within: std::time::Duration) -> Option<RawReply> {
    tokio::time::timeout(within, async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match raw_read(stream, &mut chunk).await {
                0 => return None,
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            match raw_read(stream, &mut chunk).await {
                0 => return None,
                n => body.extend_from_slice(&chunk[..n]),
            }
        }
        body.truncate(len);
        Some(RawReply { status, head, body })
    })
    .await
    .unwrap_or_else(|_| panic!("no response within {within:?}"))
}

/// Waits at most `within` for the peer to close the connection (end of stream or reset),
/// discarding whatever it sends first. True if it closed in time.
pub async fn closed_within(stream: &TcpStream, within: std::time::Duration) -> bool {
    tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        while raw_read(stream, &mut chunk).await > 0 {}
    })
    .await
    .is_ok()
}

/// Reads what has arrived (waiting for something); 0 at the end of the stream or on an error.
pub async fn raw_read(stream: &TcpStream, buf: &mut [u8]) -> usize {
    loop {
        if stream.readable().await.is_err() {
            return 0;
        }
        match stream.try_read(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return 0,
        }
    }
}

/// Writes all of `bytes`; false if the connection failed first.
pub async fn raw_write(stream: &TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if stream.writable().await.is_err() {
            return false;
        }
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
    true
}
