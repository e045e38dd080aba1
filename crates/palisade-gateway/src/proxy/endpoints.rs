//! Palisade's own endpoints on the proxy listener: `robots.txt` (when honeypots ask for it)
//! and `/_palisade/usage` (a key holder's own quota use).

use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http::header::HeaderValue;
use http_body_util::{BodyExt, Full};

use palisade_engine::model::principal::AuthRequirement;
use palisade_engine::state::quota_ledger::{MICROS_PER_USD, secs_to_midnight};
use palisade_engine::{ClientCode, Clock, RequestFacts, RouteSpec};

use crate::auth::{authenticate, presented};
use crate::proxy::bounded_refusal;
use crate::refusal::Refusal;
use crate::wire::body::ProxyBody;
use crate::wire::headers::names::X_REQUEST_ID;
use crate::{Runtime, Shared};

/// Answers the request when it is for one of Palisade's own endpoints.
#[inline]
pub fn serve(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    client: std::net::IpAddr,
    peer: SocketAddr,
    request_id: &str,
) -> Option<Response<ProxyBody>> {
    let path = parts.uri.path();
    if path == "/robots.txt" && rt.compiled.policy.honeypots.iter().any(|h| h.robots_txt) {
        return Some(robots_txt(rt, request_id));
    }
    (path == USAGE_PATH).then(|| usage(shared, rt, parts, client, peer, request_id))
}

/// `robots.txt` disallowing the honeypots' trap paths, so only clients that ignore it walk
/// into them.
fn robots_txt(rt: &Runtime, request_id: &str) -> Response<ProxyBody> {
    let mut body = String::from("User-agent: *\n");
    for h in rt.compiled.policy.honeypots.iter().filter(|h| h.robots_txt) {
        for p in &h.paths {
            let s = p.as_str();
            let cut = s.find(['{', '*']).unwrap_or(s.len());
            body.push_str("Disallow: ");
            body.push_str(s.get(..cut).unwrap_or(s));
            body.push('\n');
        }
    }
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

/// Where a key holder reads its own quota usage, on the proxy listener.
pub const USAGE_PATH: &str = "/_palisade/usage";

/// `GET /_palisade/usage`: the caller's own daily budgets. Authentication failures count
/// towards guessing exactly as on an authenticated route.
fn usage(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    client: std::net::IpAddr,
    peer: SocketAddr,
    request_id: &str,
) -> Response<ProxyBody> {
    let mut spec = RouteSpec::new("usage", 0);
    spec.auth = AuthRequirement::Any;
    let authn = authenticate(
        shared,
        rt,
        &parts.headers,
        &spec,
        presented(rt, &parts.headers),
    );
    let unix_ms = shared.clock.unix_ms();
    let facts = RequestFacts {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        client_ip: client,
        peer_ip: peer.ip(),
        now: shared.clock.now(),
        unix_ms,
        auth: authn.as_auth(),
        version: parts.version,
        ja4h: None,
        tls: None,
        h2fp: None,
        ja3: None,
        clearance: None,
        signed_agent: None,
        hfp: None,
        ip_info: None,
        bot_verification: None,
        username: None,
        probes: &[],
        contract: None,
    };
    if let Some(refused) = rt.engine.authorize(&facts, &spec) {
        let r = Refusal::from_decision(&refused).unwrap_or(Refusal::Forbidden {
            code: ClientCode::Forbidden,
        });
        return bounded_refusal(shared, r, request_id, &refused.rule);
    }
    let Some(principal) = facts.auth.principal() else {
        return bounded_refusal(
            shared,
            Refusal::Unauthorized {
                code: ClientCode::MissingCredentials,
            },
            request_id,
            "auth/missing_credentials",
        );
    };
    let reset_at = palisade_keys::time::rfc3339(unix_ms / 1000 + secs_to_midnight(unix_ms));
    let all = rt.engine.usage_for(principal, unix_ms);
    let usd = |m: u64| m as f64 / MICROS_PER_USD;
    // The summary shows the tightest budget of each kind.
    let daily = all
        .iter()
        .filter_map(|q| Some((q, q.requests_per_day?)))
        .min_by_key(|(q, max)| max.saturating_sub(q.requests))
        .map(|(q, max)| {
            serde_json::json!({
                "quota": q.quota, "used": q.requests, "limit": max,
                "remaining": max.saturating_sub(q.requests), "resetAt": reset_at,
            })
        });
    let spend = all
        .iter()
        .filter_map(|q| Some((q, q.spend_per_day_micros?)))
        .min_by_key(|(q, max)| max.saturating_sub(q.spend_micros))
        .map(|(q, max)| {
            serde_json::json!({
                "quota": q.quota, "used": usd(q.spend_micros), "limit": usd(max),
                "remaining": usd(max.saturating_sub(q.spend_micros)), "resetAt": reset_at,
            })
        });
    let quotas: Vec<serde_json::Value> = all
        .iter()
        .map(|q| {
            serde_json::json!({
                "quota": q.quota, "per": q.per,
                "requests": { "used": q.requests, "limit": q.requests_per_day },
                "spend": { "used": usd(q.spend_micros), "limit": q.spend_per_day_micros.map(usd) },
            })
        })
        .collect();
    let body = serde_json::json!({
        "key": principal.key_id.as_deref().map(palisade_keys::key::prefix_of),
        "account": principal.account.as_deref(),
        "daily": daily,
        "spend": spend,
        "quotas": quotas,
        "resetAt": reset_at,
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}
