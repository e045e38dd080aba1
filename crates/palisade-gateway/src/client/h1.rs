//! A pooled HTTP/1.1 upstream client that does its I/O in the task of the request it serves.
//!
//! hyper-util's pooled client runs each upstream connection as a task of its own and hands
//! requests and responses to it over channels; on the proxy path that hand-off and its
//! allocations cost about as much as the rest of forwarding (bench/README.md). Here the
//! request's own task writes the request and reads the response head. A small response body
//! arrives with its head, so the connection is back in the pool before the client is answered;
//! a larger one streams from the connection as the client reads it.
//!
//! Heads are parsed by `httparse`; body framing follows RFC 9112 section 6 (chunked: 7.1).
//! Every bound is explicit: head size, header count, chunk-size and trailer lengths.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::body::{BoxError, ProxyBody};
use crate::wire::chunked::{ChunkedDecoder, decode_whole};
use crate::wire::fields::{Answer, HeadLines, UpstreamFields, name_bit, parse_length};
use crate::wire::headers::is_hop_by_hop_name;
use crate::wire::timer::Timer;

/// Largest response head read (status line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers accepted.
pub const MAX_HEADERS: usize = 128;
// The response parser marks the fields it forwards as bits of a `u128`.
const _: () = assert!(MAX_HEADERS <= 128);
/// An idle pooled connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bodies up to this size are copied out of the read buffer (which then stays reusable) rather
/// than sharing it.
const COPY_BODY_BELOW: usize = 4096;
/// A fixed request body up to this size goes out in the same write as its head.
const COALESCE_BODY_BELOW: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// No connection could be made.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// Reading or writing failed.
    #[error("upstream i/o failed: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before answering")]
    Closed,
    /// The upstream's response broke HTTP/1.1.
    #[error("malformed upstream response: {0}")]
    Protocol(&'static str),
    /// The request body failed (e.g. it went over `max_body_bytes`).
    #[error("request body failed: {0}")]
    Body(#[source] BoxError),
    /// No response head arrived by the deadline.
    #[error("upstream did not answer in time")]
    TimedOut,
}

impl H1Error {
    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect { .. } | H1Error::ConnectTimeout(_))
    }
}

/// What is sent as the request body.
pub enum OutBody {
    /// No body.
    Empty,
    /// A body already in memory (it can be sent again on a fresh connection).
    Full(Bytes),
    /// A streaming body (sent once).
    Stream(ProxyBody),
}

impl OutBody {
    /// The body as a boxed body (for clients that take one).
    pub fn into_proxy_body(self) -> ProxyBody {
        use http_body_util::{Empty, Full};
        match self {
            OutBody::Empty => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            OutBody::Full(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
            OutBody::Stream(b) => b,
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// A pool of HTTP/1.1 connections to one upstream address.
#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("authority", &self.inner.authority)
            .field("idle", &self.idle_count())
            .finish()
    }
}

struct PoolInner {
    /// `host:port`, for connecting by name and for errors.
    authority: String,
    /// The address when the host is an IP literal (no resolution needed).
    addr: Option<SocketAddr>,
    connect_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

impl PoolInner {
    fn idle(&self) -> MutexGuard<'_, Vec<(Conn, Instant)>> {
        // Nothing panics while holding the lock; a poisoned one still holds valid connections.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, conn: Conn) {
        self.put_since(conn, Instant::now());
    }

    /// Pools `conn` as idle since `since` (a reading of the clock taken at or before now: an
    /// earlier one only retires the connection sooner).
    fn put_since(&self, conn: Conn, since: Instant) {
        if !conn.buf.is_empty() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push((conn, since));
        }
    }

    /// The most recently used idle connection that is still open, at `now`.
    fn take(&self, now: Instant) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle().pop()?;
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && conn.is_open() {
                return Some(conn);
            }
        }
    }
}

struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The connection's one timer for the response deadline: armed at its first exchange and
    /// re-armed only when it fires before the deadline of the exchange then waiting (see
    /// [`within`]), so that back-to-back requests do not touch the timer wheel each time.
    timer: Option<Timer>,
}

impl Conn {
    /// Whether an idle connection can take a request: nothing arrived on it since its last
    /// response (no close, no stray bytes). Costs no syscall unless the socket became readable.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// A response head as parsed, before its body is attached.
struct Head {
    status: StatusCode,
    fields: UpstreamFields,
    kind: BodyKind,
    reusable: bool,
}

/// Whether a response field is not forwarded as it came: hop-by-hop fields (RFC 9110 section
/// 7.6.1) and framing, which the side facing the client sets itself.
fn is_not_forwarded(name: &[u8]) -> bool {
    is_hop_by_hop_name(name) || name.eq_ignore_ascii_case(b"content-length")
}

/// How the response body is delimited (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Length(u64),
    Chunked,
    Close,
}

