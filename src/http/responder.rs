//! [`ErrorAnswer`] and the error-responder hook: how the layer's own error answers are shaped,
//! in one of the built-in [`ErrorStyle`]s or by the application's own function.
//!
//! Why: an API has its own error envelope (a `errors` array, a trace id, a documentation
//! link), and the layer's refusals must look like the rest of its answers. Invariants: every
//! error the layer makes goes through [`Errors::respond`], so one hook shapes them all (a
//! refusal, a conflict, an in-progress, a `503`, and the note stored in place of a response
//! too large to keep); the hook shapes the answer but does not decide it: the layer still adds
//! `Retry-After` to an in-progress answer and tags the response with its
//! [`Outcome`](super::Outcome) by the error's code, whatever status the hook chose.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::answer::error_body;
use super::contract::ErrorStyle;

/// An error the layer is about to answer, as an error responder sees it
/// ([`Contract::error_responder`](super::Contract::error_responder)).
#[derive(Debug, Clone, Copy)]
pub struct ErrorAnswer<'a> {
    status: StatusCode,
    code: &'a str,
    message: &'a str,
}

impl<'a> ErrorAnswer<'a> {
    /// The status the layer would answer (`400`, `401`, `409`, `413`, `422`, `429`, `503`...).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code, one of [`code`](super::code): stable across versions, the
    /// thing to branch on.
    pub fn code(&self) -> &'a str {
        self.code
    }

    /// A sentence for people; its wording may change.
    pub fn message(&self) -> &'a str {
        self.message
    }

    /// The body the layer would send in `style`, and its content type: for a responder that
    /// only wraps or adds to the built-in answer.
    pub fn body_in(&self, style: ErrorStyle) -> (&'static str, String) {
        error_body(style, self.status, self.code, self.message)
    }
}

/// The application's error responder.
pub(crate) type Responder = Arc<dyn Fn(&ErrorAnswer<'_>) -> Response<Bytes> + Send + Sync>;

/// How a contract shapes its error answers.
#[derive(Clone, Default)]
pub(crate) struct Errors {
    pub(crate) style: ErrorStyle,
    pub(crate) responder: Option<Responder>,
}

impl Errors {
    /// The error answer for (`status`, `code`, `message`): the responder's, or the built-in
    /// body in the contract's style.
    pub(crate) fn respond(&self, status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
        let answer = ErrorAnswer {
            status,
            code,
            message,
        };
        if let Some(responder) = &self.responder {
            return responder(&answer);
        }
        let (content_type, body) = answer.body_in(self.style);
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    /// The body and content type of the error, for a body stored in place of another (a
    /// responder's answer without a content type is stored without one).
    pub(crate) fn body(&self, status: StatusCode, code: &str, message: &str) -> (Vec<u8>, Bytes) {
        let response = self.respond(status, code, message);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        (content_type, response.into_body())
    }
}

impl fmt::Debug for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Errors")
            .field("style", &self.style)
            .field("responder", &self.responder.as_ref().map(|_| "custom"))
            .finish()
    }
}
