//! The operator subcommands: `stats`, `list`, `get`, `purge`, `release`, `export`, `import`,
//! `compact`, `check`.
//!
//! Why: an operator needs to see and fix a store without writing code, on a file, on a Redis
//! server, or while a service holds it (through the service's admin interface, `--admin`).
//! Invariants: the commands that only look (`stats`, `list`, `get`, `export`, `check`) go
//! through the library's read-only [`Inspector`] on a file, so they never create, migrate or
//! write the file or its log, and work on a file they may not write (with `--redis`, through a
//! store opened with `RedisOptions::read_only`, which writes nothing to the server); so does
//! `purge --dry-run`, which only looks too. Only the commands that change the store (`purge`,
//! `release`, `import`, `compact`) open it as a [`Store`]. A missing or empty file is never
//! made a store (an error), except by `import`, whose purpose is to fill a store. A damaged or foreign one gives a one-line error and a non-zero exit,
//! never a panic. The selection of records and their JSON are the library's
//! (`idemstore::admin`), whatever the target, so `--admin`, `--redis` and a file print the
//! same shapes. Everything printed that came from the store (scopes, keys, headers, bodies,
//! problems) goes through `escape`, so no byte of it can drive the terminal. `--json` prints
//! one JSON document on stdout; the human form is an aligned table; a note (a listing cut at
//! its limit) goes to stderr.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use idemstore::admin::{self, ListQuery, Sort};
use idemstore::{
    CheckReport, Clock, Config, Inspector, Key, RecordInfo, RedisOptions, Scope, State, Store,
    SystemClock, Unavailable,
};
use serde_json::{Value, json};

use crate::escape;
use crate::redact::{self, redact};
use crate::remote::{self, Address, Admin, Reply};

/// The longest key a store may be configured for (`ConfigBuilder::max_key_len`'s range): the
/// operator commands take every key a store can hold (`get`, `purge`, `release`, `import`),
/// whatever limit its service was configured with.
const MAX_KEY_LEN: usize = 4096;

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
    /// The admin interface of a running service (`HOST:PORT` or `unix:PATH`, what
    /// `idemstore serve --admin` serves), instead of a file (`--db` is then unused).
    #[arg(long, value_name = "ADDR", conflicts_with = "redis")]
    pub(crate) admin: Option<String>,
    /// With `--admin`: how long one exchange with the interface may take, in seconds
    /// (default 60, and 600 for `export` and `import`).
    #[arg(long, value_name = "N", requires = "admin")]
    #[arg(value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub(crate) timeout_secs: Option<u64>,
    /// With `--redis`: the prefix of the store's keys on the server.
    #[arg(long, default_value = "idem:")]
    pub(crate) prefix: String,
    /// With `--redis`, for the commands that change the store: do not read the server's
    /// settings (managed services that hide `CONFIG`).
    #[arg(long, requires = "redis")]
    pub(crate) trust_server_settings: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

impl Target {
    /// The admin interface, if the target is one.
    fn admin(&self) -> Result<Option<Admin>, String> {
        let Some(addr) = self.admin.as_deref() else {
            return Ok(None);
        };
        Ok(Some(Admin {
            addr: Address::parse(addr)?,
            timeout: self.timeout_secs.map(Duration::from_secs),
        }))
    }
}

/// What a subcommand prints, and whether it found what it was asked for.
pub(crate) struct Outcome {
    pub(crate) text: String,
    pub(crate) success: bool,
    /// A line for stderr after the output (a listing cut at its limit).
    pub(crate) note: Option<String>,
}

fn ok(text: String) -> Result<Outcome, String> {
    Ok(Outcome {
        text,
        success: true,
        note: None,
    })
}

/// The file, or the error a missing one gives (nothing is ever created). A path that is not
/// a regular file (a FIFO, a device), the store's or its log's, is refused by the library when
/// it opens it, without blocking. Errors are escaped where they are printed (`main::fail`).
fn existing(path: &Path) -> Result<(), String> {
    if path.exists() {
        Ok(())
    } else {
        Err(format!("no store file at {}", path.display()))
    }
}

