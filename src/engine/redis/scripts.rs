//! The Lua scripts that make every state change of a record one atomic step on the server.
//!
//! Why: a decision taken from a client-side read (is the key free, does this token still hold
//! it) is stale by the time the write arrives; the Redis stores whose users filed
//! double-execution bugs all decide that way. Each function here reads the record, decides with
//! the rules of `rules/machine.rs` and writes, while the server runs nothing else.
//!
//! Invariants:
//! - a script touches the record, `KEYS[1]`, and in the scope layout its scope's count,
//!   `KEYS[2]` (`record.rs`), which share a hash slot, so it runs unchanged on Redis Cluster;
//! - the count (C13) is a sorted set of the scope's records, each its key tag (what follows
//!   the `}` of the record's key) scored by the record's expiry: a claim trims the members
//!   past their expiry, counts the rest only when it would add a record, and adds it; a
//!   completion, renewal or takeover moves the member's score to the new expiry; a release or
//!   a purge removes it. A record the server expired leaves a member the next claim trims, so
//!   a count never holds an expired record. A holder whose expired record was trimmed may
//!   still complete or renew it (C8), which counts it again, but only if its scope has room:
//!   otherwise it answers `not_reserved`, as for a record the compactor removed from a file;
//! - the record is a hash: `st` (`f` in flight, `c` completed, `r` released or purged: a
//!   tombstone that keeps only the last token), `fp`, `tk`, `cr`, `ld`, `ex`, `sc`, `k`, `rs`
//!   (the response blob of `format/blob.rs`), `pt` (the recovery point, as `format/point.rs`
//!   encodes it, while in flight), and the nonce of the call that made the state:
//!   `at` (claim; left in place by the completion, since only a record in flight reads it),
//!   `cn` (completion), `rn` (release or purge). A call sent twice, because its
//!   first reply was lost, finds its own nonce and answers as the first did, without a second
//!   change; a completion sent again still writes its nonce once more, so that a `WAIT` or
//!   `WAITAOF` after it on a new connection covers the completion whatever the server counts
//!   as that connection's writes;
//! - a record with a recovery point is never let go to nothing (P3): a release, or a
//!   completion whose status is not kept, leaves it in flight with its point, its lease ended
//!   (`ld` 0) and the next token, so the next claim of the same request takes it over at once
//!   and inherits the point (P2), and the holder that let it go is fenced (its claim's nonce
//!   goes too, so that no re-sent claim can answer with the kept record's token); a completion
//!   removes the point;
//! - a fencing token is `max(last token of the key + 1, now * 1024)`: strictly increasing for
//!   the key while its hash or tombstone lives, and above every earlier one after that as long
//!   as the deciding clock has not stepped back (tokens stay below 2^53, exact in Lua, and
//!   written with `%d`, an integer format the server prints far faster than `%.0f`);
//! - times are milliseconds of the deciding clock: the caller's (`ARGV[1]` a number) or the
//!   server's (`ARGV[1]` empty, `TIME`). The hash's own TTL is the record's remaining life plus
//!   the grace, so the server drops what has expired, while every decision reads `ex` itself;
//! - the scripts are one Redis Functions library (`FUNCTION LOAD`), named with a digest of its
//!   code, so stores of different versions sharing a server each call their own; the server
//!   keeps libraries in its append-only file and replicates them, so a restart or a failover
//!   does not lose them, and a node that lacks the library (a new Cluster node) gets it when a
//!   call says so (`link.rs`);
//! - no function declares flags, so the server refuses one before it runs when it is out of
//!   memory, never halfway through.

/// The helpers every function shares: the clock, numbers as text, liveness, tombstones and
/// a holder's refusal.
const HELPERS: &str = r#"
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%d', n) end
local function live(st, ex, now)
  return (st == 'f' or st == 'c') and now < tonumber(ex)
end
local function tombstone(r, tk, nonce, grace)
  redis.call('DEL', r)
  redis.call('HSET', r, 'st', 'r', 'tk', tk, 'rn', nonce)
  redis.call('PEXPIRE', r, grace)
end
local function member(r) return string.sub(r, string.find(r, '}', 1, true) + 1) end
local function count(s, r, ex)
  if s then redis.call('ZADD', s, ex, member(r)) end
end
local function uncount(s, r)
  if s then redis.call('ZREM', s, member(r)) end
