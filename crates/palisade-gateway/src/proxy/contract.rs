//! The API's contract at the edge (`[openapi]`): a request the spec does not describe is
//! answered here — 400 `application/problem+json` with a short, stable code and the failing
//! location, 404 for a path the spec does not have, 405 with `Allow` for a method it does not —
//! in `enforce` mode; in `shadow` mode it is counted and forwarded.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use palisade_config::openapi::{OpenApi, OpenApiMode, Request, Violation};

use crate::Shared;
use crate::telemetry::metrics::{DecisionLabels, Label};
use crate::wire::body::ProxyBody;

/// `Some(answer)` when the request breaks the contract and the mode refuses it.
pub fn check(
    shared: &Shared,
    api: &OpenApi,
    parts: &http::request::Parts,
    body: Option<&[u8]>,
    request_id: &str,
) -> Option<Response<ProxyBody>> {
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
    let enforce = api.mode == OpenApiMode::Enforce;
    let labels = DecisionLabels {
        route: Label(std::sync::Arc::from("-")),
        action: if enforce { "reject" } else { "would_reject" },
        rule: Label(std::sync::Arc::from(rule)),
    };
    shared.metrics.requests.get_or_create(&labels).inc();
    if !enforce {
        return None;
    }
    let body = serde_json::json!({
        "type": format!("https://palisade.invalid/problems/{code}"),
        "title": status.canonical_reason().unwrap_or("Bad Request"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
        "request_id": request_id,
    })
    .to_string();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(v) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    Some(r)
}
