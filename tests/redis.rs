//! The Redis engine (feature `redis`): stores on several "machines" (several `Store`s) sharing
//! one server, a server killed and restarted, replies lost on the wire, clock skew, and the
//! servers the engine refuses. The contract's own suite runs on Redis in `conformance.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use idemstore::{
    Begin, CompleteError, Completion, Config, Durability, ManualClock, OpenError, RedisClock,
    RedisOptions, Store, Unavailable,
};

use crate::redis_support::{Cluster, HoldProxy, LossyProxy, Server};
use crate::support::*;

/// A store on `url` whose own clock `clock` decides (so a test can move time): lease 10 s,
/// TTL 100 s.
fn on(url: &str, clock: &ManualClock) -> Store {
    let cfg = config(clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100))
        .build()
        .unwrap();
    Store::open_redis_with(RedisOptions::new(url).clock(RedisClock::Store), cfg).unwrap()
}

/// [`on`] without the replay cache: every answer comes from the server.
fn on_uncached(url: &str, clock: &ManualClock) -> Store {
    let cfg = config(clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100))
        .build()
        .unwrap();
    let options = RedisOptions::new(url)
        .clock(RedisClock::Store)
        .replay_cache_bytes(0);
    Store::open_redis_with(options, cfg).unwrap()
}

/// A server, and a store on it (see [`on`]) that has completed one record, so that its
/// functions are loaded and its connection is up.
fn server_with_a_record() -> Option<(Server, Store)> {
    let server = Server::start()?;
    let store = on(&server.url(), &ManualClock::new(T0));
    execute(store.begin(&scope("s"), &key("warm"), &fp("x")).unwrap())
        .complete(resp(200, "ok"))
        .unwrap();
    Some((server, store))
}

fn execute(b: Begin) -> idemstore::Reservation {
    match b {
        Begin::Execute(r) => r,
        other => panic!("expected Execute, got {other:?}"),
    }
}

