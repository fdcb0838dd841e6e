//! The HTTP/1.1 server under `idemstore serve`: the accept loop, the limits a client cannot
//! get around, and the shutdown.
//!
//! Why: `axum::serve` sets no header or body read timeout and takes every connection it is
//! offered, so a client that sends half a request (or opens a connection and says nothing, or
//! keeps an idle connection open) holds a socket and its buffers for as long as it likes, and
//! enough of them hold as much memory as they like. This loop serves each connection with
//! hyper's HTTP/1.1 server and a timer, so that the header limits are hyper's own, counts the
//! connections, and puts a deadline on every request body.
//!
//! Invariants:
//!
//! * at most `max_connections` connections are open at once; a connection beyond them waits
//!   in the listen backlog, unaccepted, until one closes;
//! * a connection's request header (the first one, and each one after an idle keep-alive)
//!   must arrive whole within the header timeout, or the connection is closed;
//! * a request body must arrive whole within the body timeout, counted from the end of its
//!   header, or the request gets `408 request_timeout` and its connection is closed; nothing
//!   is reserved, as the idempotency layer reads the whole body before it asks the store;
//! * on shutdown the listener is closed first, idle connections are closed at once, a
//!   connection with a request in hand is closed after its response, and whatever is still
//!   open when the grace period ends is dropped: a shutdown ends within the grace period
//!   whatever the clients do. (A guarded handler keeps running on its own task when its
//!   connection is dropped; `serve` gives those handlers a grace period of their own before it
//!   closes the store.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

/// What a client may take of the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long a request header may take to arrive, counted from the connection's accept or
    /// from the end of its previous response.
    pub(crate) header_timeout: Duration,
    /// How long a request body may take to arrive, counted from the end of its header.
    pub(crate) body_timeout: Duration,
    /// How many connections may be open at once.
    pub(crate) max_connections: usize,
    /// How long the requests in hand may take to finish once shutdown begins.
    pub(crate) shutdown_grace: Duration,
}

/// How often, at most, the loop says it is at the connection limit.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and lets the
/// connections in hand finish their requests for at most the grace period, and drops those
/// still open. Returns when the grace period ends or earlier, when every connection is closed.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let app = app.layer(middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let mut http = http1::Builder::new();
    // The timer is what makes the header timeout work (hyper refuses the timeout without one).
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        // Reap the connections that ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        // A permit per open connection: at the limit, accept nothing until one closes (the
        // kernel's listen backlog holds the newcomers, then refuses them).
        let permit = match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_EVERY) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "at the connection limit: new connections wait until one closes"
                    );
                    warned = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    permit = Arc::clone(&open).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed; if it were, there would be nothing left to count with.
                        Err(_) => break,
                    },
                }
            }
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before its accept: wait
                    // a little rather than spin, and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        connections.spawn(connection(
            stream,
            app.clone(),
            Arc::clone(&http),
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    while connections.try_join_next().is_some() {}
    let now = tokio::time::Instant::now();
    let grace_ends = now.checked_add(limits.shutdown_grace).unwrap_or(now);
    tracing::info!(
        connections = connections.len(),
        grace_ms = limits.shutdown_grace.as_millis(),
        "shutting down: no new connections; finishing the requests in hand"
    );
    let _ = stop.send(true);
    let finished = tokio::time::timeout_at(grace_ends, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "grace period over: dropping the connections still open"
        );
        connections.abort_all();
        // Each aborted task is dropped at its next poll; wait for the drops.
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one connection until it ends; once `stopping` turns true, lets its request in hand
/// finish and closes it. The connection counts against the limit until `_permit` is dropped,
/// with it.
async fn connection(
    stream: TcpStream,
    app: Router,
    http: Arc<http1::Builder>,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let stop = async move {
        // The watch's guard is dropped here, before the connection is awaited again.
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // A header that did not arrive in time, a malformed request, a client gone.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Puts a deadline on the request's body (see [`DeadlineBody`]); answers `408
/// request_timeout` and closes the connection if the body missed it.
async fn body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let missed = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            missed: Arc::clone(&missed),
        })
    });
    let response = next.run(req).await;
    if !missed.load(Ordering::Acquire) {
        return response;
    }
    // Whatever the handler (or the layer) made of the failed read, the answer is the timeout.
    let body = serde_json::json!({"error": {
        "code": "request_timeout",
        "message": format!(
            "the request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    }});
    let mut response = (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed, and says so in `missed`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    missed: Arc<AtomicBool>,
}

/// The error of a body that missed its deadline.
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.inner.is_end_stream() {
            // Read whole: the deadline no longer applies.
            return Poll::Ready(None);
        }
        // The deadline first: a body that keeps trickling in still misses it.
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.missed.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(axum::BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
