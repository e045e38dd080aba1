//! Palisade's gateway: everything that does I/O around the pure engine.
//!
//! Phases of a request, each with one home: connection ([`server`], [`io`]) -> request facts and
//! client IP ([`proxy`]) -> the engine's decision -> enforcement and forwarding ([`proxy`],
//! [`upstream`], [`respond`]) -> response observation -> decision log and metrics ([`log`],
//! [`metrics`]). The admin API ([`admin`]) and hot reload ([`reload`]) share [`Shared`].

pub mod acme;
pub mod admin;
pub mod auth;
pub mod bot_dns;
pub mod bot_ranges;
pub mod challenge;
pub mod client;
pub mod cluster;
pub mod embed;
pub mod listen;
pub mod proxy;
pub mod refusal;
pub mod reload;
pub mod replay;
pub mod run;
pub mod sample_api;
pub mod telemetry;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::Uri;
use palisade_config::{Compiled, Overrides};
use palisade_engine::{Clock, Engine, LimitAction, Nanos};
use tokio::sync::Semaphore;

pub use reload::ConfigSource;
pub use run::{RunOptions, Running, start};

/// The system clock for the engine: monotonic from process start, plus wall-clock time.
///
/// With `PALISADE_TEST_CLOCK=1` in the environment the wall clock can be moved forward through
/// the admin API (`POST /v1/debug/clock`), so tests can cross midnight UTC or a key's expiry
/// without waiting. Nothing else ever moves it.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
    offset_ms: Arc<AtomicU64>,
    adjustable: bool,
    /// The wall clock carried on the monotonic one (see [`SystemClock::unix_ms_at`]).
    wall: Arc<WallAnchor>,
}

/// The wall clock as an offset from the monotonic clock, read again once a second at most.
#[derive(Debug, Default)]
struct WallAnchor {
    /// Unix milliseconds minus monotonic milliseconds, at the last reading.
    offset_ms: AtomicU64,
    /// Monotonic nanoseconds from which the reading is stale (0: never read).
    stale_at: AtomicU64,
}

/// How long a wall-clock reading is carried on the monotonic clock. A step of the wall clock
/// (an operator's `date -s`, a VM resumed) shows within this; NTP's slewing is at most 0.5 ms a
/// second, so the carried time never strays further than that from a fresh reading.
const WALL_REREAD: Nanos = palisade_engine::clock::SECOND;

impl SystemClock {
    /// A clock whose monotonic origin is now. The origin is offset by an hour so that
    /// "theoretical arrival times" in the past never underflow.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            offset_ms: Arc::new(AtomicU64::new(0)),
            adjustable: std::env::var("PALISADE_TEST_CLOCK").is_ok_and(|v| v == "1"),
            wall: Arc::default(),
        }
    }

    /// Wall-clock milliseconds since the Unix epoch at `now`, a reading of [`Clock::now`]
    /// just taken. The request path reads the clock once and has both times from it: the
    /// wall clock is read only when the last reading is a second old.
    pub fn unix_ms_at(&self, now: Nanos) -> u64 {
        let now_ms = now / 1_000_000;
        let offset = if now < self.wall.stale_at.load(Ordering::Relaxed) {
            self.wall.offset_ms.load(Ordering::Relaxed)
        } else {
            // A reader between the two stores below sees the previous offset: at most a
            // second's slewing old (see `WALL_REREAD`).
            let offset = Self::wall_ms().saturating_sub(now_ms);
            self.wall.offset_ms.store(offset, Ordering::Relaxed);
            self.wall
                .stale_at
                .store(now.saturating_add(WALL_REREAD), Ordering::Relaxed);
            offset
        };
        now_ms
            .saturating_add(offset)
            .saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The wall clock, read now, in Unix milliseconds.
    fn wall_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Whether the test clock is enabled.
    pub fn adjustable(&self) -> bool {
        self.adjustable
    }

    /// Moves the wall clock forward (test clock only). Returns the new offset.
    pub fn advance(&self, ms: u64) -> Option<u64> {
        self.adjustable
            .then(|| self.offset_ms.fetch_add(ms, Ordering::Relaxed) + ms)
    }

    /// Wall-clock seconds since the Unix epoch.
    pub fn unix_secs(&self) -> u64 {
        self.unix_ms() / 1000
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        (self.origin.elapsed().as_nanos() as u64)
            .saturating_add(3_600 * palisade_engine::clock::SECOND)
    }

    fn unix_ms(&self) -> u64 {
        Self::wall_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// Everything that changes together on reload.
pub struct Runtime {
    /// The compiled config (with overrides applied).
    pub compiled: Compiled,
    /// The engine built from its policy.
    pub engine: Engine,
    /// One client per upstream, in config order.
    pub upstreams: Vec<client::Upstream>,
    /// Per-limit queues for `action = "delay"` (None for other limits).
    pub delay_queues: Vec<Option<Arc<Semaphore>>>,
    /// Route names as metric labels, by route id.
    pub route_labels: Vec<Arc<str>>,
    /// Each route's most used metric series, looked up once (on first use) instead of hashing
    /// their labels on every request.
    route_metrics: Vec<std::sync::OnceLock<telemetry::metrics::RouteSeries>>,
    /// Whether a limit keys on a JWT claim (tokens are then verified on every route).
    pub jwt_identity: bool,
    /// Requests held by a score delay (progressive throttling), gateway-wide.
    pub score_delays: Arc<Semaphore>,
    /// Requests held by a score delay, per client.
    pub held: Arc<proxy::hold::HeldByClient>,
    /// Rendered `RateLimit-Policy` values by the set of limits they list (see
    /// [`palisade_engine::Engine::policy_set`]): checked once, then
    /// shared, instead of validated and copied on every response. At most
    /// [`POLICY_VALUES_CAP`] sets; past that, values are built per response.
    /// Sorted by set.
    policy_values: std::sync::RwLock<Vec<(u64, http::HeaderValue)>>,
    /// The TLS listener's rustls config (certificates by name), when `[tls]` is configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate ordered over ACME and the challenges in flight (kept across reloads).
    pub acme: Arc<acme::AcmeCerts>,
}

/// How many distinct `RateLimit-Policy` values a runtime keeps.
pub const POLICY_VALUES_CAP: usize = 1024;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("routes", &self.route_labels)
            .finish()
    }
}

