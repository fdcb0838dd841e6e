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
use idemstore::redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
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

/// `handler` at `/v1/x`, guarded by a layer on `app`'s store, with `app`'s state.
fn guarded(app: &App, handler: axum::routing::MethodRouter<AppState>) -> Router {
    Router::new()
        .route("/v1/x", handler)
        .layer(
            IdempotencyLayer::new(
                app.store.clone(),
                Contract::default().constant_scope(Scope::new("acct").unwrap()),
            )
            .unwrap(),
        )
        .with_state(app.state.clone())
}

/// Two steps over HTTP: the first holds a room and saves the point with it; the first call
/// then fails with a 500 (not kept), which ends the key's lease instead of freeing it; the
/// retry's context carries the point, so it skips the hold and books.
async fn two_steps(
    State(st): State<AppState>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> AxumResponse {
    let call = st.calls.fetch_add(1, Ordering::SeqCst);
    let held = match ctx.recovery_point() {
        Some(point) => String::from_utf8_lossy(point.payload()).into_owned(),
        None => {
            // The hold's id is made inside the step's transaction, and is the point's payload.
            let saved = ctx
                .save_point_with("held", move |txn| {
                    let mut t = txn.open_table(BOOKINGS)?;
                    let hold = format!("hold-{}", t.len()? + 1);
                    t.insert(hold.as_str(), "held")?;
                    Ok::<_, idemstore::redb::Error>(hold.into_bytes())
                })
                .await;
            match saved {
                Ok(point) => String::from_utf8_lossy(point.payload()).into_owned(),
                Err(e) => {
                    return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
                }
            }
        }
    };
    if call == 0 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "charge failed").into_response();
    }
    let stored = ctx
        .complete_with(move |txn| {
            txn.open_table(BOOKINGS)?.insert("booked", held.as_str())?;
            Ok::<_, idemstore::redb::Error>(Response::new(201, [("x", "y")], held))
        })
        .await;
    match stored {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[tokio::test]
async fn h18_a_retry_after_a_failed_step_resumes_from_the_point_its_context_carries() {
    let app = start(Duration::from_secs(60)).await;
    let (addr, server) = serve_router(guarded(&app, route_post(two_steps))).await;
    let first = send(addr, post("/v1/x", "k", "{}")).await.unwrap();
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Not freed: in flight with its lease ended and its point.
    let record = app
        .store
        .get(&Scope::new("acct").unwrap(), &key("k"))
        .unwrap()
        .unwrap();
    assert_eq!(record.state, idemstore::State::InFlight);
    let hold = String::from_utf8(record.recovery_point.unwrap().payload().to_vec()).unwrap();
    let retry = send(addr, post("/v1/x", "k", "{}")).await.unwrap();
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert_eq!(retry.text(), hold, "booked under the first attempt's hold");
    let mut rows = bookings(&app.store);
    rows.sort();
    assert_eq!(rows, ["booked".to_owned(), hold], "one hold, one booking");
    server.abort();
}

#[tokio::test]
async fn e6_a_key_whose_outcome_is_unknown_is_answered_409_idempotency_outcome_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.redb");
    let config = || {
        Config::builder()
            .in_flight_at_open(idemstore::InFlightAtOpen::MarkUnknown)
            .build()
            .unwrap()
    };
    let body = r#"{"amount":10}"#;
    let scope = Scope::new("acct").unwrap();
    let layered = |store: &Store, handler: Router| {
        handler.layer(
            IdempotencyLayer::new(
                store.clone(),
                Contract::default().constant_scope(scope.clone()),
            )
            .unwrap(),
        )
    };
    // The first attempt enters its handler, which never finishes; the store then stops.
    let store = Store::open(&path, config()).unwrap();
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let stuck = Router::new().route(
        "/v1/pay",
        route_post(move || {
            let _ = entered_tx.send(());
            std::future::pending::<StatusCode>()
        }),
    );
    let (addr, server) = serve_router(layered(&store, stuck)).await;
    let cut_short = tokio::spawn(async move { send(addr, post("/v1/pay", "p-1", body)).await });
    entered.recv().await.unwrap();
    store.close().unwrap();
    server.abort();
    cut_short.abort();
    let store = Store::open(&path, config()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/pay",
        route_post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::CREATED }
        }),
    );
    let (addr, server) = serve_router(layered(&store, app)).await;
    let reply = send(addr, post("/v1/pay", "p-1", body)).await.unwrap();
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert!(
        reply.text().contains("idempotency_outcome_unknown"),
        "{}",
        reply.text()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing runs while unknown"
    );
    // Resolved as not done: the retry runs.
    store
        .resolve(&scope, &key("p-1"))
        .unwrap()
        .unwrap()
        .release()
        .unwrap();
    let reply = send(addr, post("/v1/pay", "p-1", body)).await.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.abort();
}

/// Saves a point, then starts a completion whose closure fails and drops its future, and
/// answers 500: the layer must see at once that the completion left the key to its retry
/// (the record kept for its point is under another token), not wait out the lease.
async fn point_then_failed_completion(
    State(st): State<AppState>,
    Extension(ctx): Extension<IdempotencyContext>,
) -> AxumResponse {
    st.calls.fetch_add(1, Ordering::SeqCst);
    if let Err(e) = ctx.save_point("held", b"h").await {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    drop(ctx.complete_with(|_| Err::<Response, _>("charge failed")));
    (StatusCode::INTERNAL_SERVER_ERROR, "charge failed").into_response()
}

#[tokio::test]
async fn h15_h18_a_dropped_completion_that_fails_after_a_point_is_answered_without_waiting_a_lease()
{
    let app = start(Duration::from_secs(600)).await;
    let (addr, server) =
        serve_router(guarded(&app, route_post(point_then_failed_completion))).await;
    // A bound far below the lease: reaching it is the failure, not a pause.
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        send(addr, post("/v1/x", "k", "{}")),
    )
    .await
    .expect("the layer waited for the lease")
    .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let record = app
        .store
        .get(&Scope::new("acct").unwrap(), &key("k"))
        .unwrap()
        .unwrap();
    assert_eq!(record.recovery_point.unwrap().name(), "held");
    server.abort();
}
