//! Upstream clients (pooled, HTTP/1.1 or h2c) and the header rewriting of forwarded requests;
//! the client of documents the gateway fetches for itself.

pub mod documents;
pub mod h1;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use palisade_config::{ServerSettings, UpstreamProtocol, UpstreamSettings};

use crate::client::h1::{H1Error, H1Pool, OutBody};
use crate::wire::body::{BoxError, ProxyBody};
use crate::wire::fields::{Answer, HeadLines};

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("upstream connect failed: {0}")]
    Connect(String),
    /// The request target could not be built.
    #[error("bad request target")]
    BadTarget,
    /// The exchange failed (the source chain tells why, e.g. a body over the limit).
    #[error("upstream exchange failed: {0}")]
    Exchange(#[source] BoxError),
    /// No response head within the upstream timeout.
    #[error("upstream timed out")]
    Timeout,
}

impl UpstreamError {
    /// Whether the failure was in connecting.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// A pooled client for one upstream.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Config name.
    pub name: String,
    /// Base URL.
    pub base: Uri,
    /// Protocol.
    pub protocol: UpstreamProtocol,
    connect_timeout: u64,
    max_idle: usize,
    transport: Transport,
}

#[derive(Clone, Debug)]
enum Transport {
    /// Our own HTTP/1.1 client: I/O in the request's task (see [`crate::h1`]).
    Http1(H1Pool),
    /// hyper-util's pooled client, HTTP/2 only.
    H2c(Box<Client<HttpConnector, ProxyBody>>),
}