impl Runtime {
    /// Builds a runtime; state and connection pools are carried over from `previous` where the
    /// config did not change them.
    pub fn build(compiled: Compiled, previous: Option<&Runtime>) -> Self {
        let engine = Engine::new(compiled.policy.clone(), previous.map(|p| &p.engine));
        let upstreams = compiled
            .upstreams
            .iter()
            .map(|u| {
                previous
                    .and_then(|p| {
                        p.upstreams
                            .iter()
                            .find(|old| old.same_as(u, &compiled.server))
                    })
                    .cloned()
                    .unwrap_or_else(|| client::Upstream::new(u, &compiled.server))
            })
            .collect();
        let delay_queues = compiled
            .policy
            .limits
            .iter()
            .map(|l| match l.action {
                LimitAction::Delay { max_queue, .. } => {
                    let old = previous.and_then(|p| {
                        p.compiled
                            .policy
                            .limits
                            .iter()
                            .position(|o| o.name == l.name && o.action == l.action)
                            .and_then(|i| p.delay_queues.get(i).cloned().flatten())
                    });
                    Some(old.unwrap_or_else(|| Arc::new(Semaphore::new(max_queue as usize))))
                }
                _ => None,
            })
            .collect();
        let route_labels: Vec<Arc<str>> = compiled
            .policy
            .route_specs
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let route_metrics = route_labels
            .iter()
            .map(|_| std::sync::OnceLock::new())
            .collect();
        let jwt_identity = compiled.policy.limits.iter().any(|l| {
            l.key
                .iter()
                .any(|k| matches!(k, palisade_engine::KeyPart::Jwt(_)))
        });
        let score_delays = previous.map_or_else(
            || Arc::new(Semaphore::new(compiled.server.max_connections.max(1))),
            |p| p.score_delays.clone(),
        );
        let held = previous.map_or_else(Default::default, |p| p.held.clone());
        let acme = previous.map_or_else(Default::default, |p| p.acme.clone());
        let tls = compiled.tls.as_ref().and_then(|t| {
            listen::tls::server_config(t, acme.clone())
                .map_err(|e| tracing::error!(error = %e, "building the TLS config failed"))
                .ok()
        });
        Self {
            tls,
            acme,
            score_delays,
            held,
            compiled,
            engine,
            upstreams,
            delay_queues,
            route_labels,
            route_metrics,
            jwt_identity,
            policy_values: Default::default(),
        }
    }

    /// The kept `RateLimit-Policy` value for the limits in `set`, if there is one.
    pub fn kept_policy(&self, set: Option<u64>) -> Option<http::HeaderValue> {
        let set = set?;
        // A poisoned lock only means a panic elsewhere while holding it; the list is whole.
        let kept = self
            .policy_values
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = kept.binary_search_by_key(&set, |(s, _)| *s).ok()?;
        kept.get(i).map(|(_, v)| v.clone())
    }

