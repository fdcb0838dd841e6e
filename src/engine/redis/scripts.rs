//! The Lua scripts that make every state change of a record one atomic step on the server.
//!
//! Why: a decision taken from a client-side read (is the key free, does this token still hold
//! it) is stale by the time the write arrives; the Redis stores whose users filed
//! double-execution bugs all decide that way. Each script here reads the record, decides with
//! the rules of `rules/machine.rs` and writes, while the server runs nothing else.
//!
//! Invariants:
//! - a script touches one key, `KEYS[1]`, the record, so it runs unchanged on Redis Cluster;
//! - the record is a hash: `st` (`f` in flight, `c` completed, `r` released or purged: a
//!   tombstone that keeps only the last token), `fp`, `tk`, `cr`, `ld`, `ex`, `sc`, `k`, `rs`
//!   (the response blob of `format/blob.rs`), and the nonce of the call that made the state:
//!   `at` (claim), `cn` (completion), `rn` (release or purge). A call sent twice, because its
//!   first reply was lost, finds its own nonce and answers as the first did, without a second
//!   change;
//! - a fencing token is `max(last token of the key + 1, now * 1024)`: strictly increasing for
//!   the key while its hash or tombstone lives, and above every earlier one after that as long
//!   as the deciding clock has not stepped back (tokens stay below 2^53, exact in Lua);
//! - times are milliseconds of the deciding clock: the caller's (`ARGV[1]` a number) or the
//!   server's (`ARGV[1]` empty, `TIME`). The hash's own TTL is the record's remaining life plus
//!   the grace, so the server drops what has expired, while every decision reads `ex` itself;
//! - every script starts with `#!lua` and declares no flags, so the server refuses it before it
//!   runs when it is out of memory, never halfway through.

/// The start of every script: the record's key, the clock, and the shared helpers.
const PRELUDE: &str = r#"#!lua
local r = KEYS[1]
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%.0f', n) end
local function live(st, ex, now)
  return (st == 'f' or st == 'c') and now < tonumber(ex)
end
local function tombstone(tk, nonce, grace)
  redis.call('DEL', r)
  redis.call('HSET', r, 'st', 'r', 'tk', tk, 'rn', nonce)
  redis.call('PEXPIRE', r, grace)
end
local function refuse(st, tk, token)
  if (st == 'f' or st == 'c') and tonumber(tk) > token then return {'fenced', tk} end
  return {'not_reserved'}
end
"#;

/// `begin` (C1-C5, C8, C9). ARGV: now, lease, ttl, grace, fingerprint, nonce, scope, key.
/// Answers `{conflict}`, `{replay, blob, expiry, now}`, `{busy}` or
/// `{execute, token, deadline, takeover}`.
const CLAIM: &str = r#"
local now = clock(ARGV[1])
local lease, ttl, grace = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local fp, nonce = ARGV[5], ARGV[6]
local h = redis.call('HMGET', r, 'st', 'fp', 'tk', 'at', 'ld', 'ex')
local takeover = '0'
if live(h[1], h[6], now) then
  if h[2] ~= fp then return {'conflict'} end
  if h[1] == 'c' then return {'replay', redis.call('HGET', r, 'rs'), h[6], int(now)} end
  if h[4] == nonce then return {'execute', h[3], h[5], '0'} end
  if now < tonumber(h[5]) then return {'busy'} end
  takeover = '1'
end
local token = math.max((tonumber(h[3]) or 0) + 1, now * 1024)
local deadline = now + lease
local expires = math.max(now + ttl, deadline)
redis.call('DEL', r)
redis.call('HSET', r, 'st', 'f', 'fp', fp, 'tk', int(token), 'at', nonce, 'cr', int(now),
  'ld', int(deadline), 'ex', int(expires), 'sc', ARGV[7], 'k', ARGV[8])
redis.call('PEXPIRE', r, int(expires - now + grace))
return {'execute', int(token), int(deadline), takeover}
"#;

/// `complete` (C3, C6, C7, C8). ARGV: now, token, keep (`1` or `0`), ttl, grace, nonce, blob.
/// Answers `{stored, fingerprint, expiry, now}`, `{released}`, `{fenced, current}` or
/// `{not_reserved}`.
const COMPLETE: &str = r#"
local now = clock(ARGV[1])
local token, ttl, grace, nonce = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local h = redis.call('HMGET', r, 'st', 'tk', 'cn', 'rn', 'fp', 'ex')
if h[1] == 'c' and h[3] == nonce then return {'stored', h[5], h[6], int(now)} end
if h[1] == 'r' and h[4] == nonce then return {'released'} end
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
if ARGV[3] == '0' then
  tombstone(h[2], nonce, grace)
  return {'released'}
end
redis.call('HSET', r, 'st', 'c', 'rs', ARGV[7], 'ex', int(now + ttl), 'ld', '0', 'cn', nonce)
redis.call('HDEL', r, 'at')
redis.call('PEXPIRE', r, int(ttl + grace))
return {'stored', h[5], int(now + ttl), int(now)}
"#;

/// `release` (C6). ARGV: token, grace, nonce. Answers `{ok}`, `{fenced, current}` or
/// `{not_reserved}`.
const RELEASE: &str = r#"
local token, grace, nonce = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local h = redis.call('HMGET', r, 'st', 'tk', 'rn')
if h[1] == 'r' and h[3] == nonce then return {'ok'} end
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
tombstone(h[2], nonce, grace)
return {'ok'}
"#;

/// `renew` (C8). ARGV: now, token, lease, grace. Answers `{renewed, deadline}`,
/// `{fenced, current}` or `{not_reserved}`.
const RENEW: &str = r#"
local now = clock(ARGV[1])
local token, lease, grace = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', r, 'st', 'tk', 'ex')
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
local deadline = now + lease
local expires = math.max(tonumber(h[3]), deadline)
redis.call('HSET', r, 'ld', int(deadline), 'ex', int(expires))
redis.call('PEXPIRE', r, int(expires - now + grace))
return {'renewed', int(deadline)}
"#;

/// `purge`. ARGV: grace, nonce. Answers 1 if there was a record (expired or not), else 0.
const PURGE: &str = r#"
local h = redis.call('HMGET', r, 'st', 'tk', 'rn')
if h[1] == 'r' and h[3] == ARGV[2] then return 1 end
if h[1] ~= 'f' and h[1] ~= 'c' then return 0 end
tombstone(h[2], ARGV[2], tonumber(ARGV[1]))
return 1
"#;

/// `get` (C9). ARGV: now. Answers the record's fields and values, or nothing when the key
/// holds no live record.
const GET: &str = r#"
local now = clock(ARGV[1])
local h = redis.call('HMGET', r, 'st', 'ex')
if not live(h[1], h[2], now) then return {} end
return redis.call('HGETALL', r)
"#;

/// One of the scripts, with the prelude in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    Claim,
    Complete,
    Release,
    Renew,
    Purge,
    Get,
}

impl Script {
    /// The whole script, as `EVAL` gets it. Sending the body rather than its digest
    /// (`EVALSHA`) costs a digest on the server per call and saves a `NOSCRIPT` round trip,
    /// and with it a reordering of calls, after every restart or failover of the server.
    pub(crate) fn source(self) -> &'static str {
        use std::sync::OnceLock;
        static SOURCES: OnceLock<[String; 6]> = OnceLock::new();
        let all = SOURCES.get_or_init(|| {
            [CLAIM, COMPLETE, RELEASE, RENEW, PURGE, GET].map(|body| format!("{PRELUDE}{body}"))
        });
        &all[self as usize]
    }
}