/// Opens an existing store to change it (`purge`, `release`, `compact`); `import` may create
/// the file (`create`), with records living `ttl`.
fn open_with(t: &Target, create: bool) -> Result<Store, String> {
    let config = Config::builder()
        // No background compaction while an operator works, and reservations other than
        // the one changed stay as found: the tool changes only what it is asked to.
        .compactor_interval(Duration::from_secs(3600))
        .release_in_flight_on_open(false)
        // The longest key any store may hold: the tool acts on every record it can list.
        .max_key_len(MAX_KEY_LEN)
        .build()
        .map_err(|e| e.to_string())?;
    if let Some(url) = &t.redis {
        // Made sure first that the store exists there: a purge never creates one.
        if !create {
            drop(look_on_redis(t, url)?);
        }
        let mut options = RedisOptions::new(url.as_str()).prefix(t.prefix.as_str());
        if t.trust_server_settings {
            options = options.trust_server_settings();
        }
        return Store::open_redis_with(options, config).map_err(|e| on_redis(url, &e));
    }
    let path = &t.db;
    if !create {
        existing(path)?;
        // `Store::open` makes a new store of an empty file; only `import` (`create`) may make
        // one, so the commands that change a store refuse it as the looking ones do.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(format!(
                "cannot open {}: the file is not an idemstore database: the file is empty",
                path.display()
            ));
        }
    }
    Store::open(path, config).map_err(|e| format!("cannot open {}: {}", path.display(), chain(&e)))
}

fn open(t: &Target) -> Result<Store, String> {
    open_with(t, false)
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
    Store::open_redis_with(options, Config::default()).map_err(|e| on_redis(url, &e))
}

/// The error line of a store on Redis that did not open: the URL without its credentials,
/// also where the error quotes it.
fn on_redis(url: &str, e: &idemstore::OpenError) -> String {
    format!(
        "cannot open the store on {}: {}",
        redact(url),
        redact::scrub(&chain(e), url)
    )
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

/// The counts of `stats`, in the order printed: where the store is, the record counts, and
/// (from a running service) its counters.
fn stats_rows(t: &Target) -> Result<Vec<(String, Value)>, String> {
    let mut rows: Vec<(String, Value)> = Vec::new();
    let counts = if let Some(addr) = t.admin()? {
        rows.push(("admin".into(), addr.to_string().into()));
        remote::json(&addr, Method::GET, "/v1/stats", Vec::new())?
    } else {
        let view = view(t, false)?;
        let report = view.check().map_err(|e| chain(&e))?;
        match &view {
            View::File(inspector) => {
                let file_bytes = std::fs::metadata(&t.db).map(|m| m.len()).unwrap_or(0);
                rows.push(("file".into(), t.db.display().to_string().into()));
                rows.push(("file_bytes".into(), file_bytes.into()));
                rows.push((
                    "log_entries_not_checkpointed".into(),
                    inspector.log_entries().into(),
                ));
            }
            View::Redis(_) => {
                let url = t.redis.as_deref().map(redact).unwrap_or_default();
                rows.push(("server".into(), url.into()));
                rows.push(("prefix".into(), t.prefix.clone().into()));
            }
        }
        admin::stats_json(&report, None)
    };
    for name in [
        "records",
        "live",
        "in_flight",
        "completed",
        "expired_not_removed",
        "response_bytes",
    ] {
        rows.push((name.into(), counts[name].clone()));
    }
    if counts["counters"].is_object() {
        rows.push(("counters".into(), counts["counters"].clone()));
    }
    Ok(rows)
}

/// The rows of `stats` with the counters' map spread out, for a table or a line.
fn flat(rows: Vec<(String, Value)>) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(rows.len());
    for (name, v) in rows {
        match v {
            Value::Object(m) => out.extend(m),
            v => out.push((name, v)),
        }
    }
    out
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => escape::text(s),
        other => escape::text(&other.to_string()),
    }
}

