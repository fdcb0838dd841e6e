//! A hostile client against the store and the layer: inputs crafted to break a promise rather
//! than to use the API. Each test names the rule of `docs/contract.md` it defends and fails on
//! the code that had the hole.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use axum::response::IntoResponse;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use idemstore::http::{Contract, IdempotencyLayer, RequestBody};
use idemstore::{Begin, Config, Store};

use crate::support::fp;

/// The child's store file.
const DB: &str = "IDEMSTORE_ADVERSARIAL_DB";
const SCOPE: &str = "tenant-1";
/// Keys ground so the low 17 bits of their digests agree: the default index's buckets.
const GROUND_BITS: u32 = 17;
const GROUND_KEYS: usize = 100;
/// The child's address space, so a runaway allocation fails the child, not the machine.
const CHILD_ADDRESS_SPACE_KIB: u64 = 4 << 20;
/// The child's resident memory at its peak may not pass this.
const MAX_PEAK_RSS_KIB: u64 = 512 << 10;

/// Keys whose unkeyed record digests (`docs/format.md`: BLAKE3 over the length-framed scope
/// and key) share their low `bits` bits, found as a client finds them: by trying.
fn ground_keys(scope: &str, bits: u32, count: usize) -> Vec<String> {
    let mask = (1u64 << bits) - 1;
    let mut keys = Vec::with_capacity(count);
    let mut buf = String::new();
    for i in 0u64.. {
        if keys.len() == count {
            break;
        }
        buf.clear();
        std::fmt::Write::write_fmt(&mut buf, format_args!("k{i}")).unwrap();
        let mut h = blake3::Hasher::new();
        h.update(&(scope.len() as u32).to_le_bytes());
        h.update(scope.as_bytes());
        h.update(&(buf.len() as u32).to_le_bytes());
        h.update(buf.as_bytes());
        let digest = h.finalize();
        let low = u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap());
        if low & mask == 0 {
            keys.push(buf.clone());
        }
    }
    keys
}

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child of `h10_...`: reserves every ground key on a file store with the default
/// settings, then prints its peak resident memory.
#[test]
#[ignore = "run by h10_ground_keys_leave_memory_bounded in a child process"]
fn h10_child_reserves_ground_keys() {
    let Ok(path) = std::env::var(DB) else { return };
    let config = Config::builder().log_capacity(1 << 20).build().unwrap();
    let store = Store::open(&path, config).unwrap();
    let scope = idemstore::Scope::new(SCOPE).unwrap();
    let mut held = Vec::new();
    for key in ground_keys(SCOPE, GROUND_BITS, GROUND_KEYS) {
        let key = store.key(&key).unwrap();
        match store.begin(&scope, &key, &fp("ground")).unwrap() {
            Begin::Execute(r) => held.push(r),
            other => panic!("a new key was answered {other:?}"),
        }
    }
    println!("PEAK_RSS_KIB {}", peak_rss_kib());
    drop(held);
    store.close().unwrap();
}

/// H10: keys a client grinds so their record digests share a map's bucket bits cannot make
/// the store's memory grow: every in-memory map hashes with a secret seed. Before the seed,
/// 90 such keys drove the hot index into resizing to the same capacity again and again, and
/// the process died of memory exhaustion.
#[test]
fn h10_ground_keys_leave_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ground.redb");
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "ulimit -v {CHILD_ADDRESS_SPACE_KIB} && exec \"$0\" --ignored --exact \
         adversarial::h10_child_reserves_ground_keys --nocapture"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .arg(&exe)
        .env(DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let peak = out.stdout.lines().map_while(Result::ok).find_map(|l| {
        l.strip_prefix("PEAK_RSS_KIB ")
            .and_then(|v| v.parse::<u64>().ok())
    });
    let Some(peak) = peak else {
        panic!(
            "the child died ({}) before reporting: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(out.status.success(), "child: {}", out.status);
    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "{GROUND_KEYS} ground keys took the child to {peak} KiB"
    );
}

/// First attempts dropped in the sweep (at least 200, rule H11's test).
const SWEEP: usize = 240;
/// The effectful handler's steps: yields before its effect, the effect, yields after it.
const STEPS: usize = 8;
/// The step a handler is at once it has returned.
const RETURNED: usize = STEPS + 1;

/// Per key: how many times the operation ran, and how far its latest execution got.
type Progress = Arc<Mutex<HashMap<String, (u32, usize)>>>;

/// A service with an effect in the middle of its work: it yields, records one execution for
/// the request's key at step 4, yields again, and answers `201` with the execution's number.
fn effectful(
    progress: Progress,
) -> impl tower::Service<
    http::Request<RequestBody<Full<Bytes>>>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: http::Request<RequestBody<Full<Bytes>>>| {
        let progress = progress.clone();
        async move {
            let key = req.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let mut n = 0;
            for step in 1..=STEPS {
                {
                    let mut p = progress.lock().unwrap();
                    let entry = p.entry(key.clone()).or_default();
                    if step == STEPS / 2 {
                        entry.0 += 1;
                    }
                    entry.1 = step;
                    n = entry.0;
                }
                tokio::task::yield_now().await;
            }
            progress.lock().unwrap().entry(key).or_default().1 = RETURNED;
            let mut response = http::Response::new(Full::new(Bytes::from(format!("run {n}"))));
            *response.status_mut() = http::StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    })
}

