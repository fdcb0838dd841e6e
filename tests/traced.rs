//! The `tracing` events (feature `tracing`), read by a subscriber that records them: a span per
//! guarded request with what the layer did, at the levels the design gives them; the store's
//! takeovers, fenced holders and operator releases; and no scope or key value in any of them.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};

use idemstore::http::Contract;
use idemstore::{Backend, Claim, Config, Durability, ManualClock, Store};

use crate::http_support::{post, send, start};
use crate::support::{T0, fp, key, resp, scope};

/// One recorded line: `LEVEL target message k=v ...` for an event, `span name k=v ...` for a
/// span's fields (at creation and each later record).
/// A recorded line, with the level of an event (none for a span's fields).
type Line = (Option<Level>, String);

#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<Line>>>,
}

/// A registry (which keeps track of the current span) with the capture on it.
fn subscriber(capture: &Capture) -> impl Subscriber + Send + Sync {
    // tracing caches each callsite's interest for the whole process, computed by the thread
    // that reaches it first; while at most one dispatcher is registered, from that thread's
    // own default: on another test's thread, none, so "never", and this capture would miss
    // the event for good. A second dispatcher, kept for the whole process, makes every
    // registration ask all of them, this capture included.
    static KEEP: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    KEEP.get_or_init(|| tracing::Dispatch::new(tracing_subscriber::registry()));
    tracing_subscriber::registry().with(capture.clone())
}

#[derive(Default)]
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        let line = format!("span {}{}", attrs.metadata().name(), f.0);
        self.lines.lock().push((None, line));
    }
    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        values.record(&mut f);
        self.lines
            .lock()
            .push((None, format!("span record{}", f.0)));
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let m = event.metadata();
        let line = format!("{} {}{}", m.level(), m.target(), f.0);
        self.lines.lock().push((Some(*m.level()), line));
    }
}

impl Capture {
    fn lines(&self) -> Vec<Line> {
        self.lines.lock().clone()
    }
    /// A warn event says that reservation `stale` was refused because `current` holds the key.
    fn saw_fenced(&self, stale: u64, current: u64) {
        let fenced = [
            "idemstore::store",
            "fenced",
            &format!("token={stale}"),
            &format!("current={current}"),
        ];
        assert_eq!(self.level_of(&fenced), Some(Level::WARN));
    }
    /// No event or span shows `text` (a key).
    fn never_shows(&self, text: &str) {
        assert!(self.lines().iter().all(|(_, l)| !l.contains(text)));
    }
    /// The level of the first event whose line contains every one of `parts`.
    fn level_of(&self, parts: &[&str]) -> Option<Level> {
        self.lines()
            .into_iter()
            .find(|(l, line)| l.is_some() && parts.iter().all(|p| line.contains(p)))
            .and_then(|(l, _)| l)
    }
}

/// The layer's span and events, on a runtime of one thread (so that the server's tasks run
/// where the subscriber is set).
#[tokio::test(flavor = "current_thread")]
async fn h19_a_guarded_request_has_a_span_and_an_event_at_the_level_of_its_outcome() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let app = start(crate::http_support::memory_store(), Contract::default()).await;
    let body = r#"{"room":101}"#;
    let first = send(app.addr, post("/v1/bookings", "secret-key-123", body))
        .await
        .unwrap();
    assert_eq!(first.status, http::StatusCode::CREATED);
    let again = send(app.addr, post("/v1/bookings", "secret-key-123", body))
        .await
        .unwrap();
    assert!(again.replayed());
    let other = send(
        app.addr,
        post("/v1/bookings", "secret-key-123", r#"{"room":9}"#),
    )
    .await
    .unwrap();
    assert_eq!(other.status, http::StatusCode::CONFLICT);
    assert_eq!(
        capture.level_of(&["idemstore::http", "outcome=executed", "status=201"]),
        Some(Level::DEBUG)
    );
    assert_eq!(
        capture.level_of(&["idemstore::http", "outcome=replayed"]),
        Some(Level::INFO)
    );
    assert_eq!(
        capture.level_of(&["idemstore::http", "outcome=conflict", "status=409"]),
        Some(Level::INFO)
    );
    let lines = capture.lines();
    let spans: Vec<&String> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("span idempotency"))
        .map(|(_, l)| l)
        .collect();
    assert_eq!(spans.len(), 3, "one span a guarded request: {spans:?}");
    assert!(
        spans
            .iter()
            .all(|l| l.contains("scope=") && l.contains("key_hash="))
    );
    assert!(
        lines.iter().any(|(_, l)| l.contains("store_us=")),
        "the store's latency is recorded"
    );
    assert!(
        lines.iter().all(|(_, l)| !l.contains("secret-key-123")),
        "no key in any event or span"
    );
}

