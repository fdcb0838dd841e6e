//! Exactly-once over HTTP (E1-E3 through the layer): a guarded handler completes its
//! reservation with its own writes through its `IdempotencyContext`, the layer answers with what
//! was stored, and the layer renews the lease while a handler runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::post as route_post;
use http::StatusCode;
use idemstore::http::{Contract, IdempotencyContext, IdempotencyLayer};
use idemstore::redb::{ReadableTable, TableDefinition};
use idemstore::{Config, ManualClock, Response, Scope, Store};
use tokio::sync::{Semaphore, mpsc};

use crate::http_support::{post, send, serve_router};
use crate::support::{T0, key};

const BOOKINGS: TableDefinition<&str, &str> = TableDefinition::new("bookings");

#[derive(Clone)]
struct AppState {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<()>,
}

/// Books under the request's key, in the store's transaction, and then returns a response of
/// its own that the layer must not send.
async fn book(
    State(st): State<AppState>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> AxumResponse {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let id = format!("bk-{}", ctx.key().as_str());
    let stored = ctx
        .complete_with(move |txn| {
            txn.open_table(BOOKINGS)?.insert(id.as_str(), "room 101")?;
            Ok::<_, idemstore::redb::Error>(Response::new(
                201,
                [("content-type", "application/json")],
                format!(r#"{{"uid":"{id}"}}"#),
            ))
        })
        .await;
    match stored {
        Ok(_) => (StatusCode::IM_A_TEAPOT, "the handler's own response").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Writes, then refuses: nothing may stay, and the key must be free again.
async fn refuse(
    State(st): State<AppState>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> AxumResponse {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let refused = ctx
        .complete_with(|txn| {
            txn.open_table(BOOKINGS)
                .map_err(|e| e.to_string())?
                .insert("refused", "room 102")
                .map_err(|e| e.to_string())?;
            Err::<Response, _>("no room left".to_owned())
        })
        .await;
    (StatusCode::UNPROCESSABLE_ENTITY, format!("{refused:?}")).into_response()
}

/// Starts its completion and drops the future at once, then answers with its own response:
/// the layer must answer with what the completion stored.
async fn fire_and_forget(
    State(st): State<AppState>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> AxumResponse {
    st.calls.fetch_add(1, Ordering::SeqCst);
    drop(ctx.complete_with(|txn| {
        txn.open_table(BOOKINGS)?.insert("bk-dropped", "room 103")?;
        Ok::<_, idemstore::redb::Error>(Response::new(201, [("x-from", "closure")], "stored"))
    }));
    (StatusCode::IM_A_TEAPOT, "the handler's own response").into_response()
}

/// Holds until the gate opens, then answers.
async fn slow(State(st): State<AppState>) -> AxumResponse {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let _ = st.entered.send(());
    st.gate.acquire().await.unwrap().forget();
    (StatusCode::CREATED, "slow done").into_response()
}

struct App {
    addr: std::net::SocketAddr,
    store: Store,
    clock: ManualClock,
    state: AppState,
    entered: mpsc::UnboundedReceiver<()>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(lease: Duration) -> App {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let config = Config::builder()
        .clock(clock.clone())
        .lease(lease)
        .compactor_interval(Duration::from_secs(3600))
        .log_capacity(1 << 20)
        .build()
        .unwrap();
    let store = Store::open(dir.path().join("app.redb"), config).unwrap();
    let contract = Contract::default().constant_scope(Scope::new("acct").unwrap());
    let layer = IdempotencyLayer::new(store.clone(), contract).unwrap();
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let state = AppState {
        calls: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Semaphore::new(0)),
        entered: entered_tx,
    };
    let app = Router::new()
        .route("/v1/bookings", route_post(book))
        .route("/v1/refused", route_post(refuse))
        .route("/v1/slow", route_post(slow))
        .route("/v1/dropped", route_post(fire_and_forget))
        .layer(layer)
        .with_state(state.clone());
    let (addr, server) = serve_router(app).await;
    App {
        addr,
        store,
        clock,
        state,
        entered,
        _dir: dir,
        server,
    }
}

fn bookings(store: &Store) -> Vec<String> {
    store
        .read(|txn| -> Result<_, idemstore::redb::Error> {
            let Ok(table) = txn.open_table(BOOKINGS) else {
                return Ok(Vec::new());
            };
            let mut ids = Vec::new();
            for row in table.iter()? {
                ids.push(row?.0.value().to_owned());
            }
            Ok(ids)
        })
        .unwrap()
}

#[tokio::test]
async fn e1_a_handler_completes_with_its_writes_and_the_layer_answers_what_was_stored() {
    let app = start(Duration::from_secs(60)).await;
    let first = send(app.addr, post("/v1/bookings", "k1", r#"{"room":101}"#))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(first.text(), r#"{"uid":"bk-k1"}"#);
    assert!(!first.replayed());
    let retry = send(app.addr, post("/v1/bookings", "k1", r#"{"room":101}"#))
        .await
        .unwrap();
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body);
    assert!(retry.replayed());
    assert_eq!(app.state.calls.load(Ordering::SeqCst), 1);
    assert_eq!(bookings(&app.store), ["bk-k1"]);
}

#[tokio::test]
async fn e2_a_handler_whose_closure_refuses_stores_nothing_and_frees_its_key() {
    let app = start(Duration::from_secs(60)).await;
    for attempt in 1..=2 {
        let reply = send(app.addr, post("/v1/refused", "k2", "{}"))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(reply.text().contains("no room left"), "{}", reply.text());
        assert!(!reply.replayed());
        assert_eq!(app.state.calls.load(Ordering::SeqCst), attempt);
    }
    assert!(bookings(&app.store).is_empty());
}

#[tokio::test]
async fn c8_the_layer_renews_the_lease_while_its_handler_runs() {
    let mut app = start(Duration::from_millis(300)).await;
    let addr = app.addr;
    let first = tokio::spawn(async move { send(addr, post("/v1/slow", "k3", "{}")).await });
    app.entered.recv().await.unwrap();
    let (scope, k) = (Scope::new("acct").unwrap(), key("k3"));
    let deadline = |store: &Store| {
        store
            .get(&scope, &k)
            .unwrap()
            .and_then(|r| r.lease_deadline)
    };
    assert_eq!(deadline(&app.store), Some(T0 + 300));
    app.clock.advance(Duration::from_millis(200));
    // The layer renews every third of a lease (100 ms of real time): wait for one renewal
    // made at the advanced clock.
    let waited = Instant::now();
    while deadline(&app.store) != Some(T0 + 500) {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no renewal: {:?}",
            deadline(&app.store)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past the first deadline, within the renewed one: a retry must not take the key over.
    app.clock.advance(Duration::from_millis(200));
    let retry = send(app.addr, post("/v1/slow", "k3", "{}")).await.unwrap();
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text());
    assert_eq!(retry.code(), "idempotency_in_progress");
    assert_eq!(app.state.calls.load(Ordering::SeqCst), 1);
    app.state.gate.add_permits(1);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
}

#[tokio::test]
async fn h15_a_handler_that_drops_its_completion_still_answers_what_was_stored() {
    let app = start(Duration::from_secs(60)).await;
    let first = send(app.addr, post("/v1/dropped", "k4", "{}"))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(first.text(), "stored");
    assert_eq!(first.header("x-from"), Some("closure"));
    let retry = send(app.addr, post("/v1/dropped", "k4", "{}"))
        .await
        .unwrap();
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(bookings(&app.store), ["bk-dropped"]);
}
