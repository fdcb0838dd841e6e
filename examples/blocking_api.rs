//! The blocking store API from plain threads: eight workers get the same job (an order with one
//! key) at once, as a retried message or a double click would deliver it; the order is placed
//! once, and every worker reports the same result.
//!
//! ```sh
//! cargo run --example blocking_api
//! ```
//!
//! A worker that finds the key in progress waits for the first attempt's outcome
//! (`begin_waiting`, woken by the completion itself, no polling) instead of failing; a failed
//! attempt releases the key (by dropping its reservation) so that the next one runs again.

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};

/// How many times the order was actually placed.
static PLACED: AtomicUsize = AtomicUsize::new(0);

/// Places the order unless it was placed already; answers what the caller should report.
fn place_order(store: &Store, worker: usize) -> Result<String, Box<dyn Error + Send + Sync>> {
    let scope = Scope::new("shop")?;
    let key = store.key("order-2026-0042")?;
    let fp = Fingerprint::of_bytes(br#"{"sku":"lamp","qty":2}"#);
    // Wait up to 5 s for an attempt already running, rather than answering "in progress".
    match store.begin_waiting(&scope, &key, &fp, Duration::from_secs(5))? {
        Begin::Execute(reservation) => {
            // The effect: in a real service, an insert or a call downstream.
            let n = PLACED.fetch_add(1, Ordering::SeqCst) + 1;
            thread::sleep(Duration::from_millis(50));
            let body = format!(r#"{{"order":"o-42","placed_by":{worker},"times_placed":{n}}}"#);
            // An error before this line drops the reservation, which releases the key.
            reservation.complete(Response::new(
                201,
                [("content-type", "application/json")],
                body.clone(),
            ))?;
            Ok(format!("worker {worker}: placed {body}"))
        }
        Begin::Replay(stored) => Ok(format!(
            "worker {worker}: already placed, replayed {}",
            String::from_utf8_lossy(stored.body())
        )),
        Begin::InProgress { retry_after } => Ok(format!(
            "worker {worker}: still running, retry after {retry_after:?}"
        )),
        Begin::Conflict => Err("the key was used for another order".into()),
        Begin::OutcomeUnknown => Err("the key awaits its resolution".into()),
    }
}

fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    // A `Store` is a cheap handle: each thread gets a clone of the same store.
    let store = Store::open(dir.path().join("shop.redb"), Config::default())?;
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let store = store.clone();
            thread::spawn(move || place_order(&store, worker).map_err(|e| e.to_string()))
        })
        .collect();
    for w in workers {
        match w.join() {
            Ok(Ok(line)) => println!("{line}"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("a worker panicked".into()),
        }
    }
    let placed = PLACED.load(Ordering::SeqCst);
    println!("the order was placed {placed} time(s)");
    assert_eq!(placed, 1);
    store.close()?;
    Ok(())
}
