//! The guarded path: read the body, ask the store, run the inner service, store its response,
//! answer.
//!
//! Why: this is the one place where a request, the store and the inner service meet, in the
//! order the rules fix; [`ResponseFuture`](super::ResponseFuture) only drives it.
//!
//! Invariants, in order: the request body is read whole, up to the limit, before the store is
//! asked (rule H9); the inner service runs only after `Execute`; once it has been called, the
//! call runs to completion even if the client goes away, or leaves its key in flight until the
//! lease ends (`run.rs`, rule H11); the reservation is released when no response is stored
//! because the service failed or panicked, its status is not kept (C6, C7), or its body
//! failed or panicked; the lease is renewed from the call until the response is stored
//! (H16); a stored response is durable before the client sees it (C10); a response too large
//! to keep is stored as its status and headers with a note for a body (or its status alone,
//! under a limit too small for the note), so a retry never runs the operation again.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::answer::{self, code, too_large};
use super::body::{BoxError, RequestBody, ResponseBody};
use super::context::{Handled, Hold, IdempotencyContext};
use super::contract::OnStoreError;
use super::layer::LayerState;
use super::outcome::Outcome;
use super::request::fingerprint;
use super::run::{Detached, Started, Task, bounded};
use crate::reply;
use crate::rules::key::KeyHash;
use crate::sleep::Sleep;
use crate::store::Lease;
use crate::store::woken_before;
use crate::{Begin, BeginError, Key, LeaseError, Scope, Unavailable};

/// Renews a lease every `every` until the reservation is gone (completed, released or taken
/// over) or the store is closed or poisoned, then waits forever: polled beside the call,
/// never awaited alone. A renewal the store could not answer for now (a Redis timeout, a
/// refused command) does not end them: the next one may land before the lease ends, and
/// without it a retry would take over a key whose call still runs.
type Renewing = Pin<Box<dyn Future<Output = ()> + Send>>;

fn keep_renewed(lease: Lease, every: Duration) -> Renewing {
    renewing(
        move || {
            let lease = lease.clone();
            async move { lease.renew().await }
        },
        every,
    )
}

/// [`keep_renewed`] over any renewal: `renew` answers the new deadline or why not.
fn renewing<R, F>(mut renew: R, every: Duration) -> Renewing
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<u64, LeaseError>> + Send,
{
    Box::pin(async move {
        loop {
            Sleep::new(every).await;
            match renew().await {
                Ok(_) => {}
                Err(LeaseError::Unavailable(e)) if passing(&e) => {}
                Err(_) => break,
            }
        }
        std::future::pending::<()>().await;
    })
}

/// Whether a store that could not answer may answer a later call: the reservation may still
/// hold its key, so renewals go on.
fn passing(e: &Unavailable) -> bool {
    matches!(
        e,
        Unavailable::Unreachable { .. }
            | Unavailable::Refused { .. }
            | Unavailable::OutcomeUnknown { .. }
            | Unavailable::Io { .. }
    )
}

pin_project! {
    /// A call under its reservation, with the renewals of the reservation's lease polled
    /// beside it: from the inner service's call until its response is stored (or the key let
    /// go), since a response body can take longer than a lease to produce.
    struct Renewed<F> {
        renewing: Option<Renewing>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Renewed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.future.poll(cx);
        if polled.is_pending()
            && let Some(renewing) = this.renewing.as_mut()
        {
            let _ = renewing.as_mut().poll(cx);
        }
        polled
    }
}

pin_project! {
    /// The inner service's future with the reservation it runs under.
    struct Executing<F> {
        started: Option<Started>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Executing<F> {
    type Output = (Option<Started>, F::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The handler's own panic releases its key (C6); any other way this future is dropped
        // leaves the key in flight (`Started`).
        let polled = catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx)));
        let out = match polled {
            Ok(Poll::Ready(out)) => out,
            Ok(Poll::Pending) => return Poll::Pending,
            Err(payload) => {
                if let Some(started) = this.started.take() {
                    started.release();
                }
                resume_unwind(payload)
            }
        };
        Poll::Ready((this.started.take(), out))
    }
}

