//! The engine: a compiled [`Policy`] plus the bounded state its limits keep.
//!
//! [`Engine::evaluate`] runs the pipeline for one request (route -> lists -> limits -> signals
//! -> score -> action) and returns a [`Decision`]; [`Engine::observe_response`] charges what the
//! upstream reported the request cost. Neither blocks, allocates more than a few small vectors,
//! or reads a clock.

use std::net::IpAddr;
use std::sync::Arc;

use crate::model::code::ClientCode;

use crate::behaviour::{Behaviour, Emitted, Sig};
use crate::clock::{Nanos, SECOND};
use crate::detect::bots::{BotAction, UaCache};
use crate::model::decision::{Action, Decision, LimitOutcome, Signal};
use crate::model::facts::RequestFacts;
use crate::model::identity::{
    KeyPart, KeyValue, display_value, key_hash, key_hash_of_values, mask,
};
use crate::model::principal::{Auth, AuthFailure, AuthRequirement, Principal, PrincipalKind};
use crate::policy::{Mode, Policy, RouteSpec};
use crate::ratelimit_headers::{HeaderEntry, HeaderItem, RateLimitHeaders, render_entries};
use crate::request::route::RouteId;
use crate::state::blocks::{BlockEffect, BlockTable, block_key};
use crate::state::limiter::{Algorithm, LimitAction, LimitTable, Unit, ceil_secs};
use crate::state::quota_ledger::{
    Budget, QuotaCheck, QuotaItems, QuotaKey, QuotaLedger, QuotaSettlement, day_of,
    secs_to_midnight,
};
use palisade_intel::Category;
use palisade_intel::headers::Inconsistency;
use palisade_intel::ipinfo::AsnCategory;
use palisade_intel::verify::VerifyStatus;

/// A limit check the shared store makes for a request (cluster mode): which limit, under which
/// stable key, for how many units.
#[derive(Debug, Clone)]
pub struct SharedCheck {
    /// Index of the limit in the policy.
    pub index: usize,
    /// The limit's name.
    pub limit: Arc<str>,
    /// The key, hashed with [`crate::model::identity::StableHasher`].
    pub key: u64,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Units asked for.
    pub cost: u64,
    /// How far into the future a delayed request may reserve.
    pub reserve: Nanos,
    /// The limit's quota per window (for headers when the store is bypassed).
    pub quota: u64,
}

