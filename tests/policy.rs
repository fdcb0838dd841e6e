//! Which responses are stored (C7) and what happens to the others (C6).

use idemstore::{Begin, CachePolicy, Completion};

use crate::support::*;

fn outcome(policy: CachePolicy, status: u16) -> (Completion, bool) {
    let t = open_with(|c| c.cache_policy(policy));
    let (s, k) = (scope("acct"), key("k"));
    let r = execute(t.store.begin(&s, &k, &fp("1")).unwrap());
    let completion = r.complete(resp(status, "body")).unwrap();
    let replayed = match t.store.begin(&s, &k, &fp("1")).unwrap() {
        Begin::Replay(r) => {
            assert_eq!(r.status(), status, "C3: the status is replayed too");
            true
        }
        Begin::Execute(_) => false,
        other => panic!("{other:?}"),
    };
    (completion, replayed)
}

#[test]
fn c7_each_policy_keeps_exactly_its_statuses() {
    let table: &[(CachePolicy, &[u16], &[u16])] = &[
        (
            CachePolicy::SuccessOnly,
            &[200, 201, 204, 299],
            &[301, 400, 404, 409, 422, 500, 503],
        ),
        (
            CachePolicy::SuccessAndClientErrors,
            &[200, 201, 400, 404, 409, 422, 499],
            &[408, 429, 500, 502, 503],
        ),
        (
            CachePolicy::All,
            &[100, 200, 302, 404, 500, 502, 599],
            &[408, 429, 503],
        ),
        (
            CachePolicy::AllIncludingTransient,
            &[100, 200, 408, 429, 500, 503, 599],
            &[],
        ),
    ];
    for (policy, kept, released) in table {
        for &status in *kept {
            assert_eq!(
                outcome(*policy, status),
                (Completion::Stored, true),
                "{policy:?} {status}"
            );
        }
        for &status in *released {
            assert_eq!(
                outcome(*policy, status),
                (Completion::Released, false),
                "C6: {policy:?} {status} releases"
            );
        }
    }
}
