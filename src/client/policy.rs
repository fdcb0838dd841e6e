//! The retry policy: exponential backoff with full jitter, a maximum of attempts, an overall
//! deadline and a timeout per attempt.
//!
//! Why: retries that all wait the same time arrive together and keep an overloaded server
//! down; full jitter (a wait drawn uniformly between zero and the exponential ceiling)
//! spreads them, and a deadline bounds what a caller waits in all. Invariants: the wait
//! before a retry is never above the cap unless the server asked for more with
//! `Retry-After`, and then it is the server's wait; no attempt starts, and no wait is begun,
//! that would end at or past the deadline; the number of attempts never exceeds the maximum.
//! The computations are pure functions of their inputs (the random draw is a parameter), so
//! they are tested without a clock.

use std::time::Duration;

/// How a request is retried. Every setter states its default.
///
/// ```
/// use std::time::Duration;
/// use idemstore::client::RetryPolicy;
/// let policy = RetryPolicy::default()
///     .base(Duration::from_millis(50))
///     .cap(Duration::from_secs(2))
///     .max_attempts(6)
///     .deadline(Duration::from_secs(20));
/// // The ceiling doubles from the base up to the cap; a wait is drawn below it.
/// assert_eq!(policy.ceiling(1), Duration::from_millis(50));
/// assert_eq!(policy.ceiling(3), Duration::from_millis(200));
/// assert_eq!(policy.ceiling(10), Duration::from_secs(2));
/// assert!(policy.delay(3, u64::MAX) <= Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RetryPolicy {
    base: Duration,
    cap: Duration,
    max_attempts: u32,
    deadline: Duration,
    attempt_timeout: Duration,
    max_response_bytes: usize,
}

impl Default for RetryPolicy {
    /// Base 100 ms, cap 10 s, 8 attempts, a deadline of 60 s, 30 s per attempt, answers of at
    /// most 16 MiB.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 8,
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
        }
    }
}

/// What to do after an attempt that asked for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait this long, then send again.
    Wait(Duration),
    /// The maximum of attempts is reached.
    Exhausted,
    /// The wait would end at or past the deadline.
    Deadline,
}

impl RetryPolicy {
    /// The largest response body an attempt reads (default 16 MiB): a longer one ends the
    /// attempt as a failure (retried like a lost answer, with the same key), so a broken or
    /// hostile server cannot make the client hold more than this per attempt.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The largest response body an attempt reads.
    pub fn response_limit(&self) -> usize {
        self.max_response_bytes
    }

    /// The ceiling of the first retry's wait, doubled for each retry after it. Default
    /// 100 ms.
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The largest wait the backoff draws (a `Retry-After` may ask for more). Default 10 s.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Attempts in all, the first included (at least 1). Default 8.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long a request may take in all, from its first attempt: no attempt or wait is
    /// begun that would end past it. Default 60 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long one attempt may take, its response body included, before it counts as a
    /// timeout (and is retried). Default 30 s.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The maximum of attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The overall deadline.
    pub fn overall_deadline(&self) -> Duration {
        self.deadline
    }

    /// The ceiling of the wait before retry number `retry` (1 for the first retry):
    /// `min(cap, base × 2^(retry − 1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let base = u64::try_from(self.base.as_nanos()).unwrap_or(u64::MAX);
        let ceiling = Duration::from_nanos(base.saturating_mul(factor));
        ceiling.min(self.cap)
    }

    /// The jittered wait before retry number `retry`, for a uniform `random` draw: a
    /// duration from zero up to [`ceiling`](RetryPolicy::ceiling), in proportion to
    /// `random / u64::MAX` ("full jitter").
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos();
        let nanos = ceiling.saturating_mul(u128::from(random)) / u128::from(u64::MAX);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The wait before retry number `retry`: the server's `Retry-After` when it gave one and
    /// it is longer than the drawn delay, the drawn delay otherwise.
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>, random: u64) -> Duration {
        let drawn = self.delay(retry, random);
        retry_after.map_or(drawn, |after| after.max(drawn))
    }

    /// What follows an attempt that asked for a retry, `attempts` attempts and `elapsed`
    /// time into the request.
    pub(crate) fn next(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Next {
        if attempts >= self.max_attempts {
            return Next::Exhausted;
        }
        let wait = self.wait(attempts, retry_after, random);
        if elapsed.saturating_add(wait) >= self.deadline {
            return Next::Deadline;
        }
        Next::Wait(wait)
    }

    /// The time an attempt started `elapsed` into the request may take: its timeout, or what
    /// is left before the deadline if that is less.
    pub(crate) fn attempt_bound(&self, elapsed: Duration) -> Duration {
        self.attempt_timeout
            .min(self.deadline.saturating_sub(elapsed))
    }
}