impl H1Pool {
    /// A pool for `host:port`, keeping up to `max_idle` idle connections.
    pub fn new(host: &str, port: u16, connect_timeout: Duration, max_idle: usize) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addr = bare
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        let authority = match addr {
            Some(a) => a.to_string(),
            None => format!("{host}:{port}"),
        };
        Self {
            inner: Arc::new(PoolInner {
                authority,
                addr,
                connect_timeout,
                max_idle,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.inner.idle().len()
    }

    /// Closes idle connections that timed out or that the upstream closed, so that they do not
    /// linger (half-closed) until the next request. Runs on the runtime, once a second.
    pub fn sweep(&self) {
        self.inner
            .idle()
            .retain_mut(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && conn.is_open());
    }

    async fn connect(&self) -> Result<Conn, H1Error> {
        let inner = &self.inner;
        let connecting = async {
            match inner.addr {
                Some(a) => TcpStream::connect(a).await,
                None => TcpStream::connect(inner.authority.as_str()).await,
            }
        };
        let io = match tokio::time::timeout(inner.connect_timeout, connecting).await {
            Err(_) => return Err(H1Error::ConnectTimeout(inner.authority.clone())),
            Ok(Err(source)) => {
                return Err(H1Error::Connect {
                    addr: inner.authority.clone(),
                    source,
                });
            }
            Ok(Ok(io)) => io,
        };
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            timer: None,
        })
    }

