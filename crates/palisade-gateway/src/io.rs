//! Client connection IO with an idle timeout: a connection that moves no bytes for
//! `idle_timeout` while no request on it is in flight is closed. This also bounds clients that
//! connect and send nothing, which hyper's header-read timer does not cover before protocol
//! detection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Counts requests in flight on one connection.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn start(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    fn busy(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// Ends an in-flight request on drop.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An IO stream that fails reads with `TimedOut` after an idle period. Activity only stamps
/// a time; the timer is re-armed when it fires, so busy connections do not touch the timer
/// wheel on every read and write.
pub struct IdleTimeoutIo<T> {
    inner: T,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    last_activity: Instant,
    in_flight: InFlight,
}

impl<T> IdleTimeoutIo<T> {
    /// Wraps a stream.
    pub fn new(inner: T, idle: Duration, in_flight: InFlight) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            last_activity: Instant::now(),
            in_flight,
        }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeoutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                while this.sleep.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_activity + this.idle;
                    if this.in_flight.busy() {
                        // A slow upstream is not the client's idleness: look again later.
                        this.touch();
                        let next = Instant::now() + this.idle;
                        this.sleep.as_mut().reset(next);
                    } else if deadline > Instant::now() {
                        // There was activity since the timer was armed: re-arm from it.
                        this.sleep.as_mut().reset(deadline);
                    } else {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "idle timeout",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeoutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            this.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
