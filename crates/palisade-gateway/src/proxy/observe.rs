//! The observation phase, after the answer is known: the RateLimit headers and the request id
//! for the client, what the shared store counted for a request refused after all, the answer's
//! status for behaviour, the metrics, and the decision log.

use std::sync::Arc;

use palisade_engine::explain::IdentityValue;
use palisade_engine::state::limiter::ceil_secs;
use palisade_engine::{Clock, Decision, Nanos, RequestFacts};

use crate::proxy::enforce::Held;
use crate::proxy::facts::hfp_of;
use crate::telemetry::decision_log::Line;
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
/// sampled. Only logged decisions pay for one (and only they enter the admin API's recent
/// ring). What the request is — method, path, identity — is written now, while the request is
/// at hand, straight into the JSON it will be part of.
pub struct PendingRecord {
    /// `"method":…,"path":…` then, from `identity_at`, the identity object.
    json: Vec<u8>,
    identity_at: usize,
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
    let mut line = Line::new();
    line.k("method")
        .str(parts.method.as_str())
        .k("path")
        .str(&bounded_path(parts.uri.path()));
    let identity_at = line.as_bytes().len();
    line.open();
    let mut write = |name: &str, v: IdentityValue<'_>| {
        line.key(name);
        match v {
            IdentityValue::Str(s) => line.str(s),
            IdentityValue::Bytes(b) => line.bytes(b),
            IdentityValue::Ip(ip) => line.ip(ip),
            IdentityValue::Net(ip, len) => line.net(ip, len),
            IdentityValue::Asn(n) => {
                let mut s = String::with_capacity(12);
                s.push_str("AS");
                s.push_str(itoa::Buffer::new().format(n));
                line.str(&s)
            }
        };
    };
    // Every logged decision carries the header fingerprint (JA4H only where the policy opted
    // in to it: FoxIO licence).
    match facts.hfp {
        Some(_) => rt.engine.identity_each(facts, decision.route, &mut write),
        None => {
            let hfp = hfp_of(parts);
            let facts = RequestFacts {
                hfp: Some(&hfp),
                ..*facts
            };
            rt.engine.identity_each(&facts, decision.route, &mut write);
        }
    }
    if let Some(c) = &decision.client {
        write("bot", IdentityValue::Str(c.category.name()));
        if let Some((name, status)) = &c.verification {
            write(
                "bot_claim",
                IdentityValue::Str(&format!("{name}:{}", status.name())),
            );
        }
        if let Some(n) = &c.name {
            write("bot_name", IdentityValue::Str(n));
        }
    }
    if let Some((claimed, observed)) = &decision.fingerprint_mismatch {
        write("claimed_family", IdentityValue::Str(claimed));
        write("observed_family", IdentityValue::Str(observed));
    }
    line.close();
    Some(PendingRecord {
        json: line.finish(),
        identity_at,
    })
}

/// What one request came to, for [`observe`].
pub struct Outcome<'a> {
    /// The request id.
    pub request_id: crate::wire::request_id::RequestId,
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
    // One reading of the clock serves behaviour, the latency metric and the log line.
    let now = shared.clock.now();
    let unix_ms = shared.clock.unix_ms_at(now);
    rt.engine
        .observe_status(decision, outcome.status, outcome.origin, now);
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
    let forwarded = outcome.origin == palisade_engine::Origin::Upstream;
    let latency = now.saturating_sub(outcome.arrived);
    shared.series.record(
        unix_ms / 1000,
        action,
        decision.route,
        matches!(action, "limit" | "block" | "unauthorized" | "challenge"),
        forwarded.then(|| latency as f64 / 1e6),
    );
    let Some(pending) = record else {
        return;
    };
    let (head, identity) = pending
        .json
        .split_at(pending.identity_at.min(pending.json.len()));
    let mut line = Line::new();
    line.open()
        .k("time")
        .time(unix_ms)
        .k("request_id")
        .str(&outcome.request_id)
        .k("client_ip")
        .ip(outcome.client);
    line.raw(b",")
        .raw(head)
        .k("route")
        .str(outcome.route_label)
        .k("status")
        .u64(u64::from(outcome.status))
        .k("latency_ms")
        .millis(latency)
        .k("identity")
        .raw(identity);
    line.k("action")
        .str(action)
        .k("score")
        .u64(u64::from(decision.score))
        .k("rule")
        .str(&rule)
        .k("reasons")
        .open_array();
    for s in &decision.signals {
        line.element()
            .open()
            .k("signal")
            .str(&s.name)
            .k("weight")
            .u64(u64::from(s.weight));
        if s.shadow {
            line.k("shadow").bool(true);
        }
        if s.discounted {
            line.k("discounted").bool(true);
        }
        if let Some(detail) = &s.detail {
            line.k("detail").str(detail);
        }
        line.close();
    }
    line.close_array()
        .k("shadow")
        .bool(decision.is_shadowed())
        .k("limits")
        .open_array();
    for o in &decision.limits {
        line.element()
            .open()
            .k("limit")
            .str(&o.name)
            .k("allowed")
            .bool(o.verdict.allowed)
            .k("remaining")
            .u64(o.verdict.remaining)
            .k("reset")
            .u64(ceil_secs(o.verdict.reset))
            .close();
    }
    line.close_array().close();
    if !shared.log.record(line.as_bytes()) {
        shared.metrics.log_dropped.inc();
    }
}

/// The path as logged: at most 512 characters, so one hostile request cannot bloat the log.
fn bounded_path(p: &str) -> std::borrow::Cow<'_, str> {
    if p.len() <= 512 {
        return std::borrow::Cow::Borrowed(p);
    }
    match p.char_indices().nth(512) {
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}…", p.get(..i).unwrap_or(""))),
        None => std::borrow::Cow::Borrowed(p),
    }
}
