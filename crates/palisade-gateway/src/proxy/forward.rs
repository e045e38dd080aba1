//! The forwarding phase: the request as the upstream gets it (hop-by-hop headers and the
//! client's `X-Palisade-*` removed, presented keys stripped, forwarding headers and the verified
//! caller added, the score for what is tagged or throttled), sent; and the upstream's answer,
//! charging what it reports (spend, cost). A client's fault on the way is the client's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use palisade_config::KeyForward;
use palisade_engine::state::quota_ledger::MICROS_PER_USD;
use palisade_engine::{Action, Clock, Decision, ResponseFacts};

use crate::auth::{Authenticated, strip_keys};
use crate::client::UpstreamError;
use crate::client::h1::OutBody;
use crate::cluster::QuotaCharge;
use crate::listen::ClientBody;
use crate::refusal::Refusal;
use crate::telemetry::metrics::{Label, RouteLabels, UpstreamErrorLabels};
use crate::wire::body::{Bounded, client_fault, is_body_too_large};
use crate::wire::fields::{Answer, HeadLines};
use crate::wire::headers::names::*;
use crate::wire::headers::{forwarding_lines, strip_hop_by_hop, strip_palisade_headers};
use crate::{Runtime, Shared};

/// What the upstream is sent, beside the request's head.
pub struct Outgoing<'a> {
    /// The credential as verified (the caller's id and account go to the upstream).
    pub authn: &'a Authenticated,
    /// A body already read (signed requests, logins).
    pub buffered: Option<bytes::Bytes>,
    /// The body still to stream.
    pub body: Option<ClientBody>,
    /// The peer's address (the forwarding chain's last hop).
    pub peer: std::net::IpAddr,
    /// The request id (sent as `X-Request-Id`).
    pub request_id: &'a str,
}

/// Rewrites the request for the upstream and sends it; the answer, or the refusal to give
/// instead (502, 504, 413, or the client's fault).
pub async fn forward(
    shared: &Shared,
    rt: &Runtime,
    parts: &mut http::request::Parts,
    out: Outgoing<'_>,
    settlement: Option<QuotaCharge>,
    decision: &Decision,
    route_label: &Arc<str>,
) -> Result<Answer, Refusal> {
    let server = &rt.compiled.server;
    // The client's Host (a shared handle on the read buffer, not a copy); for HTTP/2
    // `:authority` comes first (RFC 9113 section 8.3.1).
    let authority = || {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    };
    let host_value = if parts.version == http::Version::HTTP_2 {
        authority().or_else(|| parts.headers.get(HOST).cloned())
    } else {
        palisade_engine::request::header(&parts.headers, &HOST)
            .filter(|v| v.to_str().is_ok())
            .cloned()
            .or_else(authority)
    };
    if parts.version == http::Version::HTTP_2
        && let Some(h) = &host_value
    {
        // Forwarded over HTTP/1.1, `:authority` becomes the Host.
        parts.headers.insert(HOST, h.clone());
    }
    strip_hop_by_hop(&mut parts.headers);
    strip_palisade_headers(&mut parts.headers);
    if rt.compiled.keys.forward == KeyForward::Strip {
        strip_keys(rt, &mut parts.headers);
    }
    // Who the caller is, as verified: the key's visible id and the account.
    if let Some(p) = out.authn.as_auth().principal() {
        if let Some(id) = &p.key_id
            && let Ok(v) = HeaderValue::from_str(&palisade_keys::key::prefix_of(id))
        {
            parts.headers.insert(X_PALISADE_KEY_ID, v);
        }
        if let Some(a) = &p.account
            && let Ok(v) = HeaderValue::from_str(a)
        {
            parts.headers.insert(X_PALISADE_ACCOUNT, v);
        }
    }
    // The connection's fingerprints, when the operator wants the upstream to have them.
    if server.forward_fingerprints {
        if let Some(t) = parts
            .extensions
            .get::<std::sync::Arc<crate::listen::tls::TlsInfo>>()
            && let Ok(v) = HeaderValue::from_str(&t.ja4)
        {
            parts.headers.insert(X_PALISADE_JA4, v);
        }
        if let Some(f) = parts.extensions.get::<crate::listen::H2Fingerprint>()
            && let Ok(v) = HeaderValue::from_str(&f.0)
        {
            parts.headers.insert(X_PALISADE_H2FP, v);
        }
    }
    let added = forwarding_lines(
        &parts.headers,
        out.peer,
        server.trusted_proxies.contains(out.peer),
        host_value.as_ref(),
        out.request_id,
    );
    // The upstream sees the score of what it is sent: tagged requests, and requests held by
    // throttling.
    let throttled = matches!(decision.action, Action::Delay { .. }) && !decision.delayed_by_limit();
    if decision.action == Action::Tag || throttled {
        score_headers(decision, &mut parts.headers);
    }
    let body = match (out.buffered, out.body) {
        (Some(bytes), _) => OutBody::Full(bytes),
        // Nothing to send (a GET): no boxed stream to make and drop.
        (None, Some(b)) if http_body::Body::is_end_stream(&b) => OutBody::Empty,
        (None, Some(b)) => OutBody::Stream(Bounded::new(b, server.max_body_bytes).boxed_unsync()),
        (None, None) => OutBody::Empty,
    };
    let host = host_value.as_ref().and_then(|v| v.to_str().ok());
    let route = rt.compiled.policy.route(decision.route);
    let upstream = route
        .and_then(|r| rt.upstreams.get(r.upstream))
        .or_else(|| rt.upstreams.first())
        .ok_or(Refusal::UpstreamUnavailable)?;
    let started = Instant::now();
    let result = upstream
        .send(
            parts,
            &added,
            body,
            host,
            started,
            Duration::from_nanos(server.upstream_timeout),
        )
        .await;
    answered(
        shared,
        rt,
        upstream,
        result,
        started,
        settlement,
        decision,
        route_label,
    )
}

