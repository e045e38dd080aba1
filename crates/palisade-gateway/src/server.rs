//! Start-up, listeners, connection serving and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use palisade_config::Overrides;

use crate::admission::{Admission, Refused, Shed};
use crate::body::ClientBody;
use crate::io::{IdleTimeoutIo, InFlight};
use crate::metrics::ShedLabels;
use crate::reload::{self, ConfigSource};
use crate::token::{self, TokenSource};
use crate::{Runtime, Shared, SystemClock, admin, h1server, log, metrics, proxy, sample_api};
use palisade_engine::Clock as _;

/// How to start.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Config source.
    pub source: ConfigSource,
    /// Command-line overrides.
    pub overrides: Overrides,
    /// How often config files are checked for changes.
    pub watch_interval: Duration,
    /// `PALISADE_ADMIN_TOKEN`, if set.
    pub env_admin_token: Option<String>,
}

/// A started gateway.
pub struct Running {
    /// Bound proxy address.
    pub proxy_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Sample API address, if started.
    pub sample_addr: Option<SocketAddr>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Where the admin token came from.
    pub token_source: TokenSource,
    shutdown: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        let _ = self.admin_task.await;
        for t in self.background {
            t.abort();
        }
        flush(&self.shared).await;
    }

    /// A one-paragraph description of where everything is, for people.
    pub fn banner(&self) -> String {
        let rt = self.shared.runtime.load();
        let mode = match rt.compiled.policy.mode {
            palisade_engine::Mode::Enforce => "enforce",
            palisade_engine::Mode::Shadow => "shadow",
        };
        let mut s = format!(
            "palisade {} ({mode} mode) with policy {}\n  proxy       http://{}\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.source.describe(),
            self.proxy_addr
        );
        match self.sample_addr {
            Some(a) => s.push_str(&format!(
                "  upstream    built-in sample API at http://{a} (demo login: user \"{}\", password \"{}\")\n",
                sample_api::DEMO_USER,
                sample_api::DEMO_PASSWORD
            )),
            None => {
                for u in &rt.compiled.upstreams {
                    s.push_str(&format!("  upstream    {} -> {}\n", u.name, u.url));
                }
            }
        }
        s.push_str(&format!(
            "  admin API   http://{}/v1/  (Authorization: Bearer <admin token>)\n",
            self.admin_addr
        ));
        s.push_str(&format!(
            "  metrics     http://{}/metrics\n",
            self.admin_addr
        ));
        s.push_str(&format!(
            "  health      http://{}/healthz\n",
            self.admin_addr
        ));
        match &self.token_source {
            TokenSource::Env => s.push_str("  admin token from PALISADE_ADMIN_TOKEN\n"),
            TokenSource::Config => {
                s.push_str("  admin token from [server] admin_token in the config\n")
            }
            TokenSource::File(p) => s.push_str(&format!("  admin token in {}\n", p.display())),
        }
        s
    }
}

