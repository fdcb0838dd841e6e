//! A minimal axum app behind the idempotency layer, whose handler books in the store's own
//! file and stores its response in the same transaction (`docs/exactly-once.md`, H15).
//!
//! ```sh
//! cargo run --example axum_bookings --features axum,tokio
//! ```
//!
//! The app is called in-process (`tower::ServiceExt::oneshot`), so no port is opened: a first
//! request books, a retry with the same key replays the stored `201`, and the same key with
//! another body is a conflict.

use std::error::Error;

use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use http_body_util::BodyExt;
use idemstore::http::{Contract, IdempotencyContext, IdempotencyLayer};
use idemstore::redb::{ReadableTableMetadata, TableDefinition};
use idemstore::{Config, Response, Scope, Store};
use tower::ServiceExt;

/// The app's own table, in the store's file: booking id → room.
const BOOKINGS: TableDefinition<&str, &str> = TableDefinition::new("bookings");

/// Books a room under the request's key, with its `201`, in one transaction. What the layer
/// sends is the stored response; this handler's own return value only matters when nothing
/// was stored.
async fn book(Extension(ctx): Extension<IdempotencyContext>, body: String) -> impl IntoResponse {
    let id = format!("bk-{}", ctx.key().as_str());
    let stored = ctx
        .complete_with(move |txn| -> Result<Response, idemstore::redb::Error> {
            txn.open_table(BOOKINGS)?
                .insert(id.as_str(), body.as_str())?;
            Ok(Response::new(
                201,
                [
                    ("content-type", "application/json"),
                    ("location", "/bookings"),
                ],
                format!(r#"{{"id":"{id}"}}"#),
            ))
        })
        .await;
    match stored {
        Ok(_) => StatusCode::CREATED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn send(app: &Router, key: &str, body: &str) -> Result<String, Box<dyn Error>> {
    let request = Request::post("/v1/bookings")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replay");
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(format!(
        "{status}{} {}",
        if replayed { " (replayed)" } else { "" },
        String::from_utf8_lossy(&bytes)
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("app.redb"), Config::default())?;
    // No authentication in this example: one scope for every caller.
    let contract = Contract::default().constant_scope(Scope::new("demo")?);
    let app = Router::new()
        .route("/v1/bookings", post(book))
        .layer(IdempotencyLayer::new(store.clone(), contract)?);

    println!("first:    {}", send(&app, "k-1", r#"{"room":101}"#).await?);
    println!(
        "retry:    {}",
        send(&app, "k-1", r#"{ "room": 101 }"#).await?
    );
    println!("conflict: {}", send(&app, "k-1", r#"{"room":102}"#).await?);
    let booked = store.read(|txn| -> Result<u64, idemstore::redb::Error> {
        Ok(txn.open_table(BOOKINGS)?.len()?)
    })?;
    println!("bookings: {booked}");
    assert_eq!(booked, 1);
    store.close()?;
    Ok(())
}
