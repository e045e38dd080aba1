//! The one table that maps outcomes to client responses. Clients get a stable error code and a
//! short message; which rule fired goes to the log and the admin API, never here.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use palisade_engine::state::limiter::ceil_secs;
use palisade_engine::{Action, ClientCode, Decision};

use crate::wire::body::ProxyBody;

/// Why the gateway answered by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rate limit or quota (429).
    RateLimited {
        /// Seconds until retry.
        retry_after: u64,
        /// `rate_limited`, `daily_rpd_limit_exceeded` or `daily_usd_limit_exceeded`.
        code: ClientCode,
    },
    /// Blocked (403): `forbidden`, or `insufficient_scope`.
    Forbidden {
        /// The code.
        code: ClientCode,
    },
    /// Credentials missing or not accepted (401).
    Unauthorized {
        /// `missing_api_key`, `invalid_api_key`, `expired_api_key`, `revoked_api_key`,
        /// `missing_token`, `invalid_token`, `missing_credentials`, `invalid_signature`.
        code: ClientCode,
    },
    /// A challenge is required (403) — the challenge flow itself comes later.
    ChallengeRequired,
    /// Engine failed and the policy is fail-closed, or the store is down and the policy is
    /// deny (503).
    Unavailable,
    /// The upstream refused the connection or broke it (502).
    UpstreamUnavailable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// Request body over the limit (413).
    BodyTooLarge,
    /// The client stopped sending its body, or sent it too slowly (408).
    RequestTimeout,
    /// The client went away while its request was held (499, nginx's "client closed
    /// request"; nobody reads it, but the log and metrics do).
    ClientClosedRequest,
    /// Too many or too large headers (431).
    HeadersTooLarge,
    /// Nothing here (404): what a honeypot answers.
    NotFound,
    /// Unparseable request target or head, or ambiguous framing (400).
    BadRequest,
    /// A path that is malformed or that upstreams could read in more than one way (400).
    InvalidPath,
    /// A method the gateway does not forward (`CONNECT`: not a forward proxy) (405).
    MethodNotAllowed,
    /// A transfer coding other than `chunked` (501).
    NotImplemented,
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
}

impl Refusal {
    /// The refusal a decision calls for, or `None` when the request is forwarded. The one place
    /// where actions and codes become answers: typed, never read from rule names.
    #[inline]
    pub fn from_decision(d: &Decision) -> Option<Refusal> {
        Some(match d.action {
            Action::Allow | Action::Tag | Action::Delay { .. } => return None,
            Action::Limit { retry_after } => Refusal::RateLimited {
                retry_after: ceil_secs(retry_after).max(1),
                code: d.code.unwrap_or(ClientCode::RateLimited),
            },
            Action::Block => match d.code {
                Some(ClientCode::Unavailable) => Refusal::Unavailable,
                Some(ClientCode::NotFound) => Refusal::NotFound,
                code => Refusal::Forbidden {
                    code: code.unwrap_or(ClientCode::Forbidden),
                },
            },
            Action::Unauthorized => Refusal::Unauthorized {
                code: d.code.unwrap_or(ClientCode::MissingCredentials),
            },
            Action::Challenge => Refusal::ChallengeRequired,
        })
    }