    /// Sends a request and returns the response with its body (streaming, or complete when
    /// it came with the head). `target` is the request target (path and query); `headers`
    /// must already carry `Host` and no hop-by-hop headers. The request body's framing is set
    /// here: `Content-Length` and `Transfer-Encoding` in `headers` are ignored.
    ///
    /// A pooled connection that turns out closed before any response byte arrived is retried
    /// on another connection when the body can be sent again and either nothing was written
    /// or the method is idempotent (RFC 9110 section 9.2.2).
    ///
    /// Fails with [`H1Error::TimedOut`] when the upstream takes longer than `timeout`: to
    /// connect and take a request without a streamed body and answer it, to take each piece of
    /// a streamed body, or to start its answer once the request was sent. Time spent waiting
    /// for the client's body is not the upstream's (slow clients are bounded by the client
    /// side's body timeouts).
    ///
    /// `started` is when the exchange began, a reading of the clock the caller has anyway (the
    /// deadline and the pool's idle checks count from it).
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's parts, borrowed from the caller; bundling them would copy"
    )]
    pub async fn send(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        added: &HeadLines,
        body: OutBody,
        started: Instant,
        timeout: Duration,
    ) -> Result<Answer, H1Error> {
        let deadline = tokio::time::Instant::from_std(started) + timeout;
        let mut body = match body {
            OutBody::Stream(b) if b.is_end_stream() => OutBody::Empty,
            other => other,
        };
        let framing = match &body {
            OutBody::Empty if expects_body(method) => ReqFraming::Length(0),
            OutBody::Empty => ReqFraming::None,
            OutBody::Full(b) => ReqFraming::Length(b.len() as u64),
            OutBody::Stream(b) => b
                .size_hint()
                .exact()
                .map_or(ReqFraming::Chunked, ReqFraming::Length),
        };
        let mut wire = Vec::with_capacity(512);
        encode_head(&mut wire, method, target, headers, added, framing);
        if let OutBody::Full(b) = &body
            && b.len() < COALESCE_BODY_BELOW
        {
            wire.extend_from_slice(b);
        }
        let head_only = *method == Method::HEAD;
        loop {
            let (mut conn, reused) = match self.inner.take(started) {
                Some(c) => (c, true),
                // Boxed, as is the streamed exchange below: rarely taken, their state would
                // otherwise make every request's future larger.
                None => match Box::pin(tokio::time::timeout_at(deadline, self.connect())).await {
                    Ok(c) => (c?, false),
                    Err(_) => return Err(H1Error::TimedOut),
                },
            };
            let replayable = !matches!(body, OutBody::Stream(_));
            let mut timer = conn.timer.take().unwrap_or_else(|| Timer::new(deadline));
            let exchanged = if replayable {
                within(
                    deadline,
                    &mut timer,
                    exchange(&mut conn, &wire, &mut body, head_only),
                )
                .await
            } else {
                Box::pin(exchange_streamed(
                    &mut conn, &mut timer, timeout, &wire, &mut body, framing, head_only,
                ))
                .await
            };
            conn.timer = Some(timer);
            let Some(exchanged) = exchanged else {
                // Out of step with the upstream (a request without its answer): not reused.
                return Err(H1Error::TimedOut);
            };
            match exchanged {
                Ok(head) => return Ok(self.respond(conn, head, started)),
                Err(Failure { error, written }) => {
                    let stale = matches!(&error, H1Error::Closed)
                        || matches!(&error, H1Error::Io(e) if is_reset(e));
                    if reused && stale && replayable && (!written || is_idempotent(method)) {
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    fn respond(&self, mut conn: Conn, head: Head, started: Instant) -> Answer {
        let body: ProxyBody = match head.kind {
            BodyKind::Length(n) if (conn.buf.len() as u64) >= n => {
                // The whole body came with the head.
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let data = if n < COPY_BODY_BELOW {
                    let d = Bytes::copy_from_slice(conn.buf.get(..n).unwrap_or_default());
                    conn.buf.advance(n);
                    d
                } else {
                    conn.buf.split_to(n).freeze()
                };
                // Bytes beyond the declared length: the connection is out of step; drop it.
                if head.reusable && conn.buf.is_empty() {
                    self.inner.put_since(conn, started);
                }
                if data.is_empty() {
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync()
                } else {
                    http_body_util::Full::new(data)
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }
            }
            kind => UpstreamBody {
                conn: Some(conn),
                pool: self.inner.clone(),
                state: match kind {
                    BodyKind::Length(n) => Streaming::Length(n),
                    BodyKind::Chunked => Streaming::Chunked(ChunkedDecoder::default()),
                    BodyKind::Close => Streaming::Close,
                },
                reusable: head.reusable,
                done: false,
            }
            .boxed_unsync(),
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        Answer {
            response,
            lines: HeadLines::default(),
            fields: Some(head.fields),
        }
    }
}

/// Runs `fut` until it finishes (`Some`) or `deadline` passes (`None`), on `timer`. The timer
/// may be armed for an earlier deadline (a previous exchange's): it then fires early and is
/// re-armed for this one. It is never left later than `deadline`, so `fut` never overruns it.
async fn within<F: Future>(
    deadline: tokio::time::Instant,
    timer: &mut Timer,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.poll_reached(cx, deadline).map(|()| None)
    })
    .await
}

/// A failed exchange, and whether any of the request had been written.
struct Failure {
    error: H1Error,
    written: bool,
}

async fn exchange(
    conn: &mut Conn,
    wire: &[u8],
    body: &mut OutBody,
    head_only: bool,
) -> Result<Head, Failure> {
    let failed = |error: H1Error, written: bool| Failure { error, written };
    if let Err(e) = conn.io.write_all(wire).await {
        return Err(failed(e.into(), false));
    }
    let written = match write_body(conn, body, wire.len()).await {
        Ok(()) => Ok(()),
        // The body failed on our side: nothing to read.
        Err(e @ H1Error::Body(_)) => return Err(failed(e, true)),
        // The upstream may have answered early (413, 401) and closed: its answer is better
        // than the write error.
        Err(e) => Err(e),
    };
    match read_head(conn, head_only).await {
        Ok(mut head) => {
            if written.is_err() {
                head.reusable = false;
            }
            Ok(head)
        }
        Err(e) => Err(failed(written.err().unwrap_or(e), true)),
    }
}

/// An exchange with a streamed request body: the upstream has `timeout` to take the head,
/// each piece of the body once the client sent it, and to start its answer once the body is
/// sent; the wait for the client's pieces is not timed here. `None`: the upstream timed out.
async fn exchange_streamed(
    conn: &mut Conn,
    timer: &mut Timer,
    timeout: Duration,
    wire: &[u8],
    body: &mut OutBody,
    framing: ReqFraming,
    head_only: bool,
) -> Option<Result<Head, Failure>> {
    let failed = |error: H1Error, written: bool| Failure { error, written };
    let soon = || tokio::time::Instant::now() + timeout;
    match within(soon(), timer, conn.io.write_all(wire)).await? {
        Ok(()) => {}
        Err(e) => return Some(Err(failed(e.into(), false))),
    }
    let OutBody::Stream(stream) = body else {
        return Some(Err(failed(H1Error::Protocol("not a streamed body"), true)));
    };
    let mut sent: u64 = 0;
    let mut written: Result<(), H1Error> = Ok(());
    while let Some(frame) = stream.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // request trailers are not forwarded
            },
            // The body failed on our side (the client): nothing to read.
            Err(e) => return Some(Err(failed(H1Error::Body(e), true))),
        };
        if data.is_empty() {
            continue;
        }
        sent = sent.saturating_add(data.len() as u64);
        if let ReqFraming::Length(n) = framing
            && sent > n
        {
            return Some(Err(failed(
                H1Error::Body("request body is longer than its declared length".into()),
                true,
            )));
        }
        let piece = async {
            if framing == ReqFraming::Chunked {
                let mut line = Vec::with_capacity(20);
                line.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                conn.io.write_all(&line).await?;
                conn.io.write_all(&data).await?;
                conn.io.write_all(b"\r\n").await
            } else {
                conn.io.write_all(&data).await
            }
        };
        if let Err(e) = within(soon(), timer, piece).await? {
            // The upstream may have answered early (413, 401) and closed: its answer is
            // better than the write error.
            written = Err(e.into());
            break;
        }
    }
    if written.is_ok() {
        written = match framing {
            ReqFraming::Length(n) if sent != n => {
                return Some(Err(failed(
                    H1Error::Body("request body is shorter than its declared length".into()),
                    true,
                )));
            }
            ReqFraming::Chunked => within(soon(), timer, conn.io.write_all(b"0\r\n\r\n"))
                .await?
                .map_err(Into::into),
            _ => Ok(()),
        };
    }
    Some(
        match within(soon(), timer, read_head(conn, head_only)).await? {
            Ok(mut head) => {
                if written.is_err() {
                    head.reusable = false;
                }
                Ok(head)
            }
            Err(e) => Err(failed(written.err().unwrap_or(e), true)),
        },
    )
}

