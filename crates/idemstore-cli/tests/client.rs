//! The caller's side (feature `client`, rules K1 to K8): the key journal on the memory engine
//! and on a file, the window, and the retry layer over hyper-util's client against the real
//! `idemstore serve` binary through a proxy that drops answers, resets connections, and
//! delays or stalls responses (`client_proxy.rs`), driven by a fixed script.
//! Every logical operation makes exactly one booking; a caller that dies after journaling,
//! before or after sending, resumes with its key; a conflicting reuse stops with the typed
//! error; a resume past the window is refused; `idemstore call` does all of it from a shell.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idemstore::client::{
    JournalConfig, JournalError, KeyJournal, Operation, Outcome, RetryError, RetryLayer,
    RetryPolicy, RetryReport,
};
use idemstore::{Config, ManualClock, Store};
use tower::{Layer, ServiceExt};

use crate::client_proxy::{Fault, seeded_script, start};
use crate::serve::{booking, serve, uids};

const HOUR: Duration = Duration::from_secs(3600);

fn body(i: usize) -> String {
    format!(
        r#"{{"event_type_id":"evt_1","start":"2026-06-{:02}T10:00:00Z","attendee":{{"email":"c{i}@b.com"}}}}"#,
        1 + i % 28
    )
}

/// hyper-util's client, one connection per request, so that each attempt meets the
/// proxy's next scripted fault.
fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy::default()
        .base(Duration::from_millis(1))
        .cap(Duration::from_millis(20))
        .max_attempts(40)
        .deadline(Duration::from_secs(120))
        .attempt_timeout(Duration::from_secs(1))
}

fn create(addr: std::net::SocketAddr, op: &str, body: &str) -> http::Request<Full<Bytes>> {
    let mut request = booking("POST", &format!("http://{addr}/v1/bookings"), None, body);
    request.extensions_mut().insert(Operation::new(op));
    request
}

async fn uid_of(response: http::Response<Full<Bytes>>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["data"]["uid"].as_str().unwrap().to_owned()
}

// ---- K1-K4: the journal ------------------------------------------------------------------

fn journals(dir: &Path) -> Vec<(&'static str, KeyJournal)> {
    vec![
        (
            "memory",
            KeyJournal::in_memory(JournalConfig::default()).unwrap(),
        ),
        (
            "file",
            KeyJournal::open(dir.join("keys.redb"), JournalConfig::default()).unwrap(),
        ),
    ]
}

fn is_uuid_v4(key: &str) -> bool {
    let groups: Vec<&str> = key.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && key
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

#[test]
fn k1_k4_key_for_mints_a_uuid_v4_once_and_returns_it_until_finished() {
    let dir = tempfile::tempdir().unwrap();
    for (engine, journal) in journals(dir.path()) {
        let first = journal.key_for("book-101").unwrap();
        assert!(first.is_fresh(), "{engine}");
        assert!(is_uuid_v4(first.key()), "{engine}: {}", first.key());
        let again = journal.key_for("book-101").unwrap();
        assert!(!again.is_fresh());
        assert_eq!(again.key(), first.key(), "{engine}");
        assert_eq!(again.started_ms(), first.started_ms());
        let other = journal.key_for("book-102").unwrap();
        assert_ne!(other.key(), first.key(), "{engine}: one key per operation");

        let pending = journal.pending().unwrap();
        let listed: Vec<(&str, &str)> = pending.iter().map(|e| (e.operation(), e.key())).collect();
        assert_eq!(
            listed,
            [("book-101", first.key()), ("book-102", other.key())],
            "{engine}"
        );

        let answered = Outcome::Answered {
            status: 201,
            replayed: true,
        };
        journal.finish("book-101", answered).unwrap();
        // A second finish keeps the first outcome.
        journal.finish("book-101", Outcome::Abandoned).unwrap();
        let pending = journal.pending().unwrap();
        assert_eq!(pending.len(), 1, "{engine}");
        assert_eq!(pending[0].operation(), "book-102");
        let done = journal.key_for("book-101").unwrap();
        assert_eq!(done.key(), first.key(), "{engine}");
        assert_eq!(done.outcome(), Some(answered), "{engine}");
        assert!(matches!(
            journal.finish("never-started", Outcome::Abandoned),
            Err(JournalError::NotStarted { .. })
        ));
    }
}

#[test]
fn k1_a_journaled_key_survives_closing_and_dropping_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.redb");
    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    let closed = journal.key_for("closed").unwrap();
    journal.close().unwrap();

    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    assert_eq!(journal.key_for("closed").unwrap().key(), closed.key());
    let dropped = journal.key_for("dropped").unwrap();
    // No close: the key was durable when key_for returned it.
    drop(journal);

    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    let keys: Vec<String> = journal
        .pending()
        .unwrap()
        .iter()
        .map(|e| e.key().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&dropped.key().to_owned()) && keys.contains(&closed.key().to_owned()));
    assert_eq!(journal.key_for("dropped").unwrap().key(), dropped.key());
}

