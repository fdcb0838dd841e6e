//! Exactly-once effects: money moves between two accounts, each transfer under an idempotency
//! key, and the balances and the stored response commit in one transaction
//! (`docs/exactly-once.md`).
//!
//! ```sh
//! cargo run --example exactly_once
//! ```
//!
//! It makes a transfer, retries it (a replay: nothing moves twice), closes and reopens the
//! store (the replay survives), and tries a transfer the balance cannot cover (the closure
//! refuses: nothing is written and the key is free again).

use std::error::Error;
use std::fmt;

use idemstore::redb::{ReadableTable, TableDefinition, WriteTransaction};
use idemstore::{Begin, CompleteWithError, Config, Fingerprint, Response, Scope, Store};

/// The service's own table, in the store's file: account → balance in cents.
const BALANCES: TableDefinition<&str, i64> = TableDefinition::new("balances");

/// Why a transfer was refused.
#[derive(Debug)]
enum Refused {
    Insufficient { balance: i64 },
    Storage(idemstore::redb::Error),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Insufficient { balance } => write!(f, "insufficient funds ({balance})"),
            Refused::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

impl Error for Refused {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Refused::Insufficient { .. } => None,
            Refused::Storage(e) => Some(e),
        }
    }
}

impl<E: Into<idemstore::redb::Error>> From<E> for Refused {
    fn from(e: E) -> Self {
        Refused::Storage(e.into())
    }
}

/// The transfer's effect and its response, in the store's transaction.
fn move_money(
    txn: &WriteTransaction,
    from: &str,
    to: &str,
    cents: i64,
) -> Result<Response, Refused> {
    let mut balances = txn.open_table(BALANCES)?;
    let balance = balances.get(from)?.map_or(0, |g| g.value());
    if balance < cents {
        return Err(Refused::Insufficient { balance });
    }
    let credit = balances.get(to)?.map_or(0, |g| g.value());
    balances.insert(from, balance - cents)?;
    balances.insert(to, credit + cents)?;
    let body = format!(r#"{{"from":"{from}","to":"{to}","cents":{cents}}}"#);
    Ok(Response::new(
        201,
        [("content-type", "application/json")],
        body,
    ))
}

/// `POST /v1/transfers` with an idempotency key, as a handler would run it.
fn transfer(
    store: &Store,
    key: &str,
    from: &'static str,
    to: &'static str,
    cents: i64,
) -> Result<String, Box<dyn Error>> {
    let scope = Scope::new("acct_42")?;
    let body = format!(r#"{{"from":"{from}","to":"{to}","cents":{cents}}}"#);
    let fp = Fingerprint::of_request(
        "POST",
        "/v1/transfers",
        Some("application/json"),
        body.as_bytes(),
    );
    Ok(match store.begin(&scope, &store.key(key)?, &fp)? {
        Begin::Execute(reservation) => {
            match reservation.complete_with(move |txn| move_money(txn, from, to, cents)) {
                Ok(_) => format!("201, executed: moved {cents}"),
                Err(CompleteWithError::Aborted(refused)) => {
                    format!("422, nothing moved: {refused}")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Begin::Replay(r) => format!(
            "{}, replayed: {}",
            r.status(),
            String::from_utf8_lossy(r.body())
        ),
        Begin::InProgress { .. } => "409, in progress".to_owned(),
        Begin::Conflict => "422, key reused for another transfer".to_owned(),
        Begin::OutcomeUnknown => "409, outcome unknown until resolved".to_owned(),
    })
}

fn balances(store: &Store) -> Result<String, Box<dyn Error>> {
    let shown = store.read(|txn| -> Result<String, idemstore::redb::Error> {
        let table = txn.open_table(BALANCES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (account, cents) = row?;
            out.push(format!("{}={}", account.value(), cents.value()));
        }
        Ok(out.join(" "))
    })?;
    Ok(shown)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    let store = Store::open(&path, Config::default())?;
    store.write(|txn| -> Result<(), idemstore::redb::Error> {
        let mut balances = txn.open_table(BALANCES)?;
        balances.insert("alice", 100)?;
        balances.insert("bob", 0)?;
        Ok(())
    })?;
    println!("opening balances:   {}", balances(&store)?);

    println!(
        "transfer t-1:       {}",
        transfer(&store, "t-1", "alice", "bob", 30)?
    );
    println!(
        "retry t-1:          {}",
        transfer(&store, "t-1", "alice", "bob", 30)?
    );
    println!("balances:           {}", balances(&store)?);

    store.close()?;
    let store = Store::open(&path, Config::default())?;
    println!(
        "after a restart:    {}",
        transfer(&store, "t-1", "alice", "bob", 30)?
    );

    println!(
        "transfer t-2:       {}",
        transfer(&store, "t-2", "alice", "bob", 500)?
    );
    println!("balances:           {}", balances(&store)?);
    let funded = store.write(|txn| -> Result<(), idemstore::redb::Error> {
        txn.open_table(BALANCES)?.insert("alice", 1000)?;
        Ok(())
    });
    funded?;
    println!(
        "retry t-2, funded:  {}",
        transfer(&store, "t-2", "alice", "bob", 500)?
    );
    println!("closing balances:   {}", balances(&store)?);
    store.close()?;
    Ok(())
}
