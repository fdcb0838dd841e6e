//! The `idemstore serve` binary itself: seed 000's story over HTTP, a SIGKILL after a completed
//! request, a restart on the same file, and the byte-identical replay; then a clean shutdown.
//! A key freed by `idemstore purge` or by expiry and reused: the bookings handler ties a create
//! to the parsed key and the request, never to the raw header alone. Accounts (128-bit ids, the
//! `Bearer` scheme in any case) and what a client can hold of the server: header and body read
//! timeouts, the body limit without the layer, the connection limit, and a shutdown bounded by
//! its grace period. Waits are upper bounds on polls, not sleeps that let something happen;
//! the one check that something does not happen (a connection beyond the limit is not served)
//! looks for a short, bounded time. The helpers that start the binary and list its bookings
//! serve the client's tests too (`client.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use tokio::net::TcpStream;

use crate::http_support::{Reply, closed_within, raw_write, read_raw_reply, send};

pub(crate) const BODY: &str =
    r#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
const BODY_RESPACED: &str = r#"{ "attendee": {"email": "a@b.com"}, "start": "2026-05-20T15:00:00Z", "event_type_id": "evt_1" }"#;
const OTHER: &str =
    r#"{"event_type_id":"evt_1","start":"2026-05-21T09:00:00Z","attendee":{"email":"a@b.com"}}"#;
const KEY: &str = "1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4";

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    /// The admin interface's address as printed (`http://…` or `unix:…`), with `--admin`.
    pub(crate) admin: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `idemstore serve` on a free port and reads the address it prints (and, with
/// `--admin`, the admin interface's).
pub(crate) fn serve(db: &Path, extra: &[&str]) -> Server {
    serve_logging(db, extra, "warn")
}

/// [`serve`] with the log filter `rust_log`; the log stays on the child's stderr, piped.
fn serve_logging(db: &Path, extra: &[&str], rust_log: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"));
    let admin = extra.contains(&"--admin").then(|| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line.trim()
            .rsplit(" on ")
            .next()
            .unwrap_or_else(|| panic!("no admin address in {line:?}"))
            .to_owned()
    });
    Server { child, addr, admin }
}

