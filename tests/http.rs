//! The tower layer over real HTTP on loopback: an axum app behind `IdempotencyLayer`, driven
//! by a hyper client. One test or more per HTTP rule (H1-H9) and the store rules they surface.
//! Races are ordered with handler gates, never sleeps.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use idemstore::http::{Contract, ErrorStyle, IdempotencyLayer, OnStoreError};

use crate::http_support::{
    App, memory_store, post, request, send, send_and_hang_up, start, start_layer,
};

const BOOKING: &str =
    r#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
const BOOKING_REORDERED: &str = r#"{ "attendee" : { "email":"a@b.com" },
    "start": "2026-05-20T15:00:00Z", "event_type_id":"evt_1" }"#;
const OTHER_BOOKING: &str =
    r#"{"event_type_id":"evt_1","start":"2026-05-21T09:00:00Z","attendee":{"email":"a@b.com"}}"#;

async fn default_app() -> App {
    start(memory_store(), Contract::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_get_head_options_ignore_the_header() {
    let app = default_app().await;
    for _ in 0..2 {
        let r = send(app.addr, request("GET", "/v1/bookings", Some("k1"), ""))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(!r.replayed());
    }
    assert_eq!(app.calls(), 2, "GET runs every time, key or not");
    let r = send(app.addr, request("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_only_configured_routes_are_guarded() {
    let app = start(memory_store(), Contract::default().routes(["/v1/bookings"])).await;
    let r = send(app.addr, request("POST", "/open", None, "{}"))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "an unguarded route needs no key"
    );
    let r = send(app.addr, request("POST", "/v1/bookings", None, "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "missing_idempotency_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_missing_key_is_400_and_the_handler_does_not_run() {
    let app = default_app().await;
    for method in ["POST", "PATCH"] {
        let r = send(app.addr, request(method, "/v1/bookings", None, BOOKING))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), "missing_idempotency_key");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(app.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_optional_mode_passes_keyless_requests_through() {
    let app = start(memory_store(), Contract::default().key_required(false)).await;
    for _ in 0..2 {
        let r = send(app.addr, request("POST", "/v1/bookings", None, BOOKING))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::CREATED);
        assert!(!r.replayed());
    }
    assert_eq!(app.calls(), 2);
    // With a key, it is guarded as usual.
    send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    let r = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert!(r.replayed());
    assert_eq!(app.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_bad_keys_are_400() {
    let app = default_app().await;
    let long = "k".repeat(256);
    let bad: Vec<&[u8]> = vec![
        b"",
        long.as_bytes(),
        b"has space",
        "caf\u{e9}".as_bytes(),
        b"\"\"",
        b"\"unterminated",
    ];
    for key in bad {
        let req = http::Request::post("/v1/bookings")
            .header("authorization", crate::http_support::TOKEN)
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                http::HeaderValue::from_bytes(key).unwrap(),
            )
            .body(Full::new(Bytes::from(BOOKING)))
            .unwrap();
        let r = send(app.addr, req).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "key {key:?}");
        assert_eq!(r.code(), "invalid_idempotency_key", "key {key:?}");
    }
    // Two headers are ambiguous.
    let req = http::Request::post("/v1/bookings")
        .header("authorization", crate::http_support::TOKEN)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(app.addr, req).await.unwrap().code(),
        "invalid_idempotency_key"
    );
    // 255 bytes is within the limit.
    let ok = send(app.addr, post("/v1/bookings", &"k".repeat(255), BOOKING))
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_quoted_key_is_the_bare_key() {
    let app = default_app().await;
    let first = send(app.addr, post("/v1/bookings", "abc", BOOKING))
        .await
        .unwrap();
    let quoted = send(app.addr, post("/v1/bookings", "\"abc\"", BOOKING))
        .await
        .unwrap();
    assert!(quoted.replayed());
    assert_eq!(quoted.body, first.body);
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_c3_replay_is_byte_identical_with_the_replay_header() {
    let app = default_app().await;
    let first = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    // Keys reordered, whitespace changed: the same JSON value, so the same request.
    let retry = send(app.addr, post("/v1/bookings", "k1", BOOKING_REORDERED))
        .await
        .unwrap();
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    for h in ["content-type", "location", "etag"] {
        assert_eq!(retry.header(h), first.header(h), "{h}");
    }
    assert_eq!(
        retry.header("x-not-replayed"),
        None,
        "only the configured headers are kept"
    );
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_c4_conflict_is_409_and_never_a_replay() {
    let app = default_app().await;
    send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    let r = send(app.addr, post("/v1/bookings", "k1", OTHER_BOOKING))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "idempotency_key_conflict");
    assert!(!r.replayed());
    // The same body on another path is another request too.
    let r = send(app.addr, post("/open", "k1", BOOKING)).await.unwrap();
    assert_eq!(r.code(), "idempotency_key_conflict");
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_h8_ietf_preset_answers_422_problem_json() {
    let app = start(memory_store(), Contract::ietf()).await;
    send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    let r = send(app.addr, post("/v1/bookings", "k1", OTHER_BOOKING))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["status"], 422);
    assert_eq!(p["code"], "idempotency_key_conflict");
    assert!(p["detail"].is_string() && p["title"].is_string() && p["type"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6_c5_in_progress_is_409_with_retry_after_then_the_replay() {
    let mut app = default_app().await;
    let addr = app.addr;
    let first = tokio::spawn(send(addr, post("/slow", "k1", BOOKING)));
    app.entered().await;
    let r = send(addr, post("/slow", "k1", BOOKING_REORDERED))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "idempotency_in_progress");
    assert_eq!(r.header("retry-after"), Some("1"));
    app.open_gate(1);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(addr, post("/slow", "k1", BOOKING)).await.unwrap();
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_fifty_concurrent_identical_requests_make_one_booking() {
    let mut app = default_app().await;
    let addr = app.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        tasks.spawn(send(addr, post("/slow", "k-storm", BOOKING)));
    }
    // One of them runs and waits at the gate; the other 49 are answered without running.
    app.entered().await;
    let mut in_progress = 0;
    for _ in 0..49 {
        let r = tasks.join_next().await.unwrap().unwrap().unwrap();
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "idempotency_in_progress");
        in_progress += 1;
    }
    app.open_gate(1);
    let winner = tasks.join_next().await.unwrap().unwrap().unwrap();
    assert_eq!(winner.status, StatusCode::CREATED);
    assert_eq!(in_progress, 49);
    assert_eq!(app.calls(), 1, "one booking");
    let replay = send(addr, post("/slow", "k-storm", BOOKING)).await.unwrap();
    assert_eq!(replay.body, winner.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7_the_same_key_under_two_tokens_is_two_keys() {
    let app = default_app().await;
    let alice = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    let mut bob = post("/v1/bookings", "k1", BOOKING);
    bob.headers_mut()
        .insert("authorization", "Bearer tok_bob".parse().unwrap());
    let bob = send(app.addr, bob).await.unwrap();
    assert_eq!(alice.status, StatusCode::CREATED);
    assert_eq!(bob.status, StatusCode::CREATED);
    assert!(!bob.replayed());
    assert_ne!(alice.body, bob.body);
    assert_eq!(app.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7_no_credentials_no_scope_is_401() {
    let app = default_app().await;
    let mut req = post("/v1/bookings", "k1", BOOKING);
    req.headers_mut().remove("authorization");
    let r = send(app.addr, req).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthenticated");
    assert_eq!(app.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h8_every_error_body_has_code_and_message() {
    let app = default_app().await;
    let r = send(app.addr, request("POST", "/v1/bookings", None, BOOKING))
        .await
        .unwrap();
    let v = r.json();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1);
    let err = v["error"].as_object().unwrap();
    assert_eq!(err.len(), 2);
    assert!(err["code"].is_string());
    assert!(!err["message"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h9_oversized_body_is_413_before_any_reservation() {
    let app = start(memory_store(), Contract::default().max_request_body(64)).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100));
    let r = send(app.addr, post("/v1/bookings", "k1", &big))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "request_too_large");
    // A body with no declared length is cut off at the limit too.
    let (a, b) = big.split_at(big.len() / 2);
    let body = Unsized(vec![Bytes::from(b.to_owned()), Bytes::from(a.to_owned())]);
    let req = http::Request::post("/v1/bookings")
        .header("authorization", crate::http_support::TOKEN)
        .header("idempotency-key", "k1")
        .body(body)
        .unwrap();
    let r = send(app.addr, req).await.unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.calls(), 0);
    // Nothing was reserved: the key is free for a request within the limit.
    let r = send(app.addr, post("/v1/bookings", "k1", "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(app.calls(), 1);
}

/// A body of unknown length, in two frames.
struct Unsized(Vec<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_5xx_releases_the_key() {
    let app = default_app().await;
    let r = send(app.addr, post("/fail", "k1", "{}")).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = send(app.addr, post("/fail", "k1", "{}")).await.unwrap();
    assert!(!r.replayed());
    assert_eq!(r.text(), "failure 2");
    assert_eq!(app.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_panicking_handler_releases_the_key() {
    let app = default_app().await;
    let r = send(app.addr, post("/panic", "k1", "{}")).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.code(), "idempotency_handler_failed");
    let r = send(app.addr, post("/panic", "k1", "{}")).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(!r.replayed());
    assert_eq!(app.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_panicking_handler_run_inline_releases_the_key() {
    let store = memory_store();
    let layer = IdempotencyLayer::new(store.clone(), Contract::default())
        .unwrap()
        .run_inline();
    let app = start_layer(store, layer).await;
    assert!(
        send(app.addr, post("/panic", "k1", "{}")).await.is_err(),
        "the connection dies with the handler"
    );
    let r = send(app.addr, post("/panic", "k1", "{}")).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(app.calls(), 2);
}

/// Hangs up on `/slow` once its handler has entered, the handler still held at its gate.
async fn hang_up_mid_handler(app: &mut App) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let hang_up = tokio::spawn(send_and_hang_up(
        app.addr,
        post("/slow", "k1", BOOKING),
        async {
            rx.await.unwrap();
        },
    ));
    app.entered().await;
    tx.send(()).unwrap();
    hang_up.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h11_a_client_that_hangs_up_mid_handler_gets_the_stored_response_on_retry() {
    let mut app = default_app().await;
    hang_up_mid_handler(&mut app).await;
    // The handler runs on in its own task and its response is stored.
    app.open_gate(1);
    app.layer.idle().await;
    let r = send(app.addr, post("/slow", "k1", BOOKING)).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.replayed(), "the retry replays the first execution");
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h11_run_inline_a_client_that_hangs_up_leaves_the_key_in_flight() {
    let store = memory_store();
    let layer = IdempotencyLayer::new(store.clone(), Contract::default())
        .unwrap()
        .run_inline();
    let mut app = start_layer(store, layer).await;
    hang_up_mid_handler(&mut app).await;
    // The server drops the handler with the connection; its effect may have happened, so the
    // key is not released: the retry waits for the lease.
    app.dropped().await;
    app.layer.idle().await;
    let r = send(app.addr, post("/slow", "k1", BOOKING)).await.unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "idempotency_in_progress");
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_a_service_error_releases_the_key() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};
    let layer =
        idemstore::http::IdempotencyLayer::new(memory_store(), Contract::default()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = layer.layer(tower::service_fn(move |_req: http::Request<_>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err("the first call fails")
            } else {
                Ok(http::Response::new(Full::new(Bytes::from("ok"))))
            }
        }
    }));
    assert!(svc.clone().oneshot(post("/x", "k1", "{}")).await.is_err());
    let r = svc.clone().oneshot(post("/x", "k1", "{}")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_stripe_like_stores_every_result() {
    // On a store with the default policy (2xx only): the preset needs nothing of the store.
    let app = start(memory_store(), Contract::stripe_like()).await;
    let first = send(app.addr, post("/fail", "k1", "{}")).await.unwrap();
    let again = send(app.addr, post("/fail", "k1", "{}")).await.unwrap();
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c12_a_response_too_large_to_keep_is_sent_whole_and_replayed_as_a_note() {
    let app = start(
        memory_store(),
        Contract::default().max_stored_response(1024),
    )
    .await;
    let first = send(app.addr, post("/big", "k1", "{}")).await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.body.len(),
        10_000,
        "the client that ran it gets all of it"
    );
    assert!(first.body.iter().all(|&b| b == b'x'));
    let retry = send(app.addr, post("/big", "k1", "{}")).await.unwrap();
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(retry.header("etag"), first.header("etag"));
    assert_eq!(retry.header("content-type"), Some("application/json"));
    assert_eq!(retry.code(), "idempotent_response_too_large");
    assert_eq!(app.calls(), 1, "the operation is not run again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_fails_closed_with_503() {
    let store = memory_store();
    let app = start(store.clone(), Contract::default()).await;
    store.close().unwrap();
    let r = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "idempotency_unavailable");
    assert_eq!(app.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_fails_open_when_chosen() {
    let store = memory_store();
    let app = start(
        store.clone(),
        Contract::default().on_store_error(OnStoreError::FailOpen),
    )
    .await;
    store.close().unwrap();
    let r = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(app.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h8_problem_style_on_every_refusal() {
    let app = start(
        memory_store(),
        Contract::default().error_style(ErrorStyle::Problem),
    )
    .await;
    let r = send(app.addr, request("POST", "/v1/bookings", None, "{}"))
        .await
        .unwrap();
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], "missing_idempotency_key");
}

#[tokio::test]
async fn h17_a_retry_during_the_first_attempt_waits_for_it_and_gets_its_response() {
    let mut app = start(
        memory_store(),
        Contract::default().wait_in_progress(Duration::from_secs(30)),
    )
    .await;
    let addr = app.addr;
    let first = tokio::spawn(async move { send(addr, post("/slow", "w1", "{}")).await });
    app.entered().await;
    let retry = tokio::spawn(async move { send(addr, post("/slow", "w1", "{}")).await });
    // The retry waits (no 409): let the first attempt finish once it does.
    let waited = std::time::Instant::now();
    while app.store.stats().waiting == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the retry never waited"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    app.open_gate(1);
    let first = first.await.unwrap().unwrap();
    let retry = retry.await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text());
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(app.calls(), 1);
    // The bound ends in the usual 409 with Retry-After.
    let mut app = start(
        memory_store(),
        Contract::default().wait_in_progress(Duration::from_millis(20)),
    )
    .await;
    let addr = app.addr;
    let _held = tokio::spawn(async move { send(addr, post("/slow", "w2", "{}")).await });
    app.entered().await;
    let busy = send(addr, post("/slow", "w2", "{}")).await.unwrap();
    assert_eq!(busy.status, StatusCode::CONFLICT);
    assert_eq!(busy.code(), "idempotency_in_progress");
    assert!(busy.header("retry-after").is_some());
    app.open_gate(1);
}

/// H19: every response carries the layer's `Outcome`, for outer layers and access logs: an
/// execution, a replay, an in-progress and a conflict `409` (same status, told apart), a
/// refusal, a request the contract does not guard, and a store that cannot answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h19_every_response_carries_what_the_layer_did() {
    let store = crate::http_support::memory_store();
    let mut app = crate::http_support::start_observed(store.clone(), Contract::default()).await;
    let addr = app.addr;
    let outcome = |r: &crate::http_support::Reply| r.header("x-outcome").unwrap_or("").to_owned();
    let first = send(addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert_eq!(outcome(&first), "executed");
    let again = send(addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert_eq!(outcome(&again), "replayed");
    let other = send(addr, post("/v1/bookings", "k1", OTHER_BOOKING))
        .await
        .unwrap();
    assert_eq!(
        (other.status, outcome(&other).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let slow = tokio::spawn(send(addr, post("/slow", "k2", BOOKING)));
    app.entered().await;
    let busy = send(addr, post("/slow", "k2", BOOKING)).await.unwrap();
    assert_eq!(
        (busy.status, outcome(&busy).as_str()),
        (StatusCode::CONFLICT, "in_progress")
    );
    app.open_gate(1);
    assert_eq!(outcome(&slow.await.unwrap().unwrap()), "executed");
    let keyless = send(addr, request("POST", "/v1/bookings", None, BOOKING))
        .await
        .unwrap();
    assert_eq!(outcome(&keyless), "refused");
    let read = send(addr, request("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    assert_eq!(outcome(&read), "unguarded");
    let failed = send(addr, post("/fail", "k3", BOOKING)).await.unwrap();
    assert_eq!(
        outcome(&failed),
        "executed",
        "a 5xx is still the one execution"
    );
    store.close().unwrap();
    let down = send(addr, post("/v1/bookings", "k4", BOOKING))
        .await
        .unwrap();
    assert_eq!(
        (down.status, outcome(&down).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );
}

/// H20: an error responder shapes every error the layer makes, a refusal, a conflict, an
/// in-progress and the note stored in place of a response too large to keep, while the layer
/// keeps what it decides: `Retry-After` on an in-progress answer and the outcome of each.
#[tokio::test]
async fn h20_an_error_responder_shapes_every_error_the_layer_makes() {
    let contract = Contract::default()
        .max_stored_response(1024)
        .error_responder(|e: &idemstore::http::ErrorAnswer<'_>| {
            let body = format!(
                r#"{{"errors":[{{"code":"{}","status":{}}}]}}"#,
                e.code(),
                e.status().as_u16()
            );
            http::Response::builder()
                .status(e.status())
                .header("content-type", "application/vnd.api+json")
                .body(Bytes::from(body))
                .unwrap()
        });
    let store = crate::http_support::memory_store();
    let mut app = crate::http_support::start_observed(store, contract).await;
    let addr = app.addr;
    let shaped = |r: &crate::http_support::Reply, code: &str| {
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.api+json"),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["errors"][0]["code"], code);
        assert_eq!(r.json()["errors"][0]["status"], r.status.as_u16());
    };
    let keyless = send(addr, request("POST", "/v1/bookings", None, BOOKING))
        .await
        .unwrap();
    assert_eq!(keyless.status, StatusCode::BAD_REQUEST);
    shaped(&keyless, idemstore::http::code::MISSING_KEY);
    assert_eq!(keyless.header("x-outcome"), Some("refused"));

    send(addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    let other = send(addr, post("/v1/bookings", "k1", OTHER_BOOKING))
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::CONFLICT);
    shaped(&other, idemstore::http::code::CONFLICT);
    assert_eq!(other.header("x-outcome"), Some("conflict"));

    let slow = tokio::spawn(send(addr, post("/slow", "k2", BOOKING)));
    app.entered().await;
    let busy = send(addr, post("/slow", "k2", BOOKING)).await.unwrap();
    shaped(&busy, idemstore::http::code::IN_PROGRESS);
    assert!(
        busy.header("retry-after").is_some(),
        "the layer's header stays"
    );
    assert_eq!(busy.header("x-outcome"), Some("in_progress"));
    app.open_gate(1);
    slow.await.unwrap().unwrap();

    send(addr, post("/big", "k3", "{}")).await.unwrap();
    let noted = send(addr, post("/big", "k3", "{}")).await.unwrap();
    assert!(noted.replayed());
    shaped(&noted, idemstore::http::code::RESPONSE_NOT_KEPT);
}

/// H21: a contract's time to live and lease hold its routes' keys, whatever the store's: two
/// layers on one store, one replaying for 10 s, the other holding its keys for a 120 s lease;
/// terms out of range are refused when the layer is made.
#[tokio::test]
async fn h21_a_contracts_ttl_and_lease_hold_its_routes_keys_on_one_store() {
    let clock = idemstore::ManualClock::new(crate::support::T0);
    let store = crate::support::memory(&clock);
    let short = IdempotencyLayer::new(
        store.clone(),
        Contract::default().ttl(Duration::from_secs(10)),
    )
    .unwrap();
    let mut app = crate::http_support::start_layer(store.clone(), short).await;
    let first = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(9));
    let again = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert!(again.replayed());
    assert_eq!(again.text(), first.text());
    clock.advance(Duration::from_secs(1));
    let later = send(app.addr, post("/v1/bookings", "k1", BOOKING))
        .await
        .unwrap();
    assert!(!later.replayed(), "past the route's 10 s, the key is new");
    assert_eq!(app.calls(), 2);

    let slow = tokio::spawn(send(app.addr, post("/slow", "k2", BOOKING)));
    app.entered().await;
    let held_key = |k: &str| {
        let records = store.records(None, 100).unwrap();
        records.into_iter().find(|r| r.key == k).unwrap()
    };
    let held = held_key("k2");
    assert_eq!(
        held.lease_deadline,
        Some(idemstore::Clock::now_millis(&clock) + 60_000)
    );
    app.open_gate(1);
    slow.await.unwrap().unwrap();

    let long = IdempotencyLayer::new(
        store.clone(),
        Contract::default().lease(Duration::from_secs(120)),
    )
    .unwrap();
    let mut app = crate::http_support::start_layer(store.clone(), long).await;
    let slow = tokio::spawn(send(app.addr, post("/slow", "k3", BOOKING)));
    app.entered().await;
    let held = held_key("k3");
    assert_eq!(
        held.lease_deadline,
        Some(idemstore::Clock::now_millis(&clock) + 120_000)
    );
    app.open_gate(1);
    slow.await.unwrap().unwrap();

    let refused = IdempotencyLayer::new(store, Contract::default().ttl(Duration::ZERO));
    let err = refused.err().unwrap();
    assert!(matches!(
        err,
        idemstore::http::ContractError::OutOfRange(ref e) if e.setting() == "ttl"
    ));
    assert!(std::error::Error::source(&err).is_some());
}
