//! The contract at the level of the `Backend` trait, so that every engine (the file in each
//! durability mode, memory, and with the feature `redis` a Redis server) is held to the same
//! answers.

use std::time::Duration;

use idemstore::{
    Backend, Begin, CachePolicy, Claim, CompleteError, Completion, Durability, LeaseError,
    ManualClock, Store,
};

use crate::support::*;

/// Runs the suite against `backend`, whose clock is `clock`, lease 10 s and TTL 100 s.
fn suite(b: &dyn Backend, clock: &ManualClock) {
    let s = scope("conf");
    let token = |c: Claim| match c {
        Claim::Execute { token, .. } => token,
        other => panic!("expected Execute, got {other:?}"),
    };
    // C2, C5, C4, C3
    let k = key("k1");
    let t1 = token(b.claim(&s, &k, &fp("a")).unwrap());
    assert!(matches!(
        b.claim(&s, &k, &fp("a")).unwrap(),
        Claim::InProgress { .. }
    ));
    assert!(matches!(
        b.claim(&s, &k, &fp("b")).unwrap(),
        Claim::Conflict
    ));
    assert_eq!(
        b.complete(&s, &k, t1, resp(201, "r1")).unwrap(),
        Completion::Stored
    );
    match b.claim(&s, &k, &fp("a")).unwrap() {
        Claim::Replay(r) => assert_eq!(r, resp(201, "r1")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.claim(&s, &k, &fp("b")).unwrap(),
        Claim::Conflict
    ));
    // C6: release, and an unkept status
    let k2 = key("k2");
    let t2 = token(b.claim(&s, &k2, &fp("a")).unwrap());
    b.release(&s, &k2, t2).unwrap();
    let t3 = token(b.claim(&s, &k2, &fp("a")).unwrap());
    assert!(t3 > t2);
    assert_eq!(
        b.complete(&s, &k2, t3, resp(503, "later")).unwrap(),
        Completion::Released
    );
    // C8: takeover and fencing
    let t4 = token(b.claim(&s, &k2, &fp("a")).unwrap());
    clock.advance(Duration::from_secs(10));
    let t5 = token(b.claim(&s, &k2, &fp("a")).unwrap());
    assert!(t5 > t4);
    assert!(matches!(
        b.complete(&s, &k2, t4, resp(200, "stale")),
        Err(CompleteError::Fenced { .. })
    ));
    assert!(matches!(
        b.renew(&s, &k2, t4),
        Err(LeaseError::Fenced { .. })
    ));
    let deadline = b.renew(&s, &k2, t5).unwrap();
    assert_eq!(deadline, clock.now_millis() + 10_000);
    b.complete(&s, &k2, t5, resp(200, "fresh")).unwrap();
    // get and purge
    let info = b.get(&s, &k2).unwrap().unwrap();
    assert_eq!(info.token, t5);
    assert_eq!(
        info.response.as_ref().map(|r| r.body().to_vec()),
        Some(b"fresh".to_vec())
    );
    assert!(b.purge(&s, &k2).unwrap());
    assert!(!b.purge(&s, &k2).unwrap());
    assert!(b.get(&s, &k2).unwrap().is_none());
    token(b.claim(&s, &k2, &fp("other")).unwrap());
    // C9
    clock.advance(Duration::from_secs(100));
    assert!(b.get(&s, &k).unwrap().is_none());
    token(b.claim(&s, &k, &fp("b")).unwrap());
}

