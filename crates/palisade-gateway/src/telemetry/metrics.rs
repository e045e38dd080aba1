//! Prometheus metrics. Labels are bounded by the config (route, rule, limit names) or by code
//! (action, kind); no label ever carries an IP, a key or a user agent.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use palisade_engine::Engine;

/// A label value shared with the policy (route and rule names): cloning it is a reference
/// count, not an allocation, which matters on the request path.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// Labels of a decided request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Route name.
    pub route: Label,
    /// Logged action (`allow`, `limit`, `would_limit`, ...).
    pub action: &'static str,
    /// Rule (`limit/per-ip`, `list/deny`, `default/allow`, ...).
    pub rule: Label,
}

/// Labels with a route only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Label,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Route name.
    pub route: Label,
    /// `connect`, `timeout`, `body_too_large` or `other`.
    pub kind: &'static str,
}

/// A challenge's life: its kind, route and what happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChallengeLabels {
    /// `page` (a browser's proof-of-work), `pow` (an API client's), `wait` (no JavaScript).
    pub kind: &'static str,
    /// The route challenged.
    pub route: Label,
    /// `issued`, `solved`, `failed`, `expired` or `replayed`.
    pub result: &'static str,
}

/// How a signed agent's key-directory fetch ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectoryLabels {
    /// `ok`, `busy` (too many in flight), or why it failed (`private_address`, `dns_error`,
    /// `connect_error`, `tls_error`, `http_error`, `http_status`, `content_type`, `too_large`,
    /// `timeout`, `directory_not_json`, `directory_unsigned`, `directory_signature_invalid`,
    /// `no_usable_key`, ...).
    pub result: &'static str,
}

/// How an ACME certificate order ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeLabels {
    /// `issued` or `failed`.
    pub result: &'static str,
}

/// What became of a response-feedback line (`[decision.feedback]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    /// `matched` (fed to behaviour), `unknown` (no decision waiting: late, or not ours),
    /// `not_json`, `no_request_id`, `no_status`, or `disabled`.
    pub result: &'static str,
}

/// How a TLS handshake ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok`, `plain_http`, or why it failed (`handshake_timeout`, `not_a_client_hello`,
    /// `hello_too_large`, `malformed_hello`, `closed_in_hello`, `no_common_alpn`, `incompatible`,
    /// `invalid_message`, `client_alert`, `tls_error`, `io_error`), or `acme_challenge` (an ACME
    /// CA's TLS-ALPN-01 check).
    pub result: &'static str,
}

/// Why a connection was let go.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// `per_ip` (its address was at its cap), `total` (`max_connections`) or `fd` (file
    /// descriptors ran out).
    pub reason: &'static str,
}

/// Labels of a client's fault.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientErrorLabels {
    /// `slow_read`, `slow_body`, `aborted`, `malformed_body` or `bad_head`.
    pub kind: &'static str,
}

/// Labels of a config reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a fetch of a bot's published ranges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BotRangesLabels {
    /// The built-in bot's name (from the config, never from a client).
    pub bot: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// All metrics of one gateway.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, action, rule.
    pub requests: Family<DecisionLabels, Counter>,
    /// Shadowed decisions by route, action, rule.
    pub shadow: Family<DecisionLabels, Counter>,
    /// Engine decision time.
    pub decision_seconds: Histogram,
    /// Upstream time to response headers.
    pub upstream_seconds: Family<RouteLabels, Histogram>,
    /// Upstream failures.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Engine failures (fail-open/closed applied).
    pub engine_errors: Counter,
    /// Config reloads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Fetches of bots' published ranges.
    pub bot_ranges: Family<BotRangesLabels, Counter>,
    /// Decision log lines dropped because the writer fell behind.
    pub log_dropped: Counter,
    /// Client connections open now.
    pub connections_open: prometheus_client::metrics::gauge::Gauge,
    /// Client connections closed on arrival: a cap was reached and nothing could be shed.
    pub connections_refused: Counter,
    /// Of those, refused because their address was at `max_connections_per_ip`.
    pub connections_refused_per_ip: Counter,
    /// Idle or slow connections let go to make room, by reason.
    pub connections_shed: Family<ShedLabels, Counter>,
    /// TLS handshakes by result.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Challenges by kind, route and result.
    pub challenges: Family<ChallengeLabels, Counter>,
    /// Seconds from a challenge to its solution.
    pub challenge_solve_seconds: Histogram,
    /// Signed agents' key-directory fetches by result.
    pub agent_directory_fetches: Family<DirectoryLabels, Counter>,
    /// ACME certificate orders by result.
    pub acme_orders: Family<AcmeLabels, Counter>,
    /// Response-feedback lines by what became of them.
    pub feedback: Family<FeedbackLabels, Counter>,
    /// Seconds until the ACME certificate expires (absent until one is held).
    pub acme_expiry: prometheus_client::metrics::gauge::Gauge,
    /// Requests that failed on the client's side, by kind (never counted as upstream errors).
    pub client_errors: Family<ClientErrorLabels, Counter>,
    /// When a client fault was last logged (unix seconds), and how many went unlogged since.
    client_fault_logged: std::sync::atomic::AtomicU64,
    client_faults_unlogged: std::sync::atomic::AtomicU64,
    /// The engine's and the store's state as of the last scrape (read by the registry).
    state: StateCollector,
    /// Store writes that failed (quota usage, last-used times).
    pub store_errors: Counter,
    /// Admin changes to keys, by action.
    pub key_changes: Family<KeyChangeLabels, Counter>,
    /// Attack-mode switches, by route and direction.
    pub attack_mode: Family<AttackLabels, Counter>,
}

