//! Two routes, two contracts, one store: bookings under the default contract (a key is
//! required, only successes are stored, for the store's 24 hours) and a Stripe-like payments
//! API (the key is optional, every result is stored, even a declined card, so a retry gets the
//! same decline, and kept for a week with a two-minute lease).
//!
//! ```sh
//! cargo run --example per_route_contracts --features axum,tokio
//! ```
//!
//! Called in-process (`tower::ServiceExt::oneshot`), so no port is opened.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::post;
use http_body_util::BodyExt;
use idemstore::http::{Contract, IdempotencyLayer};
use idemstore::{Config, Scope, Store};
use tower::ServiceExt;

async fn send(app: &Router, path: &str, key: Option<&str>) -> Result<String, Box<dyn Error>> {
    let mut request = axum::http::Request::post(path).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = app.clone().oneshot(request.body(Body::from("{}"))?).await?;
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replay")
        || response.headers().contains_key("idempotent-replayed");
    let body = response.into_body().collect().await?.to_bytes();
    Ok(format!(
        "{status}{} {}",
        if replayed { " (replayed)" } else { "" },
        String::from_utf8_lossy(&body)
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("api.redb"), Config::default())?;
    let scope = Scope::new("acct_1")?;
    let charges = Arc::new(AtomicUsize::new(0));

    let bookings = Router::new()
        .route(
            "/v1/bookings",
            post(|| async { (StatusCode::CREATED, "booked") }),
        )
        .layer(IdempotencyLayer::new(
            store.clone(),
            Contract::default().constant_scope(scope.clone()),
        )?);
    let counted = Arc::clone(&charges);
    let payments = Router::new()
        .route(
            "/v1/charges",
            post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::PAYMENT_REQUIRED, r#"{"error":"card_declined"}"#) }
            }),
        )
        .layer(IdempotencyLayer::new(
            store.clone(),
            Contract::stripe_like()
                .constant_scope(scope.clone())
                .ttl(Duration::from_secs(7 * 86_400))
                .lease(Duration::from_secs(120)),
        )?);
    let app = bookings.merge(payments);

    println!(
        "booking without a key: {}",
        send(&app, "/v1/bookings", None).await?
    );
    println!(
        "booking:               {}",
        send(&app, "/v1/bookings", Some("b-1")).await?
    );
    println!(
        "booking again:         {}",
        send(&app, "/v1/bookings", Some("b-1")).await?
    );
    println!(
        "charge without a key:  {}",
        send(&app, "/v1/charges", None).await?
    );
    println!(
        "charge:                {}",
        send(&app, "/v1/charges", Some("c-1")).await?
    );
    let again = send(&app, "/v1/charges", Some("c-1")).await?;
    println!("charge again:          {again}");
    assert!(
        again.contains("(replayed)"),
        "a declined charge replays its decline"
    );
    // Once without a key (not guarded), once with one; the retry replayed.
    assert_eq!(charges.load(Ordering::SeqCst), 2);
    let kept = |key: &str| -> Result<Duration, Box<dyn Error>> {
        let record = store.get(&scope, &store.key(key)?)?.ok_or("no record")?;
        Ok(Duration::from_millis(record.expires_at - record.created_at))
    };
    println!(
        "kept for:              booking {:?}, charge about {:?}",
        kept("b-1")?,
        kept("c-1")?
    );
    assert!(kept("c-1")? > Duration::from_secs(6 * 86_400));
    store.close()?;
    Ok(())
}
