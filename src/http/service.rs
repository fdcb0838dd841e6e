//! [`Idempotency`]: the middleware service.
//!
//! Why: this is where a request is sorted. Requests the contract does not guard, and requests
//! refused on their headers alone (no key, a bad key, no scope, a declared body over the
//! limit), are answered without any allocation beyond the response; only a guarded request
//! goes to the store, through one boxed future. Invariant: the inner service is called at
//! most once per request, and for a guarded request only after the store said `Execute`; a
//! request an outer layer already guards is passed on, so one request holds one key.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::answer::{self, code, too_large};
use super::body::{BoxError, RequestBody, ResponseBody};
use super::context::IdempotencyContext;
use super::future::ResponseFuture;
use super::guarded::guarded;
use super::layer::LayerState;
use super::outcome::Outcome;
use super::request::{KeyProblem, original_uri, read_key};

/// A service wrapped by [`IdempotencyLayer`](super::IdempotencyLayer): guarded requests run
/// once per (scope, key), and retries get the first response back.
pub struct Idempotency<S> {
    inner: S,
    shared: Arc<LayerState>,
}

impl<S: Clone> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Idempotency {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Idempotency<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<LayerState>) -> Self {
        Idempotency { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("contract", &self.shared.contract)
            .finish()
    }
}

impl<S> Idempotency<S> {
    /// An answer made at `call` time, counted by its outcome.
    fn early<F, ResBody, E>(
        &self,
        response: http::Response<ResponseBody<ResBody>>,
    ) -> ResponseFuture<F, ResBody, E> {
        if let Some(outcome) = response.extensions().get::<Outcome>() {
            self.shared.store.metrics().answered(*outcome);
        }
        ResponseFuture::early(response)
    }

    /// A request the layer does not guard, passed to the inner service as it is.
    fn unguarded<B, ResBody>(
        &mut self,
        req: Request<B>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    {
        self.shared.store.metrics().answered(Outcome::Unguarded);
        self.passed_on(req)
    }

    /// A request passed to the inner service as it is, uncounted: the outer layer that
    /// guards it counts it once.
    fn passed_on<B, ResBody>(
        &mut self,
        req: Request<B>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    {
        ResponseFuture::unguarded(self.inner.call(req.map(RequestBody::streaming)))
    }
}

impl<S, B, ResBody> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.extensions().get::<IdempotencyContext>().is_some() {
            // An outer idempotency layer already holds this request's key (H22): guarding it
            // again would find the key held by that very request and answer `409` for ever.
            return self.passed_on(req);
        }
        let contract = &self.shared.contract;
        let path = original_uri(req.uri(), req.extensions()).path();
        if !contract.guards(req.method(), path) {
            return self.unguarded(req);
        }
        let style = &contract.errors;
        let key = match read_key(req.headers(), contract, &self.shared.store) {
            Ok(key) => Some(key),
            Err(KeyProblem::Missing) if !contract.key_required => {
                return self.unguarded(req);
            }
            Err(KeyProblem::Missing) => None,
            Err(KeyProblem::Invalid(why)) => {
                return self.early(answer::error(
                    style,
                    StatusCode::BAD_REQUEST,
                    code::INVALID_KEY,
                    &format!("invalid {} header: {why}", contract.header),
                ));
            }
        };
        let (parts, body) = req.into_parts();
        let Some(scope) = (self.shared.scope)(&parts) else {
            return self.early(answer::error(
                style,
                StatusCode::UNAUTHORIZED,
                code::UNAUTHENTICATED,
                "the request carries no credentials to scope its idempotency key",
            ));
        };
        let Some(key) = key else {
            return self.early(answer::error(
                style,
                StatusCode::BAD_REQUEST,
                code::MISSING_KEY,
                &format!("this request requires an {} header", contract.header),
            ));
        };
        let declared = body.size_hint().lower();
        if declared > contract.max_request_body as u64 {
            return self.early(too_large(&self.shared));
        }
        // The ready service goes into the future; this handle keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        #[cfg(feature = "tracing")]
        let span = crate::trace::request_span(&scope, &key);
        let answering = guarded(Arc::clone(&self.shared), inner, parts, body, scope, key);
        #[cfg(feature = "metrics")]
        let store = self.shared.store.clone();
        let answering = async move {
            let answered = answering.await;
            if let Ok(response) = &answered
                && let Some(outcome) = response.extensions().get::<Outcome>()
            {
                crate::trace::answered(*outcome, response.status().as_u16());
                #[cfg(feature = "metrics")]
                store.metrics().answered(*outcome);
            }
            answered
        };
        #[cfg(feature = "tracing")]
        let answering = tracing::Instrument::instrument(answering, span);
        ResponseFuture::guarded(Box::pin(answering))
    }
}