/// Starts the gateway: compiles the config, binds the listeners and spawns the servers.
pub async fn start(opts: RunOptions) -> anyhow::Result<Running> {
    let source = opts.source.clone();
    let (compiled, files_seen) = tokio::task::spawn_blocking(move || {
        source.compile().map(|c| {
            let seen = reload::fingerprint(&c.files);
            (c, seen)
        })
    })
    .await
    .context("config task failed")?
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut compiled = compiled;
    opts.overrides.apply(&mut compiled);

    let (sample_addr, sample_uri) = if compiled.upstreams.is_empty() {
        let addr = sample_api::spawn("127.0.0.1:0".parse()?)
            .await
            .context("starting the sample API")?;
        (
            Some(addr),
            Some(format!("http://{addr}").parse::<http::Uri>()?),
        )
    } else {
        (None, None)
    };
    let compiled = reload::finish(compiled, &Overrides::default(), sample_uri.as_ref());

    let data_dir = compiled.server.data_dir.clone();
    let cfg_token = compiled.server.admin_token.clone();
    let (admin_token, token_source) = tokio::task::spawn_blocking(move || {
        token::resolve(opts.env_admin_token, cfg_token.as_deref(), &data_dir)
    })
    .await
    .context("token task failed")?
    .context("preparing the admin token in the data dir")?;

    let key_dir = compiled.server.data_dir.clone();
    let max_nonces = compiled.keys.max_nonces;
    let keys =
        tokio::task::spawn_blocking(move || crate::keys::KeyService::open(&key_dir, max_nonces))
            .await
            .context("key store task failed")?
            .with_context(|| {
                format!(
                    "opening the key store in {}",
                    compiled.server.data_dir.display()
                )
            })?;

    raise_fd_limit(
        compiled.server.max_connections,
        compiled.upstreams.len().max(1),
    );
    let decision_log = log::DecisionLog::start(&compiled.log.decisions, compiled.log.recent)
        .context("opening the decision log")?;
    let proxy_listener = bind_proxy(compiled.server.listen, compiled.server.listen_backlog)
        .with_context(|| format!("binding the proxy listener {}", compiled.server.listen))?;
    let admin_listener = TcpListener::bind(compiled.server.admin_listen)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener {}",
                compiled.server.admin_listen
            )
        })?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let store = crate::store::SharedStore::new(compiled.store.clone());
    if let Some(s) = &store {
        tokio::spawn(s.clone().maintain());
    }
    let batcher = store
        .as_ref()
        .filter(|s| s.settings().sync == palisade_config::StoreSync::Batched)
        .map(|_| Arc::new(crate::store::Batcher::default()));
    let shared = Arc::new(Shared {
        batcher,
        store,
        runtime: ArcSwap::from_pointee(Runtime::build(compiled, None)),
        metrics: metrics::Metrics::new(),
        log: decision_log,
        clock: SystemClock::new(),
        source: opts.source,
        overrides: opts.overrides,
        sample_upstream: sample_uri,
        admin_token,
        admin_token_path: match &token_source {
            TokenSource::File(p) => Some(p.clone()),
            _ => None,
        },
        reload_lock: tokio::sync::Mutex::new(()),
        keys,
        verifier: crate::verify::BotVerifier::new(),
    });
    {
        let rt = shared.runtime.load();
        shared
            .keys
            .restore_usage(rt.engine.quota_ledger(), shared.clock.unix_ms())
            .await
            .context("loading quota usage from the store")?;
        shared
            .keys
            .restore_blocks(rt.engine.blocks(), shared.clock.unix_ms())
            .await
            .context("loading blocks from the store")?;
    }

    if shared.store.is_some() {
        tokio::spawn(crate::store::share_state(shared.clone()));
        tokio::spawn(crate::store::share_aggregates(shared.clone()));
    }
    if shared.batcher.is_some() {
        tokio::spawn(crate::store::reconcile(shared.clone()));
    }

    let (tx, rx) = watch::channel(false);
    let proxy_task = tokio::spawn(serve_proxy(proxy_listener, shared.clone(), rx.clone()));
    let admin_task = tokio::spawn(admin::serve(admin_listener, shared.clone(), rx.clone()));
    let mut background = vec![
        tokio::spawn(reload::watch_files(
            shared.clone(),
            opts.watch_interval,
            files_seen,
        )),
        tokio::spawn(flush_loop(shared.clone())),
    ];
    background.push(tokio::spawn(crate::jwks::refresh_loop(shared.clone())));
    #[cfg(unix)]
    {
        let s = shared.clone();
        background.push(tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = reload::reload(&s, "SIGHUP").await;
            }
        }));
    }
    Ok(Running {
        proxy_addr,
        admin_addr,
        sample_addr,
        shared,
        token_source,
        shutdown: tx,
        proxy_task,
        admin_task,
        background,
    })
}

/// How often quota usage and last-used times are written to the store. A crash loses at most
/// this much usage (keys themselves are written before the admin change returns).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