#[test]
fn c1_stores_on_one_server_execute_each_key_once() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let stores: Vec<Store> = (0..2).map(|_| on(&server.url(), &clock)).collect();
    const THREADS: usize = 8;
    const KEYS: usize = 40;
    let barrier = Arc::new(Barrier::new(THREADS));
    let executed: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = stores[t % 2].clone();
                let barrier = Arc::clone(&barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for k in 0..KEYS {
                        let name = format!("k{k}");
                        let b = store.begin(&scope("s"), &key(&name), &fp("same")).unwrap();
                        if let Begin::Execute(r) = b {
                            r.complete(resp(201, &format!("{name} by {t}"))).unwrap();
                            mine.push(name);
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for name in executed.into_iter().flatten() {
        *by_key.entry(name).or_default() += 1;
    }
    assert_eq!(by_key.len(), KEYS, "every key executed");
    assert!(by_key.values().all(|&n| n == 1), "{by_key:?}");
    // Each store replays what the other stored.
    for k in 0..KEYS {
        for store in &stores {
            match store
                .begin(&scope("s"), &key(&format!("k{k}")), &fp("same"))
                .unwrap()
            {
                Begin::Replay(r) => assert_eq!(r.status(), 201),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn c3_c10_acknowledged_completions_survive_sigkills_of_the_server() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = on_uncached(&server.url(), &clock);
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        for i in 0..20 {
            let name = format!("r{round}-{i}");
            let r = execute(store.begin(&scope("s"), &key(&name), &fp(&name)).unwrap());
            let body = format!("body of {name}");
            assert_eq!(r.complete(resp(200, &body)).unwrap(), Completion::Stored);
            acknowledged.push((name, body));
        }
        // A reservation open across the kill: its holder completes after the restart.
        let held = execute(store.begin(&scope("s"), &key("held"), &fp("held")).unwrap());
        server.kill();
        server.restart();
        // The same store reconnects by itself; every acknowledged completion replays.
        for (name, body) in &acknowledged {
            match store.begin(&scope("s"), &key(name), &fp(name)).unwrap() {
                Begin::Replay(r) => assert_eq!(r.body(), body.as_bytes()),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            held.complete(resp(200, "after restart")).unwrap(),
            Completion::Stored
        );
        assert!(store.purge(&scope("s"), &key("held")).unwrap());
    }
    assert!(store.check().unwrap().is_sound());
}

#[test]
fn c8_tokens_of_a_key_increase_across_release_takeover_purge_and_restart() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = on_uncached(&server.url(), &clock);
    let (s, k) = (scope("s"), key("k"));
    let mut tokens = Vec::new();
    let r = execute(store.begin(&s, &k, &fp("a")).unwrap());
    tokens.push(r.token());
    r.release().unwrap();
    let r = execute(store.begin(&s, &k, &fp("a")).unwrap());
    tokens.push(r.token());
    clock.advance(Duration::from_secs(10));
    let taker = execute(store.begin(&s, &k, &fp("a")).unwrap());
    tokens.push(taker.token());
    assert!(matches!(
        r.complete(resp(200, "stale")),
        Err(CompleteError::Fenced { .. })
    ));
    taker.complete(resp(200, "x")).unwrap();
    assert!(store.purge(&s, &k).unwrap());
    server.kill();
    server.restart();
    let r = execute(store.begin(&s, &k, &fp("a")).unwrap());
    tokens.push(r.token());
    r.complete(resp(200, "y")).unwrap();
    // Expired: the record is gone from every decision; the next token is still higher.
    clock.advance(Duration::from_secs(100));
    let r = execute(store.begin(&s, &k, &fp("b")).unwrap());
    tokens.push(r.token());
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[test]
fn c8_on_the_server_clock_a_skewed_caller_moves_no_deadline() {
    let Some(server) = Server::start() else {
        return;
    };
    // Two machines: one whose clock is an hour ahead. The server's clock decides (the
    // default), so the fast one cannot take the other's lease over, and both agree.
    let cfg = |clock: &ManualClock| {
        config(clock)
            .lease(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let right = ManualClock::new(now);
    let ahead = ManualClock::new(now + 3_600_000);
    let a = Store::open_redis(&server.url(), cfg(&right)).unwrap();
    let b = Store::open_redis(&server.url(), cfg(&ahead)).unwrap();
    let r = execute(a.begin(&scope("s"), &key("k"), &fp("x")).unwrap());
    assert!(matches!(
        b.begin(&scope("s"), &key("k"), &fp("x")).unwrap(),
        Begin::InProgress { .. }
    ));
    // The lease deadline is the server's time plus the lease, wherever it is read.
    let deadline = r.lease_deadline();
    assert!(
        deadline >= now + 30_000 && deadline < now + 3_600_000,
        "{deadline}"
    );
    let seen = b.get(&scope("s"), &key("k")).unwrap().unwrap();
    assert_eq!(seen.lease_deadline, Some(deadline));
    r.complete(resp(201, "done")).unwrap();
    assert!(matches!(
        b.begin(&scope("s"), &key("k"), &fp("x")).unwrap(),
        Begin::Replay(_)
    ));
}

#[test]
fn c8_on_the_callers_clocks_a_caller_ahead_takes_leases_over_early() {
    let Some(server) = Server::start() else {
        return;
    };
    // What `RedisClock::Store` means with skewed machines: the one ahead by more than the
    // lease takes a live reservation over. This is why the server's clock is the default.
    let right = ManualClock::new(T0);
    let ahead = ManualClock::new(T0 + 11_000);
    let a = on(&server.url(), &right);
    let b = on(&server.url(), &ahead);
    let r = execute(a.begin(&scope("s"), &key("k"), &fp("x")).unwrap());
    let taker = execute(b.begin(&scope("s"), &key("k"), &fp("x")).unwrap());
    assert!(taker.token() > r.token());
    assert!(matches!(
        r.complete(resp(200, "late")),
        Err(CompleteError::Fenced { .. })
    ));
}

#[test]
fn calls_whose_replies_are_lost_are_applied_once() {
    let Some(server) = Server::start() else {
        return;
    };
    let proxy = LossyProxy::start(server.socket());
    let clock = ManualClock::new(T0);
    let store = on(&proxy.url(), &clock);
    let witness = on(&server.url(), &clock);
    let s = scope("s");
    for i in 0..10 {
        let k = key(&format!("k{i}"));
        // The claim runs on the server, its reply is lost, the engine sends it again on a new
        // connection: the script knows its own reservation and answers it again.
        proxy.drop_replies.store(1, Ordering::SeqCst);
        let r = execute(store.begin(&s, &k, &fp("x")).unwrap());
        let seen = witness.get(&s, &k).unwrap().unwrap();
        assert_eq!(seen.token, r.token(), "one reservation, not two");
        proxy.drop_replies.store(1, Ordering::SeqCst);
        assert_eq!(
            r.complete(resp(201, &format!("r{i}"))).unwrap(),
            Completion::Stored
        );
        match witness.begin(&s, &k, &fp("x")).unwrap() {
            Begin::Replay(resp) => assert_eq!(resp.body(), format!("r{i}").as_bytes()),
            other => panic!("{other:?}"),
        }
        // A release whose reply is lost answers as the first call did. A purge is sent once
        // (`a_purge_whose_reply_is_lost_…`): its outcome is unknown, and purging again says
        // what its first send left.
        let k2 = key(&format!("released{i}"));
        let r = execute(store.begin(&s, &k2, &fp("x")).unwrap());
        proxy.drop_replies.store(1, Ordering::SeqCst);
        r.release().unwrap();
        proxy.drop_replies.store(1, Ordering::SeqCst);
        let unknown = store.purge(&s, &k2);
        assert!(
            matches!(unknown, Err(Unavailable::OutcomeUnknown { .. })),
            "{unknown:?}"
        );
        assert!(!store.purge(&s, &k2).unwrap());
        proxy.drop_replies.store(1, Ordering::SeqCst);
        let unknown = store.purge(&s, &k);
        assert!(
            matches!(unknown, Err(Unavailable::OutcomeUnknown { .. })),
            "{unknown:?}"
        );
        assert!(!store.purge(&s, &k).unwrap(), "the first send purged it");
    }
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        50,
        "every fault was injected"
    );
    assert_eq!(store.stats().executes, 20);
}

/// A call the server applied, whose reply was lost, and which the server refuses when it is
/// sent again (here `NOREPLICAS`; after a restart `LOADING`, after a failover `READONLY`): its
/// caller hears that the outcome is unknown, not a refusal that says nothing was applied.
#[test]
fn a_call_refused_when_sent_again_after_its_reply_was_lost_has_an_unknown_outcome() {
    let Some(server) = Server::start() else {
        return;
    };
    let server = Arc::new(server);
    let proxy = LossyProxy::start(server.socket());
    let refuse = |on: bool| {
        let n = if on { "1" } else { "0" };
        let out = server.command(&["CONFIG", "SET", "min-replicas-to-write", n]);
        assert!(out.contains("OK"), "{out}");
    };
    let srv = Arc::clone(&server);
    *proxy.on_drop.lock().unwrap() = Some(Box::new(move || {
        let out = srv.command(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
        assert!(out.contains("OK"), "{out}");
    }));
    let clock = ManualClock::new(T0);
    let store = on(&proxy.url(), &clock);
    let witness = on_uncached(&server.url(), &clock);
    let s = scope("s");
    // A completion.
    let k = key("completed");
    let r = execute(store.begin(&s, &k, &fp("x")).unwrap());
    proxy.drop_replies.store(1, Ordering::SeqCst);
    let done = r.complete(resp(201, "first"));
    refuse(false);
    assert!(
        matches!(
            done,
            Err(CompleteError::Unavailable(
                Unavailable::OutcomeUnknown { .. }
            ))
        ),
        "{done:?}"
    );
    match witness.begin(&s, &k, &fp("x")).unwrap() {
        Begin::Replay(got) => assert_eq!(got.body(), b"first"),
        other => panic!("the completion was applied: {other:?}"),
    }
    // A claim.
    let k = key("claimed");
    proxy.drop_replies.store(1, Ordering::SeqCst);
    let claimed = store.begin(&s, &k, &fp("x"));
    refuse(false);
    assert!(
        matches!(
            claimed,
            Err(idemstore::BeginError::Unavailable(
                Unavailable::OutcomeUnknown { .. }
            ))
        ),
        "{claimed:?}"
    );
    assert!(matches!(
        witness.begin(&s, &k, &fp("x")).unwrap(),
        Begin::InProgress { .. }
    ));
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 2);
}

/// A store with one connection, its own clock deciding, and the cache as asked.
fn one_lane(url: &str, clock: &ManualClock, cache: bool) -> Store {
    let cfg = config(clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100))
        .build()
        .unwrap();
    let mut options = RedisOptions::new(url)
        .clock(RedisClock::Store)
        .connections(1);
    if !cache {
        options = options.replay_cache_bytes(0);
    }
    Store::open_redis_with(options, cfg).unwrap()
}

/// A server, a [`HoldProxy`] in front of it, and on a clock of their own a one-lane store
/// through the proxy (`through`, with its cache) and one straight on the server (`direct`,
/// without a cache). Fields drop in order: the stores close while the server still runs.
struct LateCopy {
    through: Store,
    direct: Store,
    clock: ManualClock,
    proxy: HoldProxy,
    server: Server,
}

fn late_copy() -> Option<LateCopy> {
    let server = Server::start()?;
    let proxy = HoldProxy::start(server.socket());
    let clock = ManualClock::new(T0);
    let through = one_lane(&proxy.url(), &clock, true);
    let direct = one_lane(&server.url(), &clock, false);
    Some(LateCopy {
        through,
        direct,
        clock,
        proxy,
        server,
    })
}

/// The first copy of a call whose connection broke, held in flight (`HoldProxy`) while the
/// call is sent again and answered, and delivered after newer calls of its key: the engine
/// closed that connection on the server before sending again, so the copy is never applied.
/// Here a purge, whose late copy would erase another machine's acknowledged completion.
#[test]
fn a_late_copy_of_a_purge_cannot_erase_a_newer_completion() {
    let Some(t) = late_copy() else {
        return;
    };
    let other = one_lane(&t.server.url(), &t.clock, true);
    let (s, k) = (scope("s"), key("k"));
    execute(t.through.begin(&s, &k, &fp("x")).unwrap())
        .complete(resp(201, "first"))
        .unwrap();
    t.proxy.arm.store(true, Ordering::SeqCst);
    // A purge is sent once: its copy held, its outcome is unknown to its caller.
    let unknown = t.through.purge(&s, &k);
    assert!(
        matches!(unknown, Err(Unavailable::OutcomeUnknown { .. })),
        "{unknown:?}"
    );
    assert_eq!(t.proxy.held(), 1, "the first copy is held");
    // Purged again, and run anew on another machine.
    assert!(t.direct.purge(&s, &k).unwrap());
    let r = execute(other.begin(&s, &k, &fp("x")).unwrap());
    assert_eq!(r.complete(resp(201, "second")).unwrap(), Completion::Stored);
    assert_eq!(
        t.proxy.release(),
        vec![None],
        "the old connection was closed"
    );
    match t.direct.begin(&s, &k, &fp("x")).unwrap() {
        Begin::Replay(got) => assert_eq!(got.body(), b"second"),
        other => panic!("an acknowledged completion stopped replaying: {other:?}"),
    }
}

/// As above, for a claim: its late copy would hold a released key for nobody (C6).
#[test]
fn a_late_copy_of_a_claim_cannot_hold_a_released_key() {
    let Some(t) = late_copy() else {
        return;
    };
    let (s, k) = (scope("s"), key("k"));
    t.proxy.arm.store(true, Ordering::SeqCst);
    let r = execute(t.through.begin(&s, &k, &fp("x")).unwrap());
    assert_eq!(t.proxy.held(), 1);
    r.release().unwrap();
    assert_eq!(t.proxy.release(), vec![None]);
    drop(execute(t.direct.begin(&s, &k, &fp("x")).unwrap()));
}

/// As above, for a recovery point: its late copy would replace the later point (P1, P2).
#[test]
fn a_late_copy_of_a_point_cannot_replace_a_later_one() {
    let Some(t) = late_copy() else {
        return;
    };
    let (s, k) = (scope("s"), key("k"));
    let mut r = execute(t.through.begin(&s, &k, &fp("x")).unwrap());
    t.proxy.arm.store(true, Ordering::SeqCst);
    r.save_point("reserved", b"step-1").unwrap();
    assert_eq!(t.proxy.held(), 1);
    r.save_point("charged", b"step-2").unwrap();
    assert_eq!(t.proxy.release(), vec![None]);
    r.abandon();
    t.clock.advance(Duration::from_secs(11));
    let next = execute(t.direct.begin(&s, &k, &fp("x")).unwrap());
    assert_eq!(next.recovery_point().unwrap().name(), "charged");
}

/// As above, for a renewal on the store's clock: its late copy would move the lease deadline
/// back before the one its holder was told (C8).
#[test]
fn a_late_copy_of_a_renewal_cannot_shorten_the_lease() {
    let Some(t) = late_copy() else {
        return;
    };
    let (s, k) = (scope("s"), key("k"));
    let mut r = execute(t.through.begin(&s, &k, &fp("x")).unwrap());
    t.clock.advance(Duration::from_secs(1));
    t.proxy.arm.store(true, Ordering::SeqCst);
    r.renew().unwrap();
    assert_eq!(t.proxy.held(), 1);
    t.clock.advance(Duration::from_secs(4));
    r.renew().unwrap();
    assert_eq!(r.lease_deadline(), T0 + 15_000);
    assert_eq!(t.proxy.release(), vec![None]);
    t.clock.advance(Duration::from_secs(7));
    assert!(matches!(
        t.direct.begin(&s, &k, &fp("x")).unwrap(),
        Begin::InProgress { .. }
    ));
}

#[test]
fn a_server_that_is_down_is_an_error_then_the_store_reconnects() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let missing = format!(
        "redis+unix://{}/none.sock",
        server.socket().parent().unwrap().display()
    );
    let options = RedisOptions::new(missing).timeout(Duration::from_millis(200));
    assert!(matches!(
        Store::open_redis_with(options, Config::default()),
        Err(OpenError::Unreachable { .. })
    ));
    let clock = ManualClock::new(T0);
    let cfg = config(&clock).build().unwrap();
    let options = RedisOptions::new(server.url())
        .clock(RedisClock::Store)
        .timeout(Duration::from_millis(300));
    let store = Store::open_redis_with(options, cfg).unwrap();
    execute(store.begin(&scope("s"), &key("a"), &fp("x")).unwrap())
        .complete(resp(200, "a"))
        .unwrap();
    server.kill();
    match store.begin(&scope("s"), &key("b"), &fp("x")) {
        Err(idemstore::BeginError::Unavailable(
            Unavailable::Unreachable { .. } | Unavailable::OutcomeUnknown { .. },
        )) => {}
        other => panic!("{other:?}"),
    }
    server.restart();
    assert!(matches!(
        store.begin(&scope("s"), &key("a"), &fp("x")).unwrap(),
        Begin::Replay(_)
    ));
}

#[test]
fn servers_that_can_lose_records_are_refused() {
    let cases: [(&[&str], &str); 3] = [
        (&["--appendonly", "no"], "appendonly"),
        (&["--maxmemory-policy", "allkeys-lru"], "maxmemory-policy"),
        (&["--appendfsync", "everysec"], "appendfsync"),
    ];
    for (settings, named) in cases {
        let Some(server) = Server::start_with(settings) else {
            return;
        };
        match Store::open_redis(&server.url(), Config::default()) {
            Err(OpenError::UnsafeServer { detail }) => assert!(detail.contains(named), "{detail}"),
            other => panic!("{settings:?}: {other:?}"),
        }
        // The operator may vouch for the server.
        let trusted = RedisOptions::new(server.url()).trust_server_settings();
        Store::open_redis_with(trusted, Config::default())
            .unwrap()
            .close()
            .unwrap();
    }
    // `everysec` is enough for a store that promises no more than a buffered flush.
    let Some(server) = Server::start_with(&["--appendfsync", "everysec"]) else {
        return;
    };
    let buffered = Config::builder()
        .durability(Durability::Buffered {
            max_delay: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    Store::open_redis(&server.url(), buffered).unwrap();
}

#[test]
fn memory_durability_and_malformed_options_are_refused() {
    let memory = Config::builder()
        .durability(Durability::Memory)
        .build()
        .unwrap();
    match Store::open_redis("redis://127.0.0.1:1", memory) {
        Err(OpenError::Config(e)) => assert_eq!(e.setting(), "ConfigBuilder::durability"),
        other => panic!("{other:?}"),
    }
    match Store::open_redis("http://nowhere", Config::default()) {
        Err(OpenError::Config(e)) => assert_eq!(e.setting(), "RedisOptions::new"),
        other => panic!("{other:?}"),
    }
    let bad = RedisOptions::new("redis://127.0.0.1:1").prefix("a{b}");
    match Store::open_redis_with(bad, Config::default()) {
        Err(OpenError::Config(e)) => assert_eq!(e.setting(), "RedisOptions::prefix"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stores_with_different_prefixes_share_a_server_without_meeting() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let cfg = || config(&clock).build().unwrap();
    let opts = |p: &str| {
        RedisOptions::new(server.url())
            .prefix(p)
            .clock(RedisClock::Store)
    };
    let a = Store::open_redis_with(opts("a:"), cfg()).unwrap();
    let b = Store::open_redis_with(opts("b:"), cfg()).unwrap();
    execute(a.begin(&scope("s"), &key("k"), &fp("x")).unwrap())
        .complete(resp(200, "a"))
        .unwrap();
    let _held = execute(b.begin(&scope("s"), &key("k"), &fp("y")).unwrap());
    assert_eq!(a.records(None, 10).unwrap().len(), 1);
    assert_eq!(b.records(None, 10).unwrap().len(), 1);
    assert_eq!(a.records(None, 10).unwrap()[0].key, "k");
}

/// A blocking caller sends its own call when its lane is idle, but an async caller's poll
/// must never wait on the server: with the server paused, the first poll returns at once,
/// and the lane's own thread sends the call and wakes the task once the server answers.
#[test]
fn an_async_poll_never_waits_on_the_server() {
    use std::future::Future;
    use std::task::{Context, Waker};

    let Some((server, store)) = server_with_a_record() else {
        return;
    };
    server.signal("-STOP");
    let s = scope("s");
    let k = key("paused");
    let x = fp("x");
    let mut fut = std::pin::pin!(store.begin_async(&s, &k, &x));
    let first = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    // Had the poll sent the call itself, it would have waited for the server until the call's
    // deadline and come back with an error.
    assert!(first.is_pending(), "{first:?}");
    server.signal("-CONT");
    let begin = crate::async_api::block_on(fut);
    execute(begin.unwrap()).complete(resp(201, "made")).unwrap();
    // The blocking path, on the lane the async call used.
    let again = store.begin(&s, &k, &x).unwrap();
    assert_eq!(replay(again).body(), b"made");
}

#[test]
fn c6_a_dropped_reservation_is_released_before_the_next_call() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = on(&server.url(), &clock);
    for i in 0..50 {
        let k = key(&format!("k{i}"));
        drop(execute(store.begin(&scope("s"), &k, &fp("x")).unwrap()));
        // Queued after the release on the same connection: sees the key free.
        execute(store.begin(&scope("s"), &k, &fp("x")).unwrap())
            .complete(resp(200, "ok"))
            .unwrap();
    }
    assert_eq!(store.stats().releases, 50);
}

#[test]
fn c1_c3_a_cluster_reshard_under_load_executes_nothing_twice_and_loses_no_replay() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let stores: Vec<Store> = (0..2).map(|_| on(&cluster.url(), &clock)).collect();
    const THREADS: usize = 4;
    const KEYS: usize = 300;
    let resharded = AtomicBool::new(false);
    let rounds_during = AtomicUsize::new(0);
    let executed: Vec<Vec<(usize, String)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = stores[t % 2].clone();
                let (resharded, rounds_during) = (&resharded, &rounds_during);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    // Rounds over every key until the reshards are over, then one more.
                    let mut round = 0;
                    loop {
                        let last = resharded.load(Ordering::SeqCst);
                        for k in 0..KEYS {
                            // Threads walk the keys from different ends, so that they meet.
                            let k = if t % 2 == 0 { k } else { KEYS - 1 - k };
                            let name = format!("k{k}");
                            match store.begin(&scope("s"), &key(&name), &fp("x")).unwrap() {
                                Begin::Execute(r) => {
                                    let body = format!("{name} by {t} in {round}");
                                    r.complete(resp(201, &body)).unwrap();
                                    mine.push((k, body));
                                }
                                Begin::Replay(_) | Begin::InProgress { .. } => {}
                                Begin::Conflict => panic!("conflict on {name}"),
                                Begin::OutcomeUnknown => panic!("outcome unknown on {name}"),
                            }
                        }
                        if last {
                            break;
                        }
                        rounds_during.fetch_add(1, Ordering::SeqCst);
                        round += 1;
                    }
                    mine
                })
            })
            .collect();
        // Slots move from node 0 to node 1, and back, while the workers run.
        cluster.reshard(0, 1, 1500);
        cluster.reshard(1, 0, 1500);
        resharded.store(true, Ordering::SeqCst);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(
        rounds_during.load(Ordering::SeqCst) > 0,
        "the load overlapped the reshards"
    );
    let mut bodies: HashMap<usize, String> = HashMap::new();
    for (k, body) in executed.into_iter().flatten() {
        assert!(bodies.insert(k, body).is_none(), "key {k} executed twice");
    }
    assert_eq!(bodies.len(), KEYS);
    for (k, body) in &bodies {
        match stores[1]
            .begin(&scope("s"), &key(&format!("k{k}")), &fp("x"))
            .unwrap()
        {
            Begin::Replay(r) => assert_eq!(r.body(), body.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stores[0].records(None, 10_000).unwrap().len(), KEYS);
    assert!(stores[0].check().unwrap().is_sound());
}

#[test]
fn c3_c4_completed_records_are_answered_from_this_machines_cache() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = on(&server.url(), &clock);
    let (s, k) = (scope("s"), key("k"));
    execute(store.begin(&s, &k, &fp("x")).unwrap())
        .complete(resp(201, "first"))
        .unwrap();
    // Another machine's completion, learned by a replay from the server, is kept too.
    let other = on(&server.url(), &clock);
    execute(other.begin(&s, &key("k2"), &fp("x")).unwrap())
        .complete(resp(201, "second"))
        .unwrap();
    assert!(matches!(
        store.begin(&s, &key("k2"), &fp("x")).unwrap(),
        Begin::Replay(_)
    ));
    // With the server gone, both replays and a conflict are still answered.
    server.kill();
    match store.begin(&s, &k, &fp("x")).unwrap() {
        Begin::Replay(r) => assert_eq!(r.body(), b"first"),
        other => panic!("{other:?}"),
    }
    match store.begin(&s, &key("k2"), &fp("x")).unwrap() {
        Begin::Replay(r) => assert_eq!(r.body(), b"second"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.begin(&s, &k, &fp("y")).unwrap(),
        Begin::Conflict
    ));
    assert_eq!(store.stats().answered_from_index, 3);
    // Past the record's expiry the copy is not served: the call goes to the server.
    clock.advance(Duration::from_secs(100));
    assert!(store.begin(&s, &k, &fp("x")).is_err());
}

#[test]
fn a_purge_on_another_machine_reaches_this_cache_only_at_expiry() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let cached = on(&server.url(), &clock);
    let uncached = {
        let cfg = config(&clock)
            .lease(Duration::from_secs(10))
            .ttl(Duration::from_secs(100));
        let options = RedisOptions::new(server.url())
            .clock(RedisClock::Store)
            .replay_cache_bytes(0);
        Store::open_redis_with(options, cfg.build().unwrap()).unwrap()
    };
    let (s, k) = (scope("s"), key("k"));
    execute(cached.begin(&s, &k, &fp("x")).unwrap())
        .complete(resp(201, "first"))
        .unwrap();
    assert!(matches!(
        uncached.begin(&s, &k, &fp("x")).unwrap(),
        Begin::Replay(_)
    ));
    assert!(uncached.purge(&s, &k).unwrap());
    // The machine without a cache runs the key again at once; the one with its copy replays
    // the purged response until the record would have expired (docs/distributed.md).
    assert!(matches!(
        cached.begin(&s, &k, &fp("x")).unwrap(),
        Begin::Replay(_)
    ));
    let held = execute(uncached.begin(&s, &k, &fp("x")).unwrap());
    held.complete(resp(201, "second")).unwrap();
    // A purge through the caching store itself forgets its copy.
    assert!(cached.purge(&s, &k).unwrap());
    drop(execute(cached.begin(&s, &k, &fp("x")).unwrap()));
}

/// Runs `f` on a new thread and returns once that thread sleeps in the kernel (`S` in its
/// `/proc` status): with the server stopped, a call sleeps there once it has been sent, or
/// queued behind a call that has.
fn spawn_until_asleep<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        tx.send(std::fs::read_link("/proc/thread-self").unwrap())
            .unwrap();
        f()
    });
    let stat = std::path::Path::new("/proc")
        .join(rx.recv().unwrap())
        .join("stat");
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&stat).unwrap();
        // The state follows the command name, which is in parentheses.
        let state = text.rsplit(')').next().unwrap().trim_start().chars().next();
        if state == Some('S') {
            return handle;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the call never waited"
        );
        std::thread::yield_now();
    }
}