/// Two processes (two stores) whose journals share one Redis server share their operations:
/// the key the first mints is the key the second gets, racing calls of both get one key, and
/// an outcome one records is what the other reads.
#[test]
fn k1_journals_over_one_redis_server_share_each_operations_key() {
    let Some(server) = crate::redis_support::Server::start() else {
        return;
    };
    let journal = || {
        let config = Config::builder().ttl(2 * HOUR).build().unwrap();
        let store = Store::open_redis(&server.url(), config).unwrap();
        KeyJournal::with_store(store, &JournalConfig::new(HOUR)).unwrap()
    };
    let (a, b) = (journal(), journal());
    let first = a.key_for("book-7").unwrap();
    assert!(first.is_fresh());
    let seen = b.key_for("book-7").unwrap();
    assert!(!seen.is_fresh());
    assert_eq!(seen.key(), first.key());

    let keys: HashSet<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let j = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || j.key_for("book-8").unwrap().key().to_owned())
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(keys.len(), 1, "{keys:?}");

    let answered = Outcome::Answered {
        status: 201,
        replayed: false,
    };
    b.finish("book-7", answered).unwrap();
    let done = a.key_for("book-7").unwrap();
    assert_eq!((done.key(), done.outcome()), (first.key(), Some(answered)));
    let pending: Vec<String> = a
        .pending()
        .unwrap()
        .iter()
        .map(|e| e.operation().to_owned())
        .collect();
    assert_eq!(pending, ["book-8"]);
}

#[test]
fn k1_concurrent_calls_for_one_operation_get_one_key() {
    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let keys: HashSet<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|_| s.spawn(|| journal.key_for("shared").unwrap().key().to_owned()))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[test]
fn k2_key_from_uses_the_stable_id_and_refuses_another_one() {
    let dir = tempfile::tempdir().unwrap();
    for (engine, journal) in journals(dir.path()) {
        let entry = journal.key_from("charge-123", "stripe-charge-123").unwrap();
        assert_eq!(entry.key(), "stripe-charge-123", "{engine}");
        assert!(entry.is_fresh());
        assert_eq!(
            journal
                .key_from("charge-123", "stripe-charge-123")
                .unwrap()
                .key(),
            "stripe-charge-123"
        );
        assert_eq!(
            journal.key_for("charge-123").unwrap().key(),
            "stripe-charge-123"
        );
        match journal.key_from("charge-123", "stripe-charge-124") {
            Err(JournalError::Conflict { journaled, .. }) => {
                assert_eq!(journaled, "stripe-charge-123", "{engine}")
            }
            other => panic!("{engine}: {other:?}"),
        }
        // A minted key is not a stable id either.
        journal.key_for("minted").unwrap();
        assert!(matches!(
            journal.key_from("minted", "stripe-charge-125"),
            Err(JournalError::Conflict { .. })
        ));
    }
}

#[test]
fn k1_invalid_operation_ids_and_stable_ids_are_typed_errors() {
    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let long = "x".repeat(256);
    for bad in ["", "with space", "é", long.as_str(), "tab\there"] {
        assert!(
            matches!(journal.key_for(bad), Err(JournalError::InvalidOperation(_))),
            "{bad:?}"
        );
        assert!(matches!(
            journal.finish(bad, Outcome::Abandoned),
            Err(JournalError::InvalidOperation(_))
        ));
        assert!(
            matches!(
                journal.key_from("op", bad),
                Err(JournalError::InvalidStableId(_))
            ),
            "{bad:?}"
        );
    }
    assert!(journal.pending().unwrap().is_empty());
}