end
local function keep_point(r, token, nonce)
  redis.call('HSET', r, 'tk', int(token + 1), 'ld', '0', 'rn', nonce)
  redis.call('HDEL', r, 'at')
end
local function refuse(st, tk, token)
  if (st == 'f' or st == 'c') and tonumber(tk) > token then return {'fenced', tk} end
  return {'not_reserved'}
end
local function rejoins(s, r, cap)
  return not s or redis.call('ZSCORE', s, member(r)) or redis.call('ZCARD', s) < cap
end
"#;

/// `begin` (C1-C5, C8, C9, C13, P2). ARGV: now, lease, ttl, grace, fingerprint, nonce, scope,
/// key, the scope's cap. Answers `{conflict}`, `{replay, blob, expiry, now}`, `{busy}`,
/// `{scope_full}` or `{execute, token, deadline, takeover, point}` (the point a takeover
/// inherits, or empty).
const CLAIM: &str = r#"
local now = clock(ARGV[1])
local lease, ttl, grace = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local fp, nonce = ARGV[5], ARGV[6]
local h = redis.call('HMGET', r, 'st', 'fp', 'tk', 'at', 'ld', 'ex', 'pt')
local takeover = '0'
if live(h[1], h[6], now) then
  if h[2] ~= fp then return {'conflict'} end
  if h[1] == 'c' then return {'replay', redis.call('HGET', r, 'rs'), h[6], int(now)} end
  if h[4] == nonce then return {'execute', h[3], h[5], '0', h[7] or ''} end
  if now < tonumber(h[5]) then return {'busy'} end
  takeover = '1'
end
if s and takeover == '0' then
  redis.call('ZREMRANGEBYSCORE', s, '-inf', int(now))
  if redis.call('ZCARD', s) >= tonumber(ARGV[9]) and not redis.call('ZSCORE', s, member(r)) then
    return {'scope_full'}
  end
end
local token = math.max((tonumber(h[3]) or 0) + 1, now * 1024)
local deadline = now + lease
local expires = math.max(now + ttl, deadline)
if h[1] then redis.call('DEL', r) end
redis.call('HSET', r, 'st', 'f', 'fp', fp, 'tk', int(token), 'at', nonce, 'cr', int(now),
  'ld', int(deadline), 'ex', int(expires), 'sc', ARGV[7], 'k', ARGV[8])
local point = ''
if takeover == '1' and h[7] then
  point = h[7]
  redis.call('HSET', r, 'pt', point)
end
redis.call('PEXPIRE', r, int(expires - now + grace))
count(s, r, int(expires))
return {'execute', int(token), int(deadline), takeover, point}
"#;

/// `complete` (C3, C6, C7, C8, C13, P3). ARGV: now, token, keep (`1` or `0`), ttl, grace, nonce,
/// blob, the scope's cap.
/// Answers `{stored, fingerprint, expiry, now}`, `{released}`, `{fenced, current}` or
/// `{not_reserved}`.
const COMPLETE: &str = r#"
local now = clock(ARGV[1])
local token, ttl, grace, nonce = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local h = redis.call('HMGET', r, 'st', 'tk', 'cn', 'rn', 'fp', 'ex', 'pt')
if h[1] == 'c' and h[3] == nonce then
  redis.call('HSET', r, 'cn', nonce)
  return {'stored', h[5], h[6], int(now)}
end
if h[4] == nonce then
  redis.call('HSET', r, 'rn', nonce)
  return {'released'}
end
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
if now >= tonumber(h[6]) and not rejoins(s, r, tonumber(ARGV[8])) then
  return {'not_reserved'}
end
if ARGV[3] == '0' then
  if h[7] then
    keep_point(r, token, nonce)
    return {'released'}
  end
  tombstone(r, h[2], nonce, grace)
  uncount(s, r)
  return {'released'}
end
redis.call('HSET', r, 'st', 'c', 'rs', ARGV[7], 'ex', int(now + ttl), 'ld', '0', 'cn', nonce)
if h[7] then redis.call('HDEL', r, 'pt') end
redis.call('PEXPIRE', r, int(ttl + grace))
count(s, r, int(now + ttl))
return {'stored', h[5], int(now + ttl), int(now)}
"#;

/// `release` (C6, P3). ARGV: token, grace, nonce. Answers `{ok}`, `{fenced, current}` or
/// `{not_reserved}`.
const RELEASE: &str = r#"
local token, grace, nonce = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local h = redis.call('HMGET', r, 'st', 'tk', 'rn', 'pt')
if h[3] == nonce then return {'ok'} end
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
if h[4] then
  keep_point(r, token, nonce)
  return {'ok'}