pub(crate) fn stats(t: &Target) -> Result<Outcome, String> {
    let rows = stats_rows(t)?;
    if t.json {
        let m: serde_json::Map<String, Value> = rows.into_iter().collect();
        return ok(escape::json(&Value::Object(m)));
    }
    ok(table(
        &["STAT", "VALUE"],
        flat(rows)
            .iter()
            .map(|(k, v)| vec![escape::text(k), plain(v)])
            .collect(),
    ))
}

/// `stats --watch`: a line every `interval` (the first at once), `count` of them, or until
/// stopped: the time, then each count as `name=value` (`--json`: one JSON object a line).
pub(crate) fn watch(t: &Target, interval: Duration, count: Option<u64>) -> Result<Outcome, String> {
    let mut printed = 0u64;
    loop {
        let rows = stats_rows(t)?;
        let now = admin::rfc3339(SystemClock.now_millis());
        let line = if t.json {
            let mut m = serde_json::Map::new();
            m.insert("at".into(), now.into());
            m.extend(rows);
            escape::json(&Value::Object(m))
        } else {
            let counts: Vec<String> = flat(rows)
                .iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, v)| format!("{}={}", escape::text(k), plain(v)))
                .collect();
            format!("{now} {}", counts.join(" "))
        };
        let written = crate::to_stdout(format!("{line}\n").as_bytes())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
        if !written {
            // A closed stdout (`| head`): the watch is over.
            break;
        }
        printed += 1;
        if count.is_some_and(|c| printed >= c) {
            break;
        }
        std::thread::sleep(interval);
    }
    ok(String::new())
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

/// The order of `list --sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SortArg {
    /// The store's own order (by key hash); the cheapest.
    Store,
    /// Oldest first, by when the key was reserved.
    Oldest,
    /// Newest first.
    Newest,
    /// The soonest to expire first.
    Expiring,
    /// By scope, then key.
    Scope,
}

/// The filters of `list` and of a bulk `purge`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Filters {
    /// Only this scope's records.
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// Only the records in this state.
    #[arg(long, value_enum)]
    pub(crate) state: Option<StateArg>,
    /// Only the records created at least this long ago (`90s`, `15m`, `2h`, `7d`, `500ms`):
    /// their key was reserved that long ago by the attempt that holds or completed it.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub(crate) older_than: Option<Duration>,
    /// The order (anything but `store` reads every record that passes the other filters).
    #[arg(long, value_enum, default_value_t = SortArg::Store)]
    pub(crate) sort: SortArg,
}

impl Filters {
    fn query(&self, limit: usize) -> Result<ListQuery, String> {
        let mut q = ListQuery::default();
        q.scope = self
            .scope
            .as_deref()
            .map(Scope::new)
            .transpose()
            .map_err(|e| format!("bad --scope: {e}"))?;
        q.state = self.state.map(|s| match s {
            StateArg::InFlight => State::InFlight,
            StateArg::Completed => State::Completed,
            StateArg::OutcomeUnknown => State::OutcomeUnknown,
        });
        q.older_than = self.older_than;
        q.sort = match self.sort {
            SortArg::Store => Sort::Store,
            SortArg::Oldest => Sort::Oldest,
            SortArg::Newest => Sort::Newest,
            SortArg::Expiring => Sort::Expiring,
            SortArg::Scope => Sort::Scope,
        };
        q.limit = limit;
        Ok(q)
    }

    fn any(&self) -> bool {
        self.scope.is_some() || self.state.is_some() || self.older_than.is_some()
    }
}

/// An age: a number and a unit, `ms`, `s`, `m`, `h` or `d`.
pub(crate) fn parse_age(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("\"{s}\": give a number and a unit (500ms, 90s, 15m, 2h, 7d)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("\"{s}\": the unit is ms, s, m, h or d")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("\"{s}\" is too long"))
}

