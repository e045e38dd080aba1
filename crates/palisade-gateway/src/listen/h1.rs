//! The proxy's HTTP/1.x server side: reads request heads, frames request bodies, writes
//! responses. HTTP/2 connections (known by their preface) are handed back to the caller, which
//! serves them with hyper.
//!
//! Written for the proxy's one job rather than as a general server, so that a request costs
//! few instructions:
//! - one parse of the head (httparse), header values kept as slices of the read buffer;
//! - one timer per connection, re-armed only when it fires early (idle, head and write
//!   timeouts all use it);
//! - a response head and a small body leave in one write.
//!
//! Request framing follows RFC 9112 section 6 strictly, so that Palisade and the upstream can
//! never disagree on where a request ends (request smuggling): `Transfer-Encoding` other than a
//! lone `chunked`, `Transfer-Encoding` in HTTP/1.0, `Transfer-Encoding` together with
//! `Content-Length`, conflicting `Content-Length` values, and a missing or repeated `Host` are
//! refused with 400 (501 for an unknown transfer coding) and the connection is closed.
//! Chunked bodies are decoded strictly (CRLF only; see [`ChunkedDecoder`]).
//!
//! `Expect: 100-continue` is answered with `100 Continue` as soon as the head is read, unless
//! body bytes already came with it (RFC 9110 section 10.1.1 allows either).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::stream::{ClientRead, ClientStream, ClientWrite};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING,
};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use crate::listen::admission::ConnState;
use crate::proxy::hold::ClientGone;
use crate::refusal::Refusal;
use crate::wire::body::ClientFault;
use crate::wire::chunked::{ChunkError, ChunkedDecoder, decode_whole};
use crate::wire::fields::{Answer, HeadLines, UpstreamFields, name_bit, parse_length};
use crate::wire::timer::Timer;

/// Bounds and timeouts of client connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers), bytes.
    pub max_head_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// How long a new connection may take to send its first byte.
    pub first_byte_timeout: Duration,
    /// How long a request head may take to arrive once it began.
    pub header_timeout: Duration,
    /// How long a connection may sit without a request, and how long a read of a request
    /// body or a write of a response may wait for the client.
    pub idle_timeout: Duration,
    /// Slowest a client may read a response, bytes per second (0: no rule): a write of `n`
    /// bytes that the client holds up may take `min_rate_grace + n / min_send_rate`.
    pub min_send_rate: u64,
    /// Slowest a client may send a request body, bytes per second (0: no rule): after
    /// `min_rate_grace`, a body behind this average rate is cut off.
    pub min_receive_rate: u64,
    /// Time before the minimum rates apply.
    pub min_rate_grace: Duration,
}

impl Limits {
    /// The longest a write of `len` bytes may be held up by the client.
    fn send_allowance(&self, len: usize) -> Option<Duration> {
        (self.min_send_rate > 0).then(|| {
            self.min_rate_grace + Duration::from_secs_f64(len as f64 / self.min_send_rate as f64)
        })
    }
}

/// Where a connection reports its client's faults (slow reads, unreadable heads).
pub type FaultSink = Arc<dyn Fn(ClientFault, &dyn std::fmt::Display) + Send + Sync>;

