//! Opening the Redis engine: the connection, the checks of the server, and the store's
//! secret and layout.
//!
//! Why: a server that may evict keys or lose acknowledged writes breaks the contract without
//! a single error, so it is refused before anything is written, with a message that says
//! which setting to change. Invariant: `connect` returns only once the server is 7.0 or later,
//! its settings keep what the store's durability promises (unless the operator vouched for
//! them), the secret and the layout are the ones every store on this prefix uses, and a cap on
//! a scope's records is asked only of a store whose layout can keep it (C13).

use std::sync::Arc;
use std::time::Instant;

use ::redis::{Cmd, Value};

use crate::config::{Config, Durability};
use crate::error::{ConfigError, Message, OpenError};

use super::RedisOptions;
use super::io::{Failure, Target};
use super::link::{Link, slot_of};
use super::options::Wait;
use super::record::{Layout, Names, number, words};

/// The format of what the engine keeps on the server, in `<prefix>meta`: 2 for a store made
/// in the scope layout, so that a version that knows only format 1 (records by key) refuses it
/// instead of naming its records otherwise; format 1 stores (no layout) still open.
const FORMAT: u64 = 2;
const FORMAT_BY_KEY: u64 = 1;

/// Connects to the server of `options` and checks it; answers the connection, the store's
/// secret and its layout.
pub(super) fn connect(
    options: &RedisOptions,
    config: &Config,
) -> Result<(Link, [u8; 32], Layout), OpenError> {
    options.validate().map_err(OpenError::Config)?;
    if config.durability == Durability::Memory {
        return Err(OpenError::Config(ConfigError {
            setting: "ConfigBuilder::durability",
            value: "Memory".into(),
            range: "Immediate or Buffered with the Redis engine",
        }));
    }
    let client = ::redis::Client::open(options.url.as_str()).map_err(|e| {
        OpenError::Config(ConfigError {
            setting: "RedisOptions::new",
            // Not the URL itself: where a URL that does not parse keeps its password cannot
            // be known, and errors end up in logs.
            value: format!(
                "a URL that does not parse, not quoted since it may hold a password ({:?})",
                e.kind()
            ),
            range: "a redis:// or redis+unix:// URL",
        })
    })?;
    let mut link = Link::new(client, options.timeout, options.connect_timeout);
    let deadline = Instant::now() + options.timeout;
    let unreachable = |f: Failure| match f {
        Failure::NotSent(cause) | Failure::NoReply(cause) => OpenError::Unreachable { cause },
        // The prefix's metadata key holds something of another program.
        Failure::Server(detail) if detail.starts_with("WRONGTYPE") => {
            OpenError::NotAnIdemstoreFile {
                detail: format!("the keys under this prefix are not an idemstore store: {detail}"),
            }
        }
        Failure::Server(detail) => OpenError::Unreachable {
            cause: Arc::new(Message(detail)),
        },
    };
    link.discover(deadline).map_err(unreachable)?;
    // Every primary runs the scripts of its slots: each must be recent and safe.
    for node in link.primaries() {
        let name = link.addr(node).to_owned();
        let mut ask = |cmd: &Cmd| {
            link.query(Target::Node(node), cmd, deadline)
                .map_err(unreachable)
        };
        check_version(&mut ask).map_err(|e| on_node(e, &name))?;
        if options.read_only {
            continue;
        }
        if !options.trust_server_settings {
            check_settings(&mut ask, config.durability).map_err(|e| on_node(e, &name))?;
        }
        if matches!(options.wait, Some(Wait::Aof { .. })) {
            check_waitaof(&mut ask).map_err(|e| on_node(e, &name))?;
        }
        link.load_functions(node, deadline).map_err(unreachable)?;
    }
    let meta = Names::meta(&options.prefix);
    let target = Target::Slot(slot_of(meta.as_bytes()));
    let mut ask = |cmd: &Cmd| link.query(target, cmd, deadline).map_err(unreachable);
    let (secret, layout) = load_or_make_secret(&mut ask, &meta, !options.read_only)?;
    if layout == Layout::ByKey
        && config.max_records_per_scope != Config::default().max_records_per_scope
    {
        // A store made before the scope layout has its records in slots of their own: its
        // scripts cannot count a scope's records, and a cap that is not kept must not look as
        // if it were.
        return Err(OpenError::Config(ConfigError {
            setting: "ConfigBuilder::max_records_per_scope",
            value: config.max_records_per_scope.to_string(),
            range: "its default on this store, which was made before records were laid out by \
                    scope (its metadata has no `layout`), so its records cannot be counted per \
                    scope (C13); a store made on a new prefix can cap them",
        }));
    }
    Ok((link, secret, layout))
}