fn guarded_post(key: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/transfers")
        .header("authorization", "Bearer t")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"amount":10}"#)))
        .unwrap()
}

/// Where try `t` of the sweep drops its first attempt: before any poll, once the handler
/// reached a step, or some polls after it returned (while its response is being stored).
#[derive(Debug, Clone, Copy)]
enum DropAt {
    Unpolled,
    Step(usize),
    AfterReturn(usize),
}

fn drop_at(t: usize) -> DropAt {
    match t % (STEPS + 4) {
        0 => DropAt::Unpolled,
        s @ 1..=STEPS => DropAt::Step(s),
        _ => DropAt::AfterReturn(t / (STEPS + 4)),
    }
}

/// Polls `future`, yielding to the runtime between polls, until the handler of `key` reaches
/// `at`, then drops it: a client that goes away at that instant. True if it finished first.
async fn poll_then_drop<F: Future>(future: F, at: DropAt, progress: &Progress, key: &str) -> bool {
    let mut future = std::pin::pin!(future);
    let step = || progress.lock().unwrap().get(key).map_or(0, |p| p.1);
    let (target, mut extra) = match at {
        DropAt::Unpolled => return false,
        DropAt::Step(s) => (s, 0),
        DropAt::AfterReturn(polls) => (RETURNED, polls),
    };
    loop {
        let done =
            std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await;
        if done {
            return true;
        }
        if step() >= target {
            if extra == 0 {
                return false;
            }
            extra -= 1;
        }
        tokio::task::yield_now().await;
    }
}

/// Runs the sweep on `layer`; returns how many first attempts were dropped after their
/// operation's effect, unfinished.
async fn disconnect_sweep(layer: IdempotencyLayer, retry_must_replay: bool) -> usize {
    use tower::{Layer, ServiceExt};
    let progress = Progress::default();
    let service = layer.layer(effectful(progress.clone()));
    let mut after_effect = 0;
    for t in 0..SWEEP {
        let key = format!("sweep-{t}");
        let first = service.clone().oneshot(guarded_post(&key));
        let finished = poll_then_drop(first, drop_at(t), &progress, &key).await;
        let ran = progress.lock().unwrap().get(&key).map_or(0, |p| p.0);
        after_effect += usize::from(!finished && ran == 1);
        layer.idle().await;
        let retry = service.clone().oneshot(guarded_post(&key)).await.unwrap();
        let ran = progress.lock().unwrap().get(&key).map_or(0, |p| p.0);
        assert!(
            ran <= 1,
            "{key} ({:?}): the operation ran {ran} times",
            drop_at(t)
        );
        if retry_must_replay {
            assert_eq!(retry.status(), http::StatusCode::CREATED, "{key}");
            assert_eq!(ran, 1, "{key}");
            let body = retry.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "run 1", "{key}: the retry answers the one execution");
        } else {
            // Inline: a first attempt dropped mid-handler leaves its key in flight.
            assert!(
                matches!(retry.status().as_u16(), 201 | 409),
                "{key}: {}",
                retry.status()
            );
        }
    }
    after_effect
}

