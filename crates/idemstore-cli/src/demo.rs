//! `idemstore demo`: the booking story run against the store's API directly, without HTTP: a
//! first attempt, a duplicate while it runs (in progress), a retry with the body's keys in
//! another order (replayed byte for byte), a reuse of the key for another body (conflict), and
//! a replay after closing and reopening the file.

use idemstore::{Begin, Config, Fingerprint, Key, Response, Scope, Store};

/// Prints one line of the story. A stdout that cannot take it (a full disk) ends the demo
/// with that error; a closed pipe (`| head`) only stops the printing's effect.
macro_rules! say {
    ($($arg:tt)*) => {
        crate::to_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
            .map_err(|e| format!("cannot write to stdout: {e}"))?
    };
}

fn describe(b: &Begin) -> String {
    match b {
        Begin::Execute(r) => format!("execute (reservation token {})", r.token()),
        Begin::Replay(r) => format!(
            "replay: {} {}",
            r.status(),
            String::from_utf8_lossy(r.body())
        ),
        Begin::InProgress { retry_after } => {
            format!("in progress, retry after {}s", retry_after.as_secs())
        }
        Begin::Conflict => "conflict: key reused for a different request".to_owned(),
        Begin::OutcomeUnknown => "outcome unknown: the key awaits its resolution".to_owned(),
    }
}

pub(crate) fn run(db: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(db, Config::default())?;
    say!("store: {db} (durability: immediate, acknowledged after fsync)");
    let scope = Scope::new("acct_42")?;
    // A fresh key per run, so the demo can be run again on the same file.
    let key = Key::new(format!("demo-{}", std::process::id()))?;
    let body = br#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
    let reordered = br#"{ "attendee": {"email": "a@b.com"}, "start": "2026-05-20T15:00:00Z", "event_type_id": "evt_1" }"#;
    let other = br#"{"event_type_id":"evt_1","start":"2026-05-21T09:00:00Z","attendee":{"email":"a@b.com"}}"#;
    let fp =
        |b: &[u8]| Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), b);

    say!("key: {key}\n");
    say!("1. POST /v1/bookings (first attempt)");
    let first = store.begin(&scope, &key, &fp(body))?;
    say!("   -> {}", describe(&first));
    let Begin::Execute(reservation) = first else {
        return Err("expected the first attempt to execute".into());
    };
    say!("2. the same request again while the first is still running");
    say!("   -> {}", describe(&store.begin(&scope, &key, &fp(body))?));
    let response = Response::new(
        201,
        [("content-type", "application/json")],
        r#"{"data":{"uid":"bk_1","start":"2026-05-20T15:00:00Z"},"meta":{"request_id":"req_1"}}"#,
    );
    reservation.complete(response)?;
    say!("   first attempt completed: 201 stored durably");
    say!("3. retry with the same key, body keys reordered");
    say!(
        "   -> {}",
        describe(&store.begin(&scope, &key, &fp(reordered))?)
    );
    say!("4. the same key with a different body");
    say!(
        "   -> {}",
        describe(&store.begin(&scope, &key, &fp(other))?)
    );
    store.close()?;
    let store = Store::open(db, Config::default())?;
    say!("5. after closing and reopening the file, the retry again");
    say!("   -> {}", describe(&store.begin(&scope, &key, &fp(body))?));
    let s = store.stats();
    say!(
        "\nstats since reopening: {} executes, {} replays, {} conflicts, {} in progress",
        s.executes,
        s.replays,
        s.conflicts,
        s.in_progress
    );
    store.close()?;
    Ok(())
}
