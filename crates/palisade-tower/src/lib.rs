//! Palisade inside a Rust service: a tower [`Layer`](tower_layer::Layer) that judges every
//! request with the gateway's own engine — the same config file, policy, limits, keys,
//! behaviour, challenges, decision log, metrics and admin API (and, with `[store]`, the same
//! Redis cluster state) — before the wrapped service sees it.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let palisade = palisade_tower::Palisade::from_config("palisade.toml").await?;
//! let app = axum::Router::new()
//!     .route("/api/items/{id}", axum::routing::get(|| async { "item" }))
//!     .layer(palisade.layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // The client's address comes from axum's ConnectInfo.
//! axum::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! )
//! .await?;
//! palisade.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! An allowed request reaches the service with `X-Request-Id` and the `X-Palisade-*` headers
//! (score, signals, key id, account); its answer gets the RateLimit headers, and its status (and
//! the route's cost and spend headers) is fed back to behaviour and the quotas, as in proxy
//! mode. A refused one is answered by Palisade (429 with `Retry-After`, 401 with a challenge,
//! 403, a honeypot's 404) and never reaches the service. The config file is reloaded when it
//! changes (a bad one keeps the old policy); the admin API and `/metrics` are on the config's
//! `admin_listen`.
//!
//! The client's address is read from the request's extensions: axum's
//! `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info`), or a plain
//! `SocketAddr`; `X-Forwarded-For` is believed from `[server] trusted_proxies` only, as in the
//! gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use palisade_gateway::embed::{self, Judgement};
use palisade_gateway::{ConfigSource, RunOptions, Running, Shared};

/// Errors of request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of the layer's responses: the service's own, or Palisade's refusal.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How to start Palisade in-process.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config: a file (watched and reloaded) or the embedded default policy.
    pub source: ConfigSource,
    /// Overrides of the config's `admin_listen` and `data_dir` (`listen` and `upstream` do not
    /// apply in-process).
    pub overrides: palisade_config::Overrides,
    /// The admin token (else `[server] admin_token`, else one made in the data dir).
    pub admin_token: Option<String>,
    /// How often the config file is checked for changes.
    pub watch_interval: Duration,
}

impl Options {
    /// The config file at `path`, as it is.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            source: ConfigSource::File(path.into()),
            overrides: Default::default(),
            admin_token: std::env::var("PALISADE_ADMIN_TOKEN").ok(),
            watch_interval: Duration::from_secs(2),
        }
    }
}

/// Palisade running in this process: its state, background loops and admin listener. Make the
/// middleware with [`Palisade::layer`]; stop with [`Palisade::shutdown`] (decision log lines
/// queued so far are written).
pub struct Palisade {
    running: Running,
}

impl Palisade {
    /// Starts with the config file at `path`.
    pub async fn from_config(path: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Self::start(Options::file(path)).await
    }

    /// Starts with `options`.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let running = palisade_gateway::start(RunOptions {
            source: options.source,
            overrides: options.overrides,
            watch_interval: options.watch_interval,
            env_admin_token: options.admin_token,
            in_process: true,
        })
        .await?;
        Ok(Self { running })
    }

    /// The middleware (cheap to clone; every clone judges with the same state).
    pub fn layer(&self) -> PalisadeLayer {
        PalisadeLayer {
            shared: self.running.shared.clone(),
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Where the admin API and `/metrics` listen.
    pub fn admin_addr(&self) -> SocketAddr {
        self.running.admin_addr
    }

    /// Stops the admin listener and background loops and writes what the decision log holds.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// The tower layer: wraps a service so that Palisade judges every request first.
#[derive(Clone)]
pub struct PalisadeLayer {
    shared: Arc<Shared>,
    warned: Arc<AtomicBool>,
}

impl<S> tower_layer::Layer<S> for PalisadeLayer {
    type Service = PalisadeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PalisadeService {
            inner,
            shared: self.shared.clone(),
            warned: self.warned.clone(),
        }
    }
}

/// A service behind Palisade (see [`PalisadeLayer`]).
#[derive(Clone)]
pub struct PalisadeService<S> {
    inner: S,
    shared: Arc<Shared>,
    warned: Arc<AtomicBool>,
}

impl<S, B, RB> tower_service::Service<Request<B>> for PalisadeService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was polled ready serves this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let warned = self.warned.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let peer = peer_of(&parts.extensions).unwrap_or_else(|| {
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "palisade-tower: no client address in the request's extensions (serve \
                         with into_make_service_with_connect_info::<SocketAddr>()); every client \
                         counts as 0.0.0.0"
                    );
                }
                SocketAddr::from(([0, 0, 0, 0], 0))
            });
            let (seen, body) = if embed::wants_body(&shared, &parts) {
                let max = usize::try_from(embed::max_body(&shared)).unwrap_or(usize::MAX);
                match http_body_util::Limited::new(body, max).collect().await {
                    Ok(b) => {
                        let b = b.to_bytes();
                        (Some(b.clone()), B::from(b))
                    }
                    Err(_) => return Ok(too_large()),
                }
            } else {
                (None, body)
            };
            let head = head_of(&parts);
            match embed::judge(&shared, head, seen, peer, true).await {
                Judgement::Refuse(r) => Ok(r),
                Judgement::Allow {
                    request_id,
                    upstream,
                    client,
                } => {
                    embed::set_all(&mut parts.headers, &upstream);
                    let response = inner.call(Request::from_parts(parts, body)).await?;
                    embed::answered(
                        &shared,
                        &request_id,
                        response.status().as_u16(),
                        response.headers(),
                    );
                    let (mut rparts, rbody) = response.into_parts();
                    embed::set_all(&mut rparts.headers, &client);
                    Ok(Response::from_parts(
                        rparts,
                        rbody.map_err(Into::into).boxed_unsync(),
                    ))
                }
            }
        })
    }
}

/// The client's address: axum's `ConnectInfo`, or a `SocketAddr` put there by the server.
fn peer_of(ext: &http::Extensions) -> Option<SocketAddr> {
    ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| ext.get::<SocketAddr>().copied())
}

/// The request's head for judging (the original keeps its extensions for the service).
fn head_of(parts: &http::request::Parts) -> http::request::Parts {
    let mut head = Request::new(()).into_parts().0;
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// A body over `[server] max_body_bytes` on a route whose body is read before deciding.
fn too_large() -> Response<Body> {
    let body = Bytes::from_static(
        br#"{"error":"payload_too_large","message":"the request body is too large"}"#,
    );
    let mut r = Response::new(
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