/// How a connection ended.
pub enum Served {
    /// Closed (by either side, a timeout, an error or shutdown).
    Closed,
    /// The client spoke HTTP/2 with prior knowledge: the stream and what was already read
    /// from it, for an HTTP/2 server.
    Http2 {
        /// The connection.
        stream: ClientStream,
        /// Bytes read from it (the start of the preface).
        read: Bytes,
    },
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Headers parsed into a stack array when the configured count allows; beyond it, a heap one.
const STACK_HEADERS: usize = 100;

/// Header positions kept on the stack while a head is read (more take an allocation).
const SPAN_STACK: usize = 32;

/// Small response body chunks are copied next to the head (one write); larger ones are written
/// from where they are.
const COALESCE_BYTES: usize = 16 * 1024;

/// Response bytes buffered for a connection before they are written (and the upstream's body
/// waits for the client): the bound of a slow reader's memory.
const OUT_HIGH_WATER: usize = 16 * 1024;

/// Serves HTTP/1.x requests on `stream` with `service` until the connection ends, or hands
/// it back if it speaks HTTP/2.
pub async fn serve<F, Fut>(
    mut stream: ClientStream,
    limits: Limits,
    state: Arc<ConnState>,
    faults: FaultSink,
    shutdown: watch::Receiver<bool>,
    mut service: F,
) -> Served
where
    F: FnMut(Request<RequestBody>, ClientGone) -> Fut,
    Fut: Future<Output = Answer>,
{
    // The client going away ends the connection: one handle serves all its requests.
    let gone = ClientGone::default();
    let mut timer = Timer::new(Instant::now() + limits.first_byte_timeout);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut shutdown = Box::pin(async move {
        let mut rx = shutdown;
        let _ = rx.wait_for(|stop| *stop).await;
    });
    // The first bytes tell HTTP/2 (prior knowledge) from HTTP/1.x.
    let idle_since = Instant::now();
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf.get(..n) != H2_PREFACE.get(..n) {
            break;
        }
        if n == H2_PREFACE.len() {
            return Served::Http2 {
                stream,
                read: buf.freeze(),
            };
        }
        // Nothing yet: the first-byte timeout; part of the preface: the head timeout.
        let deadline = if buf.is_empty() {
            idle_since + limits.first_byte_timeout
        } else {
            idle_since + limits.header_timeout
        };
        match poll_fn(|cx| {
            if let Poll::Ready(r) = poll_fill(Pin::new(&mut stream), cx, &mut buf) {
                return Poll::Ready(r.ok().filter(|n| *n > 0).is_some());
            }
            if timer.poll_reached(cx, deadline).is_ready()
                || shutdown.as_mut().poll(cx).is_ready()
                || state.poll_shed(cx).is_ready()
            {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
        {
            true => {}
            false => return Served::Closed,
        }
    }
    let (rd, wr) = stream.split();
    let mut conn = Conn {
        wr,
        out: Vec::with_capacity(4 * 1024),
        timer,
        limits,
        shutdown,
        stopping: false,
        state,
        faults,
    };
    let mut reader = Some(Reader { rd, buf });
    let mut idle_since = Some(idle_since);
    loop {
        let Some(mut rdr) = reader.take() else {
            return Served::Closed;
        };
        let head = match conn.read_head(&mut rdr, &mut idle_since).await {
            Ok(Some(head)) => head,
            Ok(None) => return Served::Closed,
            Err(refusal) => {
                (conn.faults)(ClientFault::BadHead, &refusal.parts().1);
                conn.refuse(refusal).await;
                return Served::Closed;
            }
        };
        let head_only = head.parts.method == Method::HEAD;
        let version = head.parts.version;
        let mut keep_alive = head.keep_alive;
        let mut rdr = Some(rdr);
        let (body, mut back) = match head.framing {
            Framing::None | Framing::Length(0) => (RequestBody(None), None),
            framing => {
                if head.expect_continue && rdr.as_ref().is_some_and(|r| r.buf.is_empty()) {
                    let r = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    if r.is_err() {
                        return Served::Closed;
                    }
                }
                let (tx, rx) = oneshot::channel();
                let body = Lent {
                    reader: rdr.take(),
                    left: match framing {
                        Framing::Length(n) => Left::Length(n),
                        _ => Left::Chunked(ChunkedDecoder::default()),
                    },
                    back: Some(tx),
                    idle: limits.idle_timeout,
                    min_rate: limits.min_receive_rate,
                    grace: limits.min_rate_grace,
                    received: 0,
                    blocked: Duration::ZERO,
                    waiting_since: None,
                    timer: None,
                };
                (RequestBody(Some(Box::new(body))), Some(rx))
            }
        };
        let request = Request::from_parts(head.parts, body);

        let answer = {
            // While the request is handled, the socket is watched (when the reader is here:
            // no body, or a body already read): a client that goes away is noticed, so that a
            // request held for it can be dropped. Pipelined requests that arrive meanwhile
            // stay in the buffer, up to a head's bound.
            let mut handling = std::pin::pin!(service(request, gone.clone()));
            let max_head = limits.max_head_bytes;
            poll_fn(|cx| {
                if let Poll::Ready(answer) = handling.as_mut().poll(cx) {
                    return Poll::Ready(answer);
                }
                if rdr.is_none()
                    && let Some(rx) = back.as_mut()
                    && let Poll::Ready(r) = Pin::new(rx).poll(cx)
                {
                    rdr = r.ok();
                    back = None;
                }
                if let Some(r) = rdr.as_mut().filter(|_| !gone.is_gone()) {
                    while r.buf.len() < max_head {
                        if r.buf.capacity() - r.buf.len() < 1024 {
                            r.buf.reserve(4 * 1024);
                        }
                        match poll_fill(Pin::new(&mut r.rd), cx, &mut r.buf) {
                            Poll::Ready(Ok(n)) if n > 0 => {}
                            Poll::Ready(_) => {
                                gone.set();
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    if gone.is_gone() {
                        // The handler is woken by `gone`; poll it again now.
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Pending
            })
            .await
        };
        // A body not read to its end (nor already in the buffer) leaves the connection's
        // framing unknown: the connection closes after this response.
        if rdr.is_none()
            && let Some(mut rx) = back
        {
            rdr = rx.try_recv().ok();
        }
        if gone.is_gone() {
            // Closed or half-closed: the answer is written if it can be, and nothing more.
            keep_alive = false;
        }
        if rdr.is_none() || conn.stopping() {
            keep_alive = false;
        }
        match conn
            .write_response(answer, head_only, version, keep_alive)
            .await
        {
            Ok(true) if keep_alive => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                (conn.faults)(ClientFault::SlowRead, &e);
                return Served::Closed;
            }
            _ => return Served::Closed,
        }
        // One reading of the clock: idle from now, for admission and for the idle timeout.
        let now = Instant::now();
        conn.state.idle_at(now.into_std());
        reader = rdr;
        idle_since = Some(now);
    }
}

/// The read side of a connection and what was read from it but not yet used.
struct Reader {
    rd: ClientRead,
    buf: BytesMut,
}

/// A connection after protocol detection.
struct Conn {
    wr: ClientWrite,
    out: Vec<u8>,
    timer: Timer,
    limits: Limits,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopping: bool,
    /// The connection's phase for admission (shed when idle or slow under pressure).
    state: Arc<ConnState>,
    faults: FaultSink,
}

impl Conn {
    /// Whether shutdown began (checked without waiting).
    fn stopping(&mut self) -> bool {
        if !self.stopping {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            self.stopping = self.shutdown.as_mut().poll(&mut cx).is_ready();
        }
        self.stopping
    }

    /// Reads until a whole head is in `buf` and parses it. `Ok(None)`: the connection ended
    /// (closed by the client, idle, or shutdown) between requests.
    async fn read_head(
        &mut self,
        reader: &mut Reader,
        idle_since: &mut Option<Instant>,
    ) -> Result<Option<Head>, Refusal> {
        let Reader { rd, buf } = reader;
        let max_head = self.limits.max_head_bytes;
        let mut head_since: Option<Instant> = None;
        loop {
            if !buf.is_empty() {
                match parse_head(buf, self.limits.max_headers)? {
                    Some(head) => {
                        self.state.active();
                        return Ok(Some(head));
                    }
                    None if buf.len() >= max_head => return Err(Refusal::HeadersTooLarge),
                    None => self.state.reading_head(),
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4 * 1024);
            }
            let limits = self.limits;
            let timer = &mut self.timer;
            let shutdown = &mut self.shutdown;
            let stopping = &mut self.stopping;
            let state = &self.state;
            let got = poll_fn(|cx| {
                if let Poll::Ready(r) = poll_fill(Pin::new(&mut *rd), cx, buf) {
                    return Poll::Ready(r.ok().filter(|n| *n > 0).is_some());
                }
                let deadline = if buf.is_empty() {
                    // Between requests: the idle timeout, and shutdown closes at once.
                    if shutdown.as_mut().poll(cx).is_ready() {
                        *stopping = true;
                        return Poll::Ready(false);
                    }
                    *idle_since.get_or_insert_with(Instant::now) + limits.idle_timeout
                } else {
                    *head_since.get_or_insert_with(Instant::now) + limits.header_timeout
                };
                // Idle or slow, and let go to make room for others.
                if timer.poll_reached(cx, deadline).is_ready() || state.poll_shed(cx).is_ready() {
                    return Poll::Ready(false);
                }
                Poll::Pending
            })
            .await;
            if !got {
                // Closed, timed out, or shutting down: nothing to answer (a partial head that
                // timed out is the slowloris case; its client gets no more of our time).
                return Ok(None);
            }
        }
    }

    /// Answers a request that could not be read, then the connection closes.
    async fn refuse(&mut self, refusal: Refusal) {
        let response = refusal.response(&crate::wire::request_id::request_id());
        let _ = self
            .write_response(response.into(), false, Version::HTTP_11, false)
            .await;
    }

    /// Writes everything in `data`, within the idle timeout and the minimum send rate.
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&mut self.wr, &mut self.timer, &self.limits, data).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        let r = write_all(&mut self.wr, &mut self.timer, &self.limits, &self.out).await;
        self.out.clear();
        r
    }

    /// Writes a response. `Ok(false)`: it was written but the connection cannot carry
    /// another (the body was cut short or had no length).
    async fn write_response(
        &mut self,
        answer: Answer,
        head_only: bool,
        version: Version,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = answer.response.into_parts();
        let fields = answer.fields.as_ref();
        let status = parts.status;
        let no_body = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let mut declared = match palisade_engine::request::header(&parts.headers, &CONTENT_LENGTH) {
            Some(v) => parse_length(v.as_bytes().trim_ascii()),
            None => fields.and_then(|f| f.content_length),
        };
        if head_only && declared.is_none() {
            // An answer made here for a HEAD request: the length its GET would have. (An
            // upstream's answer to HEAD has an empty body: its own length, or none, stands.)
            declared = body.size_hint().exact().filter(|n| *n > 0);
        }
        let framing = if no_body {
            Out::None
        } else if let Some(n) = body.size_hint().exact().or(declared) {
            Out::Length(n)
        } else if version == Version::HTTP_11 {
            Out::Chunked
        } else {
            Out::Close
        };
        let keep_alive = keep_alive && framing != Out::Close;
        encode_head(
            &mut self.out,
            status,
            &parts.headers,
            &answer.lines,
            fields,
            framing,
            declared,
        );
        if !keep_alive {
            self.out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            self.out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if framing == Out::None {
            self.flush().await?;
            return Ok(true);
        }
        let mut left = match framing {
            Out::Length(n) => Some(n),
            _ => None,
        };
        loop {
            // A frame ready now joins what is buffered; otherwise the buffer goes out first.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    if !self.out.is_empty() {
                        self.flush().await?;
                    }
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(_)) => {
                    // The body broke: what was sent cannot be completed.
                    let _ = self.flush().await;
                    return Ok(false);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    Err(_) => continue, // trailers are not forwarded
                },
            };
            if data.is_empty() {
                continue;
            }
            let mut data = data;
            if let Some(n) = &mut left {
                let take = data.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                *n -= take as u64;
                // A no-op unless the body overran its length (a slice would share the bytes,
                // which costs an allocation for a body made from a vector).
                data.truncate(take);
            }
            // Buffered output never grows past the high-water mark: what is there goes out
            // first (and the upstream's body waits for the client meanwhile).
            if self.out.len() + data.len() > OUT_HIGH_WATER {
                self.flush().await?;
            }
            // Grown as a vector grows, but never past the high-water mark and a chunk's framing.
            let need = self.out.len() + data.len().min(COALESCE_BYTES) + 32;
            if need > self.out.capacity() {
                let target = (self.out.capacity() * 2).clamp(need, need.max(OUT_HIGH_WATER + 32));
                self.out.reserve_exact(target - self.out.len());
            }
            if framing == Out::Chunked {
                push_hex(&mut self.out, data.len());
                self.out.extend_from_slice(b"\r\n");
            }
            if data.len() <= COALESCE_BYTES {
                self.out.extend_from_slice(&data);
            } else {
                self.flush().await?;
                self.write_all(&data).await?;
            }
            if framing == Out::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if left == Some(0) {
                break;
            }
        }
        if framing == Out::Chunked {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.flush().await?;
        if self.out.capacity() > 2 * OUT_HIGH_WATER {
            self.out = Vec::with_capacity(4 * 1024);
        }
        // A body shorter than its declared length leaves the client waiting for the rest.
        Ok(left.is_none_or(|n| n == 0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    lines: &HeadLines,
    fields: Option<&UpstreamFields>,
    framing: Out,
    declared: Option<u64>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    // The names written here, as bits: an upstream field whose bit is not among them cannot
    // be one Palisade set.
    let mut taken = 0u64;
    for (name, value) in headers {
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == CONNECTION
            || lines.replaces(name.as_str().as_bytes())
        {
            continue;
        }
        has_date |= name == DATE;
        taken |= name_bit(name.as_str().as_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The upstream's own fields, except those Palisade set (which replace them).
    // Palisade's own lines, then the upstream's fields but those they replace.
    out.extend_from_slice(lines.lines());
    taken |= lines.names();
    match fields.map(|f| (f, f.wire_unless(taken))) {
        None => {}
        Some((_, Some((wire, date)))) => {
            out.extend_from_slice(wire);
            has_date |= date;
        }
        Some((f, None)) => {
            for (line, name) in f.named_lines() {
                let clash = name_bit(name) & taken != 0
                    && (lines.replaces(name)
                        || headers.keys().any(|k| {
                            k.as_str().len() == name.len()
                                && k.as_str().as_bytes().eq_ignore_ascii_case(name)
                        }));
                if !clash {
                    has_date |= name.eq_ignore_ascii_case(b"date");
                    out.extend_from_slice(line);
                }
            }
        }
    }
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A HEAD or 304 answer keeps the length the full response would have; 1xx and 204
        // have none (RFC 9110 section 8.6).
        Out::None => {
            if let Some(n) =
                declared.filter(|_| !status.is_informational() && status != StatusCode::NO_CONTENT)
            {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        Out::Close => {}
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b"0123456789abcdef".get(n & 0xf).copied().unwrap_or(b'0');
        }
        n >>= 4;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// The `Date` value, formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(d.1.as_bytes());
    });
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    /// Method, target, version and headers.
    pub parts: http::request::Parts,
    /// How the body is framed.
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1).
    pub expect_continue: bool,
}

/// Parses a request head at the front of `buf`, taking it off on success. `Ok(None)`: not
/// complete yet. Errors are the answer to give (the connection closes after it).
pub fn parse_head(buf: &mut BytesMut, max_headers: usize) -> Result<Option<Head>, Refusal> {
    let mut stack = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_HEADERS];
    let mut heap;
    let slots = if max_headers <= STACK_HEADERS {
        stack.get_mut(..max_headers).unwrap_or_default()
    } else {
        heap = vec![std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); max_headers];
        heap.as_mut_slice()
    };
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let status = req.parse_with_uninit_headers(buf, slots);
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadersTooLarge),
        Err(_) => return Err(Refusal::BadRequest),
    };
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(Refusal::BadRequest)?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(Refusal::BadRequest),
    };
    let offset = |s: &[u8]| ((s.as_ptr() as usize).wrapping_sub(base), s.len());
    let target = req.path.map(|p| offset(p.as_bytes()));
    // Header positions (name, then value), so that the values can be slices of the head once
    // it is split off: on the stack for the usual number of headers, without an allocation.
    let count = req.headers.len();
    let mut stack_spans = [(0usize, 0usize, 0usize, 0usize); SPAN_STACK];
    let mut heap_spans;
    let spans = if count <= SPAN_STACK {
        stack_spans.get_mut(..count).unwrap_or_default()
    } else {
        heap_spans = vec![(0usize, 0usize, 0usize, 0usize); count];
        heap_spans.as_mut_slice()
    };
    for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
        let (name_at, name_n) = offset(h.name.as_bytes());
        let (at, n) = offset(h.value);
        *span = (name_at, name_n, at, n);
    }
    let head = buf.split_to(len).freeze();
    let uri = match target {
        Some((at, n)) => {
            Uri::from_maybe_shared(piece(&head, at, n)?).map_err(|_| Refusal::BadRequest)?
        }
        None => return Err(Refusal::BadRequest),
    };
    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0usize;
    let mut close = version == Version::HTTP_10;
    let mut expect_continue = false;
    for &(name_at, name_n, at, n) in spans.iter() {
        let name = head
            .get(name_at..name_at.saturating_add(name_n))
            .and_then(|b| HeaderName::from_bytes(b).ok())
            .ok_or(Refusal::BadRequest)?;
        let value = HeaderValue::from_maybe_shared(piece(&head, at, n)?)
            .map_err(|_| Refusal::BadRequest)?;
        if name == CONTENT_LENGTH {
            for part in value.as_bytes().split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or(Refusal::BadRequest)?;
                if length.is_some_and(|l| l != n) {
                    return Err(Refusal::BadRequest);
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
            for coding in value.as_bytes().split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                // Only a single `chunked` is understood; anything after it, or a second one,
                // leaves the framing ambiguous.
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(if chunked || coding.eq_ignore_ascii_case(b"chunked") {
                        Refusal::BadRequest
                    } else {
                        Refusal::NotImplemented
                    });
                }
                chunked = true;
            }
        } else if name == HOST {
            hosts += 1;
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        } else if name == EXPECT && version == Version::HTTP_11 {
            if value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(Refusal::ExpectationFailed);
            }
        }
        headers.append(name, value);
    }
    let framing = match (transfer_encoding, length) {
        (true, _) if version == Version::HTTP_10 => return Err(Refusal::BadRequest),
        (true, Some(_)) => return Err(Refusal::BadRequest),
        (true, None) if !chunked => return Err(Refusal::BadRequest),
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::None,
    };
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(Refusal::BadRequest);
    }
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive: !close,
        expect_continue,
    }))
}

