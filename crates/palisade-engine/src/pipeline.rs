//! The pipeline: one request through the detectors in order, to a decision. Each stage is a
//! method in [`crate::detect`]; the order and what stops it are here.

use std::sync::Arc;

use crate::clock::Nanos;
use crate::model::decision::{Action, Decision};
use crate::model::facts::RequestFacts;
use crate::model::identity::key_hash;
use crate::policy::{Mode, RouteSpec};
use crate::request::route::RouteId;
use crate::state::limiter::{LimitAction, Unit};

use crate::detect::{Verdicts, stronger};
use crate::engine::*;

impl Engine {
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
    pub(crate) fn limit_plan<B: std::hash::BuildHasher>(
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
        d.cleared = facts.clearance.is_some();

        // Lists, honeypots and blocks refuse before anything is counted.
        if let Some(refused) = self.deny_listed(&mut d, facts) {
            return Ok(refused);
        }
        if let Some(refused) = self.honeypot(&mut d, facts) {
            return Ok(refused);
        }
        if let Some(refused) = self.blocked(&mut d, facts) {
            return Ok(refused);
        }
        // Authentication is access control, not abuse detection: it is enforced in shadow mode
        // too, and the allow list does not bypass it.
        if let Some(refused) = self.authenticate(&mut d, facts, route_spec) {
            return Ok(refused);
        }
        // An allowlisted client skips limits, quotas and checks.
        if self.allow_listed(facts) {
            d.rule = self.rule_allow_list.clone();
            return Ok(d);
        }

        // Injection probes: a class set to block refuses here; the others are signals.
        if let Some(refused) = self.probes(&mut d, facts) {
            return Ok(refused);
        }
        // Signals, then limits and quotas, then rules and the score: room for them made once,
        // rather than grown push by push.
        d.signals.reserve(8);
        d.limits.reserve(p.limits.len());
        let mut v = Verdicts::default();
        // Before the bot stage, which can refuse at once: a forged signature is in its reasons.
        self.signed_agent_signal(&mut d, facts);
        if let Some(refused) = self.bots(&mut d, facts, &mut v) {
            return Ok(refused);
        }
        self.intel(&mut d, facts);
        self.header_consistency(&mut d, facts);
        self.fingerprint_consistency(&mut d, facts);
        if let Some(c) = facts.clearance {
            for (name, weight) in crate::model::facts::BROWSER_SIGNALS.iter().zip(c.signals) {
                if weight > 0 {
                    d.signals.push(crate::model::decision::Signal {
                        name: (*name).into(),
                        weight,
                        shadow: false,
                        discounted: false,
                        detail: None,
                    });
                }
            }
        }
        self.behaviour_signals(&mut d, facts, route);
        self.limits(&mut d, facts, route, route_spec, shared, &mut v);
        let Verdicts {
            mut enforced,
            mut shadowed,
            tag_floor,
        } = v;
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
        if matches!(enforced, Some((Action::Limit { .. }, _)))
            || (matches!(enforced, Some((Action::Challenge, _))) && !d.cleared)
        {
            self.refund(&mut d, facts.now);
        }

        d.score = d.signal_score(false);

        // Explicit rules: `score` rules add signals; the first other match decides.
        let decided = self.run_rules(&mut d, facts, route_spec);
        // A solved challenge takes its discount off the score while its clearance lasts.
        let discount = facts.clearance.map_or(0, |c| c.discount);
        d.score = d.signal_score(false).saturating_sub(discount);
        let shadow_score = d.signal_score(true).saturating_sub(discount);

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
        let from_rule = decided.is_some();
        let mut scored = match decided {
            Some((None, rule)) => Some((Action::Allow, rule)),
            Some((Some(a), rule)) => Some((a, rule)),
            None => self.score_action(d.score, &d),
        };
        if let Some((Action::Delay { .. }, rule)) = &scored {
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
                if s.0 == Action::Block && (s.1 == self.rule_throttle || from_rule) =>
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
        let (action, rule) = self.unsolved_challenge(&d, facts, action, rule);
        // Settled in place: the decision is a few hundred bytes, and passing it through
        // `finish` by value copies it twice more.
        self.settle(&mut d, action, rule);
        Ok(d)
    }

    /// A challenge put to a client that is not cleared is an offence on the progressive
    /// throttling ladder: one that keeps coming back without solving climbs it (a step per
    /// `throttle` period) and past its last step is blocked like any repeat offender.
    fn unsolved_challenge(
        &self,
        d: &Decision,
        facts: &RequestFacts<'_>,
        action: Action,
        rule: Arc<str>,
    ) -> (Action, Arc<str>) {
        if action != Action::Challenge || d.cleared || self.policy.mode != Mode::Enforce {
            return (action, rule);
        }
        let (Some(b), Some(trace)) = (&self.behaviour, &d.trace) else {
            return (action, rule);
        };
        let s = &self.policy.scoring;
        let level = b.throttle(trace, facts.now, true, &s.throttle, s.relax_after);
        if usize::from(level) > s.throttle.len() {
            self.throttle(d, facts)
        } else {
            (action, rule)
        }
    }

    /// Applies the mode: in shadow mode anything beyond tagging is logged, not enforced.
    pub(crate) fn finish(&self, mut d: Decision, action: Action, rule: Arc<str>) -> Decision {
        self.settle(&mut d, action, rule);
        d
    }

    /// [`Engine::finish`] on a decision in place.
    fn settle(&self, d: &mut Decision, action: Action, rule: Arc<str>) {
        // A cleared client is not challenged again: it already paid.
        let (action, rule) = if action == Action::Challenge && d.cleared {
            (Action::Allow, self.rule_cleared.clone())
        } else {
            (action, rule)
        };
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
    }
}
