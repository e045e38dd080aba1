//! What `[behaviour]` compiles into: dimensions, signals, thresholds, flows, stuffing,
//! cache keys and attack mode.

use std::hash::Hash;
use std::sync::Arc;

use crate::clock::{Nanos, SECOND};
use crate::request::route::RouteId;

/// Identity dimensions behaviour is tracked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The client address.
    Ip,
    /// The client's network (/24 for IPv4, /48 for IPv6).
    Prefix,
    /// The API key.
    ApiKey,
    /// The account a key or token belongs to.
    Account,
    /// The session (cookie, header, JWT claim or key, as configured).
    Session,
    /// The JA4H fingerprint.
    Ja4h,
    /// The header fingerprint (Palisade's own).
    Hfp,
    /// The client's autonomous system.
    Asn,
}

/// Number of [`Dim`]s.
pub const DIMS: usize = 8;

impl Dim {
    /// Every dimension, in index order.
    pub const ALL: [Dim; DIMS] = [
        Dim::Ip,
        Dim::Prefix,
        Dim::ApiKey,
        Dim::Account,
        Dim::Session,
        Dim::Ja4h,
        Dim::Hfp,
        Dim::Asn,
    ];

    /// The name used in config, the admin API and signal names.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Ip => "ip",
            Dim::Prefix => "ip/24",
            Dim::ApiKey => "api_key",
            Dim::Account => "account",
            Dim::Session => "session",
            Dim::Ja4h => "ja4h",
            Dim::Hfp => "hfp",
            Dim::Asn => "asn",
        }
    }

    /// The dimension a config or admin name stands for (`ip/48` is the same prefix table).
    pub fn parse(s: &str) -> Option<Dim> {
        Some(match s {
            "ip" => Dim::Ip,
            "ip/24" | "ip/48" | "prefix" => Dim::Prefix,
            "api_key" => Dim::ApiKey,
            "account" => Dim::Account,
            "session" => Dim::Session,
            "ja4h" => Dim::Ja4h,
            "hfp" => Dim::Hfp,
            "asn" => Dim::Asn,
            _ => return None,
        })
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// Whether the dimension names a caller (a key or account), as opposed to a source.
    pub(super) fn is_principal(self) -> bool {
        matches!(self, Dim::ApiKey | Dim::Account)
    }

    /// Whether the dimension is one client (an address, key, account or session), whose own
    /// habits (timing, route mix, honouring Retry-After) mean something. Prefixes,
    /// fingerprints and ASNs aggregate many clients: they carry group signals, and (prefixes)
    /// the walk and error signals that a rotating address would otherwise dodge.
    pub(super) fn is_individual(self) -> bool {
        matches!(self, Dim::Ip | Dim::ApiKey | Dim::Account | Dim::Session)
    }

    /// Whether walks over ids, errors and cache busting are judged on this dimension.
    pub(super) fn judges_walks(self) -> bool {
        self.is_individual() || self == Dim::Prefix
    }

    /// Whether the dimension names where requests come from (an address, network or client).
    pub(super) fn is_source(self) -> bool {
        matches!(
            self,
            Dim::Ip | Dim::Prefix | Dim::Ja4h | Dim::Hfp | Dim::Asn
        )
    }
}

/// Where a session identifier is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSource {
    /// A cookie's value.
    Cookie(String),
    /// A request header's value.
    Header(http::HeaderName),
    /// A JWT claim.
    Jwt(String),
    /// The API key.
    ApiKey,
}