/// Sends SIGTERM and waits (at most `within`) for the process to exit.
fn terminate(server: &mut Server, within: Duration) -> ExitStatus {
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops the server cleanly (SIGTERM), so that its files can be opened by the operator tool.
pub(crate) fn stop(mut server: Server) {
    let exit = terminate(&mut server, Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
}

/// Runs an operator subcommand on the store file; returns its stdout.
fn operator(db: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The scopes of the records in the store file (`idemstore list --json`).
fn scopes(db: &Path) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(&operator(db, &["list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["scope"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn booking(
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", "Bearer tok_demo")
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

fn same_reply(a: &Reply, b: &Reply) {
    assert_eq!(a.status, b.status);
    assert_eq!(a.body, b.body, "byte for byte");
    for h in ["content-type", "location", "etag"] {
        assert_eq!(a.headers.get(h), b.headers.get(h), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_c10_serve_story_survives_sigkill_and_replays_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idem.redb");
    // Guarded handlers are held 2 s, so a duplicate sent alongside the first attempt finds it
    // in progress whichever of the two the server sees first.
    let server = serve(&db, &["--handler-delay-ms", "2000"]);
    let addr = server.addr;
    let (a, b) = tokio::join!(
        send(addr, booking("POST", "/v1/bookings", Some(KEY), BODY)),
        send(addr, booking("POST", "/v1/bookings", Some(KEY), BODY)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (first, busy) = if a.status == StatusCode::CREATED {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(busy.status, StatusCode::CONFLICT);
    assert_eq!(busy.code(), "idempotency_in_progress");
    assert_eq!(busy.header("retry-after"), Some("1"));
    let uid = first.json()["data"]["uid"].as_str().unwrap().to_owned();
    assert!(first.json()["meta"]["request_id"].is_string());

    // The retry, body respaced and reordered: the same booking, replayed.
    let retry = send(
        addr,
        booking("POST", "/v1/bookings", Some(KEY), BODY_RESPACED),
    )
    .await
    .unwrap();
    assert!(retry.replayed());
    same_reply(&retry, &first);

    // The key reused for another booking.
    let conflict = send(addr, booking("POST", "/v1/bookings", Some(KEY), OTHER))
        .await
        .unwrap();
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.code(), "idempotency_key_conflict");

    // Crash right after a completed request.
    drop(server);

    let server = serve(&db, &[]);
    let after = send(
        server.addr,
        booking("POST", "/v1/bookings", Some(KEY), BODY),
    )
    .await
    .unwrap();
    assert!(after.replayed());
    same_reply(&after, &first);
    let list = send(server.addr, booking("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    let data = list.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1, "one booking, no duplicate");
    assert_eq!(data[0]["uid"], uid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_if_match_and_idempotency_key_together() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    if_match_and_key_story(server.addr).await;
}

/// `If-Match` and `Idempotency-Key` on one booking, and the refusals of the guarded routes.
async fn if_match_and_key_story(addr: SocketAddr) {
    let created = send(addr, booking("POST", "/v1/bookings", Some("c1"), BODY))
        .await
        .unwrap();
    let uid = created.json()["data"]["uid"].as_str().unwrap().to_owned();
    let path = format!("/v1/bookings/{uid}");
    let shown = send(addr, booking("GET", &path, None, "")).await.unwrap();
    assert_eq!(shown.header("etag"), Some("\"v1\""));

    let mut resched = booking(
        "POST",
        &format!("{path}/reschedule"),
        Some("r1"),
        r#"{"start":"2026-06-01T10:00:00Z"}"#,
    );
    resched
        .headers_mut()
        .insert("if-match", "\"v1\"".parse().unwrap());
    let moved = send(addr, resched).await.unwrap();
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text());
    assert_eq!(moved.header("etag"), Some("\"v2\""));

    // A cancel from the stale version is refused...
    let mut stale = booking("POST", &format!("{path}/cancel"), Some("x1"), "");
    stale
        .headers_mut()
        .insert("if-match", "\"v1\"".parse().unwrap());
    let refused = send(addr, stale).await.unwrap();
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(refused.code(), "precondition_failed");

    // ...and one from the current version succeeds, and its retry is a replay, not a 412.
    for attempt in 0..2 {
        let mut cancel = booking("POST", &format!("{path}/cancel"), Some("x2"), "");
        cancel
            .headers_mut()
            .insert("if-match", "\"v2\"".parse().unwrap());
        let r = send(addr, cancel).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("etag"), Some("\"v3\""));
        assert_eq!(r.replayed(), attempt == 1);
    }

    // The guarded routes need the key; every request needs a token; bad bodies are 422.
    let r = send(
        addr,
        booking("PATCH", &path, None, r#"{"start":"2026-06-02T10:00:00Z"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.code(), "missing_idempotency_key");
    let mut anonymous = booking("GET", "/v1/bookings", None, "");
    anonymous.headers_mut().remove("authorization");
    assert_eq!(
        send(addr, anonymous).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    let bad = send(
        addr,
        booking("POST", "/v1/bookings", Some("b1"), r#"{"start":"soon"}"#),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.code(), "invalid_request");
}

#[test]
fn serve_shuts_down_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(&dir.path().join("idem.redb"), &[]);
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// The account's bookings' uids.
pub(crate) async fn uids(addr: SocketAddr) -> Vec<String> {
    let list = send(addr, booking("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["uid"].as_str().unwrap().to_owned())
        .collect()
}

/// `GET /metrics` answers the Prometheus text format without credentials: the layer's
/// outcomes and the store's answers under the store's name, and its gauges as of the scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m3_serve_exposes_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("bookings.redb"), &[]);
    for _ in 0..2 {
        let r = send(
            server.addr,
            booking("POST", "/v1/bookings", Some(KEY), BODY),
        )
        .await
        .unwrap();
        assert!(r.status.is_success(), "{}", r.text());
    }
    let scrape = Request::builder()
        .uri("/metrics")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let metrics = send(server.addr, scrape).await.unwrap();
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    let text = metrics.text();
    for line in [
        r#"idemstore_http_requests_total{store="bookings",outcome="executed"} 1"#,
        r#"idemstore_http_requests_total{store="bookings",outcome="replayed"} 1"#,
        r#"idemstore_begin_total{store="bookings",answer="execute"} 1"#,
        r#"idemstore_records{store="bookings",state="completed"} 1"#,
        r#"idemstore_records{store="bookings",state="in_flight"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(text.contains("idemstore_begin_seconds{store=\"bookings\",quantile="));
    assert!(text.contains("idemstore_file_bytes{store=\"bookings\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_purged_key_reused_for_another_booking_makes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idem.redb");
    let server = serve(&db, &[]);
    let first = send(
        server.addr,
        booking("POST", "/v1/bookings", Some(KEY), BODY),
    )
    .await
    .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let first_uid = first.json()["data"]["uid"].as_str().unwrap().to_owned();
    stop(server);

    // The operator frees the key; the next request with it runs the handler again.
    let scope = scopes(&db).pop().unwrap();
    operator(&db, &["purge", "--scope", &scope, "--key", KEY]);

    let server = serve(&db, &[]);
    let other = send(
        server.addr,
        booking("POST", "/v1/bookings", Some(KEY), OTHER),
    )
    .await
    .unwrap();
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text());
    assert!(!other.replayed());
    let data = &other.json()["data"];
    assert_ne!(
        data["uid"],
        first_uid.as_str(),
        "not the purged key's old booking"
    );
    assert_eq!(
        data["start"], "2026-05-21T09:00:00Z",
        "the new request's booking"
    );
    assert_eq!(uids(server.addr).await.len(), 2);
    // The key now belongs to the new booking: its retry is a replay of it.
    let retry = send(
        server.addr,
        booking("POST", "/v1/bookings", Some(KEY), OTHER),
    )
    .await
    .unwrap();
    assert!(retry.replayed());
    same_reply(&retry, &other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_quoted_spelling_of_a_key_replays_the_same_booking() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idem.redb");
    let server = serve(&db, &[]);
    let first = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("abc"), BODY),
    )
    .await
    .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let first_uid = first.json()["data"]["uid"].as_str().unwrap().to_owned();
    // The quoted spelling is the same key: a replay, with the body respaced.
    let quoted = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("\"abc\""), BODY_RESPACED),
    )
    .await
    .unwrap();
    assert!(quoted.replayed());
    same_reply(&quoted, &first);
    assert_eq!(
        uids(server.addr).await,
        vec![first_uid],
        "no second booking"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_expired_key_reused_for_another_booking_makes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &["--ttl-secs", "1"]);
    let addr = server.addr;
    let first = send(addr, booking("POST", "/v1/bookings", Some(KEY), BODY))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    // Another booking under the key is a conflict until the record expires (1 s), then it
    // runs as new.
    let deadline = Instant::now() + Duration::from_secs(30);
    let other = loop {
        let r = send(addr, booking("POST", "/v1/bookings", Some(KEY), OTHER))
            .await
            .unwrap();
        if r.status != StatusCode::CONFLICT {
            break r;
        }
        assert_eq!(r.code(), "idempotency_key_conflict");
        assert!(Instant::now() < deadline, "the record never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text());
    assert!(!other.replayed());
    assert_ne!(other.json()["data"]["uid"], first.json()["data"]["uid"]);
    assert_eq!(other.json()["data"]["start"], "2026-05-21T09:00:00Z");
    assert_eq!(uids(addr).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_account_ids_are_128_bits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idem.redb");
    let server = serve(&db, &[]);
    for (token, key) in [("Bearer tok_demo", "k1"), ("Bearer tok_other", "k2")] {
        let mut req = booking("POST", "/v1/bookings", Some(key), BODY);
        req.headers_mut()
            .insert("authorization", token.parse().unwrap());
        let r = send(server.addr, req).await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    stop(server);
    let scopes = scopes(&db);
    assert_eq!(scopes.len(), 2);
    assert_ne!(scopes[0], scopes[1]);
    for scope in &scopes {
        let hex = scope.strip_prefix("acct_").unwrap();
        assert!(hex.len() >= 32, "{scope}: fewer than 128 bits");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{scope}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let addr = server.addr;
    let created = send(addr, booking("POST", "/v1/bookings", Some("c1"), BODY))
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let uid = created.json()["data"]["uid"].as_str().unwrap().to_owned();
    let as_token = |auth: &'static str| {
        let mut req = booking("GET", "/v1/bookings", None, "");
        req.headers_mut()
            .insert("authorization", http::HeaderValue::from_static(auth));
        req
    };
    // Other spellings of the scheme and the separator: the same account, its booking.
    for auth in ["bearer tok_demo", "BEARER tok_demo", "Bearer \t  tok_demo"] {
        let r = send(addr, as_token(auth)).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{auth:?}: {}", r.text());
        let data = r.json()["data"].as_array().unwrap().clone();
        assert_eq!(data.len(), 1, "{auth:?}");
        assert_eq!(data[0]["uid"], uid.as_str(), "{auth:?}");
    }
    // A retry of the create with another spelling is a replay under the same scope.
    let mut retry = booking("POST", "/v1/bookings", Some("c1"), BODY);
    retry.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_static("bearer tok_demo"),
    );
    let retry = send(addr, retry).await.unwrap();
    assert!(retry.replayed(), "{}", retry.text());
    same_reply(&retry, &created);
    // No token, or another scheme: 401.
    for auth in ["Bearer ", "bearer \t", "Basic tok_demo"] {
        let r = send(addr, as_token(auth)).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.code(), "unauthenticated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_idempotency_refuses_bodies_over_1_mib() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &["--without-idempotency"]);
    let addr = server.addr;
    let within = Duration::from_secs(30);
    let limit = idemstore::http::DEFAULT_MAX_REQUEST_BODY;
    let head = |framing: String| {
        format!(
            "POST /v1/bookings HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer tok_demo\r\n\
             content-type: application/json\r\n{framing}\r\n\r\n"
        )
    };

    // A declared length over the limit: refused before the body is sent.
    let s = TcpStream::connect(addr).await.unwrap();
    assert!(
        raw_write(
            &s,
            head(format!("content-length: {}", limit + 1)).as_bytes()
        )
        .await
    );
    let r = read_raw_reply(&s, within).await.expect("a response");
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.code(), "request_too_large");

    // A chunked body: read up to the limit, then refused.
    let s = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&s, head("transfer-encoding: chunked".to_owned()).as_bytes()).await);
    assert!(raw_write(&s, format!("{:x}\r\n", limit + 1).as_bytes()).await);
    assert!(raw_write(&s, &vec![b' '; limit + 1]).await);
    let r = read_raw_reply(&s, within).await.expect("a response");
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.code(), "request_too_large");

    // Within the limit, a create (no key needed without the layer) still works.
    let ok = send(addr, booking("POST", "/v1/bookings", None, BODY))
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
}

const LIST: &str =
    "GET /v1/bookings HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer tok_demo\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_a_connection_whose_header_does_not_arrive_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        &dir.path().join("idem.redb"),
        &["--header-timeout-ms", "300"],
    );
    let addr = server.addr;
    // Half a request header, then nothing: the server hangs up (the bound is generous; the
    // timeout is 300 ms).
    let slow = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&slow, b"POST /v1/bookings HTTP/1.1\r\nhost: localhost\r\n").await);
    assert!(
        closed_within(&slow, Duration::from_secs(30)).await,
        "a half-sent header held its connection"
    );
    // A connection that says nothing at all, and an idle keep-alive connection after its
    // response, are closed the same way.
    let silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&silent, Duration::from_secs(30)).await);
    let idle = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&idle, LIST.as_bytes()).await);
    let r = read_raw_reply(&idle, Duration::from_secs(30))
        .await
        .expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(closed_within(&idle, Duration::from_secs(30)).await);
    // The server still serves.
    let ok = send(addr, booking("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_holds_connections_beyond_the_limit_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        &dir.path().join("idem.redb"),
        &["--max-connections", "1", "--header-timeout-ms", "600000"],
    );
    let addr = server.addr;
    let within = Duration::from_secs(30);
    // The first connection is served and stays open (keep-alive).
    let first = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&first, LIST.as_bytes()).await);
    let r = read_raw_reply(&first, within).await.expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    // The second one is not served while the first is open. (Proving that something does not
    // happen takes a wait; this one only bounds how long the check looks.)
    let second = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&second, LIST.as_bytes()).await);
    let early =
        tokio::time::timeout(Duration::from_millis(500), read_raw_reply(&second, within)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    // Once the first closes, the second is served.
    drop(first);
    let r = read_raw_reply(&second, within).await.expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigterm_with_a_half_sent_request_exits_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    // Header (and body) reads may take ten minutes: only the grace period can end this.
    let mut server = serve(
        &dir.path().join("idem.redb"),
        &[
            "--header-timeout-ms",
            "600000",
            "--body-timeout-ms",
            "600000",
            "--shutdown-grace-ms",
            "300",
        ],
    );
    let addr = server.addr;
    // A create whose body stops halfway, with the handler already reading it: the server
    // answers `100 Continue` when the body is first read, so the request is in hand.
    let half = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/bookings HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer tok_demo\r\n\
         idempotency-key: k-half\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        BODY.len()
    );
    assert!(raw_write(&half, head.as_bytes()).await);
    let r = read_raw_reply(&half, Duration::from_secs(30))
        .await
        .expect("100 Continue");
    assert_eq!(r.status, 100, "{}", r.head);
    assert!(raw_write(&half, &BODY.as_bytes()[..BODY.len() / 2]).await);
    // And a connection with half a header, as the slow clients send.
    let slow = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&slow, b"POST /v1/bookings HTTP/1.1\r\nhost: loc").await);

    // The bound is generous against the 300 ms grace period, and far below the read timeouts.
    let exit = terminate(&mut server, Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    assert!(closed_within(&half, Duration::from_secs(30)).await);
    assert!(closed_within(&slow, Duration::from_secs(30)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_408_to_a_body_that_does_not_arrive_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &["--body-timeout-ms", "300"]);
    let addr = server.addr;
    // Half a create's body, then nothing.
    let slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/bookings HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer tok_demo\r\n\
         idempotency-key: k-slow\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        BODY.len()
    );
    assert!(raw_write(&slow, head.as_bytes()).await);
    assert!(raw_write(&slow, &BODY.as_bytes()[..BODY.len() / 2]).await);
    let r = read_raw_reply(&slow, Duration::from_secs(30))
        .await
        .expect("a response");
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.code(), "request_timeout");
    assert!(closed_within(&slow, Duration::from_secs(30)).await);
    // Nothing was reserved or booked: the key runs the whole request at once.
    let whole = send(addr, booking("POST", "/v1/bookings", Some("k-slow"), BODY))
        .await
        .unwrap();
    assert_eq!(whole.status, StatusCode::CREATED, "{}", whole.text());
    assert!(!whole.replayed());
    assert_eq!(uids(addr).await.len(), 1);
}

/// H11 on the demo: a client that sends a `PATCH` (with its `If-Match`) and hangs up while the
/// handler runs never gets the edit applied twice, and its retry gets the edit's answer, never
/// `412` for the version its own first attempt moved on. Before, the layer released the key
/// when the connection dropped, the handler's commit landed anyway, and the retry either
/// applied the edit again or was refused with `412`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h11_serve_a_client_that_hangs_up_mid_patch_never_applies_it_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &["--handler-delay-ms", "50"]);
    let addr = server.addr;
    let created = send(addr, booking("POST", "/v1/bookings", Some("c1"), BODY))
        .await
        .unwrap();
    let uid = created.json()["data"]["uid"].as_str().unwrap().to_owned();
    let path = format!("/v1/bookings/{uid}");
    let patch = |key: &str, version: u64, start: &str| {
        let mut r = booking(
            "PATCH",
            &path,
            Some(key),
            &format!(r#"{{"start":"{start}"}}"#),
        );
        r.headers_mut()
            .insert("if-match", format!("\"v{version}\"").parse().unwrap());
        r
    };
    for n in 1..=20u64 {
        let (key, start) = (format!("p{n}"), format!("2026-07-{n:02}T10:00:00Z"));
        let body = format!(r#"{{"start":"{start}"}}"#);
        let raw = format!(
            "PATCH {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok_demo\r\n\
             idempotency-key: {key}\r\nif-match: \"v{n}\"\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let conn = TcpStream::connect(addr).await.unwrap();
        assert!(raw_write(&conn, raw.as_bytes()).await);
        drop(conn); // gone while the handler is held
        let deadline = Instant::now() + Duration::from_secs(30);
        let retry = loop {
            let r = send(addr, patch(&key, n, &start)).await.unwrap();
            if r.status != StatusCode::CONFLICT {
                break r;
            }
            assert_eq!(r.code(), "idempotency_in_progress", "{}", r.text());
            assert!(Instant::now() < deadline, "still in progress after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(retry.status, StatusCode::OK, "try {n}: {}", retry.text());
        assert_eq!(
            retry.header("etag"),
            Some(format!("\"v{}\"", n + 1).as_str())
        );
        let shown = send(addr, booking("GET", &path, None, "")).await.unwrap();
        assert_eq!(
            shown.header("etag"),
            Some(format!("\"v{}\"", n + 1).as_str()),
            "try {n}: the edit was applied once"
        );
    }
    // The same for a cancel: its retry is the cancel's answer, never 412. The retry is the
    // same request (its media type included, which the fingerprint covers), or it would be a
    // conflict whenever the first attempt got as far as its handler.
    let raw = format!(
        "POST {path}/cancel HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok_demo\r\n\
         idempotency-key: x1\r\nif-match: \"v21\"\r\ncontent-type: application/json\r\n\
         content-length: 0\r\n\r\n"
    );
    let conn = TcpStream::connect(addr).await.unwrap();
    assert!(raw_write(&conn, raw.as_bytes()).await);
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(30);
    let retry = loop {
        let mut cancel = booking("POST", &format!("{path}/cancel"), Some("x1"), "");
        cancel
            .headers_mut()
            .insert("if-match", "\"v21\"".parse().unwrap());
        let r = send(addr, cancel).await.unwrap();
        if r.status != StatusCode::CONFLICT {
            break r;
        }
        assert!(Instant::now() < deadline, "still in progress after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text());
    assert_eq!(retry.header("etag"), Some("\"v22\""));
}

/// Two `serve` processes on one Redis server are one service: a same-key storm whose
/// requests alternate between them makes one booking per key, and each answers the other's
/// replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_two_serve_processes_on_one_redis_make_one_booking_per_key() {
    let Some(redis) = crate::redis_support::Server::start() else {
        return;
    };
    two_serve_processes_storm(&redis.url()).await;
}

/// The storm above on a three-node Redis Cluster: the bookings' calls go to the node that owns
/// their account's slot, from both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_two_serve_processes_on_a_redis_cluster_make_one_booking_per_key() {
    let Some(cluster) = crate::redis_support::Cluster::start() else {
        return;
    };
    two_serve_processes_storm(&cluster.url()).await;
}

/// Two `serve --redis url` processes; same-key creates alternating between them: one booking
/// per key, replayed by both.
async fn two_serve_processes_storm(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--redis", url, "--handler-delay-ms", "100"];
    let servers = [
        serve(&dir.path().join("a.redb"), &args),
        serve(&dir.path().join("b.redb"), &args),
    ];
    const KEYS: usize = 12;
    const TRIES: usize = 6;
    let mut storm = Vec::new();
    for k in 0..KEYS {
        for t in 0..TRIES {
            let addr = servers[t % 2].addr;
            let key = format!("storm-{k}");
            storm.push(tokio::spawn(async move {
                let reply = send(addr, booking("POST", "/v1/bookings", Some(&key), BODY))
                    .await
                    .unwrap();
                (k, reply)
            }));
        }
    }
    let mut first_runs = vec![0usize; KEYS];
    for task in storm {
        let (k, reply) = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED if !reply.replayed() => first_runs[k] += 1,
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => assert_eq!(reply.code(), "idempotency_in_progress"),
            other => panic!("{other}: {}", reply.text()),
        }
    }
    assert!(first_runs.iter().all(|&n| n == 1), "{first_runs:?}");
    // After the storm every retry replays the one booking, whichever process it reaches.
    let mut uids = std::collections::BTreeSet::new();
    for k in 0..KEYS {
        for server in &servers {
            let key = format!("storm-{k}");
            let reply = send(
                server.addr,
                booking("POST", "/v1/bookings", Some(&key), BODY),
            )
            .await
            .unwrap();
            assert!(reply.replayed(), "{}", reply.text());
            uids.insert(reply.json()["data"]["uid"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(uids.len(), KEYS, "one booking per key");
    for server in &servers {
        let list = send(server.addr, booking("GET", "/v1/bookings", None, ""))
            .await
            .unwrap();
        assert_eq!(list.json()["data"].as_array().unwrap().len(), KEYS);
    }
}

/// `serve` on a Redis Cluster: bookings made, listed and read, and the story of `If-Match` and
/// `Idempotency-Key` together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_redis_cluster_creates_lists_and_gets_bookings() {
    let Some(cluster) = crate::redis_support::Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let server = serve(&dir.path().join("x.redb"), &["--redis", url.as_str()]);
    let made = create_three(server.addr, "made").await;
    assert_eq!(uids(server.addr).await, made, "oldest uid first");
    shows_each(server.addr, &made).await;
    if_match_and_key_story(server.addr).await;
}

/// Every booking of `uids` is shown by `GET`, under its own uid.
async fn shows_each(addr: SocketAddr, uids: &[String]) {
    for uid in uids {
        let shown = send(
            addr,
            booking("GET", &format!("/v1/bookings/{uid}"), None, ""),
        )
        .await
        .unwrap();
        assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
        assert_eq!(shown.json()["data"]["uid"].as_str(), Some(uid.as_str()));
    }
}

/// Three bookings under keys `<prefix>-0..2`; their uids, sorted.
async fn create_three(addr: SocketAddr, prefix: &str) -> Vec<String> {
    let mut made = Vec::new();
    for i in 0..3 {
        let key = format!("{prefix}-{i}");
        let created = send(addr, booking("POST", "/v1/bookings", Some(&key), BODY))
            .await
            .unwrap();
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        made.push(created.json()["data"]["uid"].as_str().unwrap().to_owned());
    }
    made.sort();
    made
}

/// The bookings' slot moves to another node while `serve` runs: midway (the old node answers
/// `ASK`) bookings are read and replayed, and a create is refused with a `503` that writes
/// nothing and is not kept (see `bookings/redis.rs`); once the move is over (`MOVED`) that
/// create's retry makes its booking once, and bookings are read, made and replayed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_redis_cluster_follows_its_bookings_across_a_slot_move() {
    let Some(cluster) = crate::redis_support::Cluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let server = serve(&dir.path().join("x.redb"), &["--redis", url.as_str()]);
    let mut all = create_three(server.addr, "before").await;
    // The account's index, found on the node that holds it.
    let index = (0..cluster.ports.len())
        .flat_map(|i| {
            cluster
                .cli(i, &["--scan", "--pattern", "idem:bk:*:all"])
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap();
    let slot = cluster.slot_of(&index);
    let from = cluster.holder_of(slot).unwrap();
    let to = (from + 1) % cluster.ports.len();
    let replay_before = || async {
        let again = send(
            server.addr,
            booking("POST", "/v1/bookings", Some("before-0"), BODY),
        )
        .await
        .unwrap();
        assert!(again.replayed(), "{}", again.text());
    };

    cluster.start_move(slot, from, to);
    assert_eq!(uids(server.addr).await, all, "read through ASK");
    shows_each(server.addr, &all).await;
    replay_before().await;
    // A create writes keys the moving slot does not hold yet, which neither node runs midway:
    // it is refused as unavailable, leaves nothing, and is not kept for its key.
    let midway = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("midway"), BODY),
    )
    .await
    .unwrap();
    assert_eq!(
        midway.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        midway.text()
    );
    assert_eq!(midway.headers["retry-after"], "1");
    assert!(!midway.replayed());
    assert_eq!(
        uids(server.addr).await,
        all,
        "the refused create left nothing"
    );

    cluster.finish_move(slot, to);
    assert_eq!(cluster.holder_of(slot), Some(to));
    assert_eq!(uids(server.addr).await, all, "read through MOVED");
    // Its retry, once the move is over, makes the booking, once.
    let retried = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("midway"), BODY),
    )
    .await
    .unwrap();
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text());
    assert!(!retried.replayed());
    all.push(retried.json()["data"]["uid"].as_str().unwrap().to_owned());
    let again = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("midway"), BODY),
    )
    .await
    .unwrap();
    assert!(again.replayed(), "{}", again.text());
    all.sort();
    assert_eq!(uids(server.addr).await, all);
    all.extend(create_three(server.addr, "after").await);
    all.sort();
    assert_eq!(uids(server.addr).await, all);
    replay_before().await;
}

/// The bookings on Redis keep `If-Match`: the story above, and two edits of one version sent
/// at once to two `serve` processes, of which exactly one is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_redis_keeps_if_match_across_processes() {
    let Some(redis) = crate::redis_support::Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let a = serve(&dir.path().join("a.redb"), &["--redis", url.as_str()]);
    let b = serve(&dir.path().join("b.redb"), &["--redis", url.as_str()]);
    if_match_and_key_story(a.addr).await;
    for round in 0..10 {
        let created = send(
            a.addr,
            booking("POST", "/v1/bookings", Some(&format!("race-{round}")), BODY),
        )
        .await
        .unwrap();
        let uid = created.json()["data"]["uid"].as_str().unwrap().to_owned();
        let edit = |addr, key: String, start: &str| {
            let mut r = booking(
                "PATCH",
                &format!("/v1/bookings/{uid}"),
                Some(&key),
                &format!(r#"{{"start":"{start}"}}"#),
            );
            r.headers_mut()
                .insert("if-match", "\"v1\"".parse().unwrap());
            send(addr, r)
        };
        let (x, y) = tokio::join!(
            edit(a.addr, format!("ea-{round}"), "2026-07-01T10:00:00Z"),
            edit(b.addr, format!("eb-{round}"), "2026-07-02T10:00:00Z"),
        );
        let mut statuses = [x.unwrap().status, y.unwrap().status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
            "round {round}"
        );
        let shown = send(
            b.addr,
            booking("GET", &format!("/v1/bookings/{uid}"), None, ""),
        )
        .await
        .unwrap();
        assert_eq!(shown.header("etag"), Some("\"v2\""));
    }
}

/// `serve --redis` refuses a server that could lose records, naming the setting, unless the
/// operator vouches for it with `--trust-server-settings`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_redis_refuses_an_unsafe_server_unless_trusted() {
    let Some(redis) = crate::redis_support::Server::start_with(&["--appendonly", "no"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["serve", "--addr", "127.0.0.1:0", "--redis", &redis.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("appendonly"));
    let url = redis.url();
    let server = serve(
        &dir.path().join("x.redb"),
        &["--redis", url.as_str(), "--trust-server-settings"],
    );
    let created = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("t1"), BODY),
    )
    .await
    .unwrap();
    assert_eq!(created.status, StatusCode::CREATED);
}

/// With its Redis server gone, `serve --redis` fails closed: `503 idempotency_unavailable`
/// once the store's deadline passes, nothing run, and a read answers `503 unavailable`; it
/// serves again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_redis_fails_closed_while_the_server_is_down() {
    let Some(mut redis) = crate::redis_support::Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let server = serve(&dir.path().join("x.redb"), &["--redis", url.as_str()]);
    let first = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("d1"), BODY),
    )
    .await
    .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    redis.kill();
    let down = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("d2"), BODY),
    )
    .await
    .unwrap();
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.text()
    );
    assert_eq!(down.code(), "idempotency_unavailable");
    // A read is not guarded, so the bookings answer it themselves: unavailable, to be sent
    // again, not an internal error.
    let read = send(server.addr, booking("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    assert_eq!(
        read.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        read.text()
    );
    assert_eq!(read.code(), "unavailable");
    assert_eq!(read.headers["retry-after"], "1");
    redis.restart();
    let again = send(
        server.addr,
        booking("POST", "/v1/bookings", Some("d1"), BODY),
    )
    .await
    .unwrap();
    assert!(again.replayed(), "{}", again.text());
    assert_eq!(again.body, first.body);
    let list = send(server.addr, booking("GET", "/v1/bookings", None, ""))
        .await
        .unwrap();
    assert_eq!(
        list.json()["data"].as_array().unwrap().len(),
        1,
        "d2 never ran"
    );
}

