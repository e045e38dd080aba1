//! A client connection, plain TCP or TLS, and its read and write halves: one type for the
//! HTTP/1.x server and the HTTP/2 hand-off whichever the listener, without making the server
//! generic (plain TCP keeps its zero-cost owned halves).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_intel::h2fp::Preface;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::h1::Rewind;

/// A TLS connection (the ClientHello, read by Palisade first, replayed into rustls).
pub type TlsConn = tokio_rustls::server::TlsStream<Rewind<TcpStream>>;

/// A client connection.
pub enum ClientStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS, with a handle on the socket for resets.
    Tls(Box<TlsConn>),
}

/// The read half of a client connection.
pub enum ClientRead {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<Box<TlsConn>>),
}

/// The write half of a client connection.
pub enum ClientWrite {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS, and a duplicate of the socket's descriptor (to reset the connection).
    Tls(WriteHalf<Box<TlsConn>>, Option<OwnedFd>),
}

impl ClientStream {
    /// Splits the connection for the HTTP/1.x server.
    pub fn split(self) -> (ClientRead, ClientWrite) {
        match self {
            ClientStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ClientRead::Tcp(r), ClientWrite::Tcp(w))
            }
            ClientStream::Tls(s) => {
                let fd = s.get_ref().0.inner().as_fd().try_clone_to_owned().ok();
                let (r, w) = tokio::io::split(s);
                (ClientRead::Tls(r), ClientWrite::Tls(w, fd))
            }
        }
    }
}

impl ClientWrite {
    /// Resets the connection on close (what the kernel still holds for the client is dropped
    /// instead of trickling out to it).
    pub fn reset_on_close(&self) {
        let linger = Some(Duration::ZERO);
        let _ = match self {
            ClientWrite::Tcp(w) => socket2::SockRef::from(w.as_ref()).set_linger(linger),
            ClientWrite::Tls(_, Some(fd)) => socket2::SockRef::from(fd).set_linger(linger),
            ClientWrite::Tls(_, None) => Ok(()),
        };
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ClientRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientRead::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientWrite::Tls(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientWrite::Tls(s, _) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientWrite::Tls(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads through to the inner stream, keeping a copy of an HTTP/2 connection's first bytes
/// until its client fingerprint (Akamai format) is read from them; then the copy is dropped.
/// The fingerprint is complete by the time the first request reaches the service (it needs the
/// same HEADERS block).
pub struct H2Tap<S> {
    inner: S,
    seen: Option<Vec<u8>>,
    fingerprint: Arc<OnceLock<Arc<str>>>,
}

impl<S> H2Tap<S> {
    /// Taps `inner`; the fingerprint appears in the returned cell.
    pub fn new(inner: S) -> (Self, Arc<OnceLock<Arc<str>>>) {
        let cell = Arc::new(OnceLock::new());
        (
            Self {
                inner,
                seen: Some(Vec::with_capacity(1024)),
                fingerprint: cell.clone(),
            },
            cell,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for H2Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(seen)) = (&r, this.seen.as_mut()) {
            seen.extend_from_slice(buf.filled().get(before..).unwrap_or_default());
            match palisade_intel::h2fp::read(seen) {
                Preface::Done(fp) => {
                    let _ = this.fingerprint.set(Arc::from(fp.akamai()));
                    this.seen = None;
                }
                Preface::Incomplete if seen.len() <= palisade_intel::h2fp::MAX_BYTES => {}
                _ => this.seen = None,
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