/// `X-Palisade-Score` and `X-Palisade-Signals` (the signals that counted) into `headers`.
pub(crate) fn score_headers(decision: &palisade_engine::Decision, headers: &mut http::HeaderMap) {
    headers.insert(
        X_PALISADE_SCORE,
        HeaderValue::from(u16::from(decision.score)),
    );
    let names: Vec<&str> = decision
        .signals
        .iter()
        .filter(|s| !s.shadow && !s.discounted)
        .map(|s| &*s.name)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
        headers.insert(X_PALISADE_SIGNALS, v);
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the arguments are the exchange's parts, not options"
)]
/// What the upstream's answer (or failure) comes to: its response for the client, the spend and
/// cost it reports charged, and its latency and failures counted.
fn answered(
    shared: &Shared,
    rt: &Runtime,
    upstream: &crate::client::Upstream,
    result: Result<Answer, UpstreamError>,
    started: Instant,
    settlement: Option<QuotaCharge>,
    decision: &Decision,
    route_label: &Arc<str>,
) -> Result<Answer, Refusal> {
    let route = rt.compiled.policy.route(decision.route);
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
        Err(UpstreamError::Timeout) => {
            err_kind("timeout");
            return Err(Refusal::UpstreamTimeout);
        }
        Err(e) => {
            if is_body_too_large(&e) {
                err_kind("body_too_large");
                return Err(Refusal::BodyTooLarge);
            }
            // The client's side broke (aborted, too slow, malformed body): its fault, not the
            // upstream's.
            if let Some(fault) = client_fault(&e) {
                shared.metrics.client_fault(fault, &e);
                return Err(Refusal::for_client_fault(fault));
            }
            let kind = if e.is_connect() { "connect" } else { "other" };
            err_kind(kind);
            tracing::warn!(upstream = %upstream.name, error = %e, "upstream request failed");
            return Err(Refusal::UpstreamUnavailable);
        }
        Ok(resp) => resp,
    };
    let upstream_seconds = started.elapsed().as_secs_f64();
    match rt.route_series(decision.route, &shared.metrics) {
        Some(series) => series.upstream_seconds.observe(upstream_seconds),
        None => shared
            .metrics
            .upstream_seconds
            .get_or_create(&RouteLabels {
                route: Label(route_label.clone()),
            })
            .observe(upstream_seconds),
    }

    let Answer {
        response, fields, ..
    } = resp;
    let (mut rparts, rbody) = response.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    // A header of the upstream's answer, wherever the client that read it keeps it.
    let upstream_header = |name: &str| -> Option<f64> {
        let raw = match rparts.headers.get(name) {
            Some(v) => v.as_bytes(),
            None => fields.as_ref()?.get(name)?,
        };
        std::str::from_utf8(raw).ok()?.trim().parse::<f64>().ok()
    };
    if let Some(settlement) = settlement {
        // The upstream answered: the request counts, at the spend it reported (dollars) or
        // the route's fixed spend.
        let reported = route
            .and_then(|r| r.spend_header.as_ref())
            .and_then(|name| upstream_header(name.as_str()))
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|usd| (usd.min(1e9) * MICROS_PER_USD).round() as u64);
        let fixed = route.map_or(0, |r| r.spend_micros);
        settlement.settle(Some(reported.unwrap_or(fixed)));
    }
    if let Some(name) = route.and_then(|r| r.cost_header.as_ref()) {
        let reported = upstream_header(name.as_str());
        let shared_adjust = rt.engine.observe_response(
            decision,
            &ResponseFacts {
                status: rparts.status.as_u16(),
                reported_cost: reported,
                now: shared.clock.now(),
            },
        );
        if let Some(store) = &shared.store {
            store.adjust(shared_adjust);
        }
    }
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades are not proxied (yet); do not pretend they work.
        return Err(Refusal::UpstreamUnavailable);
    }
    rparts.version = http::Version::HTTP_11;
    Ok(Answer {
        response: Response::from_parts(rparts, rbody),
        lines: HeadLines::default(),
        fields,
    })
}