#[test]
fn k3_a_resume_past_the_window_is_refused_then_forgotten_after_the_margin() {
    let clock = ManualClock::new(1_000_000);
    let config = JournalConfig::new(HOUR).margin(HOUR).clock(clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let journals = [
        KeyJournal::in_memory(config.clone()).unwrap(),
        KeyJournal::open(dir.path().join("keys.redb"), config).unwrap(),
    ];
    for journal in &journals {
        clock.set(1_000_000);
        let first = journal.key_for("late").unwrap();
        assert_eq!(first.started_ms(), 1_000_000);
        clock.advance(HOUR - Duration::from_millis(1));
        assert_eq!(journal.key_for("late").unwrap().key(), first.key());
        clock.advance(Duration::from_millis(1));
        match journal.key_for("late") {
            Err(JournalError::Expired {
                operation,
                started_ms,
                window,
            }) => {
                assert_eq!(
                    (operation.as_str(), started_ms, window),
                    ("late", 1_000_000, HOUR)
                );
            }
            other => panic!("{other:?}"),
        }
        // Still pending, for the caller to see and settle.
        assert_eq!(journal.pending().unwrap()[0].key(), first.key());
        // A finished operation past the window is refused too: its key is not sent again.
        journal.finish("late", Outcome::Abandoned).unwrap();
        assert!(journal.pending().unwrap().is_empty());
        assert!(matches!(
            journal.key_for("late"),
            Err(JournalError::Expired { .. })
        ));
        // Past window and margin since it was last touched, the journal has forgotten it.
        clock.advance(2 * HOUR);
        let again = journal.key_for("late").unwrap();
        assert!(again.is_fresh());
        assert_ne!(again.key(), first.key());
    }
}

#[test]
fn k3_a_store_that_forgets_before_the_window_is_refused() {
    let store = Store::in_memory(
        Config::builder()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        KeyJournal::with_store(store, &JournalConfig::new(HOUR)),
        Err(JournalError::Config(_))
    ));
    assert!(matches!(
        KeyJournal::in_memory(JournalConfig::new(Duration::from_secs(300 * 86_400))),
        Err(JournalError::Config(_))
    ));
    // A store that forgets at the window, or no margin, would forget an operation at the very
    // moment it should be refused: then resumed with a fresh key, a duplicate.
    let exactly = Store::in_memory(Config::builder().ttl(HOUR).build().unwrap()).unwrap();
    assert!(matches!(
        KeyJournal::with_store(exactly, &JournalConfig::new(HOUR)),
        Err(JournalError::Config(e)) if e.setting() == "ttl"
    ));
    assert!(matches!(
        KeyJournal::in_memory(JournalConfig::new(HOUR).margin(Duration::ZERO)),
        Err(JournalError::Config(e)) if e.setting() == "margin"
    ));
}

/// K3 at its edge: with the smallest margin, an operation started exactly the window ago is
/// refused, not minted afresh.
#[test]
fn k3_with_the_smallest_margin_the_window_edge_is_refused() {
    let clock = ManualClock::new(5_000_000);
    let journal = KeyJournal::in_memory(
        JournalConfig::new(HOUR)
            .margin(Duration::from_millis(1))
            .clock(clock.clone()),
    )
    .unwrap();
    journal.key_for("op").unwrap();
    clock.advance(HOUR);
    assert!(matches!(
        journal.key_for("op"),
        Err(JournalError::Expired { .. })
    ));
}

// ---- K3, K6, K8 through the layer, without a network --------------------------------------

