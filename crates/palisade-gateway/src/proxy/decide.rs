//! The decision phase: the engine decides, alone or with the shared store (cluster mode), and
//! the configured failure policies apply in one place — `on_store_error` when the store does not
//! answer, `on_engine_error` when the engine fails. Daily quotas are reserved in the store for a
//! request about to be forwarded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use palisade_config::{OnEngineError, OnStoreError};
use palisade_engine::state::limiter::Verdict;
use palisade_engine::{Action, ClientCode, Clock, Decision, RequestFacts, RouteId};

use crate::cluster::{QuotaAnswer, QuotaCharge, SharedStore};
use crate::proxy::facts::Bounded;
use crate::refusal::Refusal;
use crate::{Runtime, Shared};

/// What the store's failure means for one request.
enum StoreFailure {
    /// Decide locally.
    Local,
    /// Let the shared checks pass.
    Allow,
    /// Refuse (503).
    Deny,
}

fn on_store_failure(store: &SharedStore, e: &dyn std::fmt::Display, what: &str) -> StoreFailure {
    store.fallbacks.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(error = %e, "shared store failed on {what}; applying on_store_error");
    match store.settings().on_error {
        OnStoreError::Local => StoreFailure::Local,
        OnStoreError::Allow => StoreFailure::Allow,
        OnStoreError::Deny => StoreFailure::Deny,
    }
}

/// Decides `facts` on `route` without a shared store (nothing to wait for). The daily quota
/// reservations the decision holds go to `settlement`.
#[inline(always)]
pub fn local(
    shared: &Shared,
    rt: &Runtime,
    facts: &RequestFacts<'_>,
    route: RouteId,
    settlement: &mut Option<QuotaCharge>,
) -> Decision {
    let t0 = Instant::now();
    let evaluated = rt.engine.evaluate_on(facts, route);
    shared
        .metrics
        .decision_seconds
        .observe(t0.elapsed().as_secs_f64());
    let decision = or_engine_failure(shared, rt, evaluated, route);
    if !decision.quotas.is_empty() {
        *settlement = Some(QuotaCharge::new(
            rt.engine.quota_settlement(&decision),
            None,
        ));
    }
    decision
}

/// The decision, or what `on_engine_error` makes of the engine's failure.
#[inline(always)]
fn or_engine_failure(
    shared: &Shared,
    rt: &Runtime,
    evaluated: Result<Decision, palisade_engine::EngineError>,
    route: RouteId,
) -> Decision {
    match evaluated {
        Ok(d) => d,
        Err(e) => {
            shared.metrics.engine_errors.inc();
            tracing::error!(error = %e, "engine failed; applying on_engine_error");
            let (action, rule, code) = match rt.compiled.server.on_engine_error {
                OnEngineError::Allow => (Action::Allow, "engine/fail_open", None),
                OnEngineError::Deny => (
                    Action::Block,
                    "engine/fail_closed",
                    Some(ClientCode::Unavailable),
                ),
            };
            let mut d = Decision::new(route, Arc::from(rule));
            d.action = action;
            d.code = code;
            d
        }
    }
}

