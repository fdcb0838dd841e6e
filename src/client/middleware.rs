//! The retry policy as a `reqwest-middleware` middleware (feature `client-reqwest`).
//!
//! Why: reqwest users add retries as a middleware of `reqwest_middleware::ClientWithMiddleware`;
//! this one keeps the policy, the classification and the key of the tower layer, so both
//! kinds of callers get one behaviour. Invariants: every attempt sends a clone of the same
//! request, with the same `Idempotency-Key`; a request whose body cannot be cloned (a stream)
//! is refused before it is sent, since it could not be sent again; the operation is finished
//! in the journal only on a final answer, as the layer does.

use bytes::Bytes;
use http::{Extensions, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use reqwest_middleware::{Middleware, Next};

use super::error::{BoxError, RetryError};
use super::journal::{KeyJournal, WindowEnd};
use super::layer::{IdempotencyKey, Operation};
use super::policy::RetryPolicy;
use super::retry::{RetryReport, drive, settled};

/// Retries reqwest requests under a [`RetryPolicy`], with one idempotency key each: the
/// journal's for a request carrying an [`Operation`] extension
/// (`RequestBuilder::with_extension`), else an [`IdempotencyKey`] extension, else the
/// request's own header. The final response carries a [`RetryReport`] extension; a stop is
/// `reqwest_middleware::Error::Middleware` holding a [`RetryError`] (reach it with
/// `anyhow::Error::downcast_ref`).
///
/// ```
/// use idemstore::client::{JournalConfig, KeyJournal, Operation, RetryMiddleware, RetryPolicy};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let journal = KeyJournal::in_memory(JournalConfig::default())?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryMiddleware::new(RetryPolicy::default()).journal(journal))
///     .build();
/// let request = client
///     .post("http://127.0.0.1:8080/v1/bookings")
///     .with_extension(Operation::new("book-room-101"))
///     .body(r#"{"start":"10:00"}"#);
/// // request.send().await: the response, or a RetryError inside the middleware error.
/// # let _ = request;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryMiddleware {
    policy: RetryPolicy,
    journal: Option<KeyJournal>,
    header: HeaderName,
}

impl RetryMiddleware {
    /// A middleware retrying under `policy`, without a journal.
    pub fn new(policy: RetryPolicy) -> RetryMiddleware {
        RetryMiddleware {
            policy,
            journal: None,
            header: HeaderName::from_static("idempotency-key"),
        }
    }

    /// Takes keys for requests carrying an [`Operation`] from `journal`, and finishes the
    /// operation there on a final answer.
    pub fn journal(mut self, journal: KeyJournal) -> RetryMiddleware {
        self.journal = Some(journal);
        self
    }

    /// The header that carries the key. Default `Idempotency-Key`.
    pub fn header(mut self, header: HeaderName) -> RetryMiddleware {
        self.header = header;
        self
    }

    async fn key_of(
        &self,
        request: &reqwest::Request,
        extensions: &Extensions,
        operation: Option<&Operation>,
    ) -> Result<(String, Option<WindowEnd>), RetryError> {
        if let Some(op) = operation {
            let journal = self.journal.as_ref().ok_or(RetryError::NoKey)?;
            let entry = journal.key_for_async(op.id()).await?;
            return Ok((entry.key().to_owned(), Some(journal.window_end(&entry))));
        }
        if let Some(key) = extensions.get::<IdempotencyKey>() {
            return Ok((key.as_str().to_owned(), None));
        }
        request
            .headers()
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .map(|key| (key.to_owned(), None))
            .ok_or(RetryError::NoKey)
    }

    async fn run(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<reqwest::Response, RetryError> {
        let operation = extensions.get::<Operation>().cloned();
        let (key, window) = self
            .key_of(&request, extensions, operation.as_ref())
            .await?;
        let value = HeaderValue::from_str(&key).map_err(|e| RetryError::Request(e.into()))?;
        request.headers_mut().insert(self.header.clone(), value);
        if request.try_clone().is_none() {
            return Err(RetryError::Request(
                "a streaming body cannot be sent again: give the request a body of bytes".into(),
            ));
        }
        let (template, shared) = (&request, &*extensions);
        let limit = self.policy.response_limit();
        let result = drive(&self.policy, &key, window.as_ref(), move || {
            let attempt = template.try_clone();
            let mut own = shared.clone();
            let next = next.clone();
            async move {
                let attempt = attempt.ok_or("the request could not be cloned")?;
                let response = next.run(attempt, &mut own).await?;
                let response: http::Response<reqwest::Body> = response.into();
                let (head, body) = response.into_parts();
                let bytes: Bytes = http_body_util::Limited::new(body, limit)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, BoxError>(http::Response::from_parts(head, bytes))
            }
        })
        .await;
        if let (Some(journal), Some(op), Some(outcome)) =
            (&self.journal, &operation, settled(&result))
        {
            // Not the request's failure: the operation stays pending, and a resume replays.
            let _ = journal.finish_async(op.id(), outcome).await;
        }
        let (mut response, report): (http::Response<Bytes>, RetryReport) = result?;
        response.extensions_mut().insert(report);
        Ok(reqwest::Response::from(response))
    }
}

#[async_trait::async_trait]
impl Middleware for RetryMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.run(request, extensions, next)
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }
}
