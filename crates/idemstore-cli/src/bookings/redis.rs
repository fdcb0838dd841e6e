//! The bookings on the Redis server the store uses (`idemstore serve --redis`), so that every
//! `serve` process pointed at it shares them. On a Redis Cluster (found at open, as the store
//! finds it: `INFO cluster`) each call goes to the node that owns its keys' slot, through the
//! `redis` crate's cluster client, which follows `MOVED` and `ASK` across a reshard. While an
//! account's slot is being migrated, a call that writes a key the slot does not hold yet (a
//! create, an edit) is refused by both nodes (`ASK`, then `TRYAGAIN`: Redis runs a call of
//! several keys there only if they all exist) and, after the client's re-sends, fails as
//! `Unavailable` (a `503` with `Retry-After`), having written nothing; reads are served.
//!
//! Keys, all of one account in one Cluster slot (the account, hex-encoded, is the hash tag):
//! `<prefix>bk:{<account>}:b:<uid>` holds the stored booking (JSON), `…:all` the account's
//! uids (a sorted set, all scores 0, so in uid order), `…:t:<scope>:<key>` the tie of an
//! idempotency key to the booking it made (`uid`, `fp`, `ex`), expiring with the store's time
//! to live, and `…:w:<token>` marks a swap as made, for a while.
//!
//! Invariants: a create is one script that looks the tie up and writes the booking, the index
//! and the tie, so two creates under one key cannot both miss the tie; an update writes only
//! if the booking is still the version it read (compare and set, retried), so two edits of one
//! //! version cannot both succeed. A call's keys all share one slot, so the cluster client, which
//! routes a script by its first key, sends it where all of them live. Every call is safe to
//! send again when its answer is lost (the cluster client re-sends by itself after a broken
//! connection): a create finds its tie or its own booking (its uid is drawn once, before the
//! first send), and a swap finds its mark.

use std::time::Duration;

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Client, Connection, ConnectionLike, Value};

use super::{Booking, BookingError, KeyedRequest, NewBooking, Stored, edit, new_record, uid_of};

/// Looks the tie up; makes the booking, its index entry and the tie if it finds none that
/// holds, unless the booking is there already (this create, sent again after its answer was
/// lost: uids are random, 64 bits). KEYS: tie, booking, index. ARGV: now, fingerprint (empty without a key), uid,
/// stored booking, tie expiry, the account's booking key prefix, tie lifetime in ms.
const CREATE: &str = r#"
if ARGV[2] ~= '' then
  local t = redis.call('HMGET', KEYS[1], 'uid', 'fp', 'ex')
  if t[1] and t[2] == ARGV[2] and tonumber(ARGV[1]) < tonumber(t[3]) then
    local b = redis.call('GET', ARGV[6] .. t[1])
    if b then return {'existing', b} end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'new'} end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
if ARGV[2] ~= '' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'uid', ARGV[3], 'fp', ARGV[2], 'ex', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
return {'new'}
"#;

/// Writes the booking only if it still holds what was read, and marks the swap as made.
/// KEYS: booking, this swap's mark. ARGV: what was read, what to write, the mark's lifetime in
/// ms. Answers 1 if written, now or by an earlier send of this swap (its mark is there).
const SWAP: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// How long a swap's mark lives: far longer than a call's sends and reconnections last.
const SWAP_MARK_MS: u64 = 600_000;

/// How long a connection, a read and a write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bookings on a Redis server or Cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisBookings {
    source: Source,
    /// Idle connections, reused by the next call.
    idle: std::sync::Arc<Mutex<Vec<Conn>>>,
    prefix: String,
}

/// Where connections come from.
#[derive(Clone)]
enum Source {
    Server(Client),
    /// Shared: the client holds the Cluster's settings, hundreds of bytes.
    Cluster(std::sync::Arc<ClusterClient>),
}

/// A connection to a server, or a set of them (one a node) to a Cluster.
enum Conn {
    Server(Connection),
    /// Boxed: it holds a connection per node and the slot map.
    Cluster(Box<ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Server(c) => c,
            Conn::Cluster(c) => c.as_mut(),
        }
    }
}

