//! The decision endpoint (`[decision] path`, default `/_palisade/authz`): a front that already
//! proxies — nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth` — asks Palisade
//! about each request instead of sending it through. The original method, URI and host come
//! from the caller's forwarding headers (`X-Original-Method`, `X-Original-URI` or
//! `X-Forwarded-Uri`, `X-Forwarded-Method`, `X-Forwarded-Host`), the client from
//! `X-Forwarded-For` / `X-Real-IP`, all believed only from `trusted_proxies`. The request then
//! lives the proxy's life — the same policy, limits, keys, behaviour and log — except that an
//! allowed one is answered `200` with headers for the upstream instead of being forwarded.
//!
//! nginx's `auth_request` turns any status but 2xx, 401 and 403 into a 500 and drops the body, so
//! a caller that says `X-Palisade-Front: nginx` gets refusals as 401 (credentials, challenges)
//! or 403 (everything else) with the real status in `X-Palisade-Status`, and fetches the full
//! answer — status, headers, body — from `<path>/answer/<request id>` (kept a minute).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderName, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::wire::body::ProxyBody;
use crate::{Runtime, Shared};

/// How long a refusal's full answer is kept for the front to fetch.
const KEEP: Duration = Duration::from_secs(60);
/// Refusal answers kept at once.
const KEPT: usize = 10_000;

/// A refusal's full answer, kept for `answer/<id>`.
#[derive(Clone)]
struct Kept {
    at: Instant,
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Refusals kept for nginx to fetch (bounded).
pub struct Answers(quick_cache::sync::Cache<String, Kept>);

impl Default for Answers {
    fn default() -> Self {
        Self(quick_cache::sync::Cache::new(KEPT))
    }
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("kept", &self.0.len())
            .finish()
    }
}

/// A decision call, as the front made it. Put in a request's extensions by an in-process
/// caller (ext_authz, the tower middleware), it makes the request a decision call as it is.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// Whether the front is nginx (refusals mapped to 401/403, full answers kept).
    pub nginx: bool,
    /// Whether the caller reports the answer itself ([`crate::embed::answered`]): an allowed
    /// decision then waits for it as for a feedback line.
    pub reports_answer: bool,
}

const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_PALISADE_FRONT: HeaderName = HeaderName::from_static("x-palisade-front");
const X_PALISADE_STATUS: HeaderName = HeaderName::from_static("x-palisade-status");

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// When `parts` is a decision call: rewrites it into the request the front is asking about and
/// answers how the front called. `Err` is the answer to a call Palisade will not judge (from an
/// untrusted peer, without the original URI). `Ok(None)`: not a decision call.
pub fn rewrite(
    shared: &Shared,
    rt: &Runtime,
    parts: &mut http::request::Parts,
    peer: std::net::IpAddr,
) -> Result<Option<Call>, Box<Response<ProxyBody>>> {
    // Asked in-process (Envoy's ext_authz, the tower middleware): the request is already the
    // one to judge.
    if let Some(call) = parts.extensions.get::<Call>() {
        return Ok(Some(*call));
    }
    let Some(path) = rt.compiled.decision_path.as_deref() else {
        return Ok(None);
    };
    let here = parts.uri.path();
    if let Some(id) = here
        .strip_prefix(path)
        .and_then(|r| r.strip_prefix("/answer/"))
    {
        return Err(Box::new(answer(shared, rt, id, peer)));
    }
    if here != path {
        return Ok(None);
    }
    if !rt
        .compiled
        .server
        .trusted_proxies
        .contains(peer.to_canonical())
    {
        return Err(Box::new(json(
            StatusCode::FORBIDDEN,
            "untrusted_caller",
            "decision calls are taken from trusted_proxies only",
        )));
    }
    let h = &parts.headers;
    let text = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Some(uri) = text(&X_ORIGINAL_URI).or_else(|| text(&X_FORWARDED_URI)) else {
        return Err(Box::new(json(
            StatusCode::BAD_REQUEST,
            "missing_original_uri",
            "a decision call names the original request in X-Original-URI (or X-Forwarded-Uri)",
        )));
    };
    let Some(uri) = uri
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))
    else {
        return Err(Box::new(json(
            StatusCode::BAD_REQUEST,
            "invalid_original_uri",
            "X-Original-URI is not a path and query",
        )));
    };
    let method = text(&X_ORIGINAL_METHOD)
        .or_else(|| text(&X_FORWARDED_METHOD))
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(http::Method::GET);
    let host = text(&X_FORWARDED_HOST);
    let nginx = text(&X_PALISADE_FRONT).is_some_and(|f| f.eq_ignore_ascii_case("nginx"));
    parts.method = method;
    parts.uri = uri;
    for n in [
        &X_ORIGINAL_URI,
        &X_ORIGINAL_METHOD,
        &X_FORWARDED_URI,
        &X_FORWARDED_METHOD,
        &X_FORWARDED_HOST,
        &X_PALISADE_FRONT,
    ] {
        parts.headers.remove(n);
    }
    if let Some(v) = host.and_then(|h| HeaderValue::try_from(h).ok()) {
        parts.headers.insert(http::header::HOST, v);
    }
    // auth_request sends no body, whatever the original had.
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    Ok(Some(Call {
        nginx,
        reports_answer: false,
    }))
}

