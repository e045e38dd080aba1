//! The proxy listener: accepting connections (admission per address and in all), the HTTP/1.x
//! server and the hand-off of HTTP/2 connections to hyper, and the client's request body either
//! way.

pub mod admission;
pub mod h1;
pub mod idle;

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
use crate::telemetry::metrics::ShedLabels;
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

/// Serves an HTTP/2 (prior knowledge) client connection with hyper.
async fn serve_h2<H: Handler>(
    shared: Arc<Shared>,
    handler: H,
    stream: tokio::net::TcpStream,
    read: bytes::Bytes,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let (builder, limits) = {
        let rt = shared.runtime.load();
        (h2_builder(&rt), client_limits(&rt))
    };
    let in_flight = InFlight::default();
    let io = TokioIo::new(IdleTimeoutIo::new(
        h1::Rewind::new(read, stream),
        limits.idle_timeout,
        Some(limits.header_timeout),
        in_flight.clone(),
    ));
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let answering = handler.handle(req.map(ClientBody::H2), peer, None);
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

/// Accepts connections on `listener` until shutdown, serving their requests with `handler`,
/// then drains.
pub(crate) async fn serve_proxy<H: Handler>(
    listener: TcpListener,
    shared: Arc<Shared>,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // The caps are fixed at start (a reload that changes them takes effect at the next restart).
    let (cap, per_ip) = {
        let rt = shared.runtime.load();
        (
            rt.compiled.server.max_connections,
            rt.compiled.server.max_connections_per_ip,
        )
    };
    let admission = Admission::new(cap, per_ip);
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
                    let state = admitted.state.clone();
                    let per_request = handler.clone();
                    let served = h1::serve(stream, limits, state, faults, stop, move |req, gone| {
                        per_request.handle(req.map(ClientBody::H1), peer, Some(gone))
                    })
                    .await;
                    if let h1::Served::Http2 { stream, read } = served {
                        admitted.state.active();
                        serve_h2(s, handler, stream, read, peer, watcher).await;
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}
