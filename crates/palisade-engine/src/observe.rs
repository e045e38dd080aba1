//! After the answer: behaviour learns the status, cost-counting limits are corrected to what
//! the upstream reported, and a request refused after all gets back what it was charged.

use crate::clock::{Nanos, SECOND};
use crate::model::decision::{Action, Decision, LimitOutcome};
use crate::state::limiter::{Algorithm, Unit};

use crate::engine::*;

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
