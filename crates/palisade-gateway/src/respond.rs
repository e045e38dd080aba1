//! The one table that maps outcomes to client responses. Clients get a stable error code and a
//! short message; which rule fired goes to the log and the admin API, never here.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;

/// Why the gateway answered by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rate limit (429).
    RateLimited {
        /// Seconds until retry.
        retry_after: u64,
    },
    /// Blocked (403).
    Forbidden,
    /// A challenge is required (403) — the challenge flow itself comes later.
    ChallengeRequired,
    /// Engine failed and the policy is fail-closed (503).
    Unavailable,
    /// The upstream refused the connection or broke it (502).
    UpstreamUnavailable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// Request body over the limit (413).
    BodyTooLarge,
    /// Too many or too large headers (431).
    HeadersTooLarge,
    /// Unparseable request target (400).
    BadRequest,
}

impl Refusal {
    /// Status, stable error code and message.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Refusal::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry after the time in Retry-After",
            ),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this request is not allowed",
            ),
            Refusal::ChallengeRequired => (
                StatusCode::FORBIDDEN,
                "challenge_required",
                "this client must complete a challenge first",
            ),
            Refusal::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service is temporarily unavailable",
            ),
            Refusal::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream service could not be reached",
            ),
            Refusal::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream service did not answer in time",
            ),
            Refusal::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            ),
            Refusal::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request headers are too large",
            ),
            Refusal::BadRequest => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request could not be understood",
            ),
        }
    }

    /// The response.
    pub fn response(&self, request_id: &str) -> Response<ProxyBody> {
        let (status, code, message) = self.parts();
        let mut body =
            serde_json::json!({ "error": code, "message": message, "request_id": request_id });
        if let Refusal::RateLimited { retry_after } = self
            && let Some(obj) = body.as_object_mut()
        {
            obj.insert("retry_after".to_owned(), (*retry_after).into());
        }
        let mut resp = json_response(status, &body);
        if let Refusal::RateLimited { retry_after } = self {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        resp
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
