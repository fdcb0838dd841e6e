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