/// H11: a client that disconnects at any instant of a guarded call never makes the operation
/// run twice, and with an executor (tokio here) the retry gets the first execution's answer.
/// Before, the layer released the key when the request's future was dropped, and the retry
/// ran the operation again while the first execution's effect landed anyway.
#[tokio::test(flavor = "current_thread")]
async fn h11_a_disconnect_at_any_instant_never_runs_an_operation_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::builder().log_capacity(1 << 20).build().unwrap();
    let store = Store::open(dir.path().join("sweep.redb"), config).unwrap();
    let layer = IdempotencyLayer::new(store, Contract::default()).unwrap();
    let after_effect = disconnect_sweep(layer, true).await;
    // The sweep crossed the commit window: drops after the effect, before the answer.
    assert!(
        after_effect > SWEEP / 4,
        "{after_effect} drops after the effect"
    );

    for store in [
        Store::in_memory(Config::default()).unwrap(),
        Store::open(
            dir.path().join("inline.redb"),
            Config::builder().log_capacity(1 << 20).build().unwrap(),
        )
        .unwrap(),
    ] {
        let layer = IdempotencyLayer::new(store, Contract::default())
            .unwrap()
            .run_inline();
        let after_effect = disconnect_sweep(layer, false).await;
        assert!(
            after_effect > SWEEP / 4,
            "{after_effect} drops after the effect"
        );
    }
}

/// Sends `request` through `app` and returns (status, headers, body).
async fn through(
    app: &axum::Router,
    request: http::Request<axum::body::Body>,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    use tower::ServiceExt;
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn keyed(
    method: &str,
    uri: &str,
    key: Option<&str>,
    content_type: &str,
    body: &'static str,
) -> http::Request<axum::body::Body> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer t")
        .header("content-type", content_type);
    if let Some(key) = key {
        b = b.header("idempotency-key", key);
    }
    b.body(axum::body::Body::from(body)).unwrap()
}

/// A guarded `POST` with `key` through `app`.
async fn post_to(
    app: &axum::Router,
    uri: &str,
    key: &str,
    content_type: &str,
    body: &'static str,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    through(app, keyed("POST", uri, Some(key), content_type, body)).await
}

fn code_of(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// A handler that counts its calls under `name` and answers with them.
fn counted(
    name: &'static str,
    calls: &Arc<Mutex<HashMap<String, u32>>>,
) -> axum::routing::MethodRouter {
    let calls = calls.clone();
    axum::routing::post(move || async move {
        let n = {
            let mut calls = calls.lock().unwrap();
            let n = calls.entry(name.to_owned()).or_default();
            *n += 1;
            *n
        };
        (http::StatusCode::CREATED, format!("{name} {n}"))
    })
}

/// H12: under `Router::nest` the layer matches routes and fingerprints on the original path,
/// so one layer inside two sub-routers neither replays one endpoint's answer for the other
/// nor stops guarding a route named by its full path. Before, `POST /v2/orders` with the key
/// of `POST /v1/orders` got the v1 answer, and `Contract::routes(["/v1/orders"])` guarded
/// nothing under the nest.
#[tokio::test]
async fn h12_nested_routers_neither_merge_nor_unguard_endpoints() {
    let store = Store::in_memory(Config::default()).unwrap();
    let calls = Arc::default();
    let layer = IdempotencyLayer::new(store.clone(), Contract::default()).unwrap();
    let app = axum::Router::new()
        .nest(
            "/v1",
            axum::Router::new()
                .route("/orders", counted("v1", &calls))
                .layer(layer.clone()),
        )
        .nest(
            "/v2",
            axum::Router::new()
                .route("/orders", counted("v2", &calls))
                .layer(layer),
        );
    let json = "application/json";
    let (status, _, body) = through(&app, keyed("POST", "/v1/orders", Some("k"), json, "{}")).await;
    assert_eq!((status.as_u16(), &body[..]), (201, &b"v1 1"[..]));
    let (status, headers, body) =
        through(&app, keyed("POST", "/v2/orders", Some("k"), json, "{}")).await;
    assert!(
        headers.get("idempotent-replay").is_none(),
        "v1's answer replayed for v2: {body:?}"
    );
    assert_eq!(status, http::StatusCode::CONFLICT);
    assert_eq!(code_of(&body), "idempotency_key_conflict");

    // Routes named by their full paths stay guarded under the nest.
    let layer = IdempotencyLayer::new(store, Contract::default().routes(["/v1/orders"])).unwrap();
    let app = axum::Router::new().nest(
        "/v1",
        axum::Router::new()
            .route("/orders", counted("v1", &calls))
            .layer(layer),
    );
    let (status, _, body) = through(&app, keyed("POST", "/v1/orders", None, json, "{}")).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);
    assert_eq!(code_of(&body), "missing_idempotency_key");
    assert_eq!(calls.lock().unwrap().values().sum::<u32>(), 1);
}