/// E1 on the demo: the server is killed (SIGKILL) while creates are in flight, again and
/// again, and every key is retried until it is answered: each key ends with exactly one
/// booking, and a key answered before a kill replays that booking after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_serve_killed_while_creating_makes_one_booking_per_key() {
    const KEYS: usize = 24;
    const ROUNDS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idem.redb");
    let body = |k: usize| {
        format!(
            r#"{{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{{"email":"a{k}@b.com"}}}}"#
        )
    };
    let mut answered: HashMap<usize, String> = HashMap::new();
    for round in 0..ROUNDS {
        let server = serve(&db, &[]);
        let addr = server.addr;
        let mut tasks = tokio::task::JoinSet::new();
        for k in (0..KEYS).filter(|k| !answered.contains_key(k)) {
            let request = booking("POST", "/v1/bookings", Some(&format!("key-{k}")), &body(k));
            tasks.spawn(async move { (k, send(addr, request).await) });
        }
        // Kill once a few creates were answered, with the others on their way.
        let mut seen = 0;
        while let Some(done) = tasks.join_next().await {
            let (k, reply) = done.unwrap();
            if let Ok(reply) = reply
                && reply.status == StatusCode::CREATED
            {
                answered.insert(k, reply.json()["data"]["uid"].as_str().unwrap().to_owned());
                seen += 1;
                if seen > round {
                    break;
                }
            }
        }
        drop(server);
        tasks.abort_all();
    }
    let server = serve(&db, &[]);
    let mut uids_by_key = Vec::new();
    for k in 0..KEYS {
        let request = || booking("POST", "/v1/bookings", Some(&format!("key-{k}")), &body(k));
        let reply = send(server.addr, request()).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "key-{k}: {}",
            reply.text()
        );
        let uid = reply.json()["data"]["uid"].as_str().unwrap().to_owned();
        if let Some(first) = answered.get(&k) {
            assert!(reply.replayed(), "key-{k} was answered before a kill");
            assert_eq!(&uid, first, "key-{k}");
        }
        uids_by_key.push(uid);
    }
    let mut listed = uids(server.addr).await;
    listed.sort();
    uids_by_key.sort();
    assert_eq!(listed, uids_by_key, "exactly one booking per key");
}

