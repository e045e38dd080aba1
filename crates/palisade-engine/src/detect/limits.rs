//! Rate limits: every matching limit counts the request under its key (or takes the shared
//! store's verdict in cluster mode); one exceeded is a signal and an action (429, or a delay).

use crate::detect::{Verdicts, stronger};
use crate::engine::Engine;
use crate::model::decision::{Action, Decision, LimitOutcome, Signal};
use crate::model::facts::RequestFacts;
use crate::policy::RouteSpec;
use crate::request::route::RouteId;
use crate::state::limiter::{LimitAction, Verdict};

impl Engine {
    /// Counts the request in every matching limit. A verdict the shared store already gave
    /// (cluster mode) stands for the local table's.
    // Called once per request: inlined into the pipeline, as it was before it had a file.
    #[inline(always)]
    pub(crate) fn limits(
        &self,
        d: &mut Decision,
        facts: &RequestFacts<'_>,
        route: RouteId,
        route_spec: &RouteSpec,
        shared: &[(usize, Verdict, u64)],
        v: &mut Verdicts,
    ) {
        let p = &self.policy;
        // Room for every limit at once: a vector grown push by push allocates twice for five.
        d.limits.reserve(p.limits.len());
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
                    discounted: false,
                    detail: None,
                });
                let action = match spec.action {
                    LimitAction::Delay { max_delay, .. } if verdict.retry_after <= max_delay => {
                        Action::Delay {
                            wait: verdict.retry_after,
                        }
                    }
                    LimitAction::Challenge => Action::Challenge,
                    _ => Action::Limit {
                        retry_after: verdict.retry_after,
                    },
                };
                let slot = if shadow {
                    &mut v.shadowed
                } else {
                    &mut v.enforced
                };
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
    }
}
