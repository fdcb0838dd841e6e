//! The hot index's memory is bounded whatever the number of live keys (`index_max_completed`),
//! and what it drops is still answered from the file (C3, C4, C5).

use idemstore::{Begin, Reservation};

use crate::support::*;

const LIMIT: usize = 100;
const KEYS: usize = 1_000;

#[test]
fn c3_index_holds_at_most_its_limit_of_completed_records_and_the_rest_replay_from_the_file() {
    let t = open_with(|c| c.index_max_completed(LIMIT));
    let s = scope("acct");
    // One reservation stays in flight: the index always holds those.
    let held: Reservation = execute(t.store.begin(&s, &key("held"), &fp("held")).unwrap());
    for i in 0..KEYS {
        let r = execute(
            t.store
                .begin(&s, &key(&format!("k{i}")), &fp(&format!("{i}")))
                .unwrap(),
        );
        r.complete(resp(201, &format!("response {i}"))).unwrap();
    }
    let entries = t.store.stats().index_entries;
    assert!(
        entries <= LIMIT as u64 + 1,
        "{entries} index entries for a limit of {LIMIT} completed records and 1 in flight"
    );
    // Every key, dropped from memory or not, replays its own response; each replay that
    // reaches the writer is answered from the file.
    let before = t.store.stats();
    for i in 0..KEYS {
        let got = replay(
            t.store
                .begin(&s, &key(&format!("k{i}")), &fp(&format!("{i}")))
                .unwrap(),
        );
        assert_eq!(got.body(), format!("response {i}").as_bytes(), "C3: k{i}");
    }
    let after = t.store.stats();
    assert_eq!(after.replays - before.replays, KEYS as u64);
    assert!(
        after.answered_from_index - before.answered_from_index < KEYS as u64,
        "the dropped records were answered by the writer"
    );
    assert!(after.index_entries <= LIMIT as u64 + 1);
    // C4 and C5 hold for dropped keys too.
    assert!(matches!(
        t.store.begin(&s, &key("k0"), &fp("other")).unwrap(),
        Begin::Conflict
    ));
    assert!(matches!(
        t.store.begin(&s, &key("held"), &fp("held")).unwrap(),
        Begin::InProgress { .. }
    ));
    held.complete(resp(200, "held")).unwrap();
}