fn one_route(contract: Contract, handler: axum::routing::MethodRouter) -> axum::Router {
    let store = Store::in_memory(Config::default()).unwrap();
    axum::Router::new()
        .route("/transfer", handler)
        .layer(IdempotencyLayer::new(store, contract).unwrap())
}

/// H13: by default the query string and the media type are part of the fingerprint, and the
/// method guard ignores case. Before, `?to=mallory` replayed `?to=alice`'s answer, and the
/// same bytes as `text/csv` and `text/plain` were one request.
#[tokio::test]
async fn h13_query_media_type_and_method_case_make_requests_distinct() {
    let calls = Arc::default();
    let app = one_route(Contract::default(), counted("transfer", &calls));
    let (status, _, _) = post_to(&app, "/transfer?to=alice", "q", "application/json", "{}").await;
    assert_eq!(status, http::StatusCode::CREATED);
    let (status, headers, body) =
        post_to(&app, "/transfer?to=mallory", "q", "application/json", "{}").await;
    assert!(headers.get("idempotent-replay").is_none());
    assert_eq!(
        (status, code_of(&body).as_str()),
        (http::StatusCode::CONFLICT, "idempotency_key_conflict")
    );
    // The same query again is the retry.
    let (_, headers, _) = post_to(&app, "/transfer?to=alice", "q", "application/json", "{}").await;
    assert_eq!(headers["idempotent-replay"], "true");

    post_to(&app, "/transfer", "m", "text/csv", "a,b").await;
    let (status, headers, _) = post_to(&app, "/transfer", "m", "text/plain", "a,b").await;
    assert!(headers.get("idempotent-replay").is_none());
    assert_eq!(status, http::StatusCode::CONFLICT);
    // Parameters and case of the media type do not matter.
    let (_, headers, _) = post_to(&app, "/transfer", "m", "Text/CSV; charset=utf-8", "a,b").await;
    assert_eq!(headers["idempotent-replay"], "true");
    assert_eq!(calls.lock().unwrap()["transfer"], 2);

    // `post` is guarded as `POST` is: a missing key is refused before the handler.
    let guard = Contract::default();
    assert!(guard.guards(&http::Method::from_bytes(b"post").unwrap(), "/transfer"));
    assert!(guard.guards(&http::Method::from_bytes(b"Patch").unwrap(), "/transfer"));
}

/// H13: a response compressed inside the layer is replayed with its `Content-Encoding`, and a
/// retry whose `Accept-Encoding` refuses that coding is told so instead of getting bytes it
/// cannot read. Before, replays were gzip bytes labelled as plain JSON.
#[tokio::test]
async fn h13_a_compressed_response_replays_with_its_coding() {
    let gz: &[u8] = b"\x1f\x8b\x08\x00fake";
    let app = one_route(
        Contract::default(),
        axum::routing::post(move || async move {
            (
                http::StatusCode::CREATED,
                [
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                    ("vary", "accept-encoding"),
                ],
                gz,
            )
        }),
    );
    let ask = |accept: &'static str| {
        let mut r = keyed("POST", "/transfer", Some("z"), "application/json", "{}");
        r.headers_mut()
            .insert("accept-encoding", http::HeaderValue::from_static(accept));
        r
    };
    let (_, first_headers, first) = through(&app, ask("gzip")).await;
    let (status, headers, body) = through(&app, ask("gzip, deflate")).await;
    assert_eq!(status, http::StatusCode::CREATED);
    assert_eq!(headers["idempotent-replay"], "true");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], first_headers["vary"]);
    assert_eq!(body, first);
    let (status, _, body) = through(&app, ask("identity")).await;
    assert_eq!(status, http::StatusCode::NOT_ACCEPTABLE);
    assert_eq!(code_of(&body), "idempotency_replay_not_acceptable");
}

