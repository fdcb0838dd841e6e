//! The HTTP/1.1 server under `idemstore serve`: the accept loop, the limits a client cannot
//! get around, and the shutdown.
//!
//! Why: `axum::serve` sets no header read timeout, so a client that sends half a request
//! header (or opens a connection and says nothing, or keeps an idle connection open) holds a
//! socket and its buffers for as long as it likes. This loop serves each connection with
//! hyper's HTTP/1.1 server and a timer, so that the limits are hyper's own.
//!
//! Invariants: a connection's request header (the first one, and each one after an idle
//! keep-alive) must arrive whole within the header timeout, or the connection is closed; on
//! shutdown the listener is closed first, idle connections are closed at once, and a
//! connection with a request in hand is closed after its response.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What a client may take of the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long a request header may take to arrive, counted from the connection's accept or
    /// from the end of its previous response.
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// the connections in hand to finish their requests.
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    // The timer is what makes the header timeout work (hyper refuses the timeout without one).
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let http = Arc::new(http);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Reap the connections that ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
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
        ));
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "shutting down: no new connections; finishing the requests in hand"
    );
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it ends; once `stopping` turns true, lets its request in hand
/// finish and closes it.
async fn connection(
    stream: TcpStream,
    app: Router,
    http: Arc<http1::Builder>,
    mut stopping: watch::Receiver<bool>,
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