/// `n` bytes of `head` from `at`, shared (not copied).
fn piece(head: &Bytes, at: usize, n: usize) -> Result<Bytes, Refusal> {
    let end = at.checked_add(n).ok_or(Refusal::BadRequest)?;
    if end > head.len() {
        return Err(Refusal::BadRequest);
    }
    Ok(head.slice(at..end))
}

/// Reads what is available into `buf`. (Through `AsyncRead`, whose short reads clear the
/// socket's readiness: the next wait needs no `recv` that finds nothing.)
fn poll_fill<R: AsyncRead>(
    rd: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(rd, cx, buf)
}

/// A write or flush the client holds up: `TimedOut` once it has taken nothing for the idle
/// timeout, or held the whole write past its allowance; pending (with the timer set) until then.
fn held_too_long<T>(
    cx: &mut Context<'_>,
    timer: &mut Timer,
    limits: &Limits,
    allowance: Option<Duration>,
    held_since: &mut Option<Instant>,
    stalled_since: &mut Option<Instant>,
) -> Poll<io::Result<T>> {
    let now = Instant::now();
    let held = *held_since.get_or_insert(now);
    let mut until = *stalled_since.get_or_insert(now) + limits.idle_timeout;
    if let Some(a) = allowance {
        until = until.min(held + a);
    }
    if timer.poll_reached(cx, until).is_ready() {
        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
    }
    Poll::Pending
}

