//! [`ResponseFuture`]: the future of the middleware's responses, and nothing else.
//!
//! Why: an answer known at `call` time (a refusal, an unguarded pass-through) is a variant of
//! the future, not a boxed one; only a guarded request (`guarded.rs`) is one boxed future.
//! Invariant: polled after it is done, the future stays pending rather than panic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::outcome::Outcome;

/// The guarded path's future, boxed once.
pub(crate) type Guarded<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<ResBody>>, E>> + Send>>;

pin_project! {
    /// The future of [`Idempotency`](super::Idempotency)'s responses.
    pub struct ResponseFuture<F, ResBody, E> {
        #[pin]
        kind: Kind<F, ResBody, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, ResBody, E> {
        // An answer made without the store or the inner service.
        Early { response: Option<Response<ResponseBody<ResBody>>> },
        // A request the contract does not guard: the inner service's future, as it is.
        Unguarded { #[pin] future: F },
        // A guarded request.
        Guarded { future: Guarded<ResBody, E> },
    }
}

impl<F, ResBody, E> ResponseFuture<F, ResBody, E> {
    pub(crate) fn early(response: Response<ResponseBody<ResBody>>) -> Self {
        ResponseFuture {
            kind: Kind::Early {
                response: Some(response),
            },
        }
    }

    pub(crate) fn unguarded(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Unguarded { future },
        }
    }

    pub(crate) fn guarded(future: Guarded<ResBody, E>) -> Self {
        ResponseFuture {
            kind: Kind::Guarded { future },
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Early { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: stay pending rather than panic.
                None => Poll::Pending,
            },
            KindProj::Unguarded { future } => future.poll(cx).map(|r| {
                r.map(|res| {
                    let mut res = res.map(ResponseBody::inner);
                    res.extensions_mut().insert(Outcome::Unguarded);
                    res
                })
            }),
            KindProj::Guarded { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, ResBody, E> std::fmt::Debug for ResponseFuture<F, ResBody, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Early { .. } => "Early",
            Kind::Unguarded { .. } => "Unguarded",
            Kind::Guarded { .. } => "Guarded",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
