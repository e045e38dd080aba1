//! After the answer: behaviour learns the status, cost-counting limits are corrected to what
//! the upstream reported, and a request refused after all gets back what it was charged.

use crate::clock::{Nanos, SECOND};
use crate::model::decision::{Action, Decision, LimitOutcome};
use crate::state::limiter::{Algorithm, Unit};

use crate::engine::*;

/// What an allowed decision leaves for its answer reported later ([`Engine::awaited`]).
#[derive(Debug, Clone, Default)]
pub struct Awaited {
    trace: Option<crate::model::trace::Trace>,
    /// The request's route.
    pub route: crate::request::route::RouteId,
    costs: Vec<LimitOutcome>,
}

/// An answer reported after the decision (the front's access log line).
#[derive(Debug, Clone, Copy)]
pub struct Reported<'a> {
    /// The status the client got.
    pub status: u16,
    /// The cost the upstream reported, for cost-counting limits.
    pub cost: Option<f64>,
    /// The login's username (lower-cased), when the line carried the body.
    pub username: Option<&'a [u8]>,
}

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The upstream (the answer is evidence about the client).
    Upstream,
    /// The gateway itself: a refusal, a bound, an upstream failure.
    Gateway,
}

impl Engine {
    /// Records the answer a decided request got, for behaviour (status mix, 429s, failed
    /// logins, flow steps, route baselines).
    ///
    /// `origin` says who answered: only the upstream's answers are evidence about the client
    /// (its error share, failed logins, a route's baseline). An answer the gateway gave itself
    /// (a refusal, a 502) is not held against the client — except a 429's `Retry-After`, which
    /// the client must honour whoever set it.
    pub fn observe_status(&self, d: &Decision, status: u16, origin: Origin, now: Nanos) {
        let (Some(b), Some(trace)) = (&self.behaviour, &d.trace) else {
            return;
        };
        let retry_after = match d.action {
            Action::Limit { retry_after } => retry_after,
            _ if status == 429 => SECOND,
            _ => 0,
        };
        b.observe(trace, status, origin == Origin::Upstream, retry_after, now);
    }

    /// What an allowed decision leaves for observing an answer that arrives later (the front's
    /// access log line, when Palisade decides but does not forward).
    pub fn awaited(&self, d: &Decision) -> Awaited {
        Awaited {
            trace: d.trace,
            route: d.route,
            costs: d
                .limits
                .iter()
                .filter(|o| o.unit == Unit::Cost && o.charged > 0)
                .cloned()
                .collect(),
        }
    }

    /// Records a later-reported answer of an allowed request ([`Engine::awaited`]): behaviour
    /// learns its status, and cost-counting limits are corrected to the cost reported (the
    /// store's share of the corrections is returned for the gateway to send).
    pub fn observe_awaited(
        &self,
        a: &Awaited,
        answer: &Reported<'_>,
        now: Nanos,
    ) -> Vec<SharedAdjust> {
        if let (Some(b), Some(trace)) = (&self.behaviour, &a.trace) {
            let mut trace = *trace;
            if let Some(u) = answer.username {
                b.learn_username(&mut trace, u);
            }
            let retry_after = if answer.status == 429 { SECOND } else { 0 };
            b.observe(&trace, answer.status, true, retry_after, now);
        }
        let reported_cost = answer.cost;
        self.correct_costs(&a.costs, reported_cost, now)
    }

    /// Charges (or refunds) the difference between what the upstream reported a request cost
    /// and what was charged up front, for every cost-counting limit the request passed.
    pub fn observe_response(
        &self,
        decision: &Decision,
        response: &ResponseFacts,
    ) -> Vec<SharedAdjust> {
        self.correct_costs(&decision.limits, response.reported_cost, response.now)
    }

    /// [`Engine::observe_response`] for the outcomes of cost-counting limits.
    fn correct_costs(
        &self,
        limits: &[LimitOutcome],
        reported: Option<f64>,
        now: Nanos,
    ) -> Vec<SharedAdjust> {
        let mut shared = Vec::new();
        let Some(reported) = reported else {
            return shared;
        };
        if !reported.is_finite() || reported < 0.0 {
            return shared;
        }
        let reported = reported.min(1e12).round() as i64;
        for o in limits {
            if o.unit != Unit::Cost || o.charged == 0 {
                continue;
            }
            let delta = reported - o.charged as i64;
            if delta == 0 {
                continue;
            }
            shared.extend(self.adjust(o, now, delta, None));
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
    pub(crate) fn adjust(
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
}