/// Writes all of `data`. The client may hold a write up for at most the idle timeout without
/// taking a byte, and for at most [`Limits::send_allowance`] in all: a reader that takes a
/// little every few seconds is cut off, not only one that takes nothing. The clock is read
/// only when the client makes us wait.
async fn write_all(
    wr: &mut ClientWrite,
    timer: &mut Timer,
    limits: &Limits,
    mut data: &[u8],
) -> io::Result<()> {
    let allowance = limits.send_allowance(data.len());
    let mut held_since: Option<Instant> = None;
    let mut stalled_since: Option<Instant> = None;
    while !data.is_empty() {
        let n = poll_fn(|cx| match Pin::new(&mut *wr).poll_write(cx, data) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => held_too_long(
                cx,
                timer,
                limits,
                allowance,
                &mut held_since,
                &mut stalled_since,
            ),
        })
        .await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    // Reset rather than close: what the kernel still holds for this client is
                    // dropped at once instead of trickling out to it.
                    wr.reset_on_close();
                }
                return Err(e);
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        stalled_since = None;
        data = data.get(n..).unwrap_or_default();
    }
    // TLS holds written records until flushed (plain TCP: nothing to do). The same bounds.
    let flushed = poll_fn(|cx| match Pin::new(&mut *wr).poll_flush(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => held_too_long(
            cx,
            timer,
            limits,
            allowance,
            &mut held_since,
            &mut stalled_since,
        ),
    })
    .await;
    if let Err(e) = &flushed
        && e.kind() == io::ErrorKind::TimedOut
    {
        wr.reset_on_close();
    }
    flushed
}

