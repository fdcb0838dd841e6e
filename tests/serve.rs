//! The `idemstore serve` binary itself: seed 000's story over HTTP, a SIGKILL after a completed
//! request, a restart on the same file, and the byte-identical replay; then a clean shutdown.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::http_support::{Reply, send};

const BODY: &str =
    r#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
const BODY_RESPACED: &str = r#"{ "attendee": {"email": "a@b.com"}, "start": "2026-05-20T15:00:00Z", "event_type_id": "evt_1" }"#;
const OTHER: &str =
    r#"{"event_type_id":"evt_1","start":"2026-05-21T09:00:00Z","attendee":{"email":"a@b.com"}}"#;
const KEY: &str = "1f0a3b6e-7c1d-4a3e-9e91-9b6c0f8b18f4";

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `idemstore serve` on a free port and reads the address it prints.
fn serve(db: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"));
    Server { child, addr }
}

fn booking(method: &str, path: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
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
    let addr = server.addr;
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