/// Names the node a refusal is about, when there may be several.
fn on_node(e: OpenError, node: &str) -> OpenError {
    match e {
        OpenError::UnsafeServer { detail } => OpenError::UnsafeServer {
            detail: format!("{node}: {detail}"),
        },
        other => other,
    }
}

/// Refuses servers older than 7.0, whose scripts cannot be refused before they run.
fn check_version(ask: &mut impl FnMut(&Cmd) -> Result<Value, OpenError>) -> Result<(), OpenError> {
    let mut info = ::redis::cmd("INFO");
    info.arg("server");
    let text = match ask(&info)? {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    };
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 7 {
        return Err(OpenError::UnsafeServer {
            detail: format!(
                "server version {version}; the Redis engine needs Redis or Valkey 7.0 or later, \
                 which refuse a script before it runs when out of memory"
            ),
        });
    }
    Ok(())
}

/// Refuses a server without `WAITAOF` (Redis before 7.2) when completions must wait for it: a
/// wait that the server cannot run would fail every completion. Asks whether the command
/// exists (`COMMAND INFO`), which also holds on servers that report another version.
fn check_waitaof(ask: &mut impl FnMut(&Cmd) -> Result<Value, OpenError>) -> Result<(), OpenError> {
    let mut cmd = ::redis::cmd("COMMAND");
    cmd.arg("INFO").arg("waitaof");
    let known = match ask(&cmd)? {
        Value::Array(entries) => entries.first().is_some_and(|e| *e != Value::Nil),
        Value::Map(entries) => !entries.is_empty(),
        Value::ServerError(e) => {
            return Err(OpenError::UnsafeServer {
                detail: format!(
                    "cannot ask whether the server has WAITAOF ({} {}), which \
                     RedisOptions::wait_for_aof needs",
                    e.code(),
                    e.details().unwrap_or("")
                ),
            });
        }
        _ => false,
    };
    if known {
        return Ok(());
    }
    Err(OpenError::UnsafeServer {
        detail: "the server has no WAITAOF (it needs Redis 7.2 or later, or Valkey), which \
                 RedisOptions::wait_for_aof asks for; upgrade the server, or wait with \
                 RedisOptions::wait_for_replicas (WAIT: the replicas' memory, not their disks)"
            .into(),
    })
}

/// Refuses a server that may drop records: see [`OpenError::UnsafeServer`].
fn check_settings(
    ask: &mut impl FnMut(&Cmd) -> Result<Value, OpenError>,
    durability: Durability,
) -> Result<(), OpenError> {
    let mut get = |name: &str| -> Result<String, OpenError> {
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let refused = |why: String| OpenError::UnsafeServer {
            detail: format!(
                "cannot read `{name}` ({why}); check by hand that the server never evicts \
                 keys and persists every write, then open with \
                 RedisOptions::trust_server_settings()"
            ),
        };
        let v = ask(&cmd).map_err(|e| refused(e.to_string()))?;
        let pairs = match v {
            Value::Map(pairs) => pairs.into_iter().flat_map(|(a, b)| [a, b]).collect(),
            v => match words("CONFIG GET", v) {
                Ok(w) => w.into_iter().map(Value::BulkString).collect(),
                Err(e) => return Err(refused(e.to_string())),
            },
        };
        let words = words("CONFIG GET", Value::Array(pairs)).map_err(|e| refused(e.to_string()))?;
        match words.as_slice() {
            [_, value] => Ok(String::from_utf8_lossy(value).into_owned()),
            _ => Err(refused("no such setting".into())),
        }
    };
    let policy = get("maxmemory-policy")?;
    if policy != "noeviction" {
        return Err(OpenError::UnsafeServer {
            detail: format!(
                "maxmemory-policy is {policy}: the server may evict records, and an evicted \
                 key executes again; set `maxmemory-policy noeviction`"
            ),
        });
    }
    let aof = get("appendonly")?;
    if aof != "yes" {
        return Err(OpenError::UnsafeServer {
            detail: "appendonly is no: a restart of the server loses every completion since \
                     its last snapshot; set `appendonly yes` and `appendfsync always`"
                .into(),
        });
    }
    let fsync = get("appendfsync")?;
    let enough = match durability {
        Durability::Immediate => fsync == "always",
        _ => fsync == "always" || fsync == "everysec",
    };
    if !enough {
        return Err(OpenError::UnsafeServer {
            detail: format!(
                "appendfsync is {fsync}: a power loss of the server loses completions already \
                 acknowledged; set `appendfsync always`, or open with \
                 Durability::Buffered (which accepts `everysec`, losing up to a second)"
            ),
        });
    }
    Ok(())
}