/// The records a query selects, as JSON, and whether there were more.
fn select(t: &Target, q: &ListQuery) -> Result<(Vec<Value>, bool), String> {
    if let Some(addr) = t.admin()? {
        let path = format!("/v1/records?{}", q.to_query_string());
        let answer = remote::json(&addr, Method::GET, &path, Vec::new())?;
        let records = answer["records"].as_array().cloned().unwrap_or_default();
        return Ok((records, answer["truncated"].as_bool().unwrap_or(false)));
    }
    let view = view(t, false)?;
    let listing = q
        .run(SystemClock.now_millis(), |s, st, n| view.records(s, st, n))
        .map_err(|e| chain(&e))?;
    Ok((
        listing.records.iter().map(admin::record_json).collect(),
        listing.truncated,
    ))
}

/// The note for a listing cut at its limit.
fn truncation_note(limit: usize) -> String {
    format!("more records match than the {limit} shown; raise --limit to see them")
}

pub(crate) fn list(t: &Target, filters: &Filters, limit: usize) -> Result<Outcome, String> {
    let q = filters.query(limit)?;
    let (records, truncated) = select(t, &q)?;
    let note = truncated.then(|| truncation_note(limit));
    if t.json {
        return Ok(Outcome {
            text: escape::json(&Value::Array(records)),
            success: true,
            note,
        });
    }
    let rows = records
        .iter()
        .map(|r| {
            vec![
                plain(&r["scope"]),
                plain(&r["key"]),
                plain(&r["state"]),
                r["response"]["status"]
                    .as_u64()
                    .map_or("-".to_owned(), |s| s.to_string()),
                plain(&r["token_readable"]),
                plain(&r["created_at"]),
                plain(&r["expires_at"]),
                lease(&r["lease_deadline"]),
            ]
        })
        .collect();
    Ok(Outcome {
        text: table(
            &[
                "SCOPE",
                "KEY",
                "STATE",
                "STATUS",
                "TOKEN",
                "CREATED",
                "EXPIRES",
                "LEASE_UNTIL",
            ],
            rows,
        ),
        success: true,
        note,
    })
}

/// A lease deadline in a table: `-` for none, `ended` for a lease let go (a released record
/// that keeps its recovery point, whose next attempt takes it over at once).
fn lease(deadline: &Value) -> String {
    match deadline.as_str() {
        None => "-".to_owned(),
        Some(d) if d == admin::rfc3339(0) => "ended".to_owned(),
        Some(d) => escape::text(d),
    }
}

