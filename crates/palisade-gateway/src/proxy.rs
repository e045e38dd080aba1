//! The request path: bounds -> facts -> decision -> enforcement -> forward -> observe -> log.
//! Nothing here panics, blocks, or tells the client which rule fired.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use palisade_config::OnEngineError;
use palisade_engine::client_ip::client_ip;
use palisade_engine::limits::ceil_secs;
use palisade_engine::{Action, Clock, Decision, RequestFacts, ResponseFacts};

use crate::body::{Bounded, ProxyBody, is_body_too_large};
use crate::log::{DecisionRecord, LimitRecord, Reason, rfc3339};
use crate::metrics::{DecisionLabels, Label, RouteLabels, UpstreamErrorLabels};
use crate::respond::Refusal;
use crate::upstream::names::*;
use crate::upstream::{set_forwarding_headers, strip_hop_by_hop, strip_palisade_headers};
use crate::{Runtime, Shared};

/// Handles one request; never fails (errors become responses).
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    let arrived = Instant::now();
    let rt = shared.runtime.load_full();
    let request_id = request_id();
    let (mut parts, body) = req.into_parts();
    let server = &rt.compiled.server;

    // Bounds that hyper does not already enforce for every protocol.
    let head_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if parts.headers.len() > server.max_header_count || head_bytes > server.max_header_bytes {
        return Ok(bounded_refusal(
            &shared,
            Refusal::HeadersTooLarge,
            &request_id,
            "bounds/headers",
        ));
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > server.max_body_bytes) {
        return Ok(bounded_refusal(
            &shared,
            Refusal::BodyTooLarge,
            &request_id,
            "bounds/body",
        ));
    }

    // Facts and decision.
    let client = client_ip(peer.ip(), &parts.headers, &server.trusted_proxies);
    let now = shared.clock.now();
    let facts = RequestFacts {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        client_ip: client,
        peer_ip: peer.ip(),
        now,
    };
    let t0 = Instant::now();
    let evaluated = rt.engine.evaluate(&facts);
    shared
        .metrics
        .decision_seconds
        .observe(t0.elapsed().as_secs_f64());
    let mut decision = match evaluated {
        Ok(d) => d,
        Err(e) => {
            shared.metrics.engine_errors.inc();
            tracing::error!(error = %e, "engine failed; applying on_engine_error");
            let route = rt
                .compiled
                .policy
                .routes
                .route_for(&parts.method, parts.uri.path());
            let (action, rule) = match server.on_engine_error {
                OnEngineError::Allow => (Action::Allow, "engine/fail_open"),
                OnEngineError::Deny => (Action::Block, "engine/fail_closed"),
            };
            Decision {
                action,
                rule: Arc::from(rule),
                shadow: None,
                score: 0,
                signals: Vec::new(),
                limits: Vec::new(),
                route,
            }
        }
    };
    let route_label = rt.route_label(decision.route);
    // Whether this decision is logged: every non-allow, and allows as sampled. Only logged
    // decisions pay for building a record (and only they enter the admin API's recent ring).
    let log_cfg = &rt.compiled.log;
    let logged = decision.logged_action() != "allow"
        || log_cfg.sample_allow >= 1.0
        || (log_cfg.sample_allow > 0.0 && rand::random::<f64>() < log_cfg.sample_allow);
    let pending_record = logged.then(|| {
        (
            rt.engine.identity_of(&facts, decision.route),
            parts.method.to_string(),
            bounded_path(parts.uri.path()),
        )
    });

    // Enforcement.
    let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
    let mut queue_full = false;
    let refusal = match decision.action {
        Action::Limit { retry_after } => Some(Refusal::RateLimited {
            retry_after: ceil_secs(retry_after).max(1),
        }),
        Action::Block if decision.rule.starts_with("engine/") => Some(Refusal::Unavailable),
        Action::Block => Some(Refusal::Forbidden),
        Action::Challenge => Some(Refusal::ChallengeRequired),
        Action::Delay { wait } => {
            for o in decision
                .limits
                .iter()
                .filter(|o| !o.verdict.allowed && !o.shadow)
            {
                if let Some(Some(sem)) = rt.delay_queues.get(o.index) {
                    match sem.clone().try_acquire_owned() {
                        Ok(p) => permits.push(p),
                        Err(_) => queue_full = true,
                    }
                }
            }
            if queue_full {
                // Not held, so not served: give back what the engine reserved for it.
                permits.clear();
                rt.engine.refund(&mut decision, shared.clock.now());
                Some(Refusal::RateLimited {
                    retry_after: ceil_secs(wait).max(1),
                })
            } else {
                tokio::time::sleep(Duration::from_nanos(wait)).await;
                // The queue bounds requests *waiting*; once forwarded they no longer count.
                permits.clear();
                None
            }
        }
        Action::Allow | Action::Tag => None,
    };

    let mut response = match refusal {
        Some(r) => r.response(&request_id),
        None => {
            let host = parts
                .headers
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()));
            strip_hop_by_hop(&mut parts.headers);
            strip_palisade_headers(&mut parts.headers);
            set_forwarding_headers(
                &mut parts.headers,
                peer.ip(),
                server.trusted_proxies.contains(peer.ip()),
                host.as_deref(),
            );
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                parts.headers.insert(X_REQUEST_ID, v);
            }
            if decision.action == Action::Tag {
                parts.headers.insert(
                    X_PALISADE_SCORE,
                    HeaderValue::from(u16::from(decision.score)),
                );
                let names: Vec<&str> = decision
                    .signals
                    .iter()
                    .filter(|s| !s.shadow)
                    .map(|s| &*s.name)
                    .collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
                    parts.headers.insert(X_PALISADE_SIGNALS, v);
                }
            }
            match forward(
                &shared,
                &rt,
                parts,
                body,
                &decision,
                &route_label,
                host.as_deref(),
            )
            .await
            {
                Ok(resp) => resp,
                Err(r) => r.response(&request_id),
            }
        }
    };
    if let Some(h) = rt.engine.rate_limit_headers(&decision) {
        let hs = response.headers_mut();
        if let Ok(v) = HeaderValue::try_from(h.policy) {
            hs.insert(RATELIMIT_POLICY, v);
        }
        if let Ok(v) = HeaderValue::try_from(h.ratelimit) {
            hs.insert(RATELIMIT, v);
        }
        hs.insert(X_RATELIMIT_LIMIT, HeaderValue::from(h.x_limit));
        hs.insert(X_RATELIMIT_REMAINING, HeaderValue::from(h.x_remaining));
        hs.insert(X_RATELIMIT_RESET, HeaderValue::from(h.x_reset));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }

    // Log and metrics.
    let status = response.status().as_u16();
    let (action, rule): (&'static str, Arc<str>) = if queue_full {
        ("limit", Arc::from(format!("{}/queue_full", decision.rule)))
    } else {
        (decision.logged_action(), decision.logged_rule().clone())
    };
    let labels = DecisionLabels {
        route: Label(route_label.clone()),
        action,
        rule: Label(rule.clone()),
    };
    shared.metrics.requests.get_or_create(&labels).inc();
    if decision.is_shadowed() {
        shared.metrics.shadow.get_or_create(&labels).inc();
    }
    if let Some((identity, method, path)) = pending_record {
        let record = DecisionRecord {
            time: rfc3339(shared.clock.unix_ms()),
            request_id,
            client_ip: client.to_string(),
            method,
            path,
            route: route_label.to_string(),
            status,
            latency_ms: arrived.elapsed().as_secs_f64() * 1000.0,
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
    Ok(response)
}

/// The path as logged: at most 512 bytes, so one hostile request cannot bloat the log.
fn bounded_path(p: &str) -> String {
    match p.char_indices().nth(512) {
        Some((i, _)) => format!("{}…", p.get(..i).unwrap_or("")),
        None => p.to_owned(),
    }
}

/// Answers a request refused before the engine saw it (bounds), counting it.
fn bounded_refusal(
    shared: &Shared,
    r: Refusal,
    request_id: &str,
    rule: &str,
) -> Response<ProxyBody> {
    shared
        .metrics
        .requests
        .get_or_create(&DecisionLabels {
            route: Label(Arc::from("-")),
            action: "reject",
            rule: Label(Arc::from(rule)),
        })
        .inc();
    r.response(request_id)
}

/// Sends the request upstream and returns its response with a streaming body.
async fn forward(
    shared: &Shared,
    rt: &Runtime,
    parts: http::request::Parts,
    body: Incoming,
    decision: &Decision,
    route_label: &Arc<str>,
    host: Option<&str>,
) -> Result<Response<ProxyBody>, Refusal> {
    let server = &rt.compiled.server;
    let route = rt.compiled.policy.route(decision.route);
    let upstream = route
        .and_then(|r| rt.upstreams.get(r.upstream))
        .or_else(|| rt.upstreams.first())
        .ok_or(Refusal::UpstreamUnavailable)?;
    let body = Bounded::new(body, server.max_body_bytes).boxed_unsync();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_nanos(server.upstream_timeout),
        upstream.send(parts, body, host),
    )
    .await;
    let err_kind = |kind: &'static str| {
        shared
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                route: Label(route_label.clone()),
                kind,
            })
            .inc();
    };
    let resp = match result {
        Err(_) => {
            err_kind("timeout");
            return Err(Refusal::UpstreamTimeout);
        }
        Ok(Err(e)) => {
            if is_body_too_large(&e) {
                err_kind("body_too_large");
                return Err(Refusal::BodyTooLarge);
            }
            let kind = if e.is_connect() { "connect" } else { "other" };
            err_kind(kind);
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
            return Err(Refusal::UpstreamUnavailable);
        }
        Ok(Ok(resp)) => resp,
    };
    shared
        .metrics
        .upstream_seconds
        .get_or_create(&RouteLabels {
            route: Label(route_label.clone()),
        })
        .observe(started.elapsed().as_secs_f64());

    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    if let Some(name) = route.and_then(|r| r.cost_header.as_ref()) {
        let reported = rparts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        rt.engine.observe_response(
            decision,
            &ResponseFacts {
                status: rparts.status.as_u16(),
                reported_cost: reported,
                now: shared.clock.now(),
            },
        );
    }
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades are not proxied (yet); do not pretend they work.
        return Err(Refusal::UpstreamUnavailable);
    }
    rparts.version = http::Version::HTTP_11;
    Ok(Response::from_parts(rparts, rbody))
}

/// A 16-hex-digit request id, without going through `format!`.
fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::random::<u64>();
    let mut out = [0u8; 16];
    for slot in out.iter_mut().rev() {
        *slot = HEX.get((n & 0xf) as usize).copied().unwrap_or(b'0');
        n >>= 4;
    }
    String::from_utf8_lossy(&out).into_owned()
}
