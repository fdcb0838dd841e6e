//! The operator subcommands: `stats`, `list`, `get`, `purge`, `compact`, `check`.
//!
//! Why: an operator needs to see and fix a store file without writing code. Invariants: the
//! commands that only look (`stats`, `list`, `get`, `check`) go through the library's
//! read-only [`Inspector`], so they never create, migrate or write the file or its log, and
//! work on a file they may not write (with `--redis`, through a store opened with
//! `RedisOptions::read_only`, which writes nothing to the server); only `purge` and `compact`,
//! which change the store, open it as a [`Store`]. A missing file is never created (it is an error); a damaged or foreign
//! one gives a one-line error and a non-zero exit, never a panic. Everything printed that came
//! from the file (scopes, keys, headers, bodies, problems) goes through `escape`, so no byte
//! of it can drive the terminal. `--json` prints one JSON document on stdout; the human form is
//! an aligned table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idemstore::{
    CheckReport, Config, Inspector, Key, RecordInfo, RedisOptions, Scope, State, Store, Unavailable,
};
use serde_json::{Value, json};

use crate::escape;

/// Where the store is and how to print.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// The store file.
    #[arg(long, default_value = "idemstore.redb")]
    pub(crate) db: PathBuf,
    /// The Redis server that holds the store (`redis://host:port`), instead of a file
    /// (`--db` is then unused).
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// With `--redis`: the prefix of the store's keys on the server.
    #[arg(long, default_value = "idem:")]
    pub(crate) prefix: String,
    /// With `--redis`, for `purge`: do not read the server's settings (managed services that
    /// hide `CONFIG`).
    #[arg(long, requires = "redis")]
    pub(crate) trust_server_settings: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a subcommand prints, and whether it found what it was asked for.
pub(crate) struct Outcome {
    pub(crate) text: String,
    pub(crate) success: bool,
}

fn ok(text: String) -> Result<Outcome, String> {
    Ok(Outcome {
        text,
        success: true,
    })
}

/// The file, or the error a missing one gives (nothing is ever created). Errors are escaped
/// where they are printed (`main::fail`).
fn existing(path: &Path) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!("no store file at {}", path.display()))
    }
}

/// Opens an existing store to change it (`purge`, `compact`).
fn open(t: &Target) -> Result<Store, String> {
    if let Some(url) = &t.redis {
        // Made sure first that the store exists there: a purge never creates one.
        drop(look_on_redis(t, url)?);
        let mut options = RedisOptions::new(url.as_str()).prefix(t.prefix.as_str());
        if t.trust_server_settings {
            options = options.trust_server_settings();
        }
        return Store::open_redis_with(options, Config::default())
            .map_err(|e| format!("cannot open the store on {url}: {}", chain(&e)));
    }
    let path = &t.db;
    existing(path)?;
    let config = Config::builder()
        // No background compaction while an operator works, and reservations other than
        // the one purged stay as found: the tool changes only what it is asked to.
        .compactor_interval(Duration::from_secs(3600))
        .release_in_flight_on_open(false)
        .build()
        .map_err(|e| e.to_string())?;
    Store::open(path, config).map_err(|e| format!("cannot open {}: {}", path.display(), chain(&e)))
}

/// What the looking commands read: a file through the inspector, or a Redis server through a
/// store opened read-only.
enum View {
    File(Inspector),
    Redis(Store),
}

impl View {
    fn records(
        &self,
        scope: Option<&Scope>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        match self {
            View::File(i) => i.records_in_state(scope, state, limit),
            View::Redis(s) => s.records_in_state(scope, state, limit),
        }
    }

    fn get(&self, scope: &Scope, key: &Key) -> Result<Option<RecordInfo>, Unavailable> {
        match self {
            View::File(i) => i.get(scope, key),
            View::Redis(s) => s.get(scope, key),
        }
    }

    fn check(&self) -> Result<CheckReport, Unavailable> {
        match self {
            View::File(i) => i.check(),
            View::Redis(s) => s.check(),
        }
    }
}

/// Opens the target to look at it, without writing anything; `verify` checks every page's
/// checksum of a file first.
fn view(t: &Target, verify: bool) -> Result<View, String> {
    match &t.redis {
        Some(url) => look_on_redis(t, url).map(View::Redis),
        None => inspect(&t.db, verify).map(View::File),
    }
}

/// The store on the server at `url`, opened read-only.
fn look_on_redis(t: &Target, url: &str) -> Result<Store, String> {
    let options = RedisOptions::new(url).prefix(t.prefix.as_str()).read_only();
    Store::open_redis_with(options, Config::default())
        .map_err(|e| format!("cannot open the store on {url}: {}", chain(&e)))
}

