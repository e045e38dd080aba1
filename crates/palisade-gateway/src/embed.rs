//! Palisade inside another program (the `palisade-tower` middleware, Envoy's ext_authz): a
//! request is judged as a decision call — the same policy, limits, keys, behaviour, challenges
//! and decision log as the proxy — and the caller forwards it or answers the refusal. The
//! caller that sees the answer reports it ([`answered`]), so behaviour learns statuses and
//! cost and spend are settled as in proxy mode.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};

use crate::Shared;
use crate::listen::ClientBody;
use crate::proxy::decision::Call;
use crate::wire::body::ProxyBody;

/// Palisade's answer headers that go to the upstream with an allowed request.
pub const TO_UPSTREAM: [&str; 5] = [
    "x-request-id",
    "x-palisade-score",
    "x-palisade-signals",
    "x-palisade-key-id",
    "x-palisade-account",
];

/// What Palisade made of a request.
#[derive(Debug)]
pub enum Judgement {
    /// Forward it, with `upstream` set on the request and `client` on the answer (RateLimit
    /// headers, the request id, a fresh clearance).
    Allow {
        /// Palisade's request id (report the answer under it).
        request_id: String,
        /// Headers for the upstream.
        upstream: HeaderMap,
        /// Headers for the client's answer.
        client: HeaderMap,
    },
    /// Answer this instead (429, 401 with a challenge, 403, a honeypot's 404, ...).
    Refuse(Response<ProxyBody>),
}

/// Judges one request. `body`: the request's body when [`wants_body`] said so (a login on the
/// stuffing route, a signed key's request), else `None`. `reports_answer`: the caller will call
/// [`answered`] with the upstream's status.
pub async fn judge(
    shared: &Arc<Shared>,
    parts: http::request::Parts,
    body: Option<Bytes>,
    peer: SocketAddr,
    reports_answer: bool,
) -> Judgement {
    let call = Call {
        nginx: false,
        reports_answer,
    };
    judge_as(shared, parts, body, peer, call).await
}

/// [`judge`] for a front that fetches refusals' full answers from
/// `<decision path>/answer/<request id>` (HAProxy through SPOE): a refusal comes back as 401 or
/// 403 with its real status in `X-Palisade-Status`, its answer kept for a minute.
pub async fn judge_kept(
    shared: &Arc<Shared>,
    parts: http::request::Parts,
    body: Option<Bytes>,
    peer: SocketAddr,
) -> Judgement {
    let call = Call {
        nginx: true,
        reports_answer: false,
    };
    judge_as(shared, parts, body, peer, call).await
}

async fn judge_as(
    shared: &Arc<Shared>,
    mut parts: http::request::Parts,
    body: Option<Bytes>,
    peer: SocketAddr,
    call: Call,
) -> Judgement {
    match &body {
        Some(b) => {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            parts.headers.remove(http::header::TRANSFER_ENCODING);
        }
        None => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.remove(http::header::TRANSFER_ENCODING);
        }
    }
    parts.extensions.insert(call);
    let req = http::Request::from_parts(parts, ClientBody::Whole(body));
    let response = crate::proxy::handle(shared.clone(), req, peer, None)
        .await
        .merged();
    split(response)
}

/// An answer as a [`Judgement`]: 2xx is an allow (its headers split between the upstream and
/// the client), anything else the refusal itself.
pub fn split(response: Response<ProxyBody>) -> Judgement {
    if !response.status().is_success() {
        return Judgement::Refuse(response);
    }
    let (parts, _) = response.into_parts();
    let mut upstream = HeaderMap::new();
    let mut client = HeaderMap::new();
    let mut request_id = String::new();
    for (name, value) in parts.headers {
        let Some(name) = name else { continue };
        if name == http::header::CONTENT_LENGTH || name == http::header::CONTENT_TYPE {
            continue;
        }
        if name.as_str() == "x-request-id" {
            request_id = value.to_str().unwrap_or_default().to_owned();
        }
        if TO_UPSTREAM.contains(&name.as_str()) {
            upstream.append(name.clone(), value.clone());
        }
        if !name.as_str().starts_with("x-palisade-") {
            client.append(name, value);
        }
    }
    Judgement::Allow {
        request_id,
        upstream,
        client,
    }
}

/// Whether the policy reads this request's body before deciding (a login on the stuffing route,
/// a request of a key that signs): the caller then passes it to [`judge`], bounded by
/// [`max_body`].
pub fn wants_body(shared: &Shared, parts: &http::request::Parts) -> bool {
    let rt = shared.runtime.load();
    let route = rt.engine.route_of(&parts.method, parts.uri.path());
    crate::proxy::facts::stuffing_on(&rt, route).is_some()
        || parts.headers.contains_key("signature")
        || parts.headers.contains_key("content-digest")
}

/// The most of a body [`judge`] takes (`[server] max_body_bytes`).
pub fn max_body(shared: &Shared) -> u64 {
    shared.runtime.load().compiled.server.max_body_bytes
}

/// Reports the answer an allowed request got (its status, and the response's headers for the
/// route's cost and spend headers): behaviour learns it, cost and spend are settled.
pub fn answered(shared: &Shared, request_id: &str, status: u16, headers: &HeaderMap) {
    let resp_headers = headers
        .iter()
        .take(64)
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let line = crate::proxy::feedback::Line {
        request_id: request_id.to_owned(),
        status,
        resp_headers,
        ..Default::default()
    };
    crate::proxy::feedback::settle(shared, &line);
}

/// Sets `from`'s fields on `to`, replacing those of the same names.
pub fn set_all(to: &mut HeaderMap, from: &HeaderMap) {
    let mut last: Option<HeaderName> = None;
    for (name, value) in from {
        if last.as_ref() != Some(name) {
            to.remove(name);
            last = Some(name.clone());
        }
        to.append(name.clone(), value.clone());
    }
}