#[tokio::test]
async fn k3_the_layer_sends_nothing_for_an_operation_past_the_window() {
    let clock = ManualClock::new(5_000_000);
    let journal = KeyJournal::in_memory(JournalConfig::new(HOUR).clock(clock.clone())).unwrap();
    journal.key_for("old").unwrap();
    clock.advance(HOUR);
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let service = RetryLayer::new(RetryPolicy::default())
        .journal(journal)
        .layer(tower::service_fn(
            move |_req: http::Request<Full<Bytes>>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                }
            },
        ));
    let request = operation_request("old");
    let err = service.oneshot(request).await.unwrap_err();
    assert!(
        matches!(err, RetryError::Journal(JournalError::Expired { .. })),
        "{err:?}"
    );
    assert_eq!(err.attempts(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// K3 between attempts: an operation resumed just before its window ends gets an answer that
/// asks for a retry, and the window ends meanwhile; the layer sends nothing more, since the
/// server may have forgotten the key, and the operation stays pending.
#[tokio::test]
async fn k3_the_layer_stops_retrying_when_the_window_ends_between_attempts() {
    let clock = ManualClock::new(5_000_000);
    let journal = KeyJournal::in_memory(JournalConfig::new(HOUR).clock(clock.clone())).unwrap();
    journal.key_for("late").unwrap();
    clock.advance(HOUR - Duration::from_millis(1));
    let calls = Arc::new(AtomicU32::new(0));
    let (counted, moved) = (calls.clone(), clock.clone());
    let service = RetryLayer::new(
        RetryPolicy::default()
            .base(Duration::from_millis(1))
            .cap(Duration::from_millis(1)),
    )
    .journal(journal.clone())
    .layer(tower::service_fn(
        move |_req: http::Request<Full<Bytes>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            // The attempt takes the rest of the window.
            moved.advance(Duration::from_millis(1));
            async {
                let mut busy = http::Response::new(Full::new(Bytes::new()));
                *busy.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, std::convert::Infallible>(busy)
            }
        },
    ));
    let err = service
        .oneshot(operation_request("late"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RetryError::WindowEnded { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(journal.pending().unwrap().len(), 1);
}

/// K3 and K5: a `Retry-After` that would end past the operation's window ends the request at
/// once, whatever the deadline: the client neither holds its caller for as long as the server
/// asks nor sends anything after it. The request completes on its first poll, so it never
/// began to wait.
#[test]
fn k3_k5_a_retry_after_past_the_window_ends_the_request_without_waiting() {
    let clock = ManualClock::new(5_000_000);
    let journal = KeyJournal::in_memory(JournalConfig::new(HOUR).clock(clock.clone())).unwrap();
    journal.key_for("held-off").unwrap();
    clock.advance(HOUR / 2);
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let service = RetryLayer::new(RetryPolicy::default().deadline(Duration::MAX))
        .journal(journal.clone())
        .layer(tower::service_fn(
            move |_req: http::Request<Full<Bytes>>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    // Two hours, where half an hour of the window is left.
                    let mut busy = http::Response::new(Full::new(Bytes::new()));
                    *busy.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    busy.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("7200"));
                    Ok::<_, std::convert::Infallible>(busy)
                }
            },
        ));
    let mut request = std::pin::pin!(service.oneshot(operation_request("held-off")));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(answer) = request.as_mut().poll(&mut cx) else {
        panic!("the request waits for the server's Retry-After past its window");
    };
    let err = answer.unwrap_err();
    assert!(
        matches!(err, RetryError::WindowEnded { attempts: 1, .. }),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(journal.pending().unwrap().len(), 1);
}

/// One scripted answer: status, headers, body.
type Scripted = (u16, &'static [(&'static str, &'static str)], &'static str);
/// The keys a scripted server saw, one per attempt.
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A scripted server: answers in order, and records the key of every attempt.
fn scripted(
    answers: Vec<Scripted>,
) -> (
    impl tower::Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Seen,
) {
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = keys.clone();
    let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
    let service = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let key = req.headers()["idempotency-key"]
            .to_str()
            .unwrap()
            .to_owned();
        seen.lock().unwrap().push(key);
        let (status, headers, body) = answers.lock().unwrap().next().unwrap();
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        async move { Ok(response) }
    });
    (service, keys)
}

const IN_PROGRESS: &str = r#"{"error":{"code":"idempotency_in_progress","message":"m"}}"#;
const CONFLICT: &str = r#"{"error":{"code":"idempotency_key_conflict","message":"m"}}"#;
const UNKNOWN: &str = r#"{"error":{"code":"idempotency_outcome_unknown","message":"m"}}"#;

#[tokio::test]
async fn k6_retries_keep_one_key_and_the_report_says_attempts_and_replay() {
    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let (server, keys) = scripted(vec![
        (503, &[], ""),
        (409, &[("retry-after", "0")], IN_PROGRESS),
        (500, &[], ""),
        (201, &[("idempotent-replay", "true")], r#"{"ok":1}"#),
    ]);
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(server);
    let request = operation_request("op-1");
    let response = service.oneshot(request).await.unwrap();
    let report = response.extensions().get::<RetryReport>().unwrap().clone();
    assert_eq!((report.attempts, report.replayed), (4, true));
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| *k == report.key), "{keys:?}");
    assert_eq!(journal.key_for("op-1").unwrap().key(), report.key);
    assert_eq!(
        journal.key_for("op-1").unwrap().outcome(),
        Some(Outcome::Answered {
            status: 201,
            replayed: true
        })
    );
}

/// K6: an answer longer than the policy's limit is not read whole; the attempt fails as a lost
/// answer would, and the next one, with the same key, gets the short answer.
#[tokio::test]
async fn k6_an_answer_over_the_limit_is_not_held_and_the_retry_keeps_the_key() {
    let long: &'static str = "x".repeat(4096).leak();
    let (server, keys) = scripted(vec![(200, &[], long), (201, &[], "{}")]);
    let service = RetryLayer::new(fast_policy().max_response_bytes(1024))
        .journal(KeyJournal::in_memory(JournalConfig::default()).unwrap())
        .layer(server);
    let response = service.oneshot(operation_request("op-long")).await.unwrap();
    assert_eq!(response.status(), 201);
    let report = response.extensions().get::<RetryReport>().unwrap().clone();
    assert_eq!(report.attempts, 2);
    let keys = keys.lock().unwrap().clone();
    assert!(keys.len() == 2 && keys[0] == keys[1], "{keys:?}");
}

