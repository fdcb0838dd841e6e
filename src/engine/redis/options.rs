//! How the Redis engine reaches its server, and what it may assume of it.
//!
//! Why: the store's [`Config`](crate::Config) says what the contract's knobs are (lease, TTL,
//! cache policy, durability); these options say where the records live and which clock
//! decides, which only a shared engine has. Invariant: every value here is checked by
//! [`RedisOptions::validate`] before a connection is made, so a bad prefix or timeout is an
//! `OpenError::Config`, never a malformed key on the server.

use std::time::Duration;

use crate::error::ConfigError;

/// Which clock decides leases and expiry on the Redis engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedisClock {
    /// The Redis server's clock (`TIME`, read inside each script): every machine sharing the
    /// server agrees on every deadline, whatever their own clocks say. The default.
    #[default]
    Server,
    /// The store's own clock ([`ConfigBuilder::clock`](crate::ConfigBuilder::clock)), sent with
    /// every call. Machines whose clocks disagree then disagree on deadlines by as much: one
    /// running ahead takes leases over early and sees records expire early. For tests that
    /// move time with a [`ManualClock`](crate::ManualClock).
    Store,
}

/// Where the Redis engine keeps its records, for
/// [`Store::open_redis_with`](crate::Store::open_redis_with).
///
/// ```
/// use std::time::Duration;
/// use idemstore::RedisOptions;
///
/// let options = RedisOptions::new("redis://127.0.0.1:6379")
///     .prefix("billing:idem:")
///     .timeout(Duration::from_secs(2));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) clock: RedisClock,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) grace: Duration,
    pub(crate) trust_server_settings: bool,
    pub(crate) replay_cache_bytes: usize,
    pub(crate) connections: usize,
    pub(crate) read_only: bool,
    pub(crate) wait: Option<Wait>,
}

/// What a completion waits for before it is acknowledged: the last of
/// [`RedisOptions::wait_for_replicas`] and [`RedisOptions::wait_for_aof`] set wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// `WAIT replicas timeout`: the replicas received the write (in their memory).
    Replicas { replicas: u32, timeout: Duration },
    /// `WAITAOF local replicas timeout`: the write is in the append-only file, fsynced, on
    /// this server (`local`) and on `replicas` replicas.
    Aof {
        local: bool,
        replicas: u32,
        timeout: Duration,
    },
}

