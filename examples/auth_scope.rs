//! The scope from an authentication middleware: the middleware checks the bearer token and
//! puts the caller's account into the request as a `Principal`; the idempotency layer, inside
//! it, scopes every key by that account (rule H14). Two accounts may use the same key without
//! meeting, and a refreshed token for the same account keeps its keys.
//!
//! ```sh
//! cargo run --example auth_scope --features axum,tokio
//! ```
//!
//! Called in-process (`tower::ServiceExt::oneshot`), so no port is opened.

use std::error::Error;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use idemstore::http::{Contract, IdempotencyLayer, Principal};
use idemstore::{Config, Scope, Store};
use tower::ServiceExt;

/// The app's tokens: token → account. Two tokens of `acct_a` stand for a refresh.
fn account_of(token: &str) -> Option<&'static str> {
    match token {
        "tok_a_1" | "tok_a_2" => Some("acct_a"),
        "tok_b" => Some("acct_b"),
        _ => None,
    }
}

/// Authenticates, then hands the account on as the request's `Principal`.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(scope) = token.and_then(account_of).and_then(|a| Scope::new(a).ok()) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    request.extensions_mut().insert(Principal(scope));
    next.run(request).await
}

async fn pay(request: Request) -> impl IntoResponse {
    let account = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.0.as_str().to_owned())
        .unwrap_or_default();
    (StatusCode::CREATED, format!(r#"{{"paid_by":"{account}"}}"#))
}

async fn send(app: &Router, token: &str, key: &str) -> Result<String, Box<dyn Error>> {
    let request = axum::http::Request::post("/v1/payments")
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"amount":10}"#))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replay");
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
    let store = Store::open(dir.path().join("payments.redb"), Config::default())?;
    let contract = Contract::default().scope_from_principal();
    // axum applies the last layer outermost: authentication runs first, then idempotency.
    let app = Router::new()
        .route("/v1/payments", post(pay))
        .layer(IdempotencyLayer::new(store.clone(), contract)?)
        .layer(middleware::from_fn(authenticate));

    let first = send(&app, "tok_a_1", "pay-1").await?;
    let refreshed = send(&app, "tok_a_2", "pay-1").await?;
    let other_account = send(&app, "tok_b", "pay-1").await?;
    let stranger = send(&app, "tok_x", "pay-1").await?;
    println!("acct_a:            {first}");
    println!("acct_a, new token: {refreshed}");
    println!("acct_b, same key:  {other_account}");
    println!("unknown token:     {stranger}");
    assert!(
        refreshed.contains("(replayed)"),
        "a refreshed token keeps its keys"
    );
    assert!(
        !other_account.contains("(replayed)"),
        "another account's key is its own"
    );
    assert!(stranger.starts_with("401"));
    store.close()?;
    Ok(())
}