/// Whether `INFO cluster`'s answer says the server is a Cluster node.
fn cluster_enabled(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

fn storage(e: impl std::fmt::Display) -> BookingError {
    BookingError::Storage(e.to_string())
}

/// A Redis error as a bookings error: `Unavailable` when the same call may succeed once the
/// server or the Cluster is back in shape (no connection, a timeout, a server loading its
/// data or read-only after a failover, a slot midway through a move or the Cluster down),
/// else `Storage`.
fn redis_error(e: redis::RedisError) -> BookingError {
    use redis::{ErrorKind, ServerErrorKind};
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        );
    if transient {
        BookingError::Unavailable(e.to_string())
    } else {
        storage(e)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisBookings {
    /// The bookings on the server at `url`, or on the Cluster it is a node of.
    pub(crate) fn open(url: &str, prefix: &str) -> Result<RedisBookings, BookingError> {
        let client = Client::open(url).map_err(storage)?;
        // Fails now, not at the first request, if the server cannot be reached.
        let mut first = server_connection(&client)?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query(&mut first)
            .map_err(storage)?;
        let (source, first) = if cluster_enabled(&info) {
            // The client's default waits between re-sends grow to minutes; these keep a call
            // that meets `TRYAGAIN` or `CLUSTERDOWN` to about three seconds of waiting.
            let cluster = ClusterClient::builder([url])
                .connection_timeout(IO_TIMEOUT)
                .response_timeout(IO_TIMEOUT)
                .retries(10)
                .min_retry_wait(10)
                .max_retry_wait(500)
                .retry_wait_formula(10, 2)
                .build()
                .map_err(storage)?;
            let source = Source::Cluster(std::sync::Arc::new(cluster));
            let first = connect(&source)?;
            (source, first)
        } else {
            (Source::Server(client), Conn::Server(first))
        };
        Ok(RedisBookings {
            source,
            idle: std::sync::Arc::new(Mutex::new(vec![first])),
            prefix: format!("{prefix}bk:"),
        })
    }

    /// Runs `f` on an idle connection (or a new one), which goes back to the pool if it still
    /// works. A broken connection empties the pool (the server may have restarted, breaking
    /// them all), and `f` runs once more on a new connection: every call is safe to repeat
    /// (see the module documentation).
    fn with<T>(
        &self,
        f: impl Fn(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T, BookingError> {
        let pooled = self.idle.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(&self.source)?,
        };
        match f(conn.like()) {
            Ok(out) => {
                self.idle.lock().push(conn);
                Ok(out)
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.idle.lock().clear();
                let mut fresh = connect(&self.source)?;
                let out = f(fresh.like()).map_err(redis_error)?;
                self.idle.lock().push(fresh);
                Ok(out)
            }
            Err(e) => Err(redis_error(e)),
        }
    }

    fn account_prefix(&self, account: &str) -> String {
        format!("{}{{{}}}:", self.prefix, hex(account.as_bytes()))
    }

    pub(crate) fn create(
        &self,
        account: &str,
        request: Option<&KeyedRequest>,
        now_ms: u64,
        new: NewBooking,
    ) -> Result<Booking, BookingError> {
        let base = self.account_prefix(account);
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(storage)?;
        let uid = uid_of(&random);
        let booking = new_record(uid.clone(), new);
        let stored = serde_json::to_vec(&Stored {
            account: account.to_owned(),
            booking: booking.clone(),
        })
        .map_err(storage)?;
        let (tie, fp, expires_at, ttl) = match request {
            Some(r) => (
                format!("{base}t:{}:{}", hex(r.scope.as_bytes()), r.key),
                format!("{}:{}", r.fingerprint.0, hex(&r.fingerprint.1)),
                now_ms.saturating_add(r.ttl_ms),
                r.ttl_ms.max(1),
            ),
            None => (format!("{base}t:"), String::new(), 0, 1),
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CREATE)
            .arg(3)
            .arg(&tie)
            .arg(format!("{base}b:{uid}"))
            .arg(format!("{base}all"))
            .arg(now_ms)
            .arg(fp)
            .arg(&uid)
            .arg(stored)
            .arg(expires_at)
            .arg(format!("{base}b:"))
            .arg(ttl);
        let reply: Value = self.with(|c| cmd.query(c))?;
        match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::BulkString(tag), Value::BulkString(b)] if tag == b"existing" => {
                    let stored: Stored = serde_json::from_slice(b).map_err(storage)?;
                    Ok(stored.booking)
                }
                [Value::BulkString(tag)] if tag == b"new" => Ok(booking),
                _ => Err(storage(format!("unexpected reply to a create: {items:?}"))),
            },
            other => Err(storage(format!("unexpected reply to a create: {other:?}"))),
        }
    }

    pub(crate) fn list(&self, account: &str) -> Result<Vec<Booking>, BookingError> {
        let base = self.account_prefix(account);
        let uids: Vec<String> = self.with(|c| {
            redis::cmd("ZRANGE")
                .arg(format!("{base}all"))
                .arg(0)
                .arg(-1)
                .query(c)
        })?;
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            if let Some((_, stored)) = self.read(account, &uid)? {
                out.push(stored.booking);
            }
        }
        Ok(out)
    }

    /// The booking `uid` of `account` as stored (its bytes, for a compare and set), if any.
    fn read(&self, account: &str, uid: &str) -> Result<Option<(Vec<u8>, Stored)>, BookingError> {
        let key = format!("{}b:{uid}", self.account_prefix(account));
        let bytes: Option<Vec<u8>> = self.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        match bytes {
            None => Ok(None),
            Some(b) => {
                let stored: Stored = serde_json::from_slice(&b).map_err(storage)?;
                Ok((stored.account == account).then_some((b, stored)))
            }
        }
    }

    pub(crate) fn get(&self, account: &str, uid: &str) -> Result<Booking, BookingError> {
        match self.read(account, uid)? {
            Some((_, stored)) => Ok(stored.booking),
            None => Err(BookingError::NotFound),
        }
    }

    pub(crate) fn update(
        &self,
        account: &str,
        uid: &str,
        if_match: Option<&str>,
        f: impl Fn(&mut Booking) -> Result<(), BookingError>,
    ) -> Result<Booking, BookingError> {
        let key = format!("{}b:{uid}", self.account_prefix(account));
        // Another change may land between the read and the write: then the write is refused
        // and, without `If-Match`, the change is made again on the version that won, as the
        // file's transactions would have ordered them.
        for _ in 0..MAX_SWAPS {
            let Some((read, mut stored)) = self.read(account, uid)? else {
                return Err(BookingError::NotFound);
            };
            edit(&mut stored, if_match, &f)?;
            let written = serde_json::to_vec(&stored).map_err(storage)?;
            // A fresh mark for each swap: a send of this swap again finds it, another's does
            // not.
            let mut token = [0u8; 8];
            getrandom::fill(&mut token).map_err(storage)?;
            let mark = format!("{}w:{}", self.account_prefix(account), hex(&token));
            let swapped: i64 = self.with(|c| {
                redis::cmd("EVAL")
                    .arg(SWAP)
                    .arg(2)
                    .arg(&key)
                    .arg(&mark)
                    .arg(&read)
                    .arg(&written)
                    .arg(SWAP_MARK_MS)
                    .query(c)
            })?;
            if swapped == 1 {
                return Ok(stored.booking);
            }
        }
        Err(storage("the booking kept changing under this update"))
    }
}