/// A behaviour signal, with its name and default weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// Inter-arrival times machine-steady.
    Regular,
    /// Nearly every request on one route.
    OneRoute,
    /// A high share of 401/403/404 answers.
    Errors,
    /// Requests that keep coming while a 429's `Retry-After` runs.
    IgnoresRetryAfter,
    /// A key or account used with many user agents.
    ManyUserAgents,
    /// A key or account used from many addresses.
    ManyIps,
    /// A key or account used from many countries.
    ManyCountries,
    /// A key or account used from many networks (ASNs).
    ManyAsns,
    /// Many keys from one address.
    KeysPerIp,
    /// Many keys from one network prefix.
    KeysPerPrefix,
    /// Many keys behind one client fingerprint.
    KeysPerFingerprint,
    /// Many keys from one ASN.
    KeysPerAsn,
    /// Many accounts from one source.
    AccountsPerSource,
    /// Sequential or dense walks over numeric ids.
    Enumeration,
    /// Many distinct values of parameters that do not change the resource.
    CacheBusting,
    /// Many failed logins over many usernames from one source.
    StuffingSource,
    /// One username failing from many sources.
    StuffingTarget,
    /// Many keys behaving near-identically.
    SimilarKeys,
    /// Many keys created together that became active together.
    KeyCohort,
}

/// Number of [`Sig`]s.
pub const SIGS: usize = 19;
// The detectors note what fired in a `u32`, one bit per signal.
const _: () = assert!(SIGS <= 32);

impl Sig {
    /// Every signal, in index order.
    pub const ALL: [Sig; SIGS] = [
        Sig::Regular,
        Sig::OneRoute,
        Sig::Errors,
        Sig::IgnoresRetryAfter,
        Sig::ManyUserAgents,
        Sig::ManyIps,
        Sig::ManyCountries,
        Sig::ManyAsns,
        Sig::KeysPerIp,
        Sig::KeysPerPrefix,
        Sig::KeysPerFingerprint,
        Sig::KeysPerAsn,
        Sig::AccountsPerSource,
        Sig::Enumeration,
        Sig::CacheBusting,
        Sig::StuffingSource,
        Sig::StuffingTarget,
        Sig::SimilarKeys,
        Sig::KeyCohort,
    ];

