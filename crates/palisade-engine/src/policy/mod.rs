//! The compiled policy: what the engine decides with. Built by `palisade-config`, immutable
//! while in use; a reload builds a new one.

pub mod bots;
pub mod rules;

use std::sync::Arc;

use http::HeaderName;

use crate::clock::SECOND;
use crate::model::principal::AuthRequirement;
use crate::policy::bots::BotsPolicy;
use crate::request::ipset::IpSet;
use crate::request::route::PathPattern;
use crate::request::route::RouteTable;
use crate::state::blocks::BlockEffect;
use crate::state::limiter::{Algorithm, LimitSpec};
use crate::state::quota_ledger::QuotaSpec;

/// Whether decisions are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are computed and logged as `would_<action>`, never enforced.
    Shadow,
}

/// A route's policy-relevant settings.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The route's name (a metric label; bounded by the config).
    pub name: Arc<str>,
    /// Index of the upstream requests on this route go to.
    pub upstream: usize,
    /// Units a request on this route costs up front.
    pub cost: u64,
    /// Response header in which the upstream reports the real cost of a request.
    pub cost_header: Option<HeaderName>,
    /// What callers must present.
    pub auth: AuthRequirement,
    /// Scopes an authenticated caller must hold.
    pub scopes: Vec<Arc<str>>,
    /// Spend (micro-dollars) a request is charged when the upstream reports none.
    pub spend_micros: u64,
    /// Spend (micro-dollars) held against spend quotas while a request is in flight.
    pub spend_reserve_micros: u64,
    /// Response header in which the upstream reports a request's spend, in dollars.
    pub spend_header: Option<HeaderName>,
    /// Ambiguous path features forwarded on this route instead of refused.
    pub allow_in_path: crate::request::path::Ambiguities,
    /// Who calls the route, for how a challenge is put: a page for browsers, a
    /// machine-readable answer for API clients.
    pub client: ClientKind,
    /// The challenge a browser gets on this route (`None`: the gateway's default).
    pub challenge: Option<ChallengeKind>,
    /// The CAPTCHA score this route needs (`None`: the provider's default).
    pub captcha_min_score: Option<f64>,
}

/// What a browser is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// Palisade's own proof-of-work page.
    Pow,
    /// The ALTCHA widget (self-hosted proof-of-work).
    Altcha,
    /// A hosted CAPTCHA.
    Captcha,
}

/// Who calls a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientKind {
    /// Told apart per request by `Accept` (a browser asks for `text/html`).
    #[default]
    Auto,
    /// Programs: never an HTML page.
    Api,
    /// People's browsers.
    Browser,
}

impl RouteSpec {
    /// A route with no cost, auth or spend settings.
    pub fn new(name: &str, upstream: usize) -> Self {
        Self {
            name: Arc::from(name),
            upstream,
            cost: 1,
            cost_header: None,
            auth: AuthRequirement::None,
            scopes: Vec::new(),
            spend_micros: 0,
            spend_reserve_micros: 0,
            spend_header: None,
            allow_in_path: crate::request::path::Ambiguities::NONE,
            client: ClientKind::Auto,
            challenge: None,
            captcha_min_score: None,
        }
    }
}

/// How failed authentication attempts are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Failed attempts allowed per client IP (GCRA): beyond the burst the client is blocked
    /// on authenticated routes until the budget replenishes.
    pub failures: Algorithm,
    /// Most client IPs tracked.
    pub max_entries: usize,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            failures: Algorithm::Gcra {
                interval: 6 * SECOND,
                burst: 10,
            },
            max_entries: 100_000,
        }
    }
}

/// Static allow and deny lists.
#[derive(Debug, Clone, Default)]
pub struct ListsPolicy {
    /// Clients that bypass every limit and check.
    pub allow: IpSet,
    /// Clients that are refused.
    pub deny: IpSet,
    /// Clients allowlisted only when conditions hold (a partner's range, for its paths, with
    /// its header), so being in the range is not enough to impersonate it.
    pub allow_if: Vec<ConditionalAllow>,
}

/// A conditional allow entry.
#[derive(Debug, Clone)]
pub struct ConditionalAllow {
    /// The network.
    pub net: IpSet,
    /// Paths covered; empty means all.
    pub paths: Vec<PathPattern>,
    /// A header that must be present (with this exact value, if given).
    pub header: Option<(HeaderName, Option<http::HeaderValue>)>,
}