/// A uniform draw from the operating system's random source. Jitter needs no secret, so a
/// failing source gives the middle of the range rather than an error.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::MAX / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .base(Duration::from_millis(100))
            .cap(Duration::from_secs(2))
            .max_attempts(5)
            .deadline(Duration::from_secs(10))
    }

    #[test]
    fn k5_the_ceiling_doubles_from_the_base_and_stops_at_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=7).map(|r| p.ceiling(r).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        // No overflow however many retries.
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(2));
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
    }

    #[test]
    fn k5_full_jitter_spans_zero_to_the_ceiling() {
        let p = policy();
        assert_eq!(p.delay(3, 0), Duration::ZERO);
        assert_eq!(p.delay(3, u64::MAX), Duration::from_millis(400));
        let half = p.delay(3, u64::MAX / 2);
        assert!(half > Duration::from_millis(199) && half < Duration::from_millis(201));
        // Random draws stay within the range.
        for _ in 0..1000 {
            let d = p.delay(4, random_u64());
            assert!(d <= Duration::from_millis(800), "{d:?}");
        }
        // Draws from the OS source are not all one value.
        let draws: std::collections::HashSet<u64> = (0..32).map(|_| random_u64()).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn k5_retry_after_is_a_floor_for_the_wait() {
        let p = policy();
        let after = Some(Duration::from_secs(1));
        assert_eq!(p.wait(1, after, 0), Duration::from_secs(1));
        assert_eq!(p.wait(1, after, u64::MAX), Duration::from_secs(1));
        // Above the cap, the server's wait is kept.
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(5)), 0),
            Duration::from_secs(5)
        );
        assert_eq!(p.wait(6, None, u64::MAX), Duration::from_secs(2));
    }

    #[test]
    fn k5_attempts_and_the_deadline_bound_the_request() {
        let p = policy();
        assert_eq!(
            p.next(1, Duration::ZERO, None, 0),
            Next::Wait(Duration::ZERO)
        );
        assert_eq!(p.next(5, Duration::ZERO, None, 0), Next::Exhausted);
        // A wait that would end at or past the deadline is not begun.
        assert_eq!(
            p.next(2, Duration::from_millis(9_900), None, u64::MAX),
            Next::Deadline
        );
        assert_eq!(
            p.next(2, Duration::from_secs(5), Some(Duration::from_secs(5)), 0),
            Next::Deadline
        );
        assert_eq!(
            p.next(2, Duration::from_secs(5), Some(Duration::from_secs(4)), 0),
            Next::Wait(Duration::from_secs(4))
        );
        // An attempt gets its timeout, or what is left of the deadline.
        let p = p.attempt_timeout(Duration::from_secs(3));
        assert_eq!(p.attempt_bound(Duration::ZERO), Duration::from_secs(3));
        assert_eq!(
            p.attempt_bound(Duration::from_secs(9)),
            Duration::from_secs(1)
        );
        assert_eq!(p.attempt_bound(Duration::from_secs(11)), Duration::ZERO);
        assert_eq!(RetryPolicy::default().max_attempts(0).attempts(), 1);
    }
}
