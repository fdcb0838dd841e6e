//! What an operator does to many records at once: purge those a query selects (or say which it
//! would), export every live record as JSON Lines, import an export, and the counts of
//! `stats` and `check`.
//!
//! Why: the admin interface and the command line on a file must do these the same way, so they
//! are functions of a store, not of a transport. Invariants: a dry run changes nothing; an
//! import creates records only through `begin` and `complete`, as a service would (so every
//! rule holds for them), never overwrites a record that exists, and reads its whole input
//! before it changes anything, refusing it all at its first bad line.

use std::io::BufRead;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{CachePolicy, Terms};
use crate::error::{ImportError, Unavailable};
use crate::rules::key::{Key, Scope};
use crate::rules::state::State;
use crate::stats::Stats;
use crate::store::{Begin, Store};
use crate::view::{CheckReport, RecordInfo};

use super::json::{Exported, parse_exported, record_json, state_name, token_text};
use super::query::{ListQuery, Listing};

/// What [`purge_matching`] removed, or would remove.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Nothing was removed: `records` is what a purge would remove.
    pub dry_run: bool,
    /// The records the query selected.
    pub records: Vec<RecordInfo>,
    /// How many were removed (0 in a dry run; fewer than selected when some went meanwhile).
    pub purged: u64,
    /// More records matched than the query's limit let through (purge again).
    pub truncated: bool,
}

impl PurgeReport {
    /// The report of a dry run over `listing`: the records a purge would remove, none
    /// removed. A caller that only looks (`idemstore purge --dry-run` on a file, through the
    /// read-only [`Inspector`](crate::Inspector)) makes its listing itself and never opens
    /// the store for writing.
    pub fn dry_run(listing: Listing) -> PurgeReport {
        PurgeReport {
            dry_run: true,
            records: listing.records,
            purged: 0,
            truncated: listing.truncated,
        }
    }

