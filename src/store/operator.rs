//! An operator's release of a key: [`Store::release_held`] and [`Store::release_unknown`].
//!
//! Why: a key whose holder hangs (a stuck handler, a worker that lost its way) stays in
//! flight until its lease runs out, and every retry meanwhile is answered "in progress"; an
//! operator who knows better must be able to free it at once, without the holder's
//! cooperation, and without restarting the service. Invariants: a release goes through the
//! same engine operation a holder's own release uses, with the token read from the record, so
//! it is decided against the record as it stands then (a record that completed or was taken
//! over meanwhile is left as it is, and the call says so); the holder it frees can never
//! complete afterwards (its token is no longer the record's: rule C8 refuses it); a completed
//! record is never released; a key whose outcome is unknown is released only by
//! [`Store::release_unknown`], the operator's statement that its operation did not have its
//! effect, through a resolution (rule E6), never behind a resolution that holds the key.

use crate::engine::Release;
use crate::error::{KeyError, LeaseError, ReleaseError, ResolveError};
use crate::rules::key::{Key, KeyHash, Scope};
use crate::rules::state::State;

use super::Store;

impl Store {
    /// Frees a key in flight, whoever holds it and whether or not its lease has run out: the
    /// next attempt executes at once (a record with a recovery point is kept with its lease
    /// ended, so the next attempt takes it over and resumes from the point, rule P3). The
    /// holder is fenced: its `complete`, `renew` or `release` is refused from then on (C8).
    /// Returns the token of the reservation it freed.
    ///
    /// Refused, with nothing changed: a key without a live record ([`ReleaseError::NotFound`]),
    /// a completed record or one whose outcome is unknown ([`ReleaseError::WrongState`]; see
    /// [`release_unknown`](Store::release_unknown)), and a record that changed between the
    /// reading of its token and the release ([`ReleaseError::Changed`]).
    ///
    /// ```
    /// use idemstore::{Begin, CompleteError, Config, Fingerprint, Key, Response, Scope, Store};
    /// let store = Store::in_memory(Config::default())?;
    /// let (scope, key, fp) = (Scope::new("acct_1")?, Key::new("k1")?, Fingerprint::of_bytes(b"x"));
    /// let Begin::Execute(stuck) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// assert_eq!(store.release_held(&scope, &key)?, stuck.token());
    /// // The retry executes; the old holder can no longer complete.
    /// let Begin::Execute(retry) = store.begin(&scope, &key, &fp)? else { unreachable!() };
    /// let late = stuck.complete(Response::new(201, [("a", "b")], "late"));
    /// assert!(matches!(late, Err(CompleteError::Fenced { .. })));
    /// retry.complete(Response::new(201, [("a", "b")], "done"))?;
    /// # Ok::<(), idemstore::Error>(())
    /// ```
    pub fn release_held(&self, scope: &Scope, key: &Key) -> Result<u64, ReleaseError> {
        self.check_key(key)?;
        let record = self.get(scope, key)?.ok_or(ReleaseError::NotFound)?;
        if record.state != State::InFlight {
            return Err(ReleaseError::WrongState {
                state: record.state,
            });
        }
        let hash = KeyHash::of(scope, key);
        self.release_token((hash, scope), record.token, Release::Answered)
            .wait()
            .map_err(refusal)?;
        crate::trace::operator_release(&hash, record.token, false);
        Ok(record.token)
    }

    /// Frees a key whose outcome is unknown (rule E6), stating that its operation did not
    /// have its effect: the next attempt executes it again. It is what resolving the key and
    /// releasing the resolution does ([`Store::resolve`]), in one call for an operator.
    /// Returns the token of the resolution it made and released.
    ///
    /// Refused, with nothing changed: a key without a live record, a record in another state
    /// ([`ReleaseError::WrongState`]; see [`release_held`](Store::release_held)), and a key a
    /// resolution holds now ([`ReleaseError::Resolving`]).
    pub fn release_unknown(&self, scope: &Scope, key: &Key) -> Result<u64, ReleaseError> {
        self.check_key(key)?;
        let record = self.get(scope, key)?.ok_or(ReleaseError::NotFound)?;
        if record.state != State::OutcomeUnknown {
            return Err(ReleaseError::WrongState {
                state: record.state,
            });
        }
        let resolution = self.resolve(scope, key).map_err(|e| match e {
            ResolveError::InvalidKey(e) => ReleaseError::InvalidKey(e),
            ResolveError::Unavailable(e) => ReleaseError::Unavailable(e),
        })?;
        let Some(reservation) = resolution else {
            return Err(ReleaseError::Resolving);
        };
        let token = reservation.token();
        reservation.release().map_err(refusal)?;
        crate::trace::operator_release(&KeyHash::of(scope, key), token, true);
        Ok(token)
    }

    fn check_key(&self, key: &Key) -> Result<(), ReleaseError> {
        let max = self.config().max_key_len;
        if key.len() > max {
            return Err(ReleaseError::InvalidKey(KeyError::TooLong {
                len: key.len(),
                max,
            }));
        }
        Ok(())
    }
}

/// A release the engine refused: the record is no longer the one read.
fn refusal(e: LeaseError) -> ReleaseError {
    match e {
        LeaseError::Fenced { .. } | LeaseError::NotReserved { .. } => ReleaseError::Changed,
        LeaseError::Unavailable(e) => ReleaseError::Unavailable(e),
    }
}
