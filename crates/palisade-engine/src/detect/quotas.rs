//! A key's own rate limit and daily budgets, and the daily quotas: reserved for a request the
//! limits let through, refused past a budget.

use std::sync::Arc;

use crate::model::code::ClientCode;

use crate::clock::{Nanos, SECOND};
use crate::model::decision::{Action, Decision, LimitOutcome, Signal};
use crate::model::facts::RequestFacts;
use crate::model::identity::{KeyValue, key_hash_of_values};
use crate::model::principal::Principal;
use crate::policy::{Mode, RouteSpec};
use crate::state::limiter::{Algorithm, Unit};
use crate::state::quota_ledger::{Budget, QuotaCheck, QuotaItems, QuotaKey, secs_to_midnight};

use crate::detect::stronger;
use crate::engine::*;

impl Engine {
    /// Applies the key's own rate limit, if its record has one.
    pub(crate) fn key_limit(
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
                discounted: false,
                detail: None,
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
    pub(crate) fn reserve_quotas(
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
    pub(crate) fn quota_exhausted(
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
            discounted: false,
            detail: None,
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
}
