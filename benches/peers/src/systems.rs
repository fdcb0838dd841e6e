//! The systems under test, each behind the workload's client interface.
//!
//! Why: one place says exactly which calls each system makes per `begin` and `complete`, so the
//! comparison can be read and checked. Invariant: every system keeps the same state machine
//! (absent, reserved, completed with a response) under the same (scope, key), and its durable
//! variants acknowledge a reservation or a completion only once their own durability rule
//! holds for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idemstore::{
    Begin, BeginError, Config, Durability, Fingerprint, Key, Reservation, Response, Scope, Store,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::workload::{AsyncClient, BlockingClient, ClientResult, Outcome};

/// The scope every request uses.
pub const SCOPE: &str = "acct_0042";
/// Records live a day in every system.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// The 64-byte reservation marker the peers store (the fingerprint, as idemstore keeps one).
const MARKER: &[u8] = b"R|fp=5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017";

/// A system of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// idemstore, `Durability::Immediate` (the default), each client a thread calling the
    /// blocking API.
    IdemImmediate,
    /// idemstore, `Durability::Immediate`, each client a task on the same two-thread tokio
    /// runtime as the Redis and PostgreSQL clients, calling the async API (as a handler behind
    /// the tower layer does). Not in a default run; name it to compare the two APIs.
    IdemImmediateAsync,
    /// idemstore, `Durability::Immediate` without its write-ahead log (a durable database
    /// commit per batch). Not in a default run; name it to compare the log's effect.
    IdemImmediateNoLog,
    /// idemstore, `Durability::Immediate`, with every reservation synced before `begin`
    /// answers (`reservations_durable(true)`, the default before in-flight records released at
    /// open made it pointless): two syncs a flow instead of one. Not in a default run.
    IdemDurableReservations,
    /// idemstore, `Durability::Immediate`, completing with `Reservation::complete_with`: the
    /// response and one row of the caller's own table (the effect) in one transaction, committed
    /// to the database directly. Not in a default run.
    IdemCompleteWith,
    /// idemstore's Redis engine on the `appendfsync always` server, each client a thread
    /// calling the blocking API. Not in a default run; name it with `redis-always`, which it
    /// is compared with.
    IdemRedisAlways,
    /// The same, acknowledging each completion once one replica received it (`WAIT 1`); needs
    /// the replica `run.sh` starts when this system is named.
    IdemRedisAlwaysWait1,
    /// The same, acknowledging each completion once it is fsynced on the primary and on one
    /// replica (`WAITAOF 1 1`); needs Redis 7.2 or Valkey, and a replica.
    IdemRedisAlwaysWaitAof1,
    /// idemstore, `Durability::Buffered`.
    IdemBuffered,
    /// idemstore, `Durability::Memory` (no file).
    IdemMemory,
    /// redb used directly, one durable write transaction per mutation.
    RedbNaive,
    /// Redis with `appendfsync always`.
    RedisAlways,
    /// Redis with `appendfsync everysec`.
    RedisEverysec,
    /// Redis without persistence.
    RedisNone,
    /// PostgreSQL, `synchronous_commit = on`.
    PgOn,
    /// PostgreSQL, `synchronous_commit = off`.
    PgOff,
}

impl System {
    /// Every system, in the default order of a round.
    pub const ALL: [System; 9] = [
        System::IdemImmediate,
        System::IdemBuffered,
        System::IdemMemory,
        System::RedbNaive,
        System::RedisAlways,
        System::RedisEverysec,
        System::RedisNone,
        System::PgOn,
        System::PgOff,
    ];

    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            System::IdemImmediate => "idemstore-immediate",
            System::IdemImmediateAsync => "idemstore-immediate-async",
            System::IdemImmediateNoLog => "idemstore-immediate-nolog",
            System::IdemDurableReservations => "idemstore-durable-reservations",
            System::IdemCompleteWith => "idemstore-complete-with",
            System::IdemRedisAlways => "idemstore-redis-always",
            System::IdemRedisAlwaysWait1 => "idemstore-redis-always-wait1",
            System::IdemRedisAlwaysWaitAof1 => "idemstore-redis-always-waitaof1",
            System::IdemBuffered => "idemstore-buffered",
            System::IdemMemory => "idemstore-memory",
            System::RedbNaive => "redb-naive",
            System::RedisAlways => "redis-always",
            System::RedisEverysec => "redis-everysec",
            System::RedisNone => "redis-none",
            System::PgOn => "pg-sync-on",
            System::PgOff => "pg-sync-off",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<System> {
        System::ALL
            .into_iter()
            .chain([
                System::IdemImmediateNoLog,
                System::IdemImmediateAsync,
                System::IdemDurableReservations,
                System::IdemCompleteWith,
                System::IdemRedisAlways,
                System::IdemRedisAlwaysWait1,
                System::IdemRedisAlwaysWaitAof1,
            ])
            .find(|x| x.name() == s)
    }
}