/// A correction the shared store must apply (a refund, or the difference between a reported
/// and a charged cost).
#[derive(Debug, Clone)]
pub struct SharedAdjust {
    /// Index of the limit in the policy.
    pub index: usize,
    /// The limit's name.
    pub limit: Arc<str>,
    /// The stable key.
    pub key: u64,
    /// How it counts.
    pub algorithm: Algorithm,
    /// Units to add (negative: give back).
    pub delta: i64,
}

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
    policy: Policy,
    tables: Vec<Arc<LimitTable>>,
    signal_names: Vec<Arc<str>>,
    header_items: Vec<HeaderItem>,
    key_table: Arc<LimitTable>,
    failure_table: Arc<LimitTable>,
    ledger: Arc<QuotaLedger>,
    quota_rules: Vec<Arc<str>>,
    quota_items: Vec<Arc<QuotaItems>>,
    rule_key_limit: Arc<str>,
    rule_key_budget: Arc<str>,
    key_budget_name: Arc<str>,
    rule_guessing: Arc<str>,
    rule_spoofed: Arc<str>,
    rule_unverified: Arc<str>,
    ua_cache: Arc<UaCache>,
    blocks: Arc<BlockTable>,
    honeypot_rules: Vec<Arc<str>>,
    bot_rules: Vec<Arc<str>>,
    header_rules: Vec<Arc<str>>,
    intel_rules: Vec<Arc<str>>,
    rule_scope: Arc<str>,
    auth_rules: [Arc<str>; 8],
    rule_deny: Arc<str>,
    rule_allow_list: Arc<str>,
    rule_default: Arc<str>,
    rule_score: [Arc<str>; 3],
    rule_delay: Arc<str>,
    rule_throttle: Arc<str>,
    behaviour: Option<Arc<Behaviour>>,
    behaviour_names: Vec<Arc<str>>,
    /// Whether the policy reads a request's JA4H (a limit keys on it, behaviour detection, a
    /// honeypot flags it). Blocks, which may name one at any time, are checked per request.
    uses_ja4h: bool,
    rule_names: Vec<Arc<str>>,
    rule_errors: std::sync::atomic::AtomicU64,
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
            .map(|l| HeaderItem::for_limit(&l.name, l.quota, l.window_secs, l.unit))
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
        Self {
            rule_names,
            rule_errors: std::sync::atomic::AtomicU64::new(0),
            behaviour,
            behaviour_names,
            uses_ja4h: policy
                .limits
                .iter()
                .any(|l| l.key.contains(&crate::model::identity::KeyPart::Ja4h))
                || policy.behaviour.is_some()
                || policy.honeypots.iter().any(|h| h.flag.contains(&"ja4h")),
            rule_delay: Arc::from("score/delay"),
            rule_throttle: Arc::from("score/throttle"),
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
            blocks,
            honeypot_rules,
            bot_rules,
            intel_rules: ["hosting", "vpn", "mobile", "residential", "tor"]
                .iter()
                .map(|n| Arc::from(format!("intel/{n}")))
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

    /// Decides one request.
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Result<Decision, EngineError> {
        let route = self.route_of(facts.method, facts.path);
        self.evaluate_on(facts, route)
    }

    /// Decides one request whose route the caller already matched (with [`Engine::route_of`]).
    pub fn evaluate_on(
        &self,
        facts: &RequestFacts<'_>,
        route: RouteId,
    ) -> Result<Decision, EngineError> {
        self.evaluate_shared(facts, route, &[])
    }

    /// The limit checks the shared store should make for a request (cluster mode), keyed with
    /// the stable hasher every instance shares.
    pub fn shared_checks(&self, facts: &RequestFacts<'_>, route: RouteId) -> Vec<SharedCheck> {
        let Some(route_spec) = self.policy.route(route) else {
            return Vec::new();
        };
        self.policy
            .limits
            .iter()
            .enumerate()
            .filter_map(|(index, spec)| {
                let (key, cost, reserve) = self.limit_plan(
                    spec,
                    &crate::model::identity::StableHasher,
                    facts,
                    route,
                    route_spec,
                )?;
                Some(SharedCheck {
                    index,
                    limit: spec.name.clone(),
                    key,
                    algorithm: spec.algorithm,
                    cost,
                    reserve,
                    quota: spec.quota,
                })
            })
            .collect()
    }

    /// Whether a limit applies to a request, and if so its key (under `hasher`), the units the
    /// request costs it and how far a delayed request may reserve.
    fn limit_plan<B: std::hash::BuildHasher>(
        &self,
        spec: &crate::state::limiter::LimitSpec,
        hasher: &B,
        facts: &RequestFacts<'_>,
        route: RouteId,
        route_spec: &RouteSpec,
    ) -> Option<(u64, u64, Nanos)> {
        if !spec.applies(route, facts.method) {
            return None;
        }
        let key = key_hash(hasher, &spec.key, facts, route)?;
        let cost = match spec.unit {
            Unit::Requests => 1,
            Unit::Cost => route_spec.cost,
        };
        let reserve = match spec.action {
            LimitAction::Delay { max_delay, .. } if self.policy.mode == Mode::Enforce => max_delay,
            _ => 0,
        };
        Some((key, cost, reserve))
    }

    /// Decides one request with verdicts the shared store gave for some limits: `(limit index,
    /// verdict, stable key)`. Limits without one are checked locally.
    pub fn evaluate_shared(
        &self,
        facts: &RequestFacts<'_>,
        route: RouteId,
        shared: &[(usize, crate::state::limiter::Verdict, u64)],
    ) -> Result<Decision, EngineError> {
        let p = &self.policy;
        let route_spec = p.route(route).ok_or(EngineError::NoRoute)?;
        let mut d = Decision::new(route, self.rule_default.clone());

        // A denylisted client is refused before anything else.
        let ip = facts.client_ip;
        if p.lists.deny.contains(ip) {
            d.signals.push(Signal {
                name: self.rule_deny.clone(),
                weight: 100,
                shadow: false,
            });
            d.score = 100;
            return Ok(self.finish(d, Action::Block, self.rule_deny.clone()));
        }

        // Honeypots: a trap path flags the client and answers as if nothing were there.
        if let Some(i) = p
            .honeypots
            .iter()
            .position(|h| h.paths.iter().any(|pat| pat.matches_path(facts.path)))
        {
            self.trap(i, facts);
            let rule = self
                .honeypot_rules
                .get(i)
                .cloned()
                .unwrap_or_else(|| self.rule_default.clone());
            d.signals.push(Signal {
                name: rule.clone(),
                weight: 100,
                shadow: false,
            });
            d.score = 100;
            d.code = Some(ClientCode::NotFound);
            return Ok(self.finish(d, Action::Block, rule));
        }

        // Blocks with a time to live, on any of the client's identities.
        if !self.blocks.is_empty() {
            let keys = self.block_keys(facts);
            if let Some(b) = self.blocks.find(&keys, facts.unix_ms) {
                let rule: Arc<str> = Arc::from(format!("block/{}", b.reason));
                match b.effect {
                    BlockEffect::Block => {
                        d.signals.push(Signal {
                            name: rule.clone(),
                            weight: 100,
                            shadow: false,
                        });
                        d.score = 100;
                        return Ok(self.finish(d, Action::Block, rule));
                    }
                    BlockEffect::Score(w) => d.signals.push(Signal {
                        name: rule,
                        weight: w,
                        shadow: false,
                    }),
                }
            }
        }

        // Authentication is access control, not abuse detection: it is enforced in shadow mode
        // too, and the allow list does not bypass it.
        if let Some(refused) = self.authenticate(&mut d, facts, route_spec) {
            return Ok(refused);
        }

        // An allowlisted client skips limits, quotas and checks.
        if p.lists.allow.contains(ip)
            || p.lists
                .allow_if
                .iter()
                .any(|a| a.matches(ip, facts.path, facts.headers))
        {
            d.rule = self.rule_allow_list.clone();
            return Ok(d);
        }

        // Bots: what the catalog makes of the user agent, and what the policy does with it.
        let mut enforced: Option<(Action, Arc<str>)> = None;
        let mut shadowed: Option<(Action, Arc<str>)> = None;
        let mut tag_floor: Option<Arc<str>> = None;
        if let Some(bots) = &p.bots {
            let ua = facts
                .headers
                .get(http::header::USER_AGENT)
                .map_or(&b""[..], |v| v.as_bytes());
            let mut class = self.ua_cache.classify(&bots.catalog, ua);
            let mut action = bots.action(class.category);
            let mut rule = self.bot_rule(class.category);
            let mut verified = false;
            if let Some((i, status)) = facts.bot_verification
                && let Some(vb) = bots.verified.get(i)
            {
                class.verification = Some((vb.name.clone(), status));
                match status {
                    VerifyStatus::Verified => verified = true,
                    VerifyStatus::Spoofed => {
                        action = bots.on_spoofed;
                        rule = self.rule_spoofed.clone();
                    }
                    VerifyStatus::Pending => {
                        if bots.on_pending != BotAction::Allow {
                            action = bots.on_pending;
                            rule = self.rule_unverified.clone();
                        }
                    }
                }
            }
            if action == BotAction::AllowVerified {
                action = if verified {
                    BotAction::Allow
                } else {
                    BotAction::Signal
                };
            }
            d.client = Some(class);
            // A verified key or token names an accountable caller: what software it uses (an
            // HTTP library, mostly) is no evidence against it. Explicit actions still apply.
            let keyed_signal = action == BotAction::Signal && facts.auth.principal().is_some();
            if action != BotAction::Allow && !keyed_signal {
                d.signals.push(Signal {
                    name: rule.clone(),
                    weight: bots.weight,
                    shadow: false,
                });
            }
            match action {
                BotAction::Allow | BotAction::Signal | BotAction::AllowVerified => {}
                BotAction::Tag => tag_floor = Some(rule),
                BotAction::Challenge | BotAction::Block => {
                    let a = if action == BotAction::Block {
                        Action::Block
                    } else {
                        Action::Challenge
                    };
                    if p.mode == Mode::Enforce {
                        // Refused before any limit counts it.
                        d.score = bots.weight;
                        return Ok(self.finish(d, a, rule));
                    }
                    shadowed = Some((a, rule));
                }
            }
        }

        // IP intelligence: the kind of network the client comes from.
        if let (Some(ip), Some(intel)) = (facts.ip_info, &p.intel) {
            if let Some(c) = ip.category {
                let i = match c {
                    AsnCategory::Hosting => 0,
                    AsnCategory::Vpn => 1,
                    AsnCategory::Mobile => 2,
                    AsnCategory::Residential => 3,
                };
                let w = intel.category_weights.get(i).copied().unwrap_or(0);
                if let (true, Some(name)) = (w > 0, self.intel_rules.get(i)) {
                    d.signals.push(Signal {
                        name: name.clone(),
                        weight: w,
                        shadow: false,
                    });
                }
            }
            if ip.tor_exit
                && intel.tor_weight > 0
                && let Some(name) = self.intel_rules.get(4)
            {
                d.signals.push(Signal {
                    name: name.clone(),
                    weight: intel.tor_weight,
                    shadow: false,
                });
            }
        }

        // Header consistency, for what the catalog took for (or did not check as) a browser.
        if let Some(hp) = &p.headers
            && d.client
                .as_ref()
                .is_none_or(|c| c.category == Category::Human)
        {
            let ua = facts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let headers: Vec<(&str, &[u8])> = facts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            for inc in palisade_intel::headers::check(ua, headers.iter().copied(), hp.assume_https)
            {
                if let Some(name) = Inconsistency::ALL
                    .iter()
                    .position(|x| *x == inc)
                    .and_then(|i| self.header_rules.get(i))
                {
                    d.signals.push(Signal {
                        name: name.clone(),
                        weight: hp.weight,
                        shadow: false,
                    });
                }
            }
        }

        // Behaviour over time and across identities.
        if let Some(b) = &self.behaviour {
            let mut emitted: Vec<Emitted> = Vec::new();
            let created = facts.auth.principal().and_then(|p| p.created_ms);
            d.trace = Some(b.assess(facts, route, facts.username, created, &mut emitted));
            d.under_attack = b.under_attack(route);
            for e in emitted {
                if let Some(name) = self.behaviour_names.get(e.index) {
                    d.signals.push(Signal {
                        name: name.clone(),
                        weight: e.weight,
                        shadow: false,
                    });
                }
            }
        }

        // Limits: every matching limit applies, then the key's own limit. A verdict the shared
        // store already gave (cluster mode) stands for the local table's.
        for (i, spec) in p.limits.iter().enumerate() {
            let (Some(table), Some(signal)) = (self.tables.get(i), self.signal_names.get(i)) else {
                continue;
            };
            let Some((key, cost, reserve)) =
                self.limit_plan(spec, &table.hasher, facts, route, route_spec)
            else {
                continue;
            };
            let from_store = shared.iter().find(|(x, _, _)| *x == i);
            let verdict = match from_store {
                Some((_, v, _)) => *v,
                None => table.check(&spec.algorithm, key, facts.now, cost, reserve),
            };
            let shadow = spec.action == LimitAction::Shadow;
            let charged = if verdict.allowed || (reserve > 0 && verdict.retry_after <= reserve) {
                cost
            } else {
                0
            };
            if !verdict.allowed {
                d.signals.push(Signal {
                    name: signal.clone(),
                    weight: spec.weight,
                    shadow,
                });
                let action = match spec.action {
                    LimitAction::Delay { max_delay, .. } if verdict.retry_after <= max_delay => {
                        Action::Delay {
                            wait: verdict.retry_after,
                        }
                    }
                    _ => Action::Limit {
                        retry_after: verdict.retry_after,
                    },
                };
                let slot = if shadow { &mut shadowed } else { &mut enforced };
                if stronger(action, slot.as_ref().map(|s| s.0)) {
                    *slot = Some((action, signal.clone()));
                }
            }
            d.limits.push(LimitOutcome {
                index: i,
                name: spec.name.clone(),
                key,
                charged,
                verdict,
                shadow,
                quota: spec.quota,
                window_secs: spec.window_secs,
                unit: spec.unit,
                headers: spec.headers,
                shared: from_store.map(|(_, _, k)| *k),
            });
        }
        if let Some(principal) = facts.auth.principal() {
            self.key_limit(&mut d, facts, principal, &mut enforced);
        }

        // Daily quotas, reserved only for a request the limits let through.
        if !matches!(enforced, Some((Action::Limit { .. }, _)))
            && let Some(principal) = facts.auth.principal()
            && let Some((action, rule, code)) =
                self.reserve_quotas(&mut d, facts, route_spec, principal)
        {
            if p.mode == Mode::Shadow {
                if stronger(action, shadowed.as_ref().map(|s| s.0)) {
                    shadowed = Some((action, rule));
                }
            } else {
                enforced = Some((action, rule));
                d.code = Some(code);
            }
        }

        // A refused request gives back what other limits charged it (a held one keeps its
        // reservations: it will be forwarded).
        if let Some((Action::Limit { .. }, _)) = enforced {
            self.refund(&mut d, facts.now);
        }

        d.score = d.signal_score(false);

        // Explicit rules: `score` rules add signals; the first other match decides.
        let decided = self.run_rules(&mut d, facts, route_spec);
        d.score = d.signal_score(false);
        let shadow_score = d.signal_score(true);

        if let Some((a, r)) = shadowed
            && stronger(a, d.shadow.as_ref().map(|s| s.0))
        {
            d.shadow = Some((a, r));
        }
        if shadow_score > d.score
            && let Some((a, r)) = self.score_action(shadow_score, &d)
            && stronger(a, d.shadow.as_ref().map(|s| s.0))
        {
            d.shadow = Some((a, r));
        }

        // The score's action, with progressive throttling for repeat offenders: an offence
        // counts even when a limit refuses the request anyway, so a client that ignores 429s
        // climbs the steps to a block.
        let mut scored = match decided {
            Some((None, rule)) => Some((Action::Allow, rule)),
            Some((Some(a), rule)) => Some((a, rule)),
            None => self.score_action(d.score, &d),
        };
        if let Some((Action::Delay { .. }, rule)) = &scored {
            let from_rule = !rule.starts_with("score/");
            let (a, r) = self.throttle(&d, facts);
            scored = Some(if from_rule && a != Action::Block {
                (a, rule.clone())
            } else {
                (a, r)
            });
        }
        let (action, rule) = match (enforced, scored) {
            // A limit's refusal stands against the score; a block from progressive throttling
            // or an explicit rule goes further.
            (Some(e), Some(s))
                if s.0 == Action::Block
                    && (s.1 == self.rule_throttle || s.1.starts_with("rule/")) =>
            {
                if stronger(s.0, Some(e.0)) { s } else { e }
            }
            (Some(e), _) => e,
            (None, Some(s)) => s,
            (None, None) => (Action::Allow, self.rule_default.clone()),
        };
        let (action, rule) = match (action, tag_floor) {
            (Action::Allow, Some(r)) => (Action::Tag, r),
            (a, _) => (a, rule),
        };
        Ok(self.finish(d, action, rule))
    }

    /// Checks a requirement outside any route (the gateway's own endpoints, such as the usage
    /// endpoint): counts failures and blocks guessing exactly as on a route. Returns the
    /// refusal, if any.
    pub fn authorize(&self, facts: &RequestFacts<'_>, route: &RouteSpec) -> Option<Decision> {
        let mut d = Decision::new(usize::MAX, self.rule_default.clone());
        self.authenticate(&mut d, facts, route)
    }

    /// Today's usage of every daily budget that applies to a principal, whatever the route.
    pub fn usage_for(&self, principal: &Principal, unix_ms: u64) -> Vec<QuotaUsage> {
        let day = day_of(unix_ms);
        let mut out = Vec::new();
        for q in &self.policy.quotas {
            let identity = match q.key {
                QuotaKey::ApiKey => principal.key_id.as_deref(),
                QuotaKey::Account => principal.account.as_deref(),
            };
            let Some(identity) = identity else { continue };
            let u = self.ledger.usage(&q.name, identity, day);
            out.push(QuotaUsage {
                quota: q.name.to_string(),
                per: q.key.name(),
                requests: u.requests,
                requests_per_day: q.requests_per_day,
                spend_micros: u.spend_micros,
                spend_per_day_micros: q.spend_per_day_micros,
            });
        }
        if let Some(id) = &principal.key_id
            && (principal.budget.requests_per_day.is_some()
                || principal.budget.spend_per_day_micros.is_some())
        {
            let u = self.ledger.usage(KEY_BUDGET_QUOTA, id, day);
            out.push(QuotaUsage {
                quota: KEY_BUDGET_QUOTA.to_owned(),
                per: QuotaKey::ApiKey.name(),
                requests: u.requests,
                requests_per_day: principal.budget.requests_per_day,
                spend_micros: u.spend_micros,
                spend_per_day_micros: principal.budget.spend_per_day_micros,
            });
        }
        out
    }

    /// Checks the route's authentication requirement. Returns the refusal, if any.
    fn authenticate(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: &RouteSpec,
    ) -> Option<Decision> {
        let required = route.auth;
        if required == AuthRequirement::None {
            return None;
        }
        let failures = &self.policy.auth.failures;
        let ip_key = key_hash_of_values(
            &self.failure_table.hasher,
            &[KeyValue::Ip(facts.client_ip.to_canonical(), 255)],
        );
        let guessing = |d: &mut Decision| {
            d.signals.push(Signal {
                name: self.rule_guessing.clone(),
                weight: 100,
                shadow: false,
            });
            d.score = 100;
            let mut out = d.clone();
            out.action = Action::Block;
            out.rule = self.rule_guessing.clone();
            out
        };
        // A source that kept presenting bad credentials is refused whatever it presents now,
        // until its failure budget replenishes.
        if self
            .failure_table
            .peek(failures, ip_key, facts.now)
            .is_some_and(|v| v.remaining == 0)
        {
            return Some(guessing(d));
        }
        let [missing_key, missing_token, missing_any, ..] = &self.auth_rules;
        let missing = |d: &mut Decision| {
            let (rule, code) = match required {
                AuthRequirement::ApiKey => (missing_key, ClientCode::MissingApiKey),
                AuthRequirement::Jwt => (missing_token, ClientCode::MissingToken),
                _ => (missing_any, ClientCode::MissingCredentials),
            };
            let mut out = d.clone();
            out.action = Action::Unauthorized;
            out.rule = rule.clone();
            out.code = Some(code);
            out
        };
        let accepts = |kind: PrincipalKind| match required {
            AuthRequirement::None | AuthRequirement::Any => true,
            AuthRequirement::ApiKey => kind == PrincipalKind::ApiKey,
            AuthRequirement::Jwt => kind == PrincipalKind::Jwt,
        };
        match facts.auth {
            Auth::Anonymous => Some(missing(d)),
            Auth::Failed { kind, .. } if !accepts(kind) => Some(missing(d)),
            Auth::Failed { failure, .. } => {
                let verdict = self.failure_table.check(failures, ip_key, facts.now, 1, 0);
                let rule = self.auth_rule(failure);
                d.signals.push(Signal {
                    name: rule.clone(),
                    weight: 10,
                    shadow: false,
                });
                if !verdict.allowed || verdict.remaining == 0 {
                    return Some(guessing(d));
                }
                d.score = 10;
                let mut out = d.clone();
                out.action = Action::Unauthorized;
                out.rule = rule;
                out.code = Some(failure.code());
                Some(out)
            }
            Auth::Principal(p) if !accepts(p.kind) => Some(missing(d)),
            Auth::Principal(p) if !p.has_scopes(&route.scopes) => {
                let mut out = d.clone();
                out.action = Action::Block;
                out.rule = self.rule_scope.clone();
                out.code = Some(ClientCode::InsufficientScope);
                Some(out)
            }
            Auth::Principal(_) => None,
        }
    }

    /// Whether deciding a request may read its JA4H fingerprint: the gateway computes it only
    /// then (or when the decision is logged).
    pub fn wants_ja4h(&self) -> bool {
        self.uses_ja4h || !self.blocks.is_empty()
    }

    /// The block-table keys of a request's identities.
    fn block_keys(&self, facts: &RequestFacts<'_>) -> Vec<String> {
        let ip = facts.client_ip.to_canonical();
        let mut keys = vec![format!("ip:{ip}"), format!("ip/24:{}", mask(ip, 24, 48))];
        if let Some(p) = facts.auth.principal() {
            if let Some(k) = &p.key_id {
                keys.push(format!("api_key:{k}"));
            }
            if let Some(a) = &p.account {
                keys.push(format!("account:{a}"));
            }
        }
        if let Some(j) = facts.ja4h {
            keys.push(format!("ja4h:{j}"));
        }
        if let Some(i) = facts.ip_info.filter(|i| i.asn != 0) {
            keys.push(format!("asn:{}", i.asn));
        }
        keys
    }

    /// Records a honeypot hit: flags the client's configured identities for the honeypot's
    /// time (doubling for a repeat offender).
    pub fn trap(&self, honeypot: usize, facts: &RequestFacts<'_>) {
        let Some(h) = self.policy.honeypots.get(honeypot) else {
            return;
        };
        let reason = format!("honeypot/{}", h.name);
        let ip = facts.client_ip.to_canonical().to_string();
        for dim in &h.flag {
            let value = match *dim {
                "ip" | "ip/24" => Some(ip.clone()),
                "api_key" => facts
                    .auth
                    .principal()
                    .and_then(|p| p.key_id.as_deref().map(str::to_owned)),
                "account" => facts
                    .auth
                    .principal()
                    .and_then(|p| p.account.as_deref().map(str::to_owned)),
                "ja4h" => facts.ja4h.map(str::to_owned),
                "asn" => facts
                    .ip_info
                    .filter(|i| i.asn != 0)
                    .map(|i| i.asn.to_string()),
                _ => None,
            };
            if let Some(key) = value.and_then(|v| block_key(dim, &v)) {
                self.blocks
                    .add(key, h.block_for_ms, &reason, h.effect, true, facts.unix_ms);
            }
        }
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

    fn bot_rule(&self, c: Category) -> Arc<str> {
        Category::ALL
            .iter()
            .position(|x| *x == c)
            .and_then(|i| self.bot_rules.get(i).cloned())
            .unwrap_or_else(|| self.rule_default.clone())
    }

    /// The user-agent classification cache (its size is a metric).
    pub fn ua_cache(&self) -> &UaCache {
        &self.ua_cache
    }

    fn auth_rule(&self, failure: AuthFailure) -> Arc<str> {
        let [
            ..,
            invalid_key,
            expired,
            revoked,
            invalid_token,
            invalid_sig,
        ] = &self.auth_rules;
        match failure {
            AuthFailure::InvalidApiKey => invalid_key,
            AuthFailure::ExpiredApiKey => expired,
            AuthFailure::RevokedApiKey => revoked,
            AuthFailure::InvalidToken => invalid_token,
            AuthFailure::InvalidSignature => invalid_sig,
        }
        .clone()
    }

    /// Applies the key's own rate limit, if its record has one.
    fn key_limit(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        principal: &Principal,
        enforced: &mut Option<(Action, Arc<str>)>,
    ) {
        let (Some(rate), Some(id)) = (&principal.rate, &principal.key_id) else {
            return;
        };
        let algorithm = Algorithm::Gcra {
            interval: rate.interval,
            burst: rate.burst,
        };
        let key = key_hash_of_values(&self.key_table.hasher, &[KeyValue::Bytes(id.as_bytes())]);
        let verdict = self.key_table.check(&algorithm, key, facts.now, 1, 0);
        if !verdict.allowed {
            d.signals.push(Signal {
                name: self.rule_key_limit.clone(),
                weight: 50,
                shadow: false,
            });
            let action = Action::Limit {
                retry_after: verdict.retry_after,
            };
            if stronger(action, enforced.as_ref().map(|s| s.0)) {
                *enforced = Some((action, self.rule_key_limit.clone()));
            }
        }
        d.key_limit = Some((rate.item.clone(), algorithm));
        d.limits.push(LimitOutcome {
            index: KEY_LIMIT_INDEX,
            name: self.rule_key_limit.clone(),
            key,
            charged: u64::from(verdict.allowed),
            verdict,
            shadow: false,
            quota: rate.quota,
            window_secs: rate.window_secs,
            unit: Unit::Requests,
            headers: true,
            shared: None,
        });
    }

    /// Reserves the request's daily budgets. Returns the refusal (action, rule, client code)
    /// if one is exhausted.
    fn reserve_quotas(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: &RouteSpec,
        principal: &Principal,
    ) -> Option<(Action, Arc<str>, ClientCode)> {
        let mut checks: Vec<QuotaCheck> = Vec::new();
        let mut rules: Vec<&Arc<str>> = Vec::new();
        for ((q, rule), items) in self
            .policy
            .quotas
            .iter()
            .zip(&self.quota_rules)
            .zip(&self.quota_items)
        {
            if q.routes.as_ref().is_some_and(|r| !r.contains(&d.route)) {
                continue;
            }
            let identity = match q.key {
                QuotaKey::ApiKey => principal.key_id.as_ref(),
                QuotaKey::Account => principal.account.as_ref(),
            };
            let Some(identity) = identity else {
                continue;
            };
            checks.push(QuotaCheck {
                quota: q.name.clone(),
                identity: identity.clone(),
                requests_per_day: q.requests_per_day,
                spend_per_day_micros: q.spend_per_day_micros,
                spend_hold: if q.spend_per_day_micros.is_some() {
                    route.spend_reserve_micros
                } else {
                    0
                },
                items: items.clone(),
            });
            rules.push(rule);
        }
        if let (Some(id), Some(items)) = (&principal.key_id, &principal.budget_items) {
            let b = principal.budget;
            checks.push(QuotaCheck {
                quota: self.key_budget_name.clone(),
                identity: id.clone(),
                requests_per_day: b.requests_per_day,
                spend_per_day_micros: b.spend_per_day_micros,
                spend_hold: if b.spend_per_day_micros.is_some() {
                    route.spend_reserve_micros
                } else {
                    0
                },
                items: items.clone(),
            });
            rules.push(&self.rule_key_budget);
        }
        if checks.is_empty() {
            return None;
        }
        match self.ledger.reserve(&checks, facts.unix_ms) {
            Ok(holds) => {
                d.quotas = holds;
                None
            }
            Err(e) => {
                let rule = rules.get(e.index).map(|r| (*r).clone())?;
                let c = checks.get(e.index)?;
                let budget_size = match e.budget {
                    Budget::Requests => c.requests_per_day,
                    Budget::Spend => c.spend_per_day_micros,
                };
                let action =
                    self.quota_exhausted(d, &rule, &c.items, e.budget, budget_size, facts.unix_ms);
                Some((action, rule, e.budget.code()))
            }
        }
    }

    /// Records that a daily budget refused a request: the exhausted budget (for its headers)
    /// and the quota's signal. Answers the refusal, a 429 until midnight UTC.
    fn quota_exhausted(
        &self,
        d: &mut Decision,
        rule: &Arc<str>,
        items: &QuotaItems,
        budget: Budget,
        budget_size: Option<u64>,
        unix_ms: u64,
    ) -> Action {
        let reset = secs_to_midnight(unix_ms);
        let item = match budget {
            Budget::Requests => items.requests.clone(),
            Budget::Spend => items.spend.clone(),
        };
        d.exhausted = item.zip(budget_size).map(|(i, q)| (i, q, reset));
        d.signals.push(Signal {
            name: rule.clone(),
            weight: 50,
            shadow: self.policy.mode == Mode::Shadow,
        });
        Action::Limit {
            retry_after: reset.saturating_mul(SECOND),
        }
    }

    /// Refuses a forwarded request that the shared store found over one of its daily quotas
    /// (cluster mode; `index` into `decision.quotas`): gives back its local reservations and
    /// what its limits charged, and answers as a local refusal would. In shadow mode the
    /// refusal is only recorded.
    pub fn refuse_quota(
        &self,
        d: &mut Decision,
        index: usize,
        budget: Budget,
        unix_ms: u64,
        now: Nanos,
    ) {
        let Some(hold) = d.quotas.get(index).cloned() else {
            return;
        };
        self.ledger.release(&d.quotas);
        d.quotas.clear();
        // The quota's rule name, as rendered at load.
        let rule = if *hold.quota == *self.key_budget_name {
            self.rule_key_budget.clone()
        } else {
            self.policy
                .quotas
                .iter()
                .zip(&self.quota_rules)
                .find(|(q, _)| q.name == hold.quota)
                .map_or_else(
                    || Arc::from(format!("quota/{}", hold.quota)),
                    |(_, r)| r.clone(),
                )
        };
        let budget_size = match budget {
            Budget::Requests => hold.requests_per_day,
            Budget::Spend => hold.spend_per_day,
        };
        let action = self.quota_exhausted(d, &rule, &hold.items, budget, budget_size, unix_ms);
        if self.policy.mode == Mode::Shadow {
            if stronger(action, d.shadow.as_ref().map(|s| s.0)) {
                d.shadow = Some((action, rule));
            }
            return;
        }
        self.refund(d, now);
        d.score = d.signal_score(false);
        d.code = Some(budget.code());
        d.action = action;
        d.rule = rule;
    }

    /// Today's usage of every daily quota counted per `dimension` (api_key or account).
    pub fn quota_report(&self, dimension: &KeyPart, value: &str, unix_ms: u64) -> Vec<QuotaReport> {
        let key = match dimension {
            KeyPart::ApiKey => QuotaKey::ApiKey,
            KeyPart::Account => QuotaKey::Account,
            _ => return Vec::new(),
        };
        let day = day_of(unix_ms);
        let usd = |m: u64| m as f64 / crate::state::quota_ledger::MICROS_PER_USD;
        let mut out: Vec<QuotaReport> = self
            .policy
            .quotas
            .iter()
            .filter(|q| q.key == key)
            .map(|q| {
                let u = self.ledger.usage(&q.name, value, day);
                QuotaReport {
                    quota: q.name.to_string(),
                    requests: u.requests,
                    requests_per_day: q.requests_per_day,
                    spend_usd: usd(u.spend_micros),
                    spend_per_day_usd: q.spend_per_day_micros.map(usd),
                }
            })
            .collect();
        if key == QuotaKey::ApiKey {
            let u = self.ledger.usage(KEY_BUDGET_QUOTA, value, day);
            if u.requests > 0 || u.spend_micros > 0 {
                out.push(QuotaReport {
                    quota: KEY_BUDGET_QUOTA.to_owned(),
                    requests: u.requests,
                    requests_per_day: None,
                    spend_usd: usd(u.spend_micros),
                    spend_per_day_usd: None,
                });
            }
        }
        out
    }

    /// The delay a first offence gets: the first throttling step (1 s without steps).
    fn first_delay(&self) -> Nanos {
        self.policy
            .scoring
            .throttle
            .first()
            .copied()
            .unwrap_or(SECOND)
    }

    fn score_action(&self, score: u8, d: &Decision) -> Option<(Action, Arc<str>)> {
        let s = self.policy.scoring.thresholds(d.under_attack);
        let [tag, challenge, block] = &self.rule_score;
        if s.block_at > 0 && score >= s.block_at {
            Some((Action::Block, block.clone()))
        } else if s.challenge_at > 0 && score >= s.challenge_at {
            Some((Action::Challenge, challenge.clone()))
        } else if s.delay_at > 0 && score >= s.delay_at && !self.policy.scoring.throttle.is_empty()
        {
            Some((
                Action::Delay {
                    wait: self.first_delay(),
                },
                self.rule_delay.clone(),
            ))
        } else if s.tag_at > 0 && score >= s.tag_at {
            Some((Action::Tag, tag.clone()))
        } else {
            None
        }
    }

    /// Runs the rules: `score` rules add their signals to `d`; the first other matching rule
    /// decides the score's action: `Some((None, rule))` for `allow`, `Some((Some(action),
    /// rule))` otherwise. Shadowed rules only record what they would have done.
    #[allow(clippy::type_complexity, reason = "private; documented above")]
    fn run_rules(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: &RouteSpec,
    ) -> Option<(Option<Action>, Arc<str>)> {
        use crate::detect::rules::{Facts, RuleAction, matches};
        let rp = self.policy.rules.as_ref()?;
        let check = |r: &crate::detect::rules::RuleSpec, view: &Facts<'_>| match matches(
            &rp.env, r, view,
        ) {
            Ok(b) => b,
            Err(_) => {
                self.rule_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
        };
        // Pass one: `score` rules add their signals.
        let mut added: Vec<Signal> = Vec::new();
        {
            let view = Facts::new(facts, &route.name, d, d.score);
            for (r, name) in rp.rules.iter().zip(&self.rule_names) {
                if let RuleAction::Score(w) = r.action
                    && check(r, &view)
                {
                    added.push(Signal {
                        name: name.clone(),
                        weight: w,
                        shadow: r.shadow,
                    });
                }
            }
        }
        if !added.is_empty() {
            d.signals.extend(added);
            d.score = d.signal_score(false);
        }
        // Pass two: the first other matching rule decides, seeing the score with them.
        let mut decided: Option<(Option<Action>, Arc<str>)> = None;
        let mut would: Option<(Action, Arc<str>)> = None;
        {
            let view = Facts::new(facts, &route.name, d, d.score);
            for (r, name) in rp.rules.iter().zip(&self.rule_names) {
                let action = match r.action {
                    RuleAction::Score(_) => continue,
                    RuleAction::Allow => None,
                    RuleAction::Tag => Some(Action::Tag),
                    RuleAction::Delay => Some(Action::Delay {
                        wait: self.first_delay(),
                    }),
                    RuleAction::Challenge => Some(Action::Challenge),
                    RuleAction::Block => Some(Action::Block),
                };
                if (r.shadow && would.is_some()) || !check(r, &view) {
                    continue;
                }
                if r.shadow {
                    if let Some(a) = action {
                        would = Some((a, name.clone()));
                    }
                    continue;
                }
                decided = Some((action, name.clone()));
                break;
            }
        }
        if let Some((a, r)) = would
            && stronger(a, d.shadow.as_ref().map(|s| s.0))
        {
            d.shadow = Some((a, r));
        }
        decided
    }

    /// Rule evaluations that failed (a missing key, a type mismatch), counted as no match.
    pub fn rule_errors(&self) -> u64 {
        self.rule_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Progressive throttling: the delay step for this offence, or a block past the last step
    /// (which also blocks the client's key or address for a while).
    fn throttle(&self, d: &Decision, facts: &RequestFacts<'_>) -> (Action, Arc<str>) {
        let scoring = &self.policy.scoring;
        let (Some(b), Some(trace)) = (&self.behaviour, &d.trace) else {
            let wait = scoring.throttle.first().copied().unwrap_or(SECOND);
            return (Action::Delay { wait }, self.rule_delay.clone());
        };
        let level = b.throttle(
            trace,
            facts.now,
            true,
            &scoring.throttle,
            scoring.relax_after,
        );
        match scoring.throttle.get(usize::from(level.max(1)) - 1) {
            Some(wait) => (Action::Delay { wait: *wait }, self.rule_delay.clone()),
            None => {
                if scoring.throttle_block_ms > 0 && self.policy.mode == Mode::Enforce {
                    let key = match (trace.throttle_identity(), facts.auth.principal()) {
                        (Some(crate::behaviour::Dim::ApiKey), Some(p)) => {
                            p.key_id.as_deref().and_then(|k| block_key("api_key", k))
                        }
                        _ => block_key("ip", &facts.client_ip.to_canonical().to_string()),
                    };
                    if let Some(key) = key {
                        self.blocks.add(
                            key,
                            scoring.throttle_block_ms,
                            "score/throttle",
                            BlockEffect::Block,
                            true,
                            facts.unix_ms,
                        );
                    }
                }
                (Action::Block, self.rule_throttle.clone())
            }
        }
    }

    /// Records the answer a decided request got, for behaviour (status mix, 429s, failed
    /// logins, flow steps, route baselines).
    pub fn observe_status(&self, d: &Decision, status: u16, now: Nanos) {
        let (Some(b), Some(trace)) = (&self.behaviour, &d.trace) else {
            return;
        };
        let retry_after = match d.action {
            Action::Limit { retry_after } => retry_after,
            _ if status == 429 => SECOND,
            _ => 0,
        };
        b.observe(trace, status, retry_after, now);
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

    /// Applies the mode: in shadow mode anything beyond tagging is logged, not enforced.
    fn finish(&self, mut d: Decision, action: Action, rule: Arc<str>) -> Decision {
        if self.policy.mode == Mode::Shadow && action.severity() > Action::Tag.severity() {
            if stronger(action, d.shadow.as_ref().map(|s| s.0)) {
                d.shadow = Some((action, rule));
            }
            d.action = Action::Allow;
            d.rule = self.rule_default.clone();
        } else {
            d.action = action;
            d.rule = rule;
        }
        d
    }

    /// Charges (or refunds) the difference between what the upstream reported a request cost
    /// and what was charged up front, for every cost-counting limit the request passed.
    pub fn observe_response(
        &self,
        decision: &Decision,
        response: &ResponseFacts,
    ) -> Vec<SharedAdjust> {
        let mut shared = Vec::new();
        let Some(reported) = response.reported_cost else {
            return shared;
        };
        if !reported.is_finite() || reported < 0.0 {
            return shared;
        }
        let reported = reported.min(1e12).round() as i64;
        for o in &decision.limits {
            if o.unit != Unit::Cost || o.charged == 0 {
                continue;
            }
            let delta = reported - o.charged as i64;
            if delta == 0 {
                continue;
            }
            shared.extend(self.adjust(o, response.now, delta, None));
        }
        shared
    }

    /// Gives back what a decision's limits charged, for a request the gateway ends up not
    /// serving (a delayed request whose queue was full). Quota reservations are given back by
    /// dropping their [`QuotaSettlement`]. What the shared store counted is queued in
    /// [`Decision::shared_adjust`] for the gateway to send.
    pub fn refund(&self, decision: &mut Decision, now: Nanos) {
        let key_limit = decision.key_limit.as_ref().map(|(_, a)| *a);
        let mut shared = Vec::new();
        for o in &mut decision.limits {
            if o.charged > 0 {
                shared.extend(self.adjust(o, now, -(o.charged as i64), key_limit.as_ref()));
                o.charged = 0;
            }
        }
        decision.shared_adjust.extend(shared);
    }

    /// Adds (or, negative, gives back) units to the cell a limit outcome was counted in; for
    /// an outcome the shared store counted, returns the adjustment to send it instead.
    fn adjust(
        &self,
        o: &LimitOutcome,
        now: Nanos,
        delta: i64,
        key_limit: Option<&Algorithm>,
    ) -> Option<SharedAdjust> {
        if o.index == KEY_LIMIT_INDEX {
            if let Some(alg) = key_limit {
                self.key_table.adjust(alg, o.key, now, delta);
            }
        } else if let (Some(spec), Some(table)) =
            (self.policy.limits.get(o.index), self.tables.get(o.index))
        {
            if let Some(key) = o.shared {
                return Some(SharedAdjust {
                    index: o.index,
                    limit: spec.name.clone(),
                    key,
                    algorithm: spec.algorithm,
                    delta,
                });
            }
            table.adjust(&spec.algorithm, o.key, now, delta);
        }
        None
    }

    /// The identity dimensions the policy keys on, with this request's values (for the log).
    pub fn identity_of(&self, facts: &RequestFacts<'_>, route: usize) -> Vec<(String, String)> {
        let route_name = self
            .policy
            .route(route)
            .map(|r| &*r.name)
            .unwrap_or("default");
        let mut out = vec![("ip".to_owned(), facts.client_ip.to_string())];
        if let Some(p) = facts.auth.principal() {
            if let Some(id) = &p.key_id {
                out.push(("api_key".to_owned(), id.to_string()));
            }
            if let Some(a) = &p.account {
                out.push(("account".to_owned(), a.to_string()));
            }
            for (claim, v) in &p.claims {
                out.push((format!("jwt:{claim}"), v.to_string()));
            }
        }
        if let Some(j) = facts.ja4h {
            out.push(("ja4h".to_owned(), j.to_owned()));
        }
        if let Some(i) = facts.ip_info {
            if i.asn != 0 {
                out.push(("asn".to_owned(), format!("AS{}", i.asn)));
                out.push(("as_name".to_owned(), i.as_name.to_string()));
            }
            if !i.country.is_empty() {
                out.push(("country".to_owned(), i.country.to_string()));
            }
            if let Some(c) = i.category {
                out.push(("network".to_owned(), c.name().to_owned()));
            }
            if i.tor_exit {
                out.push(("tor_exit".to_owned(), "true".to_owned()));
            }
        }
        for spec in &self.policy.limits {
            for part in &spec.key {
                if matches!(
                    part,
                    KeyPart::Ip
                        | KeyPart::Route
                        | KeyPart::Method
                        | KeyPart::ApiKey
                        | KeyPart::Account
                        | KeyPart::Jwt(_)
                        | KeyPart::Ja4h
                        | KeyPart::Asn
                        | KeyPart::Country
                ) {
                    continue;
                }
                let name = part.to_string();
                if out.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                if let Some(v) = display_value(part, facts, route_name) {
                    out.push((name, v));
                }
            }
        }
        out
    }

    /// "Why was this client limited?": the state of every limit keyed by exactly this dimension.
    pub fn identity(
        &self,
        dimension: &KeyPart,
        value: &str,
        now: Nanos,
        now_unix_ms: u64,
    ) -> Result<IdentityReport, IdentityError> {
        let bad = || IdentityError::BadValue(value.to_owned(), dimension.to_string());
        let owned_bytes;
        let (kv, shown, ip) = match dimension {
            KeyPart::Ip => {
                let ip: IpAddr = value.parse().map_err(|_| bad())?;
                let ip = ip.to_canonical();
                (KeyValue::Ip(ip, 255), ip.to_string(), Some(ip))
            }
            KeyPart::IpPrefix { v4, v6 } => {
                let addr = value.split('/').next().unwrap_or(value);
                let ip: IpAddr = addr.parse().map_err(|_| bad())?;
                let ip = ip.to_canonical();
                let len = if ip.is_ipv4() { *v4 } else { *v6 };
                let net = mask(ip, *v4, *v6);
                (KeyValue::Ip(net, len), format!("{net}/{len}"), Some(ip))
            }
            KeyPart::Route => {
                let id = self.policy.route_id(value).ok_or_else(bad)?;
                (KeyValue::Route(id), value.to_owned(), None)
            }
            KeyPart::Asn => {
                let n: u64 = value
                    .trim_start_matches("AS")
                    .trim_start_matches("as")
                    .parse()
                    .map_err(|_| bad())?;
                (KeyValue::Num(n), format!("AS{n}"), None)
            }
            KeyPart::Country => {
                owned_bytes = value.to_ascii_uppercase().into_bytes();
                (
                    KeyValue::Bytes(&owned_bytes),
                    value.to_ascii_uppercase(),
                    None,
                )
            }
            KeyPart::Header(_)
            | KeyPart::Method
            | KeyPart::ApiKey
            | KeyPart::Account
            | KeyPart::Jwt(_)
            | KeyPart::Ja4h => {
                owned_bytes = value.as_bytes().to_vec();
                (KeyValue::Bytes(&owned_bytes), value.to_owned(), None)
            }
        };
        let mut limits = Vec::new();
        for (spec, table) in self.policy.limits.iter().zip(&self.tables) {
            if !spec.key.contains(dimension) {
                continue;
            }
            let key_name = spec
                .key
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("+");
            let mut report = LimitStateReport {
                limit: spec.name.to_string(),
                key: key_name,
                tracked: false,
                remaining: spec.quota,
                quota: spec.quota,
                window_secs: spec.window_secs,
                reset_secs: 0,
                note: None,
            };
            if spec.key.len() != 1 {
                report.note = Some("composite key: look up the state with all of its dimensions in the decision log".to_owned());
            } else {
                let hash = key_hash_of_values(&table.hasher, std::slice::from_ref(&kv));
                if let Some(v) = table.peek(&spec.algorithm, hash, now) {
                    report.tracked = true;
                    report.remaining = v.remaining;
                    report.reset_secs = ceil_secs(v.reset);
                }
            }
            limits.push(report);
        }
        let quotas = self.quota_report(dimension, value, now_unix_ms);
        let (behaviour, behaviour_tracked) = match &self.behaviour {
            Some(b) => {
                use crate::behaviour::Dim;
                let key = match (dimension, &kv) {
                    (KeyPart::Ip, KeyValue::Ip(a, _)) => Some((Dim::Ip, b.ip_key(Dim::Ip, *a))),
                    (KeyPart::IpPrefix { .. }, KeyValue::Ip(a, _)) => {
                        Some((Dim::Prefix, b.ip_key(Dim::Prefix, *a)))
                    }
                    (KeyPart::ApiKey, _) => {
                        Some((Dim::ApiKey, b.key_of(Dim::ApiKey, value.as_bytes())))
                    }
                    (KeyPart::Account, _) => {
                        Some((Dim::Account, b.key_of(Dim::Account, value.as_bytes())))
                    }
                    (KeyPart::Ja4h, _) => Some((Dim::Ja4h, b.key_of(Dim::Ja4h, value.as_bytes()))),
                    (KeyPart::Asn, KeyValue::Num(n)) => u32::try_from(*n)
                        .ok()
                        .map(|n| (Dim::Asn, b.key_of(Dim::Asn, &n.to_be_bytes()))),
                    _ => None,
                };
                match key {
                    Some((dim, key)) if b.policy().track.contains(&dim) => (
                        b.report(dim, key, now, &|i| self.behaviour_signal_name(i)),
                        true,
                    ),
                    _ => (None, false),
                }
            }
            None => (None, false),
        };
        Ok(IdentityReport {
            behaviour,
            behaviour_tracked,
            quotas,
            dimension: dimension.to_string(),
            value: shown,
            allowlisted: ip.is_some_and(|ip| self.policy.lists.allow.contains(ip)),
            denylisted: ip.is_some_and(|ip| self.policy.lists.deny.contains(ip)),
            limits,
        })
    }
}

fn stronger(a: Action, than: Option<Action>) -> bool {
    match (a, than) {
        (_, None) => true,
        (Action::Limit { retry_after: x }, Some(Action::Limit { retry_after: y })) => x > y,
        (Action::Delay { wait: x }, Some(Action::Delay { wait: y })) => x > y,
        (a, Some(b)) => a.severity() > b.severity(),
    }
}