fn scope_key(scope: &str, key: &str) -> Result<(Scope, Key), String> {
    let s = Scope::new(scope).map_err(|e| format!("bad --scope: {e}"))?;
    // Keys longer than the default limit are legal in stores configured for them.
    let k = Key::with_max_len(key, MAX_KEY_LEN).map_err(|e| format!("bad --key: {e}"))?;
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

/// Bytes given in hex by the library's record JSON (`body_hex`, a header's third element).
fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Text from the record JSON, with its exact bytes when they are given in hex.
fn exact(text: &Value, hex: &Value) -> Vec<u8> {
    hex.as_str()
        .and_then(unhex)
        .unwrap_or_else(|| text.as_str().unwrap_or("").as_bytes().to_vec())
}

pub(crate) fn get(t: &Target, scope: &str, key: &str) -> Result<Outcome, String> {
    let (s, k) = scope_key(scope, key)?;
    let record = if let Some(addr) = t.admin()? {
        let path = format!("/v1/record?{}", admin::record_query(scope, key));
        match remote::call(&addr, Method::GET, &path, Vec::new())? {
            Reply::Ok(bytes) => Some(serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                format!("the admin interface at {addr} answered something else than JSON: {e}")
            })?),
            // Only the admin service's own answer means no record: a 404 of another service
            // (a wrong address) is not a record's absence.
            Reply::Refused {
                status: 404, code, ..
            } if code == admin::NOT_FOUND => None,
            Reply::Refused {
                status: 404,
                code,
                message,
            } => {
                return Err(format!(
                    "the admin interface at {addr} gave an unexpected answer (404, {code}: \
                     {message}); is it an idemstore admin interface?"
                ));
            }
            Reply::Refused { message, .. } => {
                return Err(format!("the admin interface at {addr}: {message}"));
            }
        }
    } else {
        view(t, false)?
            .get(&s, &k)
            .map_err(|e| chain(&e))?
            .map(|r| admin::record_json(&r))
    };
    let Some(r) = record else {
        return Ok(Outcome {
            text: if t.json {
                "null".to_owned()
            } else {
                no_record(scope, key)
            },
            success: false,
            note: None,
        });
    };
    if t.json {
        return ok(escape::json(&r));
    }
    let field = |name: &str, v: &Value| vec![name.to_owned(), plain(v)];
    let mut rows = vec![
        field("scope", &r["scope"]),
        field("key", &r["key"]),
        field("state", &r["state"]),
        field("fingerprint", &r["fingerprint"]),
        vec![
            "token".to_owned(),
            format!("{} ({})", plain(&r["token_readable"]), plain(&r["token"])),
        ],
        field("created", &r["created_at"]),
        field("expires", &r["expires_at"]),
    ];
    if r["lease_deadline"].is_string() {
        rows.push(vec![
            "lease_deadline".to_owned(),
            lease(&r["lease_deadline"]),
        ]);
    }
    if let Some(p) = r["recovery_point"].as_object() {
        rows.push(vec![
            "recovery_point".to_owned(),
            format!(
                "{}: {}",
                plain(&p["name"]),
                p["payload"].as_str().map_or(String::new(), escape::text)
            ),
        ]);
    }
    let resp = &r["response"];
    if resp.is_object() {
        rows.push(field("status", &resp["status"]));
        for h in resp["headers"].as_array().map_or(&[][..], Vec::as_slice) {
            rows.push(vec![
                format!("header {}", plain(&h[0])),
                escape::bytes(&exact(&h[1], &h[2])),
            ]);
        }
        let body = exact(&resp["body"], &resp["body_hex"]);
        // Bytes that are not UTF-8 are shown as \xNN; say so, since the body is then not text.
        let label = if std::str::from_utf8(&body).is_ok() {
            "body"
        } else {
            "body (not UTF-8: bytes as \\xNN)"
        };
        rows.push(vec![label.to_owned(), escape::bytes(&body)]);
    }
    ok(table(&["FIELD", "VALUE"], rows))
}

pub(crate) fn purge(t: &Target, scope: &str, key: &str) -> Result<Outcome, String> {
    let (s, k) = scope_key(scope, key)?;
    let removed = if let Some(addr) = t.admin()? {
        let path = format!("/v1/purge?{}", admin::record_query(scope, key));
        let answer = remote::json(&addr, Method::POST, &path, Vec::new())?;
        answer["purged"].as_bool().unwrap_or(false)
    } else {
        let store = open(t)?;
        let removed = store.purge(&s, &k).map_err(|e| chain(&e))?;
        close(store)?;
        removed
    };
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
        note: None,
    })
}

/// `purge` without `--key`: every record the filters select (at most `limit`), or with
/// `dry_run` only the list of them.
pub(crate) fn purge_matching(
    t: &Target,
    filters: &Filters,
    limit: Option<usize>,
    dry_run: bool,
    all: bool,
) -> Result<Outcome, String> {
    if !filters.any() && !all {
        return Err(
            "a purge without --key needs a filter (--scope, --state, --older-than) or --all".into(),
        );
    }
    let q = filters.query(limit.unwrap_or(usize::MAX))?;
    let report = if let Some(addr) = t.admin()? {
        let mut path = format!("/v1/purge-matching?{}", q.to_query_string());
        if dry_run {
            path.push_str("&dry_run=true");
        }
        if all {
            path.push_str("&all=true");
        }
        remote::json(&addr, Method::POST, &path, Vec::new())?
    } else if dry_run {
        // A dry run only looks, so it reads as `list` does (the inspector on a file, a
        // read-only store on Redis): it never checkpoints, repairs, migrates or locks a file,
        // and writes nothing to a server.
        let view = view(t, false)?;
        let listing = q
            .run(SystemClock.now_millis(), |s, st, n| view.records(s, st, n))
            .map_err(|e| chain(&e))?;
        admin::PurgeReport::dry_run(listing).to_json()
    } else {
        let store = open(t)?;
        let report = admin::purge_matching(&store, &q, false).map_err(|e| chain(&e))?;
        close(store)?;
        report.to_json()
    };
    let note = (report["truncated"] == true).then(|| truncation_note(q.limit));
    if t.json {
        return Ok(Outcome {
            text: escape::json(&report),
            success: true,
            note,
        });
    }
    let records = report["records"].as_array().map_or(&[][..], Vec::as_slice);
    let mut text = table(
        &["SCOPE", "KEY", "STATE", "TOKEN", "CREATED"],
        records
            .iter()
            .map(|r| {
                ["scope", "key", "state", "token_readable", "created_at"]
                    .iter()
                    .map(|f| plain(&r[*f]))
                    .collect()
            })
            .collect(),
    );
    text.push('\n');
    if dry_run {
        text.push_str(&format!(
            "dry run: would purge {} records (nothing was changed)",
            records.len()
        ));
    } else {
        text.push_str(&format!(
            "purged {} of {} records selected",
            plain(&report["purged"]),
            records.len()
        ));
    }
    Ok(Outcome {
        text,
        success: true,
        note,
    })
}