end
tombstone(r, h[2], nonce, grace)
uncount(s, r)
return {'ok'}
"#;

/// `renew` (C8, C13). ARGV: now, token, lease, grace, the scope's cap. Answers `{renewed, deadline}`,
/// `{fenced, current}` or `{not_reserved}`.
const RENEW: &str = r#"
local now = clock(ARGV[1])
local token, lease, grace = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', r, 'st', 'tk', 'ex')
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
if now >= tonumber(h[3]) and not rejoins(s, r, tonumber(ARGV[5])) then
  return {'not_reserved'}
end
local deadline = now + lease
local expires = math.max(tonumber(h[3]), deadline)
redis.call('HSET', r, 'ld', int(deadline), 'ex', int(expires))
redis.call('PEXPIRE', r, int(expires - now + grace))
count(s, r, int(expires))
return {'renewed', int(deadline)}
"#;

/// `point` (P1): saves a recovery point, its encoding, for the holder of the token. ARGV:
/// token, point. Answers `{ok}`, `{fenced, current}` or `{not_reserved}`.
const POINT: &str = r#"
local token = tonumber(ARGV[1])
local h = redis.call('HMGET', r, 'st', 'tk')
if h[1] ~= 'f' or tonumber(h[2]) ~= token then return refuse(h[1], h[2], token) end
redis.call('HSET', r, 'pt', ARGV[2])
return {'ok'}
"#;

/// `purge`. ARGV: grace, nonce. Answers 1 if there was a record (expired or not), else 0.
const PURGE: &str = r#"
local h = redis.call('HMGET', r, 'st', 'tk', 'rn')
if h[1] == 'r' and h[3] == ARGV[2] then return 1 end
if h[1] ~= 'f' and h[1] ~= 'c' then return 0 end
tombstone(r, h[2], ARGV[2], tonumber(ARGV[1]))
uncount(s, r)
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
    Point,
    Purge,
    Get,
}

impl Script {
    const ALL: [Script; 7] = [
        Script::Claim,
        Script::Complete,
        Script::Release,
        Script::Renew,
        Script::Point,
        Script::Purge,
        Script::Get,
    ];

    fn body(self) -> &'static str {
        match self {
            Script::Claim => CLAIM,
            Script::Complete => COMPLETE,
            Script::Release => RELEASE,
            Script::Renew => RENEW,
            Script::Point => POINT,
            Script::Purge => PURGE,
            Script::Get => GET,
        }
    }

    fn stem(self) -> &'static str {
        match self {
            Script::Claim => "claim",
            Script::Complete => "complete",
            Script::Release => "release",
            Script::Renew => "renew",
            Script::Point => "point",
            Script::Purge => "purge",
            Script::Get => "get",
        }
    }

    /// The name `FCALL` calls it by: `idem_<stem>_<digest of the library>`.
    pub(crate) fn function(self) -> &'static str {
        &library().names[self as usize]
    }
}

struct Library {
    source: String,
    names: [String; 7],
}

fn library() -> &'static Library {
    use std::sync::OnceLock;
    static LIBRARY: OnceLock<Library> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let mut code = String::from(HELPERS);
        for script in Script::ALL {
            code.push_str(script.body());
        }
        let digest = blake3::hash(code.as_bytes()).to_hex();
        let tag = &digest.as_str()[..12];
        let names = Script::ALL.map(|s| format!("idem_{}_{tag}", s.stem()));
        let mut source = format!("#!lua name=idemstore_{tag}\n{HELPERS}");
        for (script, name) in Script::ALL.iter().zip(&names) {
            source.push_str(&format!(
                "redis.register_function('{name}', function(KEYS, ARGV)\nlocal r, s = KEYS[1], KEYS[2]\n{}end)\n",
                script.body()
            ));
        }
        Library { source, names }
    })
}

/// The library's source, as `FUNCTION LOAD` takes it.
pub(crate) fn library_source() -> &'static str {
    &library().source
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_registered_under_its_digest_name() {
        let src = library_source();
        assert!(src.starts_with("#!lua name=idemstore_"));
        for s in Script::ALL {
            assert!(src.contains(&format!("redis.register_function('{}'", s.function())));
        }
    }
}