impl Upstream {
    /// Builds a client: [`H1Pool`] for HTTP/1.1 upstreams, hyper-util's pooled client for h2c.
    pub fn new(u: &UpstreamSettings, server: &ServerSettings) -> Self {
        let connect_timeout = Duration::from_nanos(server.connect_timeout);
        let transport = match u.protocol {
            UpstreamProtocol::Http1 => Transport::Http1(H1Pool::new(
                u.url.host().unwrap_or("127.0.0.1"),
                u.url.port_u16().unwrap_or(80),
                connect_timeout,
                u.max_idle_connections,
            )),
            UpstreamProtocol::H2c => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(connect_timeout));
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(crate::client::h1::IDLE_TIMEOUT)
                    .pool_max_idle_per_host(u.max_idle_connections)
                    .http2_only(true);
                Transport::H2c(Box::new(builder.build(connector)))
            }
        };
        Self {
            name: u.name.clone(),
            base: u.url.clone(),
            protocol: u.protocol,
            connect_timeout: server.connect_timeout,
            max_idle: u.max_idle_connections,
            transport,
        }
    }

    /// Closes pooled HTTP/1.1 connections that timed out or were closed by the upstream.
    pub fn sweep(&self) {
        if let Transport::Http1(pool) = &self.transport {
            pool.sweep();
        }
    }

    /// Whether this client can keep serving `u` (so its pool survives a reload).
    pub fn same_as(&self, u: &UpstreamSettings, server: &ServerSettings) -> bool {
        self.name == u.name
            && self.base == u.url
            && self.protocol == u.protocol
            && self.connect_timeout == server.connect_timeout
            && self.max_idle == u.max_idle_connections
    }

    /// Sends a request whose headers are already rewritten. `host` is the client's host, used
    /// when the request has no `Host` header (an HTTP/2 client sends `:authority` instead).
    /// Fails with [`UpstreamError::Timeout`] when no response head arrives within `timeout` of
    /// `started` (when the caller began the exchange).
    ///
    /// The request's head is borrowed, not moved: the future that waits for the answer holds
    /// a reference, not a copy.
    pub async fn send(
        &self,
        parts: &mut http::request::Parts,
        added: &HeadLines,
        body: OutBody,
        host: Option<&str>,
        started: std::time::Instant,
        timeout: Duration,
    ) -> Result<Answer, UpstreamError> {
        let prefix = self.base.path().trim_end_matches('/');
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target: Cow<'_, str> = if prefix.is_empty() {
            Cow::Borrowed(pq)
        } else {
            Cow::Owned(format!("{prefix}{pq}"))
        };
        match &self.transport {
            Transport::Http1(pool) => {
                // HTTP/1.1 needs a Host: the client's, else (an HTTP/1.0 client without one)
                // the upstream's own authority.
                if !parts.headers.contains_key(header::HOST) {
                    let v = host
                        .and_then(|h| HeaderValue::from_str(h).ok())
                        .or_else(|| {
                            self.base
                                .authority()
                                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                        });
                    if let Some(v) = v {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                return pool
                    .send(
                        &parts.method,
                        &target,
                        &parts.headers,
                        added,
                        body,
                        started,
                        timeout,
                    )
                    .await
                    .map_err(|e| match e {
                        H1Error::TimedOut => UpstreamError::Timeout,
                        e if e.is_connect() => UpstreamError::Connect(e.to_string()),
                        H1Error::Body(inner) => UpstreamError::Exchange(inner),
                        e => UpstreamError::Exchange(Box::new(e)),
                    });
            }
            Transport::H2c(client) => {
                let target = target.into_owned();
                // Boxed: its state would otherwise make every HTTP/1.1 request's future larger.
                Box::pin(self.send_h2(client, parts, target, added, body, timeout)).await
            }
        }
    }

    /// [`Upstream::send`] over HTTP/2 (h2c, prior knowledge).
    async fn send_h2(
        &self,
        client: &Client<HttpConnector, ProxyBody>,
        parts: &mut http::request::Parts,
        target: String,
        added: &HeadLines,
        body: OutBody,
        timeout: Duration,
    ) -> Result<Answer, UpstreamError> {
        // The head is taken: the client sends it and keeps nothing of it.
        let mut parts = std::mem::replace(parts, Request::new(()).into_parts().0);
        let scheme = self.base.scheme_str().unwrap_or("http");
        let authority = self.base.authority().map_or("", |a| a.as_str());
        parts.uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(target)
            .build()
            .map_err(|_| UpstreamError::BadTarget)?;
        parts.version = Version::HTTP_2;
        added.apply(&mut parts.headers);
        // HTTP/2 carries the authority in :authority; the client's host is in X-Forwarded-Host.
        parts.headers.remove(header::HOST);
        // The upstream's clock runs while it holds the request up, not while the client is
        // still sending its body.
        let progress = Arc::new(BodyProgress::default());
        let body = Watched {
            inner: body.into_proxy_body(),
            progress: progress.clone(),
        }
        .boxed_unsync();
        let request = client.request(Request::from_parts(parts, body));
        let mut request = std::pin::pin!(request);
        let started = tokio::time::Instant::now();
        let resp = loop {
            let until = progress.upstream_deadline(started, timeout);
            tokio::select! {
                r = &mut request => break r,
                _ = tokio::time::sleep_until(until) => {
                    if progress.upstream_deadline(started, timeout) <= tokio::time::Instant::now() {
                        return Err(UpstreamError::Timeout);
                    }
                }
            }
        }
        .map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect(e.to_string())
            } else {
                UpstreamError::Exchange(Box::new(e))
            }
        })?;
        Ok(resp
            .map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
            .into())
    }
}

/// How far an h2c request's body got: when it last moved, whether it waits on the client,
/// and whether it ended.
#[derive(Debug, Default)]
struct BodyProgress {
    inner: std::sync::Mutex<ProgressState>,
}

#[derive(Debug, Default)]
struct ProgressState {
    moved: Option<tokio::time::Instant>,
    waiting_on_client: bool,
}

impl BodyProgress {
    fn state(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the upstream has held the request up for `timeout`: from the start, or from the
    /// body's last movement; never while the body waits on the client.
    fn upstream_deadline(
        &self,
        started: tokio::time::Instant,
        timeout: Duration,
    ) -> tokio::time::Instant {
        let st = self.state();
        if st.waiting_on_client {
            // Re-checked after `timeout`: the client side bounds its own slowness.
            return tokio::time::Instant::now() + timeout;
        }
        st.moved.unwrap_or(started).max(started) + timeout
    }
}

/// A request body that reports its progress to a [`BodyProgress`].
struct Watched {
    inner: ProxyBody,
    progress: Arc<BodyProgress>,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let mut st = self.progress.state();
        st.waiting_on_client = polled.is_pending();
        st.moved = Some(tokio::time::Instant::now());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
