//! The observation phase, after the answer is known: the RateLimit headers and the request id
//! for the client, what the shared store counted for a request refused after all, the answer's
//! status for behaviour, the metrics, and the decision log.

use std::sync::Arc;

use palisade_engine::state::limiter::ceil_secs;
use palisade_engine::{Clock, Decision, Nanos, RequestFacts};

use crate::proxy::enforce::Held;
use crate::proxy::facts::ja4h_of;
use crate::telemetry::decision_log::{DecisionRecord, LimitRecord, Reason, rfc3339};
use crate::telemetry::metrics::{DecisionLabels, Label};
use crate::wire::fields::HeadLines;
use crate::wire::headers::names::*;
use crate::wire::request_id::unit_random;
use crate::{Runtime, Shared};

/// The RateLimit headers of the decision's advertised limits, and the request id.
#[inline]
pub fn response_lines(rt: &Runtime, decision: &Decision, request_id: &str, lines: &mut HeadLines) {
    // The same advertised limits always render the same RateLimit-Policy: it is rendered once.
    let policy_set = rt.engine.policy_set(decision);
    let kept_policy = rt.kept_policy(policy_set);
    if let Some(h) = rt
        .engine
        .rate_limit_headers(decision, kept_policy.is_none())
    {
        if let Some(v) = kept_policy.or_else(|| rt.keep_policy(policy_set, h.policy)) {
            lines.line(RATELIMIT_POLICY.as_str().as_bytes(), &[v.as_bytes()]);
        }
        // sf-strings (printable ASCII only, see `ratelimit_headers::sf_string`), digits and
        // separators: always a valid field value.
        lines.line(RATELIMIT.as_str().as_bytes(), &[h.ratelimit.as_bytes()]);
        for (name, n) in [
            (X_RATELIMIT_LIMIT, h.x_limit),
            (X_RATELIMIT_REMAINING, h.x_remaining),
            (X_RATELIMIT_RESET, h.x_reset),
        ] {
            lines.line(
                name.as_str().as_bytes(),
                &[itoa::Buffer::new().format(n).as_bytes()],
            );
        }
    }
    // Sixteen hex digits.
    lines.line(X_REQUEST_ID.as_str().as_bytes(), &[request_id.as_bytes()]);
}

/// A decision record to be written once the answer is known: every non-allow, and allows as
/// sampled. Only logged decisions pay for building one (and only they enter the admin API's
/// recent ring).
pub struct PendingRecord {
    identity: Vec<(String, String)>,
    method: String,
    path: String,
}

/// The record of a decision, if it is logged.
#[inline]
pub fn pending_record(
    rt: &Runtime,
    decision: &Decision,
    facts: &RequestFacts<'_>,
    parts: &http::request::Parts,
) -> Option<PendingRecord> {
    let log_cfg = &rt.compiled.log;
    let logged = decision.logged_action() != "allow"
        || log_cfg.sample_allow >= 1.0
        || (log_cfg.sample_allow > 0.0 && unit_random() < log_cfg.sample_allow);
    if !logged {
        return None;
    }
    let mut identity = match facts.ja4h {
        Some(_) => rt.engine.identity_of(facts, decision.route),
        None => {
            let ja4h = ja4h_of(parts);
            let facts = RequestFacts {
                ja4h: Some(&ja4h),
                ..*facts
            };
            rt.engine.identity_of(&facts, decision.route)
        }
    };
    if let Some(c) = &decision.client {
        identity.push(("bot".to_owned(), c.category.name().to_owned()));
        if let Some((name, status)) = &c.verification {
            identity.push(("bot_claim".to_owned(), format!("{name}:{}", status.name())));
        }
        if let Some(n) = &c.name {
            identity.push(("bot_name".to_owned(), n.to_string()));
        }
    }
    Some(PendingRecord {
        identity,
        method: parts.method.to_string(),
        path: bounded_path(parts.uri.path()),
    })
}

/// What one request came to, for [`observe`].
pub struct Outcome<'a> {
    /// The request id.
    pub request_id: String,
    /// The client's address.
    pub client: std::net::IpAddr,
    /// The route's metric label.
    pub route_label: &'a Arc<str>,
    /// The status the client got.
    pub status: u16,
    /// Who gave it: the upstream, or the gateway itself.
    pub origin: palisade_engine::Origin,
    /// How a hold went.
    pub held: Held,
    /// When the request arrived (engine clock).
    pub arrived: Nanos,
}

/// Settles a decided request after its answer: the store's corrections, behaviour's view of
/// the status, metrics, and the decision log.
#[inline]
pub fn observe(
    shared: &Shared,
    rt: &Runtime,
    decision: &mut Decision,
    outcome: Outcome<'_>,
    record: Option<PendingRecord>,
) {
    // What the shared store counted for a request that was refused after all goes back.
    if let Some(store) = &shared.store {
        store.adjust(std::mem::take(&mut decision.shared_adjust));
    }
    rt.engine
        .observe_status(decision, outcome.status, outcome.origin, shared.clock.now());
    let (action, rule): (&'static str, Arc<str>) = match outcome.held {
        Held::QueueFull => ("limit", Arc::from(format!("{}/queue_full", decision.rule))),
        Held::ClientGone => ("delay", Arc::from(format!("{}/client_gone", decision.rule))),
        Held::No => (decision.logged_action(), decision.logged_rule().clone()),
    };
    let labels = DecisionLabels {
        route: Label(outcome.route_label.clone()),
        action,
        rule: Label(rule.clone()),
    };
    match rt.route_series(decision.route, &shared.metrics) {
        Some(series) if action == "allow" && *rule == *palisade_engine::DEFAULT_ALLOW_RULE => {
            series.allowed.inc();
        }
        _ => {
            shared.metrics.requests.get_or_create(&labels).inc();
        }
    }
    if decision.is_shadowed() {
        shared.metrics.shadow.get_or_create(&labels).inc();
    }
    let Some(PendingRecord {
        identity,
        method,
        path,
    }) = record
    else {
        return;
    };
    let record = DecisionRecord {
        time: rfc3339(shared.clock.unix_ms()),
        request_id: outcome.request_id,
        client_ip: outcome.client.to_string(),
        method,
        path,
        route: outcome.route_label.to_string(),
        status: outcome.status,
        latency_ms: shared.clock.now().saturating_sub(outcome.arrived) as f64 / 1e6,
        identity: identity
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        action: action.to_owned(),
        score: decision.score,
        rule: rule.to_string(),
        reasons: decision
            .signals
            .iter()
            .map(|s| Reason {
                signal: s.name.to_string(),
                weight: s.weight,
                shadow: s.shadow,
                discounted: s.discounted,
            })
            .collect(),
        shadow: decision.is_shadowed(),
        limits: decision
            .limits
            .iter()
            .map(|o| LimitRecord {
                limit: o.name.to_string(),
                allowed: o.verdict.allowed,
                remaining: o.verdict.remaining,
                reset: ceil_secs(o.verdict.reset),
            })
            .collect(),
    };
    if !shared.log.record(record) {
        shared.metrics.log_dropped.inc();
    }
}

/// The path as logged: at most 512 bytes, so one hostile request cannot bloat the log.
fn bounded_path(p: &str) -> String {
    match p.char_indices().nth(512) {
        Some((i, _)) => format!("{}…", p.get(..i).unwrap_or("")),
        None => p.to_owned(),
    }
}