/// Opens an existing store file to look at it, without writing anything; `verify` checks every
/// page's checksum first.
fn inspect(path: &Path, verify: bool) -> Result<Inspector, String> {
    existing(path)?;
    let config = Config::builder()
        .verify_on_open(verify)
        .build()
        .map_err(|e| e.to_string())?;
    Inspector::open(path, config)
        .map_err(|e| format!("cannot open {}: {}", path.display(), chain(&e)))
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s.replace(['\n', '\r'], " ")
}

fn close(store: Store) -> Result<(), String> {
    store.close().map_err(|e| chain(&e))
}

pub(crate) fn stats(t: &Target) -> Result<Outcome, String> {
    let view = view(t, false)?;
    let report = view.check().map_err(|e| chain(&e))?;
    let mut rows = Vec::new();
    match (&view, &t.redis) {
        (View::File(inspector), _) => {
            let file_bytes = std::fs::metadata(&t.db).map(|m| m.len()).unwrap_or(0);
            rows.push(("file", t.db.display().to_string()));
            rows.push(("file_bytes", file_bytes.to_string()));
            rows.push((
                "log_entries_not_checkpointed",
                inspector.log_entries().to_string(),
            ));
        }
        (View::Redis(_), url) => {
            rows.push(("server", url.clone().unwrap_or_default()));
            rows.push(("prefix", t.prefix.clone()));
        }
    }
    drop(view);
    let live = report.records - report.expired;
    rows.extend([
        ("records", report.records.to_string()),
        ("live", live.to_string()),
        ("in_flight", report.in_flight.to_string()),
        ("completed", report.completed.to_string()),
        ("expired_not_removed", report.expired.to_string()),
        ("response_bytes", report.response_bytes.to_string()),
    ]);
    if t.json {
        let mut m = serde_json::Map::new();
        for (k, v) in &rows {
            let v = v
                .parse::<u64>()
                .map_or(Value::String(v.clone()), Value::from);
            m.insert((*k).to_owned(), v);
        }
        return ok(escape::json(&Value::Object(m)));
    }
    ok(table(
        &["STAT", "VALUE"],
        rows.iter()
            .map(|(k, v)| vec![(*k).to_owned(), escape::text(v)])
            .collect(),
    ))
}

/// Which records `list --state` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StateArg {
    /// Reserved, an attempt holding (or having held) a lease.
    InFlight,
    /// Completed, replaying their response.
    Completed,
    /// Cut short by a stop, awaiting their resolution (`--in-flight-at-open mark-unknown`).
    OutcomeUnknown,
}

pub(crate) fn list(
    t: &Target,
    scope: Option<&str>,
    state_filter: Option<StateArg>,
    limit: usize,
) -> Result<Outcome, String> {
    let scope = scope
        .map(Scope::new)
        .transpose()
        .map_err(|e| format!("bad --scope: {e}"))?;
    let wanted = state_filter.map(|s| match s {
        StateArg::InFlight => State::InFlight,
        StateArg::Completed => State::Completed,
        StateArg::OutcomeUnknown => State::OutcomeUnknown,
    });
    let records = view(t, false)?
        .records(scope.as_ref(), wanted, limit)
        .map_err(|e| chain(&e))?;
    if t.json {
        return ok(escape::json(&Value::Array(
            records.iter().map(record_json).collect(),
        )));
    }
    let rows = records
        .iter()
        .map(|r| {
            vec![
                escape::text(&r.scope),
                escape::text(&r.key),
                state(r).to_owned(),
                r.response
                    .as_ref()
                    .map_or("-".to_owned(), |x| x.status().to_string()),
                r.token.to_string(),
                time(r.created_at),
                time(r.expires_at),
            ]
        })
        .collect();
    ok(table(
        &[
            "SCOPE", "KEY", "STATE", "STATUS", "TOKEN", "CREATED", "EXPIRES",
        ],
        rows,
    ))
}

fn scope_key(scope: &str, key: &str) -> Result<(Scope, Key), String> {
    let s = Scope::new(scope).map_err(|e| format!("bad --scope: {e}"))?;
    // Keys longer than the default limit are legal in stores configured for them.
    let k = Key::with_max_len(key, 4096).map_err(|e| format!("bad --key: {e}"))?;
    Ok((s, k))
}

/// The message for a (scope, key) without a record.
fn no_record(scope: &str, key: &str) -> String {
    format!(
        "no record for scope \"{}\", key \"{}\"",
        escape::text(scope),
        escape::text(key)
    )
}

