//! The end of a batch: its effects on the hot index, then its answers.
//!
//! Why: the index may only show what is committed, and no caller may hear an answer before its
//! batch is committed. Invariant: the index is updated after the commit and before any answer;
//! an answer whose caller gave up is settled (a reservation nobody holds is queued for release).

use super::*;

impl Writer {
    /// Applies the index effects, then answers every caller.
    pub(super) fn finish(&mut self, b: Batch) {
        self.scopes.apply(&b.deltas);
        self.state.publish_counts(self.scopes.totals());
        let waiters = Arc::clone(&self.shared.waiters);
        let now = self.shared.now();
        for effect in b.effects {
            // A key that left flight (completed, released, removed) or whose lease ended (a
            // release that kept a recovery point): its waiting retries look again once the
            // index shows it (`engine/waiters.rs`).
            let left_flight = match &effect {
                Effect::Put(hash, entry)
                    if entry.hot.state == State::Completed || entry.hot.lease_deadline <= now =>
                {
                    Some(*hash)
                }
                Effect::Remove(hash) => Some(*hash),
                _ => None,
            };
            match effect {
                Effect::Put(hash, entry) => {
                    let cached = entry
                        .response
                        .as_ref()
                        .map(|r| (entry.hot.token, r.encoded_len()));
                    let hot = entry.hot;
                    let index = &self.state.index;
                    // A completed record the index holds already (a replay answered by the
                    // writer, say) is counted once, when it came in; in-flight ones are not
                    // counted at all, so they need no lookup.
                    let counted = hot.state == State::Completed && index.holds(&hash, &hot);
                    index.insert(hash, entry);
                    match cached {
                        Some((token, size)) => self
                            .cached
                            .add(hash, token, size, |h, t| index.drop_response(&h, t)),
                        None => self.cached.remove(&hash),
                    }
                    if !counted {
                        self.count_completed(hash, &hot);
                    }
                }
                Effect::Warm(hash, hot) => {
                    let index = &self.state.index;
                    if index.get(&hash).map(|e| e.hot) != Some(hot) {
                        index.insert(
                            hash,
                            Entry {
                                hot,
                                response: None,
                            },
                        );
                        self.cached.remove(&hash);
                        self.count_completed(hash, &hot);
                    }
                }
                Effect::Remove(hash) => {
                    self.state.index.remove(&hash);
                    self.cached.remove(&hash);
                }
                Effect::Cache(hash, token, response) => {
                    let index = &self.state.index;
                    if let Some(e) = index.get(&hash)
                        && e.hot.token == token
                        && e.hot.state == State::Completed
                        && e.response.is_none()
                    {
                        let size = response.encoded_len();
                        index.insert(
                            hash,
                            Entry {
                                hot: e.hot,
                                response: Some(response),
                            },
                        );
                        self.cached
                            .add(hash, token, size, |h, t| index.drop_response(&h, t));
                    }
                }
            }
            if let Some(hash) = left_flight {
                waiters.wake(&hash);
            }
        }
        let mut settled = b.detached_releases;
        for p in b.pending {
            match p.deliver() {
                None => {}
                // Counted when the caller gave up; settled once its release is applied.
                Some(Abandoned::Reservation(hash, token)) => self.orphans.push((hash, token)),
                Some(Abandoned::Answer) => settled += 1,
            }
        }
        if settled > 0 {
            self.state
                .detached_releases
                .fetch_sub(settled, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Counts a record just put in the index against `index_max_completed`, dropping the
    /// oldest completed records beyond it.
    pub(super) fn count_completed(&mut self, hash: KeyHash, hot: &Hot) {
        if hot.state != State::Completed {
            return;
        }
        let index = &self.state.index;
        let cached = &mut self.cached;
        self.completed.add(hash, hot.token, |h, t| {
            if index.remove_completed(&h, t) {
                cached.remove(&h);
            }
        });
    }
}
