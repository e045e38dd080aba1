//! Body types: boxed streaming bodies and a request-body size bound that fails mid-stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the proxy answers with and forwards.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The request body exceeded `[server] max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Passes a body through, failing with [`BodyTooLarge`] once more than `max` bytes went by.
/// Nothing is buffered.
pub struct Bounded<B> {
    inner: B,
    seen: u64,
    max: u64,
}

impl<B> Bounded<B> {
    /// Wraps a body.
    pub fn new(inner: B, max: u64) -> Self {
        Self {
            inner,
            seen: 0,
            max,
        }
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.max {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.max)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (or anything in its source chain) is a [`BodyTooLarge`].
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// What went wrong on the client's side of a request (not the upstream's): counted as
/// `palisade_client_errors_total{kind}`, answered as the client's fault, logged sparingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The client stopped reading its answer, or read it slower than `min_send_rate`.
    SlowRead,
    /// The client stopped sending its body, or sent it slower than `min_receive_rate`.
    SlowBody,
    /// The client went away (closed or reset) before its body ended.
    Aborted,
    /// The body's chunked framing was broken.
    MalformedBody,
    /// The request head could not be accepted (400, 417, 431, 501 before any policy).
    BadHead,
}

impl ClientFault {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            ClientFault::SlowRead => "slow_read",
            ClientFault::SlowBody => "slow_body",
            ClientFault::Aborted => "aborted",
            ClientFault::MalformedBody => "malformed_body",
            ClientFault::BadHead => "bad_head",
        }
    }

    /// Every kind, for pre-registering the metric.
    pub const ALL: [ClientFault; 5] = [
        ClientFault::SlowRead,
        ClientFault::SlowBody,
        ClientFault::Aborted,
        ClientFault::MalformedBody,
        ClientFault::BadHead,
    ];
}

/// A failure reading the client's request body: wraps what the server that read it said, so
/// that anything further along (the upstream client, a bounded read) can tell the client's
/// fault from the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body: {source}")]
pub struct ClientBodyError {
    /// What went wrong.
    pub fault: ClientFault,
    /// What the server that read the body said.
    #[source]
    pub source: BoxError,
}

/// The client fault somewhere in an error's source chain, if any.
pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ClientBodyError>() {
            return Some(c.fault);
        }
        cur = e.source();
    }
    None
}