/// A request body read from the client connection as the consumer asks for it, never
/// buffered whole.
pub struct RequestBody(Option<Box<Lent>>);

impl RequestBody {
    /// A request without a body.
    pub fn empty() -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestBody")
    }
}

/// The connection's read buffer, lent to the body while it is read.
struct Lent {
    /// `None` only once given back.
    reader: Option<Reader>,
    left: Left,
    /// Where the reader goes back when the body ended cleanly (with any pipelined bytes).
    back: Option<oneshot::Sender<Reader>>,
    idle: Duration,
    /// Bytes per second the body must average, over the time the client kept us waiting,
    /// beyond the grace time (0: no rule). Time the proxy spends elsewhere (a hold, a slow
    /// upstream) is not the client's.
    min_rate: u64,
    grace: Duration,
    received: u64,
    /// Time spent waiting for the client's bytes, and since when it waits now.
    blocked: Duration,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

enum Left {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client closed the connection before the body ended.
    #[error("the client closed the connection before the request body ended")]
    Incomplete,
    /// The client sent nothing for the idle timeout, or sent slower than the minimum rate.
    #[error("the client stopped sending the request body or sent it too slowly")]
    TimedOut,
    /// The chunked framing was broken.
    #[error("malformed chunked request body: {0}")]
    Chunked(#[from] ChunkError),
    /// Reading failed.
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
}

impl Lent {
    fn done(&self) -> bool {
        match &self.left {
            Left::Length(n) => *n == 0,
            Left::Chunked(d) => d.is_done(),
        }
    }

    /// The body ended: the buffer (with whatever follows the body) goes back.
    fn give_back(&mut self) {
        if let (Some(tx), Some(reader)) = (self.back.take(), self.reader.take()) {
            let _ = tx.send(reader);
        }
    }