/// The guarded path: read, ask the store, run, store, answer.
pub(crate) async fn guarded<S, B, ResBody>(
    shared: Arc<LayerState>,
    mut inner: S,
    parts: Parts,
    body: B,
    scope: Scope,
    key: Key,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let contract = &shared.contract;
    let style = &contract.errors;
    let bytes = match Limited::new(body, contract.max_request_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Ok(too_large(&shared)),
        Err(e) => {
            return Ok(answer::error(
                style,
                StatusCode::BAD_REQUEST,
                code::UNREADABLE,
                &format!("the request body could not be read: {e}"),
            ));
        }
    };
    let (parts, fp) = match fingerprint_off_runtime(&shared, parts, &bytes).await {
        Some(done) => done,
        None => {
            return Ok(answer::error(
                style,
                StatusCode::SERVICE_UNAVAILABLE,
                code::UNAVAILABLE,
                "the request's fingerprint could not be computed",
            ));
        }
    };
    let asked = Instant::now();
    let begun = if contract.wait_in_progress.is_zero() {
        shared
            .store
            .begin_with_async(&scope, &key, &fp, shared.terms)
            .await
    } else {
        let within = contract.wait_in_progress;
        shared
            .store
            .begin_waiting_with_async(&scope, &key, &fp, within, shared.terms)
            .await
    };
    crate::trace::store_latency(asked.elapsed());
    let reservation = match begun {
        Ok(Begin::Execute(reservation)) => Some(reservation),
        Ok(Begin::Replay(stored)) => {
            if let Some(coding) = answer::unaccepted_coding(&stored, &parts.headers) {
                return Ok(answer::error(
                    style,
                    StatusCode::NOT_ACCEPTABLE,
                    code::REPLAY_NOT_ACCEPTABLE,
                    &format!(
                        "the operation ran once; its stored response is encoded with {coding}, which this request's Accept-Encoding refuses"
                    ),
                ));
            }
            return Ok(answer::replay(&stored, &contract.replay_header));
        }
        Ok(Begin::InProgress { retry_after }) => {
            return Ok(answer::in_progress(style, retry_after));
        }
        Ok(Begin::Conflict) => {
            return Ok(answer::error(
                style,
                contract.conflict.status(),
                code::CONFLICT,
                "this idempotency key was already used for a different request",
            ));
        }
        Ok(Begin::OutcomeUnknown) => {
            // E6: no Retry-After, since only the service's operators can end this.
            return Ok(answer::error(
                style,
                StatusCode::CONFLICT,
                code::OUTCOME_UNKNOWN,
                "the first attempt with this idempotency key was cut short and whether it took effect is not known yet; it is being resolved, so do not retry with a new key",
            ));
        }
        Err(BeginError::ScopeFull { limit }) => {
            return Ok(answer::error(
                style,
                StatusCode::TOO_MANY_REQUESTS,
                code::SCOPE_FULL,
                &format!(
                    "this account holds {limit} live idempotency keys, the most kept for one; new keys are taken again as old ones expire"
                ),
            ));
        }
        Err(BeginError::InvalidKey(e)) => {
            return Ok(answer::error(
                style,
                StatusCode::BAD_REQUEST,
                code::INVALID_KEY,
                &format!("invalid {} header: {e}", contract.header),
            ));
        }
        Err(e) => match contract.on_store_error {
            OnStoreError::FailOpen => None,
            _ => {
                return Ok(answer::error(
                    style,
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::UNAVAILABLE,
                    &format!("the idempotency store cannot answer: {e}"),
                ));
            }
        },
    };
    // No reservation: the store could not answer and the contract fails open.
    let unprotected = reservation.is_none();
    // Counted from here, so that `IdempotencyLayer::idle` waits for this call.
    let running = shared.running.enter();
    let mut parts = parts;
    let hold = reservation.map(|r| {
        let (token, lease_deadline) = (r.token(), r.lease_deadline());
        let recovery = r.recovery_point().cloned();
        let hold = Hold::new(r);
        parts.extensions.insert(IdempotencyContext {
            scope,
            key,
            fingerprint: fp,
            token,
            lease_deadline,
            recovery,
            hold: Arc::clone(&hold),
        });
        hold
    });
    let request = Request::from_parts(parts, RequestBody::buffered(bytes));
    let call = execute(Arc::clone(&shared), Started::new(hold), inner.call(request));
    let (tx, rx) = reply::channel();
    // Set when this future is dropped: the client is gone, and a spawned call that outlives
    // its lease may be given up (`run.rs`).
    let gone = Detached::default();
    let _mark = gone.mark_on_drop();
    let run = async move {
        let _running = running;
        let _ = tx.send(call.await);
    };
    let task: Task = Box::pin(bounded(run, shared.terms.lease(), gone.clone()));
    if let Err(task) = shared.executor.spawn(task) {
        // Nowhere to spawn: the call runs in this future, and a cancelled call abandons its
        // key (`Started`).
        task.await;
    }
    let answered = match rx.await {
        Ok(out) => out,
        // The task ended without an answer: the handler panicked (its key is released), or
        // the executor dropped the task (its key stays in flight until the lease ends).
        Err(_) => Ok(answer::error(
            style,
            StatusCode::INTERNAL_SERVER_ERROR,
            code::HANDLER_FAILED,
            "the request's handler stopped without an answer",
        )),
    };
    let outcome = if unprotected {
        Outcome::Unprotected
    } else {
        Outcome::Executed
    };
    answered.map(|mut response| {
        response.extensions_mut().insert(outcome);
        response
    })
}