// ---------------------------------------------------------------------------------------------
// idemstore

/// How the idemstore systems are configured.
#[derive(Debug, Clone, Copy)]
pub struct IdemSettings {
    /// `max_delay` of the buffered mode.
    pub buffered_delay: Duration,
}

/// Opens a fresh idemstore for one cell (a new file in `dir` unless in memory).
pub fn open_idemstore(system: System, dir: &Path, settings: IdemSettings) -> Result<Store, String> {
    let durability = match system {
        System::IdemImmediate
        | System::IdemImmediateAsync
        | System::IdemImmediateNoLog
        | System::IdemDurableReservations
        | System::IdemCompleteWith => Durability::Immediate,
        System::IdemBuffered => Durability::Buffered {
            max_delay: settings.buffered_delay,
        },
        _ => Durability::Memory,
    };
    let config = Config::builder()
        .durability(durability)
        .ttl(TTL)
        // The harness's clients share one scope: no cap (C13) in the way of a long run.
        .max_records_per_scope(1 << 40)
        .write_ahead_log(system != System::IdemImmediateNoLog)
        .reservations_durable(system == System::IdemDurableReservations)
        .build()
        .map_err(|e| e.to_string())?;
    if system == System::IdemMemory {
        Store::in_memory(config).map_err(|e| e.to_string())
    } else {
        Store::open(dir.join("idem.redb"), config).map_err(|e| e.to_string())
    }
}

/// Opens idemstore's Redis engine on the server at `url` (emptied first), with the same TTL
/// as every system, waiting for a replica as `system` says.
pub fn open_idemstore_redis(url: &str, system: System) -> Result<Store, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client.get_connection().map_err(|e| e.to_string())?;
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut conn)
        .map_err(|e| e.to_string())?;
    let config = Config::builder()
        .ttl(TTL)
        .build()
        .map_err(|e| e.to_string())?;
    let mut options = idemstore::RedisOptions::new(url);
    if let Some(n) = std::env::var("PEERS_REDIS_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options = options.connections(n);
    }
    match system {
        System::IdemRedisAlwaysWait1 => {
            options = options.wait_for_replicas(1, Duration::from_secs(1));
        }
        System::IdemRedisAlwaysWaitAof1 => {
            options = options.wait_for_aof(true, 1, Duration::from_secs(1));
        }
        _ => {}
    }
    Store::open_redis_with(options, config).map_err(|e| e.to_string())
}

/// One caller of an idemstore, as a request handler in a service would be: a thread calling the
/// blocking API, or a task calling the async one.
pub struct IdemClient {
    store: Store,
    scope: Scope,
    pending: Option<(String, Reservation)>,
    /// Complete with `complete_with`, writing the effect row too.
    with_effect: bool,
}

/// The caller's own table of `idemstore-complete-with`: key → the response body, one row per
/// operation, as a service's effect would be.
const EFFECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("effects");

impl IdemClient {
    /// A client of `store`, completing the way `system` does.
    pub fn new(store: Store, system: System) -> Result<IdemClient, String> {
        Ok(IdemClient {
            store,
            scope: Scope::new(SCOPE).map_err(|e| e.to_string())?,
            pending: None,
            with_effect: system == System::IdemCompleteWith,
        })
    }

    /// The outcome of a `begin` on `key`, keeping the reservation of an `Execute`.
    fn began(&mut self, key: &str, begun: Result<Begin, BeginError>) -> ClientResult<Outcome> {
        match begun.map_err(|e| e.to_string())? {
            Begin::Execute(r) => {
                self.pending = Some((key.to_owned(), r));
                Ok(Outcome::Execute)
            }
            Begin::Replay(_) => Ok(Outcome::Replay),
            Begin::InProgress { .. } => Ok(Outcome::InProgress),
            Begin::Conflict => Err(format!("conflict on {key}")),
            Begin::OutcomeUnknown => Err(format!("outcome unknown on {key}")),
        }
    }

    /// The reservation of `key`, with the response to complete it with.
    fn to_complete(&mut self, key: &str, response: &[u8]) -> ClientResult<(Reservation, Response)> {
        match self.pending.take() {
            Some((k, r)) if k == key => Ok((
                r,
                Response::new(
                    201,
                    [("content-type", "application/json")],
                    response.to_vec(),
                ),
            )),
            _ => Err(format!("complete without a reservation for {key}")),
        }
    }
}

