//! Resolving keys whose outcome is unknown (rule E6): [`Store::resolve`] and the resolver
//! hook [`Store::resolve_unknown`].
//!
//! Why: a store opened with [`InFlightAtOpen::MarkUnknown`](crate::InFlightAtOpen::MarkUnknown)
//! keeps every key that was in flight when it stopped, answering retries `OutcomeUnknown`,
//! because only the application can find out whether the operation had its effect (ask the
//! payment provider, look for the row). Resolving hands the application a [`Reservation`] of
//! the key: complete it with the response the effect deserves, or release it so a retry runs
//! again. Invariants: only a key whose outcome is unknown and that no live resolution holds is
//! reserved here, so at most one resolution holds a key at a time (a later one, after the
//! first one's lease or a restart, fences it); the key stays unknown while it is resolved and
//! after any resolution that ends without a verdict, so nothing but an explicit release frees
//! it. The hook reaches every unknown key the store holds (by its stored scope and key,
//! whatever this open's key limit), and a key whose record cannot be read is skipped, still
//! unknown, rather than stopping the keys after it.

use crate::error::{KeyError, ResolveError, Unavailable};
use crate::format::record::State;
use crate::rules::key::{Key, KeyHash, Scope};
use crate::view::RecordInfo;

use super::{Begin, Reservation, Store};

impl Store {
    /// Reserves a key whose outcome is unknown (E6) for the application to resolve it:
    /// `Some(reservation)` with a fresh fencing token, a lease and the key's last
    /// [`recovery_point`](Reservation::recovery_point); `None` when the key's outcome is not
    /// unknown (absent, expired, in flight, completed) or another resolution holds it. A
    /// resolution made before the store was last opened holds nothing any more: its process
    /// is gone (one process uses a file at a time), so the key is resolvable at once after a
    /// restart, whatever that resolution's lease said.
    ///
    /// Look the effect up, then [`complete`](Reservation::complete) the reservation with the
    /// response a retry should get (the effect happened), or [`release`](Reservation::release)
    /// it (it did not: the retry runs the operation). Anything short of that verdict gives the
    /// key back, still unknown, to the next resolution: dropping the reservation, a
    /// [`complete_with`](Reservation::complete_with) whose closure fails, a status the cache
    /// policy does not keep, or a lease that runs out (a resolution that takes longer renews
    /// it). While a resolution holds the key, a retry is still answered `OutcomeUnknown`.
    /// Memory and Redis stores never mark a key so, and answer `None`.
    ///
    /// ```
    /// use idemstore::{Begin, Config, Fingerprint, InFlightAtOpen, Response, Scope, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("payments.redb");
    /// let config = || {
    ///     Config::builder().in_flight_at_open(InFlightAtOpen::MarkUnknown).build()
    /// };
    /// let (scope, fp) = (Scope::new("acct_1")?, Fingerprint::of_bytes(b"pay 10 EUR"));
    /// let store = Store::open(&path, config()?)?;
    /// let key = store.key("pay-1")?;
    /// let Begin::Execute(reservation) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// reservation.abandon(); // the process dies here, as far as the store can tell
    /// store.close()?;
    ///
    /// let store = Store::open(&path, config()?)?;
    /// assert!(matches!(store.begin(&scope, &key, &fp)?, Begin::OutcomeUnknown));
    /// // The application asks the payment provider, which has the payment: complete.
    /// let reservation = store.resolve(&scope, &key)?.expect("the key's outcome is unknown");
    /// reservation.complete(Response::new(201, [("location", "/payments/p-1")], ""))?;
    /// assert!(matches!(store.begin(&scope, &key, &fp)?, Begin::Replay(r) if r.status() == 201));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolve(&self, scope: &Scope, key: &Key) -> Result<Option<Reservation>, ResolveError> {
        let shared = &self.inner.shared;
        shared.check()?;
        let max = shared.config.max_key_len;
        if key.len() > max {
            return Err(ResolveError::InvalidKey(KeyError::TooLong {
                len: key.len(),
                max,
            }));
        }
        Ok(self.resolve_hash(KeyHash::of(scope, key), scope)?)
    }

    /// The resolver hook: reserves each key whose outcome is unknown (E6), up to `limit` of
    /// them, and hands `f` its record and its reservation, to complete or release (a
    /// reservation `f` drops gives the key back, still unknown). Returns how many keys it
    /// handed over. Run it after opening a store with
    /// [`InFlightAtOpen::MarkUnknown`](crate::InFlightAtOpen::MarkUnknown), before or while
    /// serving: retries of the keys not resolved yet are answered `OutcomeUnknown` meanwhile.
    /// With the write-ahead log, finding the keys checkpoints first, as
    /// [`records`](Store::records) does.
    ///
    /// Every unknown key the store holds is handed over, whatever its length: a key longer
    /// than the `max_key_len` the store was opened with this time (it was stored under a
    /// larger one) is still resolved here, though [`resolve`](Store::resolve) refuses it.
    ///
    /// A key that cannot be reserved because of its own record (the record, or its recovery
    /// point, does not decode: `Unavailable::Corrupted`) is skipped: it stays unknown, so no
    /// retry runs it, it is reported as a warning (feature `tracing`), and the hook goes on to
    /// the next key. [`check`](Store::check) names such records; `limit` counts them with the
    /// keys handed over. An error of the store itself (poisoned, closed, a failed read) stops
    /// the hook and is returned; the keys handed over before it stay as `f` left them.
    pub fn resolve_unknown(
        &self,
        limit: usize,
        mut f: impl FnMut(&RecordInfo, Reservation),
    ) -> Result<usize, ResolveError> {
        self.inner.shared.check()?;
        let filter = (None, Some(State::OutcomeUnknown));
        let listed = self.inner.engine.list_each(filter, limit)?;
        let (mut handed, mut skipped) = (0, 0);
        for entry in listed {
            let reserved = entry.and_then(|record| {
                // By the stored scope and key's hash: the key was valid under the limit it
                // was stored with, which may be larger than this open's.
                let hash = KeyHash::of_raw(record.scope.as_bytes(), record.key.as_bytes());
                let scope = Scope::new(&record.scope).map_err(|e| {
                    let detail = format!("record {hash:?}: its scope: {e}");
                    (hash, Unavailable::Corrupted { detail })
                })?;
                match self.resolve_hash(hash, &scope) {
                    Ok(reservation) => Ok(reservation.map(|r| (record, r))),
                    Err(e) => Err((hash, e)),
                }
            });
            match reserved {
                Ok(Some((record, reservation))) => {
                    f(&record, reservation);
                    handed += 1;
                }
                // Resolved, held by another resolution or expired since the listing.
                Ok(None) => {}
                Err((hash, e @ Unavailable::Corrupted { .. })) => {
                    crate::trace::unresolvable(&hash, &e);
                    skipped += 1;
                }
                Err((_, e)) => return Err(e.into()),
            }
        }
        if skipped > 0 {
            crate::trace::unresolved(skipped);
        }
        Ok(handed)
    }

    /// [`resolve`](Store::resolve) of the key under `hash`, in `scope`, without checking the
    /// key against this open's `max_key_len`.
    fn resolve_hash(
        &self,
        hash: KeyHash,
        scope: &Scope,
    ) -> Result<Option<Reservation>, Unavailable> {
        let claim = self.inner.engine.resolve(hash).wait()?;
        let terms = self.inner.shared.config.terms();
        Ok(
            match claim.map(|claim| self.wrap((hash, scope), claim, terms)) {
                Some(Begin::Execute(reservation)) => Some(reservation),
                _ => None,
            },
        )
    }
}
