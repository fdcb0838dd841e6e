//! The caller's side: a hyper-util client behind `RetryLayer`, with its keys in a
//! `KeyJournal` file, against an idempotent axum service whose first answer is lost on the
//! way back.
//!
//! ```sh
//! cargo run --example retrying_client --features client,axum,tokio
//! ```
//!
//! It serves on a free port of 127.0.0.1. The front of the server loses the first answer
//! (the booking is made and stored, then a `503` goes back instead): the client retries with
//! the same journaled key and gets the stored booking, marked a replay. The same operation
//! with another body stops with `RetryError::Conflict`. The handler ran once.

use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use idemstore::client::{
    JournalConfig, KeyJournal, Operation, RetryError, RetryLayer, RetryPolicy, RetryReport,
};
use idemstore::http::{Contract, IdempotencyLayer};
use idemstore::{Config, Scope, Store};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt, service_fn};

/// Serves `app` on a free port, losing the first answer: the app runs and its response is
/// dropped, and the client gets `503` instead, as if a proxy had failed on the way back.
async fn serve_lossy(app: Router) -> Result<std::net::SocketAddr, Box<dyn Error>> {
    let lose = Arc::new(AtomicBool::new(true));
    let front = service_fn(move |request: Request<hyper::body::Incoming>| {
        let (app, lose) = (app.clone(), Arc::clone(&lose));
        async move {
            let response = app.oneshot(request).await?;
            if lose.swap(false, Ordering::SeqCst) {
                let mut lost = Response::new(axum::body::Body::from("upstream answer lost"));
                *lost.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok::<_, Infallible>(lost);
            }
            Ok(response)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(front.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

fn booking(
    addr: std::net::SocketAddr,
    op: &str,
    start: &str,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let body = format!(r#"{{"start":"{start}","room":101}}"#);
    let mut request = Request::post(format!("http://{addr}/v1/bookings"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    request.extensions_mut().insert(Operation::new(op));
    Ok(request)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    // The server: an idempotent bookings route that counts its runs.
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let store = Store::in_memory(Config::default())?;
    let app = Router::new()
        .route(
            "/v1/bookings",
            post(move || async move {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, format!(r#"{{"uid":"bk_{n}"}}"#))
            }),
        )
        .layer(IdempotencyLayer::new(
            store,
            Contract::default().constant_scope(Scope::new("demo")?),
        )?);
    let addr = serve_lossy(app).await?;

    // The caller: keys journaled in a file before anything is sent.
    let dir = tempfile::tempdir()?;
    let journal = KeyJournal::open(dir.path().join("keys.redb"), JournalConfig::default())?;
    let policy = RetryPolicy::default()
        .base(Duration::from_millis(20))
        .deadline(Duration::from_secs(30));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let service = RetryLayer::new(policy)
        .journal(journal.clone())
        .layer(client);

    let response = service
        .clone()
        .oneshot(booking(addr, "book-room-101", "10:00")?)
        .await?;
    let report = response
        .extensions()
        .get::<RetryReport>()
        .cloned()
        .ok_or("no report")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "book-room-101: {status} {} after {} attempts{}, key {}",
        String::from_utf8_lossy(&body),
        report.attempts,
        if report.replayed { " (replayed)" } else { "" },
        report.key
    );
    assert!(report.replayed && report.attempts == 2);
    assert!(journal.pending()?.is_empty(), "finished in the journal");

    // The same operation for another booking: the server refuses, the client stops.
    match service
        .oneshot(booking(addr, "book-room-101", "11:00")?)
        .await
    {
        Err(RetryError::Conflict { attempts, .. }) => {
            println!("book-room-101 with another body: conflict after {attempts} attempt")
        }
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    journal.close()?;
    Ok(())
}