    /// As the admin interface and `idemstore purge --json` give it: `dry_run`, `matched`,
    /// `purged`, `truncated`, and `records` (`scope`, `key`, `state`, `token`,
    /// `token_readable`, `created_at` of each).
    pub fn to_json(&self) -> Value {
        json!({
            "dry_run": self.dry_run,
            "matched": self.records.len(),
            "purged": self.purged,
            "truncated": self.truncated,
            "records": self.records.iter().map(|r| json!({
                "scope": r.scope,
                "key": r.key,
                "state": state_name(r.state),
                "token": r.token,
                "token_readable": token_text(r.token),
                "created_at": super::json::rfc3339(r.created_at),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Purges every live record `query` selects, up to its limit, or with `dry_run` only says
/// which it would. The selection is made first and each record is then purged by its scope
/// and key, whatever its state by then: a record selected as in flight that completes in
/// between is purged all the same.
pub fn purge_matching(
    store: &Store,
    query: &ListQuery,
    dry_run: bool,
) -> Result<PurgeReport, Unavailable> {
    let now = store.config().clock.now_millis();
    let listing = query.run(now, |s, st, n| store.records_in_state(s, st, n))?;
    if dry_run {
        return Ok(PurgeReport::dry_run(listing));
    }
    let mut purged = 0;
    for r in &listing.records {
        // A stored scope and key were valid when they were stored.
        let (Ok(scope), Ok(key)) = (Scope::new(&r.scope), Key::with_max_len(&r.key, usize::MAX))
        else {
            continue;
        };
        if store.purge(&scope, &key)? {
            purged += 1;
        }
    }
    Ok(PurgeReport {
        dry_run: false,
        records: listing.records,
        purged,
        truncated: listing.truncated,
    })
}

/// `records` as JSON Lines, one [`record_json`] object a line, in the
/// store's order.
pub fn export_lines(records: &[RecordInfo]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&record_json(r).to_string());
        out.push('\n');
    }
    out
}

/// What [`import`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Completed records created.
    pub imported: u64,
    /// Records left alone because the store has a live record for their key already.
    pub existing: u64,
    /// Records in flight or whose outcome is unknown, skipped: nothing to replay.
    pub skipped_not_completed: u64,
    /// Records whose expiry had passed, skipped.
    pub skipped_expired: u64,
}

impl ImportReport {
    /// As the admin interface and `idemstore import --json` give it.
    pub fn to_json(&self) -> Value {
        json!({
            "imported": self.imported,
            "existing": self.existing,
            "skipped_not_completed": self.skipped_not_completed,
            "skipped_expired": self.skipped_expired,
        })
    }
}

/// An export read and checked whole ([`parse_import`]), ready to be imported
/// ([`import_batch`]).
///
/// Parsing is apart from importing so that a caller can refuse a bad input before it opens,
/// or creates, a store: `idemstore import` into a file that does not exist creates it only for
/// an input that parses.
#[derive(Debug)]
pub struct ImportBatch {
    /// Each record with its line's number (from 1) and its checked scope and key.
    records: Vec<(usize, Scope, Key, Exported)>,
}

impl ImportBatch {
    /// How many records the input holds (empty lines aside).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the input holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Reads and checks a whole export: every line must be an exported record whose scope is
/// valid and whose key is at most `max_key_len` bytes. The first line that is not refuses it
/// all ([`ImportError::Line`]); empty lines are ignored. Nothing is changed anywhere.
pub fn parse_import(input: impl BufRead, max_key_len: usize) -> Result<ImportBatch, ImportError> {
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(ImportError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ImportError::Line {
            line: i + 1,
            reason,
        };
        let r = parse_exported(&line).map_err(bad)?;
        let scope = Scope::new(&r.scope).map_err(|e| bad(format!("bad scope: {e}")))?;
        let key =
            Key::with_max_len(&r.key, max_key_len).map_err(|e| bad(format!("bad key: {e}")))?;
        records.push((i + 1, scope, key, r));
    }
    Ok(ImportBatch { records })
}

/// Imports an export ([`export_lines`]): [`parse_import`] with the store's `max_key_len`,
/// then [`import_batch`].
///
/// The whole input is read and checked first: a line that is not an exported record refuses
/// the import, with nothing changed. A store error stops it at that line; the lines before it
/// are imported, and importing the same input again imports the rest.
pub fn import(store: &Store, input: impl BufRead) -> Result<ImportReport, ImportError> {
    import_batch(store, parse_import(input, store.config().max_key_len)?)
}

/// Imports a checked export: each completed record is created through `begin_with` and
/// `complete`, with its fingerprint and its response, under [`Terms`](crate::Terms) that keep
/// any status (the store's cache policy does not apply) for the time the record had left, so
/// that a retry of it replays until the moment it would have expired (at least 1 s from the
/// import). Its `created_at` and token are the import's. A record in flight in the store whose
/// lease has run out and whose fingerprint matches is taken over (C8) and completed with the
/// exported response, which is that request's own answer. Records in flight or whose outcome
/// is unknown are skipped (counted: nothing can be replayed for them), as are records already
/// expired and keys that have a live record in the store already (counted, left alone).
///
/// A key longer than this store's `max_key_len` (the batch was checked against another
/// limit) refuses the whole batch before anything is changed. A store error stops it at that
/// line; the lines before it are imported, and importing the same input again imports the
/// rest.
pub fn import_batch(store: &Store, batch: ImportBatch) -> Result<ImportReport, ImportError> {
    for (line, _, key, _) in &batch.records {
        store.key(key.as_str()).map_err(|e| ImportError::Line {
            line: *line,
            reason: format!("bad key: {e}"),
        })?;
    }
    let now = store.config().clock.now_millis();
    let mut report = ImportReport::default();
    for (line, scope, key, r) in batch.records {
        let response = match (r.state, r.response) {
            (State::Completed, Some(response)) => response,
            _ => {
                report.skipped_not_completed += 1;
                continue;
            }
        };
        if r.expires_at <= now {
            report.skipped_expired += 1;
            continue;
        }
        let terms = kept_for(store, r.expires_at - now);
        match store
            .begin_with(&scope, &key, &r.fingerprint, terms)
            .map_err(|source| ImportError::Begin { line, source })?
        {
            Begin::Execute(reservation) => {
                reservation
                    .complete(response)
                    .map_err(|source| ImportError::Complete { line, source })?;
                report.imported += 1;
            }
            _ => report.existing += 1,
        }
    }
    Ok(report)
}

/// The terms of an imported record: every status kept, for the `left_ms` it had left (within
/// the range a time to live may take).
fn kept_for(store: &Store, left_ms: u64) -> Terms {
    let terms = store
        .config()
        .terms()
        .with_cache_policy(CachePolicy::AllIncludingTransient);
    let left = Duration::from_millis(left_ms)
        .clamp(Duration::from_secs(1), Duration::from_secs(366 * 86_400));
    terms.with_ttl(left).unwrap_or(terms)
}

/// The counts `idemstore stats --json` gives: `records`, `live`, `in_flight`, `completed`,
/// `expired_not_removed`, `response_bytes`, and with a running store's counters, `counters`
/// ([`Stats`] as a map).
pub fn stats_json(report: &CheckReport, counters: Option<&Stats>) -> Value {
    let mut v = json!({
        "records": report.records,
        "live": report.records.saturating_sub(report.expired),
        "in_flight": report.in_flight,
        "completed": report.completed,
        "expired_not_removed": report.expired,
        "response_bytes": report.response_bytes,
    });
    if let (Some(c), Some(o)) = (counters, v.as_object_mut()) {
        o.insert(
            "counters".into(),
            serde_json::to_value(c).unwrap_or(Value::Null),
        );
    }
    v
}

/// The report `idemstore check --json` gives.
pub fn check_json(report: &CheckReport) -> Value {
    json!({
        "sound": report.is_sound(),
        "records": report.records,
        "in_flight": report.in_flight,
        "completed": report.completed,
        "expired": report.expired,
        "responses": report.responses,
        "expiry_entries": report.expiry_entries,
        "problems": report.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::rules::fingerprint::Fingerprint;
    use crate::rules::response::Response;
    use crate::store::Begin;

    fn execute(b: Begin) -> crate::store::Reservation {
        match b {
            Begin::Execute(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn o8_purge_matching_dry_run_changes_nothing_then_purges_what_it_listed() {
        let store = Store::in_memory(Config::default()).unwrap();
        let a = Scope::new("a").unwrap();
        let fp = Fingerprint::of_bytes(b"x");
        for k in ["k1", "k2", "k3"] {
            let r = execute(store.begin(&a, &Key::new(k).unwrap(), &fp).unwrap());
            if k != "k3" {
                r.complete(Response::without_headers(201, k)).unwrap();
            } else {
                r.abandon();
            }
        }
        let q = ListQuery {
            state: Some(State::Completed),
            ..ListQuery::default()
        };
        let dry = purge_matching(&store, &q, true).unwrap();
        assert_eq!((dry.records.len(), dry.purged), (2, 0));
        assert_eq!(store.records(None, 10).unwrap().len(), 3);
        let done = purge_matching(&store, &q, false).unwrap();
        assert_eq!((done.records.len(), done.purged), (2, 2));
        let left = store.records(None, 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key, "k3");
        assert_eq!(done.to_json()["matched"], 2);
    }

    #[test]
    fn o9_import_recreates_completed_records_and_skips_the_rest() {
        let from = Store::in_memory(Config::default()).unwrap();
        let a = Scope::new("a").unwrap();
        let fp = Fingerprint::of_bytes(b"x");
        // A 500 the default cache policy would not keep: an import keeps it all the same.
        let all = from
            .config()
            .terms()
            .with_cache_policy(CachePolicy::AllIncludingTransient);
        let r = execute(
            from.begin_with(&a, &Key::new("k1").unwrap(), &fp, all)
                .unwrap(),
        );
        r.complete(Response::new(500, [("x", &b"\xff"[..])], b"\xfe".to_vec()))
            .unwrap();
        execute(from.begin(&a, &Key::new("k2").unwrap(), &fp).unwrap()).abandon();
        let lines = export_lines(&from.records(None, 10).unwrap());

        let to = Store::in_memory(Config::default()).unwrap();
        let report = import(&to, lines.as_bytes()).unwrap();
        assert_eq!((report.imported, report.skipped_not_completed), (1, 1));
        match to.begin(&a, &Key::new("k1").unwrap(), &fp).unwrap() {
            Begin::Replay(r) => {
                assert_eq!((r.status(), r.body()), (500, &b"\xfe"[..]));
                assert_eq!(r.headers()[0].1, b"\xff");
            }
            other => panic!("{other:?}"),
        }
        let again = import(&to, lines.as_bytes()).unwrap();
        assert_eq!((again.imported, again.existing), (0, 1));

        let bad = format!("{lines}not json\n");
        let fresh = Store::in_memory(Config::default()).unwrap();
        assert!(matches!(
            import(&fresh, bad.as_bytes()),
            Err(ImportError::Line { line: 3, .. })
        ));
        assert!(
            fresh.records(None, 10).unwrap().is_empty(),
            "nothing imported"
        );
    }
}