/// Writes the rest of the body (a small fixed body already went with the head).
async fn write_body(conn: &mut Conn, body: &mut OutBody, head_len: usize) -> Result<(), H1Error> {
    match body {
        OutBody::Empty => Ok(()),
        OutBody::Full(b) => {
            if b.len() >= COALESCE_BODY_BELOW || head_len == 0 {
                conn.io.write_all(b).await?;
            }
            Ok(())
        }
        // Streamed bodies are written by `exchange_streamed`, which times the upstream alone.
        OutBody::Stream(_) => Err(H1Error::Protocol("a streamed body is not written here")),
    }
}

/// Reads until a final (non-1xx) response head is complete, and parses it.
async fn read_head(conn: &mut Conn, head_only: bool) -> Result<Head, H1Error> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&conn.buf, head_only)? {
                Parsed::Complete { len, head: None } => {
                    // An interim response (100 Continue and the like): skip it.
                    conn.buf.advance(len);
                    continue;
                }
                Parsed::Complete {
                    len,
                    head: Some(head),
                } => {
                    conn.buf.advance(len);
                    return Ok(head);
                }
                Parsed::Partial => {}
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_CHUNK);
        }
        let was_empty = conn.buf.is_empty();
        let n = conn.io.read_buf(&mut conn.buf).await?;
        if n == 0 {
            return Err(if was_empty {
                H1Error::Closed
            } else {
                H1Error::Protocol("connection closed inside the response head")
            });
        }
    }
}

/// The result of parsing the start of a buffer as a response head.
enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A head of `len` bytes; `None` for an interim (1xx) response.
    Complete { len: usize, head: Option<Head> },
}

fn parse_head(buf: &[u8], head_only: bool) -> Result<Parsed, H1Error> {
    // Uninitialised slots: httparse writes only those it fills (zeroing 128 would cost more
    // than parsing a typical head).
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(H1Error::Protocol("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Protocol("too many response headers"));
        }
        Err(_) => return Err(H1Error::Protocol("unparsable response head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(H1Error::Protocol("response head too large"));
    }
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| H1Error::Protocol("invalid status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Complete { len, head: None });
    }
    let http11 = resp.version == Some(1);
    let mut close = !http11;
    let mut chunked = false;
    let mut has_te = false;
    let mut length: Option<u64> = None;
    // Names that `Connection` lists are hop-by-hop too (RFC 9110 section 7.6.1).
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    if !http11 {
                        close = false;
                    }
                } else if !t.is_empty() {
                    listed.push(t);
                }
            }
        }
    }
    // The fields forwarded, as bits of their index, and their size on the wire: the lines are
    // then written into a buffer of exactly that size, which becomes `Bytes` without the
    // second allocation a partly filled one costs.
    let mut keep = 0u128;
    let mut total = 0usize;
    let mut names = 0u64;
    let mut has_date = false;
    for (i, h) in resp.headers.iter().enumerate() {
        // httparse checked the name's characters, and the value's with HeaderValue's rule (no
        // control bytes but HTAB): what is forwarded is what a HeaderMap would have held.
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            // Only the last coding decides (RFC 9112 section 6.3, item 4).
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in h.value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii())
                    .ok_or(H1Error::Protocol("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::Protocol("conflicting content-length values"));
                }
                length = Some(n);
            }
        }
        if is_not_forwarded(name) || listed.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            continue;
        }
        keep |= 1u128 << i;
        total += name.len() + h.value.len() + 4;
        names |= name_bit(name);
        has_date |= name.eq_ignore_ascii_case(b"date");
    }
    let mut lines = Vec::with_capacity(total);
    for (i, h) in resp.headers.iter().enumerate() {
        if keep & (1u128 << i) != 0 {
            lines.extend_from_slice(h.name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(h.value);
            lines.extend_from_slice(b"\r\n");
        }
    }
    let kind = if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        BodyKind::Length(0)
    } else if has_te {
        if chunked {
            BodyKind::Chunked
        } else {
            BodyKind::Close
        }
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        BodyKind::Close
    };
    // Transfer-Encoding overrides Content-Length, which must then not be forwarded.
    let fields = UpstreamFields::new(
        Bytes::from(lines),
        if has_te { None } else { length },
        names,
        has_date,
    );
    let reusable = !close && kind != BodyKind::Close && status != StatusCode::SWITCHING_PROTOCOLS;
    Ok(Parsed::Complete {
        len,
        head: Some(Head {
            status,
            fields,
            kind,
            reusable,
        }),
    })
}