/// A purge through a store queued behind that store's own completion of the key, which is on
/// the wire (the server stopped): the completion is answered first and keeps its record in the
/// cache, and the purge, answered after it, must leave no copy behind, so the key runs again.
#[test]
fn a_purge_behind_a_completion_on_the_wire_leaves_no_copy_in_the_cache() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = on(&server.url(), &clock);
    let (s, k) = (scope("s"), key("k"));
    let held = execute(store.begin(&s, &k, &fp("x")).unwrap());
    server.signal("-STOP");
    let completing = spawn_until_asleep(move || held.complete(resp(201, "first")));
    let st = store.clone();
    let purging = spawn_until_asleep(move || st.purge(&scope("s"), &key("k")));
    server.signal("-CONT");
    assert_eq!(completing.join().unwrap().unwrap(), Completion::Stored);
    assert!(purging.join().unwrap().unwrap());
    assert!(store.get(&s, &k).unwrap().is_none());
    drop(execute(store.begin(&s, &k, &fp("x")).unwrap()));
}

#[test]
fn functions_lost_by_the_server_are_loaded_again() {
    let Some((server, store)) = server_with_a_record() else {
        return;
    };
    // An operator flushes the functions (or a new node joins without them): the next call is
    // refused with "Function not found", and the store loads the library and sends it again.
    assert!(server.command(&["FUNCTION", "FLUSH"]).starts_with("+OK"));
    assert!(server.command(&["FUNCTION", "LIST"]).starts_with("*0"));
    execute(store.begin(&scope("s"), &key("b"), &fp("x")).unwrap())
        .complete(resp(200, "b"))
        .unwrap();
    assert!(!server.command(&["FUNCTION", "LIST"]).starts_with("*0"));
}

