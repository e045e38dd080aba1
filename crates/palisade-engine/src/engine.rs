//! The engine: a compiled [`Policy`] plus the bounded state its detectors keep, built once per
//! policy (state carried over from the previous engine where its meaning is unchanged).
//!
//! What it does lives beside it: [`crate::pipeline`] decides a request (the detectors of
//! [`crate::detect`] in order), [`crate::observe`] learns from the answer, [`crate::explain`]
//! tells an operator why. None of it blocks, reads a clock, or allocates more than a few small
//! vectors per request.

use std::sync::Arc;

pub use crate::model::shared::{SharedAdjust, SharedCheck};

use crate::behaviour::{Behaviour, Sig};
use crate::clock::Nanos;
use crate::model::decision::Decision;
use crate::model::header_item::HeaderItem;
use crate::policy::Policy;
use crate::ratelimit_headers::{HeaderEntry, RateLimitHeaders, render_entries};
use crate::request::route::RouteId;
use crate::state::blocks::BlockTable;
use crate::state::limiter::{LimitTable, Unit, ceil_secs};
use crate::state::quota_ledger::{QuotaItems, QuotaLedger, QuotaSettlement};
use crate::state::ua_cache::UaCache;
use palisade_intel::Category;
use palisade_intel::headers::Inconsistency;

/// The index a key's own rate limit has in [`Decision::limits`].
pub const KEY_LIMIT_INDEX: usize = usize::MAX;

/// The ledger name of the budgets a key carries in its record.
pub const KEY_BUDGET_QUOTA: &str = "key-daily";

/// The engine itself failed (not: the request was refused). The gateway then applies its
/// fail-open or fail-closed policy.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The policy has no route at all (a compile bug).
    #[error("policy has no default route")]
    NoRoute,
}

/// What the upstream said about a request, for charging its real cost.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts {
    /// Response status.
    pub status: u16,
    /// Cost reported in the route's cost header, if any.
    pub reported_cost: Option<f64>,
    /// Time the response arrived.
    pub now: Nanos,
}

/// A limit's state for one identity, for "why was this client limited?".
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitStateReport {
    /// The limit.
    pub limit: String,
    /// The limit's key, e.g. `ip` or `ip/24+route`.
    pub key: String,
    /// Whether the identity is tracked by this limit now.
    pub tracked: bool,
    /// Units left.
    pub remaining: u64,
    /// Quota per window.
    pub quota: u64,
    /// Window in seconds.
    pub window_secs: u64,
    /// Seconds until fully replenished / window end.
    pub reset_secs: u64,
    /// Why the state could not be shown, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Everything the engine can tell about one identity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityReport {
    /// The dimension asked about.
    pub dimension: String,
    /// The value, normalised (e.g. a masked network).
    pub value: String,
    /// Whether the static allow list matches (ip dimensions only).
    pub allowlisted: bool,
    /// Whether the static deny list matches (ip dimensions only).
    pub denylisted: bool,
    /// Limiter states.
    pub limits: Vec<LimitStateReport>,
    /// Daily quota usage (api_key and account dimensions).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaReport>,
    /// Behaviour features, remembered signals and throttling level, when tracked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<crate::behaviour::FeatureReport>,
    /// Whether behaviour is tracked for this dimension at all.
    pub behaviour_tracked: bool,
}

/// A daily budget's usage, for the usage endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    /// The quota (`key-daily` for the key's own budgets).
    pub quota: String,
    /// `api_key` or `account`.
    pub per: &'static str,
    /// Requests settled today.
    pub requests: u64,
    /// Requests allowed per day.
    pub requests_per_day: Option<u64>,
    /// Spend settled today (micro-dollars).
    pub spend_micros: u64,
    /// Spend allowed per day (micro-dollars).
    pub spend_per_day_micros: Option<u64>,
}

/// A daily quota's usage for one identity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaReport {
    /// The quota.
    pub quota: String,
    /// Requests settled today.
    pub requests: u64,
    /// Requests allowed per day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Spend settled today, in dollars.
    pub spend_usd: f64,
    /// Spend allowed per day, in dollars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_per_day_usd: Option<f64>,
}

/// Why an identity look-up failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The value does not fit the dimension.
    #[error("`{0}` is not a valid value for dimension `{1}`")]
    BadValue(String, String),
}

