//! Counters of what the store has done since it was opened.
//!
//! Why: operators need to see replays, conflicts, takeovers and how well group commit batches,
//! without a metrics dependency in the core. Invariant: counters only grow; a [`Stats`] value
//! is a snapshot taken with relaxed loads (each counter exact, the set not taken atomically).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of the store's counters since open. With the feature `serde`, it serialises as
/// a map of its field names to numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// `begin` calls answered `Execute` (C2, C8 takeovers included).
    pub executes: u64,
    /// `begin` calls answered `Replay` (C3).
    pub replays: u64,
    /// `begin` calls answered `Conflict` (C4).
    pub conflicts: u64,
    /// `begin` calls answered `InProgress` (C5).
    pub in_progress: u64,
    /// `begin` calls answered `OutcomeUnknown` (E6).
    pub outcome_unknown: u64,
    /// Records whose outcome was unknown, marked so at open (E6).
    pub marked_unknown: u64,
    /// Recovery points saved (P1).
    pub points_saved: u64,
    /// Of the `begin` calls, those answered from the hot index without the writer. Always 0
    /// with [`Durability::Memory`](crate::Durability::Memory), which has neither: its engine
    /// answers every call on the caller's thread.
    pub answered_from_index: u64,
    /// Completions stored.
    pub completions: u64,
    /// Reservations released: explicitly, by drop, or by a response the cache policy does not
    /// keep (C6), or at open (C11).
    pub releases: u64,
    /// Reservations taken over after their lease ran out (C8).
    pub lease_takeovers: u64,
    /// Completions and renewals refused because the reservation was fenced (C8).
    pub fenced: u64,
    /// First attempts refused because their scope held `max_records_per_scope` live records
    /// (C13).
    pub scope_full: u64,
    /// Expired records removed by the compactor (C9).
    pub expired_removed: u64,
    /// Write transactions committed by the writer (0 with `Durability::Memory`, which has no
    /// writer, like the other commit and log counters).
    pub commits: u64,
    /// Of the commits, those made durable with an fsync before their callers were answered:
    /// durable database commits, or batches acknowledged by a write-ahead log sync.
    pub durable_commits: u64,
    /// Operations carried by all commits (divide by `commits` for the mean batch size).
    pub batched_ops: u64,
    /// The largest number of operations in one commit.
    pub max_batch: u64,
    /// Total time spent in commits, in microseconds.
    pub commit_micros_total: u64,
    /// The longest commit, in microseconds.
    pub commit_micros_max: u64,
    /// Entries in the hot index now; with `Durability::Memory`, records held by its engine.
    pub index_entries: u64,
    /// Retries waiting now for a key in flight to settle (`Store::begin_waiting_async`, the
    /// HTTP layer's `Contract::wait_in_progress`).
    pub waiting: u64,
    /// Write-ahead log syncs (each acknowledges every batch appended since the one before).
    pub log_syncs: u64,
    /// Bytes appended to the write-ahead log.
    pub log_bytes: u64,
    /// Checkpoints: durable database commits that let the log space before them be reused.
    pub checkpoints: u64,
    /// Log entries replayed into the database when the store opened.
    pub log_entries_replayed: u64,
    /// Total time spent in checkpoints, in microseconds (on the checkpoint thread, beside the
    /// writer, unless the writer had to run one itself).
    pub checkpoint_micros_total: u64,
    /// The longest checkpoint, in microseconds.
    pub checkpoint_micros_max: u64,
    /// Batches whose log entry did not fit in the log's free space, so the writer waited for
    /// a checkpoint (the running one, or one of its own) before acknowledging them: each is a
    /// stall of every caller queued behind it. 0 while the log has room for what arrives
    /// during a checkpoint; see `log_capacity`.
    pub log_full_waits: u64,
    /// Live records now, whatever their state (expired ones the compactor has not removed
    /// yet included); `None` on Redis, which keeps no count.
    pub live_records: Option<u64>,
    /// Of the live records, those in flight now; `None` on Redis.
    pub in_flight_records: Option<u64>,
    /// The database file's size in bytes, for a store opened by path; `None` otherwise.
    pub file_bytes: Option<u64>,
}