    /// `rendered` as a `RateLimit-Policy` value, kept for the limits in `set` (while under the
    /// cap). `None` if it is not a valid header value.
    pub fn keep_policy(&self, set: Option<u64>, rendered: String) -> Option<http::HeaderValue> {
        let value = http::HeaderValue::try_from(rendered).ok()?;
        if let Some(set) = set {
            let mut kept = self
                .policy_values
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(i) = kept.binary_search_by_key(&set, |(s, _)| *s)
                && kept.len() < POLICY_VALUES_CAP
            {
                kept.insert(i, (set, value.clone()));
            }
        }
        Some(value)
    }

    /// Route `id`'s most used metric series (`None` for an id out of range).
    pub fn route_series(
        &self,
        id: usize,
        metrics: &telemetry::metrics::Metrics,
    ) -> Option<&telemetry::metrics::RouteSeries> {
        let label = self.route_labels.get(id)?;
        Some(
            self.route_metrics
                .get(id)?
                .get_or_init(|| telemetry::metrics::RouteSeries::new(metrics, label)),
        )
    }

    /// A route's label.
    pub fn route_label(&self, id: usize) -> Arc<str> {
        self.route_labels
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::from("default"))
    }
}

/// State shared by the proxy, the admin API and the reloader.
pub struct Shared {
    /// The current runtime; swapped atomically on reload.
    pub runtime: ArcSwap<Runtime>,
    /// Metrics.
    pub metrics: telemetry::metrics::Metrics,
    /// Decision log and recent decisions.
    pub log: telemetry::decision_log::DecisionLog,
    /// Clock.
    pub clock: SystemClock,
    /// Where the config comes from.
    pub source: ConfigSource,
    /// Command-line overrides, re-applied on every reload.
    pub overrides: Overrides,
    /// The sample API's URL, when it serves as the upstream.
    pub sample_upstream: Option<Uri>,
    /// Admin API bearer token.
    pub admin_token: String,
    /// Where the admin token is stored, if generated.
    pub admin_token_path: Option<PathBuf>,
    /// Serialises reloads.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// API keys: the durable store and the directory requests are verified against.
    pub keys: auth::keys::KeyService,
    /// Verified-bot DNS checks.
    pub verifier: bot_dns::BotVerifier,
    /// The shared store (cluster mode), fixed at start.
    pub store: Option<Arc<cluster::SharedStore>>,
    /// Refusals kept for nginx to fetch after a decision call.
    pub decision_answers: proxy::decision::Answers,
    /// Allowed decision calls waiting for their answer's line (`[decision.feedback]`).
    pub feedback: proxy::feedback::Pending,
    /// The dashboard's recent history.
    pub series: telemetry::series::Series,
    /// Challenge tokens' key and the puzzles already solved.
    pub challenges: Arc<challenge::Challenges>,
    /// Signed agents' key directories, fetched and cached (Web Bot Auth).
    pub agent_directories: Arc<auth::agent_directory::Directories>,
    /// Batched sync's local charges (cluster mode with `sync = "batched"`).
    pub batcher: Option<Arc<cluster::Batcher>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_carried_on_the_monotonic_one_agrees_with_a_fresh_reading() {
        let clock = SystemClock::new();
        let carried = clock.unix_ms_at(clock.now());
        let fresh = clock.unix_ms();
        assert!(fresh.abs_diff(carried) <= 5, "{carried} vs {fresh}");
        // Within the second the reading is carried: it moves with the monotonic clock.
        let now = clock.now();
        let at = clock.unix_ms_at(now);
        assert_eq!(clock.unix_ms_at(now + 400_000_000), at + 400);
        // A second on, the wall clock is read again (the anchor moves to the later reading).
        let later = now + WALL_REREAD + 1;
        let reread = clock.unix_ms_at(later);
        assert_eq!(
            clock.wall.stale_at.load(Ordering::Relaxed),
            later + WALL_REREAD
        );
        // The monotonic time passed in is a second ahead of the real one: the fresh reading
        // ties the wall time to it, so the same monotonic time now gives the real wall time.
        assert!(reread.abs_diff(clock.unix_ms()) <= 5, "{reread}");
    }

    #[test]
    fn the_test_clock_moves_the_carried_wall_clock_at_once() {
        let clock = SystemClock {
            adjustable: true,
            ..SystemClock::new()
        };
        let now = clock.now();
        let before = clock.unix_ms_at(now);
        assert_eq!(clock.advance(60_000), Some(60_000));
        assert_eq!(clock.unix_ms_at(now), before + 60_000);
    }
}