fn expects_body(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Writes the request line and headers. `Content-Length` and `Transfer-Encoding` come from
/// `framing`, never from `headers` (so a client's framing cannot reach the upstream).
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: &HeadLines,
    framing: ReqFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || added.replaces(name.as_str().as_bytes())
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(added.lines());
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// A response body read from its connection as it is polled; the connection goes back to the
/// pool when the body ends cleanly, and is closed when the body is dropped unfinished.
struct UpstreamBody {
    conn: Option<Conn>,
    pool: Arc<PoolInner>,
    state: Streaming,
    reusable: bool,
    done: bool,
}

enum Streaming {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

impl UpstreamBody {
    fn finish(&mut self) {
        self.done = true;
        if let Some(conn) = self.conn.take()
            && self.reusable
        {
            self.pool.put(conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What the buffer already holds.
            match &mut this.state {
                Streaming::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Streaming::Length(rem) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*rem).unwrap_or(usize::MAX));
                        *rem -= n as u64;
                        let data = conn.buf.split_to(n).freeze();
                        if *rem == 0 {
                            // Bytes beyond the declared length leave the connection unusable.
                            if !conn.buf.is_empty() {
                                this.reusable = false;
                            }
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Streaming::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if dec.is_done() => {
                        if !conn.buf.is_empty() {
                            this.reusable = false;
                        }
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                Streaming::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            // More from the socket.
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Ready(Ok(0)) => {
                    if matches!(this.state, Streaming::Close) {
                        this.done = true;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail("upstream closed the connection inside the response body");
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            Streaming::Length(n) if !self.done => SizeHint::with_exact(n),
            _ if self.done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Parses `input` as a sequence of response heads and chunked bodies without I/O, as the client
/// would read them; for fuzzing. Returns how many body bytes were decoded.
pub fn parse_for_fuzz(input: &[u8]) -> usize {
    let mut total = 0;
    let mut buf = BytesMut::from(input);
    loop {
        let head = match parse_head(&buf, false) {
            Ok(Parsed::Complete { len, head }) => {
                buf.advance(len);
                head
            }
            _ => return total,
        };
        let Some(head) = head else {
            continue;
        };
        match head.kind {
            BodyKind::Chunked => {
                let Some(n) = decode_whole(&mut buf) else {
                    return total;
                };
                total += n;
            }
            BodyKind::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                total += n;
                buf.advance(n);
            }
            BodyKind::Close => return total + buf.len(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::wire::chunked::ChunkError;
    use http::HeaderValue;

    impl H1Pool {
        /// `send` with a deadline far enough away not to matter.
        async fn send_soon(
            &self,
            method: &Method,
            target: &str,
            headers: &HeaderMap,
            body: OutBody,
        ) -> Result<Response<ProxyBody>, H1Error> {
            Ok(self
                .send(
                    method,
                    target,
                    headers,
                    &HeadLines::default(),
                    body,
                    Instant::now(),
                    Duration::from_secs(30),
                )
                .await?
                .merged())
        }
    }

    fn head(wire: &[u8], head_only: bool) -> (usize, Head) {
        match parse_head(wire, head_only).unwrap() {
            Parsed::Complete { len, head: Some(h) } => (len, h),
            _ => panic!("no final head"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let (_, h) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false);
        assert_eq!((h.kind, h.reusable), (BodyKind::Length(12), true));
        // Transfer-Encoding wins over Content-Length, which is then dropped.
        let (_, h) = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.kind, BodyKind::Chunked);
        assert_eq!(h.fields.content_length, None);
        assert!(h.fields.get("content-length").is_none());
        // A final coding other than chunked: read until close.
        let (_, h) = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            false,
        );
        assert_eq!((h.kind, h.reusable), (BodyKind::Close, false));
        // No framing at all: until close.
        let (_, h) = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.kind, h.reusable), (BodyKind::Close, false));
        // No body for HEAD, 204 and 304, whatever the length says.
        let (_, h) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(h.kind, BodyKind::Length(0));
        let (_, h) = head(
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            false,
        );
        assert_eq!(h.kind, BodyKind::Length(0));
        // Connection: close and HTTP/1.0 are not kept.
        let (_, h) = head(
            b"HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(!h.reusable);
        let (_, h) = head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false);
        assert!(!h.reusable);
        let (_, h) = head(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(h.reusable);
        // Repeated identical lengths are one length; different ones are refused.
        let (_, h) = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\ncontent-length: 4\r\n\r\n",
            false,
        );
        assert_eq!(h.kind, BodyKind::Length(4));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: +4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 999x OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(
                parse_head(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn upstream_fields_drop_hop_by_hop_and_framing_and_merge_under_palisades_own() {
        let (_, h) = head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\nUpgrade: h2c\r\nset-cookie: b=2\r\nRateLimit: up\r\nX-Tab: a\tb\r\n\r\n",
            false,
        );
        let names: Vec<String> = h
            .fields
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "Set-Cookie",
                "set-cookie",
                "RateLimit",
                "X-Tab"
            ]
        );
        assert_eq!(h.fields.content_length, Some(2));
        assert_eq!(h.fields.get("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(h.fields.get("x-tab"), Some(&b"a\tb"[..]));
        let wire: Vec<u8> = h.fields.lines().flatten().copied().collect();
        assert!(wire.starts_with(b"Content-Type: text/plain\r\nSet-Cookie: a=1\r\n"));

        let mut mine = HeaderMap::new();
        mine.insert("ratelimit", HeaderValue::from_static("palisade"));
        h.fields.merge_into(&mut mine);
        assert_eq!(
            mine["ratelimit"], "palisade",
            "Palisade's own value replaces"
        );
        let cookies: Vec<_> = mine.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated fields all kept");
        assert_eq!(mine["content-length"], "2");
        assert!(mine.get("x-secret").is_none() && mine.get("keep-alive").is_none());

        // Control bytes in a value are refused, as a HeaderMap would.
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n", false).is_err());
    }

    #[test]
    fn interim_responses_are_skipped_and_heads_are_bounded() {
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", false),
            Ok(Parsed::Complete {
                len: 25,
                head: None
            })
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nx: y\r\n", false),
            Ok(Parsed::Partial)
        ));
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < MAX_HEAD_BYTES {
            big.extend_from_slice(b"x-filler: 0123456789012345678901234567890123456789\r\n");
        }
        assert!(parse_head(&big, false).is_err());
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_head(&many, false),
            Err(H1Error::Protocol("too many response headers"))
        ));
    }

    #[test]
    fn request_heads_take_their_framing_from_the_body_not_the_client() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &h,
            &HeadLines::default(),
            ReqFraming::Length(3),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: api.example\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 3\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::GET,
            "/",
            &h,
            &HeadLines::default(),
            ReqFraming::None,
        );
        assert!(!String::from_utf8(out).unwrap().contains("content-length"));
    }

    // Over real sockets: a raw upstream that answers each request with what the test says.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncRead;
    use tokio::net::TcpListener;

    /// Reads one request head (and nothing after it) from a raw socket.
    async fn read_request(s: &mut (impl AsyncRead + Unpin)) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    /// An upstream whose every connection runs `serve`; counts accepted connections.
    async fn upstream<F, Fut>(serve: F) -> (u16, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, n));
            }
        });
        (port, accepted)
    }

    fn pool(port: u16) -> H1Pool {
        H1Pool::new("127.0.0.1", port, Duration::from_secs(2), 8)
    }

    fn host() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example"));
        h
    }

    async fn get(p: &H1Pool, path: &str) -> Result<(StatusCode, HeaderMap, Vec<u8>), BoxError> {
        let resp = p
            .send_soon(&Method::GET, path, &host(), OutBody::Empty)
            .await?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, bytes.to_vec()))
    }

    #[tokio::test]
    async fn one_connection_serves_sequential_requests_and_returns_to_the_pool_with_its_head() {
        let (port, accepted) = upstream(|mut s, _| async move {
            while let Some(req) = read_request(&mut s).await {
                let path = req.split(' ').nth(1).unwrap_or("").to_owned();
                let body = format!("you asked {path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-up: 1\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        })
        .await;
        let p = pool(port);
        for i in 0..5 {
            let resp = p
                .send_soon(&Method::GET, &format!("/n/{i}"), &host(), OutBody::Empty)
                .await
                .unwrap();
            // Back in the pool before the body is even read.
            assert_eq!(p.idle_count(), 1);
            assert_eq!(resp.headers()["x-up"], "1");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("you asked /n/{i}"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// An upstream that answers `/wait/{ms}` after `ms` milliseconds and never answers `/never`.
    async fn slow_upstream() -> (u16, Arc<AtomicUsize>) {
        upstream(|mut s, _| async move {
            while let Some(req) = read_request(&mut s).await {
                let path = req.split(' ').nth(1).unwrap_or("").to_owned();
                let Some(ms) = path.strip_prefix("/wait/") else {
                    // `/never`: hold the connection without a word.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                };
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        })
        .await
    }

    async fn send_within(p: &H1Pool, path: &str, ms: u64) -> Result<StatusCode, H1Error> {
        let resp = p
            .send(
                &Method::GET,
                path,
                &host(),
                &HeadLines::default(),
                OutBody::Empty,
                Instant::now(),
                Duration::from_millis(ms),
            )
            .await?;
        Ok(resp.response.status())
    }

    #[tokio::test]
    async fn a_response_head_later_than_the_deadline_times_out_and_the_connection_is_dropped() {
        let (port, _) = slow_upstream().await;
        let p = pool(port);
        let started = std::time::Instant::now();
        let r = send_within(&p, "/never", 200).await;
        assert!(matches!(r, Err(H1Error::TimedOut)), "{r:?}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Its answer may still come: that connection is never handed to another request.
        assert_eq!(p.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_reused_connection_times_each_exchange_against_its_own_deadline() {
        let (port, accepted) = slow_upstream().await;
        let p = pool(port);
        // The connection's timer is armed for this exchange's deadline, 300 ms out...
        assert_eq!(
            send_within(&p, "/wait/0", 300).await.unwrap(),
            StatusCode::OK
        );
        // ...and fires during the next, which has until 1.5 s and is answered at ~600 ms: it is
        // re-armed, not taken for this exchange's deadline.
        assert_eq!(
            send_within(&p, "/wait/600", 1_500).await.unwrap(),
            StatusCode::OK
        );
        // A timer armed far out (10 s) does not delay a nearer deadline (200 ms).
        assert_eq!(
            send_within(&p, "/wait/0", 10_000).await.unwrap(),
            StatusCode::OK
        );
        let started = std::time::Instant::now();
        let r = send_within(&p, "/never", 200).await;
        assert!(matches!(r, Err(H1Error::TimedOut)), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // All on one connection until the time-out dropped it.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle_count(), 0);
    }

    #[tokio::test]
    async fn chunked_bodies_stream_across_reads_and_keep_the_connection() {
        let (port, accepted) = upstream(|mut s, _| async move {
            while read_request(&mut s).await.is_some() {
                let parts: [&[u8]; 4] = [
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwi",
                    b"ki\r\n5;x=1\r\npedia\r\n",
                    b"E\r\n in\r\n\r\nchunks.\r\n0\r\n",
                    b"x-trailer: t\r\n\r\n",
                ];
                for part in parts {
                    s.write_all(part).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .await;
        let p = pool(port);
        for _ in 0..2 {
            let (status, headers, body) = get(&p, "/").await.unwrap();
            assert_eq!(status, 200);
            // The framing is the client side's business: not forwarded.
            assert!(headers.get("transfer-encoding").is_none());
            assert_eq!(body, b"wikipedia in\r\n\r\nchunks.");
            assert_eq!(p.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_responses_are_not_pooled() {
        let (port, accepted) = upstream(|mut s, n| async move {
            read_request(&mut s).await;
            let resp: &[u8] = if n == 0 {
                b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
            } else {
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
            };
            s.write_all(resp).await.unwrap();
        })
        .await;
        let p = pool(port);
        assert_eq!(get(&p, "/").await.unwrap().2, b"until the end");
        assert_eq!(get(&p, "/").await.unwrap().2, b"ok");
        assert_eq!(p.idle_count(), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_not_used() {
        // The upstream answers one request per connection, then closes (a keep-alive timeout).
        let (port, accepted) = upstream(|mut s, _| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        })
        .await;
        let p = pool(port);
        for _ in 0..3 {
            assert_eq!(get(&p, "/").await.unwrap().2, b"ok");
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_sweep_closes_idle_connections_the_upstream_closed() {
        let (port, _) = upstream(|mut s, n| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // The first connection is closed by the upstream; the second stays open.
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
        .await;
        let p = pool(port);
        // Two requests at once: two connections, both pooled afterwards.
        let (a, b) = tokio::join!(get(&p, "/"), get(&p, "/"));
        assert_eq!(
            (a.unwrap().2, b.unwrap().2),
            (b"ok".to_vec(), b"ok".to_vec())
        );
        assert_eq!(p.idle_count(), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.sweep();
        assert_eq!(p.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_request_lost_to_a_closing_connection_is_retried_only_when_safe() {
        // Every connection answers its first request; a second request on it is read and
        // then dropped unanswered, as when a keep-alive timeout fires mid-request.
        let (port, accepted) = upstream(|mut s, _| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            read_request(&mut s).await;
        })
        .await;
        let p = pool(port);
        assert_eq!(get(&p, "/").await.unwrap().2, b"ok");
        // GET is idempotent: sent again on a fresh connection.
        assert_eq!(get(&p, "/").await.unwrap().2, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // POST is not: the upstream may have acted on it, so the failure is reported.
        let err = p
            .send_soon(
                &Method::POST,
                "/",
                &host(),
                OutBody::Full(Bytes::from_static(b"{}")),
            )
            .await
            .unwrap_err();
        // Closed, or reset (the upstream closed with the body unread).
        assert!(
            matches!(&err, H1Error::Closed) || matches!(&err, H1Error::Io(e) if is_reset(e)),
            "{err}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn request_bodies_are_framed_by_their_length_or_chunked() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        let (port, _) = upstream(move |mut s, _| {
            let log = log.clone();
            async move {
                let head = read_request(&mut s).await.unwrap();
                let mut rest = vec![0u8; 4096];
                let mut got = Vec::new();
                // Read what follows the head until the body's end marker or length.
                while !(got.ends_with(b"0\r\n\r\n") || got.ends_with(b"hello world")) {
                    let n = s.read(&mut rest).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&rest[..n]);
                }
                log.lock()
                    .unwrap()
                    .push(format!("{head}{}", String::from_utf8_lossy(&got)));
                s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
            }
        })
        .await;
        let p = pool(port);
        let mut h = host();
        h.insert("content-length", HeaderValue::from_static("5"));
        let full = OutBody::Full(Bytes::from_static(b"hello world"));
        assert_eq!(
            p.send_soon(&Method::PUT, "/a", &h, full)
                .await
                .unwrap()
                .status(),
            204
        );
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ];
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let body = OutBody::Stream(stream.boxed_unsync());
        assert_eq!(
            p.send_soon(&Method::POST, "/b", &host(), body)
                .await
                .unwrap()
                .status(),
            204
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen[0],
            "PUT /a HTTP/1.1\r\nhost: api.example\r\ncontent-length: 11\r\n\r\nhello world"
        );
        assert_eq!(
            seen[1],
            "POST /b HTTP/1.1\r\nhost: api.example\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn broken_upstreams_give_errors_not_responses() {
        let (port, _) = upstream(|mut s, n| async move {
            read_request(&mut s).await;
            let resp: &[u8] = match n {
                0 => b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                1 => b"SMTP ready\r\n\r\n",
                2 => b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
                3 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                _ => b"",
            };
            s.write_all(resp).await.unwrap();
        })
        .await;
        let p = pool(port);
        assert!(matches!(
            get(&p, "/").await.unwrap_err().downcast_ref::<H1Error>(),
            Some(H1Error::Protocol(_))
        ));
        assert!(matches!(
            get(&p, "/").await.unwrap_err().downcast_ref::<H1Error>(),
            Some(H1Error::Protocol(_))
        ));
        // Truncated and garbled bodies fail mid-stream, after the head.
        let err = get(&p, "/").await.unwrap_err().to_string();
        assert!(err.contains("inside the response body"), "{err}");
        let err = get(&p, "/").await.unwrap_err();
        assert!(err.downcast_ref::<ChunkError>().is_some(), "{err}");
        // Closed without a byte, on a fresh connection: reported, not retried.
        assert!(matches!(
            get(&p, "/").await.unwrap_err().downcast_ref::<H1Error>(),
            Some(H1Error::Closed)
        ));
        assert_eq!(p.idle_count(), 0);
        // Nobody listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = pool(closed.local_addr().unwrap().port());
        drop(closed);
        let err = dead
            .send_soon(&Method::GET, "/", &host(), OutBody::Empty)
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (port, accepted) = upstream(|mut s, _| async move {
            while read_request(&mut s).await.is_some() {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nfirst bytes")
                    .await
                    .unwrap();
            }
        })
        .await;
        let p = pool(port);
        let resp = p
            .send_soon(&Method::GET, "/", &host(), OutBody::Empty)
            .await
            .unwrap();
        assert_eq!(resp.body().size_hint().exact(), Some(100000));
        drop(resp);
        assert_eq!(p.idle_count(), 0);
        drop(
            p.send_soon(&Method::GET, "/", &host(), OutBody::Empty)
                .await
                .unwrap(),
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn fuzz_entry_reads_pipelined_responses() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_for_fuzz(wire), 5);
    }
}