/// `release`: frees a key in flight (or, `not_applied`, one whose outcome is unknown).
pub(crate) fn release(
    t: &Target,
    scope: &str,
    key: &str,
    not_applied: bool,
) -> Result<Outcome, String> {
    let (s, k) = scope_key(scope, key)?;
    let answer = if let Some(addr) = t.admin()? {
        let mut path = format!("/v1/release?{}", admin::record_query(scope, key));
        if not_applied {
            path.push_str("&not_applied=true");
        }
        remote::json(&addr, Method::POST, &path, Vec::new())?
    } else {
        let store = open(t)?;
        let released = if not_applied {
            store.release_unknown(&s, &k)
        } else {
            store.release_held(&s, &k)
        };
        close(store)?;
        let token = released.map_err(|e| chain(&e))?;
        json!({
            "released": true,
            "token": token,
            "token_readable": admin::token_text(token),
        })
    };
    if t.json {
        return ok(escape::json(&answer));
    }
    ok(format!(
        "released scope \"{}\", key \"{}\": reservation {} can no longer complete",
        escape::text(scope),
        escape::text(key),
        plain(&answer["token_readable"]),
    ))
}

/// The store's write-ahead log: `<file>.wal` beside the file itself, a symbolic link
/// followed (as the store and the inspector find it).
fn log_path(db: &Path) -> PathBuf {
    let mut name = std::fs::canonicalize(db)
        .unwrap_or_else(|_| db.to_path_buf())
        .into_os_string();
    name.push(".wal");
    PathBuf::from(name)
}

/// Whether `a` and `b` are one file (the same device and inode), whatever their names.
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// Writes `bytes` to `path` whole or not at all: into a new file beside it, synced, then
/// renamed over it. An export that fails half-way leaves the previous file as it was (a
/// backup is never truncated in place), and a reader never sees half an export.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| format!("cannot write {}: it names no file", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".idemstore-export-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        // Nothing of a failed export is left behind (the file may not have been created).
        let _ = std::fs::remove_file(&temp);
        return Err(cannot(e));
    }
    Ok(())
}