/// Makes the store's metadata if there is none, in one step: the secret, the format, and the
/// scope layout, which only a new store gets (a store made before it keeps its records by key).
const MAKE: &str = r#"
if redis.call('HSETNX', KEYS[1], 'secret', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'layout', ARGV[3])
end
redis.call('HSETNX', KEYS[1], 'format', ARGV[2])
return 1
"#;

/// The store's secret, format and layout, written by the first store that opens on this
/// prefix.
fn load_or_make_secret(
    ask: &mut impl FnMut(&Cmd) -> Result<Value, OpenError>,
    meta: &str,
    make: bool,
) -> Result<([u8; 32], Layout), OpenError> {
    if make {
        let fresh = crate::engine::shared::random_secret()?;
        let mut set = ::redis::cmd("EVAL");
        set.arg(MAKE)
            .arg(1)
            .arg(meta)
            .arg(hex(&fresh))
            .arg(FORMAT)
            .arg(Layout::BY_SCOPE);
        if let Value::ServerError(e) = ask(&set)? {
            return Err(OpenError::Unreachable {
                cause: Arc::new(Message(format!(
                    "making the store's metadata: {} {}",
                    e.code(),
                    e.details().unwrap_or("")
                ))),
            });
        }
    }
    let mut get = ::redis::cmd("HMGET");
    get.arg(meta).arg("secret").arg("format").arg("layout");
    let corrupt = |detail: String| OpenError::Corrupted { detail };
    let (fields, layout) = match ask(&get)? {
        Value::Array(mut fields) if fields.len() == 3 => {
            let layout = fields.pop();
            if fields.contains(&Value::Nil) {
                return Err(OpenError::NotAnIdemstoreFile {
                    detail: format!("no idemstore store on this server under {meta:?}"),
                });
            }
            (Value::Array(fields), layout)
        }
        other => return Err(corrupt(format!("{meta} answered {other:?}"))),
    };
    let layout = match layout {
        Some(Value::Nil) | None => Layout::ByKey,
        Some(l) => match words("HMGET", Value::Array(vec![l])) {
            Ok(w) if w.first().map(Vec::as_slice) == Some(Layout::BY_SCOPE.as_bytes()) => {
                Layout::ByScope
            }
            Ok(w) => {
                return Err(corrupt(format!(
                    "{meta} holds an unknown layout {:?}",
                    w.first().map(|b| String::from_utf8_lossy(b).into_owned())
                )));
            }
            Err(e) => return Err(corrupt(e.to_string())),
        },
    };
    let w = words("HMGET", fields).map_err(|e| corrupt(e.to_string()))?;
    let [secret, format] = w.as_slice() else {
        return Err(corrupt(format!("{meta} answered other than two fields")));
    };
    let format = number("format", format).map_err(|e| corrupt(e.to_string()))?;
    if format != FORMAT && format != FORMAT_BY_KEY {
        return Err(OpenError::UnsupportedFormat {
            found: format,
            supported: FORMAT,
        });
    }
    let secret =
        unhex(secret).ok_or_else(|| corrupt(format!("{meta} holds a malformed secret")))?;
    Ok((secret, layout))
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_survive_hex() {
        let s = [0xa5; 32];
        assert_eq!(unhex(hex(&s).as_bytes()), Some(s));
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(unhex(&[b'g'; 64]), None);
    }
}
