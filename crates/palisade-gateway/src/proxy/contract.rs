//! The API's contract at the edge (`[openapi]`): a request the spec does not describe is
//! answered here — 400 `application/problem+json` with a short, stable code and the failing
//! location, 404 for a path the spec does not have, 405 with `Allow` for a method it does not —
//! in `enforce` mode; in `shadow` mode it is counted and forwarded; in `signal` mode it is
//! forwarded with an `openapi/<kind>` signal in the score. In every mode the engine sees the
//! breach as a signal, so a client that keeps probing the contract walks into throttling.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use palisade_config::openapi::{OpenApi, OpenApiMode, Request, Violation};

use crate::Shared;
use crate::telemetry::metrics::{DecisionLabels, Label};
use crate::wire::body::ProxyBody;

/// How a request breaks the contract: what the client is told, and the rule it is logged and
/// scored under.
pub struct Breach {
    /// `openapi/unknown_endpoint`, `openapi/method_not_allowed`, `openapi/missing_credentials`
    /// or `openapi/invalid`.
    pub rule: &'static str,
    /// What it does: the operation's `x-palisade-mode`, else the spec's `mode`.
    pub mode: OpenApiMode,
    status: StatusCode,
    code: &'static str,
    detail: String,
    allow: Option<String>,
}

/// `Some(breach)` when the request breaks the contract (counted here as `would_reject` in
/// shadow mode and `signal` in signal mode).
pub fn check(
    shared: &Shared,
    api: &OpenApi,
    parts: &http::request::Parts,
    body: Option<&[u8]>,
) -> Option<Breach> {
    let violation = api
        .check(&Request {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        })
        .err()?;
    let (status, code, detail, allow) = match violation {
        Violation::UnknownEndpoint => (
            StatusCode::NOT_FOUND,
            "unknown_endpoint",
            "no such endpoint".to_owned(),
            None,
        ),
        Violation::MethodNotAllowed(methods) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take this method".to_owned(),
            Some(methods.join(", ")),
        ),
        Violation::MissingCredentials(detail) => (
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
            detail,
            None,
        ),
        Violation::Invalid { code, detail } => (StatusCode::BAD_REQUEST, code, detail, None),
    };
    let rule = match status {
        StatusCode::NOT_FOUND => "openapi/unknown_endpoint",
        StatusCode::METHOD_NOT_ALLOWED => "openapi/method_not_allowed",
        StatusCode::UNAUTHORIZED => "openapi/missing_credentials",
        _ => "openapi/invalid",
    };
    // An enforced breach is counted with its decision (`block`, `openapi/…`); the others here.
    let mode = api.mode_for(&parts.method, parts.uri.path());
    let action = match mode {
        OpenApiMode::Enforce => None,
        OpenApiMode::Shadow => Some("would_reject"),
        OpenApiMode::Signal => Some("signal"),
    };
    if let Some(action) = action {
        let labels = DecisionLabels {
            route: Label(std::sync::Arc::from("-")),
            action,
            rule: Label(std::sync::Arc::from(rule)),
        };
        shared.metrics.requests.get_or_create(&labels).inc();
    }
    Some(Breach {
        rule,
        mode,
        status,
        code,
        detail,
        allow,
    })
}

/// The answer to a request that breaks the contract in `enforce` mode: problem+json with a
/// short, stable code and the failing location, `Allow` for a wrong method.
pub fn answer(b: &Breach, request_id: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": format!("https://palisade.invalid/problems/{}", b.code),
        "title": b.status.canonical_reason().unwrap_or("Bad Request"),
        "status": b.status.as_u16(),
        "code": b.code,
        "detail": b.detail,
        "request_id": request_id,
    })
    .to_string();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = b.status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(v) = b
        .allow
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}
