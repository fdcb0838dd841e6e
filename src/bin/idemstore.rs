//! `idemstore`: the command-line tool.
//!
//! `idemstore demo [--db PATH]` runs the booking story of the README against an embedded store file:
//! a first attempt, a retry with the same key (replayed byte for byte), a reuse of the key for
//! another body (conflict), a duplicate while the first attempt is still running (in progress),
//! and a replay after closing and reopening the file.

use std::process::ExitCode;

use idemstore::{Begin, Config, Fingerprint, Key, Response, Scope, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            let db = match flag(&args, "--db") {
                Ok(db) => db.unwrap_or_else(|| "idemstore-demo.redb".to_owned()),
                Err(e) => return fail(&e),
            };
            match demo(&db) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => fail(&format!("unknown command `{other}`\n\n{USAGE}")),
    }
}

const USAGE: &str = "usage: idemstore demo [--db PATH]   run the booking example on an embedded store (default ./idemstore-demo.redb)";

fn fail(msg: &str) -> ExitCode {
    eprintln!("idemstore: {msg}");
    ExitCode::FAILURE
}

fn flag(args: &[String], name: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("{name} needs a value")),
    }
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
    }
}

fn demo(db: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(db, Config::default())?;
    println!("store: {db} (durability: immediate, acknowledged after fsync)");
    let scope = Scope::new("acct_42")?;
    // A fresh key per run, so the demo can be run again on the same file.
    let key = Key::new(format!("demo-{}", std::process::id()))?;
    let body = br#"{"event_type_id":"evt_1","start":"2026-05-20T15:00:00Z","attendee":{"email":"a@b.com"}}"#;
    let reordered = br#"{ "attendee": {"email": "a@b.com"}, "start": "2026-05-20T15:00:00Z", "event_type_id": "evt_1" }"#;
    let other = br#"{"event_type_id":"evt_1","start":"2026-05-21T09:00:00Z","attendee":{"email":"a@b.com"}}"#;
    let fp =
        |b: &[u8]| Fingerprint::of_request("POST", "/v1/bookings", Some("application/json"), b);

    println!("key: {key}\n");
    println!("1. POST /v1/bookings (first attempt)");
    let first = store.begin(&scope, &key, &fp(body))?;
    println!("   -> {}", describe(&first));
    let Begin::Execute(reservation) = first else {
        return Err("expected the first attempt to execute".into());
    };
    println!("2. the same request again while the first is still running");
    println!("   -> {}", describe(&store.begin(&scope, &key, &fp(body))?));
    let response = Response::new(
        201,
        [("content-type", "application/json")],
        r#"{"data":{"uid":"bk_1","start":"2026-05-20T15:00:00Z"},"meta":{"request_id":"req_1"}}"#,
    );
    reservation.complete(response)?;
    println!("   first attempt completed: 201 stored durably");
    println!("3. retry with the same key, body keys reordered");
    println!(
        "   -> {}",
        describe(&store.begin(&scope, &key, &fp(reordered))?)
    );
    println!("4. the same key with a different body");
    println!(
        "   -> {}",
        describe(&store.begin(&scope, &key, &fp(other))?)
    );
    store.close()?;
    let store = Store::open(db, Config::default())?;
    println!("5. after closing and reopening the file, the retry again");
    println!("   -> {}", describe(&store.begin(&scope, &key, &fp(body))?));
    let s = store.stats();
    println!(
        "\nstats since reopening: {} executes, {} replays, {} conflicts, {} in progress",
        s.executes, s.replays, s.conflicts, s.in_progress
    );
    store.close()?;
    Ok(())
}
