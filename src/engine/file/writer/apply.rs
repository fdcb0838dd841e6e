//! Deciding a batch's operations, one function per operation, against the batch's tables.
//!
//! Why: every operation reads the key's current state (including the batch's earlier writes),
//! asks the state machine, writes the new state and queues its answer and index effect. Each
//! operation is its own function returning its answer; only a storage failure (`Fail`, the
//! store already poisoned) stops the batch. Invariant: a damaged record is answered as
//! `Unavailable::Corrupted` to its caller alone, and the rest of the batch goes on.

use super::*;
use crate::config::Terms;
use crate::format::point;
use crate::format::record::RecordError;
use crate::rules::fingerprint::Fingerprint;
use crate::rules::key::{Key, Scope};

/// A recovery point that cannot be handed to the attempt that takes its key over.
fn damaged_point(hash: &KeyHash, detail: &str) -> Unavailable {
    Unavailable::Corrupted {
        detail: format!("recovery point {hash:?}: {detail}"),
    }
}

/// A stored response that cannot be replayed.
fn corrupted_response(hash: &KeyHash, detail: &str) -> BeginError {
    BeginError::Unavailable(Unavailable::Corrupted {
        detail: format!("response {hash:?}: {detail}"),
    })
}

impl Writer {
    pub(super) fn apply_all(
        &mut self,
        mut t: Tables<'_>,
        ops: Vec<Op>,
        b: &mut Batch,
    ) -> Result<(), Fail> {
        let now = self.shared.now();
        for op in ops {
            self.apply(op, &mut t, now, b)?;
        }
        Ok(())
    }

    /// The key's record through `decode`: `Ok(Ok(None))` when absent, `Ok(Err(_))` when it
    /// does not decode (the caller answers that to its own caller, and the batch goes on).
    pub(super) fn load<T>(
        &self,
        t: &Tables<'_>,
        hash: &KeyHash,
        decode: fn(&[u8]) -> Result<T, RecordError>,
    ) -> Result<Result<Option<T>, Unavailable>, Fail> {
        let found = self.io(t.record(hash, decode))?;
        Ok(found.transpose().map_err(|e| Unavailable::Corrupted {
            detail: format!("record {hash:?}: {e}"),
        }))
    }

    /// Writes `record` under `hash` in place of `old` (none: the key held no record), moving
    /// its expiry index entry from `old`'s, counts it (C13), and logs the new state with
    /// `response`, the stored response it now has (the caller writes that one; none for a
    /// record in flight).
    pub(super) fn put(
        &self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        (hash, record): (&KeyHash, &Record),
        old: Option<&Hot>,
        response: Option<&[u8]>,
    ) -> Result<(), Fail> {
        let bytes = record.encode();
        let in_flight = record.hot.state == State::InFlight;
        match old {
            None => b.deltas.added(&record.scope, in_flight),
            Some(o) => b
                .deltas
                .state_changed(o.state == State::InFlight, in_flight),
        }
        self.io(t.put(hash, (bytes.as_slice(), &record.hot), response))?;
        if self.logged.is_some() && !b.direct {
            b.entry.put(&hash.0, &bytes, response);
        }
        Ok(())
    }

    /// Removes a record, its response and its expiry entry, and counts it out (C13).
    pub(super) fn delete(
        &self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        hash: &KeyHash,
    ) -> Result<(), Fail> {
        // Read from the record's header, so a record damaged elsewhere is counted out too.
        let gone = self.io(t.record(hash, |bytes| {
            let scope = Record::scope_of(bytes).map(Box::<str>::from);
            (scope, scope_count::in_flight(bytes))
        }))?;
        if let Some((scope, in_flight)) = gone {
            b.deltas.gone(scope.as_deref(), in_flight);
        }
        if self.logged.is_some() && !b.direct {
            b.entry.delete(&hash.0);
        }
        self.io(t.delete(hash))
    }