    /// The signal's full name, as logged.
    pub fn name(self) -> &'static str {
        match self {
            Sig::Regular => "behaviour/regular",
            Sig::OneRoute => "behaviour/one_route",
            Sig::Errors => "behaviour/errors",
            Sig::IgnoresRetryAfter => "behaviour/ignores_retry_after",
            Sig::ManyUserAgents => "behaviour/many_user_agents",
            Sig::ManyIps => "behaviour/many_ips",
            Sig::ManyCountries => "behaviour/many_countries",
            Sig::ManyAsns => "behaviour/many_asns",
            Sig::KeysPerIp => "collective/keys_per_ip",
            Sig::KeysPerPrefix => "collective/keys_per_prefix",
            Sig::KeysPerFingerprint => "collective/keys_per_fingerprint",
            Sig::KeysPerAsn => "collective/keys_per_asn",
            Sig::AccountsPerSource => "collective/accounts_per_source",
            Sig::Enumeration => "behaviour/enumeration",
            Sig::CacheBusting => "behaviour/cache_busting",
            Sig::StuffingSource => "stuffing/source",
            Sig::StuffingTarget => "stuffing/target",
            Sig::SimilarKeys => "collective/similar_keys",
            Sig::KeyCohort => "collective/key_cohort",
        }
    }

    /// The name in `[behaviour.weights]` (the part after the slash).
    pub fn short_name(self) -> &'static str {
        self.name().split('/').nth(1).unwrap_or("")
    }

    /// The weight a signal has unless configured.
    pub fn default_weight(self) -> u8 {
        match self {
            // Weak on their own: steady, single-route traffic is what good integrations do too.
            Sig::Regular | Sig::OneRoute => 5,
            Sig::Errors => 30,
            Sig::IgnoresRetryAfter => 50,
            Sig::ManyUserAgents | Sig::ManyIps | Sig::ManyAsns => 20,
            Sig::ManyCountries => 30,
            Sig::KeysPerIp | Sig::KeysPerPrefix => 40,
            Sig::KeysPerFingerprint | Sig::KeysPerAsn => 15,
            Sig::AccountsPerSource => 40,
            Sig::Enumeration => 60,
            Sig::CacheBusting => 60,
            Sig::StuffingSource => 70,
            Sig::StuffingTarget => 40,
            Sig::SimilarKeys => 30,
            Sig::KeyCohort => 15,
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Thresholds of the detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Requests in the window before ratios (errors, route concentration) are judged.
    pub min_requests: u32,
    /// Inter-arrival gaps seen before regularity is judged.
    pub regular_min_gaps: u32,
    /// Coefficient of variation of gaps under which traffic is machine-steady.
    pub regular_cv: f32,
    /// Share of requests on the top route that counts as concentration.
    pub one_route_share: f32,
    /// Share of 401/403/404 answers that counts as erroring.
    pub error_share: f32,
    /// Requests during a `Retry-After` that count as ignoring it.
    pub ignored_429s: u32,
    /// Distinct user agents per key or account.
    pub user_agents: u32,
    /// Distinct addresses per key or account.
    pub ips: u32,
    /// Distinct countries per key or account.
    pub countries: u32,
    /// Distinct ASNs per key or account.
    pub asns: u32,
    /// Distinct keys (or accounts) per source.
    pub keys_per_source: u32,
    /// Consecutive small steps over ids that count as a walk.
    pub enumeration_run: u32,
    /// Distinct ids, densely packed, that count as a walk.
    pub enumeration_distinct: u32,
    /// Distinct non-resource parameter values on cache-key routes.
    pub cache_busting_distinct: u32,
    /// Keys sharing one behaviour signature (or one creation hour and network) before they form
    /// a group.
    pub group_keys: u32,
    /// Networks (/24, IPv6 /48) behind a fingerprint or an ASN from which it is a common client
    /// library or a big network shared by unrelated clients: keys and accounts behind it are
    /// then no group (only co-located ones are, on the address and prefix dimensions).
    pub shared_source_networks: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_requests: 20,
            regular_min_gaps: 20,
            regular_cv: 0.1,
            one_route_share: 0.95,
            error_share: 0.5,
            ignored_429s: 3,
            user_agents: 5,
            ips: 20,
            countries: 4,
            asns: 5,
            keys_per_source: 10,
            enumeration_run: 20,
            enumeration_distinct: 40,
            cache_busting_distinct: 20,
            group_keys: 10,
            shared_source_networks: 4,
        }
    }
}

/// A flow rule: requests on `route` must follow a successful request on `after` in the same
/// session (or from the same address), within `within` and not sooner than `min_gap`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSpec {
    /// Name (the signal is `flow/<name>`).
    pub name: Arc<str>,
    /// The guarded route.
    pub route: RouteId,
    /// The route that must come first.
    pub after: RouteId,
    /// How long the earlier request counts.
    pub within: Nanos,
    /// Least time between the earlier request and this one.
    pub min_gap: Nanos,
    /// Whether requests with credentials (a key or token) are exempt.
    pub anonymous_only: bool,
    /// Weight of a violation.
    pub weight: u8,
}

/// Credential-stuffing detection on a login route.
#[derive(Debug, Clone, PartialEq)]
pub struct StuffingSpec {
    /// The login route.
    pub route: RouteId,
    /// Answers that mean a failed login.
    pub failure_status: Vec<u16>,
    /// The body field holding the username (JSON or form).
    pub username_field: String,
    /// Failed logins from one source before it is judged.
    pub min_failures: u32,
    /// Distinct usernames tried from one source.
    pub min_usernames: u32,
    /// Share of the source's logins that failed.
    pub failure_share: f32,
    /// Distinct sources that failed on one username.
    pub sources_per_username: u32,
    /// Most usernames tracked.
    pub max_usernames: usize,
    /// Most body bytes the gateway reads to find the username.
    pub max_body: usize,
}