#[tokio::test]
async fn k4_k6_conflicts_refusals_and_unknown_outcomes_stop_at_the_first_attempt() {
    for (status, body) in [(409, CONFLICT), (422, "{}"), (400, "{}"), (409, UNKNOWN)] {
        let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
        let (server, keys) = scripted(vec![(status, &[], body), (201, &[], "")]);
        let service = RetryLayer::new(fast_policy())
            .journal(journal.clone())
            .layer(server);
        let request = operation_request("op");
        let err = service.oneshot(request).await.unwrap_err();
        assert_eq!(err.attempts(), 1, "{status}: {err:?}");
        assert_eq!(keys.lock().unwrap().len(), 1);
        match (status, body, &err) {
            (409, CONFLICT, RetryError::Conflict { .. })
            | (422 | 400, _, RetryError::Rejected { .. })
            | (409, UNKNOWN, RetryError::OutcomeUnknown { .. }) => {}
            _ => panic!("{status} {body}: {err:?}"),
        }
        // Settled by the server's word, except an unknown outcome, which stays pending.
        assert_eq!(
            journal.pending().unwrap().len(),
            usize::from(body == UNKNOWN),
            "{status} {body}"
        );
    }
}

/// K4: an answer that settles nothing about earlier attempts whose fate is unknown (a `401`
/// once a token expired, after a `503`) is handed back, and the operation stays pending: the
/// caller sends it again with the same key and learns what happened. The same answer to the
/// first attempt settles it.
#[tokio::test]
async fn k4_an_answer_after_attempts_of_unknown_fate_settles_only_a_success_or_a_replay() {
    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let (server, keys) = scripted(vec![(503, &[], ""), (401, &[], "{}")]);
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(server);
    let answer = service.oneshot(operation_request("op")).await.unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(keys.lock().unwrap().len(), 2);
    assert_eq!(journal.pending().unwrap().len(), 1, "still pending");

    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let (server, _) = scripted(vec![(401, &[], "{}")]);
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(server);
    let answer = service.oneshot(operation_request("op")).await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(journal.pending().unwrap().is_empty(), "settled");
}

#[tokio::test]
async fn k4_k6_a_request_without_a_key_is_not_sent_and_one_given_up_stays_pending() {
    let (server, keys) = scripted(vec![(503, &[], ""), (503, &[], "")]);
    let service = RetryLayer::new(fast_policy()).layer(server.clone());
    let request = http::Request::post("http://x/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(matches!(
        service.oneshot(request).await,
        Err(RetryError::NoKey)
    ));
    assert!(keys.lock().unwrap().is_empty());

    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let service = RetryLayer::new(fast_policy().max_attempts(2))
        .journal(journal.clone())
        .layer(server);
    let mut request = http::Request::post("http://x/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request.extensions_mut().insert(Operation::new("op"));
    let err = service.oneshot(request).await.unwrap_err();
    assert!(
        matches!(
            err,
            RetryError::Exhausted {
                attempts: 2,
                last: idemstore::client::Failure::Status(503)
            }
        ),
        "{err:?}"
    );
    assert_eq!(journal.pending().unwrap().len(), 1);
}

#[tokio::test]
async fn k5_a_retry_after_that_ends_past_the_deadline_ends_the_request_without_waiting() {
    let (server, keys) = scripted(vec![(503, &[("retry-after", "30")], ""), (201, &[], "")]);
    let service = RetryLayer::new(fast_policy().deadline(Duration::from_secs(10))).layer(server);
    let request = http::Request::post("http://x/")
        .header("idempotency-key", "k-deadline")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let err = service.oneshot(request).await.unwrap_err();
    assert!(
        matches!(
            err,
            RetryError::Deadline {
                attempts: 1,
                last: idemstore::client::Failure::Status(503)
            }
        ),
        "{err:?}"
    );
    assert_eq!(keys.lock().unwrap().as_slice(), ["k-deadline"]);
}