    /// Decides one operation and queues its answer.
    fn apply(&mut self, op: Op, t: &mut Tables<'_>, now: u64, b: &mut Batch) -> Result<(), Fail> {
        match op {
            Op::Begin {
                hash,
                scope,
                key,
                fp,
                terms,
                reply,
            } => {
                if reply.is_abandoned() {
                    // The caller gave up before this was decided: reserve nothing, and settle
                    // the count its giving up added, as for a detached release.
                    b.detached_releases += 1;
                    return Ok(());
                }
                let answer = self.begin(t, b, now, (&hash, &scope, &key), (fp, terms))?;
                b.pending.push(Pending::Begin(reply, answer, hash));
            }
            Op::Complete {
                hash,
                token,
                response,
                terms,
                blob,
                reply,
            } => {
                let answer = self.complete(t, b, now, (&hash, token), (response, &blob), terms)?;
                b.pending.push(Pending::Complete(reply, answer));
            }
            Op::Release {
                hash,
                token,
                reply,
                detached,
            } => {
                if detached {
                    b.detached_releases += 1;
                }
                // Released by its holder, not by a dropped reservation (E6).
                let explicit = reply.is_some();
                let answer = self.release(t, b, (&hash, token), explicit)?;
                b.pending.push(Pending::Lease(reply, answer));
            }
            Op::Renew {
                hash,
                token,
                terms,
                reply,
            } => {
                let answer = self.renew(t, b, now, (&hash, token), terms)?;
                b.pending.push(Pending::Renew(reply, answer));
            }
            Op::Point {
                hash,
                token,
                point,
                reply,
            } => {
                let answer = self.save_point(t, b, (&hash, token), &point::encode(&point))?;
                b.pending.push(Pending::Lease(Some(reply), answer));
            }
            Op::Resolve { hash, reply } => {
                let answer = self.resolve(t, b, now, &hash)?;
                b.pending.push(Pending::Resolve(reply, answer));
            }
            Op::Purge { hash, reply } => {
                let existed = self.purge(t, b, &hash)?;
                b.pending.push(Pending::Purge(reply, existed));
            }
            Op::Expire { limit, reply } => {
                let report = self.expire(t, now, limit, b)?;
                add(&self.shared.counters.expired_removed, report.removed);
                b.pending.push(Pending::Expire(reply, report));
            }
            Op::Flush { reply } => {
                b.durable |= self.unsynced || b.mutated;
                b.pending.push(Pending::Flush(reply));
            }
            Op::Barrier { reply } => b.pending.push(Pending::Flush(reply)),
            Op::Checkpoint { reply } => {
                b.checkpoint |= self.logged.is_some();
                b.pending.push(Pending::Flush(reply));
            }
            Op::Cache {
                hash,
                token,
                response,
            } => b.effects.push(Effect::Cache(hash, token, response)),
            // A batch with work runs in `direct.rs`, which never hands work to this function.
            Op::Work { reply, .. } => b.pending.push(Pending::Work(
                reply,
                Err(CompleteError::Unavailable(Unavailable::Io {
                    cause: Arc::new(Message(
                        "caller work reached a batch that cannot run it (a bug in the writer); \
                         nothing was run"
                            .to_owned(),
                    )),
                })),
            )),
            Op::Shutdown => {}
        }
        Ok(())
    }