#[test]
fn c10_sigkills_of_the_server_under_load_lose_no_acknowledged_completion() {
    let Some(server) = Server::start() else {
        return;
    };
    let (kills, lost, unordered) = kill_loop(server, RedisOptions::new);
    eprintln!("{kills} SIGKILLs of the server under load, {lost} acknowledged completions lost");
    assert!(kills >= 10, "the server was killed under load");
    assert_eq!(lost, 0);
    assert_eq!(unordered, 0, "a key's tokens went back");
}

/// The negative control: a server without an append-only file (accepted only because the
/// test vouches for it) loses acknowledged completions to the same kills.
#[test]
fn c10_without_an_append_only_file_the_same_kills_lose_completions() {
    let Some(server) = Server::start_with(&["--appendonly", "no"]) else {
        return;
    };
    let (kills, lost, _) = kill_loop(server, |url| RedisOptions::new(url).trust_server_settings());
    assert!(kills >= 10);
    assert!(lost > 0, "{kills} kills lost nothing without persistence");
}

/// A key of the kill loop: its name, the tokens it executed with, whether its completion was
/// acknowledged.
type KeyOutcome = (String, Vec<u64>, bool);

/// Workers complete keys of their own while the server is killed with SIGKILL and restarted
/// after every ten acknowledgements; answers the kills, how many acknowledged completions do
/// not replay afterwards, and how many keys saw a token not above the one before. Whatever the
/// server does, a key never conflicts and a replay holds the key's own response.
fn kill_loop(
    server: Server,
    options: impl FnOnce(String) -> RedisOptions,
) -> (usize, usize, usize) {
    let server = std::sync::Mutex::new(server);
    let clock = ManualClock::new(T0);
    // A day of TTL: the leases the workers let run out move the clock by minutes.
    let cfg = config(&clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(86_400))
        .build()
        .unwrap();
    // No replay cache: the replays at the end must come from the server, not from this
    // process's memory of its own completions.
    let options = options(server.lock().unwrap().url())
        .clock(RedisClock::Store)
        .replay_cache_bytes(0);
    let store = Store::open_redis_with(options, cfg).unwrap();
    const WORKERS: usize = 4;
    const KEYS_EACH: usize = 60;
    const KILLS: usize = 30;
    // Kills that land under load whatever the machine's speed: the workers hold at every
    // tenth acknowledgement until the killer has killed for it, this many times.
    const HELD_KILLS: usize = 10;
    let acked = AtomicUsize::new(0);
    let killed = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    // Per key: the tokens it executed with, and whether its completion was acknowledged.
    let outcomes = std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (store, clock, acked, killed) = (store.clone(), clock.clone(), &acked, &killed);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..KEYS_EACH {
                        let name = format!("w{w}-k{i}");
                        let (k, f) = (key(&name), fp(&name));
                        let mut tokens = Vec::new();
                        let mut was_acked = false;
                        loop {
                            match store.begin(&scope("s"), &k, &f) {
                                Ok(Begin::Execute(r)) => {
                                    tokens.push(r.token());
                                    match r.complete(resp(201, &name)) {
                                        Ok(Completion::Stored) => {
                                            was_acked = true;
                                            acked.fetch_add(1, Ordering::SeqCst);
                                            loop {
                                                let k = killed.load(Ordering::SeqCst);
                                                if k >= HELD_KILLS
                                                    || acked.load(Ordering::SeqCst) < (k + 1) * 10
                                                {
                                                    break;
                                                }
                                                std::thread::yield_now();
                                            }
                                            break;
                                        }
                                        Ok(other) => panic!("{other:?}"),
                                        // Unknown, or fenced after a takeover: ask again.
                                        Err(_) => {}
                                    }
                                }
                                Ok(Begin::Replay(got)) => {
                                    // Stored by a completion whose answer was lost.
                                    assert_eq!(got.body(), name.as_bytes());
                                    break;
                                }
                                // A reservation whose answer was lost holds the key: let its
                                // lease run out so that the key is taken over.
                                Ok(Begin::InProgress { .. }) => {
                                    clock.advance(Duration::from_secs(10))
                                }
                                Ok(Begin::Conflict) => panic!("conflict on {name}"),
                                Ok(Begin::OutcomeUnknown) => panic!("outcome unknown on {name}"),
                                Err(_) => {}
                            }
                        }
                        out.push((name, tokens, was_acked));
                    }
                    out
                })
            })
            .collect();
        let killer = s.spawn(|| {
            let mut kills = 0;
            while kills < KILLS && !done.load(Ordering::SeqCst) {
                // A kill after every ten acknowledgements, while the workers run.
                if acked.load(Ordering::SeqCst) >= (kills + 1) * 10 {
                    server.lock().unwrap().restart();
                    kills += 1;
                    killed.store(kills, Ordering::SeqCst);
                } else {
                    std::thread::yield_now();
                }
            }
            kills
        });
        let outcomes: Vec<Vec<KeyOutcome>> =
            workers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::SeqCst);
        let kills = killer.join().unwrap();
        (outcomes, kills)
    });
    let (outcomes, kills) = outcomes;
    let (mut lost, mut unordered) = (0, 0);
    for (name, tokens, was_acked) in outcomes.into_iter().flatten() {
        unordered += usize::from(!tokens.windows(2).all(|w| w[0] < w[1]));
        // Completed (acknowledged, or stored by a completion whose answer was lost): never
        // executed again, and its one response replays.
        match store.begin(&scope("s"), &key(&name), &fp(&name)).unwrap() {
            Begin::Replay(r) => assert_eq!(r.body(), name.as_bytes()),
            Begin::Execute(_) if was_acked => lost += 1,
            other => panic!("{name}: {other:?}"),
        }
    }
    (kills, lost, unordered)
}