async fn flush(shared: &Shared) {
    let (ledger, blocks) = {
        let rt = shared.runtime.load();
        if let Some(b) = rt.engine.behaviour() {
            for e in b.take_events() {
                let route = rt.route_label(e.route);
                let mode = if e.on { "on" } else { "off" };
                shared
                    .metrics
                    .attack_mode
                    .get_or_create(&crate::metrics::AttackLabels {
                        route: crate::metrics::Label(route.clone()),
                        mode,
                    })
                    .inc();
                tracing::warn!(
                    route = %route,
                    attack_mode = mode,
                    requests_in_bucket = e.requests,
                    baseline_requests = e.baseline,
                    error_ratio = e.error_ratio,
                    "route attack mode switched {mode}"
                );
            }
        }
        (rt.engine.quota_ledger().clone(), rt.engine.blocks().clone())
    };
    if let Err(e) = shared
        .keys
        .flush(&ledger, &blocks, shared.clock.unix_ms())
        .await
    {
        shared.metrics.store_errors.inc();
        tracing::error!(error = %e, "writing quota usage to the store failed");
    }
}

async fn flush_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush(&shared).await;
        for u in &shared.runtime.load().upstreams {
            u.sweep();
        }
    }
}

/// How many request headers hyper's HTTP/1 parser accepts when not told otherwise.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The hyper connection builder with the configured timeouts and bounds, for the admin
/// listener (the proxy's HTTP/1.x side is `h1server`, its HTTP/2 side [`h2_builder`]).
pub(crate) fn connection_builder(rt: &Runtime) -> auto::Builder<TokioExecutor> {
    let s = &rt.compiled.server;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The header-read timeout is kept by `IdleTimeoutIo` (without a timer per request).
        .header_read_timeout(None::<Duration>)
        .max_buf_size(s.max_header_bytes.max(8192))
        // Responses here are mostly small: one flattened buffer measured ~4% faster than a
        // vectored write (bench/README.md).
        .writev(false);
    // hyper refuses more than 100 headers by default, from a stack array; a configured cap
    // makes it zero a heap array of that size per request, so it is only set above 100.
    if s.max_header_count > HYPER_DEFAULT_MAX_HEADERS {
        b.http1().max_headers(s.max_header_count);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

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
fn client_limits(rt: &Runtime) -> h1server::Limits {
    let s = &rt.compiled.server;
    h1server::Limits {
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

/// Serves an HTTP/2 (prior knowledge) client connection with hyper.
async fn serve_h2(
    shared: Arc<Shared>,
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
        h1server::Rewind::new(read, stream),
        limits.idle_timeout,
        Some(limits.header_timeout),
        in_flight.clone(),
    ));
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let s = shared.clone();
        let guard = in_flight.start();
        async move {
            // hyper writes the headers: the upstream's fields join them.
            let r = proxy::handle(s, req.map(ClientBody::H2), peer)
                .await
                .merged();
            drop(guard);
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let _ = watcher.watch(builder.serve_connection(io, svc)).await;
}

async fn serve_proxy(
    listener: TcpListener,
    shared: Arc<Shared>,
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
                let faults: h1server::FaultSink = {
                    let s = shared.clone();
                    Arc::new(move |fault, detail| s.metrics.client_fault(fault, detail))
                };
                tokio::spawn(async move {
                    let per_request = s.clone();
                    let state = admitted.state.clone();
                    let served = h1server::serve(stream, limits, state, faults, stop, move |req| {
                        let s = per_request.clone();
                        proxy::handle(s, req.map(ClientBody::H1), peer)
                    })
                    .await;
                    if let h1server::Served::Http2 { stream, read } = served {
                        admitted.state.active();
                        serve_h2(s, stream, read, peer, watcher).await;
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

/// Raises the soft limit on open files to the hard limit: every client connection and every
/// upstream connection is a descriptor, and running out stops accepting. Warns when even the
/// hard limit cannot hold `max_connections` plus their upstream connections.
fn raise_fd_limit(max_connections: usize, upstreams: usize) {
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256 + 64 * upstreams as u64);
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => tracing::warn!(
            open_files_limit = got,
            wanted = want,
            "the open-files limit is below what max_connections needs; raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

/// Binds the proxy listener with the configured backlog (the kernel caps it at
/// `net.core.somaxconn`).
fn bind_proxy(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