impl Stats {
    /// Mean operations per commit.
    pub fn mean_batch(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.batched_ops as f64 / self.commits as f64
        }
    }

    /// Mean commit latency.
    pub fn mean_commit_latency(&self) -> Duration {
        Duration::from_micros(
            self.commit_micros_total
                .checked_div(self.commits)
                .unwrap_or(0),
        )
    }

    /// Longest checkpoint.
    pub fn max_checkpoint_duration(&self) -> Duration {
        Duration::from_micros(self.checkpoint_micros_max)
    }

    /// Longest commit latency.
    pub fn max_commit_latency(&self) -> Duration {
        Duration::from_micros(self.commit_micros_max)
    }
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) executes: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) in_progress: AtomicU64,
    pub(crate) outcome_unknown: AtomicU64,
    pub(crate) marked_unknown: AtomicU64,
    pub(crate) points_saved: AtomicU64,
    pub(crate) answered_from_index: AtomicU64,
    pub(crate) completions: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) lease_takeovers: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) scope_full: AtomicU64,
    pub(crate) expired_removed: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) durable_commits: AtomicU64,
    pub(crate) batched_ops: AtomicU64,
    pub(crate) max_batch: AtomicU64,
    pub(crate) commit_micros_total: AtomicU64,
    pub(crate) commit_micros_max: AtomicU64,
    pub(crate) log_syncs: AtomicU64,
    pub(crate) log_bytes: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) log_entries_replayed: AtomicU64,
    pub(crate) checkpoint_micros_total: AtomicU64,
    pub(crate) checkpoint_micros_max: AtomicU64,
    pub(crate) log_full_waits: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counts a stale holder of `hash`'s key refused because reservation `current` holds it now
/// (C8), and says so in the store's events.
pub(crate) fn count_fenced(
    shared: &crate::engine::Shared,
    hash: &crate::rules::key::KeyHash,
    (token, current): (u64, u64),
) {
    bump(&shared.counters.fenced);
    shared.metrics.fenced();
    crate::trace::fenced(hash, token, current);
}

/// Counts a lease taken over (C8).
pub(crate) fn count_takeover(shared: &crate::engine::Shared) {
    bump(&shared.counters.lease_takeovers);
    shared.metrics.takeover();
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn raise(c: &AtomicU64, n: u64) {
    c.fetch_max(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, index_entries: usize) -> Stats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            executes: l(&self.executes),
            replays: l(&self.replays),
            conflicts: l(&self.conflicts),
            in_progress: l(&self.in_progress),
            outcome_unknown: l(&self.outcome_unknown),
            marked_unknown: l(&self.marked_unknown),
            points_saved: l(&self.points_saved),
            answered_from_index: l(&self.answered_from_index),
            completions: l(&self.completions),
            releases: l(&self.releases),
            lease_takeovers: l(&self.lease_takeovers),
            fenced: l(&self.fenced),
            scope_full: l(&self.scope_full),
            expired_removed: l(&self.expired_removed),
            commits: l(&self.commits),
            durable_commits: l(&self.durable_commits),
            batched_ops: l(&self.batched_ops),
            max_batch: l(&self.max_batch),
            commit_micros_total: l(&self.commit_micros_total),
            commit_micros_max: l(&self.commit_micros_max),
            index_entries: index_entries as u64,
            // Filled in by the store, which holds the waits.
            waiting: 0,
            log_syncs: l(&self.log_syncs),
            log_bytes: l(&self.log_bytes),
            checkpoints: l(&self.checkpoints),
            log_entries_replayed: l(&self.log_entries_replayed),
            checkpoint_micros_total: l(&self.checkpoint_micros_total),
            checkpoint_micros_max: l(&self.checkpoint_micros_max),
            log_full_waits: l(&self.log_full_waits),
            // Filled in by the engines that count them.
            live_records: None,
            in_flight_records: None,
            file_bytes: None,
        }
    }
}
