//! Input limits (C12): clear errors, never a panic, never a partial write.

use idemstore::{BeginError, CompleteError, Key, KeyError, Response, Scope, ScopeError};

use crate::support::*;

#[test]
fn c12_bad_keys_are_refused() {
    assert_eq!(Key::new(""), Err(KeyError::Empty));
    assert_eq!(
        Key::new("x".repeat(256)),
        Err(KeyError::TooLong { len: 256, max: 255 })
    );
    assert!(Key::new("x".repeat(255)).is_ok());
    for (bad, index, byte) in [
        ("a b", 1, b' '),
        ("tab\there", 3, b'\t'),
        ("nul\0", 3, 0),
        ("del\x7f", 3, 0x7f),
        ("caf\u{e9}", 3, 0xc3),
    ] {
        assert_eq!(
            Key::new(bad),
            Err(KeyError::InvalidByte { index, byte }),
            "{bad:?}"
        );
    }
    let message = Key::new("a b").unwrap_err().to_string();
    assert!(message.contains("visible ASCII"), "{message}");
}

#[test]
fn c12_bad_scopes_are_refused() {
    assert_eq!(Scope::new(""), Err(ScopeError::Empty));
    assert!(matches!(
        Scope::new("s".repeat(256)),
        Err(ScopeError::TooLong { .. })
    ));
    assert_eq!(
        Scope::new("a\nb"),
        Err(ScopeError::ControlCharacter { index: 1 })
    );
    assert!(Scope::new("acct_42 \u{e9}").is_ok());
}

#[test]
fn c12_the_configured_key_limit_applies_to_begin() {
    let t = open_with(|c| c.max_key_len(16));
    let long = Key::new("k".repeat(17)).unwrap();
    match t.store.begin(&scope("a"), &long, &fp("1")) {
        Err(BeginError::InvalidKey(KeyError::TooLong { len: 17, max: 16 })) => {}
        other => panic!("{other:?}"),
    }
    assert!(t.store.key("k".repeat(17)).is_err());
    assert!(t.store.key("k".repeat(16)).is_ok());
    let wide = open_with(|c| c.max_key_len(1000));
    let k = wide.store.key("k".repeat(1000)).unwrap();
    drop(execute(
        wide.store.begin(&scope("a"), &k, &fp("1")).unwrap(),
    ));
}

