//! The core rules through the blocking API, one request at a time.

use idemstore::{Begin, Completion};

use crate::support::*;

#[test]
fn c2_c3_first_attempt_then_byte_identical_replay() {
    let t = open();
    let (s, k) = (scope("acct"), key("k1"));
    let r = execute(t.store.begin(&s, &k, &fp(r#"{"a":1}"#)).unwrap());
    let original = resp(201, r#"{"uid":"b1"}"#);
    assert_eq!(r.complete(original.clone()).unwrap(), Completion::Stored);
    let again = replay(t.store.begin(&s, &k, &fp(r#"{ "a": 1.0 }"#)).unwrap());
    assert_eq!(again, original);
    let t = t.reopen();
    assert_eq!(
        replay(t.store.begin(&s, &k, &fp(r#"{"a":1}"#)).unwrap()),
        original
    );
}

#[test]
fn c4_conflict_in_flight_and_completed() {
    let t = open();
    let (s, k) = (scope("acct"), key("k1"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    assert!(matches!(
        t.store.begin(&s, &k, &fp("2")).unwrap(),
        Begin::Conflict
    ));
    r.complete(resp(200, "x")).unwrap();
    assert!(matches!(
        t.store.begin(&s, &k, &fp("2")).unwrap(),
        Begin::Conflict
    ));
}

#[test]
fn c5_in_progress_with_retry_hint() {
    let t = open();
    let (s, k) = (scope("acct"), key("k1"));
    let _r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    match t.store.begin(&s, &k, &fp("1")).unwrap() {
        Begin::InProgress { retry_after } => assert_eq!(retry_after.as_secs(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn c6_drop_and_release_free_the_key() {
    let t = open();
    let (s, k) = (scope("acct"), key("k1"));
    drop(execute(t.store.begin(&s, &k, &fp("1")).unwrap()));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    r.release().unwrap();
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    assert_eq!(r.complete(resp(500, "boom")).unwrap(), Completion::Released);
    drop(execute(t.store.begin(&s, &k, &fp("1")).unwrap()));
}

#[test]
fn scopes_keep_keys_apart() {
    let t = open();
    let k = key("k1");
    let r = execute(t.store.begin(&scope("a"), &k, &fp("1")).unwrap());
    drop(execute(t.store.begin(&scope("b"), &k, &fp("1")).unwrap()));
    r.complete(resp(200, "a")).unwrap();
}

#[test]
fn c3_replays_stay_identical_as_responses_leave_and_reenter_the_memory_cache() {
    // A budget of about two responses: replays keep evicting and re-caching each other.
    let t = open_with(|c| c.response_cache_bytes(200));
    let s = scope("acct");
    let keys: Vec<_> = (0..5).map(|i| key(&format!("k{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        let r = execute(t.store.begin(&s, k, &fp("1")).unwrap());
        r.complete(resp(201, &format!("{{\"n\":{i}}}"))).unwrap();
    }
    for round in 0..20 {
        for (i, k) in keys.iter().enumerate().rev() {
            let got = replay(t.store.begin(&s, k, &fp("1")).unwrap());
            assert_eq!(got, resp(201, &format!("{{\"n\":{i}}}")), "round {round}");
        }
    }
    // Purging a key while its response may be offered back must not resurrect it.
    assert!(t.store.purge(&s, &keys[0]).unwrap());
    assert!(t.store.get(&s, &keys[0]).unwrap().is_none());
    drop(execute(t.store.begin(&s, &keys[0], &fp("2")).unwrap()));
}

/// With the feature `serde`, `Stats` serialises as a map of its counters, for an exporter or
/// an admin endpoint.
#[cfg(feature = "serde")]
#[test]
fn stats_serialise_as_a_map_of_counters() {
    let t = crate::support::open();
    let (s, k, f) = (
        crate::support::scope("acct"),
        crate::support::key("k"),
        crate::support::fp("x"),
    );
    crate::support::execute(t.store.begin(&s, &k, &f).unwrap())
        .complete(crate::support::resp(201, "ok"))
        .unwrap();
    let _ = t.store.begin(&s, &k, &f).unwrap();
    let json = serde_json::to_value(t.store.stats()).unwrap();
    assert_eq!(json["executes"], 1);
    assert_eq!(json["replays"], 1);
    assert!(json["commit_micros_max"].is_u64());
}