/// Decides `facts` on `route` with the shared store (cluster mode). The daily quota reservations the decision holds go to
/// `settlement` (settled when the upstream answers, given back when dropped unsettled).
pub async fn shared(
    shared: &Shared,
    rt: &Runtime,
    facts: &RequestFacts<'_>,
    route: RouteId,
    settlement: &mut Option<QuotaCharge>,
) -> Result<Decision, Bounded> {
    let t0 = Instant::now();
    // Batched cluster mode: decided locally; the charges are reconciled in the background.
    let batched = shared
        .batcher
        .as_ref()
        .map(|b| (b, rt.engine.shared_checks(facts, route)));
    // Strict cluster mode: the shared limits are counted in the store first (bounded by its
    // timeout).
    let evaluated = match shared.store.as_ref().filter(|_| batched.is_none()) {
        None => rt.engine.evaluate_on(facts, route),
        Some(store) => {
            let checks = rt.engine.shared_checks(facts, route);
            if checks.is_empty() {
                rt.engine.evaluate_on(facts, route)
            } else {
                match store.check(&checks).await {
                    Ok(verdicts) => rt.engine.evaluate_shared(facts, route, &verdicts),
                    Err(e) => match on_store_failure(store, &e, "limits") {
                        StoreFailure::Local => rt.engine.evaluate_on(facts, route),
                        StoreFailure::Allow => {
                            let allowed: Vec<_> = checks
                                .iter()
                                .map(|c| {
                                    let pass = Verdict {
                                        allowed: true,
                                        remaining: c.quota,
                                        reset: 0,
                                        retry_after: 0,
                                    };
                                    (c.index, pass, c.key)
                                })
                                .collect();
                            rt.engine.evaluate_shared(facts, route, &allowed)
                        }
                        StoreFailure::Deny => {
                            return Err((Refusal::Unavailable, "store/unavailable"));
                        }
                    },
                }
            }
        }
    };
    shared
        .metrics
        .decision_seconds
        .observe(t0.elapsed().as_secs_f64());
    let mut decision = or_engine_failure(shared, rt, evaluated, route);
    if let Some((batcher, checks)) = &batched {
        batcher.record(&decision, checks);
    }
    let remote_holds = reserve_shared_quotas(shared, rt, &mut decision, facts.unix_ms).await?;
    // Quota reservations are settled when the upstream answers; dropped unsettled (refused,
    // client gone, upstream failed), they are given back.
    if !decision.quotas.is_empty() {
        *settlement = Some(QuotaCharge::new(
            rt.engine.quota_settlement(&decision),
            remote_holds,
        ));
    }
    Ok(decision)
}

/// Cluster mode: daily quotas are money, so a request about to be forwarded reserves them in the
/// shared store too, whatever `sync` says (bounded by the store's timeout). Over a budget there,
/// it is refused as a local refusal would refuse it.
async fn reserve_shared_quotas(
    shared: &Shared,
    rt: &Runtime,
    decision: &mut Decision,
    unix_ms: u64,
) -> Result<
    Option<(
        Arc<SharedStore>,
        Vec<palisade_engine::state::quota_ledger::QuotaHold>,
    )>,
    Bounded,
> {
    let Some(store) = &shared.store else {
        return Ok(None);
    };
    if decision.quotas.is_empty() || !decision.action.forwards() {
        return Ok(None);
    }
    let ledger = rt.engine.quota_ledger();
    match store.reserve_quotas(&decision.quotas).await {
        Ok(QuotaAnswer::Reserved(totals)) => {
            for (h, (r, s)) in decision.quotas.iter_mut().zip(totals) {
                ledger.observe_fleet(&h.quota, &h.identity, h.day, r, s);
                h.requests_remaining = h.requests_per_day.map(|m| m.saturating_sub(r));
                h.spend_remaining = h.spend_per_day.map(|m| m.saturating_sub(s));
            }
            Ok(Some((store.clone(), decision.quotas.clone())))
        }
        Ok(QuotaAnswer::Exceeded {
            index,
            budget,
            requests,
            spend,
        }) => {
            let row = decision
                .quotas
                .get(index)
                .map(|h| (h.quota.clone(), h.identity.clone(), h.day));
            rt.engine
                .refuse_quota(decision, index, budget, unix_ms, shared.clock.now());
            // Known exhausted: later requests are refused here without asking.
            if let Some((q, i, day)) = row {
                ledger.observe_fleet(&q, &i, day, requests, spend);
            }
            Ok(None)
        }
        Err(e) => match on_store_failure(store, &e, "quotas") {
            StoreFailure::Deny => {
                drop(rt.engine.quota_settlement(decision));
                rt.engine.refund(decision, shared.clock.now());
                store.adjust(std::mem::take(&mut decision.shared_adjust));
                Err((Refusal::Unavailable, "store/unavailable"))
            }
            StoreFailure::Local | StoreFailure::Allow => Ok(None),
        },
    }
}
