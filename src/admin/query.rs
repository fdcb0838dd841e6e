//! Which records an operator lists or purges: [`ListQuery`], its filters, its order and its
//! limit, and the query string that carries it to the admin interface.
//!
//! Why: `idemstore list` on a file, on a Redis server and through the admin interface must
//! select the same records the same way, so the selection is one function over whatever lists
//! records. Invariants: a listing says when it stopped at its limit ([`Listing::truncated`]);
//! without an age filter or an order, at most `limit + 1` records are read (the store's own
//! order, by key hash, needs no more); with either, every record that passes the scope and
//! state filters is read, then filtered, sorted and cut.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Unavailable;
use crate::rules::key::Scope;
use crate::rules::state::State;
use crate::view::RecordInfo;

/// The order of a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sort {
    /// The store's own order (by key hash): the cheapest, the default.
    #[default]
    Store,
    /// Oldest first, by creation time (when the key was reserved).
    Oldest,
    /// Newest first, by creation time.
    Newest,
    /// The soonest to expire first.
    Expiring,
    /// By scope, then key.
    Scope,
}

impl Sort {
    /// The name the command line and the query string give it: `store`, `oldest`, `newest`,
    /// `expiring`, `scope`.
    pub fn name(self) -> &'static str {
        match self {
            Sort::Store => "store",
            Sort::Oldest => "oldest",
            Sort::Newest => "newest",
            Sort::Expiring => "expiring",
            Sort::Scope => "scope",
        }
    }
}

impl FromStr for Sort {
    type Err = String;

    fn from_str(s: &str) -> Result<Sort, String> {
        [
            Sort::Store,
            Sort::Oldest,
            Sort::Newest,
            Sort::Expiring,
            Sort::Scope,
        ]
        .into_iter()
        .find(|o| o.name() == s)
        .ok_or_else(|| format!("unknown order \"{s}\" (store, oldest, newest, expiring, scope)"))
    }
}

impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which live records to list (or purge), in which order, and how many at most.
///
/// ```
/// use std::time::Duration;
/// use idemstore::admin::{ListQuery, Sort};
/// use idemstore::State;
/// let mut q = ListQuery::default();
/// q.state = Some(State::InFlight);
/// q.older_than = Some(Duration::from_secs(600));
/// q.sort = Sort::Oldest;
/// q.limit = 20;
/// assert_eq!(q.to_query_string(), "state=in_flight&older_than_ms=600000&sort=oldest&limit=20");
/// assert_eq!(ListQuery::from_query_string(&q.to_query_string())?, q);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListQuery {
    /// Only this scope's records.
    pub scope: Option<Scope>,
    /// Only the records in this state.
    pub state: Option<State>,
    /// Only the records created at least this long ago: their key was reserved (by the
    /// attempt that holds it now, or that completed it) that long before the listing.
    pub older_than: Option<Duration>,
    /// The order.
    pub sort: Sort,
    /// At most this many records (100 by default).
    pub limit: usize,
}

impl Default for ListQuery {
    fn default() -> ListQuery {
        ListQuery {
            scope: None,
            state: None,
            older_than: None,
            sort: Sort::Store,
            limit: 100,
        }
    }
}

/// What a [`ListQuery`] selected.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Listing {
    /// The records, in the query's order, at most its limit.
    pub records: Vec<RecordInfo>,
    /// More records matched than the limit let through.
    pub truncated: bool,
}