/// C7-C9 under a caller's terms (`Store::begin_with`, rule H21's ground): the reservation
/// holds the key for their lease, renews by it, keeps what their cache policy keeps for their
/// time to live; an attempt under the store's terms holds the key to those.
fn terms_suite(store: &Store, clock: &ManualClock) {
    let s = scope("terms");
    let long = store
        .config()
        .terms()
        .with_ttl(Duration::from_secs(1000))
        .unwrap()
        .with_lease(Duration::from_secs(60))
        .unwrap()
        .with_cache_policy(CachePolicy::All);
    let k = key("t1");
    let mut r = execute(store.begin_with(&s, &k, &fp("a"), long).unwrap());
    assert_eq!(r.terms(), long);
    assert_eq!(r.lease_deadline(), clock.now_millis() + 60_000);
    // Past the store's lease, within the reservation's: still held.
    clock.advance(Duration::from_secs(10));
    assert!(matches!(
        store.begin(&s, &k, &fp("a")).unwrap(),
        Begin::InProgress { .. }
    ));
    r.renew().unwrap();
    assert_eq!(r.lease_deadline(), clock.now_millis() + 60_000);
    // Kept by the reservation's policy, not the store's, for its time to live.
    assert_eq!(r.complete(resp(500, "kept")).unwrap(), Completion::Stored);
    let info = store.get(&s, &k).unwrap().unwrap();
    assert_eq!(info.expires_at, clock.now_millis() + 1_000_000);
    clock.advance(Duration::from_secs(100));
    assert_eq!(
        replay(store.begin(&s, &k, &fp("a")).unwrap()),
        resp(500, "kept")
    );
    clock.advance(Duration::from_secs(900));
    assert!(store.get(&s, &k).unwrap().is_none());
    // A short lease is taken over after it by an attempt under the store's terms.
    let short = store
        .config()
        .terms()
        .with_lease(Duration::from_secs(1))
        .unwrap();
    let k2 = key("t2");
    let stale = execute(store.begin_with(&s, &k2, &fp("a"), short).unwrap());
    clock.advance(Duration::from_secs(1));
    let taker = execute(store.begin(&s, &k2, &fp("a")).unwrap());
    assert_eq!(taker.terms(), store.config().terms());
    assert_eq!(taker.lease_deadline(), clock.now_millis() + 10_000);
    assert!(matches!(
        stale.complete(resp(201, "late")),
        Err(CompleteError::Fenced { .. })
    ));
    // The store's policy does not keep a 500: the key is released.
    assert_eq!(
        taker.complete(resp(500, "not kept")).unwrap(),
        Completion::Released
    );
}

use idemstore::Clock;

fn run(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = config(&clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100))
        .cache_policy(CachePolicy::SuccessOnly)
        .durability(durability)
        .build()
        .unwrap();
    let store = Store::open(dir.path().join("c.redb"), cfg).unwrap();
    suite(&store, &clock);
    terms_suite(&store, &clock);
}

#[test]
fn conformance_immediate() {
    run(Durability::Immediate);
}

#[test]
fn conformance_buffered() {
    run(Durability::Buffered {
        max_delay: Duration::from_millis(2),
    });
}

#[test]
fn conformance_memory() {
    run(Durability::Memory);
}

/// The suite on the Redis server at `url`, whose store's own clock decides, so that the suite
/// can move time.
#[cfg(feature = "redis")]
fn run_redis(url: String) {
    run_redis_with(idemstore::RedisOptions::new(url));
}

/// [`run_redis`] with `options` (their clock set to the store's).
#[cfg(feature = "redis")]
fn run_redis_with(options: idemstore::RedisOptions) {
    use idemstore::RedisClock;
    let clock = ManualClock::new(T0);
    let cfg = config(&clock)
        .lease(Duration::from_secs(10))
        .ttl(Duration::from_secs(100))
        .cache_policy(CachePolicy::SuccessOnly)
        .build()
        .unwrap();
    let options = options.clock(RedisClock::Store);
    let store = Store::open_redis_with(options, cfg).unwrap();
    suite(&store, &clock);
    terms_suite(&store, &clock);
    assert!(store.check().unwrap().is_sound());
}

#[cfg(feature = "redis")]
#[test]
fn conformance_redis() {
    if let Some(server) = crate::redis_support::Server::start() {
        run_redis(server.url());
    }
}

#[cfg(feature = "redis")]
#[test]
fn conformance_redis_cluster() {
    if let Some(cluster) = crate::redis_support::Cluster::start() {
        run_redis(cluster.url());
    }
}

#[cfg(feature = "redis")]
#[test]
fn conformance_valkey() {
    if let Some(server) = crate::redis_support::Server::start_valkey_with(&[]) {
        run_redis(server.url());
    }
}

/// The suite again with every completion waiting for its fsync (`WAITAOF 1 0`).
#[cfg(feature = "redis")]
#[test]
fn conformance_valkey_waitaof() {
    if let Some(server) = crate::redis_support::Server::start_valkey_with(&[]) {
        let options = idemstore::RedisOptions::new(server.url()).wait_for_aof(
            true,
            0,
            Duration::from_secs(1),
        );
        run_redis_with(options);
        let stats = server.command(&["INFO", "commandstats"]);
        assert!(stats.contains("cmdstat_waitaof:calls="), "{stats}");
    }
}
