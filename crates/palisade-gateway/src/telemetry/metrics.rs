//! Prometheus metrics. Labels are bounded by the config (route, rule, limit names) or by code
//! (action, kind); no label ever carries an IP, a key or a user agent.

use std::fmt::Write as _;

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Requests that failed on the client's side, by kind (never counted as upstream errors).
    pub client_errors: Family<ClientErrorLabels, Counter>,
    /// When a client fault was last logged (unix seconds), and how many went unlogged since.
    client_fault_logged: std::sync::atomic::AtomicU64,
    client_faults_unlogged: std::sync::atomic::AtomicU64,
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
        let log_dropped = Counter::default();
        let connections_open = prometheus_client::metrics::gauge::Gauge::default();
        let connections_refused = Counter::default();
        let connections_refused_per_ip = Counter::default();
        let connections_shed = Family::<ShedLabels, Counter>::default();
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
        Self {
            registry,
            requests,
            shadow,
            decision_seconds,
            upstream_seconds,
            upstream_errors,
            engine_errors,
            reloads,
            log_dropped,
            connections_open,
            connections_refused,
            connections_refused_per_ip,
            connections_shed,
            client_errors,
            client_fault_logged: std::sync::atomic::AtomicU64::new(0),
            client_faults_unlogged: std::sync::atomic::AtomicU64::new(0),
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

    /// Prometheus text exposition, including the live sizes of the engine's tables.
    pub fn render(&self, engine: &Engine, store: Option<&crate::cluster::SharedStore>) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // The registry ends with "# EOF"; the table gauges go before it.
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        let limits = &engine.policy().limits;
        let tables = engine.tables();
        let mut section = |name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> u64| {
            let _ = writeln!(out, "# HELP palisade_{name} {help}");
            let _ = writeln!(out, "# TYPE palisade_{name} {kind}");
            for (i, spec) in limits.iter().enumerate() {
                let suffix = if kind == "counter" { "_total" } else { "" };
                let _ = writeln!(
                    out,
                    "palisade_{name}{suffix}{{limit=\"{}\"}} {}",
                    spec.name,
                    value(i)
                );
            }
        };
        section(
            "limit_tracked_keys",
            "gauge",
            "Keys each limit tracks now",
            &|i| tables.get(i).map_or(0, |t| t.len() as u64),
        );
        section(
            "limit_tracked_keys_capacity",
            "gauge",
            "Most keys each limit tracks",
            &|i| tables.get(i).map_or(0, |t| t.capacity()),
        );
        section(
            "limit_evictions",
            "counter",
            "Keys evicted from each limit's table",
            &|i| tables.get(i).map_or(0, |t| t.evictions()),
        );
        section(
            "limit_table_bytes",
            "gauge",
            "Approximate memory held by each limit's table",
            &|i| tables.get(i).map_or(0, |t| t.approx_bytes() as u64),
        );
        let _ = writeln!(
            out,
            "# HELP palisade_bot_cache_entries User agents whose bot classification is cached\n# TYPE palisade_bot_cache_entries gauge\npalisade_bot_cache_entries {}",
            engine.ua_cache().len()
        );
        if let Some(s) = store {
            use std::sync::atomic::Ordering::Relaxed;
            let _ = writeln!(
                out,
                "# HELP palisade_shared_store_healthy Whether the shared store answered its last operation\n# TYPE palisade_shared_store_healthy gauge\npalisade_shared_store_healthy {}\n# HELP palisade_shared_store_commands Commands sent to the shared store\n# TYPE palisade_shared_store_commands counter\npalisade_shared_store_commands_total {}\n# HELP palisade_shared_store_errors Shared-store operations that failed or timed out\n# TYPE palisade_shared_store_errors counter\npalisade_shared_store_errors_total {}\n# HELP palisade_shared_store_fallbacks Requests decided by the on_store_error fallback\n# TYPE palisade_shared_store_fallbacks counter\npalisade_shared_store_fallbacks_total {}",
                u8::from(s.is_healthy()),
                s.commands.load(Relaxed),
                s.errors.load(Relaxed),
                s.fallbacks.load(Relaxed)
            );
        }
        if engine.policy().rules.is_some() {
            let _ = writeln!(
                out,
                "# HELP palisade_rule_errors Rule evaluations that failed (counted as no match)\n# TYPE palisade_rule_errors counter\npalisade_rule_errors_total {}",
                engine.rule_errors()
            );
        }
        if let Some(b) = engine.behaviour() {
            let _ = writeln!(
                out,
                "# HELP palisade_behaviour_tracked Identities with a behaviour record now\n# TYPE palisade_behaviour_tracked gauge\npalisade_behaviour_tracked {}\n# HELP palisade_behaviour_capacity Most identities with a behaviour record\n# TYPE palisade_behaviour_capacity gauge\npalisade_behaviour_capacity {}\n# HELP palisade_behaviour_evictions Behaviour records evicted\n# TYPE palisade_behaviour_evictions counter\npalisade_behaviour_evictions_total {}\n# HELP palisade_behaviour_bytes Approximate memory held by behaviour records\n# TYPE palisade_behaviour_bytes gauge\npalisade_behaviour_bytes {}\n# HELP palisade_failed_logins Failed logins seen on the stuffing route\n# TYPE palisade_failed_logins counter\npalisade_failed_logins_total {}",
                b.len(),
                b.capacity(),
                b.evictions(),
                b.approx_bytes(),
                b.failed_logins()
            );
            let attacked = b.attacked_routes();
            let _ = writeln!(
                out,
                "# HELP palisade_under_attack Whether a route is in attack mode (stricter scoring)\n# TYPE palisade_under_attack gauge"
            );
            for (i, r) in engine.policy().route_specs.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "palisade_under_attack{{route=\"{}\"}} {}",
                    r.name,
                    u8::from(attacked.contains(&i))
                );
            }
        }
        out.push_str("# EOF\n");
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
