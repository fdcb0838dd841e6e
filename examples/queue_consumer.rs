//! A queue consumer that applies each message once, though the queue delivers some twice: the
//! message id is the idempotency key, and the message's effect commits with its record
//! (`docs/exactly-once.md`).
//!
//! ```sh
//! cargo run --example queue_consumer
//! ```
//!
//! Queues deliver at least once: a consumer that crashes before it acknowledges gets the
//! message again. Here the effect (stock taken for an order) and the record that the message
//! was handled are one transaction, so a redelivery finds the record and changes nothing,
//! whenever the consumer stopped.

use std::error::Error;

use idemstore::redb::{ReadableTable, TableDefinition};
use idemstore::{Begin, Config, Fingerprint, Response, Scope, Store};

/// The consumer's own table, in the store's file: item → units in stock.
const STOCK: TableDefinition<&str, u64> = TableDefinition::new("stock");

/// A message as the queue hands it over.
struct Message {
    id: &'static str,
    item: &'static str,
    units: u64,
}

/// Applies `m` once: takes its units from the stock, in the transaction that records it.
fn consume(store: &Store, m: &Message) -> Result<&'static str, Box<dyn Error>> {
    let scope = Scope::new("orders-queue")?;
    let key = store.key(m.id)?;
    // The payload fingerprints the message: the same id with another payload is a conflict,
    // a bug upstream worth stopping for.
    let payload = format!("{}:{}", m.item, m.units);
    let fp = Fingerprint::of_bytes(payload.as_bytes());
    Ok(match store.begin(&scope, &key, &fp)? {
        Begin::Execute(reservation) => {
            let (item, units) = (m.item, m.units);
            reservation.complete_with(move |txn| -> Result<Response, idemstore::redb::Error> {
                let mut stock = txn.open_table(STOCK)?;
                let left = stock.get(item)?.map_or(0, |g| g.value());
                stock.insert(item, left.saturating_sub(units))?;
                Ok(Response::new(200, [("x-handled", "stock")], "applied"))
            })?;
            "applied"
        }
        Begin::Replay(_) => "a redelivery: already applied",
        Begin::InProgress { .. } => "being applied by another consumer: leave it unacknowledged",
        Begin::Conflict => "the same id with another payload: refused",
        Begin::OutcomeUnknown => "cut short before a restart: waiting for its resolution",
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("consumer.redb"), Config::default())?;
    store.write(|txn| -> Result<(), idemstore::redb::Error> {
        txn.open_table(STOCK)?.insert("widget", 10)?;
        Ok(())
    })?;
    // The queue delivers m-2 twice (the first acknowledgement was lost).
    let deliveries = [
        Message {
            id: "m-1",
            item: "widget",
            units: 3,
        },
        Message {
            id: "m-2",
            item: "widget",
            units: 2,
        },
        Message {
            id: "m-2",
            item: "widget",
            units: 2,
        },
        Message {
            id: "m-3",
            item: "widget",
            units: 1,
        },
    ];
    for m in &deliveries {
        println!("{}: {}", m.id, consume(&store, m)?);
    }
    let left = store.read(|txn| -> Result<u64, idemstore::redb::Error> {
        Ok(txn
            .open_table(STOCK)?
            .get("widget")?
            .map_or(0, |g| g.value()))
    })?;
    println!("widgets left: {left} (10 - 3 - 2 - 1)");
    assert_eq!(left, 4);
    store.close()?;
    Ok(())
}
