//! Behaviour over time, per identity and across identities.
//!
//! For each tracked identity dimension (ip, ip prefix, api key, account, session, JA4H
//! fingerprint, ASN) the engine keeps a small fixed-size record of features in a bounded table
//! (S3-FIFO eviction, a hard cap per dimension). Counts are kept per epoch (the long window) and
//! read as a sliding estimate: this epoch's count plus the previous epoch's, weighted by how much
//! of it still overlaps. Distinct counts (user agents, addresses, keys, usernames ...) use 64-bit
//! linear-counting sketches, so a record never grows with what it sees.
//!
//! Detectors read the features and emit named, weighted signals. A signal an identity earned is
//! remembered on its record and decays with a half-life, so a client that stops misbehaving
//! earns its score back. Group detectors (many keys behind one prefix or fingerprint, keys whose
//! behaviour is near-identical) apply to every member of the group, because every member's
//! request looks the group up.
//!
//! Per-route baselines of request rate and error ratio switch a route (or the whole gateway)
//! into a stricter scoring profile when traffic deviates for a sustained time, and back when it
//! calms down.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

use crate::clock::{Nanos, SECOND};
use crate::model::facts::RequestFacts;
use crate::model::identity::mask;
use crate::model::principal::Principal;
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
    /// The client's autonomous system.
    Asn,
}

/// Number of [`Dim`]s.
pub const DIMS: usize = 7;

impl Dim {
    /// Every dimension, in index order.
    pub const ALL: [Dim; DIMS] = [
        Dim::Ip,
        Dim::Prefix,
        Dim::ApiKey,
        Dim::Account,
        Dim::Session,
        Dim::Ja4h,
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
            "asn" => Dim::Asn,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the dimension names a caller (a key or account), as opposed to a source.
    fn is_principal(self) -> bool {
        matches!(self, Dim::ApiKey | Dim::Account)
    }

    /// Whether the dimension is one client (an address, key, account or session), whose own
    /// habits (timing, route mix, honouring Retry-After) mean something. Prefixes,
    /// fingerprints and ASNs aggregate many clients: they carry group signals, and (prefixes)
    /// the walk and error signals that a rotating address would otherwise dodge.
    fn is_individual(self) -> bool {
        matches!(self, Dim::Ip | Dim::ApiKey | Dim::Account | Dim::Session)
    }

    /// Whether walks over ids, errors and cache busting are judged on this dimension.
    fn judges_walks(self) -> bool {
        self.is_individual() || self == Dim::Prefix
    }

    /// Whether the dimension names where requests come from (an address, network or client).
    fn is_source(self) -> bool {
        matches!(self, Dim::Ip | Dim::Prefix | Dim::Ja4h | Dim::Asn)
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

    fn index(self) -> usize {
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
    /// Keys sharing one behaviour signature (or one creation hour) before they form a group.
    pub group_keys: u32,
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
            track: Dim::ALL.to_vec(),
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

/// Distinct-count sketch kinds kept per record.
#[derive(Debug, Clone, Copy)]
enum Distinct {
    UserAgents,
    Ips,
    Asns,
    Countries,
    Keys,
    Accounts,
    Usernames,
    Ids,
    Busting,
}

/// Distinct-count sketches per record.
pub const DISTINCTS: usize = 9;

/// One epoch's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u32,
    routes: [u16; ROUTE_BUCKETS],
    s401: u16,
    s403: u16,
    s404: u16,
    s429: u16,
    after_429: u16,
    logins: u16,
    failed_logins: u16,
    busting_requests: u16,
    id_steps: u16,
    id_min: u64,
    id_max: u64,
    distinct: [u64; DISTINCTS],
}

const ROUTE_BUCKETS: usize = 8;
const MEMORY: usize = 6;

/// The feature record of one identity.
#[derive(Debug, Clone, Copy, Default)]
struct Features {
    epoch: u64,
    cur: Counts,
    prev: Counts,
    last: Nanos,
    short_rate: f32,
    gaps: u32,
    gap_mean: f32,
    gap_sq: f32,
    quiet_until: Nanos,
    /// The route the last 429 answered (a `Retry-After` covers that route).
    quiet_route: RouteId,
    last_id: u64,
    id_run: u16,
    /// Remembered signals: (signal index + 1, amount); 0 = free slot.
    memory: [(u8, f32); MEMORY],
    memory_at: Nanos,
    /// Progressive throttling.
    level: u8,
    level_at: Nanos,
    last_offense: Nanos,
    /// Last successful request on each flow's `after` route.
    flow_seen: [Nanos; FLOW_SLOTS],
    /// Queued for sharing (cluster mode).
    queued: bool,
}

const FLOW_SLOTS: usize = 4;

/// Adds a hashed value to a 64-bit linear-counting sketch.
fn sketch_add(bits: &mut u64, h: u64) {
    *bits |= 1u64 << (h.rotate_right(17) & 63);
}

/// Estimated distinct values in a linear-counting sketch.
pub fn sketch_estimate(bits: u64) -> u32 {
    let zeros = bits.count_zeros();
    if zeros == 0 {
        // Saturated: report the largest value 64 bits can stand for.
        return 266;
    }
    let m = 64.0f64;
    (-m * (f64::from(zeros) / m).ln()).round() as u32
}

impl Features {
    fn fresh(now: Nanos, window: Nanos) -> Self {
        Self {
            epoch: now / window.max(1),
            last: 0,
            ..Self::default()
        }
    }

    /// Moves the epochs forward to `now`.
    fn roll(&mut self, now: Nanos, window: Nanos) {
        let epoch = now / window.max(1);
        if epoch == self.epoch {
            return;
        }
        self.prev = if epoch == self.epoch + 1 {
            self.cur
        } else {
            Counts::default()
        };
        self.cur = Counts::default();
        self.epoch = epoch;
    }

    /// Weight of the previous epoch in sliding estimates at `now`.
    fn prev_weight(&self, now: Nanos, window: Nanos) -> f32 {
        let w = window.max(1);
        let into = now.saturating_sub(self.epoch.saturating_mul(w));
        1.0 - (into as f32 / w as f32).clamp(0.0, 1.0)
    }

    fn est(&self, now: Nanos, window: Nanos, f: impl Fn(&Counts) -> u32) -> f32 {
        f(&self.cur) as f32 + f(&self.prev) as f32 * self.prev_weight(now, window)
    }

    fn distinct(&self, d: Distinct) -> u32 {
        let i = d as usize;
        let a = self.cur.distinct.get(i).copied().unwrap_or(0);
        let b = self.prev.distinct.get(i).copied().unwrap_or(0);
        sketch_estimate(a | b)
    }

    fn add_distinct(&mut self, d: Distinct, h: u64) {
        if let Some(bits) = self.cur.distinct.get_mut(d as usize) {
            sketch_add(bits, h);
        }
    }

    /// Decays remembered signals to `now`.
    fn decay(&mut self, now: Nanos, half_life: Nanos) {
        if now <= self.memory_at {
            return;
        }
        let halves = (now - self.memory_at) as f64 / half_life.max(1) as f64;
        let f = 0.5f64.powf(halves) as f32;
        for slot in &mut self.memory {
            slot.1 *= f;
            if slot.1 < 1.0 {
                *slot = (0, 0.0);
            }
        }
        self.memory_at = now;
    }

    fn remember(&mut self, sig: usize, weight: u8) {
        let tag = (sig + 1) as u8;
        let w = f32::from(weight);
        if let Some(slot) = self.memory.iter_mut().find(|s| s.0 == tag) {
            slot.1 = slot.1.max(w);
            return;
        }
        // A free slot, else the weakest one.
        let mut weakest: Option<&mut (u8, f32)> = None;
        for slot in &mut self.memory {
            if weakest.as_ref().is_none_or(|x| slot.1 < x.1) {
                weakest = Some(slot);
            }
        }
        if let Some(slot) = weakest
            && slot.1 < w
        {
            *slot = (tag, w);
        }
    }

    fn route_share_and_entropy(&self, now: Nanos, window: Nanos) -> (f32, f32) {
        let pw = self.prev_weight(now, window);
        let mut total = 0.0f32;
        let mut top = 0.0f32;
        let mut counts = [0.0f32; ROUTE_BUCKETS];
        for (i, c) in counts.iter_mut().enumerate() {
            let a = f32::from(self.cur.routes.get(i).copied().unwrap_or(0));
            let b = f32::from(self.prev.routes.get(i).copied().unwrap_or(0));
            *c = a + b * pw;
            total += *c;
            top = top.max(*c);
        }
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let entropy = counts
            .iter()
            .filter(|c| **c > 0.0)
            .map(|c| {
                let p = c / total;
                -p * p.log2()
            })
            .sum();
        (top / total, entropy)
    }

    fn regularity(&self) -> Option<f32> {
        if self.gaps == 0 || self.gap_mean <= 0.0 {
            return None;
        }
        let var = (self.gap_sq - self.gap_mean * self.gap_mean).max(0.0);
        Some(var.sqrt() / self.gap_mean)
    }
}

/// Counts evictions.
#[derive(Debug, Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl<V> Lifecycle<u64, V> for Evictions {
    type RequestState = ();
    fn on_evict(&self, _state: &mut (), _key: u64, _val: V) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A bounded table from a hashed identity to a record.
struct Table<V: Clone> {
    cells: Cache<u64, V, UnitWeighter, DefaultHashBuilder, Evictions>,
    evictions: Evictions,
}

impl<V: Clone> Table<V> {
    fn new(max: usize) -> Self {
        let max = max.max(16);
        let evictions = Evictions::default();
        Self {
            cells: Cache::with(
                max,
                max as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            evictions,
        }
    }

    /// Runs `f` on the key's record, creating it with `fresh` first if needed.
    fn with<R>(
        &self,
        key: u64,
        fresh: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        let mut f = Some(f);
        let result = self.cells.entry(&key, None, |_, v| {
            let r = f.take().map(|f| f(v));
            EntryAction::Retain(r)
        });
        match result {
            EntryResult::Retained(r) => r,
            EntryResult::Vacant(guard) => {
                let mut v = fresh();
                let r = f.take().map(|f| f(&mut v));
                let _ = guard.insert(v);
                r
            }
            _ => None,
        }
    }

    fn peek(&self, key: u64) -> Option<V> {
        self.cells.peek(&key)
    }

    /// Runs `f` on the key's record if there is one.
    fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut f = Some(f);
        match self.cells.entry(&key, None, |_, v| {
            EntryAction::Retain(f.take().map(|f| f(v)))
        }) {
            EntryResult::Retained(r) => r,
            _ => None,
        }
    }
}

/// A group record: which keys it has seen, per epoch.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    epoch: u64,
    cur: u64,
    prev: u64,
}

impl Group {
    fn add(&mut self, now: Nanos, window: Nanos, h: u64) -> u32 {
        let epoch = now / window.max(1);
        if epoch != self.epoch {
            self.prev = if epoch == self.epoch + 1 { self.cur } else { 0 };
            self.cur = 0;
            self.epoch = epoch;
        }
        sketch_add(&mut self.cur, h);
        sketch_estimate(self.cur | self.prev)
    }

    fn count(&self) -> u32 {
        sketch_estimate(self.cur | self.prev)
    }
}

/// A username's failures, for one-username-many-sources.
#[derive(Debug, Clone, Copy, Default)]
struct Target {
    epoch: u64,
    sources_cur: u64,
    sources_prev: u64,
    failures: u32,
    /// Queued for sharing (cluster mode).
    queued: bool,
}

/// A route's rolling baseline.
#[derive(Debug, Clone, Default)]
struct Baseline {
    bucket: u64,
    requests: u32,
    errors: u32,
    learned: u32,
    base_rate: f32,
    base_errors: f32,
    hot: u32,
    calm: u32,
    under_attack: bool,
}

/// A change of attack mode, for the log and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackEvent {
    /// The route.
    pub route: RouteId,
    /// Whether attack mode went on (true) or off.
    pub on: bool,
    /// Requests in the bucket that decided it.
    pub requests: u32,
    /// Baseline requests per bucket.
    pub baseline: f32,
    /// Error ratio in the bucket.
    pub error_ratio: f32,
}

/// What one request was counted under, for observing its answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace {
    keys: [Option<u64>; DIMS],
    route: RouteId,
    /// Hashed username, on the stuffing route.
    username: Option<u64>,
    ip_hash: u64,
    /// Which record throttling is kept on.
    throttle: Option<(Dim, u64)>,
}