/// Bodies above this are fingerprinted on the runtime's blocking pool (feature `tokio`): the
/// canonical form of a crafted 1 MiB JSON body takes milliseconds of CPU, which must not be
/// taken from the async workers that serve every other request.
const FINGERPRINT_INLINE_MAX: usize = 64 * 1024;

/// The request's fingerprint, computed off the async workers when the body is large and a
/// tokio runtime is at hand. `None` if the blocking task was lost (the runtime shut down).
async fn fingerprint_off_runtime(
    shared: &Arc<LayerState>,
    parts: Parts,
    bytes: &Bytes,
) -> Option<(Parts, crate::Fingerprint)> {
    #[cfg(feature = "tokio")]
    if bytes.len() > FINGERPRINT_INLINE_MAX
        && let Ok(handle) = tokio::runtime::Handle::try_current()
    {
        let (shared, bytes) = (Arc::clone(shared), bytes.clone());
        return handle
            .spawn_blocking(move || {
                let fp = fingerprint(&parts, &bytes, &shared.contract);
                (parts, fp)
            })
            .await
            .ok();
    }
    let _ = FINGERPRINT_INLINE_MAX;
    let fp = fingerprint(&parts, bytes, &shared.contract);
    Some((parts, fp))
}

/// Runs the inner service's future under its reservation, then stores and answers, renewing
/// the lease all along (H16).
async fn execute<F, ResBody, E>(
    shared: Arc<LayerState>,
    started: Started,
    future: F,
) -> Result<Response<ResponseBody<ResBody>>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    // A third of a lease: a renewal that is late by less than that still lands in time.
    let every = shared.terms.lease() / 3;
    let renewing = started.lease().map(|lease| keep_renewed(lease, every));
    Renewed {
        renewing,
        future: run_and_store(shared, started, future),
    }
    .await
}