/// A policy and its state.
#[derive(Debug)]
pub struct Engine {
    pub(crate) policy: Policy,
    pub(crate) tables: Vec<Arc<LimitTable>>,
    pub(crate) signal_names: Vec<Arc<str>>,
    pub(crate) header_items: Vec<HeaderItem>,
    pub(crate) key_table: Arc<LimitTable>,
    pub(crate) failure_table: Arc<LimitTable>,
    pub(crate) ledger: Arc<QuotaLedger>,
    pub(crate) quota_rules: Vec<Arc<str>>,
    pub(crate) quota_items: Vec<Arc<QuotaItems>>,
    pub(crate) rule_key_limit: Arc<str>,
    pub(crate) rule_key_budget: Arc<str>,
    pub(crate) key_budget_name: Arc<str>,
    pub(crate) rule_guessing: Arc<str>,
    pub(crate) rule_spoofed: Arc<str>,
    pub(crate) rule_unverified: Arc<str>,
    pub(crate) ua_cache: Arc<UaCache>,
    /// Which verifiable bot (index into the policy's `verified`) a user agent claims to be, per
    /// user agent seen (this engine's list: not carried over a reload).
    pub(crate) claims: quick_cache::sync::Cache<u64, Option<u16>>,
    claims_hasher: std::hash::RandomState,
    pub(crate) blocks: Arc<BlockTable>,
    pub(crate) honeypot_rules: Vec<Arc<str>>,
    pub(crate) bot_rules: Vec<Arc<str>>,
    pub(crate) header_rules: Vec<Arc<str>>,
    /// `probe/<class>`, in `Class::ALL` order.
    pub(crate) probe_rules: Vec<Arc<str>>,
    pub(crate) intel_rules: Vec<Arc<str>>,
    pub(crate) rule_scope: Arc<str>,
    pub(crate) auth_rules: [Arc<str>; 8],
    pub(crate) rule_deny: Arc<str>,
    pub(crate) rule_allow_list: Arc<str>,
    pub(crate) rule_default: Arc<str>,
    pub(crate) rule_score: [Arc<str>; 3],
    pub(crate) rule_delay: Arc<str>,
    pub(crate) rule_throttle: Arc<str>,
    pub(crate) rule_cleared: Arc<str>,
    pub(crate) behaviour: Option<Arc<Behaviour>>,
    pub(crate) behaviour_names: Vec<Arc<str>>,
    /// Whether the policy reads a request's JA4H (a limit keys on it, behaviour detection, a
    /// honeypot flags it). Blocks, which may name one at any time, are checked per request.
    uses_ja4h: bool,
    /// Whether a limit, behaviour or a honeypot reads the header fingerprint.
    uses_hfp: bool,
    pub(crate) rule_names: Vec<Arc<str>>,
    /// Per rule, the routes it can match on (`None`: any): other routes skip it.
    pub(crate) rule_routes: Vec<Option<Vec<RouteId>>>,
    /// The limits' key dimensions the decision log shows beyond the fixed ones, with their
    /// names, once each.
    pub(crate) log_parts: Vec<(Arc<str>, crate::model::identity::KeyPart)>,
    pub(crate) rule_errors: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// Builds an engine. Limits whose counting is unchanged from `previous` keep their state, so
    /// a reload does not hand every client a fresh budget.
    pub fn new(policy: Policy, previous: Option<&Engine>) -> Self {
        let tables = policy
            .limits
            .iter()
            .map(|spec| {
                previous
                    .and_then(|p| {
                        p.policy
                            .limits
                            .iter()
                            .position(|old| old.state_compatible(spec))
                            .and_then(|i| p.tables.get(i).cloned())
                    })
                    .unwrap_or_else(|| Arc::new(LimitTable::new(spec.max_entries)))
            })
            .collect();
        let signal_names = policy
            .limits
            .iter()
            .map(|l| Arc::from(format!("limit/{}", l.name)))
            .collect();
        let header_items = policy
            .limits
            .iter()
            .map(|l| HeaderItem::for_limit(&l.name, l.quota, l.window_secs, l.unit == Unit::Cost))
            .collect();
        let key_table = previous
            .map(|p| p.key_table.clone())
            .unwrap_or_else(|| Arc::new(LimitTable::new(100_000)));
        let failure_table = previous
            .filter(|p| p.policy.auth == policy.auth)
            .map(|p| p.failure_table.clone())
            .unwrap_or_else(|| Arc::new(LimitTable::new(policy.auth.max_entries)));
        let cache_entries = policy.bots.as_ref().map_or(16, |b| b.cache_entries);
        let ua_cache = previous
            .filter(|p| {
                p.policy.bots.as_ref().map(|b| b.cache_entries) == Some(cache_entries)
                    && p.policy
                        .bots
                        .as_ref()
                        .zip(policy.bots.as_ref())
                        .is_some_and(|(a, b)| Arc::ptr_eq(&a.catalog, &b.catalog))
            })
            .map(|p| p.ua_cache.clone())
            .unwrap_or_else(|| Arc::new(UaCache::new(cache_entries)));
        let blocks = previous
            .filter(|p| p.policy.max_blocks == policy.max_blocks)
            .map(|p| p.blocks.clone())
            .unwrap_or_else(|| Arc::new(BlockTable::new(policy.max_blocks)));
        let honeypot_rules = policy
            .honeypots
            .iter()
            .map(|h| Arc::from(format!("honeypot/{}", h.name)))
            .collect();
        let bot_rules = Category::ALL
            .iter()
            .map(|c| Arc::from(format!("bot/{c}")))
            .collect();
        let ledger = previous
            .map(|p| p.ledger.clone())
            .unwrap_or_else(|| Arc::new(QuotaLedger::new()));
        let quota_rules = policy
            .quotas
            .iter()
            .map(|q| Arc::from(format!("quota/{}", q.name)))
            .collect();
        let quota_items = policy
            .quotas
            .iter()
            .map(|q| {
                Arc::new(QuotaItems::new(
                    &q.name,
                    q.requests_per_day,
                    q.spend_per_day_micros,
                ))
            })
            .collect();
        let routes = policy.route_specs.len();
        let behaviour = policy.behaviour.as_ref().map(|b| {
            previous
                .and_then(|p| p.behaviour.clone())
                .filter(|old| old.policy() == b && old.routes() == routes)
                .unwrap_or_else(|| Arc::new(Behaviour::new(b.clone(), routes)))
        });
        let behaviour_names = policy
            .behaviour
            .iter()
            .flat_map(|b| {
                Sig::ALL.iter().map(|s| Arc::from(s.name())).chain(
                    b.flows
                        .iter()
                        .map(|f| Arc::from(format!("flow/{}", f.name))),
                )
            })
            .collect();
        let rule_names = policy
            .rules
            .iter()
            .flat_map(|r| {
                r.rules
                    .iter()
                    .map(|r| Arc::from(format!("rule/{}", r.name)))
            })
            .collect();
        let rule_routes = policy
            .rules
            .iter()
            .flat_map(|r| {
                r.rules.iter().map(|r| {
                    crate::policy::rules::route_scope(&r.program).map(|names| {
                        names
                            .iter()
                            .filter_map(|n| policy.route_id(n))
                            .collect::<Vec<RouteId>>()
                    })
                })
            })
            .collect();
        let mut log_parts: Vec<(Arc<str>, crate::model::identity::KeyPart)> = Vec::new();
        for part in policy.limits.iter().flat_map(|l| &l.key) {
            use crate::model::identity::KeyPart;
            if matches!(
                part,
                KeyPart::Ip
                    | KeyPart::Route
                    | KeyPart::Method
                    | KeyPart::ApiKey
                    | KeyPart::Account
                    | KeyPart::Jwt(_)
                    | KeyPart::Ja4h
                    | KeyPart::Hfp
                    | KeyPart::Ja4
                    | KeyPart::H2fp
                    | KeyPart::Ja3
                    | KeyPart::Mtls
                    | KeyPart::Asn
                    | KeyPart::Country
            ) {
                continue;
            }
            let name: Arc<str> = Arc::from(part.to_string());
            if !log_parts.iter().any(|(n, _)| *n == name) {
                log_parts.push((name, part.clone()));
            }
        }
        Self {
            rule_names,
            rule_routes,
            log_parts,
            rule_errors: std::sync::atomic::AtomicU64::new(0),
            behaviour,
            behaviour_names,
            uses_ja4h: policy
                .limits
                .iter()
                .any(|l| l.key.contains(&crate::model::identity::KeyPart::Ja4h))
                || policy
                    .behaviour
                    .as_ref()
                    .is_some_and(|b| b.track.contains(&crate::behaviour::Dim::Ja4h))
                || policy.honeypots.iter().any(|h| h.flag.contains(&"ja4h")),
            uses_hfp: policy
                .limits
                .iter()
                .any(|l| l.key.contains(&crate::model::identity::KeyPart::Hfp))
                || policy
                    .behaviour
                    .as_ref()
                    .is_some_and(|b| b.track.contains(&crate::behaviour::Dim::Hfp))
                || policy.honeypots.iter().any(|h| h.flag.contains(&"hfp")),
            rule_delay: Arc::from("score/delay"),
            rule_throttle: Arc::from("score/throttle"),
            rule_cleared: Arc::from("challenge/cleared"),
            policy,
            tables,
            signal_names,
            header_items,
            key_table,
            failure_table,
            ledger,
            quota_rules,
            quota_items,
            rule_key_limit: Arc::from("limit/api-key"),
            rule_key_budget: Arc::from(format!("quota/{KEY_BUDGET_QUOTA}")),
            key_budget_name: Arc::from(KEY_BUDGET_QUOTA),
            rule_guessing: Arc::from("auth/guessing"),
            rule_spoofed: Arc::from("bot/spoofed"),
            rule_unverified: Arc::from("bot/unverified"),
            ua_cache,
            claims: quick_cache::sync::Cache::new(cache_entries.max(16)),
            claims_hasher: std::hash::RandomState::new(),
            blocks,
            honeypot_rules,
            bot_rules,
            intel_rules: ["hosting", "vpn", "mobile", "residential", "tor"]
                .iter()
                .map(|n| Arc::from(format!("intel/{n}")))
                .collect(),
            probe_rules: palisade_intel::probes::Class::ALL
                .iter()
                .map(|c| Arc::from(c.signal()))
                .collect(),
            header_rules: Inconsistency::ALL
                .iter()
                .map(|i| Arc::from(format!("headers/{}", i.name())))
                .collect(),
            rule_scope: Arc::from("auth/insufficient_scope"),
            auth_rules: [
                Arc::from("auth/missing_api_key"),
                Arc::from("auth/missing_token"),
                Arc::from("auth/missing_credentials"),
                Arc::from("auth/invalid_api_key"),
                Arc::from("auth/expired_api_key"),
                Arc::from("auth/revoked_api_key"),
                Arc::from("auth/invalid_token"),
                Arc::from("auth/invalid_signature"),
            ],
            rule_deny: Arc::from("list/deny"),
            rule_allow_list: Arc::from("list/allow"),
            rule_default: Arc::from(crate::model::decision::DEFAULT_ALLOW_RULE),
            rule_score: [
                Arc::from("score/tag"),
                Arc::from("score/challenge"),
                Arc::from("score/block"),
            ],
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// RateLimit header values for a decision; `None` when no advertised limit applied.
    /// `RateLimit-Policy` is left empty unless `with_policy` (a caller that kept the value for
    /// [`Engine::policy_set`] does not need it again).
    pub fn rate_limit_headers(
        &self,
        decision: &Decision,
        with_policy: bool,
    ) -> Option<RateLimitHeaders> {
        let limits = decision
            .limits
            .iter()
            .filter(|o| o.headers)
            .filter_map(|o| {
                let item = if o.index == KEY_LIMIT_INDEX {
                    &*decision.key_limit.as_ref()?.0
                } else {
                    self.header_items.get(o.index)?
                };
                Some(HeaderEntry {
                    item,
                    quota: o.quota,
                    remaining: o.verdict.remaining,
                    reset_secs: ceil_secs(o.verdict.reset),
                })
            });
        let quotas = decision.quotas.iter().flat_map(|h| {
            let requests = h.items.requests.as_deref().and_then(|item| {
                Some(HeaderEntry {
                    item,
                    quota: h.requests_per_day?,
                    remaining: h.requests_remaining?,
                    reset_secs: h.reset_secs,
                })
            });
            let spend = h.items.spend.as_deref().and_then(|item| {
                Some(HeaderEntry {
                    item,
                    quota: h.spend_per_day?,
                    remaining: h.spend_remaining?,
                    reset_secs: h.reset_secs,
                })
            });
            requests.into_iter().chain(spend)
        });
        let exhausted = decision
            .exhausted
            .as_ref()
            .map(|(item, quota, reset)| HeaderEntry {
                item,
                quota: *quota,
                remaining: 0,
                reset_secs: *reset,
            });
        render_entries(limits.chain(quotas).chain(exhausted), with_policy)
    }

    /// The configured limits a decision advertises, as a bit set of their indices; `None` when
    /// it advertises anything else (a key's limit, a quota, an exhausted budget) or an index past
    /// 63. The same set always renders the same `RateLimit-Policy`, so a caller may keep the
    /// rendered value per set.
    pub fn policy_set(&self, decision: &Decision) -> Option<u64> {
        if !decision.quotas.is_empty() || decision.exhausted.is_some() {
            return None;
        }
        let mut set = 0u64;
        for o in decision.limits.iter().filter(|o| o.headers) {
            if o.index >= 64 {
                return None;
            }
            set |= 1 << o.index;
        }
        Some(set)
    }

    /// The ledger daily quotas are counted in (shared across reloads).
    pub fn quota_ledger(&self) -> &Arc<QuotaLedger> {
        &self.ledger
    }

    /// A settlement for the quota reservations a decision holds: settle it when the upstream
    /// answers; dropping it unsettled gives the reservations back.
    pub fn quota_settlement(&self, decision: &Decision) -> QuotaSettlement {
        QuotaSettlement::new(self.ledger.clone(), decision.quotas.clone())
    }

    /// The route a request matches.
    pub fn route_of(&self, method: &http::Method, path: &str) -> RouteId {
        self.policy.routes.route_for(method, path)
    }

    /// The state table of each limit, in policy order.
    pub fn tables(&self) -> &[Arc<LimitTable>] {
        &self.tables
    }

    /// Whether deciding a request may read its JA4H fingerprint: the gateway computes it only
    /// then (or when the decision is logged).
    pub fn wants_ja4h(&self) -> bool {
        self.uses_ja4h || !self.blocks.is_empty()
    }

    /// Whether deciding a request may read its header fingerprint (computed only then, or when
    /// the decision is logged).
    pub fn wants_hfp(&self) -> bool {
        self.uses_hfp || !self.blocks.is_empty()
    }

    /// The index of the honeypot whose decoy key this is, if any.
    pub fn decoy_key(&self, raw: &str) -> Option<usize> {
        self.policy
            .honeypots
            .iter()
            .position(|h| h.decoy_keys.iter().any(|k| k == raw))
    }

    /// The block table (shared with the admin API and the store).
    pub fn blocks(&self) -> &Arc<BlockTable> {
        &self.blocks
    }

    /// Which of the policy's verifiable bots (`[bots]` verified, by index) `ua` claims to be,
    /// remembered per user agent: a request pays the claim patterns once per distinct agent.
    pub fn claimed_bot(&self, ua: &str) -> Option<usize> {
        let bots = self.policy.bots.as_ref()?;
        if bots.verified.is_empty() {
            return None;
        }
        let key = std::hash::BuildHasher::hash_one(&self.claims_hasher, ua.as_bytes());
        if let Some(c) = self.claims.get(&key) {
            return c.map(usize::from);
        }
        let found = bots.verified.iter().position(|v| v.claimed_by(ua));
        self.claims
            .insert(key, found.and_then(|i| u16::try_from(i).ok()));
        found
    }

    /// The user-agent classification cache (its size is a metric).
    pub fn ua_cache(&self) -> &UaCache {
        &self.ua_cache
    }

    /// Rule evaluations that failed (a missing key, a type mismatch), counted as no match.
    pub fn rule_errors(&self) -> u64 {
        self.rule_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The behaviour state, when `[behaviour]` is on.
    pub fn behaviour(&self) -> Option<&Arc<Behaviour>> {
        self.behaviour.as_ref()
    }

    /// A behaviour signal's name by its index in [`crate::behaviour::Emitted`].
    pub fn behaviour_signal_name(&self, index: usize) -> String {
        self.behaviour_names
            .get(index)
            .map_or_else(|| format!("behaviour/{index}"), |n| n.to_string())
    }
}
