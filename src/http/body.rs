//! The body types the layer hands to the inner service and back to the server.
//!
//! Why: a guarded request's body is read whole before the store is asked (its fingerprint
//! needs it), and a guarded response's body is read before it is stored; unguarded traffic must
//! stream untouched. Each type is an enum of those cases, so nothing is boxed. Invariant: the
//! bytes a body yields are exactly the bytes it was given, in order, and its size hint is exact
//! when the parts it holds know theirs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The error type of the layer's bodies: the inner body's error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The request body the inner service receives: the bytes read by the layer (guarded
    /// requests), or the original body, streaming (everything else).
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn buffered(data: Bytes) -> Self {
        RequestBody {
            kind: RequestKind::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn streaming(body: B) -> Self {
        RequestBody {
            kind: RequestKind::Streaming { body },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            RequestKindProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            RequestKindProj::Streaming { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Buffered { data } => data.is_none(),
            RequestKind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestKind::Streaming { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RequestKind::Buffered { data } => f
                .debug_struct("RequestBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            RequestKind::Streaming { .. } => f.write_str("RequestBody::Streaming"),
        }
    }
}

pin_project! {
    /// The response body the server receives: bytes the layer holds (its own answers,
    /// replays, and responses it read to store), or the inner service's body, possibly after
    /// bytes already read from it (unguarded responses, and responses too large to store).
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Full { data: Option<Bytes> },
        Inner { head: Option<Bytes>, #[pin] body: B },
        Failed { error: Option<BoxError> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: ResponseKind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        ResponseBody::inner_after(Bytes::new(), body)
    }

    /// `head`, then the rest of `body`.
    pub(crate) fn inner_after(head: Bytes, body: B) -> Self {
        ResponseBody {
            kind: ResponseKind::Inner {
                head: (!head.is_empty()).then_some(head),
                body,
            },
        }
    }

    /// A body that fails at once: the inner body failed while the layer read it.
    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseBody {
            kind: ResponseKind::Failed { error: Some(error) },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            ResponseKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseKindProj::Inner { head, body } => match head.take() {
                Some(h) => Poll::Ready(Some(Ok(Frame::data(h)))),
                None => body
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(Into::into))),
            },
            ResponseKindProj::Failed { error } => Poll::Ready(error.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full { data } => data.is_none(),
            ResponseKind::Inner { head, body } => head.is_none() && body.is_end_stream(),
            ResponseKind::Failed { error } => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseKind::Inner { head, body } => {
                let extra = head.as_ref().map_or(0, |h| h.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            ResponseKind::Failed { .. } => SizeHint::default(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ResponseKind::Full { data } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            ResponseKind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            ResponseKind::Failed { .. } => f.write_str("ResponseBody::Failed"),
        }
    }
}