impl RedisOptions {
    /// The server at `url` (`redis://host:port/db`, `redis://:password@host:port`,
    /// `rediss://` is not built in), with the defaults: prefix `idem:`, the server's clock,
    /// a 5 s deadline per operation, 1 s to connect, 60 s of grace, 64 MiB of replay cache,
    /// 4 connections.
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            prefix: "idem:".into(),
            clock: RedisClock::Server,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            grace: Duration::from_secs(60),
            trust_server_settings: false,
            replay_cache_bytes: 64 << 20,
            connections: 4,
            read_only: false,
            wait: None,
        }
    }

    /// The start of every key the store writes (1 to 64 bytes of visible ASCII, without `{`
    /// or `}`, which Redis Cluster reads as a hash tag). Stores with different prefixes share
    /// a server without seeing each other's records.
    pub fn prefix(mut self, prefix: impl Into<String>) -> RedisOptions {
        self.prefix = prefix.into();
        self
    }

    /// Which clock decides leases and expiry; see [`RedisClock`].
    pub fn clock(mut self, clock: RedisClock) -> RedisOptions {
        self.clock = clock;
        self
    }

    /// How long one operation may take, reconnections and re-sends included (10 ms to 10 min):
    /// past it the caller gets `Unavailable::Unreachable` if nothing was sent, or
    /// `Unavailable::OutcomeUnknown` if the server may have applied it.
    pub fn timeout(mut self, timeout: Duration) -> RedisOptions {
        self.timeout = timeout;
        self
    }

    /// How long one connection attempt may take (10 ms to 1 min).
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisOptions {
        self.connect_timeout = timeout;
        self
    }

    /// How long a record stays on the server after it expired, and how long a released or
    /// purged key keeps its last fencing token there (1 s to 1 day): the tokens of a key stay
    /// ordered as long as the deciding clock does not step back by more than this.
    pub fn grace(mut self, grace: Duration) -> RedisOptions {
        self.grace = grace;
        self
    }

    /// Skips the check of the server's settings at open (`maxmemory-policy`, `appendonly`,
    /// `appendfsync`), for managed services that hide `CONFIG`. The operator then vouches that
    /// the server never evicts keys and persists every write as the store's durability needs.
    pub fn trust_server_settings(mut self) -> RedisOptions {
        self.trust_server_settings = true;
        self
    }

    /// Bytes of completed records kept in this process to answer replays and conflicts
    /// without a round trip (default 64 MiB; 0 turns it off; at most 64 GiB). A record is kept
    /// until its expiry; a purge made by another machine reaches this cache only then, so a
    /// service that purges keys to let them run again sets 0 or purges on every machine
    /// (`docs/distributed.md`).
    pub fn replay_cache_bytes(mut self, bytes: usize) -> RedisOptions {
        self.replay_cache_bytes = bytes;
        self
    }

    /// How many I/O threads the store runs, each with its own connection to every server node
    /// (1 to 64, default 4). Each has one pipelined batch in flight at a time; a key's calls
    /// always go through the same one, so they stay in order.
    pub fn connections(mut self, connections: usize) -> RedisOptions {
        self.connections = connections;
        self
    }

    /// Opens without writing anything to the server, for tools that only look (`list`, `get`,
    /// `check`, `stats`): the store must exist there already (its `<prefix>meta`, or the open
    /// fails with `OpenError::NotAnIdemstoreFile`), the server's settings are not checked, no
    /// function is loaded, and every call that would change a record is refused with
    /// `Unavailable::Refused`.
    pub fn read_only(mut self) -> RedisOptions {
        self.read_only = true;
        self
    }

    /// Acknowledges a completion only once `replicas` replicas (1 to 16) have received it
    /// (`WAIT`, sent right after the completion on the same connection), waiting at most
    /// `timeout` (1 ms to 1 min); a completion fewer replicas confirmed in time is answered
    /// `Unavailable::OutcomeUnknown`: it is stored on the primary, which a failover can lose.
    /// A replica that received a write has not necessarily written it to its disk, and
    /// failover picks the most up-to-date replica on a best-effort basis: this narrows the
    /// loss on failover, it does not close it (`docs/distributed.md`).
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> RedisOptions {
        self.wait = Some(Wait::Replicas { replicas, timeout });
        self
    }

    /// Acknowledges a completion only once it is fsynced to the append-only file on this
    /// server (`local`) and on `replicas` replicas (0 to 16, at least one of the two asked
    /// for), waiting at most `timeout` (1 ms to 1 min), with `WAITAOF` sent right after the
    /// completion on the same connection. Where [`wait_for_replicas`](Self::wait_for_replicas)
    /// (`WAIT`) confirms that the replicas hold the write in memory, this confirms that it is
    /// on their disks: a replica that restarts keeps it. A completion not confirmed in time is
    /// answered `Unavailable::OutcomeUnknown`, as with `WAIT`: it is stored on the primary,
    /// which a failover or a power loss can still lose. Replaces `wait_for_replicas` (it waits
    /// for more). `WAITAOF` needs Redis 7.2 or Valkey: on an older server the open fails with
    /// `OpenError::UnsafeServer`. With `local` the server needs `appendonly yes`; under
    /// `appendfsync everysec` each completion then waits for the server's next fsync (about
    /// 100 ms), under `always` it costs next to nothing.
    pub fn wait_for_aof(mut self, local: bool, replicas: u32, timeout: Duration) -> RedisOptions {
        self.wait = Some(Wait::Aof {
            local,
            replicas,
            timeout,
        });
        self
    }

    /// Checks every value against its range.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let prefix_ok = (1..=64).contains(&self.prefix.len())
            && self
                .prefix
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'{' && b != b'}');
        if !prefix_ok {
            return Err(ConfigError {
                setting: "RedisOptions::prefix",
                value: format!("{:?}", self.prefix),
                range: "1 to 64 bytes of visible ASCII without '{' or '}'",
            });
        }
        if !(1..=64).contains(&self.connections) {
            return Err(ConfigError {
                setting: "RedisOptions::connections",
                value: self.connections.to_string(),
                range: "1 to 64",
            });
        }
        let timely = |t: Duration| t >= Duration::from_millis(1) && t <= Duration::from_secs(60);
        match self.wait {
            Some(Wait::Replicas { replicas, timeout })
                if !(1..=16).contains(&replicas) || !timely(timeout) =>
            {
                return Err(ConfigError {
                    setting: "RedisOptions::wait_for_replicas",
                    value: format!("{replicas} replicas, {timeout:?}"),
                    range: "1 to 16 replicas, 1 ms to 1 min",
                });
            }
            Some(Wait::Aof {
                local,
                replicas,
                timeout,
            }) if replicas > 16 || (!local && replicas == 0) || !timely(timeout) => {
                return Err(ConfigError {
                    setting: "RedisOptions::wait_for_aof",
                    value: format!("local {local}, {replicas} replicas, {timeout:?}"),
                    range: "the local disk or 1 to 16 replicas (or both), 1 ms to 1 min",
                });
            }
            _ => {}
        }
        if self.replay_cache_bytes > 64 << 30 {
            return Err(ConfigError {
                setting: "RedisOptions::replay_cache_bytes",
                value: self.replay_cache_bytes.to_string(),
                range: "0 to 64 GiB",
            });
        }
        let within = |d: Duration, lo: Duration, hi: Duration| d >= lo && d <= hi;
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (setting, value, lo, hi, range) in [
            (
                "RedisOptions::timeout",
                self.timeout,
                ms(10),
                s(600),
                "10 ms to 10 min",
            ),
            (
                "RedisOptions::connect_timeout",
                self.connect_timeout,
                ms(10),
                s(60),
                "10 ms to 1 min",
            ),
            (
                "RedisOptions::grace",
                self.grace,
                s(1),
                s(86_400),
                "1 s to 1 day",
            ),
        ] {
            if !within(value, lo, hi) {
                return Err(ConfigError {
                    setting,
                    value: format!("{value:?}"),
                    range,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_would_break_a_key_are_refused() {
        for bad in ["", "a{b", "a}", "with space", &"x".repeat(65)] {
            let err = RedisOptions::new("redis://x").prefix(bad).validate();
            assert_eq!(err.map_err(|e| e.setting()), Err("RedisOptions::prefix"));
        }
        assert!(
            RedisOptions::new("redis://x")
                .prefix("a:b:")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_wait_for_nothing_is_refused() {
        let o = RedisOptions::new("redis://x").wait_for_aof(false, 0, Duration::from_secs(1));
        assert_eq!(
            o.validate().map_err(|e| e.setting()),
            Err("RedisOptions::wait_for_aof")
        );
        let o = RedisOptions::new("redis://x").wait_for_aof(true, 0, Duration::from_secs(1));
        assert!(o.validate().is_ok());
        let o = RedisOptions::new("redis://x").wait_for_aof(true, 17, Duration::from_secs(1));
        assert!(o.validate().is_err());
    }

    #[test]
    fn durations_out_of_range_are_refused() {
        let o = RedisOptions::new("redis://x").timeout(Duration::ZERO);
        assert_eq!(
            o.validate().map_err(|e| e.setting()),
            Err("RedisOptions::timeout")
        );
        let o = RedisOptions::new("redis://x").grace(Duration::from_millis(10));
        assert_eq!(
            o.validate().map_err(|e| e.setting()),
            Err("RedisOptions::grace")
        );
    }
}
