//! Walks over every record of the store (and every scope's count), for `list` and `check`:
//! `SCAN` page by page on a lane's connection.
//!
//! Why: a walk takes many round trips, so it runs as one exclusive job between two batches of
//! calls instead of holding callers' replies behind it call by call. Invariant: every record
//! key of the prefix present for the whole walk is visited at least once (`SCAN`'s guarantee,
//! on every primary of a Cluster); a record changed during the walk may be seen before or
//! after the change, and one moved by a reshard meanwhile may be seen twice.

use std::time::{Duration, Instant};

use ::redis::Value;

use crate::error::Unavailable;

use super::decode::unavailable;
use super::io::Target;
use super::link::{Link, slot_of};
use super::record::{self, Fields, Names, number, words};

/// Record keys asked of `SCAN` a round trip.
const SCAN_COUNT: usize = 512;

/// What a walk needs of the engine, owned so that it can move to the I/O thread.
pub(crate) struct Scan {
    names: Names,
    /// The deciding time as the scripts take it (empty: the server's).
    now: String,
    timeout: Duration,
}

impl Scan {
    pub(crate) fn new(names: Names, now: String, timeout: Duration) -> Scan {
        Scan {
            names,
            now,
            timeout,
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The deciding time now: the store's clock as sent, or the server's.
    pub(crate) fn now(&self, link: &mut Link) -> Result<u64, Unavailable> {
        if !self.now.is_empty() {
            return number("clock", self.now.as_bytes());
        }
        let first = link.primaries().first().copied().unwrap_or(0);
        let v = link
            .query(Target::Node(first), &::redis::cmd("TIME"), self.deadline())
            .map_err(unavailable)?;
        let w = words("TIME", v)?;
        match w.as_slice() {
            [secs, micros] => Ok(number("TIME", secs)? * 1000 + number("TIME", micros)? / 1000),
            _ => Err(Unavailable::Corrupted {
                detail: "TIME answered other than two numbers".into(),
            }),
        }
    }

    /// The fields of the hash at `key` (none if it is absent).
    pub(crate) fn fields(&self, link: &mut Link, key: &str) -> Result<Fields, Unavailable> {
        let mut hgetall = ::redis::cmd("HGETALL");
        hgetall.arg(key);
        let target = Target::Slot(slot_of(key.as_bytes()));
        let v = link
            .query(target, &hgetall, self.deadline())
            .map_err(unavailable)?;
        Fields::of("HGETALL", v)
    }

    /// The count key of `scope` in the scope layout (`None` in the layout by key).
    pub(crate) fn scope_count(&self, scope: &crate::rules::key::Scope) -> Option<String> {
        self.names.scope_count(scope)
    }

    /// The members of the count at `key` scored past `now`: the key tags of the scope's live
    /// records, as the scripts keep them.
    pub(crate) fn counted(
        &self,
        link: &mut Link,
        key: &str,
        now: u64,
    ) -> Result<Vec<Vec<u8>>, Unavailable> {
        let mut range = ::redis::cmd("ZRANGEBYSCORE");
        range.arg(key).arg(format!("({now}")).arg("+inf");
        let target = Target::Slot(slot_of(key.as_bytes()));
        let v = link
            .query(target, &range, self.deadline())
            .map_err(unavailable)?;
        words("ZRANGEBYSCORE", v)
    }

    /// Every record hash of the store, node by node and page by page: `each` gets the key
    /// and its fields, or the error reading them gave (another program's key under the prefix).
    pub(crate) fn walk(
        &self,
        link: &mut Link,
        mut each: impl FnMut(&str, Result<Fields, Unavailable>) -> Result<(), Unavailable>,
    ) -> Result<(), Unavailable> {
        self.keys(link, &self.names.records_pattern(), |link, key| {
            // A key that does not read as a hash is `each`'s to judge.
            let fields = self.fields(link, key);
            each(key, fields)
        })
    }

    /// Every scope's count key (the scope layout), node by node.
    pub(crate) fn counts(
        &self,
        link: &mut Link,
        mut each: impl FnMut(&str) -> Result<(), Unavailable>,
    ) -> Result<(), Unavailable> {
        self.keys(link, &self.names.counts_pattern(), |_, key| each(key))
    }

    /// Every key matching `pattern`, node by node and page by page.
    fn keys(
        &self,
        link: &mut Link,
        pattern: &str,
        mut each: impl FnMut(&mut Link, &str) -> Result<(), Unavailable>,
    ) -> Result<(), Unavailable> {
        for node in link.primaries() {
            let mut cursor = 0u64;
            loop {
                let mut scan = ::redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let v = link
                    .query(Target::Node(node), &scan, self.deadline())
                    .map_err(unavailable)?;
                let Value::Array(mut parts) = v else {
                    return Err(record::malformed("SCAN", &v));
                };
                let (Some(keys), Some(next)) = (parts.pop(), parts.pop()) else {
                    return Err(Unavailable::Corrupted {
                        detail: "SCAN answered other than a cursor and keys".into(),
                    });
                };
                let next = words("SCAN", Value::Array(vec![next]))?;
                cursor = number("SCAN cursor", next.first().map_or(&[][..], Vec::as_slice))?;
                for key in words("SCAN", keys)? {
                    each(link, &String::from_utf8_lossy(&key))?;
                }
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(())
    }
}