impl Trace {
    /// The record progressive throttling is kept on: the key, else the address.
    pub fn throttle_identity(&self) -> Option<Dim> {
        self.throttle.map(|(d, _)| d)
    }

    /// The throttling record as a value (its dimension and hashed key): one client, for
    /// bounding how many of its requests are held at once.
    pub fn throttle_key(&self) -> Option<(Dim, u64)> {
        self.throttle
    }
}

/// A signal the behaviour detectors emitted for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emitted {
    /// Index: a [`Sig`] index, or `SIGS + i` for flow `i`.
    pub index: usize,
    /// Weight now (remembered signals decay).
    pub weight: u8,
}

/// The behaviour state of an engine.
pub struct Behaviour {
    policy: BehaviourPolicy,
    tables: [Option<Table<Features>>; DIMS],
    targets: Option<Table<Target>>,
    similar: Table<Group>,
    cohorts: Table<Group>,
    baselines: Vec<Mutex<Baseline>>,
    events: Mutex<Vec<AttackEvent>>,
    hasher: SipKeys,
    /// Records whose sketches changed since they were last shared (cluster mode): table
    /// ([`Dim`] index, or [`SHARED_TARGETS`]) and key.
    share_queue: Mutex<Vec<(u8, u64)>>,
    /// Whether any route is in attack mode (fast path).
    any_attack: AtomicU64,
    /// Failed logins in total, for the global view.
    failed_logins: AtomicU64,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("tracked", &self.len())
            .finish()
    }
}

/// One identity's features, for "why was this client scored?".
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureReport {
    /// Requests in the long window (sliding estimate).
    pub requests: f32,
    /// Requests per second over the short window.
    pub rate_short: f32,
    /// Requests per second over the long window.
    pub rate_long: f32,
    /// Coefficient of variation of inter-arrival times (low: machine-steady).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regularity_cv: Option<f32>,
    /// Mean seconds between requests.
    pub mean_gap_secs: f32,
    /// Share of requests on the most used route.
    pub top_route_share: f32,
    /// Shannon entropy of the route mix, in bits.
    pub route_entropy: f32,
    /// Shares of 401, 403, 404 and 429 answers.
    pub share_401: f32,
    /// See `share_401`.
    pub share_403: f32,
    /// See `share_401`.
    pub share_404: f32,
    /// See `share_401`.
    pub share_429: f32,
    /// Requests sent while a `Retry-After` ran.
    pub after_429: f32,
    /// Distinct user agents, addresses, ASNs and countries (keys and accounts).
    pub distinct_user_agents: u32,
    /// See `distinct_user_agents`.
    pub distinct_ips: u32,
    /// See `distinct_user_agents`.
    pub distinct_asns: u32,
    /// See `distinct_user_agents`.
    pub distinct_countries: u32,
    /// Distinct keys and accounts (sources).
    pub distinct_keys: u32,
    /// See `distinct_keys`.
    pub distinct_accounts: u32,
    /// Login attempts, failures and distinct usernames tried.
    pub logins: f32,
    /// See `logins`.
    pub failed_logins: f32,
    /// See `logins`.
    pub distinct_usernames: u32,
    /// Longest current walk of small id steps, and distinct ids seen.
    pub id_run: u32,
    /// See `id_run`.
    pub distinct_ids: u32,
    /// Distinct non-resource parameter values on cache-key routes.
    pub cache_busting_values: u32,
    /// Remembered signals and their decayed weight.
    pub remembered: Vec<(String, u8)>,
    /// What the remembered signals add to this identity's requests now (0-100).
    pub score: u8,
    /// Progressive throttling level (0: none).
    pub throttle_level: u8,
}

/// The keys values and identities are hashed with: random per process, or (cluster mode)
/// the same on every gateway, so their records and sketches can be merged.
#[derive(Debug, Clone, Copy)]
struct SipKeys(u64, u64);

impl SipKeys {
    const CLUSTER: SipKeys = SipKeys(0x6265_6861_7669_6f75, 0x7220_7368_6172_6564);

    fn random() -> Self {
        let r = RandomState::new();
        SipKeys(r.hash_one(1u8), r.hash_one(2u8))
    }
}

impl BuildHasher for SipKeys {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.0, self.1)
    }
}

/// The table index [`SharedSketches`] uses for usernames (stuffing targets).
pub const SHARED_TARGETS: u8 = DIMS as u8;

/// Most records queued for sharing between two rounds; more wait for their next request.
const MAX_SHARE_QUEUE: usize = 100_000;

/// One record's distinct-count sketches as gateways share them (cluster mode): OR-ing
/// sketches is idempotent, so each gateway adds its own and takes back the union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSketches {
    /// A [`Dim`] index, or [`SHARED_TARGETS`].
    pub table: u8,
    /// The record's key (the same on every gateway in cluster mode).
    pub key: u64,
    /// The current epoch's sketches (for usernames, only the first: distinct sources).
    pub sketches: [u64; DISTINCTS],
}

fn hash_one(h: &impl BuildHasher, tag: u8, value: impl Hash) -> u64 {
    let mut s = h.build_hasher();
    tag.hash(&mut s);
    value.hash(&mut s);
    s.finish()
}

/// The numeric id a request addresses: the last path segment, or a configured query parameter.
fn request_id(path: &str, query: Option<&str>, params: &[String]) -> Option<u64> {
    let last = path.rsplit('/').next().unwrap_or("");
    if !last.is_empty() && last.len() <= 18 && last.bytes().all(|b| b.is_ascii_digit()) {
        return last.parse().ok();
    }
    let q = query?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if params.iter().any(|p| p == k)
            && !v.is_empty()
            && v.len() <= 18
            && v.bytes().all(|b| b.is_ascii_digit())
        {
            return v.parse().ok();
        }
    }
    None
}