    /// `begin` (C1-C5, C8, C9, C13): reserves the key when the caller must execute.
    fn begin(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        now: u64,
        (hash, scope, key): (&KeyHash, &Scope, &Key),
        (fp, terms): (Fingerprint, Terms),
    ) -> Result<Result<Claim, BeginError>, Fail> {
        let shared = Arc::clone(&self.shared);
        let (counters, config) = (&shared.counters, &shared.config);
        let hot = match self.load(t, hash, Hot::decode)? {
            Ok(hot) => hot,
            Err(damaged) => return Ok(Err(damaged.into())),
        };
        let answer = match machine::decide_begin(hot.as_ref(), &fp, now) {
            BeginDecision::Execute { .. }
                if hot.is_none()
                    && self.scopes.live(scope.as_str(), &b.deltas)
                        >= config.max_records_per_scope =>
            {
                // A new record would pass the scope's cap (C13).
                bump(&counters.scope_full);
                Err(BeginError::ScopeFull {
                    limit: config.max_records_per_scope,
                })
            }
            BeginDecision::Execute { takeover } => {
                // A takeover inherits the record's recovery point (P2).
                let inherited = match hot.filter(|_| takeover) {
                    Some(old) => self.point_of(t, hash, &old)?.map(|bytes| (old, bytes)),
                    None => None,
                };
                let recovery = match inherited.as_ref().map(|(_, bytes)| point::decode(bytes)) {
                    Some(Err(e)) => return Ok(Err(damaged_point(hash, &e).into())),
                    decoded => decoded.and_then(Result::ok),
                };
                let token = self.next_token;
                self.next_token = self.next_token.saturating_add(1);
                let (lease_ms, ttl_ms) = (terms.lease_ms(), terms.ttl_ms());
                let new = match &inherited {
                    Some((old, _)) => machine::taken_over(old, token, now, lease_ms, ttl_ms),
                    None => machine::reserved(fp, token, now, lease_ms, ttl_ms),
                };
                let inherited = inherited.map(|(_, bytes)| bytes);
                let record = Record {
                    hot: new,
                    scope: scope.as_str().to_owned(),
                    key: key.as_str().to_owned(),
                };
                self.put(t, b, (hash, &record), hot.as_ref(), inherited.as_deref())?;
                b.mutated = true;
                b.durable |= self.durable_if(config.reservations_durable());
                b.effects.push(Effect::Put(
                    *hash,
                    Entry {
                        hot: new,
                        response: None,
                    },
                ));
                bump(&counters.executes);
                if takeover {
                    count_takeover(&self.shared);
                    crate::trace::takeover(hash, token, recovery.is_some());
                }
                Ok(Claim::Execute {
                    token,
                    lease_deadline: new.lease_deadline,
                    recovery,
                })
            }
            BeginDecision::OutcomeUnknown => {
                bump(&counters.outcome_unknown);
                Ok(Claim::OutcomeUnknown)
            }
            BeginDecision::Replay => {
                let stored = match hot {
                    Some(hot) => self
                        .io(t.response(hash, hot.expires_at, blob::decode))?
                        .map(|r| (hot, r)),
                    None => None,
                };
                match stored {
                    Some((hot, Ok(response))) => {
                        bump(&counters.replays);
                        b.effects.push(Effect::Put(
                            *hash,
                            Entry {
                                hot,
                                response: Some(response.clone()),
                            },
                        ));
                        Ok(Claim::Replay(response))
                    }
                    Some((_, Err(e))) => Err(corrupted_response(hash, &e.to_string())),
                    None => Err(corrupted_response(
                        hash,
                        "completed record has no stored response",
                    )),
                }
            }
            decision @ (BeginDecision::InProgress | BeginDecision::Conflict) => {
                if let Some(hot) = hot {
                    b.effects.push(Effect::Warm(*hash, hot));
                }
                if decision == BeginDecision::InProgress {
                    bump(&counters.in_progress);
                    Ok(Claim::InProgress {
                        retry_after: config.retry_after,
                    })
                } else {
                    bump(&counters.conflicts);
                    Ok(Claim::Conflict)
                }
            }
        };
        Ok(answer)
    }

    /// `complete` (C3, C7, C8, C10): stores the response, or releases the key when `policy`
    /// does not keep its status.
    fn complete(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        now: u64,
        (hash, token): (&KeyHash, u64),
        (response, blob): (Response, &[u8]),
        terms: Terms,
    ) -> Result<Result<Completion, CompleteError>, Fail> {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let current = match self.load(t, hash, Record::decode)? {
            Ok(current) => current,
            Err(damaged) => return Ok(Err(damaged.into())),
        };
        if let Err(refusal) = machine::check_holder(current.as_ref().map(|r| &r.hot), token) {
            if let HolderRefusal::Fenced { current } = refusal {
                count_fenced(&shared, hash, (token, current));
            }
            return Ok(Err(match refusal {
                HolderRefusal::Fenced { current } => CompleteError::Fenced { token, current },
                HolderRefusal::NotReserved => CompleteError::NotReserved { token },
            }));
        }
        let Some(mut record) = current else {
            // `check_holder` refuses a key without a record.
            return Ok(Err(CompleteError::NotReserved { token }));
        };
        let old = record.hot;
        b.mutated = true;
        if !terms.cache_policy().keeps(response.status()) {
            self.let_go(t, b, (hash, record), false)?;
            bump(&counters.releases);
            return Ok(Ok(Completion::Released));
        }
        record.hot = machine::completed(old, response.status(), blob.len(), now, terms.ttl_ms());
        self.put(t, b, (hash, &record), Some(&old), Some(blob))?;
        b.durable |= self.durable_if(true);
        b.effects.push(Effect::Put(
            *hash,
            Entry {
                hot: record.hot,
                response: Some(response),
            },
        ));
        bump(&counters.completions);
        Ok(Ok(Completion::Stored))
    }