#[test]
fn c12_a_response_that_cannot_be_encoded_is_refused_and_the_key_released() {
    let t = open();
    let (s, k) = (scope("acct"), key("k"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let headers = (0..70_000).map(|i| (format!("x{i}"), Vec::new()));
    match r.complete(Response::new(200, headers, "")) {
        Err(CompleteError::InvalidResponse { reason }) => assert!(reason.contains("65 535")),
        other => panic!("{other:?}"),
    }
    drop(execute(t.store.begin(&s, &k, &fp("1")).unwrap()));
}

#[test]
fn c12_an_oversized_response_is_refused_and_the_key_released() {
    let t = open_with(|c| c.max_response_bytes(1024));
    let (s, k) = (scope("acct"), key("k"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let big = Response::new(201, [("content-type", "text/plain")], vec![b'x'; 2000]);
    match r.complete(big.clone()) {
        Err(CompleteError::ResponseTooLarge { len, max: 1024 }) => {
            assert_eq!(len, big.encoded_len())
        }
        other => panic!("{other:?}"),
    }
    assert!(t.store.get(&s, &k).unwrap().is_none(), "no partial write");
    // C6: the next attempt executes; a response exactly at the limit is stored.
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let body_len = 1024 - Response::new(201, [("content-type", "text/plain")], "").encoded_len();
    let fits = Response::new(201, [("content-type", "text/plain")], vec![b'y'; body_len]);
    assert_eq!(fits.encoded_len(), 1024);
    r.complete(fits.clone()).unwrap();
    assert_eq!(replay(t.store.begin(&s, &k, &fp("1")).unwrap()), fits);
}

fn scope_full(b: Result<idemstore::Begin, BeginError>) -> u64 {
    match b {
        Err(BeginError::ScopeFull { limit }) => limit,
        other => panic!("expected ScopeFull, got {other:?}"),
    }
}

/// C13: a scope holds at most `max_records_per_scope` live records. A first attempt past it is
/// refused and reserves nothing; other scopes, and retries of the keys the scope holds, are
/// not affected; a record that leaves (released, purged, expired and compacted) makes room;
/// the count survives a restart. With and without the write-ahead log.
#[test]
fn c13_a_scope_holds_at_most_its_cap_of_live_records() {
    const TTL: std::time::Duration = std::time::Duration::from_secs(60);
    for wal in [true, false] {
        let t = open_with(|c| c.max_records_per_scope(3).write_ahead_log(wal).ttl(TTL));
        let (a, b) = (scope("acct_a"), scope("acct_b"));
        execute(t.store.begin(&a, &key("done"), &fp("1")).unwrap())
            .complete(resp(201, "ok"))
            .unwrap();
        let held = execute(t.store.begin(&a, &key("held"), &fp("1")).unwrap());
        let spare = execute(t.store.begin(&a, &key("spare"), &fp("1")).unwrap());
        assert_eq!(scope_full(t.store.begin(&a, &key("new"), &fp("1"))), 3);
        assert_eq!(t.store.stats().scope_full, 1);
        assert!(
            t.store.get(&a, &key("new")).unwrap().is_none(),
            "nothing reserved"
        );
        // The scope's own keys answer as before; another scope has room.
        assert_eq!(
            replay(t.store.begin(&a, &key("done"), &fp("1")).unwrap()).body(),
            b"ok"
        );
        assert!(matches!(
            t.store.begin(&a, &key("held"), &fp("1")).unwrap(),
            idemstore::Begin::InProgress { .. }
        ));
        drop(execute(t.store.begin(&b, &key("new"), &fp("1")).unwrap()));
        // A release makes room for one.
        spare.release().unwrap();
        let taken = execute(t.store.begin(&a, &key("new"), &fp("1")).unwrap());
        scope_full(t.store.begin(&a, &key("more"), &fp("1")));
        // So does a purge.
        assert!(t.store.purge(&a, &key("done")).unwrap());
        let more = execute(t.store.begin(&a, &key("more"), &fp("1")).unwrap());
        // The count survives a restart: still full with the three reservations kept; the
        // default open, which releases them, makes room again.
        for r in [held, taken, more] {
            r.abandon();
        }
        let t = t.reopen_with(|c| c.max_records_per_scope(3).write_ahead_log(wal).ttl(TTL));
        scope_full(t.store.begin(&a, &key("after"), &fp("1")));
        let t = t.reopen_with(|c| {
            c.max_records_per_scope(3)
                .write_ahead_log(wal)
                .ttl(TTL)
                .release_in_flight_on_open(true)
        });
        execute(t.store.begin(&a, &key("after"), &fp("1")).unwrap())
            .complete(resp(200, "x"))
            .unwrap();
        // Expired and compacted records make room too.
        let full: Vec<_> = ["e1", "e2"]
            .iter()
            .map(|k| execute(t.store.begin(&a, &key(k), &fp("1")).unwrap()))
            .collect();
        scope_full(t.store.begin(&a, &key("late"), &fp("1")));
        for r in full {
            r.complete(resp(200, "x")).unwrap();
        }
        t.clock.advance(TTL);
        assert_eq!(t.store.compact_now().unwrap(), 3, "wal {wal}");
        drop(execute(t.store.begin(&a, &key("late"), &fp("1")).unwrap()));
        let report = t.store.check().unwrap();
        assert!(report.is_sound(), "wal {wal}: {:?}", report.problems);
    }
}

/// C13 under a race: threads making new keys in one scope at once get exactly the cap of
/// reservations between them, on the file store and on the memory engine.
#[test]
fn c13_racing_first_attempts_never_pass_the_cap() {
    const CAP: u64 = 20;
    let file = open_with(|c| c.max_records_per_scope(CAP));
    let memory = idemstore::Store::in_memory(
        idemstore::Config::builder()
            .max_records_per_scope(CAP)
            .build()
            .unwrap(),
    )
    .unwrap();
    for store in [file.store.clone(), memory] {
        let (reserved, refused) = crate::support::race_for_a_scope(&[store]);
        assert_eq!((reserved, refused), (CAP, 80 - CAP));
    }
}