pub(crate) fn get(t: &Target, scope: &str, key: &str) -> Result<Outcome, String> {
    let (s, k) = scope_key(scope, key)?;
    let record = view(t, false)?.get(&s, &k).map_err(|e| chain(&e))?;
    let Some(r) = record else {
        return Ok(Outcome {
            text: if t.json {
                "null".to_owned()
            } else {
                no_record(scope, key)
            },
            success: false,
        });
    };
    if t.json {
        return ok(escape::json(&record_json(&r)));
    }
    let mut rows = vec![
        vec!["scope".to_owned(), escape::text(&r.scope)],
        vec!["key".to_owned(), escape::text(&r.key)],
        vec!["state".to_owned(), state(&r).to_owned()],
        vec!["fingerprint".to_owned(), r.fingerprint.to_string()],
        vec!["token".to_owned(), r.token.to_string()],
        vec!["created".to_owned(), time(r.created_at)],
        vec!["expires".to_owned(), time(r.expires_at)],
    ];
    if let Some(d) = r.lease_deadline {
        rows.push(vec!["lease_deadline".to_owned(), time(d)]);
    }
    if let Some(resp) = &r.response {
        rows.push(vec!["status".to_owned(), resp.status().to_string()]);
        for (n, v) in resp.headers() {
            rows.push(vec![
                format!("header {}", escape::text(n)),
                escape::bytes(v),
            ]);
        }
        // Bytes that are not UTF-8 are shown as \xNN; say so, since the body is then not text.
        let label = if std::str::from_utf8(resp.body()).is_ok() {
            "body"
        } else {
            "body (not UTF-8: bytes as \\xNN)"
        };
        rows.push(vec![label.to_owned(), escape::bytes(resp.body())]);
    }
    ok(table(&["FIELD", "VALUE"], rows))
}

pub(crate) fn purge(t: &Target, scope: &str, key: &str) -> Result<Outcome, String> {
    let (s, k) = scope_key(scope, key)?;
    let store = open(t)?;
    let removed = store.purge(&s, &k).map_err(|e| chain(&e))?;
    close(store)?;
    let text = if t.json {
        json!({"purged": removed}).to_string()
    } else if removed {
        format!(
            "purged scope \"{}\", key \"{}\"",
            escape::text(scope),
            escape::text(key)
        )
    } else {
        no_record(scope, key)
    };
    Ok(Outcome {
        text,
        success: removed,
    })
}

pub(crate) fn compact(t: &Target) -> Result<Outcome, String> {
    if t.redis.is_some() {
        // Nothing to do: the server drops each record once its TTL (expiry plus grace) ends.
        drop(view(t, false)?);
        if t.json {
            return ok(json!({"removed": 0}).to_string());
        }
        return ok("removed 0 expired records: the Redis server removes them itself".into());
    }
    let store = open(t)?;
    let removed = store.compact_now().map_err(|e| chain(&e))?;
    close(store)?;
    if t.json {
        return ok(json!({"removed": removed}).to_string());
    }
    ok(format!("removed {removed} expired records"))
}

pub(crate) fn check(t: &Target) -> Result<Outcome, String> {
    let report = view(t, true)?.check().map_err(|e| chain(&e))?;
    let sound = report.is_sound();
    if t.json {
        return Ok(Outcome {
            text: escape::json(&json!({
                "sound": sound,
                "records": report.records,
                "in_flight": report.in_flight,
                "completed": report.completed,
                "expired": report.expired,
                "responses": report.responses,
                "expiry_entries": report.expiry_entries,
                "problems": report.problems,
            })),
            success: sound,
        });
    }
    let mut text = table(
        &["CHECK", "VALUE"],
        vec![
            vec![
                "page checksums".to_owned(),
                if t.redis.is_some() { "-" } else { "ok" }.to_owned(),
            ],
            vec!["records".to_owned(), report.records.to_string()],
            vec!["responses".to_owned(), report.responses.to_string()],
            vec![
                "expiry entries".to_owned(),
                report.expiry_entries.to_string(),
            ],
            vec!["problems".to_owned(), report.problems.len().to_string()],
        ],
    );
    for p in &report.problems {
        text.push_str("\nproblem: ");
        text.push_str(&escape::text(p));
    }
    Ok(Outcome {
        text,
        success: sound,
    })
}

fn state(r: &RecordInfo) -> &'static str {
    match r.state {
        State::InFlight => "in_flight",
        State::Completed => "completed",
        State::OutcomeUnknown => "outcome_unknown",
    }
}

fn record_json(r: &RecordInfo) -> Value {
    json!({
        "scope": r.scope,
        "key": r.key,
        "state": state(r),
        "fingerprint": r.fingerprint.to_string(),
        "token": r.token,
        "created_at": time(r.created_at),
        "expires_at": time(r.expires_at),
        "lease_deadline": r.lease_deadline.map(time),
        "recovery_point": r.recovery_point.as_ref().map(|p| json!({
            "name": p.name(),
            "payload": String::from_utf8_lossy(p.payload()),
        })),
        "response": r.response.as_ref().map(|x| json!({
            "status": x.status(),
            "headers": x.headers().iter().map(|(n, v)| json!([n, String::from_utf8_lossy(v)])).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(x.body()),
        })),
    })
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2026-05-20T15:00:00.000Z`).
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(time(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