/// The server's count of writes since its last snapshot: unchanged by anything read-only.
fn writes(server: &Server) -> u64 {
    let info = server.command(&["INFO", "persistence"]);
    info.lines()
        .find_map(|l| l.strip_prefix("rdb_changes_since_last_save:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn o1_a_read_only_open_writes_nothing_and_refuses_changes() {
    let Some(server) = Server::start() else {
        return;
    };
    let before = writes(&server);
    let look = || {
        RedisOptions::new(server.url())
            .clock(RedisClock::Store)
            .read_only()
    };
    match Store::open_redis_with(look(), Config::default()) {
        Err(OpenError::NotAnIdemstoreFile { detail }) => assert!(detail.contains("idem:meta")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        writes(&server),
        before,
        "an open of a missing store writes nothing"
    );
    let clock = ManualClock::new(T0);
    let store = on_uncached(&server.url(), &clock);
    execute(store.begin(&scope("s"), &key("done"), &fp("x")).unwrap())
        .complete(resp(201, "stored"))
        .unwrap();
    let _held = execute(store.begin(&scope("s"), &key("busy"), &fp("x")).unwrap());
    let before = writes(&server);
    let reader = Store::open_redis_with(look(), config(&clock).build().unwrap()).unwrap();
    let got = reader.get(&scope("s"), &key("done")).unwrap().unwrap();
    assert_eq!(got.response.unwrap().body(), b"stored");
    assert_eq!(
        reader
            .get(&scope("s"), &key("busy"))
            .unwrap()
            .unwrap()
            .state,
        idemstore::State::InFlight
    );
    assert!(reader.get(&scope("s"), &key("none")).unwrap().is_none());
    assert_eq!(reader.records(None, 10).unwrap().len(), 2);
    assert!(reader.check().unwrap().is_sound());
    assert!(matches!(
        reader.begin(&scope("s"), &key("new"), &fp("x")),
        Err(idemstore::BeginError::Unavailable(
            Unavailable::Refused { .. }
        ))
    ));
    assert!(matches!(
        reader.purge(&scope("s"), &key("done")),
        Err(Unavailable::Refused { .. })
    ));
    reader.close().unwrap();
    assert_eq!(writes(&server), before, "the read-only store wrote nothing");
}

/// A store on `url` whose completions wait up to `wait` for one replica, on its own clock.
fn waiting_for_a_replica(url: &str, wait: Duration) -> Store {
    let cfg = config(&ManualClock::new(T0)).build().unwrap();
    let options = RedisOptions::new(url)
        .clock(RedisClock::Store)
        .wait_for_replicas(1, wait);
    Store::open_redis_with(options, cfg).unwrap()
}

#[test]
fn c10_a_completion_waits_for_its_replica_and_says_when_it_did_not_arrive() {
    let Some((primary, replica)) = Server::replicated(Server::start_with) else {
        return;
    };
    let store = waiting_for_a_replica(&primary.url(), Duration::from_secs(1));
    a_replica_paused_leaves_a_completion_unknown(&store, &replica, "0 of 1 replicas");
}

/// A completion acknowledged while `replica` runs; with it paused, the next completion is
/// stored on the primary only and says so (its cause naming `unconfirmed`) instead of
/// acknowledging, and a retry replays it; with the replica back, completions are
/// acknowledged again.
fn a_replica_paused_leaves_a_completion_unknown(
    store: &Store,
    replica: &Server,
    unconfirmed: &str,
) {
    let (s, f) = (scope("s"), fp("x"));
    let r = execute(store.begin(&s, &key("a"), &f).unwrap());
    assert_eq!(r.complete(resp(201, "a")).unwrap(), Completion::Stored);
    replica.signal("-STOP");
    let r = execute(store.begin(&s, &key("b"), &f).unwrap());
    match r.complete(resp(201, "b")) {
        Err(CompleteError::Unavailable(Unavailable::OutcomeUnknown { cause })) => {
            assert!(cause.to_string().contains(unconfirmed), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    replica.signal("-CONT");
    assert!(matches!(
        store.begin(&s, &key("b"), &f).unwrap(),
        Begin::Replay(_)
    ));
    let r = execute(store.begin(&s, &key("c"), &f).unwrap());
    assert_eq!(r.complete(resp(201, "c")).unwrap(), Completion::Stored);
}

/// Completions sent in one batch share one `WAIT`, which covers every write of the
/// connection before it, instead of each holding the connection for a wait of its own. Async
/// completions are queued when made and sent at their first poll, so ten made before any poll
/// go in one batch.
#[test]
fn c10_completions_of_one_batch_share_one_wait() {
    let Some((primary, _replica)) = Server::replicated(Server::start_with) else {
        return;
    };
    let store = waiting_for_a_replica(&primary.url(), Duration::from_secs(5));
    let s = scope("s");
    let held: Vec<_> = (0..10)
        .map(|i| execute(store.begin(&s, &key(&format!("k{i}")), &fp("x")).unwrap()))
        .collect();
    let before = calls_of(&primary, "wait");
    let completions: Vec<_> = held
        .into_iter()
        .map(|r| r.complete_async(resp(201, "ok")))
        .collect();
    for c in completions {
        assert_eq!(crate::async_api::block_on(c).unwrap(), Completion::Stored);
    }
    assert_eq!(calls_of(&primary, "wait") - before, 1);
    for i in 0..10 {
        replay(store.begin(&s, &key(&format!("k{i}")), &fp("x")).unwrap());
    }
}

/// A completion sent again on a new connection, after its reply was lost, is confirmed only
/// once the replica (paused here) has it: the wait after the re-sent call must cover the
/// completion, which the re-sent call writes once more so as not to depend on how the server
/// counts a new connection's writes.
#[test]
fn c10_a_completion_sent_again_is_not_confirmed_by_a_wait_that_covers_nothing() {
    let Some((primary, replica)) = Server::replicated(Server::start_with) else {
        return;
    };
    let proxy = LossyProxy::start(primary.socket());
    let store = waiting_for_a_replica(&proxy.url(), Duration::from_secs(1));
    let (s, f) = (scope("s"), fp("x"));
    replica.signal("-STOP");
    let r = execute(store.begin(&s, &key("b"), &f).unwrap());
    // The completion runs, its reply is lost with its connection, and it is sent again.
    proxy.drop_replies.store(1, Ordering::SeqCst);
    let done = r.complete(resp(201, "b"));
    replica.signal("-CONT");
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1);
    match done {
        Err(CompleteError::Unavailable(Unavailable::OutcomeUnknown { cause })) => {
            assert!(cause.to_string().contains("0 of 1 replicas"), "{cause}");
        }
        other => panic!("confirmed without the replica: {other:?}"),
    }
}

/// An async caller's waker that panics when its answer wakes it, on a lane's own thread, is
/// the fault of the executor that made it: the answer is in its slot before the wake, and the
/// lane goes on serving every other call. (A waker's panic used to break the lane and poison
/// the store; a panic of the lane's own code still does, `io.rs`.)
#[test]
fn a_waker_that_panics_on_a_lanes_thread_leaves_the_lane_serving() {
    use std::future::Future;
    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Wake, Waker};

    struct Panics(AtomicBool);
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
            panic!("a waker that panics");
        }
    }

    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = on(&server.url(), &clock);
    let s = scope("s");
    // Stopped, so the call is answered later, on the lane's thread, through the waker.
    server.signal("-STOP");
    let (k, x) = (key("a"), fp("x"));
    let mut fut = Box::pin(store.begin_async(&s, &k, &x));
    let panics = Arc::new(Panics(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&panics));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    server.signal("-CONT");
    let woken = within(Duration::from_secs(60), move || {
        while !panics.0.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    });
    assert!(woken.is_some(), "the answer never woke its caller");
    assert!(matches!(
        store.begin(&s, &key("b"), &fp("x")),
        Ok(Begin::Execute(_))
    ));
    let answered = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(fut);
    assert!(matches!(answered, Ok(Begin::Execute(_))), "{answered:?}");
}

/// How many times the server ran `command`, from `INFO commandstats`.
fn calls_of(server: &Server, command: &str) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn c10_waitaof_is_refused_at_open_where_the_server_lacks_it() {
    let Some(server) = Server::start() else {
        return;
    };
    // A known command's entry names it; an unknown one is a null.
    let has_it = server
        .command(&["COMMAND", "INFO", "waitaof"])
        .contains("waitaof");
    let clock = ManualClock::new(T0);
    let options = RedisOptions::new(server.url()).wait_for_aof(true, 0, Duration::from_secs(1));
    let opened = Store::open_redis_with(options, config(&clock).build().unwrap());
    match opened {
        Err(OpenError::UnsafeServer { detail }) => {
            assert!(!has_it, "refused by a server that has WAITAOF: {detail}");
            assert!(detail.contains("no WAITAOF"), "{detail}");
            assert!(detail.contains("wait_for_replicas"), "{detail}");
        }
        // Redis 7.2 or later installed: the option is taken.
        Ok(_store) => assert!(has_it, "opened on a server without WAITAOF"),
        Err(other) => panic!("{other:?}"),
    }
    // The refusal wrote nothing a later open trips on, and WAIT is still there.
    let options = RedisOptions::new(server.url()).wait_for_replicas(1, Duration::from_millis(1));
    assert!(Store::open_redis_with(options, config(&clock).build().unwrap()).is_ok());
}

#[test]
fn c10_waitaof_acknowledges_a_completion_once_it_is_fsynced() {
    let Some(server) = Server::start_valkey_with(&[]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let options = RedisOptions::new(server.url())
        .clock(RedisClock::Store)
        .wait_for_aof(true, 0, Duration::from_secs(1));
    let store = Store::open_redis_with(options, config(&clock).build().unwrap()).unwrap();
    let (s, f) = (scope("s"), fp("x"));
    let before = calls_of(&server, "waitaof");
    const N: u64 = 20;
    for i in 0..N {
        let r = execute(store.begin(&s, &key(&format!("k{i}")), &f).unwrap());
        assert_eq!(r.complete(resp(201, "ok")).unwrap(), Completion::Stored);
    }
    // One WAITAOF a completion, and none for the claims.
    assert_eq!(calls_of(&server, "waitaof") - before, N);
    assert!(matches!(
        store.begin(&s, &key("k0"), &f).unwrap(),
        Begin::Replay(_)
    ));
}

#[test]
fn c10_a_waitaof_the_server_cannot_run_leaves_the_outcome_unknown() {
    // Without an append-only file the server refuses `WAITAOF 1 …` after the completion ran:
    // the record is stored, and the caller hears that nothing confirmed it.
    let Some(server) = Server::start_valkey_with(&["--appendonly", "no"]) else {
        return;
    };
    let clock = ManualClock::new(T0);
    let options = RedisOptions::new(server.url())
        .clock(RedisClock::Store)
        .trust_server_settings()
        .wait_for_aof(true, 0, Duration::from_secs(1));
    let store = Store::open_redis_with(options, config(&clock).build().unwrap()).unwrap();
    let (s, f) = (scope("s"), fp("x"));
    let r = execute(store.begin(&s, &key("a"), &f).unwrap());
    match r.complete(resp(201, "a")) {
        Err(CompleteError::Unavailable(Unavailable::OutcomeUnknown { cause })) => {
            assert!(cause.to_string().contains("WAITAOF failed"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    match store.begin(&s, &key("a"), &f).unwrap() {
        Begin::Replay(r) => assert_eq!(r, resp(201, "a")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn c10_waitaof_waits_for_a_replicas_fsync_and_says_when_it_did_not_come() {
    let Some((primary, replica)) = Server::replicated(Server::start_valkey_with) else {
        return;
    };
    let clock = ManualClock::new(T0);
    // A replica acknowledges what it has fsynced about once a second, so a bound of one second
    // would sometimes pass before the acknowledgement of a completion it did fsync.
    let options = RedisOptions::new(primary.url())
        .clock(RedisClock::Store)
        .wait_for_aof(true, 1, Duration::from_secs(3));
    let store = Store::open_redis_with(options, config(&clock).build().unwrap()).unwrap();
    a_replica_paused_leaves_a_completion_unknown(&store, &replica, "0 of 1 replicas fsynced");
    assert_eq!(calls_of(&primary, "waitaof"), 3);
}

// ---------------------------------------------------------------------------------------------
// The Redis engine against the memory engine, operation by operation

mod differential {
    use super::*;
    use idemstore::{LeaseError, Reservation, Response};
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Begin { key: usize, body: usize },
        Complete { res: usize, status: usize },
        Release { res: usize },
        Renew { res: usize },
        Drop { res: usize },
        Purge { key: usize },
        Get { key: usize },
        Advance { ms: u64 },
    }

    const KEYS: [(&str, &str); 3] = [("a", "k0"), ("a", "k1"), ("b", "k0")];
    const STATUSES: [u16; 3] = [201, 409, 503];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..KEYS.len(), 0..2usize).prop_map(|(key, body)| Op::Begin { key, body }),
            3 => (0..8usize, 0..STATUSES.len()).prop_map(|(res, status)| Op::Complete { res, status }),
            1 => (0..8usize).prop_map(|res| Op::Release { res }),
            1 => (0..8usize).prop_map(|res| Op::Renew { res }),
            1 => (0..8usize).prop_map(|res| Op::Drop { res }),
            1 => (0..KEYS.len()).prop_map(|key| Op::Purge { key }),
            2 => (0..KEYS.len()).prop_map(|key| Op::Get { key }),
            2 => prop_oneof![Just(1_000u64), Just(9_999), Just(10_000), Just(100_000)]
                .prop_map(|ms| Op::Advance { ms }),
        ]
    }

    /// What an answer says, tokens left out: the memory engine's count store-wide, the Redis
    /// engine's per key (C8 on Redis), so only their effects compare.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Nothing,
        Execute { lease_deadline: u64 },
        Replay(Response),
        InProgress,
        Conflict,
        Completion(Result<Completion, &'static str>),
        Lease(Result<Option<u64>, &'static str>),
        Purge(bool),
        Get(Option<Record>),
        Failed(String),
    }

    /// A record as `get` shows it: state, created, lease deadline, expiry, response.
    type Record = (idemstore::State, u64, Option<u64>, u64, Option<Response>);

    fn lease_refusal(e: LeaseError) -> &'static str {
        match e {
            LeaseError::Fenced { .. } => "fenced",
            LeaseError::NotReserved { .. } => "not reserved",
            _ => "other",
        }
    }

    /// One store and the reservations it handed out, in order.
    struct Side {
        store: Store,
        live: Vec<Reservation>,
    }

    impl Side {
        fn take(&mut self, res: usize) -> Option<Reservation> {
            (!self.live.is_empty()).then(|| {
                let i = res % self.live.len();
                self.live.remove(i)
            })
        }

        fn step(&mut self, op: Op) -> Seen {
            let at = |k: usize| (scope(KEYS[k].0), key(KEYS[k].1));
            match op {
                Op::Begin { key: k, body } => {
                    let (s, k) = at(k);
                    match self.store.begin(&s, &k, &fp(&body.to_string())) {
                        Ok(Begin::Execute(r)) => {
                            let lease_deadline = r.lease_deadline();
                            self.live.push(r);
                            Seen::Execute { lease_deadline }
                        }
                        Ok(Begin::Replay(r)) => Seen::Replay(r),
                        Ok(Begin::InProgress { .. }) => Seen::InProgress,
                        Ok(Begin::Conflict) => Seen::Conflict,
                        Ok(Begin::OutcomeUnknown) => Seen::Failed("outcome unknown".to_owned()),
                        Err(e) => Seen::Failed(format!("{e:?}")),
                    }
                }
                Op::Complete { res, status } => match self.take(res) {
                    None => Seen::Nothing,
                    Some(r) => Seen::Completion(
                        r.complete(resp(STATUSES[status], &format!("s{status}")))
                            .map_err(|e| match e {
                                CompleteError::Fenced { .. } => "fenced",
                                CompleteError::NotReserved { .. } => "not reserved",
                                _ => "other",
                            }),
                    ),
                },
                Op::Release { res } => match self.take(res) {
                    None => Seen::Nothing,
                    Some(r) => Seen::Lease(r.release().map(|()| None).map_err(lease_refusal)),
                },
                Op::Renew { res } => {
                    if self.live.is_empty() {
                        return Seen::Nothing;
                    }
                    let i = res % self.live.len();
                    let r = &mut self.live[i];
                    Seen::Lease(
                        r.renew()
                            .map(|()| Some(r.lease_deadline()))
                            .map_err(lease_refusal),
                    )
                }
                Op::Drop { res } => {
                    drop(self.take(res));
                    Seen::Nothing
                }
                Op::Purge { key: k } => {
                    let (s, k) = at(k);
                    match self.store.purge(&s, &k) {
                        Ok(b) => Seen::Purge(b),
                        Err(e) => Seen::Failed(format!("{e:?}")),
                    }
                }
                Op::Get { key: k } => {
                    let (s, k) = at(k);
                    match self.store.get(&s, &k) {
                        Ok(i) => Seen::Get(i.map(|i| {
                            (
                                i.state,
                                i.created_at,
                                i.lease_deadline,
                                i.expires_at,
                                i.response,
                            )
                        })),
                        Err(e) => Seen::Failed(format!("{e:?}")),
                    }
                }
                Op::Advance { .. } => Seen::Nothing,
            }
        }
    }

    #[test]
    fn c2_c9_the_redis_engine_answers_as_the_memory_engine() {
        let Some(server) = Server::start() else {
            return;
        };
        let cases = std::sync::atomic::AtomicUsize::new(0);
        let mut runner = TestRunner::new(RunnerConfig {
            // IDEMSTORE_REDIS_CASES for a longer run.
            cases: std::env::var("IDEMSTORE_REDIS_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300),
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
            let clock = ManualClock::new(T0);
            let cfg = || {
                config(&clock)
                    .lease(Duration::from_secs(10))
                    .ttl(Duration::from_secs(100))
                    .build()
                    .unwrap()
            };
            let mut memory = Side {
                store: Store::in_memory(cfg()).unwrap(),
                live: Vec::new(),
            };
            // A prefix of its own per case: a fresh store on the shared server.
            let case = cases.fetch_add(1, Ordering::SeqCst);
            let options = RedisOptions::new(server.url())
                .prefix(format!("m{case}:"))
                .clock(RedisClock::Store);
            let mut redis = Side {
                store: Store::open_redis_with(options, cfg()).unwrap(),
                live: Vec::new(),
            };
            for (i, op) in ops.iter().enumerate() {
                if let Op::Advance { ms } = op {
                    clock.advance(Duration::from_millis(*ms));
                }
                let (want, got) = (memory.step(*op), redis.step(*op));
                prop_assert_eq!(&got, &want, "op {} {:?} of {:?}", i, op, ops);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

#[test]
fn c10_a_failover_loses_a_completion_the_replica_missed_unless_it_was_waited_for() {
    let port = Server::free_port().to_string();
    let primary_settings = ["--port", port.as_str(), "--repl-diskless-sync-delay", "0"];
    let Some(mut primary) = Server::start_with(&primary_settings) else {
        return;
    };
    // The replica reaches the primary through a relay that a partition can cut.
    let relay = crate::redis_support::Relay::start(port.parse().unwrap());
    let relay_port = relay.port.to_string();
    let Some(replica) = Server::start_with(&["--replicaof", "127.0.0.1", &relay_port]) else {
        return;
    };
    replica.wait_for_replication("master_link_status:up");
    primary.wait_for_replication("state=online");
    let clock = ManualClock::new(T0);
    let cfg = || config(&clock).build().unwrap();
    let options = |url: String| {
        RedisOptions::new(url)
            .clock(RedisClock::Store)
            .replay_cache_bytes(0)
    };
    let plain = Store::open_redis_with(options(primary.url()), cfg()).unwrap();
    let waiting = Store::open_redis_with(
        options(primary.url()).wait_for_replicas(1, Duration::from_secs(1)),
        cfg(),
    )
    .unwrap();
    // The replica holds the store's metadata and functions before it falls behind.
    let (s, f) = (scope("s"), fp("x"));
    let r = execute(waiting.begin(&s, &key("before"), &f).unwrap());
    assert_eq!(r.complete(resp(201, "before")).unwrap(), Completion::Stored);
    // A partition: from here on the replica hears nothing of the primary.
    relay.cut.store(true, Ordering::SeqCst);
    let r = execute(plain.begin(&s, &key("plain"), &f).unwrap());
    assert_eq!(
        r.complete(resp(201, "acknowledged")).unwrap(),
        Completion::Stored
    );
    let r = execute(waiting.begin(&s, &key("waited"), &f).unwrap());
    assert!(matches!(
        r.complete(resp(201, "not acknowledged")),
        Err(CompleteError::Unavailable(
            Unavailable::OutcomeUnknown { .. }
        ))
    ));
    // The primary dies; the replica, which missed both completions, is promoted.
    primary.kill();
    assert!(
        replica
            .command(&["REPLICAOF", "NO", "ONE"])
            .starts_with("+OK")
    );
    let after = Store::open_redis_with(options(replica.url()), cfg()).unwrap();
    assert!(matches!(
        after.begin(&s, &key("before"), &f).unwrap(),
        Begin::Replay(_)
    ));
    // The completion acknowledged without waiting is gone: its key executes again (the limit
    // of asynchronous replication); the one waited for was never acknowledged.
    drop(execute(after.begin(&s, &key("plain"), &f).unwrap()));
    drop(execute(after.begin(&s, &key("waited"), &f).unwrap()));
}

#[test]
fn c11_keys_of_another_program_and_damaged_records_are_errors_not_panics() {
    let Some(server) = Server::start() else {
        return;
    };
    // Another program's string where the store's metadata would be.
    assert!(
        server
            .command(&["SET", "other:meta", "x"])
            .starts_with("+OK")
    );
    let foreign = RedisOptions::new(server.url()).prefix("other:");
    match Store::open_redis_with(foreign, Config::default()) {
        Err(OpenError::NotAnIdemstoreFile { detail }) => assert!(detail.contains("WRONGTYPE")),
        other => panic!("{other:?}"),
    }
    // A record whose fields were overwritten by hand.
    let clock = ManualClock::new(T0);
    let store = on_uncached(&server.url(), &clock);
    let (s, k, f) = (scope("s"), key("k"), fp("x"));
    execute(store.begin(&s, &k, &f).unwrap())
        .complete(resp(201, "ok"))
        .unwrap();
    let listed = server.command(&["KEYS", "idem:r:*"]);
    let record = listed.lines().find(|l| l.starts_with("idem:r:")).unwrap();
    server.command(&["HSET", record, "ex", "soon", "rs", "not a blob"]);
    assert!(matches!(
        store.get(&s, &k),
        Err(Unavailable::Corrupted { .. })
    ));
    assert!(matches!(
        store.begin(&s, &k, &f),
        Err(idemstore::BeginError::Unavailable(
            Unavailable::Corrupted { .. }
        ))
    ));
    let report = store.check().unwrap();
    assert!(
        !report.is_sound() && report.problems[0].contains(record),
        "{report:?}"
    );
    // A string of another program under the store's own prefix: a problem `check` names.
    let foreign = "idem:r:{0123456789abcdef0123456789abcdef}";
    server.command(&["SET", foreign, "x"]);
    let report = store.check().unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains(foreign)),
        "{report:?}"
    );
}

#[test]
fn c5_a_wait_is_woken_by_this_process_and_looks_again_for_another_stores_completion() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let (here, there) = (on(&server.url(), &clock), on(&server.url(), &clock));
    let (s, f) = (scope("s"), fp("x"));
    // Completed through the same store: woken, replayed.
    let first = execute(here.begin(&s, &key("k1"), &f).unwrap());
    let waiter = {
        let here = here.clone();
        let (s, f) = (s.clone(), f);
        std::thread::spawn(move || here.begin_waiting(&s, &key("k1"), &f, Duration::from_secs(600)))
    };
    while here.stats().waiting == 0 {
        std::thread::yield_now();
    }
    first.complete(resp(201, "first")).unwrap();
    let Begin::Replay(r) = waiter.join().unwrap().unwrap() else {
        panic!("not a replay");
    };
    assert_eq!(r.body(), b"first");
    // Completed through another store: nothing wakes this one, which looks again by itself
    // well before its bound of an hour (the minute's watchdog only keeps a failure from
    // hanging the run).
    let first = execute(there.begin(&s, &key("k2"), &f).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let here = here.clone();
        let (s, f) = (s.clone(), f);
        std::thread::spawn(move || {
            let _ = tx.send(here.begin_waiting(&s, &key("k2"), &f, Duration::from_secs(3600)));
        });
    }
    while here.stats().waiting == 0 {
        std::thread::yield_now();
    }
    first.complete(resp(201, "there")).unwrap();
    let seen = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the wait never looked again");
    assert!(matches!(seen.unwrap(), Begin::Replay(r) if r.body() == b"there"));
}

/// A store on `url` under `prefix` whose scopes hold at most `cap` records, on its own clock
/// `clock`, without the replay cache (every answer from the server): lease 10 s, TTL 100 s.
fn capped(url: &str, prefix: &str, clock: &ManualClock, cap: u64) -> Store {
    let cfg = config(clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100))
        .max_records_per_scope(cap)
        .build()
        .unwrap();
    let options = RedisOptions::new(url)
        .prefix(prefix)
        .clock(RedisClock::Store)
        .replay_cache_bytes(0);
    Store::open_redis_with(options, cfg).unwrap()
}

fn scope_full(b: Result<Begin, idemstore::BeginError>) -> u64 {
    match b {
        Err(idemstore::BeginError::ScopeFull { limit }) => limit,
        other => panic!("expected ScopeFull, got {other:?}"),
    }
}

/// C13 on the server at `url`, as `limits.rs` checks it on the file: the cap refuses the next
/// new key and leaves other scopes alone; a release, a purge and expiry each free a place; a
/// takeover counts once. Two stores share the prefix, as two machines would.
fn c13_cap_on(url: &str) {
    let clock = ManualClock::new(T0);
    let (here, there) = (
        capped(url, "c13:", &clock, 3),
        capped(url, "c13:", &clock, 3),
    );
    let (a, b, f) = (scope("acct_a"), scope("acct_b"), fp("1"));
    execute(here.begin(&a, &key("done"), &f).unwrap())
        .complete(resp(201, "ok"))
        .unwrap();
    let held = execute(there.begin(&a, &key("held"), &f).unwrap());
    let spare = execute(here.begin(&a, &key("spare"), &f).unwrap());
    assert_eq!(scope_full(there.begin(&a, &key("new"), &f)), 3);
    assert_eq!(there.stats().scope_full, 1);
    assert!(
        here.get(&a, &key("new")).unwrap().is_none(),
        "nothing reserved"
    );
    // The scope's own keys answer as before; another scope has room.
    assert_eq!(
        replay(there.begin(&a, &key("done"), &f).unwrap()).body(),
        b"ok"
    );
    assert!(matches!(
        here.begin(&a, &key("held"), &f).unwrap(),
        Begin::InProgress { .. }
    ));
    assert!(matches!(
        here.begin(&a, &key("done"), &fp("2")).unwrap(),
        Begin::Conflict
    ));
    drop(execute(here.begin(&b, &key("new"), &f).unwrap()));
    // A release makes room for one.
    spare.release().unwrap();
    let taken = execute(there.begin(&a, &key("new"), &f).unwrap());
    scope_full(here.begin(&a, &key("more"), &f));
    // So does a purge.
    assert!(here.purge(&a, &key("done")).unwrap());
    let more = execute(there.begin(&a, &key("more"), &f).unwrap());
    scope_full(here.begin(&a, &key("late"), &f));
    // A takeover after the lease and a renewal keep the same place: still full.
    clock.advance(Duration::from_secs(11));
    let mut retaken = execute(here.begin(&a, &key("held"), &f).unwrap());
    assert!(retaken.token() > held.token());
    retaken.renew().unwrap();
    scope_full(there.begin(&a, &key("late"), &f));
    drop(held);
    scope_full(there.begin(&a, &key("late"), &f));
    // Completions keep their places; once they expire, the places are free again.
    retaken.complete(resp(200, "x")).unwrap();
    taken.complete(resp(200, "x")).unwrap();
    more.complete(resp(200, "x")).unwrap();
    scope_full(here.begin(&a, &key("late"), &f));
    clock.advance(Duration::from_secs(100));
    let fresh: Vec<_> = ["late", "e1", "e2"]
        .iter()
        .map(|k| execute(here.begin(&a, &key(k), &f).unwrap()))
        .collect();
    scope_full(there.begin(&a, &key("e3"), &f));
    // An expired record executed again counts as a new one: its place was freed.
    scope_full(there.begin(&a, &key("new"), &f));
    assert_eq!(here.stats().scope_full + there.stats().scope_full, 8);
    drop(fresh);
    let report = here.check().unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
}

#[test]
fn c13_a_scope_holds_at_most_its_cap_of_live_records_on_one_server() {
    let Some(server) = Server::start() else {
        return;
    };
    c13_cap_on(&server.url());
    // Every place was given back (released, or trimmed once expired): no count is left.
    let counts = server.command(&["KEYS", "c13:s:*"]);
    assert!(!counts.contains("c13:s:{"), "{counts}");
}

#[test]
fn c13_a_scope_holds_at_most_its_cap_of_live_records_on_a_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    c13_cap_on(&cluster.url());
}

/// C13 with late holders: a holder whose expired record a claim has trimmed from its scope's
/// count may still complete or renew it (C8), as on a file before the compactor runs, but it
/// comes back into the count only if the scope has room; in a full scope it answers
/// `NotReserved`, as for a record the compactor removed, so no scope passes its cap.
#[test]
fn c13_holders_of_expired_records_trimmed_from_the_count_cannot_pass_the_cap() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = capped(&server.url(), "late:", &clock, 3);
    let (s, f) = (scope("s"), fp("1"));
    let mut old: Vec<_> = (0..3)
        .map(|i| execute(store.begin(&s, &key(&format!("old{i}")), &f).unwrap()))
        .collect();
    clock.advance(Duration::from_secs(101));
    // Nothing trimmed yet: the record is still counted, and completes.
    assert_eq!(
        old.remove(0).complete(resp(201, "in time")).unwrap(),
        Completion::Stored
    );
    // The next claims trim the two expired records the scope still counts, and fill it.
    let mut new: Vec<_> = (0..2)
        .map(|i| execute(store.begin(&s, &key(&format!("new{i}")), &f).unwrap()))
        .collect();
    scope_full(store.begin(&s, &key("new2"), &f));
    let (mut second, third) = (old.remove(0), old.remove(0));
    assert!(matches!(
        second.renew(),
        Err(idemstore::LeaseError::NotReserved { .. })
    ));
    assert!(matches!(
        third.complete(resp(201, "too late")),
        Err(CompleteError::NotReserved { .. })
    ));
    assert_eq!(store.records(Some(&s), 100).unwrap().len(), 3);
    // With a place free, a late holder comes back and takes it.
    new.pop().unwrap().release().unwrap();
    assert_eq!(
        second.complete(resp(201, "late, with room")).unwrap(),
        Completion::Stored
    );
    scope_full(store.begin(&s, &key("new2"), &f));
    assert_eq!(store.records(Some(&s), 100).unwrap().len(), 3);
    drop(new);
    let report = store.check().unwrap();
    assert!(report.is_sound(), "{:?}", report.problems);
}

/// The words of a RESP reply (`redis_support::Server::command`), its framing left out.
fn resp_words(reply: &str) -> Vec<String> {
    reply
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with(['*', '$', ':', '+']))
        .map(str::to_owned)
        .collect()
}

/// C13: `check` compares each scope's count with the scope's live records, and names a
/// record the count lacks and a count entry that has no record.
#[test]
fn c13_check_finds_a_scope_count_that_disagrees_with_the_records() {
    let Some(server) = Server::start() else {
        return;
    };
    let clock = ManualClock::new(T0);
    let store = capped(&server.url(), "chk:", &clock, 10);
    for k in ["a", "b"] {
        execute(store.begin(&scope("s"), &key(k), &fp("1")).unwrap())
            .complete(resp(201, "ok"))
            .unwrap();
    }
    assert!(store.check().unwrap().is_sound());
    let count = resp_words(&server.command(&["KEYS", "chk:s:*"]));
    assert_eq!(count.len(), 1, "{count:?}");
    let members = resp_words(&server.command(&["ZRANGE", &count[0], "0", "-1"]));
    assert_eq!(members.len(), 2, "{members:?}");
    server.command(&["ZREM", &count[0], &members[0]]);
    server.command(&["ZADD", &count[0], "99999999999999", "not-a-record"]);
    let report = store.check().unwrap();
    let problems = report.problems.join("\n");
    assert!(problems.contains("is not counted"), "{problems}");
    assert!(
        problems.contains("not-a-record with no live record"),
        "{problems}"
    );
    // A count whose scope has no live record at all still names what it counts.
    server.command(&[
        "ZADD",
        "chk:s:{no-live-record}",
        "99999999999999",
        "left-behind",
    ]);
    let problems = store.check().unwrap().problems.join("\n");
    assert!(
        problems.contains("left-behind with no live record"),
        "{problems}"
    );
}

/// Threads making new keys in one scope at once, through two stores, get exactly the cap of
/// reservations between them.
fn c13_race_on(url: &str) {
    const CAP: u64 = 20;
    let clock = ManualClock::new(T0);
    let stores = [
        capped(url, "race:", &clock, CAP),
        capped(url, "race:", &clock, CAP),
    ];
    let (reserved, refused) = crate::support::race_for_a_scope(&stores);
    assert_eq!((reserved, refused), (CAP, 80 - CAP));
    let held = stores[0]
        .records(Some(&scope("crowd")), 1000)
        .unwrap()
        .len();
    assert_eq!(held as u64, CAP);
}

#[test]
fn c13_racing_first_attempts_never_pass_the_cap_on_one_server() {
    let Some(server) = Server::start() else {
        return;
    };
    c13_race_on(&server.url());
}

#[test]
fn c13_racing_first_attempts_never_pass_the_cap_on_a_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    c13_race_on(&cluster.url());
}

/// A store made before the scope layout (its metadata without `layout`) keeps its records by
/// key and keeps working; a cap asked of it is refused at open, saying why. `forget_layout`
/// makes the metadata what it was before: format 1, without the field.
fn c13_old_layout_on(url: &str, forget_layout: impl Fn()) {
    let clock = ManualClock::new(T0);
    let options = || {
        RedisOptions::new(url)
            .prefix("old:")
            .clock(RedisClock::Store)
    };
    let cfg = || config(&clock).build().unwrap();
    drop(Store::open_redis_with(options(), cfg()).unwrap());
    forget_layout();
    let store = Store::open_redis_with(options(), cfg()).unwrap();
    let (s, f) = (scope("s"), fp("x"));
    for i in 0..5 {
        execute(store.begin(&s, &key(&format!("k{i}")), &f).unwrap())
            .complete(resp(201, "ok"))
            .unwrap();
    }
    let held = execute(store.begin(&s, &key("held"), &f).unwrap());
    held.release().unwrap();
    assert!(store.purge(&s, &key("k0")).unwrap());
    assert_eq!(
        replay(store.begin(&s, &key("k1"), &f).unwrap()).body(),
        b"ok"
    );
    assert_eq!(store.get(&s, &key("k2")).unwrap().unwrap().key, "k2");
    assert_eq!(store.records(Some(&s), 100).unwrap().len(), 4);
    assert!(store.check().unwrap().is_sound());
    let capped = config(&clock).max_records_per_scope(3).build().unwrap();
    match Store::open_redis_with(options(), capped) {
        Err(OpenError::Config(e)) => {
            assert_eq!(e.setting(), "ConfigBuilder::max_records_per_scope");
            assert!(e.to_string().contains("layout"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A new store on another prefix is laid out by scope and takes the cap.
    let fresh = config(&clock).max_records_per_scope(3).build().unwrap();
    let options = RedisOptions::new(url)
        .prefix("new:")
        .clock(RedisClock::Store);
    Store::open_redis_with(options, fresh).unwrap();
}

#[test]
fn c13_a_store_made_before_the_scope_layout_keeps_working_and_refuses_a_cap() {
    let Some(server) = Server::start() else {
        return;
    };
    c13_old_layout_on(&server.url(), || {
        assert!(
            server
                .command(&["HDEL", "old:meta", "layout"])
                .starts_with(":1")
        );
        assert!(
            server
                .command(&["HSET", "old:meta", "format", "1"])
                .starts_with(":0")
        );
    });
    // Its records are named by key alone: no count, and one tag per record key.
    assert!(!server.command(&["KEYS", "old:s:*"]).contains("old:s:"));
    let records = server.command(&["KEYS", "old:r:*"]);
    let names: Vec<_> = records
        .lines()
        .filter(|l| l.starts_with("old:r:"))
        .collect();
    assert!(!names.is_empty());
    assert!(names.iter().all(|n| n.ends_with('}')), "{records}");
}

#[test]
fn c13_a_store_made_before_the_scope_layout_keeps_working_on_a_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    c13_old_layout_on(&cluster.url(), || {
        let out = cluster.cli(0, &["-c", "HDEL", "old:meta", "layout"]);
        assert_eq!(out.trim(), "1");
        let out = cluster.cli(0, &["-c", "HSET", "old:meta", "format", "1"]);
        assert_eq!(out.trim(), "0");
    });
}

/// Credentials the server refuses are answered at once, not tried again until the open's
/// deadline, and no error quotes a password: not the refused one, and not one inside a URL
/// that does not parse (where its password is cannot be known). Before, a wrong password was
/// tried with backoff for the whole timeout, and a URL that did not parse was quoted whole.
#[test]
fn open_refuses_wrong_credentials_at_once_and_never_quotes_a_password() {
    let Some(server) = Server::start() else {
        return;
    };
    server.require_password("right-pw-0927");
    let url = format!("{}?pass=wrong-pw-4411", server.url());
    let opened = within(Duration::from_secs(60), move || {
        let options = RedisOptions::new(url).timeout(Duration::from_secs(600));
        Store::open_redis_with(options, Config::default()).map(drop)
    })
    .expect("the refused credentials were tried until the deadline");
    let Err(e) = opened else {
        panic!("opened with a wrong password");
    };
    assert!(matches!(e, OpenError::Unreachable { .. }), "{e:?}");
    let text = format!("{e} {e:?} {:?}", std::error::Error::source(&e));
    assert!(!text.contains("wrong-pw-4411"), "{text}");
    let e = Store::open_redis("redis://:hunter2-pw@[::1", Config::default())
        .expect_err("a URL that does not parse");
    let text = format!("{e} {e:?}");
    assert!(!text.contains("hunter2-pw"), "{text}");
}

/// A purge whose reply is lost is never sent again: its outcome is unknown to its caller.
/// Sent again, it could not tell its own tombstone from a newer record: another store may
/// have run the key again meanwhile, and the re-sent purge erased that acknowledged
/// completion, so the key ran a third time.
#[test]
fn a_purge_whose_reply_is_lost_is_not_sent_again_over_a_newer_completion() {
    let Some(server) = Server::start() else {
        return;
    };
    let proxy = LossyProxy::start(server.socket());
    let clock = ManualClock::new(T0);
    let store = on(&proxy.url(), &clock);
    let other = Arc::new(on_uncached(&server.url(), &clock));
    let (s, k) = (scope("s"), key("k"));
    execute(store.begin(&s, &k, &fp("x")).unwrap())
        .complete(resp(201, "first"))
        .unwrap();
    let o = Arc::clone(&other);
    *proxy.on_drop.lock().unwrap() = Some(Box::new(move || {
        // The purge was applied and its reply is lost; before anything else is sent, another
        // store's client runs the key again, and its completion is acknowledged.
        let r = execute(o.begin(&scope("s"), &key("k"), &fp("x")).unwrap());
        assert_eq!(r.complete(resp(201, "second")).unwrap(), Completion::Stored);
    }));
    proxy.drop_replies.store(1, Ordering::SeqCst);
    match store.purge(&s, &k) {
        Err(Unavailable::OutcomeUnknown { .. }) => {}
        other => panic!("a purge whose reply was lost: {other:?}"),
    }
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1);
    match other.begin(&s, &k, &fp("x")).unwrap() {
        Begin::Replay(got) => assert_eq!(got.body(), b"second"),
        b => panic!("the newer completion was erased: {b:?}"),
    }
}
