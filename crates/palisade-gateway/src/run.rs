//! Start-up and shutdown: compiles the config, opens the stores, binds the listeners, spawns
//! the servers and background loops, and drains on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use palisade_config::Overrides;
use palisade_engine::Clock as _;

use crate::admin::token::{self, TokenSource};
use crate::reload::{self, ConfigSource};
use crate::telemetry::{decision_log, metrics};
use crate::{Runtime, Shared, SystemClock, admin, listen, sample_api};

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
    /// In-process (the tower middleware): no proxy or TLS listener and no sample API; requests
    /// come through [`crate::embed`]. The admin listener, reload and background loops run.
    pub in_process: bool,
}

/// A started gateway.
pub struct Running {
    /// Bound proxy address (none in-process).
    pub proxy_addr: Option<SocketAddr>,
    /// Bound TLS listener address, when `[tls]` is configured.
    pub tls_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Sample API address, if started.
    pub sample_addr: Option<SocketAddr>,
    /// The response-feedback UDP address, when `[decision.feedback] udp` is configured.
    pub feedback_addr: Option<SocketAddr>,
    /// Envoy's ext_authz gRPC address, when `[decision] ext_authz` is configured.
    pub ext_authz_addr: Option<SocketAddr>,
    /// The HAProxy SPOE agent's address, when `[decision] spoe` is configured.
    pub spoe_addr: Option<SocketAddr>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Where the admin token came from.
    pub token_source: TokenSource,
    shutdown: watch::Sender<bool>,
    proxy_task: Option<JoinHandle<()>>,
    tls_task: Option<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.proxy_task {
            let _ = t.await;
        }
        if let Some(t) = self.tls_task {
            let _ = t.await;
        }
        let _ = self.admin_task.await;
        for t in self.background {
            t.abort();
        }
        flush(&self.shared).await;
        // Every decision line queued so far reaches its file (the writer thread joins).
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.log.close()).await;
    }

    /// A one-paragraph description of where everything is, for people.
    pub fn banner(&self) -> String {
        let rt = self.shared.runtime.load();
        let mode = match rt.compiled.policy.mode {
            palisade_engine::Mode::Enforce => "enforce",
            palisade_engine::Mode::Shadow => "shadow",
        };
        let mut s = format!(
            "palisade {} ({mode} mode) with policy {}\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.source.describe(),
        );
        match self.proxy_addr {
            Some(a) => s.push_str(&format!("  proxy       http://{a}\n")),
            None => s.push_str("  in-process  (requests come through the middleware)\n"),
        }
        if let Some(a) = self.tls_addr {
            s.push_str(&format!("  TLS         https://{a}\n"));
        }
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
        if let Some(a) = self.spoe_addr {
            s.push_str(&format!(
                "  SPOE agent  {a} (HAProxy stream processing offload)\n"
            ));
        }
        if let Some(a) = self.ext_authz_addr {
            s.push_str(&format!(
                "  ext_authz   grpc://{a} (Envoy external authorization)\n"
            ));
        }
        if let Some(a) = self.feedback_addr {
            s.push_str(&format!(
                "  feedback    udp://{a} (the front's access log lines)\n"
            ));
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

    let (sample_addr, sample_uri) = if compiled.upstreams.is_empty() && !opts.in_process {
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

    let challenge_dir = compiled.server.data_dir.clone();
    let challenge_key =
        tokio::task::spawn_blocking(move || crate::challenge::load_or_make_key(&challenge_dir))
            .await
            .context("challenge key task failed")?
            .context("preparing the challenge key in the data dir")?;
    let zones = tokio::task::spawn_blocking(crate::challenge::read_zones)
        .await
        .unwrap_or_default();
    let key_dir = compiled.server.data_dir.clone();
    let max_nonces = compiled.keys.max_nonces;
    let keys = tokio::task::spawn_blocking(move || {
        crate::auth::keys::KeyService::open(&key_dir, max_nonces)
    })
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
    let decision_log =
        decision_log::DecisionLog::start(&compiled.log.decisions, compiled.log.recent)
            .context("opening the decision log")?;
    let proxy_listener = if opts.in_process {
        None
    } else {
        Some(
            listen::bind_proxy(compiled.server.listen, compiled.server.listen_backlog)
                .with_context(|| {
                    format!("binding the proxy listener {}", compiled.server.listen)
                })?,
        )
    };
    let admin_listener = tokio::net::TcpListener::bind(compiled.server.admin_listen)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener {}",
                compiled.server.admin_listen
            )
        })?;
    let tls_listener = match compiled.tls.as_ref().filter(|_| !opts.in_process) {
        Some(t) => Some(
            listen::bind_proxy(t.listen, compiled.server.listen_backlog)
                .with_context(|| format!("binding the TLS listener {}", t.listen))?,
        ),
        None => None,
    };
    let proxy_addr = proxy_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(t) = &compiled.tls {
        warn_on_expiry(t);
    }
    let admin_addr = admin_listener.local_addr()?;
    let feedback = match &compiled.feedback {
        Some(f) => Some(crate::proxy::feedback::Listeners::bind(f).await?),
        None => None,
    };
    let feedback_addr = feedback.as_ref().and_then(|f| f.udp_addr());
    let ext_authz_listener = match compiled.ext_authz {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the ext_authz listener {a}"))?,
        ),
        None => None,
    };
    let spoe_listener = match compiled.spoe {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the SPOE agent listener {a}"))?,
        ),
        None => None,
    };
    let spoe_addr = spoe_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let ext_authz_addr = ext_authz_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let store = crate::cluster::SharedStore::new(compiled.store.clone());
    if let Some(s) = &store {
        tokio::spawn(s.clone().maintain());
    }
    let batcher = store
        .as_ref()
        .filter(|s| s.settings().sync == palisade_config::StoreSync::Batched)
        .map(|_| Arc::new(crate::cluster::Batcher::default()));
    let shared = Arc::new(Shared {
        agent_directories: Default::default(),
        decision_answers: Default::default(),
        feedback: Default::default(),
        series: Default::default(),
        challenges: {
            let c = crate::challenge::Challenges::new(&challenge_key);
            c.set_zones(zones);
            Arc::new(c)
        },
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
        verifier: crate::bot_dns::BotVerifier::new(),
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

    if let Some(store) = &shared.store {
        shared.runtime.load().acme.set_store(store.clone());
        tokio::spawn(crate::challenge::join_cluster_key(
            shared.clone(),
            challenge_key.clone(),
        ));
    }
    if shared.store.is_some() {
        tokio::spawn(crate::cluster::share_state(shared.clone()));
        tokio::spawn(crate::cluster::share_aggregates(shared.clone()));
    }
    if shared.batcher.is_some() {
        tokio::spawn(crate::cluster::reconcile(shared.clone()));
    }

    let (tx, rx) = watch::channel(false);
    let admission = listen::admission(&shared);
    let proxy_task = proxy_listener.map(|l| {
        tokio::spawn(listen::serve_proxy(
            l,
            shared.clone(),
            crate::proxy::Proxy(shared.clone()),
            admission.clone(),
            listen::Transport::Plain {
                tls_port: tls_addr.map(|a| a.port()),
            },
            rx.clone(),
        ))
    });
    let tls_task = tls_listener.map(|l| {
        tokio::spawn(listen::serve_proxy(
            l,
            shared.clone(),
            crate::proxy::Proxy(shared.clone()),
            admission,
            listen::Transport::Tls,
            rx.clone(),
        ))
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, shared.clone(), rx.clone()));
    let mut background = vec![
        tokio::spawn(reload::watch_files(
            shared.clone(),
            opts.watch_interval,
            files_seen,
        )),
        tokio::spawn(flush_loop(shared.clone())),
    ];
    background.push(tokio::spawn(crate::bot_ranges::refresh_loop(
        shared.clone(),
    )));
    background.push(tokio::spawn(crate::auth::jwks::refresh_loop(
        shared.clone(),
    )));
    background.push(tokio::spawn(crate::auth::agent_directory::refresh_loop(
        shared.clone(),
    )));
    if tls_addr.is_some() {
        background.push(tokio::spawn(crate::acme::manage(shared.clone())));
    }
    if let Some(f) = feedback {
        background.extend(f.spawn(shared.clone()));
    }
    if let Some(l) = spoe_listener {
        background.push(tokio::spawn(crate::proxy::spoa::serve(
            l,
            shared.clone(),
            rx.clone(),
        )));
    }
    if let Some(l) = ext_authz_listener {
        background.push(tokio::spawn(crate::proxy::ext_authz::serve(
            l,
            shared.clone(),
            rx.clone(),
        )));
    }
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
        spoe_addr,
        feedback_addr,
        ext_authz_addr,
        tls_addr,
        tls_task,
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

/// Logs a warning for each certificate that expires within two weeks (or has).
pub fn warn_on_expiry(t: &palisade_config::TlsSettings) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for c in &t.certificates {
        let days = (c.not_after - now) / 86_400;
        if days < 14 {
            tracing::warn!(
                certificate = %c.path.display(),
                names = ?c.names,
                days_left = days,
                "TLS certificate expires soon (or has expired)"
            );
        }
    }
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
                    .get_or_create(&crate::telemetry::metrics::AttackLabels {
                        route: crate::telemetry::metrics::Label(route.clone()),
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