/// Runs the inner service's future under its reservation, then stores and answers.
async fn run_and_store<F, ResBody, E>(
    shared: Arc<LayerState>,
    started: Started,
    future: F,
) -> Result<Response<ResponseBody<ResBody>>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (started, result) = Executing {
        started: Some(started),
        future,
    }
    .await;
    // `Executing` hands the reservation back with the output.
    let Some(started) = started else {
        return result.map(|r| r.map(ResponseBody::inner));
    };
    if let Some(handled) = started.handled() {
        // The handler completed the reservation with its own writes: what it stored is the
        // answer, as every retry will get it; if it stored nothing, its own response goes out
        // unstored (the key is released). A handler that dropped or spawned its completion's
        // future returns before knowing: the store then says what the completion left.
        let stored = match (handled, started.held_key()) {
            (Handled::Stored(stored), _) => Some(stored),
            (Handled::Pending, Some((at, token))) => {
                settled(&shared.store, (at, token), shared.terms.lease()).await
            }
            (Handled::Nothing | Handled::Pending, _) => None,
        };
        return match stored {
            Some(stored) => Ok(answer::stored_response(&stored)),
            None => result.map(|r| r.map(ResponseBody::inner)),
        };
    }
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            // The service failed: the key is released (C6).
            started.release();
            return Err(e);
        }
    };
    if !started.holds() {
        // Failed open: nothing to store.
        return Ok(response.map(ResponseBody::inner));
    }
    if !shared
        .terms
        .cache_policy()
        .keeps(response.status().as_u16())
    {
        started.release();
        return Ok(response.map(ResponseBody::inner));
    }
    store_and_answer(&shared, started, response).await
}
/// What a completion the handler took left under reservation `token`: the stored response, or
/// nothing (it failed, or the key moved on). While the key is still in flight under that
/// token (the completion is queued), waits for it to settle, within the route's `lease`. Its
/// look at the record is a read on this thread (no writer round trip unless a dropped
/// reservation's release is queued): taken only when a handler let go of its completion's
/// future, never on the path of one that awaited it.
async fn settled(
    store: &crate::Store,
    ((hash, scope), token): ((KeyHash, Scope), u64),
    lease: std::time::Duration,
) -> Option<crate::Response> {
    let until = Instant::now().checked_add(lease);
    loop {
        let woken = store.watch(hash);
        match store.record_of((hash, &scope)) {
            Ok(Some(r)) if r.token == token && r.state == crate::State::Completed => {
                return r.response;
            }
            Ok(Some(r)) if r.token == token => {}
            _ => return None,
        }
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) || !woken_before(woken, left.map(Sleep::new)).await {
            return None;
        }
    }
}

