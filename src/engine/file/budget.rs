//! The budgets of the hot index: bytes of cached responses, and the number of completed
//! records.
//!
//! Why: answering from memory avoids a read of the file, but responses can be large and
//! records numerous, so the index keeps responses only up to `response_cache_bytes` and
//! completed records only up to `index_max_completed`, dropping the oldest first; what is
//! dropped is still in the file. Only the writer thread uses them.
//!
//! Invariants: for [`ResponseBudget`], `bytes` is exactly the sum of the sizes in `held`, and
//! `held` names the responses the index holds now (one per key, for the reservation that
//! stored it); its queue of insertion order may hold stale entries, but never more than about
//! twice the live ones. For [`CompletedBudget`], every completed record the index holds has an
//! entry in its queue, and the queue never holds more than the limit: stale entries (records
//! that moved on) count against it, so the index may hold fewer completed records than the
//! limit, never more.

use std::collections::{HashMap, VecDeque};

use crate::rules::key::KeyHash;

pub(crate) struct ResponseBudget {
    limit: usize,
    bytes: usize,
    held: HashMap<KeyHash, (u64, usize)>,
    order: VecDeque<(KeyHash, u64)>,
}

impl ResponseBudget {
    pub(crate) fn new(limit: usize) -> ResponseBudget {
        ResponseBudget {
            limit,
            bytes: 0,
            held: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Notes that the index now holds a response of `size` bytes for `hash`, stored by
    /// reservation `token`, and calls `evict` for each response to drop to stay in budget
    /// (possibly this one).
    pub(crate) fn add(
        &mut self,
        hash: KeyHash,
        token: u64,
        size: usize,
        mut evict: impl FnMut(KeyHash, u64),
    ) {
        if self.held.get(&hash).is_some_and(|&(t, _)| t == token) {
            return;
        }
        self.remove(&hash);
        self.held.insert(hash, (token, size));
        self.order.push_back((hash, token));
        self.bytes += size;
        while self.bytes > self.limit {
            let Some((h, t)) = self.order.pop_front() else {
                break;
            };
            if self.held.get(&h).is_some_and(|&(held, _)| held == t) {
                self.remove(&h);
                evict(h, t);
            }
        }
        self.compact();
    }

    /// Notes that the index no longer holds a response for `hash`.
    pub(crate) fn remove(&mut self, hash: &KeyHash) {
        if let Some((_, size)) = self.held.remove(hash) {
            self.bytes -= size;
            self.compact();
        }
    }

    /// Drops stale queue entries once they outnumber the live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.held.len() + 64 {
            let held = &self.held;
            self.order
                .retain(|(h, t)| held.get(h).is_some_and(|&(held, _)| held == *t));
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The count of completed records in the index, oldest stored first.
pub(crate) struct CompletedBudget {
    limit: usize,
    order: VecDeque<(KeyHash, u64)>,
}

impl CompletedBudget {
    pub(crate) fn new(limit: usize) -> CompletedBudget {
        CompletedBudget {
            limit,
            order: VecDeque::new(),
        }
    }

    /// Notes that the index now holds the completed record of `hash` stored by reservation
    /// `token`, and calls `evict` for each queued record to drop to stay within the limit
    /// (possibly this one). `evict` must drop the record only if the index still holds it
    /// completed with that token.
    pub(crate) fn add(&mut self, hash: KeyHash, token: u64, mut evict: impl FnMut(KeyHash, u64)) {
        self.order.push_back((hash, token));
        while self.order.len() > self.limit {
            match self.order.pop_front() {
                Some((h, t)) => evict(h, t),
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> KeyHash {
        KeyHash([n; 32])
    }

    #[test]
    fn oldest_go_first_and_counts_stay_exact() {
        let mut b = ResponseBudget::new(100);
        let mut evicted = Vec::new();
        b.add(h(1), 1, 40, |h, t| evicted.push((h, t)));
        b.add(h(2), 2, 40, |h, t| evicted.push((h, t)));
        b.add(h(2), 2, 40, |h, t| evicted.push((h, t))); // counted once
        assert_eq!(b.bytes(), 80);
        b.add(h(3), 3, 40, |h, t| evicted.push((h, t)));
        assert_eq!(evicted, vec![(h(1), 1)]);
        assert_eq!(b.bytes(), 80);
        b.remove(&h(2));
        assert_eq!(b.bytes(), 40);
        // A removed key's stale queue entry is skipped, not evicted again.
        b.add(h(4), 4, 60, |h, t| evicted.push((h, t)));
        assert_eq!(evicted, vec![(h(1), 1)]);
        assert_eq!(b.bytes(), 100);
    }

    #[test]
    fn the_queue_stays_proportional_to_what_is_held() {
        let mut b = ResponseBudget::new(usize::MAX);
        for i in 0..10_000u64 {
            let k = KeyHash([(i % 251) as u8; 32]);
            b.add(k, i, 10, |_, _| {});
            b.remove(&k);
        }
        assert_eq!(b.bytes(), 0);
        assert!(b.order.len() <= 64 + 1);
    }

    #[test]
    fn completed_records_beyond_the_limit_go_oldest_first() {
        let mut b = CompletedBudget::new(2);
        let mut evicted = Vec::new();
        for n in 1..=4u8 {
            b.add(h(n), u64::from(n), |h, t| evicted.push((h, t)));
        }
        assert_eq!(evicted, vec![(h(1), 1), (h(2), 2)]);
        assert_eq!(b.queued(), 2);
        let mut none = CompletedBudget::new(0);
        none.add(h(9), 9, |h, t| evicted.push((h, t)));
        assert_eq!(
            evicted.last(),
            Some(&(h(9), 9)),
            "a zero limit keeps nothing"
        );
    }
}