/// C7: a throttled answer is not stored by the presets that store errors, so the retry runs.
/// Before, `Contract::stripe_like()` replayed a `429` for a day, and refused to start on a
/// store with the default policy.
#[tokio::test]
async fn c7_transient_statuses_are_not_replayed_by_the_presets() {
    let calls = Arc::new(Mutex::new(0u32));
    let counter = calls.clone();
    let app = one_route(
        Contract::stripe_like(),
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                let mut n = counter.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    http::StatusCode::TOO_MANY_REQUESTS
                } else {
                    http::StatusCode::CREATED
                }
            }
        }),
    );
    let (status, _, _) = post_to(&app, "/transfer", "t", "application/json", "{}").await;
    assert_eq!(status, http::StatusCode::TOO_MANY_REQUESTS);
    let (status, headers, _) = post_to(&app, "/transfer", "t", "application/json", "{}").await;
    assert_eq!(status, http::StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(*calls.lock().unwrap(), 2);
}

/// H14: with the scope taken from the authenticated principal, a retry sent after a token
/// refresh is the same caller, and the scheme of an `Authorization` fallback is
/// case-insensitive. Before, the scope was a digest of the raw header: `bearer t` and a
/// refreshed token were new scopes, and the retry ran the operation again.
#[tokio::test]
async fn h14_a_principal_scope_survives_a_token_refresh() {
    use idemstore::Scope;
    use idemstore::http::Principal;
    let calls = Arc::default();
    let store = Store::in_memory(Config::default()).unwrap();
    let layer =
        IdempotencyLayer::new(store.clone(), Contract::default().scope_from_principal()).unwrap();
    // Two tokens of one user (before and after a refresh), one of another.
    let authenticate = |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
        let user = match req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some("Bearer old-token" | "Bearer refreshed-token") => "user_1",
            Some("Bearer other-user") => "user_2",
            _ => return http::StatusCode::UNAUTHORIZED.into_response(),
        };
        req.extensions_mut()
            .insert(Principal(Scope::new(user).unwrap()));
        next.run(req).await
    };
    let app = axum::Router::new()
        .route("/transfer", counted("transfer", &calls))
        .layer(layer)
        .layer(axum::middleware::from_fn(authenticate));
    let with_token = |token: &str| {
        let mut r = keyed("POST", "/transfer", Some("k"), "application/json", "{}");
        r.headers_mut()
            .insert("authorization", http::HeaderValue::from_str(token).unwrap());
        r
    };
    let (status, _, first) = through(&app, with_token("Bearer old-token")).await;
    assert_eq!(status, http::StatusCode::CREATED);
    let (_, headers, body) = through(&app, with_token("Bearer refreshed-token")).await;
    assert_eq!(
        headers["idempotent-replay"], "true",
        "the refreshed token is the same caller"
    );
    assert_eq!(body, first);
    let (status, headers, _) = through(&app, with_token("Bearer other-user")).await;
    assert_eq!(
        status,
        http::StatusCode::CREATED,
        "another user's key is another record"
    );
    assert!(headers.get("idempotent-replay").is_none());
    assert_eq!(calls.lock().unwrap()["transfer"], 2);

    // Without a principal the layer refuses rather than guess.
    let bare = axum::Router::new()
        .route("/transfer", counted("bare", &calls))
        .layer(
            IdempotencyLayer::new(store.clone(), Contract::default().scope_from_principal())
                .unwrap(),
        );
    let (status, _, body) = through(&bare, with_token("Bearer old-token")).await;
    assert_eq!(
        (status, code_of(&body).as_str()),
        (http::StatusCode::UNAUTHORIZED, "unauthenticated")
    );

    // The `Authorization` fallback: one credential however its scheme is spelled.
    let fallback = one_route(Contract::default(), counted("fallback", &calls));
    through(&fallback, with_token("Bearer t")).await;
    for spelling in ["bearer t", "BEARER \t t", "  Bearer t "] {
        let (_, headers, _) = through(&fallback, with_token(spelling)).await;
        assert_eq!(headers["idempotent-replay"], "true", "{spelling:?}");
    }
    let (_, headers, _) = through(&fallback, with_token("Bearer T")).await;
    assert!(
        headers.get("idempotent-replay").is_none(),
        "credentials are case-sensitive"
    );
}