/// A cookie's value in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    for v in headers.get_all(http::header::COOKIE) {
        for part in v.as_bytes().split(|b| *b == b';') {
            let part = part.trim_ascii();
            if let Some(rest) = part.strip_prefix(name.as_bytes())
                && let Some(value) = rest.strip_prefix(b"=")
                && !value.is_empty()
            {
                return Some(value);
            }
        }
    }
    None
}

impl Behaviour {
    /// Fresh state for a policy.
    pub fn new(policy: BehaviourPolicy, routes: usize) -> Self {
        let tables = Dim::ALL.map(|d| {
            policy
                .track
                .contains(&d)
                .then(|| Table::new(policy.max_entries))
        });
        let targets = policy
            .stuffing
            .as_ref()
            .map(|s| Table::new(s.max_usernames));
        let groups = (policy.max_entries / 4).max(1024);
        Self {
            tables,
            targets,
            similar: Table::new(groups),
            cohorts: Table::new(groups),
            baselines: (0..=routes)
                .map(|_| Mutex::new(Baseline::default()))
                .collect(),
            events: Mutex::new(Vec::new()),
            hasher: if policy.shared {
                SipKeys::CLUSTER
            } else {
                SipKeys::random()
            },
            share_queue: Mutex::new(Vec::new()),
            any_attack: AtomicU64::new(0),
            failed_logins: AtomicU64::new(0),
            policy,
        }
    }

    /// Queues a record for sharing; false if the queue is full (it is tried again on the
    /// record's next request).
    fn queue_share(&self, table: u8, key: u64) -> bool {
        match self.share_queue.lock() {
            Ok(mut q) if q.len() < MAX_SHARE_QUEUE => {
                q.push((table, key));
                true
            }
            _ => false,
        }
    }

