//! Graceful shutdown: stop accepting, let the requests in hand finish (their handlers store
//! their responses), wait for the layer to be idle, then close the store, which makes
//! everything durable. A request whose handler was still running when the signal came is
//! answered, and its retry after the restart replays that answer.
//!
//! ```sh
//! cargo run --example graceful_shutdown --features axum,tokio
//! ```
//!
//! It serves on a free port of 127.0.0.1 and talks to itself over plain HTTP/1.1.

use std::error::Error;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use idemstore::http::{Contract, IdempotencyLayer};
use idemstore::{Config, Scope, Store};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// Sends one POST with `key` and returns the status line and the replay header, if any.
async fn send_post(addr: std::net::SocketAddr, key: &str) -> Result<String, Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST /v1/exports HTTP/1.1\r\nhost: x\r\nidempotency-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    let status = reply.lines().next().unwrap_or_default().to_owned();
    let replayed = reply
        .to_ascii_lowercase()
        .contains("idempotent-replay: true");
    Ok(format!(
        "{status}{}",
        if replayed { " (replayed)" } else { "" }
    ))
}

/// Serves the app on `listener` until `stop` fires, then waits for the layer to be idle.
async fn serve(
    store: Store,
    listener: TcpListener,
    entered: Arc<Notify>,
    stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    serving(store, listener, entered, stop)
        .await
        .map_err(|e| e.to_string())
}

async fn serving(
    store: Store,
    listener: TcpListener,
    entered: Arc<Notify>,
    stop: oneshot::Receiver<()>,
) -> Result<(), Box<dyn Error>> {
    let layer = IdempotencyLayer::new(
        store.clone(),
        Contract::default().constant_scope(Scope::new("ops")?),
    )?;
    let app = Router::new()
        .route(
            "/v1/exports",
            post(move || {
                let entered = Arc::clone(&entered);
                async move {
                    entered.notify_one();
                    // A handler that takes a while (an export being written).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    (StatusCode::CREATED, "export ready")
                }
            }),
        )
        .layer(layer.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await?;
    // Handlers whose clients went away may still run: give them a bounded time to store
    // their responses before the store closes.
    if tokio::time::timeout(Duration::from_secs(10), layer.idle())
        .await
        .is_err()
    {
        eprintln!("some handlers were still running; their keys stay in flight");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("exports.redb");

    let store = Store::open(&path, Config::default())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let entered = Arc::new(Notify::new());
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(
        store.clone(),
        listener,
        Arc::clone(&entered),
        stopped,
    ));
    let in_hand =
        tokio::spawn(async move { send_post(addr, "export-7").await.map_err(|e| e.to_string()) });
    // The signal comes while the handler runs.
    entered.notified().await;
    let _ = stop.send(());
    println!("in hand at shutdown: {}", in_hand.await??);
    server.await??;
    store.close()?;
    println!("store closed");

    // After the restart, the retry replays the answer the first attempt stored.
    let store = Store::open(&path, Config::default())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(
        store.clone(),
        listener,
        Arc::new(Notify::new()),
        stopped,
    ));
    let retry = send_post(addr, "export-7").await?;
    println!("retry after restart: {retry}");
    assert!(retry.contains("(replayed)"));
    let _ = stop.send(());
    server.await??;
    store.close()?;
    Ok(())
}