impl ListQuery {
    /// Whether `record` passes the filters at `now` (ms since the Unix epoch).
    pub fn matches(&self, record: &RecordInfo, now: u64) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|s| s.as_str() == record.scope)
            && self.state.is_none_or(|s| s == record.state)
            && self.older_than.is_none_or(|age| {
                let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                now.saturating_sub(record.created_at) >= age
            })
    }

    /// Runs the query at `now` over `fetch`, which lists the live records of a scope and a
    /// state (each if given), at most a number of them, in the store's order:
    /// `Store::records_in_state` or `Inspector::records_in_state`.
    pub fn run(
        &self,
        now: u64,
        fetch: impl FnOnce(Option<&Scope>, Option<State>, usize) -> Result<Vec<RecordInfo>, Unavailable>,
    ) -> Result<Listing, Unavailable> {
        let cheap = self.older_than.is_none() && self.sort == Sort::Store;
        let wanted = if cheap {
            self.limit.saturating_add(1)
        } else {
            usize::MAX
        };
        let mut records = fetch(self.scope.as_ref(), self.state, wanted)?;
        records.retain(|r| self.matches(r, now));
        match self.sort {
            Sort::Store => {}
            Sort::Oldest => records.sort_by_key(|r| r.created_at),
            Sort::Newest => records.sort_by_key(|r| std::cmp::Reverse(r.created_at)),
            Sort::Expiring => records.sort_by_key(|r| r.expires_at),
            Sort::Scope => records.sort_by(|a, b| (&a.scope, &a.key).cmp(&(&b.scope, &b.key))),
        }
        let truncated = records.len() > self.limit;
        records.truncate(self.limit);
        Ok(Listing { records, truncated })
    }

    /// The query as the admin interface reads it: `scope`, `state` (`in_flight`,
    /// `completed`, `outcome_unknown`), `older_than_ms`, `sort` and `limit`, each only when
    /// it differs from the default but `limit`, percent-encoded.
    pub fn to_query_string(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &self.scope {
            pairs.push(("scope", s.as_str().to_owned()));
        }
        if let Some(s) = self.state {
            pairs.push(("state", super::json::state_name(s).to_owned()));
        }
        if let Some(age) = self.older_than {
            pairs.push(("older_than_ms", age.as_millis().to_string()));
        }
        if self.sort != Sort::Store {
            pairs.push(("sort", self.sort.name().to_owned()));
        }
        pairs.push(("limit", self.limit.to_string()));
        encode_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// Reads a query string as [`to_query_string`](ListQuery::to_query_string) writes it;
    /// parameters it does not know are left to the caller (the admin interface reads
    /// `dry_run` from the same string).
    pub fn from_query_string(query: &str) -> Result<ListQuery, String> {
        let mut q = ListQuery::default();
        for (name, value) in decode_pairs(query)? {
            match name.as_str() {
                "scope" => {
                    q.scope = Some(Scope::new(&value).map_err(|e| format!("bad scope: {e}"))?)
                }
                "state" => q.state = Some(parse_state(&value)?),
                "older_than_ms" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| format!("bad older_than_ms \"{value}\""))?;
                    q.older_than = Some(Duration::from_millis(ms));
                }
                "sort" => q.sort = value.parse()?,
                "limit" => {
                    q.limit = value
                        .parse()
                        .map_err(|_| format!("bad limit \"{value}\""))?;
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// A state by its JSON name.
pub(crate) fn parse_state(s: &str) -> Result<State, String> {
    match s {
        "in_flight" => Ok(State::InFlight),
        "completed" => Ok(State::Completed),
        "outcome_unknown" => Ok(State::OutcomeUnknown),
        _ => Err(format!(
            "unknown state \"{s}\" (in_flight, completed, outcome_unknown)"
        )),
    }
}

/// The query string naming one record: `scope=…&key=…`, percent-encoded, for the admin
/// interface's `record`, `purge` and `release`.
///
/// ```
/// assert_eq!(idemstore::admin::record_query("acct 1", "k/1"), "scope=acct%201&key=k%2F1");
/// ```
pub fn record_query(scope: &str, key: &str) -> String {
    encode_pairs([("scope", scope), ("key", key)])
}

/// `name=value` pairs joined by `&`, every byte but the unreserved ones percent-encoded.
pub(crate) fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The pairs of a query string, percent-decoded (`+` is a space); a bad escape or text that
/// is not UTF-8 is an error.
pub(crate) fn decode_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let byte = s
                    .get(i + 1..i + 3)
                    .and_then(super::json::hex_byte)
                    .ok_or_else(|| format!("a bad escape in \"{s}\""))?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("\"{s}\" is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::fingerprint::Fingerprint;

    fn record(
        scope: &str,
        key: &str,
        state: State,
        created_at: u64,
        expires_at: u64,
    ) -> RecordInfo {
        RecordInfo {
            scope: scope.into(),
            key: key.into(),
            state,
            fingerprint: Fingerprint::of_bytes(b"x"),
            created_at,
            lease_deadline: None,
            expires_at,
            token: 1,
            response: None,
            recovery_point: None,
        }
    }

    fn keys(l: &Listing) -> Vec<&str> {
        l.records.iter().map(|r| r.key.as_str()).collect()
    }

    fn all() -> Vec<RecordInfo> {
        vec![
            record("b", "k1", State::Completed, 100, 900),
            record("a", "k2", State::InFlight, 300, 500),
            record("a", "k3", State::Completed, 200, 700),
            record("c", "k4", State::OutcomeUnknown, 400, 600),
        ]
    }

    /// A source that filters by scope and state and cuts at the limit, as the store does.
    fn source(
        scope: Option<&Scope>,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, Unavailable> {
        let mut v: Vec<RecordInfo> = all()
            .into_iter()
            .filter(|r| scope.is_none_or(|s| s.as_str() == r.scope))
            .filter(|r| state.is_none_or(|s| s == r.state))
            .collect();
        v.truncate(limit);
        Ok(v)
    }

    #[test]
    fn o6_filters_sorts_and_says_when_truncated() {
        let run = |q: &ListQuery| q.run(1000, source).unwrap();
        let mut q = ListQuery::default();
        let l = run(&q);
        assert_eq!(
            (keys(&l), l.truncated),
            (vec!["k1", "k2", "k3", "k4"], false)
        );
        q.limit = 3;
        let l = run(&q);
        assert_eq!((keys(&l), l.truncated), (vec!["k1", "k2", "k3"], true));
        q.limit = 4;
        assert!(!run(&q).truncated, "exactly the limit is not truncated");

        let mut q = ListQuery {
            sort: Sort::Oldest,
            ..ListQuery::default()
        };
        assert_eq!(keys(&run(&q)), ["k1", "k3", "k2", "k4"]);
        q.sort = Sort::Newest;
        assert_eq!(keys(&run(&q)), ["k4", "k2", "k3", "k1"]);
        q.sort = Sort::Expiring;
        assert_eq!(keys(&run(&q)), ["k2", "k4", "k3", "k1"]);
        q.sort = Sort::Scope;
        assert_eq!(keys(&run(&q)), ["k2", "k3", "k1", "k4"]);

        // Age: created at least 750 ms before now (1000): k1 (100) and k3 (200).
        q.older_than = Some(Duration::from_millis(750));
        q.sort = Sort::Oldest;
        q.limit = 1;
        let l = run(&q);
        assert_eq!((keys(&l), l.truncated), (vec!["k1"], true));
        q.limit = 10;
        q.older_than = Some(Duration::from_millis(800));
        assert_eq!(keys(&run(&q)), ["k1", "k3"], "800 ms ago exactly counts");
        q.older_than = Some(Duration::from_millis(801));
        assert_eq!(keys(&run(&q)), ["k1"]);

        let q = ListQuery {
            scope: Some(Scope::new("a").unwrap()),
            state: Some(State::Completed),
            ..ListQuery::default()
        };
        assert_eq!(keys(&run(&q)), ["k3"]);
    }

    #[test]
    fn o6_queries_travel_as_query_strings() {
        let q = ListQuery {
            scope: Some(Scope::new("acct &=%+é").unwrap()),
            state: Some(State::OutcomeUnknown),
            older_than: Some(Duration::from_secs(90)),
            sort: Sort::Expiring,
            limit: 7,
        };
        let s = q.to_query_string();
        assert!(!s.contains(' ') && !s.contains('é'), "{s}");
        assert_eq!(ListQuery::from_query_string(&s).unwrap(), q);
        assert_eq!(
            ListQuery::from_query_string("").unwrap(),
            ListQuery::default()
        );
        assert!(ListQuery::from_query_string("sort=sideways").is_err());
        assert!(ListQuery::from_query_string("state=done").is_err());
        assert!(ListQuery::from_query_string("scope=%zz").is_err());
        assert!(ListQuery::from_query_string("scope=%ff").is_err());
        assert!(
            decode_pairs("scope=%+A").is_err(),
            "two hex digits, no sign"
        );
        assert_eq!(
            decode_pairs("a=b+c&dry_run").unwrap(),
            [
                ("a".into(), "b c".into()),
                ("dry_run".into(), String::new())
            ]
        );
    }
}
