//! The proxy listener: accepting connections (admission per address and in all), the HTTP/1.x
//! server and the hand-off of HTTP/2 connections to hyper, and the client's request body either
//! way.

pub mod admission;
pub mod h1;
pub mod idle;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::listen::admission::{Admission, Refused, Shed};
use crate::listen::idle::{IdleTimeoutIo, InFlight};
use crate::listen::stream::ClientStream;
use crate::listen::tls::TlsInfo;
use crate::telemetry::metrics::{HandshakeLabels, ShedLabels};
use crate::wire::body::{BoxError, ClientBodyError, ClientFault};
use crate::wire::fields::Answer;
use crate::{Runtime, Shared};

/// The HTTP/2 server for proxy connections that open with the HTTP/2 preface.
fn h2_builder(rt: &Runtime) -> http2::Builder<TokioExecutor> {
    let s = &rt.compiled.server;
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        // A stream's response waits for the client past this much (hyper's default is
        // 400 KiB per stream: a slow reader would hold that much per stream).
        .max_send_buf_size(64 * 1024)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The bounds of client connections, from the config.
fn client_limits(rt: &Runtime) -> h1::Limits {
    let s = &rt.compiled.server;
    h1::Limits {
        // The request line counts too: room for a long target beyond small header caps.
        max_head_bytes: s.max_header_bytes.max(8192),
        max_headers: s.max_header_count,
        // A connection that has sent nothing is at least as idle as one between requests.
        first_byte_timeout: Duration::from_nanos(s.first_byte_timeout.min(s.idle_timeout)),
        header_timeout: Duration::from_nanos(s.header_read_timeout),
        idle_timeout: Duration::from_nanos(s.idle_timeout),
        min_send_rate: s.min_send_rate,
        min_receive_rate: s.min_receive_rate,
        min_rate_grace: Duration::from_nanos(s.min_rate_grace),
    }
}

/// What answers the requests that come through the listener (the proxy's phases).
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers one request from `peer`; `gone` is set when the client goes away meanwhile (a
    /// held request is then dropped), where the server can tell.
    fn handle(
        &self,
        req: http::Request<ClientBody>,
        peer: SocketAddr,
        gone: Option<crate::proxy::hold::ClientGone>,
    ) -> impl std::future::Future<Output = Answer> + Send + use<Self>;
}

/// Serves an HTTP/2 client connection (prior knowledge, or ALPN `h2` over TLS) with hyper.
async fn serve_h2<H: Handler>(
    shared: Arc<Shared>,
    handler: H,
    stream: ClientStream,
    read: bytes::Bytes,
    peer: SocketAddr,
    tls: Option<Arc<TlsInfo>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let (builder, limits) = {
        let rt = shared.runtime.load();
        (h2_builder(&rt), client_limits(&rt))
    };
    let in_flight = InFlight::default();
    let (tap, h2fp) = stream::H2Tap::new(h1::Rewind::new(read, stream));
    let io = TokioIo::new(IdleTimeoutIo::new(
        tap,
        limits.idle_timeout,
        Some(limits.header_timeout),
        in_flight.clone(),
    ));
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(ClientBody::H2);
        if let Some(t) = &tls {
            req.extensions_mut().insert(t.clone());
        }
        if let Some(fp) = h2fp.get() {
            req.extensions_mut().insert(H2Fingerprint(fp.clone()));
        }
        let answering = handler.handle(req, peer, None);
        let guard = in_flight.start();
        async move {
            // hyper writes the headers: the upstream's fields join them.
            let r = answering.await.merged();
            drop(guard);
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let _ = watcher.watch(builder.serve_connection(io, svc)).await;
}

/// The HTTP/2 client fingerprint of the connection a request came on (Akamai format).
#[derive(Debug, Clone)]
pub struct H2Fingerprint(pub Arc<str>);

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP (HTTP/1.x, or HTTP/2 with prior knowledge); the TLS listener's bound port,
    /// if there is one (for `[tls] redirect_plain`).
    Plain {
        /// The TLS listener's port.
        tls_port: Option<u16>,
    },
    /// TLS (`[tls]`), HTTP/1.1 or HTTP/2 by ALPN.
    Tls,
}

/// The connection caps shared by the proxy's listeners (fixed at start: a reload that changes
/// them takes effect at the next restart).
pub(crate) fn admission(shared: &Shared) -> Arc<Admission> {
    let rt = shared.runtime.load();
    Admission::new(
        rt.compiled.server.max_connections,
        rt.compiled.server.max_connections_per_ip,
    )
}

/// Accepts connections on `listener` until shutdown, serving their requests with `handler`,
/// then drains.
pub(crate) async fn serve_proxy<H: Handler>(
    listener: TcpListener,
    shared: Arc<Shared>,
    handler: H,
    admission: Arc<Admission>,
    transport: Transport,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors: let an idle connection go to make room;
                        // otherwise back off instead of spinning.
                        let shed = admission.shed_one();
                        if shed {
                            shared.metrics.connections_shed.get_or_create(&ShedLabels { reason: "fd" }).inc();
                        }
                        tracing::warn!(error = %e, shed_idle = shed, "accept failed");
                        tokio::time::sleep(Duration::from_millis(if shed { 5 } else { 50 })).await;
                        continue;
                    }
                };
                let rt = shared.runtime.load();
                let exempt = rt.compiled.server.trusted_proxies.contains(peer.ip());
                // Over a cap with nothing idle to let go: close at once rather than queue (a
                // flood of connections must not pile up in memory).
                let admitted = match admission.admit(peer.ip(), exempt) {
                    Ok((admitted, shed)) => {
                        let reason = match shed {
                            Shed::None => None,
                            Shed::PerIp => Some("per_ip"),
                            Shed::Total => Some("total"),
                        };
                        if let Some(reason) = reason {
                            shared.metrics.connections_shed.get_or_create(&ShedLabels { reason }).inc();
                        }
                        admitted
                    }
                    Err(why) => {
                        shared.metrics.connections_refused.inc();
                        if why == Refused::PerIp {
                            shared.metrics.connections_refused_per_ip.inc();
                        }
                        drop(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let limits = client_limits(&rt);
                let tls_config = rt.tls.clone();
                let acme = rt.acme.clone();
                // HTTP-01 checks are answered on the plain listener, before any policy.
                let http01 = (matches!(transport, Transport::Plain { .. })
                    && rt.compiled.tls.as_ref().is_some_and(|t| t.acme.is_some()))
                .then(|| acme.clone());
                let redirect = match transport {
                    Transport::Plain { tls_port: Some(port) }
                        if rt.compiled.tls.as_ref().is_some_and(|t| t.redirect_plain) => Some(port),
                    _ => None,
                };
                drop(rt);
                let s = shared.clone();
                let watcher = graceful.watcher();
                let stop = shutdown.clone();
                let open = shared.metrics.connections_open.clone();
                open.inc();
                let faults: h1::FaultSink = {
                    let s = shared.clone();
                    Arc::new(move |fault, detail| s.metrics.client_fault(fault, detail))
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let (stream, tls) = match transport {
                        Transport::Plain { .. } => (ClientStream::Tcp(stream), None),
                        Transport::Tls => {
                            let handshake = match tls_config {
                                Some(config) => tls::accept(stream, config, acme, limits.header_timeout).await,
                                None => tls::Handshake::Failed("tls_error"),
                            };
                            let result = match &handshake {
                                tls::Handshake::Done(..) => "ok",
                                tls::Handshake::PlainHttp => "plain_http",
                                tls::Handshake::AcmeChallenge => "acme_challenge",
                                tls::Handshake::Failed(why) => why,
                            };
                            s.metrics.tls_handshakes.get_or_create(&HandshakeLabels { result }).inc();
                            match handshake {
                                tls::Handshake::Done(stream, info) => (stream, Some(info)),
                                _ => {
                                    open.dec();
                                    drop(admitted);
                                    return;
                                }
                            }
                        }
                    };
                    let state = admitted.state.clone();
                    let per_request = handler.clone();
                    let conn_tls = tls.clone();
                    let served = h1::serve(stream, limits, state, faults, stop, move |mut req, gone| {
                        if let Some(t) = &conn_tls {
                            req.extensions_mut().insert(t.clone());
                        }
                        let acme_token = http01.as_ref().and_then(|a| {
                            let token = req.uri().path().strip_prefix(crate::acme::HTTP01_PREFIX)?;
                            Some((a.clone(), token.to_owned()))
                        });
                        let redirect = redirect.map(|port| redirect_to_https(req.headers(), req.uri(), port));
                        let answering = match (&acme_token, &redirect) {
                            (None, None) => Some(per_request.handle(req.map(ClientBody::H1), peer, Some(gone))),
                            _ => None,
                        };
                        async move {
                            if let Some((acme, token)) = acme_token {
                                return http01_answer(acme.http01(&token).await);
                            }
                            match (redirect, answering) {
                                (Some(r), _) => r,
                                (None, Some(a)) => a.await,
                                (None, None) => http01_answer(None),
                            }
                        }
                    })
                    .await;
                    if let h1::Served::Http2 { stream, read } = served {
                        admitted.state.active();
                        serve_h2(s, handler, stream, read, peer, tls, watcher).await;
                    }
                    open.dec();
                    drop(admitted);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drain = Duration::from_nanos(shared.runtime.load().compiled.server.drain_timeout);
    tracing::info!(
        drain_timeout_s = drain.as_secs(),
        "shutting down: draining in-flight requests"
    );
    // HTTP/2 connections drain through hyper; HTTP/1.x ones close after their request in
    // flight. All of them are done when no connection is open.
    let drained = async {
        graceful.shutdown().await;
        admission.drained().await;
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!("drain timeout passed with requests still in flight");
    }
}

/// Binds the proxy listener with the configured backlog (the kernel caps it at
/// `net.core.somaxconn`).
pub(crate) fn bind_proxy(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A client's request body: read by Palisade's own HTTP/1.x server, or by hyper's HTTP/2 one.
#[derive(Debug)]
pub enum ClientBody {
    /// HTTP/1.x.
    H1(h1::RequestBody),
    /// HTTP/2.
    H2(hyper::body::Incoming),
    /// Already whole: what an in-process caller hands over (Envoy's ext_authz with the body
    /// it buffered, the tower middleware), taken once.
    Whole(Option<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(|e| {
                let fault = match &e {
                    h1::BodyError::TimedOut => ClientFault::SlowBody,
                    h1::BodyError::Chunked(_) => ClientFault::MalformedBody,
                    h1::BodyError::Incomplete | h1::BodyError::Io(_) => ClientFault::Aborted,
                };
                Box::new(ClientBodyError {
                    fault,
                    source: Box::new(e),
                }) as BoxError
            }),
            // An HTTP/2 stream's body fails when the client resets the stream or the
            // connection goes.
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(|e| {
                Box::new(ClientBodyError {
                    fault: ClientFault::Aborted,
                    source: Box::new(e),
                }) as BoxError
            }),
            ClientBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
            ClientBody::Whole(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
            ClientBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The answer to an ACME HTTP-01 check: the key authorization as text, or 404.
fn http01_answer(key_authorization: Option<String>) -> Answer {
    let (status, body) = match key_authorization {
        Some(k) => (http::StatusCode::OK, Bytes::from(k)),
        None => (http::StatusCode::NOT_FOUND, Bytes::new()),
    };
    let mut resp = http::Response::new(http_body_util::BodyExt::boxed_unsync(
        http_body_util::BodyExt::map_err(http_body_util::Full::new(body), |never| match never {}),
    ));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp.into()
}

/// The answer of the plain listener when `[tls] redirect_plain` is on: 308 to the same host and
/// target on the TLS port (400 without a usable `Host`).
fn redirect_to_https(headers: &http::HeaderMap, uri: &http::Uri, port: u16) -> Answer {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            // The name without its port (an IPv6 literal keeps its brackets).
            if h.starts_with('[') {
                h.find(']').and_then(|i| h.get(..=i)).unwrap_or(h)
            } else {
                h.split(':').next().unwrap_or(h)
            }
        })
        .filter(|h| {
            !h.is_empty()
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
                })
        });
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = host.map(|h| {
        if port == 443 {
            format!("https://{h}{target}")
        } else {
            format!("https://{h}:{port}{target}")
        }
    });
    let (status, location) = match location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        Some(l) => (http::StatusCode::PERMANENT_REDIRECT, Some(l)),
        None => (http::StatusCode::BAD_REQUEST, None),
    };
    let mut resp = http::Response::new(http_body_util::BodyExt::boxed_unsync(
        http_body_util::BodyExt::map_err(
            http_body_util::Empty::<Bytes>::new(),
            |never| match never {},
        ),
    ));
    *resp.status_mut() = status;
    if let Some(l) = location {
        resp.headers_mut().insert(http::header::LOCATION, l);
    }
    resp.into()
}