/// `export`: every live record as JSON Lines, on stdout or into `out` (replaced whole, and
/// never the store's own file or log).
pub(crate) fn export(t: &Target, out: Option<&Path>) -> Result<Outcome, String> {
    if let Some(path) = out
        && t.admin.is_none()
        && t.redis.is_none()
    {
        for (own, what) in [
            (t.db.clone(), "the store file"),
            (log_path(&t.db), "its write-ahead log"),
        ] {
            if same_file(path, &own) {
                return Err(format!(
                    "refusing to export onto {what} {}: --out {} is that file",
                    own.display(),
                    path.display()
                ));
            }
        }
    }
    let lines = if let Some(addr) = t.admin()? {
        match remote::call(&addr, Method::GET, "/v1/export", Vec::new())? {
            Reply::Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
                format!("the admin interface at {addr} sent an export that is not UTF-8")
            })?,
            Reply::Refused { message, .. } => {
                return Err(format!("the admin interface at {addr}: {message}"));
            }
        }
    } else {
        let records = view(t, false)?
            .records(None, None, usize::MAX)
            .map_err(|e| chain(&e))?;
        admin::export_lines(&records)
    };
    let count = lines.lines().count();
    match out {
        Some(path) => {
            write_whole(path, lines.as_bytes())?;
            if t.json {
                return ok(json!({"exported": count}).to_string());
            }
            ok(format!("exported {count} records to {}", path.display()))
        }
        None => ok(lines
            .lines()
            .map(escape::json_text)
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

/// `import`: the records of an export (from `input`, or stdin), into the target; on a file,
/// records live `ttl` (the store's default otherwise).
pub(crate) fn import(t: &Target, input: Option<&Path>) -> Result<Outcome, String> {
    let bytes = match input {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            buf
        }
    };
    let report = if let Some(addr) = t.admin()? {
        remote::json(&addr, Method::POST, "/v1/import", bytes)?
    } else {
        // The whole input is read and checked before the store is opened: an input refused
        // leaves no new store file (nor its log) behind.
        let batch = admin::parse_import(bytes.as_slice(), MAX_KEY_LEN).map_err(|e| chain(&e))?;
        let store = open_with(t, true)?;
        let report = admin::import_batch(&store, batch).map_err(|e| chain(&e));
        close(store)?;
        report?.to_json()
    };
    if t.json {
        return ok(escape::json(&report));
    }
    ok(format!(
        "imported {} records; left alone {} that exist; skipped {} not completed and {} expired",
        plain(&report["imported"]),
        plain(&report["existing"]),
        plain(&report["skipped_not_completed"]),
        plain(&report["skipped_expired"]),
    ))
}

pub(crate) fn compact(t: &Target) -> Result<Outcome, String> {
    let removed = if let Some(addr) = t.admin()? {
        remote::json(&addr, Method::POST, "/v1/compact", Vec::new())?["removed"]
            .as_u64()
            .unwrap_or(0)
    } else if t.redis.is_some() {
        // Nothing to do: the server drops each record once its TTL (expiry plus grace) ends.
        drop(view(t, false)?);
        if t.json {
            return ok(json!({"removed": 0}).to_string());
        }
        return ok("removed 0 expired records: the Redis server removes them itself".into());
    } else {
        let store = open(t)?;
        let removed = store.compact_now().map_err(|e| chain(&e))?;
        close(store)?;
        removed
    };
    if t.json {
        return ok(json!({"removed": removed}).to_string());
    }
    ok(format!("removed {removed} expired records"))
}

pub(crate) fn check(t: &Target) -> Result<Outcome, String> {
    let report = if let Some(addr) = t.admin()? {
        remote::json(&addr, Method::GET, "/v1/check", Vec::new())?
    } else {
        admin::check_json(&view(t, true)?.check().map_err(|e| chain(&e))?)
    };
    let sound = report["sound"] == true;
    if t.json {
        return Ok(Outcome {
            text: escape::json(&report),
            success: sound,
            note: None,
        });
    }
    let problems = report["problems"].as_array().map_or(&[][..], Vec::as_slice);
    let mut text = table(
        &["CHECK", "VALUE"],
        vec![
            vec![
                "page checksums".to_owned(),
                if t.redis.is_some() || t.admin.is_some() {
                    "-"
                } else {
                    "ok"
                }
                .to_owned(),
            ],
            vec!["records".to_owned(), plain(&report["records"])],
            vec!["responses".to_owned(), plain(&report["responses"])],
            vec![
                "expiry entries".to_owned(),
                plain(&report["expiry_entries"]),
            ],
            vec!["problems".to_owned(), problems.len().to_string()],
        ],
    );
    for p in problems {
        text.push_str("\nproblem: ");
        text.push_str(&plain(p));
    }
    Ok(Outcome {
        text,
        success: sound,
        note: None,
    })
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
    fn o6_ages_take_a_unit() {
        assert_eq!(parse_age("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "90", "s", "1.5h", "3w", "-1s", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