/// E1 on the demo, clients that go away: a create is cut off at every point of its bytes, and
/// dropped at several instants after it was sent whole; each key is then retried until it is
/// answered. Every key ends with exactly one booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_serve_creates_whose_clients_go_away_at_any_instant_make_one_booking_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let addr = server.addr;
    let raw = |key: &str| {
        format!(
            "POST /v1/bookings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok_demo\r\n\
             idempotency-key: {key}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{BODY}",
            BODY.len()
        )
    };
    let whole = raw("d-000").len();
    // Cut points through the head and the body, then the whole request with the connection
    // dropped after a growing pause.
    let mut cuts: Vec<(usize, Duration)> =
        (0..whole).step_by(7).map(|n| (n, Duration::ZERO)).collect();
    for micros in [0, 50, 200, 1_000, 3_000, 10_000] {
        cuts.push((whole, Duration::from_micros(micros)));
    }
    let mut answered = Vec::new();
    for (i, (cut, pause)) in cuts.iter().enumerate() {
        let key = format!("d-{i:03}");
        let bytes = raw(&key);
        let conn = TcpStream::connect(addr).await.unwrap();
        assert!(raw_write(&conn, &bytes.as_bytes()[..*cut]).await);
        if !pause.is_zero() {
            tokio::time::sleep(*pause).await;
        }
        drop(conn);
        let deadline = Instant::now() + Duration::from_secs(30);
        let reply = loop {
            let r = send(addr, booking("POST", "/v1/bookings", Some(&key), BODY))
                .await
                .unwrap();
            if r.status != StatusCode::CONFLICT {
                break r;
            }
            assert_eq!(r.code(), "idempotency_in_progress", "{}", r.text());
            assert!(
                Instant::now() < deadline,
                "{key} still in progress after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(reply.status, StatusCode::CREATED, "{key}: {}", reply.text());
        answered.push(reply.json()["data"]["uid"].as_str().unwrap().to_owned());
    }
    let mut listed = uids(addr).await;
    listed.sort();
    answered.sort();
    assert_eq!(listed, answered, "exactly one booking per key");
}

/// The lines of `server`'s log, as they come, on a thread of their own.
fn log_lines(server: &mut Server) -> std::sync::mpsc::Receiver<String> {
    let stderr = server.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line of `log` that contains `needle`, waiting at most `within` for it.
fn wait_for_line(
    log: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?} within {within:?}: {e}"),
        }
    }
}