/// The store's events on the memory engine, which decides on the caller's thread: a lease
/// taken over (info) and the stale holder refused (warn).
#[test]
fn c8_a_takeover_and_a_fenced_holder_are_events() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let clock = ManualClock::new(T0);
    let config = Config::builder()
        .clock(clock.clone())
        .durability(Durability::Memory)
        .lease(Duration::from_secs(10))
        .build()
        .unwrap();
    let store = Store::open("unused", config).unwrap();
    let (s, k, f) = (scope("acct"), key("secret-key-456"), fp("x"));
    let (stale, token) = taken_over_then_fenced(&store, &clock, (&s, &k, &f));
    assert_eq!(
        capture.level_of(&[
            "idemstore::store",
            "lease taken over",
            &format!("token={token}")
        ]),
        Some(Level::INFO)
    );
    capture.saw_fenced(stale, token);
    capture.never_shows("secret-key-456");
}

/// The Redis engine decides on the server and reads its answers on its own I/O thread: a
/// stale holder refused there is the same warn event, with both tokens, as on the other
/// engines. Read through a process-wide subscriber, since the event is not on this thread.
#[cfg(feature = "redis")]
#[test]
fn c8_a_fenced_holder_on_redis_is_an_event() {
    use idemstore::{RedisClock, RedisOptions};
    let Some(server) = crate::redis_support::Server::start() else {
        return;
    };
    let capture = global_capture();
    let clock = ManualClock::new(T0);
    let config = Config::builder()
        .clock(clock.clone())
        .lease(Duration::from_secs(10))
        .build()
        .unwrap();
    let options = RedisOptions::new(server.url()).clock(RedisClock::Store);
    let store = Store::open_redis_with(options, config).unwrap();
    let (s, k, f) = (scope("acct"), key("secret-key-789"), fp("x"));
    let (stale, token) = taken_over_then_fenced(&store, &clock, (&s, &k, &f));
    assert!(store.renew(&s, &k, stale).is_err());
    capture.saw_fenced(stale, token);
    capture.never_shows("secret-key-789");
}

/// C6: a holder that gives its key back, by `release` or by dropping its reservation, is a
/// debug event naming its token and how.
#[test]
fn c6_a_release_and_a_dropped_reservation_are_events() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let store = Store::in_memory(Config::default()).unwrap();
    let s = scope("acct");
    let released = crate::support::execute(store.begin(&s, &key("k-released"), &fp("x")).unwrap());
    let kept = released.token();
    released.release().unwrap();
    let dropped = crate::support::execute(store.begin(&s, &key("k-dropped"), &fp("x")).unwrap());
    let gone = dropped.token();
    drop(dropped);
    for (token, how) in [(kept, "dropped=false"), (gone, "dropped=true")] {
        assert_eq!(
            capture.level_of(&[
                "idemstore::store",
                "reservation released",
                &format!("token={token}"),
                how
            ]),
            Some(Level::DEBUG)
        );
    }
}

/// An operator's release is an event (info) naming the token it fenced, without the key.
#[test]
fn o7_an_operator_release_is_an_event() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(subscriber(&capture));
    let store = Store::in_memory(Config::default()).unwrap();
    let (s, k, f) = (scope("acct"), key("secret-key-789"), fp("x"));
    let Claim::Execute { token, .. } = store.claim(&s, &k, &f).unwrap() else {
        panic!("a new key executes");
    };
    assert_eq!(store.release_held(&s, &k).unwrap(), token);
    assert_eq!(
        capture.level_of(&[
            "idemstore::store",
            "released by an operator",
            &format!("token={token}")
        ]),
        Some(Level::INFO)
    );
    capture.never_shows("secret-key-789");
}

/// A capture installed as the process's default subscriber, once: it sees the events of
/// threads that have no subscriber of their own (the engines' threads, in every test of the
/// binary), so it keeps warnings and errors only.
#[cfg(feature = "redis")]
fn global_capture() -> Capture {
    use tracing_subscriber::Layer;
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let warnings = capture
                .clone()
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(warnings))
                .unwrap();
            capture
        })
        .clone()
}

/// A key reserved, its 10 s lease let run out, taken over, and the stale holder's completion
/// refused: the stale token and the taker's.
fn taken_over_then_fenced(
    store: &Store,
    clock: &ManualClock,
    (s, k, f): (&idemstore::Scope, &idemstore::Key, &idemstore::Fingerprint),
) -> (u64, u64) {
    let Claim::Execute { token: stale, .. } = store.claim(s, k, f).unwrap() else {
        panic!("a new key executes");
    };
    clock.advance(Duration::from_secs(10));
    let Claim::Execute { token, .. } = store.claim(s, k, f).unwrap() else {
        panic!("the lease ran out: a takeover");
    };
    assert!(store.complete(s, k, stale, resp(201, "late")).is_err());
    (stale, token)
}
