//! The tower layer for hyper-based clients: every request retried under one policy, with one
//! idempotency key on every attempt.
//!
//! Why: Rust callers put retries in a tower layer around their client (hyper-util's, or any
//! `Service<http::Request<_>>`), and the key must be chosen once, before the first attempt,
//! and journaled when the caller has a journal. Invariants: the request's body is read once
//! and the same bytes are sent on every attempt, with the same `Idempotency-Key`; a request
//! without a key (in its headers, in an [`IdempotencyKey`] extension, or journaled through an
//! [`Operation`] extension) is refused, not sent, since retrying a keyless write can run it
//! twice; an operation is finished in the journal only on a final answer (an answer, a
//! conflict, a refusal), so one given up on stays pending and resumes with its key.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower_layer::Layer;
use tower_service::Service;

use super::error::{BoxError, RetryError};
use super::journal::{KeyJournal, WindowEnd};
use super::policy::RetryPolicy;
use super::retry::{RetryReport, drive, settled};

/// A request extension: send the request for this logical operation, under the key the
/// layer's [`KeyJournal`] holds for it (minted and made durable on the first call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation(String);

impl Operation {
    /// The operation named `id` (1 to 255 visible ASCII characters, checked by the journal).
    pub fn new(id: impl Into<String>) -> Operation {
        Operation(id.into())
    }

    /// The operation id.
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// A request extension: send the request with this idempotency key, as given (no journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key `key`.
    pub fn new(key: impl Into<String>) -> IdempotencyKey {
        IdempotencyKey(key.into())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Retries requests under a [`RetryPolicy`], with one idempotency key each.
///
/// ```
/// use http_body_util::Full;
/// use idemstore::client::{JournalConfig, KeyJournal, Operation, RetryLayer, RetryPolicy};
/// use tower::Layer;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let journal = KeyJournal::in_memory(JournalConfig::default())?;
/// let layer = RetryLayer::new(RetryPolicy::default()).journal(journal);
/// # let client = tower::service_fn(|_req: http::Request<Full<bytes::Bytes>>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::new())))
/// # });
/// // `client`: hyper-util's legacy `Client<_, Full<Bytes>>`, or any such service.
/// let service = layer.layer(client);
/// let mut request = http::Request::post("http://127.0.0.1:8080/v1/bookings")
///     .body(Full::new(bytes::Bytes::from(r#"{"start":"10:00"}"#)))?;
/// request.extensions_mut().insert(Operation::new("book-room-101"));
/// // service.call(request).await: the response, with a `RetryReport` extension.
/// # let _ = (service, request);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    journal: Option<KeyJournal>,
    header: HeaderName,
}

impl RetryLayer {
    /// A layer retrying under `policy`, without a journal: keys come from each request.
    pub fn new(policy: RetryPolicy) -> RetryLayer {
        RetryLayer {
            policy,
            journal: None,
            header: HeaderName::from_static("idempotency-key"),
        }
    }

    /// Takes keys for requests carrying an [`Operation`] from `journal`, and finishes the
    /// operation there on a final answer.
    pub fn journal(mut self, journal: KeyJournal) -> RetryLayer {
        self.journal = Some(journal);
        self
    }

    /// The header that carries the key. Default `Idempotency-Key`.
    pub fn header(mut self, header: HeaderName) -> RetryLayer {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`RetryLayer`]: its responses are buffered (`Full<Bytes>`) and carry a
/// [`RetryReport`] extension; a conflict, a refusal or a request given up on is a
/// [`RetryError`].
#[derive(Debug, Clone)]
pub struct RetryService<S> {
    inner: S,
    layer: RetryLayer,
}

/// The future of a [`RetryService`] call.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, RetryError>> + Send + 'static>>;

impl<S, B, RB> Service<Request<B>> for RetryService<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = RetryError;
    type Future = ResponseFuture;

    /// Always ready: each attempt waits for the readiness of its own clone of the inner
    /// service, so a retry never holds a slot it is not using.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), RetryError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move { layer.run(inner, request).await })
    }
}

impl RetryLayer {
    async fn run<S, B, RB>(
        &self,
        inner: S,
        request: Request<B>,
    ) -> Result<Response<Full<Bytes>>, RetryError>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone,
        S::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let operation = parts.extensions.get::<Operation>().cloned();
        let (key, window) = self.key_of(&parts, operation.as_ref()).await?;
        let value = HeaderValue::from_str(&key).map_err(|e| RetryError::Request(e.into()))?;
        parts.headers.insert(self.header.clone(), value);
        let body = body
            .collect()
            .await
            .map_err(|e| RetryError::Request(e.into()))?
            .to_bytes();
        // The closure owns the inner service (which need not be `Sync`) and borrows the rest.
        let (head, body) = (&parts, &body);
        let limit = self.policy.response_limit();
        let result = drive(&self.policy, &key, window.as_ref(), move || {
            let mut attempt = Request::new(Full::new(body.clone()));
            *attempt.method_mut() = head.method.clone();
            *attempt.uri_mut() = head.uri.clone();
            *attempt.version_mut() = head.version;
            *attempt.headers_mut() = head.headers.clone();
            *attempt.extensions_mut() = head.extensions.clone();
            send(inner.clone(), attempt, limit)
        })
        .await;
        self.finish(operation.as_ref(), &result).await;
        let (response, report) = result?;
        let (mut head, bytes) = response.into_parts();
        head.extensions.insert(report);
        Ok(Response::from_parts(head, Full::new(bytes)))
    }

    /// The request's key: its operation's, from the journal, with the end of its window;
    /// else an [`IdempotencyKey`] extension; else the header it already carries.
    async fn key_of(
        &self,
        parts: &http::request::Parts,
        operation: Option<&Operation>,
    ) -> Result<(String, Option<WindowEnd>), RetryError> {
        if let Some(op) = operation {
            let journal = self.journal.as_ref().ok_or(RetryError::NoKey)?;
            let entry = journal.key_for_async(op.id()).await?;
            return Ok((entry.key().to_owned(), Some(journal.window_end(&entry))));
        }
        if let Some(key) = parts.extensions.get::<IdempotencyKey>() {
            return Ok((key.as_str().to_owned(), None));
        }
        parts
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .map(|key| (key.to_owned(), None))
            .ok_or(RetryError::NoKey)
    }

    /// Records a final answer in the journal. A failure to record it is not the request's:
    /// the operation then stays pending, and resuming it gets the server's replay.
    async fn finish(
        &self,
        operation: Option<&Operation>,
        result: &Result<(http::Response<Bytes>, RetryReport), RetryError>,
    ) {
        let (Some(journal), Some(op)) = (&self.journal, operation) else {
            return;
        };
        if let Some(outcome) = settled(result) {
            let _ = journal.finish_async(op.id(), outcome).await;
        }
    }
}

/// One attempt through `inner`: readiness, the call, and the whole response body, of at most
/// `limit` bytes.
async fn send<S, RB>(
    mut inner: S,
    request: Request<Full<Bytes>>,
    limit: usize,
) -> Result<http::Response<Bytes>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = inner.call(request).await.map_err(Into::into)?;
    let (head, body) = response.into_parts();
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await?
        .to_bytes();
    Ok(http::Response::from_parts(head, bytes))
}
