//! Body types. Request bodies are forwarded as they arrive; response bodies are either a
//! small buffer the proxy made or the upstream's stream, passed frame by frame. Nothing
//! is ever collected, so a multi-GiB blob costs a few buffers of memory.
//!
//! A [`ResponseBody`] carries a [`Meter`]: it counts the bytes sent and, when the body is
//! dropped (finished, or the client went away), emits the access log line and releases
//! the connection's in-flight mark.

use crate::log::AccessRecord;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the upstream client sends: the client's body, possibly capped, or nothing.
pub type RequestBody = BoxBody<Bytes, BoxError>;

enum Inner {
    Bytes(Option<Bytes>),
    Upstream(Incoming),
}

/// The body of every response the proxy sends.
pub struct ResponseBody {
    inner: Inner,
    meter: Option<Meter>,
}

/// Counts what is sent and reports it once, when the body is dropped.
pub struct Meter {
    pub record: AccessRecord,
    bytes: u64,
    complete: bool,
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::with(Inner::Bytes(None))
    }
    pub fn full(b: Bytes) -> Self {
        Self::with(Inner::Bytes((!b.is_empty()).then_some(b)))
    }
    pub fn upstream(b: Incoming) -> Self {
        Self::with(Inner::Upstream(b))
    }
    fn with(inner: Inner) -> Self {
        ResponseBody { inner, meter: None }
    }
    /// Attaches the access record; it is emitted when the body is done.
    pub fn metered(mut self, mut record: AccessRecord) -> Self {
        let complete = self.is_end_stream();
        if let Some(f) = &mut record.in_flight {
            f.head_sent();
        }
        self.meter = Some(Meter {
            record,
            bytes: 0,
            complete,
        });
        self
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record.emit(self.bytes, self.complete);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Bytes(b) => b.take().map(|b| Ok(Frame::data(b))),
            Inner::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
        };
        let end = polled.is_none() || this.is_end_stream();
        if let Some(m) = &mut this.meter {
            if let Some(Ok(frame)) = &polled {
                if let Some(d) = frame.data_ref() {
                    m.bytes += d.len() as u64;
                    m.record.metrics.sent_bytes.add(d.len() as u64);
                }
                if let Some(f) = &m.record.in_flight {
                    f.frame_sent();
                }
            }
            // hyper stops polling a body of known length after its last byte, so the
            // end is seen through is_end_stream as well as through `None`.
            m.complete |= end && !matches!(polled, Some(Err(_)));
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Bytes(b) => b.is_none(),
            Inner::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(body) => body.size_hint(),
        }
    }
}
