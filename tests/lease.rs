//! Leases and fencing tokens under a controllable clock (C8).

use std::time::Duration;

use idemstore::{Begin, CompleteError, LeaseError};

use crate::support::*;

fn lease10() -> TestStore {
    open_with(|c| {
        c.lease(Duration::from_secs(10))
            .ttl(Duration::from_secs(3600))
    })
}

#[test]
fn c8_expired_lease_is_taken_over_and_the_stale_holder_is_fenced() {
    let t = lease10();
    let (s, k) = (scope("acct"), key("k"));
    let mut stale = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    assert_eq!(stale.lease_deadline(), T0 + 10_000);
    t.clock.advance(Duration::from_millis(9_999));
    assert!(matches!(
        t.store.begin(&s, &k, &fp("1")).unwrap(),
        Begin::InProgress { .. }
    ));
    t.clock.advance(Duration::from_millis(1));
    let fresh = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    assert!(
        fresh.token() > stale.token(),
        "C8: the taker gets a higher token"
    );
    match stale.renew() {
        Err(LeaseError::Fenced { token, current }) => {
            assert_eq!((token, current), (stale.token(), fresh.token()))
        }
        other => panic!("{other:?}"),
    }
    match stale.complete(resp(201, "stale")) {
        Err(CompleteError::Fenced { current, .. }) => assert_eq!(current, fresh.token()),
        other => panic!("{other:?}"),
    }
    // The stale completion stored nothing; the new holder's outcome is the one replayed.
    assert!(matches!(
        t.store.begin(&s, &k, &fp("1")).unwrap(),
        Begin::InProgress { .. }
    ));
    fresh.complete(resp(201, "fresh")).unwrap();
    assert_eq!(
        replay(t.store.begin(&s, &k, &fp("1")).unwrap()).body(),
        b"fresh"
    );
    let stats = t.store.stats();
    assert_eq!(stats.lease_takeovers, 1);
    assert_eq!(stats.fenced, 2);
}

#[test]
fn c8_renew_keeps_the_key() {
    let t = lease10();
    let (s, k) = (scope("acct"), key("k"));
    let mut r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    t.clock.advance(Duration::from_secs(8));
    r.renew().unwrap();
    assert_eq!(r.lease_deadline(), T0 + 18_000);
    t.clock.advance(Duration::from_secs(8));
    assert!(matches!(
        t.store.begin(&s, &k, &fp("1")).unwrap(),
        Begin::InProgress { .. }
    ));
    r.complete(resp(200, "done")).unwrap();
}

#[test]
fn c8_an_expired_lease_nobody_took_over_can_still_complete() {
    let t = lease10();
    let (s, k) = (scope("acct"), key("k"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    t.clock.advance(Duration::from_secs(30));
    r.complete(resp(200, "late")).unwrap();
    assert_eq!(
        replay(t.store.begin(&s, &k, &fp("1")).unwrap()).body(),
        b"late"
    );
}

#[test]
fn c4_c8_a_different_request_never_takes_over() {
    let t = lease10();
    let (s, k) = (scope("acct"), key("k"));
    let _r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    t.clock.advance(Duration::from_secs(60));
    assert!(matches!(
        t.store.begin(&s, &k, &fp("2")).unwrap(),
        Begin::Conflict
    ));
}

#[test]
fn c8_tokens_keep_growing_across_reopen() {
    let t = lease10();
    let (s, k) = (scope("acct"), key("k"));
    let first = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let first_token = first.token();
    first.release().unwrap();
    let t = t.reopen();
    let second = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    assert!(second.token() > first_token);
}

#[test]
fn c8_release_and_renew_after_release_are_refused() {
    let t = lease10();
    let (s, k) = (scope("acct"), key("k"));
    use idemstore::Backend;
    let token = match t.store.claim(&s, &k, &fp("1")).unwrap() {
        idemstore::Claim::Execute { token, .. } => token,
        other => panic!("{other:?}"),
    };
    t.store.release(&s, &k, token).unwrap();
    assert!(matches!(
        t.store.renew(&s, &k, token),
        Err(LeaseError::NotReserved { .. })
    ));
    assert!(matches!(
        t.store.complete(&s, &k, token, resp(200, "x")),
        Err(CompleteError::NotReserved { .. })
    ));
}