    /// Status, stable error code and message.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        let coded = |status, code: ClientCode| (status, code.as_str(), code.message());
        match self {
            Refusal::RateLimited { code, .. } => coded(StatusCode::TOO_MANY_REQUESTS, *code),
            Refusal::Forbidden { code } => coded(StatusCode::FORBIDDEN, *code),
            Refusal::Unauthorized { code } => coded(StatusCode::UNAUTHORIZED, *code),
            Refusal::ChallengeRequired => {
                coded(StatusCode::FORBIDDEN, ClientCode::ChallengeRequired)
            }
            Refusal::Unavailable => coded(StatusCode::SERVICE_UNAVAILABLE, ClientCode::Unavailable),
            Refusal::NotFound => coded(StatusCode::NOT_FOUND, ClientCode::NotFound),
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
            Refusal::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            ),
            Refusal::ClientClosedRequest => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_closed_request",
                "the client closed the connection before the request was served",
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
            Refusal::InvalidPath => (
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the request path is malformed or ambiguous",
            ),
            Refusal::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not served here",
            ),
            Refusal::NotImplemented => (
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                "the request's transfer coding is not supported",
            ),
            Refusal::ExpectationFailed => (
                StatusCode::EXPECTATION_FAILED,
                "expectation_failed",
                "the request's expectation cannot be met",
            ),
        }
    }

    /// The answer to a client's fault in sending its request.
    pub fn for_client_fault(fault: crate::wire::body::ClientFault) -> Self {
        match fault {
            crate::wire::body::ClientFault::SlowBody => Refusal::RequestTimeout,
            _ => Refusal::BadRequest,
        }
    }

    /// The response. The body is assembled from static pieces (codes and messages need no
    /// JSON escaping; the request id is hex): refusals are the hot path under attack.
    pub fn response(&self, request_id: &str) -> Response<ProxyBody> {
        let (status, code, message) = self.parts();
        let mut body = String::with_capacity(96 + message.len());
        body.push_str("{\"error\":\"");
        body.push_str(code);
        body.push_str("\",\"message\":\"");
        body.push_str(message);
        body.push_str("\",\"request_id\":\"");
        body.extend(request_id.chars().filter(char::is_ascii_alphanumeric));
        body.push('"');
        if let Refusal::RateLimited { retry_after, .. } = self {
            body.push_str(",\"retry_after\":");
            body.push_str(itoa::Buffer::new().format(*retry_after));
        }
        body.push('}');
        let mut resp = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Refusal::RateLimited { retry_after, .. } => {
                h.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Refusal::Unauthorized { .. } => {
                h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::MethodNotAllowed => {
                h.insert(
                    http::header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use palisade_engine::clock::SECOND;

    #[test]
    fn decisions_map_to_answers_by_action_and_code() {
        let decided = |action: Action, code: Option<ClientCode>| {
            let mut d = Decision::new(0, std::sync::Arc::from("any/rule"));
            d.action = action;
            d.code = code;
            Refusal::from_decision(&d).map(|r| {
                let (status, code, _) = r.parts();
                (status.as_u16(), code)
            })
        };
        let limit = Action::Limit {
            retry_after: 2 * SECOND + 1,
        };
        for (action, code, want) in [
            (Action::Allow, None, None),
            (Action::Tag, None, None),
            (Action::Delay { wait: SECOND }, None, None),
            (limit, None, Some((429, "rate_limited"))),
            (
                limit,
                Some(ClientCode::DailySpendExceeded),
                Some((429, "daily_usd_limit_exceeded")),
            ),
            (Action::Block, None, Some((403, "forbidden"))),
            (
                Action::Block,
                Some(ClientCode::InsufficientScope),
                Some((403, "insufficient_scope")),
            ),
            (
                Action::Block,
                Some(ClientCode::NotFound),
                Some((404, "not_found")),
            ),
            (
                Action::Block,
                Some(ClientCode::Unavailable),
                Some((503, "unavailable")),
            ),
            (
                Action::Unauthorized,
                None,
                Some((401, "missing_credentials")),
            ),
            (
                Action::Unauthorized,
                Some(ClientCode::RevokedApiKey),
                Some((401, "revoked_api_key")),
            ),
            (Action::Challenge, None, Some((403, "challenge_required"))),
        ] {
            assert_eq!(decided(action, code), want, "{action:?} {code:?}");
        }
        // Retry-After rounds up to whole seconds.
        let mut d = Decision::new(0, std::sync::Arc::from("limit/x"));
        d.action = limit;
        assert_eq!(
            Refusal::from_decision(&d),
            Some(Refusal::RateLimited {
                retry_after: 3,
                code: ClientCode::RateLimited
            })
        );
    }

    #[tokio::test]
    async fn bodies_are_valid_json_with_stable_codes() {
        for r in [
            Refusal::RateLimited {
                retry_after: 17,
                code: ClientCode::RateLimited,
            },
            Refusal::RateLimited {
                retry_after: 3600,
                code: ClientCode::DailySpendExceeded,
            },
            Refusal::Forbidden {
                code: ClientCode::Forbidden,
            },
            Refusal::Forbidden {
                code: ClientCode::InsufficientScope,
            },
            Refusal::Unauthorized {
                code: ClientCode::RevokedApiKey,
            },
            Refusal::ChallengeRequired,
            Refusal::Unavailable,
            Refusal::UpstreamUnavailable,
            Refusal::UpstreamTimeout,
            Refusal::BodyTooLarge,
            Refusal::RequestTimeout,
            Refusal::ClientClosedRequest,
            Refusal::HeadersTooLarge,
            Refusal::BadRequest,
            Refusal::InvalidPath,
            Refusal::MethodNotAllowed,
            Refusal::NotImplemented,
            Refusal::ExpectationFailed,
        ] {
            let resp = r.response("00ff\"<x>");
            let (status, code, message) = r.parts();
            assert_eq!(resp.status(), status);
            let retry = resp.headers().get(RETRY_AFTER).cloned();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["error"], code);
            assert_eq!(v["message"], message);
            assert_eq!(
                v["request_id"], "00ffx",
                "hostile ids cannot break the JSON"
            );
            if let Refusal::RateLimited { retry_after, .. } = r {
                assert_eq!(v["retry_after"], retry_after);
                assert_eq!(retry.unwrap(), retry_after.to_string().as_str());
            }
        }
    }
}