/// Reads the response body (up to what can be stored), completes the reservation, and
/// returns the response.
async fn store_and_answer<ResBody, E>(
    shared: &LayerState,
    started: Started,
    response: Response<ResBody>,
) -> Result<Response<ResponseBody<ResBody>>, E>
where
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (parts, mut body) = response.into_parts();
    let contract = &shared.contract;
    let status = parts.status;
    // In the order the service sent them.
    let kept: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(name, _)| contract.replayed_headers.contains(name))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let base = crate::Response::new(status.as_u16(), kept.iter().cloned(), Vec::new());
    let budget = shared.max_stored.saturating_sub(base.encoded_len());
    let mut buf = BytesMut::new();
    let mut oversized = false;
    loop {
        // A body that panics is the handler's work failing: its key is released (C6), as
        // for a handler that panics, before the panic goes on to the task.
        let polled = std::future::poll_fn(|cx| {
            match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut body).poll_frame(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(frame)) => Poll::Ready(Ok(frame)),
                Err(payload) => Poll::Ready(Err(payload)),
            }
        })
        .await;
        let frame = match polled {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(payload) => {
                started.release();
                resume_unwind(payload)
            }
        };
        match frame {
            Ok(frame) => {
                // Trailers are neither stored nor forwarded.
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > budget {
                        oversized = true;
                        break;
                    }
                }
            }
            Err(e) => {
                // The response cannot be told whole: the key is released (C6), and the client
                // sees the body fail as it would have without the layer.
                started.release();
                return Ok(Response::from_parts(parts, ResponseBody::failed(e.into())));
            }
        }
    }
    let read = buf.freeze();
    let fits = |r: &crate::Response| r.encoded_len() <= shared.max_stored;
    let whole =
        (!oversized).then(|| crate::Response::new(status.as_u16(), kept.clone(), read.to_vec()));
    let stored = match whole {
        Some(r) if fits(&r) => Some(r),
        // Too large (the body, or the headers kept with it): a note in its place, with the
        // status and what says where and which version the result is (`Location`, `ETag`,
        // `Last-Modified`); the headers that describe the original body do not describe the
        // note. With no room even for those, the note alone.
        _ => {
            let (content_type, note) = answer::not_kept_body(&contract.errors, status, read.len());
            let content_type = (CONTENT_TYPE.as_str().to_owned(), content_type);
            let about_result = kept
                .iter()
                .filter(|(n, _)| {
                    [LOCATION, ETAG, LAST_MODIFIED]
                        .iter()
                        .any(|h| n.eq_ignore_ascii_case(h.as_str()))
                })
                .cloned();
            let noted = crate::Response::new(
                status.as_u16(),
                about_result.chain([content_type.clone()]),
                note.clone(),
            );
            let bare = crate::Response::new(status.as_u16(), [content_type], note);
            // With no room for the note (a limit of a few dozen bytes), the status alone:
            // a retry must still find the operation done.
            let no_headers: [(String, Vec<u8>); 0] = [];
            let status_only = crate::Response::new(status.as_u16(), no_headers, Vec::new());
            [noted, bare, status_only].into_iter().find(fits)
        }
    };
    let Some(stored) = stored else {
        // Not even the status fits, which `IdempotencyLayer::new` refuses (its floor is
        // above a status alone): release, C6.
        started.release();
        return Ok(Response::from_parts(
            parts,
            full_or_rest(oversized, read, body),
        ));
    };
    if let Some(reservation) = started.take() {
        // The operation ran: whatever the store answers, the client gets its response. A
        // failed completion leaves the key to its lease (or releases it), never stores a
        // wrong answer. The completion is queued before this awaits, so a dropped future
        // cannot lose it.
        let _ = reservation.complete_async(stored).await;
    }
    // The bytes sent are the bytes the service made, so its headers (a Content-Length among
    // them) stay true.
    Ok(Response::from_parts(
        parts,
        full_or_rest(oversized, read, body),
    ))
}

/// The body the client gets: what was read, and, when reading stopped at the limit, the rest
/// of the service's body after it.
fn full_or_rest<B>(oversized: bool, read: Bytes, rest: B) -> ResponseBody<B> {
    if oversized {
        ResponseBody::inner_after(read, rest)
    } else {
        ResponseBody::full(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many renewals are made over `script`, the answers they get in turn, before they stop.
    fn calls_made(script: Vec<Result<u64, LeaseError>>) -> usize {
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let mut script = script.into_iter();
        let mut renewals = renewing(
            move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::ready(script.next().unwrap_or(Ok(0)))
            },
            Duration::ZERO,
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Each poll makes renewals until one is pending or they stop: a few polls more than
        // the script show whether they stopped.
        for _ in 0..8 {
            assert!(renewals.as_mut().poll(&mut cx).is_pending());
            if made.load(std::sync::atomic::Ordering::SeqCst) > 16 {
                break;
            }
        }
        made.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn h16_renewals_go_on_past_a_store_that_cannot_answer_for_now_and_stop_when_the_key_is_gone() {
        let refused = || {
            Err(LeaseError::Unavailable(Unavailable::Refused {
                detail: "busy".into(),
            }))
        };
        let script = vec![
            refused(),
            refused(),
            Ok(7),
            Err(LeaseError::NotReserved { token: 1 }),
        ];
        assert_eq!(calls_made(script), 4);
        let fenced = LeaseError::Fenced {
            token: 1,
            current: 2,
        };
        assert_eq!(calls_made(vec![Ok(7), Err(fenced)]), 2);
        assert_eq!(
            calls_made(vec![Err(LeaseError::Unavailable(Unavailable::Closed))]),
            1
        );
    }
}