/// P2, P3 and E6 on the demo: the server is killed between the two steps of a create (its
/// booking id held and saved as the key's recovery point, its booking not written yet). Under
/// the default policy the restart ends the key's lease; under `mark-unknown` the restart
/// marks the key, and the resolver finds no booking and releases it. Either way the retry
/// resumes from the point: one booking, under the id the first attempt held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_e6_serve_killed_between_the_steps_of_a_create_resumes_under_the_held_id() {
    for policy in ["release", "mark-unknown"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("idem.redb");
        let flags = ["--in-flight-at-open", policy];
        let mut first = serve_logging(
            &db,
            &[&flags[..], &["--handler-delay-ms", "60000"]].concat(),
            "idemstore=debug",
        );
        let log = log_lines(&mut first);
        let addr = first.addr;
        let create = || booking("POST", "/v1/bookings", Some("two-step"), BODY);
        let cut_short = tokio::spawn(async move { send(addr, create()).await });
        let held = wait_for_line(&log, "booking id held", Duration::from_secs(30));
        let uid = held
            .split("uid=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{policy}: no uid in {held:?}"))
            .to_owned();
        drop(first); // SIGKILL, between the steps
        let _ = cut_short.await;

        let mut second = serve_logging(&db, &flags, "idemstore=info");
        let log = log_lines(&mut second);
        if policy == "mark-unknown" {
            wait_for_line(
                &log,
                "released: nothing was booked",
                Duration::from_secs(30),
            );
        }
        let reply = send(second.addr, create()).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{policy}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["data"]["uid"], uid.as_str(), "{policy}");
        let again = send(second.addr, create()).await.unwrap();
        assert!(again.replayed(), "{policy}");
        assert_eq!(uids(second.addr).await, [uid], "{policy}: one booking");
    }
}

/// O11: `serve --redis URL` logs the server it uses without the URL's password, and its error
/// line for a store it cannot open leaves the password out too.
#[test]
fn o11_serve_logs_and_errors_leave_a_redis_urls_password_out() {
    use std::io::Read;
    const PASSWORD: &str = "s3cret-Pw-7781";
    let Some(redis) = crate::redis_support::Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = redis.require_password(PASSWORD);
    let mut server = serve_logging(&dir.path().join("x.redb"), &["--redis", &url], "info");
    let exit = terminate(&mut server, Duration::from_secs(30));
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("serving the bookings API"), "{log}");
    assert!(log.contains("pass=***"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");

    let wrong = format!("{}?pass=wrong-{PASSWORD}", redis.url());
    let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["serve", "--addr", "127.0.0.1:0", "--redis", &wrong])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the store on"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}
