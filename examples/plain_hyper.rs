//! The layer on plain hyper, without axum: a `tower::service_fn` handler behind
//! `IdempotencyLayer`, served by hyper's HTTP/1.1 connection builder through
//! `hyper_util::service::TowerToHyperService`.
//!
//! ```sh
//! cargo run --example plain_hyper --features http,tokio
//! ```
//!
//! It serves on a free port of 127.0.0.1 and talks to itself over plain HTTP/1.1: a first
//! request runs the handler, the retry replays its response, a `GET` passes through.

use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use idemstore::http::{Contract, IdempotencyLayer, RequestBody};
use idemstore::{Config, Scope, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, service_fn};

/// The handler: counts its runs and answers with the count.
async fn handle(
    runs: Arc<AtomicUsize>,
    request: Request<RequestBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    // The layer has read the body already; here it is whole, however it arrived.
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let text = format!("{method} run {n}, {} body bytes", body.len());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = if method == http::Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(response)
}

/// Sends one request and returns its status line, with "(replayed)" for a replay.
async fn send(addr: std::net::SocketAddr, head: &str) -> Result<String, Box<dyn Error>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{head}\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
         connection: close\r\n\r\n{{}}"
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("hyper.redb"), Config::default())?;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(
            store.clone(),
            Contract::default().constant_scope(Scope::new("demo")?),
        )?)
        .service(service_fn(move |request| {
            handle(Arc::clone(&counted), request)
        }));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    eprintln!("connection: {e}");
                }
            });
        }
    });

    let first = send(addr, "POST /v1/jobs HTTP/1.1\r\nidempotency-key: job-1").await?;
    let retry = send(addr, "POST /v1/jobs HTTP/1.1\r\nidempotency-key: job-1").await?;
    let read = send(addr, "GET /v1/jobs HTTP/1.1").await?;
    println!("first: {first}\nretry: {retry}\nGET:   {read}");
    assert!(retry.contains("(replayed)"));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the POST once, the GET once"
    );
    server.abort();
    store.close()?;
    Ok(())
}