impl ConditionalAllow {
    /// Whether a request satisfies the entry.
    pub fn matches(&self, ip: std::net::IpAddr, path: &str, headers: &http::HeaderMap) -> bool {
        self.net.contains(ip)
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches_path(path)))
            && self.header.as_ref().is_none_or(|(name, value)| {
                headers
                    .get_all(name)
                    .iter()
                    .any(|v| value.as_ref().is_none_or(|want| v == want))
            })
    }
}

/// Score thresholds (0-100) mapping a risk score to an action. A threshold of 0 disables
/// that step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Forward, with `X-Palisade-Score` for the upstream.
    pub tag_at: u8,
    /// Delay, escalating for repeat offenders (progressive throttling).
    pub delay_at: u8,
    /// Challenge the client.
    pub challenge_at: u8,
    /// Refuse the client.
    pub block_at: u8,
}

/// Risk scoring: thresholds, the stricter profile for routes under attack, and progressive
/// throttling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoringPolicy {
    /// Forward, with `X-Palisade-Score` for the upstream.
    pub tag_at: u8,
    /// Delay, escalating for repeat offenders.
    pub delay_at: u8,
    /// Challenge the client.
    pub challenge_at: u8,
    /// Refuse the client.
    pub block_at: u8,
    /// Thresholds while the route (or gateway) is in attack mode.
    pub under_attack: Thresholds,
    /// Delay steps of progressive throttling; past the last one the client is blocked.
    pub throttle: Vec<crate::clock::Nanos>,
    /// Good behaviour that lowers the throttling level by one step.
    pub relax_after: crate::clock::Nanos,
    /// How long a client that went past the last step is blocked (0: refused, not blocked).
    pub throttle_block_ms: u64,
    /// Most requests of one client held by throttling at once.
    pub max_held: u32,
}

impl ScoringPolicy {
    /// The thresholds in force: the normal ones, or the attack-mode ones.
    pub fn thresholds(&self, under_attack: bool) -> Thresholds {
        if under_attack {
            self.under_attack
        } else {
            Thresholds {
                tag_at: self.tag_at,
                delay_at: self.delay_at,
                challenge_at: self.challenge_at,
                block_at: self.block_at,
            }
        }
    }
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        Self {
            tag_at: 30,
            delay_at: 40,
            challenge_at: 60,
            block_at: 90,
            under_attack: Thresholds {
                tag_at: 20,
                delay_at: 30,
                challenge_at: 45,
                block_at: 75,
            },
            throttle: vec![SECOND, 5 * SECOND, 30 * SECOND],
            relax_after: 120 * SECOND,
            throttle_block_ms: 600_000,
            max_held: 2,
        }
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Enforce or shadow.
    pub mode: Mode,
    /// Route matching.
    pub routes: RouteTable,
    /// Per-route settings, indexed by route id; the last one is the default route.
    pub route_specs: Vec<RouteSpec>,
    /// Limits, in configuration order; every matching limit applies.
    pub limits: Vec<LimitSpec>,
    /// Static lists.
    pub lists: ListsPolicy,
    /// Score thresholds.
    pub scoring: ScoringPolicy,
    /// Daily quotas, in configuration order; every matching quota applies.
    pub quotas: Vec<QuotaSpec>,
    /// Failed-authentication handling.
    pub auth: AuthPolicy,
    /// The bot catalog and what to do per category; `None` when `[bots]` is not configured.
    pub bots: Option<BotsPolicy>,
    /// Header-consistency checks; `None` when `[headers]` is not configured.
    pub headers: Option<HeadersPolicy>,
    /// Handshake and HTTP/2 fingerprints against the claimed client; `None` when
    /// `[fingerprints]` is not configured.
    pub fingerprints: Option<FingerprintsPolicy>,
    /// Weight of `webbotauth/invalid` (a Web Bot Auth signature that does not verify); `None`
    /// when `[web_bot_auth]` is not configured.
    pub web_bot_auth: Option<u8>,
    /// Honeypots: trap paths and decoy keys.
    pub honeypots: Vec<HoneypotSpec>,
    /// Most blocks held.
    pub max_blocks: usize,
    /// IP intelligence; `None` when `[intel]` is not configured.
    pub intel: Option<IntelPolicy>,
    /// Behaviour and collective detection; `None` when `[behaviour]` is switched off.
    pub behaviour: Option<crate::behaviour::BehaviourPolicy>,
    /// Explicit rules; `None` when there are none.
    pub rules: Option<crate::policy::rules::RulesPolicy>,
    /// Injection probes; `None` when `[probes]` is not configured.
    pub probes: Option<ProbesPolicy>,
    /// Weight of the signal for a request that breaks the API's contract (`[openapi]`).
    pub contract_weight: u8,
}