/// H14: the `Authorization` digest is keyed by a secret (the store's, or the deployment's), so
/// a scope an operator tool prints does not let anyone test guesses of the credential offline.
#[test]
fn h14_the_authorization_scope_is_keyed_by_a_secret() {
    let (parts, _) = http::Request::post("/")
        .header("authorization", "Bearer password1")
        .body(())
        .unwrap()
        .into_parts();
    let unkeyed = blake3::hash(b"Bearer password1");
    let a = idemstore::http::scope_from_authorization(&parts, &[1; 32]).unwrap();
    let b = idemstore::http::scope_from_authorization(&parts, &[2; 32]).unwrap();
    assert_ne!(a, b);
    for scope in [&a, &b] {
        assert!(!scope.as_str().contains(&unkeyed.to_hex()[..32]), "{scope}");
    }
    // A bare API key (no scheme) compares case and all: two keys, two scopes.
    let bare = |value: &str| {
        let (parts, _) = http::Request::post("/")
            .header("authorization", value)
            .body(())
            .unwrap()
            .into_parts();
        idemstore::http::scope_from_authorization(&parts, &[1; 32]).unwrap()
    };
    assert_ne!(bare("sk_live_AbCdEf"), bare("sk_live_abcdef"));
    assert_eq!(bare("sk_live_AbCdEf"), bare(" sk_live_AbCdEf "));
}

/// C13 over HTTP: a tenant that makes new keys without end is refused `429
/// idempotency_scope_full` at the store's cap, before its handler runs; other tenants and the
/// tenant's own retries are served. Before, one client could make the store keep any number
/// of records (10,000 in 6 s, about 1.8 KB of file each).
#[tokio::test]
async fn c13_a_tenant_past_its_cap_of_live_keys_gets_429() {
    let calls = Arc::default();
    let store =
        Store::in_memory(Config::builder().max_records_per_scope(3).build().unwrap()).unwrap();
    let app = axum::Router::new()
        .route("/transfer", counted("transfer", &calls))
        .layer(IdempotencyLayer::new(store, Contract::default()).unwrap());
    let as_tenant = |token: &str, key: &str| {
        let mut r = keyed("POST", "/transfer", Some(key), "application/json", "{}");
        r.headers_mut()
            .insert("authorization", http::HeaderValue::from_str(token).unwrap());
        r
    };
    for k in ["k1", "k2", "k3"] {
        let (status, _, _) = through(&app, as_tenant("Bearer flood", k)).await;
        assert_eq!(status, http::StatusCode::CREATED);
    }
    let (status, _, body) = through(&app, as_tenant("Bearer flood", "k4")).await;
    assert_eq!(status, http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code_of(&body), "idempotency_scope_full");
    let (_, headers, _) = through(&app, as_tenant("Bearer flood", "k1")).await;
    assert_eq!(
        headers["idempotent-replay"], "true",
        "its own retries are served"
    );
    let (status, _, _) = through(&app, as_tenant("Bearer quiet", "k4")).await;
    assert_eq!(
        status,
        http::StatusCode::CREATED,
        "another tenant is served"
    );
    assert_eq!(calls.lock().unwrap()["transfer"], 4);
}

/// One data frame, then nothing, ever: a stream that never ends.
struct Endless(bool);

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if std::mem::take(&mut self.0) {
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"event\n\n",
            )))))
        } else {
            Poll::Pending
        }
    }
}

/// H11's bound: a guarded call whose client is gone is given up once its lease has passed,
/// whether its handler never answers or its response body never ends; its key stays in flight
/// (abandoned, C8), never released for a second execution. Before, such a call held its task
/// forever, and `IdempotencyLayer::idle` never resolved.
#[tokio::test]
async fn h11_a_call_whose_client_left_is_given_up_after_its_lease() {
    use tower::{Layer, ServiceExt};
    for handler_hangs in [true, false] {
        let config = Config::builder()
            .lease(std::time::Duration::from_millis(200))
            .build()
            .unwrap();
        let store = Store::in_memory(config).unwrap();
        let scope = idemstore::Scope::new("tenant").unwrap();
        let contract = Contract::default().constant_scope(scope.clone());
        let layer = IdempotencyLayer::new(store.clone(), contract).unwrap();
        let service = layer.layer(tower::service_fn(move |_req| async move {
            if handler_hangs {
                std::future::pending::<()>().await;
            }
            Ok::<_, Infallible>(http::Response::new(Endless(true)))
        }));
        // The client waits until its call is running, then goes.
        let mut first = Box::pin(service.clone().oneshot(guarded_post("endless")));
        while layer.running() == 0 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx).is_ready()));
            assert!(!polled.await, "the call never answers");
            tokio::task::yield_now().await;
        }
        drop(first);
        // An upper bound on the wait, not a sleep: the call is given up after its lease.
        let idle = tokio::time::timeout(std::time::Duration::from_secs(30), layer.idle()).await;
        assert!(idle.is_ok(), "the call was not given up after its lease");
        // Given up, not released: the record is still in flight (a retry may take it over now
        // that its lease has passed, C8, but nothing freed it early).
        let record = store.get(&scope, &store.key("endless").unwrap()).unwrap();
        assert_eq!(
            record.map(|r| r.state),
            Some(idemstore::State::InFlight),
            "handler hangs: {handler_hangs}"
        );
    }
}