    /// The sketches of every record that changed since the last call (cluster mode), for
    /// the gateway to merge with the other gateways'.
    pub fn take_shared(&self) -> Vec<SharedSketches> {
        let queued = match self.share_queue.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return Vec::new(),
        };
        queued
            .into_iter()
            .filter_map(|(table, key)| {
                let sketches: [u64; DISTINCTS] = if table == SHARED_TARGETS {
                    self.targets.as_ref()?.update(key, |t| {
                        t.queued = false;
                        let mut s = [0u64; DISTINCTS];
                        if let Some(first) = s.first_mut() {
                            *first = t.sources_cur;
                        }
                        s
                    })?
                } else {
                    self.tables
                        .get(usize::from(table))?
                        .as_ref()?
                        .update(key, |f| {
                            f.queued = false;
                            f.cur.distinct
                        })?
                };
                // A record with nothing to count (no keys, agents, ids ...) has nothing to share.
                sketches.iter().any(|w| *w != 0).then_some(SharedSketches {
                    table,
                    key,
                    sketches,
                })
            })
            .collect()
    }

    /// Merges the cluster's sketches into the records still held here: from the next request
    /// on, distinct counts (keys per address, addresses per key, sources per username ...)
    /// are the fleet's.
    pub fn merge_shared(&self, rows: &[SharedSketches]) {
        for row in rows {
            if row.table == SHARED_TARGETS {
                if let Some(targets) = &self.targets {
                    targets.update(row.key, |t| {
                        t.sources_cur |= row.sketches.first().copied().unwrap_or(0);
                    });
                }
            } else if let Some(Some(table)) = self.tables.get(usize::from(row.table)) {
                table.update(row.key, |f| {
                    for (mine, theirs) in f.cur.distinct.iter_mut().zip(row.sketches) {
                        *mine |= theirs;
                    }
                });
            }
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BehaviourPolicy {
        &self.policy
    }

    /// Routes with a baseline (the policy's routes plus the default route).
    pub fn routes(&self) -> usize {
        self.baselines.len().saturating_sub(1)
    }

    /// Identities tracked now, over all dimensions.
    pub fn len(&self) -> usize {
        self.tables
            .iter()
            .flatten()
            .map(|t| t.cells.len())
            .sum::<usize>()
            + self.targets.as_ref().map_or(0, |t| t.cells.len())
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most identities tracked at once, over all tables.
    pub fn capacity(&self) -> u64 {
        self.tables
            .iter()
            .flatten()
            .map(|t| t.cells.capacity())
            .sum::<u64>()
            + self.targets.as_ref().map_or(0, |t| t.cells.capacity())
            + self.similar.cells.capacity()
            + self.cohorts.cells.capacity()
    }

    /// Records evicted so far.
    pub fn evictions(&self) -> u64 {
        self.tables
            .iter()
            .flatten()
            .map(|t| t.evictions.0.load(Ordering::Relaxed))
            .sum::<u64>()
            + self
                .targets
                .as_ref()
                .map_or(0, |t| t.evictions.0.load(Ordering::Relaxed))
    }

    /// Approximate bytes the tables hold.
    pub fn approx_bytes(&self) -> usize {
        // Record plus key, hash-table slot and S3-FIFO bookkeeping.
        let per = std::mem::size_of::<Features>() + 48;
        self.tables
            .iter()
            .flatten()
            .map(|t| t.cells.len() * per)
            .sum::<usize>()
            + self
                .targets
                .as_ref()
                .map_or(0, |t| t.cells.len() * (std::mem::size_of::<Target>() + 48))
    }

    /// Failed logins seen in total.
    pub fn failed_logins(&self) -> u64 {
        self.failed_logins.load(Ordering::Relaxed)
    }

    /// Hashes an identity's value the way the tables key it.
    pub fn key_of(&self, dim: Dim, value: &[u8]) -> u64 {
        hash_one(&self.hasher, 100 + dim as u8, value)
    }

    /// Hashes an address (`ip`) or a network's first address (`ip/24`) the way the tables
    /// key it.
    pub fn ip_key(&self, dim: Dim, ip: IpAddr) -> u64 {
        let ip = ip.to_canonical();
        let ip = if dim == Dim::Prefix {
            mask(ip, 24, 48)
        } else {
            ip
        };
        hash_one(&self.hasher, 100 + dim as u8, ip)
    }

    /// The hashed value of each dimension for one request.
    fn keys(&self, facts: &RequestFacts<'_>, principal: Option<&Principal>) -> [Option<u64>; DIMS] {
        let ip = facts.client_ip.to_canonical();
        let mut keys = [None; DIMS];
        for d in Dim::ALL {
            if self.tables.get(d.index()).is_none_or(Option::is_none) {
                continue;
            }
            let k = match d {
                Dim::Ip | Dim::Prefix => Some(self.ip_key(d, ip)),
                Dim::ApiKey => principal
                    .and_then(|p| p.key_id.as_deref())
                    .map(|k| self.key_of(d, k.as_bytes())),
                Dim::Account => principal
                    .and_then(|p| p.account.as_deref())
                    .map(|a| self.key_of(d, a.as_bytes())),
                Dim::Session => self.session(facts, principal).map(|s| self.key_of(d, s)),
                Dim::Ja4h => facts.ja4h.map(|j| self.key_of(d, j.as_bytes())),
                Dim::Asn => facts
                    .ip_info
                    .filter(|i| i.asn != 0)
                    .map(|i| self.key_of(d, &i.asn.to_be_bytes())),
            };
            if let Some(slot) = keys.get_mut(d.index()) {
                *slot = k;
            }
        }
        keys
    }

    fn session<'a>(
        &self,
        facts: &RequestFacts<'a>,
        principal: Option<&'a Principal>,
    ) -> Option<&'a [u8]> {
        for s in &self.policy.session {
            let v = match s {
                SessionSource::Cookie(name) => cookie(facts.headers, name),
                SessionSource::Header(name) => facts.headers.get(name).map(|v| v.as_bytes()),
                SessionSource::Jwt(claim) => {
                    principal.and_then(|p| p.claim(claim)).map(str::as_bytes)
                }
                SessionSource::ApiKey => principal
                    .and_then(|p| p.key_id.as_deref())
                    .map(str::as_bytes),
            };
            if let Some(v) = v.filter(|v| !v.is_empty() && v.len() <= 512) {
                return Some(v);
            }
        }
        None
    }

    /// Counts one request and judges every identity it carries. Pushes the signals (with
    /// remembered ones, decayed) into `out`, at most one per signal, strongest weight.
    pub fn assess(
        &self,
        facts: &RequestFacts<'_>,
        route: RouteId,
        username: Option<&[u8]>,
        key_created_ms: Option<u64>,
        out: &mut Vec<Emitted>,
    ) -> Trace {
        let p = &self.policy;
        let principal = facts.auth.principal();
        let now = facts.now;
        let keys = self.keys(facts, principal);
        let ip = facts.client_ip.to_canonical();
        let ip_hash = hash_one(&self.hasher, 1, ip);
        let ua_hash = facts
            .headers
            .get(http::header::USER_AGENT)
            .map(|v| hash_one(&self.hasher, 2, v.as_bytes()));
        let (asn_hash, country_hash) = match facts.ip_info {
            Some(i) => (
                (i.asn != 0).then(|| hash_one(&self.hasher, 3, i.asn)),
                (!i.country.is_empty()).then(|| hash_one(&self.hasher, 4, &*i.country)),
            ),
            None => (None, None),
        };
        let key_hash = principal
            .and_then(|p| p.key_id.as_deref())
            .map(|k| hash_one(&self.hasher, 5, k));
        let account_hash = principal
            .and_then(|p| p.account.as_deref())
            .map(|a| hash_one(&self.hasher, 6, a));
        let login = p.stuffing.as_ref().is_some_and(|s| s.route == route);
        let username = username
            .filter(|_| login)
            .map(|u| hash_one(&self.hasher, 7, u));
        let id = request_id(facts.path, facts.query, &p.id_params);
        let busting = p
            .cache_keys
            .iter()
            .find(|c| c.route == route)
            .map(|c| self.busting_hash(route, facts.query, &c.params));
        let route_bucket = route % ROUTE_BUCKETS;
        let anonymous = principal.is_none();
        let flow_slots = self.flow_slots();
        let mut emitted: [u8; SIGS] = [0; SIGS];
        let mut flows_violated: Vec<usize> = Vec::new();
        let w = &p.weights;
        let t = &p.thresholds;
        let weight = |s: Sig| w.get(s.index()).copied().unwrap_or(0);
        let emit = |emitted: &mut [u8; SIGS], s: Sig, wt: u8| {
            if let Some(e) = emitted.get_mut(s.index()) {
                *e = (*e).max(wt);
            }
        };

        // Throttling is kept on the key when there is one, else on the address.
        let throttle = [Dim::ApiKey, Dim::Ip].into_iter().find_map(|d| {
            let key = (*keys.get(d.index())?)?;
            Some((d, key))
        });
        let mut flow_last: [Nanos; FLOW_SLOTS] = [0; FLOW_SLOTS];
        for d in Dim::ALL {
            let (Some(Some(table)), Some(Some(key))) =
                (self.tables.get(d.index()), keys.get(d.index()))
            else {
                continue;
            };
            let key = *key;
            let similar = table
                .with(
                    key,
                    || Features::fresh(now, p.window),
                    |f| {
                        f.roll(now, p.window);
                        // Rate and regularity.
                        if f.last > 0 && now > f.last {
                            let gap = (now - f.last) as f32 / SECOND as f32;
                            let a = 0.1f32;
                            if f.gaps == 0 {
                                f.gap_mean = gap;
                                f.gap_sq = gap * gap;
                            } else {
                                f.gap_mean += a * (gap - f.gap_mean);
                                f.gap_sq += a * (gap * gap - f.gap_sq);
                            }
                            f.gaps = f.gaps.saturating_add(1);
                            let decay =
                                (-((now - f.last) as f32) / p.short_window.max(1) as f32).exp();
                            f.short_rate = f.short_rate * decay + 1.0;
                        } else if f.last == 0 {
                            f.short_rate = 1.0;
                        } else {
                            f.short_rate += 1.0;
                        }
                        f.last = now;
                        if p.shared && !f.queued {
                            f.queued = self.queue_share(d.index() as u8, key);
                        }
                        let c = &mut f.cur;
                        c.requests = c.requests.saturating_add(1);
                        if let Some(r) = c.routes.get_mut(route_bucket) {
                            *r = r.saturating_add(1);
                        }
                        if now < f.quiet_until && f.quiet_route == route {
                            c.after_429 = c.after_429.saturating_add(1);
                        }
                        if d.is_principal() {
                            if let Some(h) = ua_hash {
                                f.add_distinct(Distinct::UserAgents, h);
                            }
                            f.add_distinct(Distinct::Ips, ip_hash);
                            if let Some(h) = asn_hash {
                                f.add_distinct(Distinct::Asns, h);
                            }
                            if let Some(h) = country_hash {
                                f.add_distinct(Distinct::Countries, h);
                            }
                        }
                        if d.is_source() {
                            if let Some(h) = key_hash {
                                f.add_distinct(Distinct::Keys, h);
                            }
                            if let Some(h) = account_hash {
                                f.add_distinct(Distinct::Accounts, h);
                            }
                            if login {
                                f.cur.logins = f.cur.logins.saturating_add(1);
                                if let Some(u) = username {
                                    f.add_distinct(Distinct::Usernames, u);
                                }
                            }
                        }
                        if let Some(id) = id {
                            let step = id.abs_diff(f.last_id);
                            if f.last_id != 0 && (1..=3).contains(&step) {
                                f.id_run = f.id_run.saturating_add(1);
                                f.cur.id_steps = f.cur.id_steps.saturating_add(1);
                            } else if step != 0 {
                                f.id_run = 0;
                            }
                            f.last_id = id;
                            f.cur.id_min = if f.cur.id_min == 0 {
                                id
                            } else {
                                f.cur.id_min.min(id)
                            };
                            f.cur.id_max = f.cur.id_max.max(id);
                            f.add_distinct(Distinct::Ids, hash_one(&self.hasher, 8, id));
                        }
                        if let Some(b) = busting {
                            f.cur.busting_requests = f.cur.busting_requests.saturating_add(1);
                            f.add_distinct(Distinct::Busting, b);
                        }
                        if d == Dim::Session || d == Dim::Ip {
                            for (slot, seen) in flow_last.iter_mut().zip(f.flow_seen) {
                                *slot = (*slot).max(seen);
                            }
                        }

                        // Detectors.
                        let mut fired: [u8; SIGS] = [0; SIGS];
                        let mut fire = |s: Sig| {
                            if let Some(x) = fired.get_mut(s.index()) {
                                *x = weight(s);
                            }
                        };
                        let requests = f.est(now, p.window, |c| c.requests);
                        let individual = d.is_individual();
                        if individual
                            && f.gaps >= t.regular_min_gaps
                            && f.regularity().is_some_and(|cv| cv < t.regular_cv)
                        {
                            fire(Sig::Regular);
                        }
                        if d.judges_walks() && requests >= t.min_requests as f32 {
                            let (share, _) = f.route_share_and_entropy(now, p.window);
                            if individual
                                && share >= t.one_route_share
                                && requests >= 5.0 * t.min_requests as f32
                            {
                                fire(Sig::OneRoute);
                            }
                            let errors = f.est(now, p.window, |c| {
                                u32::from(c.s401) + u32::from(c.s403) + u32::from(c.s404)
                            });
                            if errors / requests >= t.error_share {
                                fire(Sig::Errors);
                            }
                        }
                        if individual
                            && f.est(now, p.window, |c| u32::from(c.after_429))
                                >= t.ignored_429s as f32
                        {
                            fire(Sig::IgnoresRetryAfter);
                        }
                        if d.is_principal() {
                            if f.distinct(Distinct::UserAgents) >= t.user_agents {
                                fire(Sig::ManyUserAgents);
                            }
                            if f.distinct(Distinct::Ips) >= t.ips {
                                fire(Sig::ManyIps);
                            }
                            if f.distinct(Distinct::Countries) >= t.countries {
                                fire(Sig::ManyCountries);
                            }
                            if f.distinct(Distinct::Asns) >= t.asns {
                                fire(Sig::ManyAsns);
                            }
                        }
                        if d.is_source() {
                            if f.distinct(Distinct::Keys) >= t.keys_per_source {
                                fire(match d {
                                    Dim::Ip => Sig::KeysPerIp,
                                    Dim::Prefix => Sig::KeysPerPrefix,
                                    Dim::Ja4h => Sig::KeysPerFingerprint,
                                    _ => Sig::KeysPerAsn,
                                });
                            }
                            if f.distinct(Distinct::Accounts) >= t.keys_per_source {
                                fire(Sig::AccountsPerSource);
                            }
                            if let Some(s) = &p.stuffing {
                                let failed = f.est(now, p.window, |c| u32::from(c.failed_logins));
                                let logins = f.est(now, p.window, |c| u32::from(c.logins));
                                if failed >= s.min_failures as f32
                                    && f.distinct(Distinct::Usernames) >= s.min_usernames
                                    && failed >= s.failure_share * logins.max(1.0)
                                {
                                    fire(Sig::StuffingSource);
                                }
                            }
                        }
                        if !d.judges_walks() {
                            // Group dimensions: no walk or busting judgement.
                        } else if f.id_run as u32 >= t.enumeration_run {
                            fire(Sig::Enumeration);
                        } else {
                            let distinct = f.distinct(Distinct::Ids);
                            let span = f.cur.id_max.saturating_sub(f.cur.id_min) + 1;
                            if distinct >= t.enumeration_distinct && span <= 2 * u64::from(distinct)
                            {
                                fire(Sig::Enumeration);
                            }
                        }
                        if busting.is_some() && d.judges_walks() {
                            let distinct = f.distinct(Distinct::Busting);
                            let n = f.est(now, p.window, |c| u32::from(c.busting_requests));
                            if distinct >= t.cache_busting_distinct
                                && distinct as f32 >= 0.8 * n.min(266.0)
                            {
                                fire(Sig::CacheBusting);
                            }
                        }

                        // Remember what fired; report what fired and what is still remembered.
                        f.decay(now, p.half_life);
                        for (i, wt) in fired.iter().enumerate() {
                            if *wt > 0 {
                                f.remember(i, *wt);
                            }
                        }
                        for (tag, amount) in f.memory {
                            if tag > 0 {
                                emit(
                                    &mut emitted,
                                    Sig::ALL
                                        .get(usize::from(tag) - 1)
                                        .copied()
                                        .unwrap_or(Sig::Regular),
                                    amount.round().min(100.0) as u8,
                                );
                            }
                        }
                        // Signature of behaviour, for near-identical keys.
                        if d == Dim::ApiKey && requests >= t.min_requests as f32 {
                            let rate = requests / (p.window as f32 / SECOND as f32);
                            let cv = f.regularity().unwrap_or(1.0);
                            let (share, _) = f.route_share_and_entropy(now, p.window);
                            let errors = f.est(now, p.window, |c| {
                                u32::from(c.s401) + u32::from(c.s403) + u32::from(c.s404)
                            }) / requests;
                            Some(hash_one(
                                &self.hasher,
                                9,
                                (
                                    (rate.max(1e-3).log2() * 2.0).round() as i32,
                                    (cv * 10.0).round().min(10.0) as i32,
                                    (share * 5.0).round() as i32,
                                    (errors * 5.0).round() as i32,
                                    route_bucket,
                                    facts.ja4h,
                                ),
                            ))
                        } else {
                            None
                        }
                    },
                )
                .flatten()
                .and_then(|sig| {
                    let count = self
                        .similar
                        .with(sig, Group::default, |g| g.add(now, p.window, key))?;
                    (count >= t.group_keys).then_some(())
                });
            if similar.is_some() {
                emit(&mut emitted, Sig::SimilarKeys, weight(Sig::SimilarKeys));
            }
        }

        // One username failing from many sources.
        if let (Some(u), Some(targets), Some(s)) = (username, &self.targets, &p.stuffing) {
            let epoch = now / p.window.max(1);
            if let Some(t) = targets.peek(u) {
                let sources = if t.epoch == epoch || t.epoch + 1 == epoch {
                    sketch_estimate(t.sources_cur | t.sources_prev)
                } else {
                    0
                };
                if sources >= s.sources_per_username {
                    emit(
                        &mut emitted,
                        Sig::StuffingTarget,
                        weight(Sig::StuffingTarget),
                    );
                }
            }
        }

        // Keys created together that became active together.
        if let (Some(created), Some(k)) = (key_created_ms, key_hash)
            && facts.unix_ms.saturating_sub(created) < 24 * 3_600_000
        {
            let cohort = hash_one(&self.hasher, 10, created / 3_600_000);
            if let Some(n) = self
                .cohorts
                .with(cohort, Group::default, |g| g.add(now, p.window, k))
                && n >= t.group_keys
            {
                emit(&mut emitted, Sig::KeyCohort, weight(Sig::KeyCohort));
            }
        }

        // Flows.
        for (i, flow) in p.flows.iter().enumerate() {
            if flow.route != route || (flow.anonymous_only && !anonymous) {
                continue;
            }
            let slot = flow_slots
                .iter()
                .position(|r| *r == flow.after)
                .and_then(|s| flow_last.get(s))
                .copied()
                .unwrap_or(0);
            let ok = slot > 0
                && now.saturating_sub(slot) <= flow.within
                && now.saturating_sub(slot) >= flow.min_gap;
            if !ok {
                flows_violated.push(i);
            }
        }

        for (i, wt) in emitted.iter().enumerate() {
            if *wt > 0 {
                out.push(Emitted {
                    index: i,
                    weight: *wt,
                });
            }
        }
        for i in flows_violated {
            if let Some(f) = p.flows.get(i) {
                out.push(Emitted {
                    index: SIGS + i,
                    weight: f.weight,
                });
            }
        }
        self.count_route(route, now, false);
        Trace {
            keys,
            route,
            username,
            ip_hash,
            throttle,
        }
    }

    /// The distinct `after` routes of the flows, in slot order (at most [`FLOW_SLOTS`]).
    fn flow_slots(&self) -> Vec<RouteId> {
        let mut out: Vec<RouteId> = Vec::new();
        for f in &self.policy.flows {
            if !out.contains(&f.after) && out.len() < FLOW_SLOTS {
                out.push(f.after);
            }
        }
        out
    }

    fn busting_hash(&self, route: RouteId, query: Option<&str>, params: &[String]) -> u64 {
        let mut s = self.hasher.build_hasher();
        11u8.hash(&mut s);
        route.hash(&mut s);
        if let Some(q) = query {
            let mut pairs: Vec<&str> = q
                .split('&')
                .filter(|pair| {
                    let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
                    !k.is_empty() && !params.iter().any(|p| p == k)
                })
                .take(32)
                .collect();
            pairs.sort_unstable();
            pairs.hash(&mut s);
        }
        s.finish()
    }

    /// Records the answer to a request: status mix, 429s and their `Retry-After`, failed
    /// logins, successful flow steps, the route's baseline.
    pub fn observe(&self, trace: &Trace, status: u16, retry_after: Nanos, now: Nanos) {
        let p = &self.policy;
        let failed_login = p
            .stuffing
            .as_ref()
            .is_some_and(|s| s.route == trace.route && s.failure_status.contains(&status));
        let flow_slot = self
            .flow_slots()
            .iter()
            .position(|r| *r == trace.route)
            .filter(|_| status < 400);
        for d in Dim::ALL {
            let (Some(Some(table)), Some(Some(key))) =
                (self.tables.get(d.index()), trace.keys.get(d.index()))
            else {
                continue;
            };
            table.with(
                *key,
                || Features::fresh(now, p.window),
                |f| {
                    f.roll(now, p.window);
                    let c = &mut f.cur;
                    match status {
                        401 => c.s401 = c.s401.saturating_add(1),
                        403 => c.s403 = c.s403.saturating_add(1),
                        404 => c.s404 = c.s404.saturating_add(1),
                        429 => {
                            c.s429 = c.s429.saturating_add(1);
                            f.quiet_until = now.saturating_add(retry_after);
                            f.quiet_route = trace.route;
                        }
                        _ => {}
                    }
                    if failed_login && d.is_source() {
                        f.cur.failed_logins = f.cur.failed_logins.saturating_add(1);
                    }
                    if let Some(slot) = flow_slot
                        && (d == Dim::Session || d == Dim::Ip)
                        && let Some(s) = f.flow_seen.get_mut(slot)
                    {
                        *s = now;
                    }
                },
            );
        }
        if failed_login {
            self.failed_logins.fetch_add(1, Ordering::Relaxed);
            if let (Some(u), Some(targets)) = (trace.username, &self.targets) {
                let epoch = now / p.window.max(1);
                targets.with(u, Target::default, |t| {
                    if t.epoch != epoch {
                        t.sources_prev = if t.epoch + 1 == epoch {
                            t.sources_cur
                        } else {
                            0
                        };
                        t.sources_cur = 0;
                        t.epoch = epoch;
                    }
                    sketch_add(&mut t.sources_cur, trace.ip_hash);
                    t.failures = t.failures.saturating_add(1);
                    if p.shared && !t.queued {
                        t.queued = self.queue_share(SHARED_TARGETS, u);
                    }
                });
            }
        }
        if status == 401 || status == 403 || status >= 500 || failed_login {
            self.count_route(trace.route, now, true);
        }
    }

    /// Counts a request (or an error answer) into the route's baseline, closing buckets as
    /// time passes.
    fn count_route(&self, route: RouteId, now: Nanos, error: bool) {
        let Some(spec) = &self.policy.attack else {
            return;
        };
        let Some(cell) = self.baselines.get(route) else {
            return;
        };
        let Ok(mut b) = cell.lock() else {
            return;
        };
        let bucket = now / spec.bucket.max(1);
        if b.bucket != bucket {
            if b.bucket != 0 {
                let elapsed = bucket.saturating_sub(b.bucket);
                self.close_bucket(&mut b, spec, route, elapsed);
            }
            b.bucket = bucket;
            b.requests = 0;
            b.errors = 0;
        }
        if error {
            b.errors = b.errors.saturating_add(1);
        } else {
            b.requests = b.requests.saturating_add(1);
        }
    }

    fn close_bucket(&self, b: &mut Baseline, spec: &AttackSpec, route: RouteId, elapsed: u64) {
        let requests = b.requests as f32;
        let ratio = if b.requests > 0 {
            (b.errors as f32 / requests).min(1.0)
        } else {
            0.0
        };
        // Buckets with no traffic at all in between count as calm and lower the baseline.
        let idle = elapsed.saturating_sub(1).min(u64::from(spec.leave_after)) as u32;
        let deviating = b.learned >= spec.warmup
            && ((b.requests >= spec.min_requests
                && requests > spec.rate_factor * b.base_rate.max(1.0))
                || (b.requests >= spec.min_requests / 2
                    && ratio > b.base_errors + spec.error_increase));
        if deviating {
            b.hot += 1;
            b.calm = 0;
        } else {
            b.calm += 1 + idle;
            b.hot = 0;
            // Learn only from normal traffic.
            let a = if b.learned < spec.warmup { 0.5 } else { 0.1 };
            b.base_rate += a * (requests - b.base_rate);
            b.base_errors += a * (ratio - b.base_errors);
            for _ in 0..idle {
                b.base_rate *= 0.9;
            }
            b.learned = b.learned.saturating_add(1);
        }
        let flip = if !b.under_attack && b.hot >= spec.enter_after {
            Some(true)
        } else if b.under_attack && b.calm >= spec.leave_after {
            Some(false)
        } else {
            None
        };
        if let Some(on) = flip {
            b.under_attack = on;
            if on {
                self.any_attack.fetch_add(1, Ordering::Relaxed);
            } else {
                self.any_attack.fetch_sub(1, Ordering::Relaxed);
            }
            if let Ok(mut ev) = self.events.lock()
                && ev.len() < 1024
            {
                ev.push(AttackEvent {
                    route,
                    on,
                    requests: b.requests,
                    baseline: b.base_rate,
                    error_ratio: ratio,
                });
            }
        }
    }

    /// Whether a route is in attack mode (with gateway scope: whether any route is).
    pub fn under_attack(&self, route: RouteId) -> bool {
        if self.any_attack.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.policy.attack.as_ref().map(|a| a.scope) {
            Some(AttackScope::Gateway) => true,
            Some(AttackScope::Route) => self
                .baselines
                .get(route)
                .and_then(|b| b.lock().ok().map(|b| b.under_attack))
                .unwrap_or(false),
            None => false,
        }
    }

    /// Routes in attack mode now.
    pub fn attacked_routes(&self) -> Vec<RouteId> {
        self.baselines
            .iter()
            .enumerate()
            .filter(|(_, b)| b.lock().is_ok_and(|b| b.under_attack))
            .map(|(i, _)| i)
            .collect()
    }

    /// Attack-mode changes since the last call.
    pub fn take_events(&self) -> Vec<AttackEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Progressive throttling: records an offence (or good behaviour) on the request's throttle
    /// record and returns the level to apply (0 = first step). Levels rise by one when the
    /// client offends again after serving its current step, and fall by one per `relax` of
    /// good behaviour.
    pub fn throttle(
        &self,
        trace: &Trace,
        now: Nanos,
        offence: bool,
        steps: &[Nanos],
        relax: Nanos,
    ) -> u8 {
        let Some((d, key)) = trace.throttle else {
            return 0;
        };
        let Some(Some(table)) = self.tables.get(d.index()) else {
            return 0;
        };
        let window = self.policy.window;
        table
            .with(
                key,
                || Features::fresh(now, window),
                |f| {
                    if f.level > 0 && f.last_offense > 0 && relax > 0 {
                        let calm = now.saturating_sub(f.last_offense.max(f.level_at)) / relax;
                        if calm > 0 {
                            f.level = f.level.saturating_sub(calm.min(255) as u8);
                            f.level_at = now;
                        }
                    }
                    if !offence {
                        return f.level;
                    }
                    let current = steps
                        .get(usize::from(f.level.saturating_sub(1)))
                        .copied()
                        .unwrap_or(0);
                    if f.level == 0 {
                        f.level = 1;
                        f.level_at = now;
                    } else if now >= f.level_at.saturating_add(current) {
                        f.level = f.level.saturating_add(1);
                        f.level_at = now;
                    }
                    f.last_offense = now;
                    f.level
                },
            )
            .unwrap_or(0)
    }

    /// The features of one identity, if tracked.
    pub fn report(
        &self,
        dim: Dim,
        key: u64,
        now: Nanos,
        names: &dyn Fn(usize) -> String,
    ) -> Option<FeatureReport> {
        let table = self.tables.get(dim.index())?.as_ref()?;
        let mut f = table.peek(key)?;
        let p = &self.policy;
        f.roll(now, p.window);
        f.decay(now, p.half_life);
        let requests = f.est(now, p.window, |c| c.requests);
        let share = |g: fn(&Counts) -> u16| {
            if requests > 0.0 {
                f.est(now, p.window, |c| u32::from(g(c))) / requests
            } else {
                0.0
            }
        };
        let (top, entropy) = f.route_share_and_entropy(now, p.window);
        let window_secs = (p.window as f32 / SECOND as f32).max(1.0);
        let idle = now.saturating_sub(f.last) as f32;
        Some(FeatureReport {
            requests,
            rate_short: f.short_rate * (-idle / p.short_window.max(1) as f32).exp()
                / (p.short_window as f32 / SECOND as f32).max(1.0),
            rate_long: requests / window_secs,
            regularity_cv: f.regularity(),
            mean_gap_secs: f.gap_mean,
            top_route_share: top,
            route_entropy: entropy,
            share_401: share(|c| c.s401),
            share_403: share(|c| c.s403),
            share_404: share(|c| c.s404),
            share_429: share(|c| c.s429),
            after_429: f.est(now, p.window, |c| u32::from(c.after_429)),
            distinct_user_agents: f.distinct(Distinct::UserAgents),
            distinct_ips: f.distinct(Distinct::Ips),
            distinct_asns: f.distinct(Distinct::Asns),
            distinct_countries: f.distinct(Distinct::Countries),
            distinct_keys: f.distinct(Distinct::Keys),
            distinct_accounts: f.distinct(Distinct::Accounts),
            logins: f.est(now, p.window, |c| u32::from(c.logins)),
            failed_logins: f.est(now, p.window, |c| u32::from(c.failed_logins)),
            distinct_usernames: f.distinct(Distinct::Usernames),
            id_run: u32::from(f.id_run),
            distinct_ids: f.distinct(Distinct::Ids),
            cache_busting_values: f.distinct(Distinct::Busting),
            remembered: f
                .memory
                .iter()
                .filter(|(t, _)| *t > 0)
                .map(|(t, a)| (names(usize::from(*t) - 1), a.round() as u8))
                .collect(),
            score: f
                .memory
                .iter()
                .filter(|(t, _)| *t > 0)
                .map(|(_, a)| a.round() as u32)
                .sum::<u32>()
                .min(100) as u8,
            throttle_level: f.level,
        })
    }

    /// Whether a group of keys (by behaviour signature) is counted; for tests.
    #[doc(hidden)]
    pub fn similar_groups(&self) -> usize {
        self.similar.cells.len()
    }

    /// Largest group of similar keys; for explain.
    pub fn group_count(&self, signature: u64) -> u32 {
        self.similar.peek(signature).map_or(0, |g| g.count())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use crate::model::principal::{Auth, KeyBudget, PrincipalKind};
    use http::{HeaderMap, HeaderValue, Method};

    const LOGIN: RouteId = 0;
    const ITEMS: RouteId = 1;
    const SEARCH: RouteId = 2;

    /// The tests' policy. Hashing is the cluster's fixed one, so that sketch collisions
    /// (and so estimates near a threshold) are the same on every run.
    fn policy() -> BehaviourPolicy {
        BehaviourPolicy {
            shared: true,
            stuffing: Some(StuffingSpec {
                route: LOGIN,
                failure_status: vec![401],
                username_field: "username".into(),
                min_failures: 10,
                min_usernames: 5,
                failure_share: 0.8,
                sources_per_username: 5,
                max_usernames: 1000,
                max_body: 16 * 1024,
            }),
            cache_keys: vec![CacheKeySpec {
                route: SEARCH,
                params: vec!["q".into()],
            }],
            flows: vec![FlowSpec {
                name: Arc::from("login-first"),
                route: ITEMS,
                after: LOGIN,
                within: 600 * SECOND,
                min_gap: SECOND,
                anonymous_only: true,
                weight: 25,
            }],
            ..BehaviourPolicy::default()
        }
    }

    fn key(id: &str, created_ms: Option<u64>) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            key_id: Some(Arc::from(id)),
            account: None,
            scopes: vec![],
            claims: vec![],
            rate: None,
            budget: KeyBudget::default(),
            budget_items: None,
            created_ms,
        }
    }

    struct Req<'a> {
        ip: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        ua: &'a str,
        principal: Option<&'a Principal>,
        username: Option<&'a [u8]>,
        ja4h: &'a str,
    }

    impl Default for Req<'_> {
        fn default() -> Self {
            Req {
                ip: "198.51.100.1",
                path: "/api/items/1",
                query: None,
                ua: "Mozilla/5.0",
                principal: None,
                username: None,
                ja4h: "ge11nn05enus_aaaaaaaaaaaa_000000000000_000000000000",
            }
        }
    }

    /// Sends one request at `now` and returns the signals it got.
    fn send(b: &Behaviour, r: &Req<'_>, route: RouteId, now: Nanos, status: u16) -> Vec<String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_str(r.ua).unwrap(),
        );
        let facts = RequestFacts {
            method: &Method::GET,
            path: r.path,
            query: r.query,
            headers: &headers,
            client_ip: r.ip.parse().unwrap(),
            peer_ip: r.ip.parse().unwrap(),
            now,
            unix_ms: 1_800_000_000_000 + now / 1_000_000,
            auth: r.principal.map_or(Auth::Anonymous, Auth::Principal),
            version: http::Version::HTTP_11,
            ja4h: Some(r.ja4h),
            ip_info: None,
            bot_verification: None,
            username: r.username,
        };
        let mut out = Vec::new();
        let created = r.principal.and_then(|p| p.created_ms);
        let trace = b.assess(&facts, route, r.username, created, &mut out);
        b.observe(&trace, status, SECOND, now);
        out.iter()
            .map(|e| match Sig::ALL.get(e.index) {
                Some(s) => s.name().to_owned(),
                None => format!("flow/{}", e.index - SIGS),
            })
            .collect()
    }

    fn has(signals: &[String], name: &str) -> bool {
        signals.iter().any(|s| s == name)
    }

    #[test]
    fn sketches_count_distinct_values_roughly() {
        let h = RandomState::new();
        for n in [1u32, 5, 10, 20, 40] {
            let mut bits = 0u64;
            for i in 0..n {
                sketch_add(&mut bits, hash_one(&h, 0, i));
            }
            let e = sketch_estimate(bits);
            assert!(
                e.abs_diff(n) <= (n / 3).max(2),
                "{n} distinct estimated as {e}"
            );
        }
        assert_eq!(sketch_estimate(0), 0);
    }

    #[test]
    fn a_sequential_id_walk_is_enumeration_and_a_reader_is_not() {
        let b = Behaviour::new(policy(), 3);
        let mut last = Vec::new();
        for i in 1..=25u64 {
            let path = format!("/api/items/{i}");
            let r = Req {
                ip: "198.51.100.7",
                path: &path,
                ..Req::default()
            };
            last = send(&b, &r, ITEMS, i * SECOND, 200);
            if i < 20 {
                assert!(!has(&last, "behaviour/enumeration"), "fired at {i}");
            }
        }
        assert!(has(&last, "behaviour/enumeration"), "{last:?}");

        // A human reading a handful of scattered items.
        for (n, id) in [17u64, 4, 912, 55, 3, 600, 71].iter().enumerate() {
            let path = format!("/api/items/{id}");
            let r = Req {
                ip: "203.0.113.8",
                path: &path,
                ..Req::default()
            };
            let s = send(&b, &r, ITEMS, (n as u64 + 1) * 7 * SECOND, 200);
            assert!(!has(&s, "behaviour/enumeration"));
        }
    }

    #[test]
    fn a_shuffled_dense_walk_is_enumeration_too() {
        let b = Behaviour::new(policy(), 3);
        let mut ids: Vec<u64> = (100..160).collect();
        // A fixed shuffle: steps are large, the ids dense.
        ids.sort_by_key(|i| (i * 37) % 61);
        let mut last = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let path = format!("/api/items/{id}");
            let r = Req {
                ip: "198.51.100.9",
                path: &path,
                ..Req::default()
            };
            last = send(&b, &r, ITEMS, n as u64 * SECOND, 200);
        }
        assert!(has(&last, "behaviour/enumeration"), "{last:?}");
    }

    #[test]
    fn errors_and_ignoring_retry_after_are_seen() {
        let b = Behaviour::new(policy(), 3);
        let r = Req {
            ip: "198.51.100.10",
            path: "/api/items/abc",
            ..Req::default()
        };
        let mut s = Vec::new();
        for i in 0..25 {
            s = send(&b, &r, ITEMS, i * SECOND, 404);
        }
        assert!(has(&s, "behaviour/errors"), "{s:?}");

        // A 429 with Retry-After 1 s, then three requests within that second.
        let r = Req {
            ip: "198.51.100.11",
            ..Req::default()
        };
        let t0 = 100 * SECOND;
        send(&b, &r, ITEMS, t0, 429);
        let mut s = Vec::new();
        for i in 1..=3 {
            s = send(&b, &r, ITEMS, t0 + i * 100_000_000, 429);
        }
        assert!(has(&s, "behaviour/ignores_retry_after"), "{s:?}");
        // A client that waits out its Retry-After is not flagged.
        let r = Req {
            ip: "198.51.100.12",
            ..Req::default()
        };
        for i in 0..5 {
            let s = send(&b, &r, ITEMS, t0 + i * 2 * SECOND, 429);
            assert!(!has(&s, "behaviour/ignores_retry_after"));
        }
    }

    #[test]
    fn remembered_signals_decay_with_the_half_life() {
        let b = Behaviour::new(policy(), 3);
        let r = Req {
            ip: "198.51.100.13",
            ..Req::default()
        };
        let t0 = SECOND;
        send(&b, &r, ITEMS, t0, 429);
        for i in 1..=3 {
            send(&b, &r, ITEMS, t0 + i * 10_000_000, 429);
        }
        let key = b.ip_key(Dim::Ip, "198.51.100.13".parse().unwrap());
        let names = |i: usize| Sig::ALL[i].name().to_owned();
        let w = |at: Nanos| {
            b.report(Dim::Ip, key, at, &names)
                .unwrap()
                .remembered
                .iter()
                .find(|(n, _)| n == "behaviour/ignores_retry_after")
                .map_or(0, |x| x.1)
        };
        assert_eq!(w(2 * SECOND), 50);
        let half = w(2 * SECOND + b.policy.half_life);
        assert!((24..=26).contains(&half), "{half}");
        assert_eq!(w(2 * SECOND + 10 * b.policy.half_life), 0);
    }

    #[test]
    fn shared_sketches_merge_what_each_gateway_saw() {
        let a = Behaviour::new(policy(), 3);
        let b = Behaviour::new(policy(), 3);
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_k{i:011}"), None))
            .collect();
        // One address, six keys at each gateway: under the threshold (10) at each.
        for (i, k) in keys.iter().enumerate() {
            let r = Req {
                principal: Some(k),
                ..Req::default()
            };
            let g = if i % 2 == 0 { &a } else { &b };
            let s = send(g, &r, ITEMS, i as u64 * SECOND, 200);
            assert!(!has(&s, "collective/keys_per_ip"), "{s:?}");
        }
        let from_a = a.take_shared();
        let from_b = b.take_shared();
        // Every touched record is queued once, and only once.
        assert!(!from_a.is_empty());
        assert!(a.take_shared().is_empty());
        // Records are keyed alike on both gateways, so each takes the other's sketches.
        let ip_key = a.ip_key(Dim::Ip, "198.51.100.1".parse().unwrap());
        assert_eq!(ip_key, b.ip_key(Dim::Ip, "198.51.100.1".parse().unwrap()));
        assert!(from_b.iter().any(|r| r.key == ip_key));
        a.merge_shared(&from_b);
        b.merge_shared(&from_a);
        for g in [&a, &b] {
            let r = Req {
                principal: keys.first(),
                ..Req::default()
            };
            let s = send(g, &r, ITEMS, 20 * SECOND, 200);
            assert!(has(&s, "collective/keys_per_ip"), "{s:?}");
        }
        // Without cluster mode, records are keyed per process.
        let local = BehaviourPolicy {
            shared: false,
            ..policy()
        };
        let c = Behaviour::new(local.clone(), 3);
        let d = Behaviour::new(local, 3);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert_ne!(c.ip_key(Dim::Ip, ip), d.ip_key(Dim::Ip, ip));
    }

    #[test]
    fn a_key_used_from_many_addresses_agents_and_keys_per_prefix() {
        let b = Behaviour::new(policy(), 3);
        let k = key("pal_aaaaaaaaaaaa", None);
        let mut s = Vec::new();
        for i in 0..25 {
            let ip = format!("203.0.{i}.9");
            let ua = format!("agent/{}", i % 6);
            let r = Req {
                ip: &ip,
                ua: &ua,
                principal: Some(&k),
                ..Req::default()
            };
            s = send(&b, &r, ITEMS, i * SECOND, 200);
        }
        assert!(has(&s, "behaviour/many_ips"), "{s:?}");
        assert!(has(&s, "behaviour/many_user_agents"), "{s:?}");

        // Twelve keys from one /24: every one of them carries the group's signal.
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_k{i:011}"), None))
            .collect();
        let mut s = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let ip = format!("192.0.2.{}", i + 1);
            let r = Req {
                ip: &ip,
                principal: Some(k),
                ..Req::default()
            };
            s = send(&b, &r, ITEMS, 30 * SECOND + i as u64 * SECOND, 200);
        }
        assert!(has(&s, "collective/keys_per_prefix"), "{s:?}");
        assert!(!has(&s, "collective/keys_per_ip"), "{s:?}");
        let r = Req {
            ip: "192.0.2.200",
            principal: keys.first(),
            ..Req::default()
        };
        let s = send(&b, &r, ITEMS, 60 * SECOND, 200);
        assert!(has(&s, "collective/keys_per_prefix"), "{s:?}");
    }

    #[test]
    fn stuffing_from_many_addresses_is_caught_by_fingerprint_and_target() {
        let b = Behaviour::new(policy(), 3);
        let mut s = Vec::new();
        for i in 0..12u64 {
            let ip = format!("10.{i}.0.1");
            let user = format!("user{i}@example.com");
            let r = Req {
                ip: &ip,
                path: "/api/login",
                username: Some(user.as_bytes()),
                ja4h: "po11nn03enus_bbbbbbbbbbbb_000000000000_000000000000",
                ..Req::default()
            };
            s = send(&b, &r, LOGIN, i * SECOND, 401);
        }
        assert!(has(&s, "stuffing/source"), "{s:?}");

        // One username from many addresses.
        let mut s = Vec::new();
        for i in 0..7u64 {
            let ip = format!("10.99.{i}.1");
            let ja4h = format!("po11nn03enus_{i:012}_000000000000_000000000000");
            let r = Req {
                ip: &ip,
                path: "/api/login",
                username: Some(b"ceo@example.com"),
                ja4h: &ja4h,
                ..Req::default()
            };
            s = send(&b, &r, LOGIN, 100 * SECOND + i * SECOND, 401);
        }
        assert!(has(&s, "stuffing/target"), "{s:?}");
        assert!(!has(&s, "stuffing/source"), "{s:?}");

        // A person mistyping their password twice, then getting in.
        for (i, status) in [401u16, 401, 200].iter().enumerate() {
            let r = Req {
                ip: "198.51.100.50",
                path: "/api/login",
                username: Some(b"me@example.com"),
                ja4h: "po11cn05enus_cccccccccccc_000000000000_000000000000",
                ..Req::default()
            };
            let s = send(&b, &r, LOGIN, 200 * SECOND + i as u64 * 5 * SECOND, *status);
            assert!(s.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn cache_busting_counts_only_non_resource_parameters() {
        let b = Behaviour::new(policy(), 3);
        // Different searches are different resources.
        for i in 0..30u64 {
            let q = format!("q=term{i}");
            let r = Req {
                ip: "198.51.100.60",
                path: "/api/search",
                query: Some(&q),
                ..Req::default()
            };
            let s = send(&b, &r, SEARCH, i * 3 * SECOND, 200);
            assert!(!has(&s, "behaviour/cache_busting"), "{s:?}");
        }
        let mut s = Vec::new();
        for i in 0..30u64 {
            let q = format!("q=same&_={i}");
            let r = Req {
                ip: "198.51.100.61",
                path: "/api/search",
                query: Some(&q),
                ..Req::default()
            };
            s = send(&b, &r, SEARCH, i * SECOND, 200);
        }
        assert!(has(&s, "behaviour/cache_busting"), "{s:?}");
    }

    #[test]
    fn flows_need_the_earlier_step_in_time() {
        let b = Behaviour::new(policy(), 3);
        let r = Req {
            ip: "198.51.100.70",
            ..Req::default()
        };
        // Straight to the data: a violation.
        let s = send(&b, &r, ITEMS, SECOND, 200);
        assert!(has(&s, "flow/0"), "{s:?}");
        // A failed login does not count.
        let login = Req {
            ip: "198.51.100.70",
            path: "/api/login",
            ..Req::default()
        };
        send(&b, &login, LOGIN, 2 * SECOND, 401);
        assert!(has(&send(&b, &r, ITEMS, 5 * SECOND, 200), "flow/0"));
        // A successful one does, once the minimum gap has passed, until `within` runs out.
        send(&b, &login, LOGIN, 10 * SECOND, 200);
        assert!(has(
            &send(&b, &r, ITEMS, 10 * SECOND + 100_000_000, 200),
            "flow/0"
        ));
        assert!(!has(&send(&b, &r, ITEMS, 14 * SECOND, 200), "flow/0"));
        assert!(has(&send(&b, &r, ITEMS, 700 * SECOND, 200), "flow/0"));
        // Keyed callers are exempt from this flow.
        let k = key("pal_flowflowflow", None);
        let keyed = Req {
            ip: "198.51.100.71",
            principal: Some(&k),
            ..Req::default()
        };
        assert!(!has(&send(&b, &keyed, ITEMS, SECOND, 200), "flow/0"));
    }

    #[test]
    fn regular_traffic_and_similar_keys_and_cohorts() {
        let b = Behaviour::new(policy(), 3);
        // One client every 500 ms on the dot.
        let r = Req {
            ip: "198.51.100.80",
            ..Req::default()
        };
        let mut s = Vec::new();
        for i in 0..30 {
            s = send(&b, &r, SEARCH, i * SECOND / 2, 200);
        }
        assert!(has(&s, "behaviour/regular"), "{s:?}");
        // A person: bursty think times.
        let gaps = [
            1u64, 7, 2, 30, 1, 1, 12, 4, 60, 2, 9, 1, 25, 3, 2, 40, 1, 6, 2, 15, 1, 8,
        ];
        let mut t = 0;
        for g in gaps {
            t += g * SECOND;
            let r = Req {
                ip: "198.51.100.81",
                ..Req::default()
            };
            assert!(!has(&send(&b, &r, SEARCH, t, 200), "behaviour/regular"));
        }

        // Twelve keys, created in the same hour, behaving the same from different networks.
        let created = 1_800_000_000_000u64;
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_s{i:011}"), Some(created)))
            .collect();
        let mut last = Vec::new();
        for round in 0..25u64 {
            for (i, k) in keys.iter().enumerate() {
                let ip = format!("100.{i}.{round}.1");
                let r = Req {
                    ip: &ip,
                    principal: Some(k),
                    ..Req::default()
                };
                last = send(
                    &b,
                    &r,
                    ITEMS,
                    10 * SECOND + round * 2 * SECOND + i as u64,
                    200,
                );
            }
        }
        assert!(has(&last, "collective/similar_keys"), "{last:?}");
        assert!(has(&last, "collective/key_cohort"), "{last:?}");
    }

    #[test]
    fn a_sustained_surge_switches_attack_mode_on_and_calm_switches_it_off() {
        let b = Behaviour::new(policy(), 3);
        let r = Req::default();
        let bucket = 10 * SECOND;
        let mut t = 0;
        // Ten buckets of 20 requests: the baseline.
        for _ in 0..10 {
            for i in 0..20 {
                send(&b, &r, ITEMS, t + i * (bucket / 20), 200);
            }
            t += bucket;
        }
        assert!(!b.under_attack(ITEMS));
        // Four buckets of 200.
        for _ in 0..4 {
            for i in 0..200 {
                send(&b, &r, ITEMS, t + i * (bucket / 200), 200);
            }
            t += bucket;
        }
        send(&b, &r, ITEMS, t, 200);
        assert!(b.under_attack(ITEMS));
        assert!(!b.under_attack(SEARCH));
        let ev = b.take_events();
        assert_eq!(ev.len(), 1);
        assert!(ev[0].on && ev[0].route == ITEMS);
        // Back to normal for a minute and more.
        for _ in 0..8 {
            for i in 0..20 {
                send(&b, &r, ITEMS, t + i * (bucket / 20), 200);
            }
            t += bucket;
        }
        send(&b, &r, ITEMS, t, 200);
        assert!(!b.under_attack(ITEMS));
        assert!(!b.take_events()[0].on);
    }

    #[test]
    fn throttling_escalates_after_each_served_step_and_relaxes() {
        let b = Behaviour::new(policy(), 3);
        let r = Req::default();
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::USER_AGENT, HeaderValue::from_static("x"));
        let facts = RequestFacts {
            method: &Method::GET,
            path: r.path,
            query: None,
            headers: &headers,
            client_ip: r.ip.parse().unwrap(),
            peer_ip: r.ip.parse().unwrap(),
            now: SECOND,
            unix_ms: 0,
            auth: Auth::Anonymous,
            version: http::Version::HTTP_11,
            ja4h: None,
            ip_info: None,
            bot_verification: None,
            username: None,
        };
        let trace = b.assess(&facts, ITEMS, None, None, &mut out);
        assert_eq!(trace.throttle_identity(), Some(Dim::Ip));
        let steps = [SECOND, 5 * SECOND, 30 * SECOND];
        let relax = 120 * SECOND;
        let at = |s: u64| s * SECOND;
        assert_eq!(b.throttle(&trace, at(1), true, &steps, relax), 1);
        // Offending again within the step does not escalate.
        assert_eq!(
            b.throttle(&trace, at(1) + 500_000_000, true, &steps, relax),
            1
        );
        assert_eq!(b.throttle(&trace, at(2), true, &steps, relax), 2);
        assert_eq!(b.throttle(&trace, at(7), true, &steps, relax), 3);
        assert_eq!(b.throttle(&trace, at(37), true, &steps, relax), 4);
        // Two relax periods of good behaviour take two steps off.
        assert_eq!(b.throttle(&trace, at(37 + 240), false, &steps, relax), 2);
    }

    #[test]
    fn tables_stay_within_their_cap_under_a_spray() {
        let p = BehaviourPolicy {
            max_entries: 1000,
            ..policy()
        };
        let b = Behaviour::new(p, 3);
        for i in 0..20_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            let r = Req {
                ip: &ip,
                ..Req::default()
            };
            send(&b, &r, ITEMS, u64::from(i) * 1000, 200);
        }
        for t in b.tables.iter().flatten() {
            assert!(t.cells.len() as u64 <= t.cells.capacity());
        }
        assert!(b.evictions() > 0);
        assert!(b.len() <= b.capacity() as usize);
    }

    #[test]
    fn ids_come_from_the_last_segment_or_named_parameters() {
        let p = ["id".to_owned()];
        assert_eq!(request_id("/api/items/42", None, &p), Some(42));
        assert_eq!(request_id("/api/items/x42", None, &p), None);
        assert_eq!(request_id("/api/items", Some("a=1&id=7"), &p), Some(7));
        assert_eq!(request_id("/api/items", Some("page=7"), &p), None);
        assert_eq!(request_id("/a/99999999999999999999", None, &p), None);
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; sid=xyz"),
        );
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "s"), None);
    }
}
