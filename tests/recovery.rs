//! Restarts: what an in-flight record and a completed record look like after reopening (C11).

use std::time::Duration;

use idemstore::{Begin, Config, State, Store};

use crate::support::*;

#[test]
fn c11_in_flight_records_keep_their_lease_across_a_restart() {
    let t = open_with(|c| c.lease(Duration::from_secs(10)));
    let (s, k) = (scope("acct"), key("k"));
    let orphan = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let old_token = orphan.token();
    let t = t.reopen_with(|c| c.lease(Duration::from_secs(10)));
    drop(orphan); // its store is closed: dropping it changes nothing
    let info = t.store.get(&s, &k).unwrap().unwrap();
    assert_eq!(info.state, State::InFlight);
    assert_eq!(info.lease_deadline, Some(T0 + 10_000));
    assert!(matches!(
        t.store.begin(&s, &k, &fp("1")).unwrap(),
        Begin::InProgress { .. }
    ));
    t.clock.advance(Duration::from_secs(10));
    let taker = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    assert!(taker.token() > old_token);
}

#[test]
fn c11_release_in_flight_on_open_frees_every_reservation() {
    let t = open();
    let s = scope("acct");
    let orphans: Vec<_> = (0..5)
        .map(|i| execute(t.store.begin(&s, &key(&format!("k{i}")), &fp("1")).unwrap()))
        .collect();
    let done = execute(t.store.begin(&s, &key("done"), &fp("1")).unwrap());
    done.complete(resp(200, "kept")).unwrap();
    let t = t.reopen_with(|c| c.release_in_flight_on_open(true));
    drop(orphans);
    assert_eq!(t.store.stats().releases, 5);
    for i in 0..5 {
        assert!(t.store.get(&s, &key(&format!("k{i}"))).unwrap().is_none());
        drop(execute(
            t.store.begin(&s, &key(&format!("k{i}")), &fp("1")).unwrap(),
        ));
    }
    assert_eq!(
        replay(t.store.begin(&s, &key("done"), &fp("1")).unwrap()).body(),
        b"kept"
    );
}

#[test]
fn c10_dropping_the_last_handle_closes_cleanly() {
    let t = open();
    let (s, k) = (scope("acct"), key("k"));
    execute(t.store.begin(&s, &k, &fp("1")).unwrap())
        .complete(resp(201, "saved"))
        .unwrap();
    let TestStore {
        store,
        clock,
        path,
        dir: _dir,
    } = t;
    drop(store);
    let store = Store::open(&path, config(&clock).build().unwrap()).unwrap();
    assert_eq!(
        replay(store.begin(&s, &k, &fp("1")).unwrap()).body(),
        b"saved"
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let t = open();
    match Store::open(&t.path, config(&t.clock).build().unwrap()) {
        Err(idemstore::OpenError::AlreadyOpen) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn closed_handles_say_so() {
    let t = open();
    let other = t.store.clone();
    t.store.close().unwrap();
    match other.begin(&scope("a"), &key("k"), &fp("1")) {
        Err(idemstore::BeginError::Unavailable(idemstore::Unavailable::Closed)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn c11_by_default_a_restart_releases_the_keys_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idem.redb");
    let config = || Config::builder().log_capacity(1 << 20).build().unwrap();
    let (s, k) = (scope("acct"), key("k"));
    let store = Store::open(&path, config()).unwrap();
    // Left in flight, as by a process that died mid-operation.
    execute(store.begin(&s, &k, &fp("1")).unwrap()).abandon();
    assert!(matches!(
        store.begin(&s, &k, &fp("1")).unwrap(),
        Begin::InProgress { .. }
    ));
    store.close().unwrap();
    let store = Store::open(&path, config()).unwrap();
    assert_eq!(store.stats().releases, 1);
    drop(execute(store.begin(&s, &k, &fp("1")).unwrap()));
}