/// A response body whose one frame waits for its gate: the bytes sent through it, or a panic
/// when the sender is dropped.
struct Gated(Option<tokio::sync::oneshot::Receiver<Bytes>>);

impl http_body::Body for Gated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let Some(gate) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        match std::pin::Pin::new(gate).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(bytes)) => {
                self.0 = None;
                Poll::Ready(Some(Ok(http_body::Frame::data(bytes))))
            }
            Poll::Ready(Err(_)) => panic!("the response body fails, as this test makes it"),
        }
    }
}

/// A layer on `store` in front of a handler that counts its calls and answers `201` at once,
/// with a body behind the gate it takes from `gates`.
fn gated_service(
    store: &Store,
    scope: &idemstore::Scope,
    gates: Arc<Mutex<Vec<tokio::sync::oneshot::Receiver<Bytes>>>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<idemstore::http::ResponseBody<Gated>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    use tower::Layer;
    let contract = Contract::default().constant_scope(scope.clone());
    let layer = IdempotencyLayer::new(store.clone(), contract).unwrap();
    layer.layer(tower::service_fn(move |_req| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let gate = gates.lock().unwrap().pop();
        async move {
            let mut response = http::Response::new(Gated(gate));
            *response.status_mut() = http::StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    }))
}

/// H16: the lease is renewed until the response is stored, not only while the handler's
/// future runs: a body that takes longer than a lease to produce keeps its key, and a retry
/// meanwhile gets `409` in progress. Before, renewals stopped when the handler returned its
/// response's head, and a retry past the lease took the key over and ran the operation again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h16_the_lease_is_renewed_while_a_slow_response_body_is_read() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};
    use tower::ServiceExt;
    let clock = idemstore::ManualClock::new(crate::support::T0);
    let config = Config::builder()
        .clock(clock.clone())
        .lease(Duration::from_millis(300))
        .build()
        .unwrap();
    let store = Store::in_memory(config).unwrap();
    let scope = idemstore::Scope::new("tenant").unwrap();
    let (send_body, gate) = tokio::sync::oneshot::channel();
    let calls = Arc::default();
    let gates = Arc::new(Mutex::new(vec![gate]));
    let service = gated_service(&store, &scope, gates, Arc::clone(&calls));
    let first = tokio::spawn(service.clone().oneshot(guarded_post("slow-body")));
    let key = store.key("slow-body").unwrap();
    let deadline = || {
        store
            .get(&scope, &key)
            .unwrap()
            .and_then(|r| r.lease_deadline)
    };
    while deadline().is_none() {
        tokio::task::yield_now().await;
    }
    assert_eq!(deadline(), Some(crate::support::T0 + 300));
    // The handler has returned its head; the layer now waits for the body. Renewals come
    // every third of a lease of real time: wait for one made at the advanced clock.
    clock.advance(Duration::from_millis(200));
    let waited = Instant::now();
    while deadline() != Some(crate::support::T0 + 500) {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no renewal while the body is read: {:?}",
            deadline()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.advance(Duration::from_millis(200));
    let retry = service
        .clone()
        .oneshot(guarded_post("slow-body"))
        .await
        .unwrap();
    assert_eq!(retry.status(), http::StatusCode::CONFLICT);
    let body = retry.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(code_of(&body), "idempotency_in_progress");
    send_body.send(Bytes::from_static(b"run 1")).unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), http::StatusCode::CREATED);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"run 1");
    assert_eq!(calls.load(SeqCst), 1);
    let replay = service.oneshot(guarded_post("slow-body")).await.unwrap();
    assert!(replay.headers().contains_key("idempotent-replay"));
    let body = replay.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"run 1");
}