/// The answer to an allowed request: 200 with what the upstream should know.
pub fn allowed(
    decision: &palisade_engine::Decision,
    principal: Option<(&str, &str)>,
    request_id: &str,
) -> Response<ProxyBody> {
    use crate::wire::headers::names::{X_PALISADE_ACCOUNT, X_PALISADE_KEY_ID, X_REQUEST_ID};
    let mut r = Response::new(full(Bytes::new()));
    let h = r.headers_mut();
    super::forward::score_headers(decision, h);
    if let Some((key, account)) = principal {
        if let Ok(v) = HeaderValue::from_str(key) {
            h.insert(X_PALISADE_KEY_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(account) {
            h.insert(X_PALISADE_ACCOUNT, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    r
}

/// A refusal as the front can hand it on: as it is for Caddy and Traefik (they copy the
/// answer), mapped to 401/403 for nginx with the full answer kept.
pub async fn refused(
    shared: &Shared,
    call: Call,
    response: Response<ProxyBody>,
    request_id: &str,
) -> Response<ProxyBody> {
    if !call.nginx {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mapped = if parts.status == StatusCode::UNAUTHORIZED {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = mapped;
    let h = r.headers_mut();
    h.insert(X_PALISADE_STATUS, HeaderValue::from(parts.status.as_u16()));
    for n in [http::header::RETRY_AFTER, http::header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&n) {
            h.insert(n, v.clone());
        }
    }
    shared.decision_answers.0.insert(
        request_id.to_owned(),
        Kept {
            at: Instant::now(),
            status: parts.status,
            headers: parts.headers,
            body,
        },
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(crate::wire::headers::names::X_REQUEST_ID, v);
    }
    r
}

/// `<path>/answer/<id>`: a kept refusal, once, for the front that asked (a trusted proxy).
fn answer(shared: &Shared, rt: &Runtime, id: &str, peer: std::net::IpAddr) -> Response<ProxyBody> {
    if !rt
        .compiled
        .server
        .trusted_proxies
        .contains(peer.to_canonical())
    {
        return json(
            StatusCode::FORBIDDEN,
            "untrusted_caller",
            "decision answers are for trusted_proxies only",
        );
    }
    let kept = shared
        .decision_answers
        .0
        .remove(id)
        .map(|(_, k)| k)
        .filter(|k| k.at.elapsed() < KEEP);
    match kept {
        Some(k) => {
            let mut r = Response::new(full(k.body));
            *r.status_mut() = k.status;
            *r.headers_mut() = k.headers;
            r
        }
        None => json(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this request was refused",
        ),
    }
}