/// A route's resource-identifying query parameters: every other parameter's values count
/// towards cache busting.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheKeySpec {
    /// The route.
    pub route: RouteId,
    /// Parameters that select the resource.
    pub params: Vec<String>,
}

/// Whether a route in attack mode makes only itself or the whole gateway stricter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackScope {
    /// Only the route.
    Route,
    /// Every route.
    Gateway,
}

/// Per-route baselines and attack mode.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackSpec {
    /// Length of one baseline bucket.
    pub bucket: Nanos,
    /// Buckets learned before deviations are judged.
    pub warmup: u32,
    /// Rate deviation factor over the baseline.
    pub rate_factor: f32,
    /// Requests per bucket below which the rate never counts as deviating.
    pub min_requests: u32,
    /// Error-ratio increase over the baseline that counts as deviating.
    pub error_increase: f32,
    /// Deviating buckets in a row that switch attack mode on.
    pub enter_after: u32,
    /// Calm buckets in a row that switch it off.
    pub leave_after: u32,
    /// What attack mode applies to.
    pub scope: AttackScope,
}

impl Default for AttackSpec {
    fn default() -> Self {
        Self {
            bucket: 10 * SECOND,
            warmup: 6,
            rate_factor: 4.0,
            min_requests: 50,
            error_increase: 0.3,
            enter_after: 3,
            leave_after: 6,
            scope: AttackScope::Route,
        }
    }
}

/// The compiled `[behaviour]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct BehaviourPolicy {
    /// Dimensions with a feature table.
    pub track: Vec<Dim>,
    /// Most identities per dimension.
    pub max_entries: usize,
    /// The long window (one epoch).
    pub window: Nanos,
    /// The short window for the request rate.
    pub short_window: Nanos,
    /// Half-life of a remembered signal.
    pub half_life: Nanos,
    /// Where sessions come from, first present wins.
    pub session: Vec<SessionSource>,
    /// Query parameters that carry ids (besides the last path segment).
    pub id_params: Vec<String>,
    /// Detector thresholds.
    pub thresholds: Thresholds,
    /// Weight per signal, by [`Sig`] index.
    pub weights: [u8; SIGS],
    /// Flow rules.
    pub flows: Vec<FlowSpec>,
    /// Credential stuffing.
    pub stuffing: Option<StuffingSpec>,
    /// Cache-key routes.
    pub cache_keys: Vec<CacheKeySpec>,
    /// Baselines and attack mode.
    pub attack: Option<AttackSpec>,
    /// Cluster mode: records are keyed and values hashed the same way on every gateway, and
    /// records whose distinct counts changed are queued for sharing
    /// ([`Behaviour::take_shared`]).
    pub shared: bool,
}

impl Default for BehaviourPolicy {
    fn default() -> Self {
        let mut weights = [0u8; SIGS];
        for s in Sig::ALL {
            if let Some(w) = weights.get_mut(s.index()) {
                *w = s.default_weight();
            }
        }
        Self {
            // Every dimension but JA4H (FoxIO licence: named in `track` to opt in); the
            // header fingerprint stands for it.
            track: Dim::ALL.into_iter().filter(|d| *d != Dim::Ja4h).collect(),
            max_entries: 50_000,
            window: 300 * SECOND,
            short_window: 10 * SECOND,
            half_life: 120 * SECOND,
            session: vec![SessionSource::ApiKey],
            id_params: vec!["id".to_owned()],
            thresholds: Thresholds::default(),
            weights,
            flows: Vec::new(),
            stuffing: None,
            cache_keys: Vec::new(),
            attack: Some(AttackSpec::default()),
            shared: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_and_dimension_sits_at_its_index() {
        // A signal's index is its bit in what fired and, plus one, its tag in memory; both are
        // read back through `ALL`.
        for (i, s) in Sig::ALL.iter().enumerate() {
            assert_eq!(s.index(), i, "{s:?}");
        }
        for (i, d) in Dim::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?}");
        }
    }
}