fn fingerprint(key: &str) -> Fingerprint {
    // A service fingerprints the request; the benchmark's requests differ only by key.
    Fingerprint::of_bytes(key.as_bytes())
}

impl BlockingClient for IdemClient {
    fn begin(&mut self, key: &str) -> ClientResult<Outcome> {
        let k = Key::new(key).map_err(|e| e.to_string())?;
        let begun = self.store.begin(&self.scope, &k, &fingerprint(key));
        self.began(key, begun)
    }

    fn complete(&mut self, key: &str, response: &[u8]) -> ClientResult<()> {
        let (r, response) = self.to_complete(key, response)?;
        if self.with_effect {
            let key = key.to_owned();
            return r
                .complete_with(move |txn| {
                    let body = response.body().to_vec();
                    txn.open_table(EFFECTS)?
                        .insert(key.as_str(), body.as_slice())?;
                    Ok::<_, idemstore::redb::Error>(response)
                })
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        r.complete(response).map(|_| ()).map_err(|e| e.to_string())
    }
}

impl AsyncClient for IdemClient {
    async fn begin(&mut self, key: &str) -> ClientResult<Outcome> {
        let k = Key::new(key).map_err(|e| e.to_string())?;
        let begun = self
            .store
            .begin_async(&self.scope, &k, &fingerprint(key))
            .await;
        self.began(key, begun)
    }

    async fn complete(&mut self, key: &str, response: &[u8]) -> ClientResult<()> {
        let (r, response) = self.to_complete(key, response)?;
        r.complete_async(response)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// naive redb

const IDEM: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idem");

/// A redb file used directly: a read transaction to look a key up, and one durable write
/// transaction per reservation and per completion.
pub fn open_redb(dir: &Path) -> Result<Arc<redb::Database>, String> {
    let db = redb::Database::create(dir.join("naive.redb")).map_err(|e| e.to_string())?;
    let w = db.begin_write().map_err(|e| e.to_string())?;
    w.open_table(IDEM).map_err(|e| e.to_string())?;
    w.commit().map_err(|e| e.to_string())?;
    Ok(Arc::new(db))
}

/// One caller of the naive redb store.
pub struct RedbClient {
    db: Arc<redb::Database>,
}

impl RedbClient {
    /// A client of `db`.
    pub fn new(db: Arc<redb::Database>) -> RedbClient {
        RedbClient { db }
    }
}

fn redb_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(SCOPE.len() + 1 + key.len());
    k.extend_from_slice(SCOPE.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn classify(value: &[u8]) -> Outcome {
    if value.first() == Some(&b'R') {
        Outcome::InProgress
    } else {
        Outcome::Replay
    }
}

fn expiry_prefix() -> [u8; 8] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + TTL).as_millis())
        .unwrap_or(u64::MAX)
        .to_le_bytes()
}

impl BlockingClient for RedbClient {
    fn begin(&mut self, key: &str) -> ClientResult<Outcome> {
        let k = redb_key(key);
        {
            let r = self.db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(IDEM).map_err(|e| e.to_string())?;
            if let Some(v) = t.get(k.as_slice()).map_err(|e| e.to_string())? {
                return Ok(classify(&v.value()[8..]));
            }
        }
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        let outcome = {
            let mut t = w.open_table(IDEM).map_err(|e| e.to_string())?;
            let existing = t
                .get(k.as_slice())
                .map_err(|e| e.to_string())?
                .map(|v| classify(&v.value()[8..]));
            match existing {
                Some(o) => o,
                None => {
                    let mut v = expiry_prefix().to_vec();
                    v.extend_from_slice(MARKER);
                    t.insert(k.as_slice(), v.as_slice())
                        .map_err(|e| e.to_string())?;
                    Outcome::Execute
                }
            }
        };
        if outcome == Outcome::Execute {
            w.commit().map_err(|e| e.to_string())?;
        } else {
            w.abort().map_err(|e| e.to_string())?;
        }
        Ok(outcome)
    }

    fn complete(&mut self, key: &str, response: &[u8]) -> ClientResult<()> {
        let k = redb_key(key);
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = w.open_table(IDEM).map_err(|e| e.to_string())?;
            let mut v = expiry_prefix().to_vec();
            v.extend_from_slice(b"C|201|");
            v.extend_from_slice(response);
            t.insert(k.as_slice(), v.as_slice())
                .map_err(|e| e.to_string())?;
        }
        w.commit().map_err(|e| e.to_string())
    }
}

