//! Recovery points and outcome-unknown keys: an order of three steps (reserve stock, charge,
//! ship), each committed with its recovery point, whose first attempt dies after the charge;
//! and a payment whose outcome nobody knows after a crash, resolved by the application
//! (`docs/exactly-once.md`).
//!
//! ```sh
//! cargo run --example recovery_points
//! ```
//!
//! The first attempt commits two steps and is cut short; the store is reopened (the crash, as
//! far as the store can tell); the retry takes the key over, finds the point "charged" and runs
//! only the last step. Then a store that marks keys in flight at open as outcome unknown
//! answers a retry `OutcomeUnknown` until the application has asked the payment provider and
//! completed the key.

use std::error::Error;

use idemstore::redb::TableDefinition;
use idemstore::{Begin, Config, Fingerprint, InFlightAtOpen, Reservation, Response, Scope, Store};

/// The service's own table, in the store's file: "order/step" → what the step did.
const STEPS: TableDefinition<&str, &str> = TableDefinition::new("order_steps");
const ORDER: [&str; 3] = ["stock-reserved", "charged", "shipped"];

/// Runs the steps the reservation's recovery point says are left, each in one transaction
/// with its point; stops after `stop_after` steps (to play a crash). Returns the steps run.
fn run_steps(
    r: &mut Reservation,
    order: &str,
    stop_after: usize,
) -> Result<Vec<&'static str>, Box<dyn Error>> {
    let done = r
        .recovery_point()
        .and_then(|p| ORDER.iter().position(|s| *s == p.name()))
        .map_or(0, |i| i + 1);
    let mut ran = Vec::new();
    for step in ORDER[done..].iter().take(stop_after) {
        let row = format!("{order}/{step}");
        r.save_point_with(step, move |txn| {
            txn.open_table(STEPS)?.insert(row.as_str(), "done")?;
            // The payload the next step would need (here, the row the step wrote).
            Ok::<_, idemstore::redb::Error>(row.into_bytes())
        })?;
        ran.push(*step);
    }
    Ok(ran)
}

fn steps_done(store: &Store, order: &str) -> Result<usize, Box<dyn Error>> {
    let n = store.read(|txn| -> Result<usize, idemstore::redb::Error> {
        let table = txn.open_table(STEPS)?;
        let mut n = 0;
        for step in ORDER {
            n += usize::from(table.get(format!("{order}/{step}").as_str())?.is_some());
        }
        Ok(n)
    })?;
    Ok(n)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("orders.redb");
    let scope = Scope::new("acct_1")?;
    let fp = Fingerprint::of_bytes(br#"{"order":"o-7","sku":"lamp"}"#);

    // 1. The first attempt commits two steps, then dies (its reservation is never completed).
    let store = Store::open(&path, Config::default())?;
    let key = store.key("order-o-7")?;
    let Begin::Execute(mut first) = store.begin(&scope, &key, &fp)? else {
        return Err("a new key executes".into());
    };
    let ran = run_steps(&mut first, "o-7", 2)?;
    println!("first attempt ran {ran:?}, then died");
    first.abandon();
    store.close()?;

    // 2. After the restart the retry resumes: the point says the charge committed.
    let store = Store::open(&path, Config::default())?;
    let Begin::Execute(mut retry) = store.begin(&scope, &key, &fp)? else {
        return Err("the key was released at open, with its point".into());
    };
    let point = retry.recovery_point().map(|p| p.name().to_owned());
    println!("retry resumes after {point:?}");
    let ran = run_steps(&mut retry, "o-7", usize::MAX)?;
    println!("retry ran {ran:?}");
    assert_eq!(ran, ["shipped"], "no step ran twice");
    retry.complete(Response::new(201, [("location", "/orders/o-7")], ""))?;
    assert_eq!(steps_done(&store, "o-7")?, 3);
    store.close()?;

    // 3. A payment whose effect lives at a provider: after a crash its outcome is unknown.
    let marking = || {
        Config::builder()
            .in_flight_at_open(InFlightAtOpen::MarkUnknown)
            .build()
    };
    let path = dir.path().join("payments.redb");
    let store = Store::open(&path, marking()?)?;
    let pay = store.key("pay-9")?;
    let fp = Fingerprint::of_bytes(br#"{"amount":1000}"#);
    let Begin::Execute(mut paying) = store.begin(&scope, &pay, &fp)? else {
        return Err("a new key executes".into());
    };
    paying.save_point("sent-to-provider", b"provider-ref-55")?;
    paying.abandon(); // the process dies while the provider answers
    store.close()?;

    let store = Store::open(&path, marking()?)?;
    let retried = store.begin(&scope, &pay, &fp)?;
    println!("a retry after the crash: {retried:?}");
    assert!(matches!(retried, Begin::OutcomeUnknown));
    // The resolver asks the provider about each unknown key; this payment went through.
    let resolved = store.resolve_unknown(100, |record, reservation| {
        let reference = record.recovery_point.as_ref().map(|p| p.payload().to_vec());
        println!(
            "resolving {}: provider reference {:?}: paid",
            record.key,
            reference.map(|r| String::from_utf8_lossy(&r).into_owned())
        );
        if let Err(e) =
            reservation.complete(Response::new(201, [("location", "/payments/p-9")], ""))
        {
            eprintln!("not resolved: {e}");
        }
    })?;
    assert_eq!(resolved, 1);
    let Begin::Replay(replayed) = store.begin(&scope, &pay, &fp)? else {
        return Err("the resolved key replays".into());
    };
    println!("the retry now replays {}", replayed.status());
    store.close()?;
    Ok(())
}