// ---- K7: the demo service through the faulty proxy ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_every_operation_makes_one_booking_through_dropped_reset_delayed_and_stalled_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    // Each fault first, in a row on one operation, then a seeded mix.
    let mut script = vec![
        Fault::DropAnswer,
        Fault::Reset,
        Fault::Stall,
        Fault::Delay(Duration::from_millis(30)),
    ];
    script.extend(seeded_script(18, 400));
    let proxy = start(server.addr, script).await;
    let journal = KeyJournal::open(dir.path().join("keys.redb"), JournalConfig::default()).unwrap();
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(client());
    let ops = 24;
    let (mut answered, mut replays) = (Vec::new(), 0);
    for i in 0..ops {
        let response = service
            .clone()
            .oneshot(create(proxy.addr, &format!("op-{i}"), &body(i)))
            .await
            .unwrap_or_else(|e| panic!("op-{i}: {e}"));
        assert_eq!(response.status(), 201, "op-{i}");
        let report = response.extensions().get::<RetryReport>().unwrap().clone();
        replays += usize::from(report.replayed);
        answered.push(uid_of(response).await);
    }
    let applied: HashSet<Fault> = proxy.applied().into_iter().collect();
    for fault in [
        Fault::DropAnswer,
        Fault::Reset,
        Fault::Delay(Duration::from_millis(30)),
        Fault::Stall,
    ] {
        assert!(applied.contains(&fault), "{fault:?} never applied");
    }
    // A dropped answer's retry is answered with the stored response.
    assert!(replays > 0);
    let mut listed = uids(server.addr).await;
    listed.sort();
    answered.sort();
    assert_eq!(listed.len(), ops, "exactly one booking per operation");
    assert_eq!(listed, answered);
    assert!(journal.pending().unwrap().is_empty());
}