/// Where the naive redb file and the idemstore files of the cells go.
pub fn cell_dir(root: &Path, tag: &str) -> Result<PathBuf, String> {
    let d = root.join(tag);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Redis

/// One Redis connection per client. `begin` is `SET k marker NX PX ttl GET` (Redis 7: one
/// round trip that either reserves or returns what the key holds, the same as `SET NX`
/// followed by `GET` on a refusal); `complete` is `SET k response XX KEEPTTL`.
pub struct RedisClient {
    conn: redis::aio::MultiplexedConnection,
}

impl RedisClient {
    /// Opens this client's own connection through `client`.
    pub async fn connect(client: &redis::Client) -> Result<RedisClient, String> {
        // No response timeout: under load a reply can take longer than the crate's default
        // 500 ms, and a request that times out would drop out of the latency tail.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(30)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(RedisClient { conn })
    }
}

fn redis_key(key: &str) -> String {
    format!("idem:{SCOPE}:{key}")
}

impl AsyncClient for RedisClient {
    async fn begin(&mut self, key: &str) -> ClientResult<Outcome> {
        let old: Option<Vec<u8>> = redis::cmd("SET")
            .arg(redis_key(key))
            .arg(MARKER)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .arg("GET")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(match old {
            None => Outcome::Execute,
            Some(v) => classify(&v),
        })
    }

    async fn complete(&mut self, key: &str, response: &[u8]) -> ClientResult<()> {
        let mut v = Vec::with_capacity(response.len() + 6);
        v.extend_from_slice(b"C|201|");
        v.extend_from_slice(response);
        let ok: Option<String> = redis::cmd("SET")
            .arg(redis_key(key))
            .arg(v)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async(&mut self.conn)
            .await
            .map_err(|e| e.to_string())?;
        match ok.as_deref() {
            Some("OK") => Ok(()),
            other => Err(format!("SET XX on {key}: {other:?}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The table, as a service would declare it.
pub const PG_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS idem(scope text NOT NULL, key text NOT NULL, \
     state smallint NOT NULL, fingerprint bytea NOT NULL, response bytea, \
     expires_at timestamptz NOT NULL, PRIMARY KEY (scope, key))";

/// One connection per client, with `synchronous_commit` set for the session. `begin` is
/// `INSERT ... ON CONFLICT DO NOTHING` and, when it inserted nothing, a `SELECT`; `complete` is
/// an `UPDATE`. Every statement is its own transaction (autocommit), prepared once.
pub struct PgClient {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    select: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
}

impl PgClient {
    /// Connects with `conninfo` and sets `synchronous_commit`.
    pub async fn connect(conninfo: &str, sync: bool) -> Result<PgClient, String> {
        let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let set = if sync {
            "SET synchronous_commit = on"
        } else {
            "SET synchronous_commit = off"
        };
        client.batch_execute(set).await.map_err(|e| e.to_string())?;
        let insert = client
            .prepare(
                "INSERT INTO idem(scope, key, state, fingerprint, expires_at) \
                 VALUES ($1, $2, 0, $3, now() + interval '24 hours') ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(|e| e.to_string())?;
        let select = client
            .prepare("SELECT state, response FROM idem WHERE scope = $1 AND key = $2")
            .await
            .map_err(|e| e.to_string())?;
        let update = client
            .prepare(
                "UPDATE idem SET state = 1, response = $3 WHERE scope = $1 AND key = $2 AND state = 0",
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(PgClient {
            client,
            insert,
            select,
            update,
        })
    }
}

impl AsyncClient for PgClient {
    async fn begin(&mut self, key: &str) -> ClientResult<Outcome> {
        let inserted = self
            .client
            .execute(&self.insert, &[&SCOPE, &key, &MARKER])
            .await
            .map_err(|e| e.to_string())?;
        if inserted == 1 {
            return Ok(Outcome::Execute);
        }
        let row = self
            .client
            .query_opt(&self.select, &[&SCOPE, &key])
            .await
            .map_err(|e| e.to_string())?;
        match row {
            Some(row) => {
                let state: i16 = row.try_get(0).map_err(|e| e.to_string())?;
                Ok(if state == 0 {
                    Outcome::InProgress
                } else {
                    Outcome::Replay
                })
            }
            None => Err(format!("{key}: neither inserted nor found")),
        }
    }

    async fn complete(&mut self, key: &str, response: &[u8]) -> ClientResult<()> {
        let mut v = Vec::with_capacity(response.len() + 6);
        v.extend_from_slice(b"C|201|");
        v.extend_from_slice(response);
        let n = self
            .client
            .execute(&self.update, &[&SCOPE, &key, &v])
            .await
            .map_err(|e| e.to_string())?;
        if n == 1 {
            Ok(())
        } else {
            Err(format!("UPDATE on {key} changed {n} rows"))
        }
    }
}