/// A new connection from `source`: to the server, or to each node of the Cluster.
fn connect(source: &Source) -> Result<Conn, BookingError> {
    match source {
        Source::Server(client) => server_connection(client).map(Conn::Server),
        Source::Cluster(client) => {
            let c = client.get_connection().map_err(redis_error)?;
            c.set_read_timeout(Some(IO_TIMEOUT)).map_err(redis_error)?;
            c.set_write_timeout(Some(IO_TIMEOUT)).map_err(redis_error)?;
            Ok(Conn::Cluster(Box::new(c)))
        }
    }
}

fn server_connection(client: &Client) -> Result<Connection, BookingError> {
    let c = client
        .get_connection_with_timeout(IO_TIMEOUT)
        .map_err(redis_error)?;
    c.set_read_timeout(Some(IO_TIMEOUT)).map_err(redis_error)?;
    Ok(c)
}

/// How many times an update is tried against concurrent changes of the same booking.
const MAX_SWAPS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_enabled_reads_info_cluster() {
        assert!(cluster_enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!cluster_enabled(""));
    }

    #[test]
    fn a_call_worth_sending_again_is_unavailable_and_a_refused_one_is_a_storage_error() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        let server = |kind: ServerErrorKind| RedisError::from((ErrorKind::Server(kind), "x"));
        let again = [
            server(ServerErrorKind::TryAgain),
            server(ServerErrorKind::Ask),
            server(ServerErrorKind::ClusterDown),
            server(ServerErrorKind::BusyLoading),
            server(ServerErrorKind::ReadOnly),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        ];
        for e in again {
            let shown = e.to_string();
            assert!(
                matches!(redis_error(e), BookingError::Unavailable(_)),
                "{shown}"
            );
        }
        let refused = [
            server(ServerErrorKind::ResponseError),
            server(ServerErrorKind::NoPerm),
            RedisError::from((ErrorKind::UnexpectedReturnType, "x")),
        ];
        for e in refused {
            let shown = e.to_string();
            assert!(
                matches!(redis_error(e), BookingError::Storage(_)),
                "{shown}"
            );
        }
    }
}
