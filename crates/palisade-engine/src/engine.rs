//! The engine: a compiled [`Policy`] plus the bounded state its limits keep.
//!
//! [`Engine::evaluate`] runs the pipeline for one request (route -> lists -> limits -> signals
//! -> score -> action) and returns a [`Decision`]; [`Engine::observe_response`] charges what the
//! upstream reported the request cost. Neither blocks, allocates more than a few small vectors,
//! or reads a clock.

use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::Nanos;
use crate::decision::{Action, Decision, LimitOutcome, Signal};
use crate::facts::RequestFacts;
use crate::identity::{KeyPart, KeyValue, display_value, key_hash, key_hash_of_values, mask};
use crate::limits::{LimitAction, LimitTable, Unit, ceil_secs};
use crate::policy::{Mode, Policy};
use crate::ratelimit_headers::{HeaderItem, RateLimitHeaders, render};

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
    rule_deny: Arc<str>,
    rule_allow_list: Arc<str>,
    rule_default: Arc<str>,
    rule_score: [Arc<str>; 3],
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
        Self {
            policy,
            tables,
            signal_names,
            header_items,
            rule_deny: Arc::from("list/deny"),
            rule_allow_list: Arc::from("list/allow"),
            rule_default: Arc::from("default/allow"),
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
    pub fn rate_limit_headers(&self, decision: &Decision) -> Option<RateLimitHeaders> {
        render(&decision.limits, &self.header_items)
    }

    /// The state table of each limit, in policy order.
    pub fn tables(&self) -> &[Arc<LimitTable>] {
        &self.tables
    }

    /// Decides one request.
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Result<Decision, EngineError> {
        let p = &self.policy;
        let route = p.routes.route_for(facts.method, facts.path);
        let route_spec = p.route(route).ok_or(EngineError::NoRoute)?;
        let mut d = Decision {
            action: Action::Allow,
            rule: self.rule_default.clone(),
            shadow: None,
            score: 0,
            signals: Vec::new(),
            limits: Vec::new(),
            route,
        };

        // Lists: an allowlisted client skips everything else; a denylisted one is refused.
        let ip = facts.client_ip;
        if p.lists.allow.contains(ip) {
            d.rule = self.rule_allow_list.clone();
            return Ok(d);
        }
        if p.lists.deny.contains(ip) {
            d.signals.push(Signal {
                name: self.rule_deny.clone(),
                weight: 100,
                shadow: false,
            });
            d.score = 100;
            return Ok(self.finish(d, Action::Block, self.rule_deny.clone()));
        }

        // Limits: every matching limit applies.
        let mut enforced: Option<(Action, usize)> = None;
        let mut shadowed: Option<(Action, usize)> = None;
        for (i, spec) in p.limits.iter().enumerate() {
            if !spec.applies(route, facts.method) {
                continue;
            }
            let (Some(table), Some(signal)) = (self.tables.get(i), self.signal_names.get(i)) else {
                continue;
            };
            let Some(key) = key_hash(&table.hasher, &spec.key, facts, route) else {
                continue;
            };
            let cost = match spec.unit {
                Unit::Requests => 1,
                Unit::Cost => route_spec.cost,
            };
            let reserve = match spec.action {
                LimitAction::Delay { max_delay, .. } if p.mode == Mode::Enforce => max_delay,
                _ => 0,
            };
            let verdict = table.check(&spec.algorithm, key, facts.now, cost, reserve);
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
                if stronger(action, slot.map(|s| s.0)) {
                    *slot = Some((action, i));
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
            });
        }

        // A refused request gives back what other limits charged it (a held one keeps its
        // reservations: it will be forwarded).
        if let Some((Action::Limit { .. }, _)) = enforced {
            self.refund(&mut d, facts.now);
        }

        d.score = d
            .signals
            .iter()
            .filter(|s| !s.shadow)
            .fold(0u32, |acc, s| acc + u32::from(s.weight))
            .min(100) as u8;
        let shadow_score = d
            .signals
            .iter()
            .fold(0u32, |acc, s| acc + u32::from(s.weight))
            .min(100) as u8;

        if let Some((_, i)) = shadowed
            && let Some((action, _)) = shadowed
            && let Some(name) = self.signal_names.get(i)
        {
            d.shadow = Some((action, name.clone()));
        }
        if shadow_score > d.score
            && let Some((a, r)) = self.score_action(shadow_score)
            && stronger(a, d.shadow.as_ref().map(|s| s.0))
        {
            d.shadow = Some((a, r));
        }

        let (action, rule) = match enforced {
            Some((a, i)) => (
                a,
                self.signal_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| self.rule_default.clone()),
            ),
            None => self
                .score_action(d.score)
                .unwrap_or((Action::Allow, self.rule_default.clone())),
        };
        Ok(self.finish(d, action, rule))
    }

    fn score_action(&self, score: u8) -> Option<(Action, Arc<str>)> {
        let s = &self.policy.scoring;
        let [tag, challenge, block] = &self.rule_score;
        if s.block_at > 0 && score >= s.block_at {
            Some((Action::Block, block.clone()))
        } else if s.challenge_at > 0 && score >= s.challenge_at {
            Some((Action::Challenge, challenge.clone()))
        } else if s.tag_at > 0 && score >= s.tag_at {
            Some((Action::Tag, tag.clone()))
        } else {
            None
        }
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
    pub fn observe_response(&self, decision: &Decision, response: &ResponseFacts) {
        let Some(reported) = response.reported_cost else {
            return;
        };
        if !reported.is_finite() || reported < 0.0 {
            return;
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
            self.adjust(o, response.now, delta);
        }
    }

    /// Gives back everything a decision charged, for a request the gateway ends up not serving
    /// (a delayed request whose queue was full).
    pub fn refund(&self, decision: &mut Decision, now: Nanos) {
        for o in &mut decision.limits {
            if o.charged > 0 {
                self.adjust(o, now, -(o.charged as i64));
                o.charged = 0;
            }
        }
    }

    /// Adds (or, negative, gives back) units to the cell a limit outcome was counted in.
    fn adjust(&self, o: &LimitOutcome, now: Nanos, delta: i64) {
        if let (Some(spec), Some(table)) =
            (self.policy.limits.get(o.index), self.tables.get(o.index))
        {
            table.adjust(&spec.algorithm, o.key, now, delta);
        }
    }

    /// The identity dimensions the policy keys on, with this request's values (for the log).
    pub fn identity_of(&self, facts: &RequestFacts<'_>, route: usize) -> Vec<(String, String)> {
        let route_name = self
            .policy
            .route(route)
            .map(|r| &*r.name)
            .unwrap_or("default");
        let mut out = vec![("ip".to_owned(), facts.client_ip.to_string())];
        for spec in &self.policy.limits {
            for part in &spec.key {
                if matches!(part, KeyPart::Ip | KeyPart::Route | KeyPart::Method) {
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
            KeyPart::Header(_) | KeyPart::Method => {
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
        Ok(IdentityReport {
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