/// Compiled `[intel]`.
#[derive(Debug, Clone)]
pub struct IntelPolicy {
    /// The loaded data.
    pub db: Arc<palisade_intel::ipinfo::IpIntel>,
    /// Signal weight per network category (hosting, vpn, mobile, residential; 0 = none).
    pub category_weights: [u8; 4],
    /// Signal weight of a Tor exit.
    pub tor_weight: u8,
}

/// A compiled `[[honeypots]]` entry.
#[derive(Debug, Clone)]
pub struct HoneypotSpec {
    /// Its name (`honeypot/<name>` in logs).
    pub name: Arc<str>,
    /// Trap paths: exact, or a prefix with a trailing `/*`.
    pub paths: Vec<PathPattern>,
    /// Decoy API keys: presenting one is a hit.
    pub decoy_keys: Vec<String>,
    /// How long a hit flags the client (doubling for repeat offenders).
    pub block_for_ms: u64,
    /// Block the client, or add a signal of a weight.
    pub effect: BlockEffect,
    /// Which of the client's identities are flagged: `ip`, `ip/24`, `api_key`, `account`,
    /// `ja4h`.
    pub flag: Vec<&'static str>,
    /// Whether `/robots.txt` is served with these paths disallowed.
    pub robots_txt: bool,
}

/// Compiled `[probes]`.
#[derive(Debug, Clone)]
pub struct ProbesPolicy {
    /// What to look for, and where.
    pub scanner: palisade_intel::probes::Scanner,
    /// What a hit of each class does, in [`palisade_intel::probes::Class::ALL`] order.
    pub actions: [ProbeAction; 7],
    /// Whether JSON and form bodies are scanned.
    pub body: bool,
    /// Largest body scanned.
    pub max_body: usize,
}

impl ProbesPolicy {
    /// Scans a request's head: path, query, headers and cookies (the gateway adds the body).
    pub fn scan_head(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> palisade_intel::probes::Hits {
        let mut hits = palisade_intel::probes::Hits::default();
        self.scanner.scan_path(path, &mut hits);
        if let Some(q) = query {
            self.scanner.scan_query(q, &mut hits);
        }
        for (name, value) in headers {
            self.scanner
                .scan_header(name.as_str(), value.as_bytes(), &mut hits);
        }
        hits
    }
}

/// What a probe class's hit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAction {
    /// The signal's weight.
    pub weight: u8,
    /// Refuse the request (403) instead of only signalling.
    pub block: bool,
}

/// Compiled `[headers]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersPolicy {
    /// Weight of each inconsistency's signal.
    pub weight: u8,
    /// Whether requests reached the site over HTTPS (behind a TLS terminator), so browsers
    /// would have sent client hints and fetch metadata.
    pub assume_https: bool,
}

/// `[fingerprints]`: what a client's TLS handshake and HTTP/2 frames say against what its user
/// agent claims.
#[derive(Debug, Clone)]
pub struct FingerprintsPolicy {
    /// Known clients by fingerprint.
    pub known: std::sync::Arc<palisade_intel::clients::KnownClients>,
    /// Weight of `fingerprint/ua_mismatch`: a browser claimed, a known other client observed.
    pub mismatch_weight: u8,
    /// Weight of `fingerprint/browser_without_h2`: a browser claimed over TLS whose
    /// ClientHello did not offer HTTP/2 (every current browser does).
    pub no_h2_weight: u8,
}

impl Policy {
    /// The settings of a route; the default route for an out-of-range id.
    pub fn route(&self, id: usize) -> Option<&RouteSpec> {
        self.route_specs.get(id).or_else(|| self.route_specs.last())
    }

    /// A route id by name.
    pub fn route_id(&self, name: &str) -> Option<usize> {
        self.route_specs.iter().position(|r| &*r.name == name)
    }
}
