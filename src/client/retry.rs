//! The attempt loop shared by the tower layer and the reqwest middleware: send, sort the
//! answer, wait, send again with the same request, until an answer, a stop or the policy's
//! end.
//!
//! Why: one loop means one behaviour, however the caller sends. Invariants: every attempt
//! sends the same method, URI, headers (the idempotency key among them) and body bytes; an
//! attempt is bounded by the policy's attempt timeout and by the deadline, its response
//! body included, so a slow or stalled answer is a timeout and not a hang; no attempt of a
//! journaled operation is sent once its window has ended (K3); waits and timeouts use the
//! crate's own timer, so the loop runs on any executor.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sleep::Sleep;

use super::classify::{Verdict, classify, is_replay};
use super::error::{BoxError, Failure, RetryError};
use super::journal::{Outcome, WindowEnd};
use super::policy::{Next, RetryPolicy, random_u64};

/// What a retried request ended with, as a response extension (the tower layer) or beside
/// the response (the reqwest middleware).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryReport {
    /// Attempts made, the last included.
    pub attempts: u32,
    /// Whether the server marked the final answer a replay (`Idempotent-Replay: true`): an
    /// earlier attempt, or an earlier run, had already done the work.
    pub replayed: bool,
    /// The idempotency key sent on every attempt.
    pub key: String,
}

/// What the retry loop's `result` settles about its operation, for the journal (K4): the
/// server's word on the request (an answer handed back, a conflict, a refusal), or `None`,
/// and the operation stays pending. An answer other than a success or a replay, after
/// attempts whose fate is unknown, settles nothing: a `401` once a token expired, a `404`
/// from a proxy, say nothing of whether an earlier attempt ran.
pub(crate) fn settled(
    result: &Result<(http::Response<Bytes>, RetryReport), RetryError>,
) -> Option<Outcome> {
    match result {
        Ok((response, report))
            if report.attempts == 1 || report.replayed || response.status().is_success() =>
        {
            Some(Outcome::Answered {
                status: response.status().as_u16(),
                replayed: report.replayed,
            })
        }
        Err(RetryError::Conflict { status, .. } | RetryError::Rejected { status, .. }) => {
            Some(Outcome::Answered {
                status: *status,
                replayed: false,
            })
        }
        _ => None,
    }
}

/// Sends with `attempt` until an answer, a stop, the policy's end or the end of the
/// journaled operation's `window`. `attempt` gives a future of one whole attempt, its body
/// read.
pub(crate) async fn drive<F, Fut>(
    policy: &RetryPolicy,
    key: &str,
    window: Option<&WindowEnd>,
    mut attempt: F,
) -> Result<(http::Response<Bytes>, RetryReport), RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<http::Response<Bytes>, BoxError>>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let bound = policy.attempt_bound(start.elapsed());
        let (last, retry_after) = match within(bound, attempt()).await {
            None => (Failure::Timeout, None),
            Some(Err(e)) => (Failure::Transport(e), None),
            Some(Ok(response)) => {
                let verdict = classify(response.status(), response.headers(), response.body());
                let status = response.status().as_u16();
                match verdict {
                    Verdict::Retry { after } => (Failure::Status(status), after),
                    Verdict::Conflict => {
                        return Err(RetryError::Conflict {
                            status,
                            body: response.into_body(),
                            attempts,
                        });
                    }
                    Verdict::OutcomeUnknown => {
                        return Err(RetryError::OutcomeUnknown {
                            body: response.into_body(),
                            attempts,
                        });
                    }
                    Verdict::Rejected { code } => {
                        return Err(RetryError::Rejected {
                            status,
                            code,
                            body: response.into_body(),
                            attempts,
                        });
                    }
                    // `Verdict` may grow; an unknown verdict is an answer, never a loop.
                    _ => {
                        let report = RetryReport {
                            attempts,
                            replayed: is_replay(response.headers()),
                            key: key.to_owned(),
                        };
                        return Ok((response, report));
                    }
                }
            }
        };
        let wait = match policy.next(attempts, start.elapsed(), retry_after, random_u64()) {
            Next::Wait(wait) => wait,
            Next::Exhausted => return Err(RetryError::Exhausted { attempts, last }),
            Next::Deadline => return Err(RetryError::Deadline { attempts, last }),
        };
        // As for the deadline, no wait is begun that would end at or past the window's end:
        // a `Retry-After` (the server's to choose) could otherwise hold the caller for as
        // long as the server says, only to send nothing after it.
        if window.is_some_and(|end| wait >= end.left()) {
            return Err(RetryError::WindowEnded { attempts, last });
        }
        Sleep::new(wait).await;
        if window.is_some_and(WindowEnd::passed) {
            return Err(RetryError::WindowEnded { attempts, last });
        }
    }
}

/// `f`'s output, or `None` if `bound` passes first (a zero bound still polls `f` once).
pub(crate) async fn within<F: Future>(bound: Duration, f: F) -> Option<F::Output> {
    let (mut f, mut timer) = (pin!(f), pin!(Sleep::new(bound)));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}