    /// `release` (C6, C8): removes the reservation `token` holds.
    fn release(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        (hash, token): (&KeyHash, u64),
        explicit: bool,
    ) -> Result<Result<(), LeaseError>, Fail> {
        let current = match self.load(t, hash, Record::decode)? {
            Ok(current) => current,
            Err(damaged) => return Ok(Err(damaged.into())),
        };
        if let Err(refusal) = machine::check_holder(current.as_ref().map(|r| &r.hot), token) {
            return Ok(Err(lease_refusal(refusal, token)));
        }
        let Some(record) = current else {
            return Ok(Err(LeaseError::NotReserved { token }));
        };
        self.let_go(t, b, (hash, record), explicit)?;
        bump(&self.shared.counters.releases);
        Ok(Ok(()))
    }

    /// Lets go of `hash`'s held `record` (C6, P3, E6), as `machine::released` says: removes
    /// it, or keeps it under a fresh token (with its point and its lease ended, or, for a
    /// resolution given up without a verdict, unknown as before). `explicit`: the holder
    /// released it, rather than dropping it or failing.
    pub(super) fn let_go(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        (hash, record): (&KeyHash, Record),
        explicit: bool,
    ) -> Result<(), Fail> {
        b.mutated = true;
        let Some(mut hot) = machine::released(record.hot, self.next_token, explicit) else {
            self.delete(t, b, hash)?;
            b.effects.push(Effect::Remove(*hash));
            return Ok(());
        };
        self.next_token = self.next_token.saturating_add(1);
        let point = self.point_of(t, hash, &record.hot)?;
        if point.is_none() {
            // A point the record's flag promises but its entry lacks is gone.
            hot.response_len = 0;
            if hot.state == State::InFlight {
                // Kept only for its point: without one, released as any key is.
                self.delete(t, b, hash)?;
                b.effects.push(Effect::Remove(*hash));
                return Ok(());
            }
        }
        let old = record.hot;
        let record = Record { hot, ..record };
        self.put(t, b, (hash, &record), Some(&old), point.as_deref())?;
        b.effects.push(Effect::Put(
            *hash,
            Entry {
                hot,
                response: None,
            },
        ));
        Ok(())
    }

    /// The record of `hash` if reservation `token` holds it (C8), or the refusal a stale
    /// holder (counted as fenced when taken over) or a damaged record gets.
    fn held(
        &self,
        t: &Tables<'_>,
        (hash, token): (&KeyHash, u64),
    ) -> Result<Result<Record, LeaseError>, Fail> {
        let current = match self.load(t, hash, Record::decode)? {
            Ok(current) => current,
            Err(damaged) => return Ok(Err(damaged.into())),
        };
        if let Err(refusal) = machine::check_holder(current.as_ref().map(|r| &r.hot), token) {
            if let HolderRefusal::Fenced { current } = refusal {
                count_fenced(&self.shared, hash, (token, current));
            }
            return Ok(Err(lease_refusal(refusal, token)));
        }
        Ok(current.ok_or(LeaseError::NotReserved { token }))
    }

    /// The recovery point bytes of `hot`, `hash`'s record, if it carries one.
    pub(super) fn point_of(
        &self,
        t: &Tables<'_>,
        hash: &KeyHash,
        hot: &Hot,
    ) -> Result<Option<Vec<u8>>, Fail> {
        if !hot.has_point() {
            return Ok(None);
        }
        self.io(t.response(hash, hot.expires_at, <[u8]>::to_vec))
    }

    /// Saves the recovery point `bytes` (encoded) for reservation `token` (P1), durably.
    pub(super) fn save_point(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        (hash, token): (&KeyHash, u64),
        bytes: &[u8],
    ) -> Result<Result<(), LeaseError>, Fail> {
        let mut record = match self.held(t, (hash, token))? {
            Ok(record) => record,
            Err(refused) => return Ok(Err(refused)),
        };
        let old = record.hot;
        // A valid point is at most a few bytes over 64 KiB.
        record.hot.response_len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.put(t, b, (hash, &record), Some(&old), Some(bytes))?;
        b.mutated = true;
        b.durable |= self.durable_if(true);
        b.effects.push(Effect::Put(
            *hash,
            Entry {
                hot: record.hot,
                response: None,
            },
        ));
        bump(&self.shared.counters.points_saved);
        Ok(Ok(()))
    }