    fn next_data(&mut self) -> Result<Option<Bytes>, ChunkError> {
        let Some(Reader { buf, .. }) = self.reader.as_mut() else {
            return Ok(None);
        };
        match &mut self.left {
            Left::Length(n) => {
                if *n == 0 || buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                *n -= take as u64;
                Ok(Some(buf.split_to(take).freeze()))
            }
            Left::Chunked(d) => d.decode(buf),
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            match self.next_data() {
                Ok(Some(data)) => {
                    if self.done() {
                        self.give_back();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(None) if self.done() => {
                    self.give_back();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    self.back = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let Some(Reader { rd, buf }) = self.reader.as_mut() else {
                return Poll::Ready(Some(Err(BodyError::Incomplete)));
            };
            if buf.capacity() - buf.len() < 4 * 1024 {
                buf.reserve(16 * 1024);
            }
            match poll_fill(Pin::new(rd), cx, buf) {
                Poll::Ready(Ok(0)) => {
                    self.back = None;
                    return Poll::Ready(Some(Err(BodyError::Incomplete)));
                }
                Poll::Ready(Ok(n)) => {
                    self.received = self.received.saturating_add(n as u64);
                    if let Some(since) = self.waiting_since.take() {
                        self.blocked += since.elapsed();
                    }
                    self.timer = None;
                }
                Poll::Ready(Err(e)) => {
                    self.back = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {
                    if self.timer.is_none() {
                        // Silent for the idle timeout, or behind the minimum rate: whichever
                        // comes first.
                        let now = Instant::now();
                        self.waiting_since = Some(now);
                        let mut wait = self.idle;
                        if self.min_rate > 0 {
                            let earned = self.grace
                                + Duration::from_secs_f64(
                                    self.received as f64 / self.min_rate as f64,
                                );
                            wait = wait.min(earned.saturating_sub(self.blocked));
                        }
                        self.timer = Some(Box::pin(tokio::time::sleep_until(now + wait)));
                    }
                    if let Some(sleep) = self.timer.as_mut()
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        self.back = None;
                        return Poll::Ready(Some(Err(BodyError::TimedOut)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // A body left unread can still leave the connection usable when all of it already
        // arrived (a small body with a refused request).
        while self.back.is_some() && !self.done() {
            match self.next_data() {
                Ok(Some(_)) => {}
                _ => return,
            }
        }
        self.give_back();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(lent) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(lent.poll_data(cx)) {
            Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(e)) => {
                self.0 = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.0 = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|l| l.done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|l| &l.left) {
            None => SizeHint::with_exact(0),
            Some(Left::Length(n)) => SizeHint::with_exact(*n),
            Some(Left::Chunked(_)) => SizeHint::default(),
        }
    }
}

/// A stream with bytes already read from it put back in front (for the HTTP/2 hand-off, and
/// the ClientHello read before rustls).
pub struct Rewind<S = ClientStream> {
    read: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Reads `read` first, then `inner`.
    pub fn new(read: Bytes, inner: S) -> Self {
        Self { read, inner }
    }

    /// The stream underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(self.read.get(..n).unwrap_or_default());
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Parses `input` as pipelined request heads and bodies without I/O, as the server would read
/// them; for fuzzing. Returns how many body bytes were decoded.
pub fn parse_for_fuzz(input: &[u8], max_headers: usize) -> usize {
    let mut total = 0;
    let mut buf = BytesMut::from(input);
    loop {
        let head = match parse_head(&mut buf, max_headers) {
            Ok(Some(head)) => head,
            _ => return total,
        };
        match head.framing {
            Framing::None => {}
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                total += n;
                buf.advance(n);
            }
            Framing::Chunked => {
                let Some(n) = decode_whole(&mut buf) else {
                    return total;
                };
                total += n;
            }
        }
        if !head.keep_alive {
            return total;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::wire::body::ProxyBody;
    use http::Response;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parse(wire: &str) -> Result<Option<Head>, Refusal> {
        parse_head(&mut BytesMut::from(wire.as_bytes()), 100)
    }

    fn framing(wire: &str) -> Result<Framing, Refusal> {
        parse(wire).map(|h| h.expect("complete head").framing)
    }

    #[test]
    fn request_framing_follows_rfc_9112_section_6_and_refuses_ambiguity() {
        let h = "GET / HTTP/1.1\r\nHost: a\r\n";
        assert_eq!(framing(&format!("{h}\r\n")), Ok(Framing::None));
        assert_eq!(
            framing(&format!("{h}Content-Length: 12\r\n\r\n")),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(&format!(
                "{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\n"
            )),
            Ok(Framing::Length(5)),
            "repeated identical lengths are one length"
        );
        assert_eq!(
            framing(&format!("{h}Transfer-Encoding: Chunked\r\n\r\n")),
            Ok(Framing::Chunked)
        );
        for (extra, want) in [
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                Refusal::BadRequest,
            ),
            ("Content-Length: 5, 6\r\n", Refusal::BadRequest),
            ("Content-Length: +5\r\n", Refusal::BadRequest),
            ("Content-Length: 0x5\r\n", Refusal::BadRequest),
            (
                "Content-Length: 99999999999999999999\r\n",
                Refusal::BadRequest,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                Refusal::BadRequest,
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                Refusal::BadRequest,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                Refusal::BadRequest,
            ),
            ("Transfer-Encoding: chunked, gzip\r\n", Refusal::BadRequest),
            ("Transfer-Encoding: gzip\r\n", Refusal::NotImplemented),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                Refusal::NotImplemented,
            ),
            ("Transfer-Encoding: \r\n", Refusal::BadRequest),
            ("Host: b\r\n", Refusal::BadRequest),
            ("Expect: 200-ok\r\n", Refusal::ExpectationFailed),
        ] {
            assert_eq!(
                framing(&format!("{h}{extra}\r\n")).err(),
                Some(want),
                "{extra}"
            );
        }
        // HTTP/1.0 has no chunked framing; a Transfer-Encoding there is faulty framing.
        assert_eq!(
            framing("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").err(),
            Some(Refusal::BadRequest)
        );
        assert_eq!(
            framing("GET / HTTP/1.1\r\n\r\n").err(),
            Some(Refusal::BadRequest),
            "HTTP/1.1 without Host"
        );
        assert_eq!(framing("GET / HTTP/1.0\r\n\r\n"), Ok(Framing::None));
    }

    #[test]
    fn malformed_heads_are_refused_and_partial_ones_wait() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert!(parse("GE").unwrap().is_none());
        for bad in [
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        ] {
            assert_eq!(parse(bad).err(), Some(Refusal::BadRequest), "{bad:?}");
        }
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).err(),
            Some(Refusal::HeadersTooLarge)
        );
        let few: String = (0..10).map(|i| format!("x-{i}: v\r\n")).collect();
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\nHost: a\r\n{few}\r\n").as_str());
        assert_eq!(
            parse_head(&mut buf, 5).err(),
            Some(Refusal::HeadersTooLarge),
            "the configured count, not the stack array, is the bound"
        );
    }

    #[test]
    fn heads_give_method_target_version_headers_and_connection_reuse() {
        let mut buf = BytesMut::from(
            "POST /a/b?c=d HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\nExpect: 100-Continue\r\nConnection: keep-alive, close\r\nContent-Length: 3\r\n\r\nabcGET",
        );
        let head = parse_head(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&buf[..], b"abcGET", "only the head is taken off");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri.path(), "/a/b");
        assert_eq!(head.parts.uri.query(), Some("c=d"));
        assert_eq!(head.parts.version, Version::HTTP_11);
        let twos: Vec<_> = head.parts.headers.get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert!(head.expect_continue);
        assert!(!head.keep_alive);
        let h10 = |c: &str| {
            parse(&format!("GET / HTTP/1.0\r\n{c}\r\n"))
                .unwrap()
                .unwrap()
                .keep_alive
        };
        assert!(!h10(""));
        assert!(h10("Connection: Keep-Alive\r\n"));
        let absolute = parse("GET http://example.com/p HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(absolute.parts.uri.host(), Some("example.com"));
    }

    #[test]
    fn chunk_sizes_are_written_in_lowercase_hex() {
        for n in [0usize, 1, 9, 10, 255, 4096, 0xdead_beef, usize::MAX] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
        }
    }

    // A real server on a real socket, with a service that echoes what it was sent.

    fn limits() -> Limits {
        Limits {
            max_head_bytes: 8192,
            max_headers: 100,
            first_byte_timeout: Duration::from_millis(600),
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            min_send_rate: 0,
            min_receive_rate: 0,
            min_rate_grace: Duration::from_secs(10),
        }
    }

    async fn echo(req: Request<RequestBody>, _gone: ClientGone) -> Answer {
        let upstream = req.uri().path() == "/fields";
        let head = req.method() == Method::HEAD;
        let mut answer: Answer = respond(req).await.into();
        if upstream {
            // As an upstream's answer arrives: its fields beside Palisade's headers.
            answer
                .response
                .headers_mut()
                .insert("ratelimit", HeaderValue::from_static("mine"));
            answer.fields = Some(UpstreamFields::from_wire(
                "RateLimit: theirs\r\nX-Up: 1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nset-cookie: a\r\nset-cookie: b\r\n",
                Some(1234),
            ));
            if head {
                *answer.response.body_mut() = http_body_util::Empty::new()
                    .map_err(|n| match n {})
                    .boxed_unsync();
            }
        }
        answer
    }

    async fn respond(req: Request<RequestBody>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        if path == "/ignore-body" {
            drop(body);
            return Response::new(
                Full::new(Bytes::from("ignored"))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            );
        }
        if path == "/stream" {
            let frames = futures_frames(&["one,", "two,", "three"]);
            return Response::new(StreamBody::new(frames).boxed_unsync());
        }
        let got = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => Bytes::from(format!("body error: {e}")),
        };
        let text = format!(
            "{} {} {}",
            parts.method,
            path,
            String::from_utf8_lossy(&got)
        );
        let mut resp = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
        resp.headers_mut()
            .insert("x-echo", HeaderValue::from_static("yes"));
        resp
    }

    /// A body that yields each piece after a pause (so that it is not all ready at once).
    fn futures_frames(
        pieces: &[&'static str],
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, crate::wire::body::BoxError>>
    + Send
    + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let pieces: Vec<&'static str> = pieces.to_vec();
        tokio::spawn(async move {
            for p in pieces {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tx.send(Ok(Frame::data(Bytes::from(p)))).await.is_err() {
                    return;
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
    }

    async fn server() -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::sync::mpsc::UnboundedReceiver<bool>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (h2_tx, h2_rx) = tokio::sync::mpsc::unbounded_channel();
        let admission = crate::listen::admission::Admission::new(1000, 1000);
        tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = listener.accept().await else {
                    return;
                };
                let stop = stop_rx.clone();
                let h2 = h2_tx.clone();
                let (admitted, _) = admission.admit(peer.ip(), false).unwrap();
                tokio::spawn(async move {
                    let served = serve(
                        ClientStream::Tcp(s),
                        limits(),
                        admitted.state.clone(),
                        Arc::new(|_, _| {}),
                        stop,
                        echo,
                    )
                    .await;
                    let _ = h2.send(matches!(served, Served::Http2 { .. }));
                });
            }
        });
        (addr, stop_tx, h2_rx)
    }

    /// Reads until the peer closes or `until` appears; returns what arrived.
    async fn read_until(s: &mut tokio::net::TcpStream, until: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
            if !until.is_empty() && String::from_utf8_lossy(&got).contains(until) {
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (addr, _stop, _) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_until(&mut s, "POST /three abcde").await;
        let one = got.find("GET /one ").unwrap();
        let two = got.find("POST /two hello").unwrap();
        let three = got.find("POST /three abcde").unwrap();
        assert!(one < two && two < three, "{got}");
        assert_eq!(got.matches("HTTP/1.1 200 OK\r\n").count(), 3);
        assert!(got.contains("x-echo: yes\r\n"));
        assert!(got.contains("\r\ndate: "), "a Date header is added: {got}");
        assert!(!got.contains("connection: close"));
        // Still open for more.
        s.write_all(b"GET /four HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(
            read_until(&mut s, "GET /four ")
                .await
                .contains("GET /four ")
        );
    }

    #[tokio::test]
    async fn bad_framing_is_answered_and_the_connection_closed() {
        let (addr, _stop, _) = server().await;
        for (wire, status) in [
            (
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "400 Bad Request",
            ),
            (
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                "501 Not Implemented",
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nExpect: nothing\r\n\r\n",
                "417 Expectation Failed",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "400 Bad Request"),
            ("NOT HTTP AT ALL\r\n\r\n", "400 Bad Request"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(wire.as_bytes()).await.unwrap();
            let got = read_until(&mut s, "").await;
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{wire:?} -> {got}"
            );
            assert!(got.contains("connection: close\r\n"), "{got}");
            assert!(got.contains("\"error\":"), "a JSON body: {got}");
        }
        // A head over the bound: 431, then closed.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let _ = s.write_all(long.as_bytes()).await;
        let got = read_until(&mut s, "").await;
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    }

    #[tokio::test]
    async fn a_broken_chunked_body_fails_the_body_and_closes_the_connection() {
        let (addr, _stop, _) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "").await;
        assert!(got.contains("body error: malformed chunked"), "{got}");
        assert!(got.contains("connection: close"), "{got}");
        assert!(
            !got.contains("/smuggled"),
            "nothing after a broken body is read as a request"
        );
    }

    #[tokio::test]
    async fn an_unread_body_keeps_the_connection_only_when_all_of_it_arrived() {
        let (addr, _stop, _) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcdGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "GET /next").await;
        assert!(
            got.contains("ignored") && got.contains("GET /next"),
            "{got}"
        );
        assert!(!got.contains("connection: close"));

        // Most of the body still to come: the connection closes after the answer.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /ignore-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabcd")
            .await
            .unwrap();
        let got = read_until(&mut s, "").await;
        assert!(
            got.contains("connection: close") && got.ends_with("ignored"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_before_the_body_is_sent() {
        let (addr, _stop, _) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let interim = read_until(&mut s, "\r\n\r\n").await;
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"abc").await.unwrap();
        let got = read_until(&mut s, "PUT /up abc").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }

    #[tokio::test]
    async fn response_framing_suits_the_request_and_the_body() {
        let (addr, _stop, _) = server().await;
        // A streaming body of unknown length: chunked for HTTP/1.1...
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "0\r\n\r\n").await;
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\n4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"),
            "{got}"
        );
        // ...and delimited by closing for HTTP/1.0.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "").await;
        assert!(
            got.contains("connection: close\r\n") && got.ends_with("\r\n\r\none,two,three"),
            "{got}"
        );
        assert!(!got.contains("transfer-encoding"));
        // HEAD: the length of the full answer, no body: the next answer follows the head.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "GET /after ").await;
        let heads: Vec<&str> = got.split("\r\n\r\n").collect();
        assert!(heads[0].contains("content-length: 8"), "{got}");
        assert!(
            heads[1].starts_with("HTTP/1.1 200 OK\r\n"),
            "no body for HEAD: {got}"
        );
        // HTTP/1.0 keep-alive with a known length stays open and says so.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "GET /k ").await;
        assert!(
            got.contains("connection: keep-alive\r\n") && got.contains("content-length: 7\r\n"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn upstream_fields_follow_palisades_headers_which_replace_them() {
        let (addr, _stop, _) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /fields HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "GET /fields ").await;
        let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert_eq!(head.matches("ratelimit:").count(), 1, "{got}");
        assert!(head.contains("ratelimit: mine\r\n"));
        assert!(head.contains("x-up: 1\r\n"));
        assert!(head.contains("set-cookie: a\r\nset-cookie: b\r\n"));
        assert_eq!(
            head.matches("date:").count(),
            1,
            "the upstream's Date stands: {got}"
        );
        assert!(head.contains("date: mon, 01 jan 2024"));
        // The body's own length, not the upstream's declared one, frames a GET.
        assert!(head.ends_with("content-length: 12"), "{got}");
        // HEAD keeps the length the upstream declared.
        s.write_all(b"HEAD /fields HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "\r\n\r\n").await;
        assert!(got.contains("content-length: 1234\r\n"), "{got}");
    }

    #[tokio::test]
    async fn slow_heads_and_idle_connections_are_cut_off_and_shutdown_closes_idle_ones() {
        let (addr, stop, _) = server().await;
        // A head that never completes: closed after the header timeout (300 ms) even though
        // bytes keep arriving.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut closed = false;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(b"X-a: b\r\n").await.is_err() {
                closed = true;
                break;
            }
            let mut b = [0u8; 64];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "a trickling head was not cut off");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );

        // Silent connections close after the idle timeout (600 ms), also after a request.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let got = read_until(&mut s, "").await;
        assert!(got.contains("GET /a "));
        let lived = started.elapsed();
        assert!(
            lived >= Duration::from_millis(500) && lived < Duration::from_secs(3),
            "{lived:?}"
        );

        // Shutdown closes connections waiting for a request at once.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut s, "GET /b ").await;
        let started = std::time::Instant::now();
        stop.send(true).unwrap();
        let rest = read_until(&mut s, "").await;
        assert!(rest.is_empty());
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_http2_preface_is_handed_back_with_what_was_read() {
        let (addr, _stop, mut h2) = server().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // In two pieces: the decision waits for the whole preface.
        s.write_all(&H2_PREFACE[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(&H2_PREFACE[10..]).await.unwrap();
        assert_eq!(h2.recv().await, Some(true));
        // Something else is HTTP/1.x.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_until(&mut s, "").await;
        assert!(got.starts_with("HTTP/1.1 "), "{got}");
        assert_eq!(h2.recv().await, Some(false));
    }
}