/// H11: a response body that panics while the layer reads it fails the call as a handler's
/// panic does: its key is released (C6), and the request is answered `500`. Before, the key
/// stayed in flight for a whole lease, every retry answered `409` though nothing ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h11_a_response_body_that_panics_releases_its_key() {
    use tower::ServiceExt;
    let store = Store::in_memory(Config::default()).unwrap();
    let scope = idemstore::Scope::new("tenant").unwrap();
    let (dropped, gate) = tokio::sync::oneshot::channel::<Bytes>();
    drop(dropped);
    let gates = Arc::new(Mutex::new(vec![gate]));
    let service = gated_service(&store, &scope, gates, Arc::default());
    let first = service.oneshot(guarded_post("panicky")).await.unwrap();
    assert_eq!(first.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(code_of(&body), "idempotency_handler_failed");
    let record = store.get(&scope, &store.key("panicky").unwrap()).unwrap();
    assert_eq!(record.map(|r| r.state), None, "the key was not released");
}

/// H4: a response too large to keep, under a limit with no room for the note, is stored as
/// its status alone, so its retry still never runs the operation again; a contract whose
/// limit is below a status's room is refused. Before, the key was released and the retry ran
/// the operation a second time.
#[tokio::test]
async fn h4_a_response_too_large_for_its_note_still_keeps_its_status() {
    use tower::{Layer, ServiceExt};
    let config = Config::builder().max_response_bytes(64).build().unwrap();
    let store = Store::in_memory(config).unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let layer = IdempotencyLayer::new(store.clone(), Contract::default()).unwrap();
    let service = layer.layer(tower::service_fn(move |_req| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let mut response = http::Response::new(Full::new(Bytes::from(vec![b'x'; 400])));
            *response.status_mut() = http::StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    }));
    let first = service.clone().oneshot(guarded_post("big")).await.unwrap();
    assert_eq!(first.status(), http::StatusCode::CREATED);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body.len(),
        400,
        "the client that ran it gets the whole body"
    );
    let retry = service.oneshot(guarded_post("big")).await.unwrap();
    assert_eq!(retry.status(), http::StatusCode::CREATED);
    assert!(retry.headers().contains_key("idempotent-replay"));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    let refused = IdempotencyLayer::new(store, Contract::default().max_stored_response(8));
    assert!(matches!(
        refused,
        Err(
            idemstore::http::ContractError::StoredResponseLimitBelowFloor {
                contract: 8,
                floor: 64
            }
        )
    ));
}

/// H22: the same layer on a sub-router and around the app guards each request once: the
/// inner layer passes on a request the outer one holds. Before, the inner layer found the key
/// held by that very request and answered `409` in progress on every attempt, and the
/// handler never ran.
#[tokio::test]
async fn h22_a_layer_inside_a_layer_guards_each_request_once() {
    let store = Store::in_memory(Config::default()).unwrap();
    let calls = Arc::default();
    let layer = IdempotencyLayer::new(store, Contract::default()).unwrap();
    let orders = axum::Router::new()
        .route("/orders", counted("order", &calls))
        .layer(layer.clone());
    let app = axum::Router::new().nest("/v1", orders).layer(layer);
    let json = "application/json";
    let request = || keyed("POST", "/v1/orders", Some("nested"), json, "{}");
    let response = {
        use tower::ServiceExt;
        app.clone().oneshot(request()).await.unwrap()
    };
    assert_eq!(
        response.extensions().get::<idemstore::http::Outcome>(),
        Some(&idemstore::http::Outcome::Executed)
    );
    let (status, _, body) = through(&app, request()).await;
    assert_eq!((status.as_u16(), &body[..]), (201, &b"order 1"[..]));
    let (status, headers, body) = through(&app, request()).await;
    assert_eq!((status.as_u16(), &body[..]), (201, &b"order 1"[..]));
    assert!(headers.contains_key("idempotent-replay"));
    assert_eq!(calls.lock().unwrap().values().sum::<u32>(), 1);
}