    /// Reserves `hash`'s record for its resolution when its outcome is unknown (E6): in flight
    /// again under a fresh token, with its recovery point. `None` for any other record.
    fn resolve(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        now: u64,
        hash: &KeyHash,
    ) -> Result<Result<Option<Claim>, Unavailable>, Fail> {
        let current = match self.load(t, hash, Record::decode)? {
            Ok(current) => current,
            Err(damaged) => return Ok(Err(damaged)),
        };
        let resolvable = |r: &Record| machine::resolvable(&r.hot, now, self.first_token);
        let Some(record) = current.filter(resolvable) else {
            return Ok(Ok(None));
        };
        let bytes = self.point_of(t, hash, &record.hot)?;
        let recovery = match bytes.as_deref().map(point::decode) {
            Some(Err(e)) => return Ok(Err(damaged_point(hash, &e))),
            decoded => decoded.and_then(Result::ok),
        };
        let token = self.next_token;
        self.next_token = self.next_token.saturating_add(1);
        let old = record.hot;
        let lease_ms = crate::clock::millis(self.shared.config.lease);
        let mut hot = machine::resolving(old, token, now, lease_ms);
        if bytes.is_none() {
            hot.response_len = 0;
        }
        let record = Record { hot, ..record };
        self.put(t, b, (hash, &record), Some(&old), bytes.as_deref())?;
        b.mutated = true;
        b.durable |= self.durable_if(true);
        b.effects.push(Effect::Put(
            *hash,
            Entry {
                hot,
                response: None,
            },
        ));
        bump(&self.shared.counters.executes);
        Ok(Ok(Some(Claim::Execute {
            token,
            lease_deadline: hot.lease_deadline,
            recovery,
        })))
    }

    /// `renew` (C8): a full lease from now for the reservation `token` holds.
    fn renew(
        &mut self,
        t: &mut Tables<'_>,
        b: &mut Batch,
        now: u64,
        (hash, token): (&KeyHash, u64),
        terms: Terms,
    ) -> Result<Result<u64, LeaseError>, Fail> {
        let mut record = match self.held(t, (hash, token))? {
            Ok(record) => record,
            Err(refused) => return Ok(Err(refused)),
        };
        let old = record.hot;
        let lease_deadline = now.saturating_add(terms.lease_ms());
        record.hot.lease_deadline = lease_deadline;
        record.hot.expires_at = old.expires_at.max(lease_deadline);
        let point = self.point_of(t, hash, &old)?;
        self.put(t, b, (hash, &record), Some(&old), point.as_deref())?;
        b.mutated = true;
        b.effects.push(Effect::Put(
            *hash,
            Entry {
                hot: record.hot,
                response: None,
            },
        ));
        Ok(Ok(lease_deadline))
    }

    /// `purge`: removes the record whatever its state; whether there was one.
    fn purge(&mut self, t: &mut Tables<'_>, b: &mut Batch, hash: &KeyHash) -> Result<bool, Fail> {
        // A record that does not decode is purged too.
        let exists = self.io(t.record(hash, |_| ()))?.is_some();
        if !exists {
            // Absent may rest on a release not yet durable: an acknowledged purge makes it
            // durable, or a crash could bring the record back.
            b.durable |= self.durable_if(self.unsynced);
            return Ok(false);
        }
        self.delete(t, b, hash)?;
        b.mutated = true;
        b.durable |= self.durable_if(true);
        b.effects.push(Effect::Remove(*hash));
        Ok(true)
    }

    /// Removes up to `limit` records whose expiry time has passed (C9).
    pub(super) fn expire(
        &mut self,
        t: &mut Tables<'_>,
        now: u64,
        limit: usize,
        b: &mut Batch,
    ) -> Result<ExpireReport, Fail> {
        let mut cursor = self.logged.as_ref().and_then(|l| l.expire_cursor);
        let due = self.io(t.due(now, limit, &mut cursor))?;
        if let Some(l) = self.logged.as_mut() {
            l.expire_cursor = cursor;
        }
        let mut report = ExpireReport {
            scanned: due.len(),
            removed: 0,
        };
        for ek in due {
            let hash = ek.hash();
            self.io(t.drop_expiry(ek))?;
            b.mutated = true;
            let hot = match self.load(t, &hash, Hot::decode)? {
                Ok(Some(h)) => Some(h),
                Err(_) => None,
                Ok(None) => continue,
            };
            // An entry whose record has moved on (a newer expiry) is only an index leftover.
            if let Some(h) = &hot
                && h.expires_at != ek.expires_at()
            {
                continue;
            }
            self.delete(t, b, &hash)?;
            b.effects.push(Effect::Remove(hash));
            report.removed += 1;
        }
        if b.mutated {
            b.durable |= self.durable_if(true);
        }
        Ok(report)
    }
}