/// The first attempt is abandoned while the handler (held 300 ms) runs, so the retry and it
/// meet at the server: `409 idempotency_in_progress` is waited out as `Retry-After` asks, and
/// the operation ends with one booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_a_retry_while_the_first_attempt_runs_waits_and_gets_its_booking() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        &dir.path().join("idem.redb"),
        &["--handler-delay-ms", "300"],
    );
    let proxy = start(server.addr, vec![Fault::Abandon]).await;
    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    let service = RetryLayer::new(fast_policy().attempt_timeout(Duration::from_secs(10)))
        .journal(journal)
        .layer(client());
    let response = service
        .oneshot(create(proxy.addr, "held", &body(20)))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let report = response.extensions().get::<RetryReport>().unwrap().clone();
    // The retry may reach the server before the abandoned attempt (then it runs, and the
    // abandoned one is in progress or a replay), or after it (then it waits on in progress
    // and replays): either way one booking, the one answered.
    assert!(report.attempts >= 2, "{report:?}");
    assert_eq!(proxy.applied()[0], Fault::Abandon);
    assert_eq!(uids(server.addr).await, [uid_of(response).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_a_caller_that_dies_after_sending_resumes_with_its_key_and_gets_the_first_booking() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    // The first attempt's answer is lost; then the caller dies.
    let proxy = start(server.addr, vec![Fault::DropAnswer]).await;
    let path = dir.path().join("keys.redb");
    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    let once = RetryLayer::new(fast_policy().max_attempts(1))
        .journal(journal.clone())
        .layer(client());
    let err = once
        .oneshot(create(proxy.addr, "trip-1", &body(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RetryError::Exhausted { attempts: 1, .. }),
        "{err:?}"
    );
    drop(journal);
    let first = uids(server.addr).await;
    assert_eq!(first.len(), 1, "the server did the work");

    // Restarted: the journal lists the operation with its key, and the retry replays.
    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    let pending = journal.pending().unwrap();
    assert_eq!(pending.len(), 1);
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(client());
    let response = service
        .oneshot(create(proxy.addr, pending[0].operation(), &body(1)))
        .await
        .unwrap();
    let report = response.extensions().get::<RetryReport>().unwrap().clone();
    assert_eq!(report.key, pending[0].key());
    assert!(report.replayed);
    assert_eq!(uid_of(response).await, first[0]);
    assert_eq!(uids(server.addr).await, first);
    assert!(journal.pending().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_a_caller_that_dies_between_journaling_and_sending_resumes_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let path = dir.path().join("keys.redb");
    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    let journaled = journal.key_for("trip-2").unwrap();
    drop(journal);

    let journal = KeyJournal::open(&path, JournalConfig::default()).unwrap();
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(client());
    let response = service
        .oneshot(create(server.addr, "trip-2", &body(2)))
        .await
        .unwrap();
    let report = response.extensions().get::<RetryReport>().unwrap().clone();
    assert_eq!(report.key, journaled.key());
    assert_eq!((report.attempts, report.replayed), (1, false));
    assert_eq!(response.status(), 201);
    assert_eq!(uids(server.addr).await, [uid_of(response).await]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_a_conflicting_reuse_of_an_operation_stops_with_the_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let journal = KeyJournal::open(dir.path().join("keys.redb"), JournalConfig::default()).unwrap();
    let service = RetryLayer::new(fast_policy())
        .journal(journal.clone())
        .layer(client());
    let first = service
        .clone()
        .oneshot(create(server.addr, "same-op", &body(3)))
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let err = service
        .oneshot(create(server.addr, "same-op", &body(4)))
        .await
        .unwrap_err();
    match err {
        RetryError::Conflict {
            status, attempts, ..
        } => assert_eq!((status, attempts), (409, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(uids(server.addr).await.len(), 1);
}

// ---- K8: `idemstore call` --------------------------------------------------------------------

fn call(journal: &Path, url: &str, op: &str, data: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["call", "POST", url, "--data", data, "--op", op])
        .arg("--journal")
        .arg(journal)
        .args(["--header", "Authorization: Bearer tok_demo"])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr_line(o: &Output) -> String {
    let text = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    text.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_idemstore_call_retries_resumes_replays_and_stops_on_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let journal = dir.path().join("keys.redb");
    let url = format!("http://{}/v1/bookings", server.addr);

    let first = call(&journal, &url, "cli-1", &body(5), &[]);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(
        stderr_line(&first),
        "idemstore call: 201 Created, 1 attempt, executed"
    );
    let booked: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let uid = booked["data"]["uid"].as_str().unwrap().to_owned();

    let second = call(&journal, &url, "cli-1", &body(5), &[]);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        stderr_line(&second),
        "idemstore call: 201 Created, 1 attempt, replayed"
    );
    assert_eq!(second.stdout, first.stdout);

    let conflict = call(&journal, &url, "cli-1", &body(6), &[]);
    assert!(!conflict.status.success());
    let line = stderr_line(&conflict);
    assert!(line.contains("409 idempotency_key_conflict"), "{line}");
    assert!(conflict.stdout.is_empty());

    // Through a proxy that loses the answer, with one attempt: the call gives up, the
    // operation stays pending, and the same command run again gets the first booking.
    let proxy = start(server.addr, vec![Fault::DropAnswer]).await;
    let lossy = format!("http://{}/v1/bookings", proxy.addr);
    let lost = tokio::task::spawn_blocking({
        let (journal, lossy) = (journal.clone(), lossy.clone());
        move || {
            call(
                &journal,
                &lossy,
                "cli-2",
                &body(7),
                &["--max-attempts", "1"],
            )
        }
    })
    .await
    .unwrap();
    assert!(!lost.status.success());
    let line = stderr_line(&lost);
    assert!(line.contains("stays pending"), "{line}");
    let resumed = tokio::task::spawn_blocking({
        let journal = journal.clone();
        move || call(&journal, &lossy, "cli-2", &body(7), &[])
    })
    .await
    .unwrap();
    assert!(resumed.status.success(), "{resumed:?}");
    assert_eq!(
        stderr_line(&resumed),
        "idemstore call: 201 Created, 1 attempt, replayed"
    );
    let mut listed = uids(server.addr).await;
    listed.sort();
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let mut expected = vec![uid, resumed["data"]["uid"].as_str().unwrap().to_owned()];
    expected.sort();
    assert_eq!(listed, expected, "one booking per operation");

    // A key derived from a stable id: the journal holds that id as the operation's key.
    let derived = call(
        &journal,
        &url,
        "cli-4",
        &body(10),
        &["--key-from", "webhook-evt-4"],
    );
    assert!(derived.status.success(), "{derived:?}");
    let keys = KeyJournal::open(&journal, JournalConfig::default()).unwrap();
    let entry = keys.key_for("cli-4").unwrap();
    assert_eq!(entry.key(), "webhook-evt-4");
    assert_eq!(
        entry.outcome(),
        Some(Outcome::Answered {
            status: 201,
            replayed: false
        })
    );
    keys.close().unwrap();

    let bad = call(&journal, "https://example.com/", "cli-3", "{}", &[]);
    assert!(!bad.status.success());
    assert!(stderr_line(&bad).contains("only http://"));
}

/// K4 and K8: a server that does not know whether the operation ran (`409
/// idempotency_outcome_unknown`) leaves it pending, and the line says what to do next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_k8_idemstore_call_leaves_an_outcome_unknown_pending_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("keys.redb");
    let app = axum::Router::new().route(
        "/v1/bookings",
        axum::routing::post(|| async { (http::StatusCode::CONFLICT, UNKNOWN) }),
    );
    let (addr, server) = crate::http_support::serve_router(app).await;
    let url = format!("http://{addr}/v1/bookings");
    let out = tokio::task::spawn_blocking({
        let journal = journal.clone();
        move || call(&journal, &url, "cli-6", &body(1), &[])
    })
    .await
    .unwrap();
    server.abort();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let line = stderr_line(&out);
    assert!(
        line.contains("; operation cli-6 stays pending in ")
            && line.ends_with(
                "the server does not know whether it ran; once someone there has settled its \
                 key, run the same command again to get its answer"
            ),
        "{line}"
    );
    let keys = KeyJournal::open(&journal, JournalConfig::default()).unwrap();
    assert_eq!(keys.key_for("cli-6").unwrap().outcome(), None);
    keys.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_k8_idemstore_call_says_an_operation_stays_pending_when_its_answer_settles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let journal = dir.path().join("keys.redb");
    // The first answer is lost, so the first attempt may have run; the second is a `404`,
    // which says nothing of the first: the operation stays pending, and the line says so.
    let proxy = start(server.addr, vec![Fault::DropAnswer, Fault::Forward]).await;
    let unknown = format!("http://{}/v1/no-such-route", proxy.addr);
    let out = tokio::task::spawn_blocking({
        let journal = journal.clone();
        move || call(&journal, &unknown, "cli-5", &body(1), &[])
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let line = stderr_line(&out);
    assert!(
        line.starts_with(
            "idemstore call: 404 Not Found, 2 attempts, executed; operation cli-5 stays pending in "
        ),
        "{line}"
    );
    assert!(
        line.ends_with("run the same command again to resume with its key"),
        "{line}"
    );
    let keys = KeyJournal::open(&journal, JournalConfig::default()).unwrap();
    assert_eq!(keys.key_for("cli-5").unwrap().outcome(), None);
    keys.close().unwrap();

    // Run again with its key, one attempt: the `404` is then the server's word, and settles it.
    let direct = format!("http://{}/v1/no-such-route", server.addr);
    let again = call(&journal, &direct, "cli-5", &body(1), &[]);
    assert!(!again.status.success());
    assert_eq!(
        stderr_line(&again),
        "idemstore call: 404 Not Found, 1 attempt, executed"
    );
    let keys = KeyJournal::open(&journal, JournalConfig::default()).unwrap();
    assert_eq!(
        keys.key_for("cli-5").unwrap().outcome(),
        Some(Outcome::Answered {
            status: 404,
            replayed: false
        })
    );
    keys.close().unwrap();
}

// ---- K7 with reqwest: the same policy as a reqwest-middleware middleware ---------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_the_reqwest_middleware_makes_one_booking_through_faults_and_stops_on_a_conflict() {
    use idemstore::client::RetryMiddleware;

    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let script = vec![
        Fault::DropAnswer,
        Fault::Reset,
        Fault::Stall,
        Fault::Delay(Duration::from_millis(30)),
    ];
    let proxy = start(server.addr, script).await;
    let journal = KeyJournal::in_memory(JournalConfig::default()).unwrap();
    // One connection per request, so that each attempt meets the next fault.
    let reqwest = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest)
        .with(RetryMiddleware::new(fast_policy()).journal(journal.clone()))
        .build();
    let url = format!("http://{}/v1/bookings", proxy.addr);
    let send = |op: &'static str, body: String| {
        client
            .post(&url)
            .with_extension(Operation::new(op))
            .header("authorization", "Bearer tok_demo")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let response = send("r-1", body(8)).await.unwrap();
    assert_eq!(response.status(), 201);
    let report = response.extensions().get::<RetryReport>().cloned().unwrap();
    assert!(report.attempts >= 4 && report.replayed, "{report:?}");
    assert_eq!(journal.key_for("r-1").unwrap().key(), report.key);
    let booked: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let uid = booked["data"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(uids(server.addr).await, [uid]);

    match send("r-1", body(9)).await {
        Err(reqwest_middleware::Error::Middleware(e)) => assert!(
            matches!(
                e.downcast_ref::<RetryError>(),
                Some(RetryError::Conflict { attempts: 1, .. })
            ),
            "{e:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(uids(server.addr).await.len(), 1);
    assert!(journal.pending().unwrap().is_empty());
}

/// A `POST` of `{}` to the scripted service, journaled as operation `op`.
fn operation_request(op: &str) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::post("http://x/v1/bookings")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    request.extensions_mut().insert(Operation::new(op));
    request
}

/// K8: an answer whose body cannot be written to stdout (a full disk) is a failure, said on
/// the one status line, not a success with the body lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_idemstore_call_fails_when_the_body_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("idem.redb"), &[]);
    let journal = dir.path().join("keys.redb");
    let url = format!("http://{}/v1/bookings", server.addr);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idemstore"))
        .args(["call", "POST", &url, "--data", &body(7), "--op", "full-1"])
        .arg("--journal")
        .arg(&journal)
        .args(["--header", "Authorization: Bearer tok_demo"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = stderr_line(&out);
    assert!(
        line.starts_with("idemstore call: 201") && line.contains("could not be written"),
        "{line}"
    );
    crate::serve::stop(server);
}
