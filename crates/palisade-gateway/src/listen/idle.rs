//! Client connection IO with an idle timeout: a connection that moves no bytes for
//! `idle_timeout` while no request on it is in flight is closed. This also bounds clients that
//! connect and send nothing, which hyper's header-read timer does not cover before protocol
//! detection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Counts requests in flight on one connection, and requests started on it.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    busy: AtomicUsize,
    started: AtomicU64,
}

impl InFlight {
    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn start(&self) -> InFlightGuard {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        self.0.started.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    fn busy(&self) -> bool {
        self.0.busy.load(Ordering::Acquire) > 0
    }

    fn started(&self) -> u64 {
        self.0.started.load(Ordering::Acquire)
    }
}

/// Ends an in-flight request on drop.
#[derive(Debug)]
pub struct InFlightGuard(Arc<Counts>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An IO stream that fails reads with `TimedOut` after an idle period, or when a request head
/// that began to arrive is not complete within the header-read timeout (slowloris). Activity
/// only stamps a time; the one timer is re-armed when it fires, or brought forward when a read
/// finds a request head still incomplete, so busy connections whose heads arrive whole do not
/// touch the timer wheel per request. (hyper's own header timer arms a timer for every request.)
pub struct IdleTimeoutIo<T> {
    inner: T,
    idle: Duration,
    header: Option<Duration>,
    sleep: Pin<Box<Sleep>>,
    last_activity: Instant,
    /// When the first bytes of a request head not yet complete arrived, and how many requests
    /// had started on the connection then (a new start means the head completed).
    head: Option<(Instant, u64)>,
    /// No heads are timed here: HTTP/2 (known by its preface; streams are multiplexed), or no
    /// header timeout given.
    untimed: bool,
    first_read: bool,
    in_flight: InFlight,
}

impl<T> IdleTimeoutIo<T> {
    /// Wraps a stream. `header`: the header-read timeout, which needs every request started on
    /// the connection marked with [`InFlight::start`]; `None` leaves it to hyper.
    pub fn new(inner: T, idle: Duration, header: Option<Duration>, in_flight: InFlight) -> Self {
        Self {
            inner,
            idle,
            header,
            sleep: Box::pin(tokio::time::sleep(header.map_or(idle, |h| idle.min(h)))),
            last_activity: Instant::now(),
            head: None,
            untimed: header.is_none(),
            first_read: header.is_some(),
            in_flight,
        }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Whether a request head that began to arrive is still incomplete; forgets it otherwise.
    fn head_pending(&mut self) -> Option<Instant> {
        let (since, started) = self.head?;
        if self.in_flight.started() == started {
            Some(since + self.header?)
        } else {
            self.head = None;
            None
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

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
                let got = buf.filled().get(before..).unwrap_or_default();
                if !got.is_empty() {
                    this.touch();
                    if this.first_read {
                        this.first_read = false;
                        let n = got.len().min(H2_PREFACE.len());
                        this.untimed = got.get(..n) == H2_PREFACE.get(..n);
                    }
                    if !this.untimed && this.head.is_none() && !this.in_flight.busy() {
                        this.head = Some((this.last_activity, this.in_flight.started()));
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some(deadline) = this.head_pending()
                    && this.sleep.deadline() > deadline
                {
                    this.sleep.as_mut().reset(deadline);
                }
                while this.sleep.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    let head_deadline = this.head_pending();
                    if head_deadline.is_some_and(|d| d <= now) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete within the header-read timeout",
                        )));
                    }
                    let mut deadline = this.last_activity + this.idle;
                    if this.in_flight.busy() {
                        // A slow upstream is not the client's idleness: look again later.
                        this.touch();
                        deadline = now + this.idle;
                    } else if deadline <= now {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "idle timeout",
                        )));
                    }
                    // Re-arm at the earlier of what is still running.
                    this.sleep
                        .as_mut()
                        .reset(head_deadline.map_or(deadline, |h| h.min(deadline)));
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const IDLE: Duration = Duration::from_secs(10);
    const HEADER: Duration = Duration::from_secs(1);

    /// Reads until an error; returns the error and how long it took.
    async fn read_until_error(
        mut io: IdleTimeoutIo<DuplexStream>,
        on_bytes: impl Fn(usize),
    ) -> (io::Error, Duration) {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("eof"),
                Ok(n) => on_bytes(n),
                Err(e) => return (e, started.elapsed()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_head_is_cut_at_the_header_timeout_though_bytes_keep_coming() {
        let (client, server) = tokio::io::duplex(1024);
        let io = IdleTimeoutIo::new(server, IDLE, Some(HEADER), InFlight::default());
        let writer = tokio::spawn(async move {
            let mut client = client;
            for _ in 0..100 {
                if client.write_all(b"X-a: b\r\n").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let (e, after) = read_until_error(io, |_| {}).await;
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("header-read"), "{e}");
        assert!(after >= HEADER && after < HEADER * 2, "{after:?}");
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn heads_that_complete_start_no_clock_and_idleness_is_timed_from_the_last_byte() {
        let (mut client, server) = tokio::io::duplex(1024);
        let in_flight = InFlight::default();
        let io = IdleTimeoutIo::new(server, IDLE, Some(HEADER), in_flight.clone());
        // Five requests, each head complete on arrival (the server starts its request at once),
        // 800 ms apart: more than the header timeout in all, never idle for long.
        let reader =
            tokio::spawn(
                async move { read_until_error(io, move |_| drop(in_flight.start())).await },
            );
        for _ in 0..5 {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let last = Instant::now() - Duration::from_millis(800);
        let (e, _) = reader.await.unwrap();
        assert_eq!(e.to_string(), "idle timeout");
        let idle_for = Instant::now() - last;
        assert!(idle_for >= IDLE && idle_for < IDLE + HEADER, "{idle_for:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn http2_and_untimed_connections_are_only_bound_by_idleness() {
        for (header, preface) in [
            (Some(HEADER), &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
            (None, b"GET"),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            let io = IdleTimeoutIo::new(server, IDLE, header, InFlight::default());
            client.write_all(preface).await.unwrap();
            let writer = tokio::spawn(async move {
                for _ in 0..30 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if client.write_all(b"x").await.is_err() {
                        break;
                    }
                }
                // Then silence, with the stream kept open.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(client);
            });
            let (e, after) = read_until_error(io, |_| {}).await;
            assert_eq!(e.to_string(), "idle timeout");
            assert!(after >= Duration::from_secs(15) + IDLE, "{after:?}");
            writer.abort();
        }
    }
}