/// Labels of attack-mode switches.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttackLabels {
    /// The route.
    pub route: Label,
    /// `on` or `off`.
    pub mode: &'static str,
}

/// Labels of key-change counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyChangeLabels {
    /// `create`, `update`, `revoke`, `rotate`.
    pub action: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let requests = Family::<DecisionLabels, Counter>::default();
        let shadow = Family::<DecisionLabels, Counter>::default();
        let decision_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 16));
        let upstream_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let engine_errors = Counter::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let bot_ranges = Family::<BotRangesLabels, Counter>::default();
        let log_dropped = Counter::default();
        let connections_open = prometheus_client::metrics::gauge::Gauge::default();
        let connections_refused = Counter::default();
        let connections_refused_per_ip = Counter::default();
        let connections_shed = Family::<ShedLabels, Counter>::default();
        let tls_handshakes = Family::<HandshakeLabels, Counter>::default();
        let acme_orders = Family::<AcmeLabels, Counter>::default();
        let feedback = Family::<FeedbackLabels, Counter>::default();
        let agent_directory_fetches = Family::<DirectoryLabels, Counter>::default();
        let challenges = Family::<ChallengeLabels, Counter>::default();
        let challenge_solve_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 10));
        let acme_expiry = prometheus_client::metrics::gauge::Gauge::default();
        let state = StateCollector::default();
        registry.register_collector(Box::new(state.clone()));
        let client_errors = Family::<ClientErrorLabels, Counter>::default();
        for f in crate::wire::body::ClientFault::ALL {
            drop(client_errors.get_or_create(&ClientErrorLabels { kind: f.name() }));
        }
        registry.register(
            "client_errors",
            "Requests that failed on the client's side (slow, aborted, malformed), by kind",
            client_errors.clone(),
        );
        let store_errors = Counter::default();
        let key_changes = Family::<KeyChangeLabels, Counter>::default();
        let attack_mode = Family::<AttackLabels, Counter>::default();
        registry.register(
            "attack_mode_switches",
            "Routes switched into (on) or out of (off) attack mode",
            attack_mode.clone(),
        );
        registry.register(
            "store_errors",
            "Writes to the embedded store that failed",
            store_errors.clone(),
        );
        registry.register(
            "key_changes",
            "API key changes through the admin API, by action",
            key_changes.clone(),
        );
        registry.register(
            "requests",
            "Requests decided, by route, action and rule",
            requests.clone(),
        );
        registry.register(
            "shadow_decisions",
            "Decisions computed but not enforced (shadow mode), by route, action and rule",
            shadow.clone(),
        );
        registry.register(
            "decision_duration_seconds",
            "Time the engine took to decide a request",
            decision_seconds.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from forwarding to upstream response headers",
            upstream_seconds.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by route and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "engine_errors",
            "Engine failures (the on_engine_error policy applied)",
            engine_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        registry.register(
            "bot_ranges_fetches",
            "Fetches of built-in bots' published ranges ([bots.ranges]) by bot and result",
            bot_ranges.clone(),
        );
        registry.register(
            "decision_log_dropped",
            "Decision log lines dropped because the writer fell behind",
            log_dropped.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed on arrival: a cap was reached and no idle or slow connection could be let go",
            connections_refused.clone(),
        );
        registry.register(
            "connections_refused_per_ip",
            "Client connections closed on arrival because their address was at max_connections_per_ip",
            connections_refused_per_ip.clone(),
        );
        registry.register(
            "connections_shed",
            "Idle or slow client connections let go to make room for new ones, by reason",
            connections_shed.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the TLS listener, by result",
            tls_handshakes.clone(),
        );
        registry.register(
            "challenges",
            "Challenges by kind (page, pow, wait), route and result (issued, solved, failed, expired, replayed)",
            challenges.clone(),
        );
        registry.register(
            "challenge_solve_seconds",
            "Seconds from a challenge being issued to its solution",
            challenge_solve_seconds.clone(),
        );
        registry.register(
            "agent_directory_fetches",
            "Fetches of signed agents' key directories (Web Bot Auth), by result",
            agent_directory_fetches.clone(),
        );
        registry.register(
            "acme_orders",
            "ACME certificate orders this gateway made, by result",
            acme_orders.clone(),
        );
        registry.register(
            "feedback_lines",
            "Access log lines fronts sent back (response feedback), by what became of them",
            feedback.clone(),
        );
        registry.register(
            "acme_certificate_expiry_seconds",
            "Seconds until the certificate ordered over ACME expires (0: none held yet)",
            acme_expiry.clone(),
        );
        Self {
            registry,
            requests,
            shadow,
            decision_seconds,
            upstream_seconds,
            upstream_errors,
            engine_errors,
            reloads,
            bot_ranges,
            log_dropped,
            connections_open,
            connections_refused,
            connections_refused_per_ip,
            connections_shed,
            tls_handshakes,
            acme_orders,
            feedback,
            acme_expiry,
            agent_directory_fetches,
            challenges,
            challenge_solve_seconds,
            client_errors,
            client_fault_logged: std::sync::atomic::AtomicU64::new(0),
            client_faults_unlogged: std::sync::atomic::AtomicU64::new(0),
            state,
            store_errors,
            key_changes,
            attack_mode,
        }
    }

    /// Counts a client's fault, and logs it at most once every ten seconds (clients aborting
    /// uploads are ordinary; a line for each would drown the log).
    pub fn client_fault(
        &self,
        fault: crate::wire::body::ClientFault,
        detail: &dyn std::fmt::Display,
    ) {
        use std::sync::atomic::Ordering;
        self.client_errors
            .get_or_create(&ClientErrorLabels { kind: fault.name() })
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.client_fault_logged.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .client_fault_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unlogged = self.client_faults_unlogged.swap(0, Ordering::Relaxed);
            tracing::info!(
                kind = fault.name(),
                error = %detail,
                similar_unlogged = unlogged,
                "client error (at most one line every 10 s; all are counted in palisade_client_errors_total)"
            );
        } else {
            self.client_faults_unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition: the registry, with the live sizes of the engine's tables,
    /// the store's health and behaviour's state read now (one registry, one encoder).
    pub fn render(&self, engine: &Engine, store: Option<&crate::cluster::SharedStore>) -> String {
        self.state.refresh(engine, store);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A route's most used series, resolved from their families once: a plain allow (`allow`,
/// `default/allow`) and the upstream latency.
#[derive(Debug, Clone)]
pub struct RouteSeries {
    /// `palisade_requests_total{route, action="allow", rule="default/allow"}`.
    pub allowed: Counter,
    /// `palisade_upstream_seconds{route}`.
    pub upstream_seconds: Histogram,
}

impl RouteSeries {
    /// Looks the series up (creating them) in `metrics`' families.
    pub fn new(metrics: &Metrics, route: &Arc<str>) -> Self {
        Self {
            allowed: metrics
                .requests
                .get_or_create(&DecisionLabels {
                    route: Label(route.clone()),
                    action: "allow",
                    rule: Label(Arc::from(palisade_engine::DEFAULT_ALLOW_RULE)),
                })
                .clone(),
            upstream_seconds: metrics
                .upstream_seconds
                .get_or_create(&RouteLabels {
                    route: Label(route.clone()),
                })
                .clone(),
        }
    }
}

/// Per-limit table sizes.
#[derive(Debug, Clone)]
struct LimitRow {
    name: Arc<str>,
    len: u64,
    capacity: u64,
    evictions: u64,
    bytes: u64,
}

/// The shared store's counters.
#[derive(Debug, Clone, Copy)]
struct StoreRow {
    healthy: bool,
    commands: u64,
    errors: u64,
    fallbacks: u64,
}

/// Behaviour's table and detection counters.
#[derive(Debug, Clone)]
struct BehaviourRow {
    tracked: u64,
    capacity: u64,
    evictions: u64,
    bytes: u64,
    failed_logins: u64,
    attack: Vec<(Arc<str>, bool)>,
}

#[derive(Debug, Default)]
struct State {
    limits: Vec<LimitRow>,
    bot_cache: u64,
    store: Option<StoreRow>,
    rule_errors: Option<u64>,
    behaviour: Option<BehaviourRow>,
}

/// State read from the engine and the store at scrape time, encoded by the registry like every
/// other metric.
#[derive(Debug, Default, Clone)]
struct StateCollector(Arc<std::sync::Mutex<State>>);

impl StateCollector {
    fn refresh(&self, engine: &Engine, store: Option<&crate::cluster::SharedStore>) {
        use std::sync::atomic::Ordering::Relaxed;
        let tables = engine.tables();
        let limits = engine
            .policy()
            .limits
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let t = tables.get(i);
                LimitRow {
                    name: spec.name.clone(),
                    len: t.map_or(0, |t| t.len() as u64),
                    capacity: t.map_or(0, |t| t.capacity()),
                    evictions: t.map_or(0, |t| t.evictions()),
                    bytes: t.map_or(0, |t| t.approx_bytes() as u64),
                }
            })
            .collect();
        let behaviour = engine.behaviour().map(|b| {
            let attacked = b.attacked_routes();
            BehaviourRow {
                tracked: b.len() as u64,
                capacity: b.capacity(),
                evictions: b.evictions(),
                bytes: b.approx_bytes() as u64,
                failed_logins: b.failed_logins(),
                attack: engine
                    .policy()
                    .route_specs
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.name.clone(), attacked.contains(&i)))
                    .collect(),
            }
        });
        let fresh = State {
            limits,
            bot_cache: engine.ua_cache().len() as u64,
            store: store.map(|s| StoreRow {
                healthy: s.is_healthy(),
                commands: s.commands.load(Relaxed),
                errors: s.errors.load(Relaxed),
                fallbacks: s.fallbacks.load(Relaxed),
            }),
            rule_errors: engine
                .policy()
                .rules
                .is_some()
                .then(|| engine.rule_errors()),
            behaviour,
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

/// A gauge or counter value for the encoder.
fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        type Row = fn(&LimitRow) -> u64;
        let per_limit: [(&str, &str, MetricType, Row); 4] = [
            (
                "limit_tracked_keys",
                "Keys each limit tracks now",
                MetricType::Gauge,
                |r| r.len,
            ),
            (
                "limit_tracked_keys_capacity",
                "Most keys each limit tracks",
                MetricType::Gauge,
                |r| r.capacity,
            ),
            (
                "limit_evictions",
                "Keys evicted from each limit's table",
                MetricType::Counter,
                |r| r.evictions,
            ),
            (
                "limit_table_bytes",
                "Approximate memory held by each limit's table",
                MetricType::Gauge,
                |r| r.bytes,
            ),
        ];
        for (name, help, kind, value) in per_limit {
            let mut m = e.encode_descriptor(name, help, None, kind)?;
            for row in &st.limits {
                let labels = [("limit", &*row.name)];
                let v = value(row);
                match kind {
                    MetricType::Counter => counter(v).encode(m.encode_family(&labels)?)?,
                    _ => gauge(v).encode(m.encode_family(&labels)?)?,
                }
            }
        }
        gauge(st.bot_cache).encode(e.encode_descriptor(
            "bot_cache_entries",
            "User agents whose bot classification is cached",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(s) = st.store {
            gauge(u64::from(s.healthy)).encode(e.encode_descriptor(
                "shared_store_healthy",
                "Whether the shared store answered its last operation",
                None,
                MetricType::Gauge,
            )?)?;
            for (name, help, v) in [
                (
                    "shared_store_commands",
                    "Commands sent to the shared store",
                    s.commands,
                ),
                (
                    "shared_store_errors",
                    "Shared-store operations that failed or timed out",
                    s.errors,
                ),
                (
                    "shared_store_fallbacks",
                    "Requests decided by the on_store_error fallback",
                    s.fallbacks,
                ),
            ] {
                counter(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)?;
            }
        }
        if let Some(n) = st.rule_errors {
            counter(n).encode(e.encode_descriptor(
                "rule_errors",
                "Rule evaluations that failed (counted as no match)",
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(b) = &st.behaviour {
            for (name, help, v) in [
                (
                    "behaviour_tracked",
                    "Identities with a behaviour record now",
                    b.tracked,
                ),
                (
                    "behaviour_capacity",
                    "Most identities with a behaviour record",
                    b.capacity,
                ),
                (
                    "behaviour_bytes",
                    "Approximate memory held by behaviour records",
                    b.bytes,
                ),
            ] {
                gauge(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
            for (name, help, v) in [
                (
                    "behaviour_evictions",
                    "Behaviour records evicted",
                    b.evictions,
                ),
                (
                    "failed_logins",
                    "Failed logins seen on the stuffing route",
                    b.failed_logins,
                ),
            ] {
                counter(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)?;
            }
            let mut m = e.encode_descriptor(
                "under_attack",
                "Whether a route is in attack mode (stricter scoring)",
                None,
                MetricType::Gauge,
            )?;
            for (route, on) in &b.attack {
                gauge(u64::from(*on)).encode(m.encode_family(&[("route", &**route)])?)?;
            }
        }
        Ok(())
    }
}
