//! Envoy's external authorization (`envoy.service.auth.v3.Authorization/Check` over gRPC,
//! `[decision] ext_authz = "ADDR"`): Envoy asks about each request and proxies the allowed ones
//! itself. The request Envoy describes — method, path and query, host, headers, the body when
//! `with_request_body` is on, the client's address — is judged exactly as a decision call on
//! the HTTP endpoint (the same policy, limits, keys, behaviour, challenges and decision log):
//! allowed is `OK` with Palisade's headers for the upstream (`X-Request-Id`,
//! `X-Palisade-Score`, ...) and the RateLimit headers for the client; refused is a denied
//! response carrying the real status, headers (`Retry-After`, `WWW-Authenticate`, ...) and body.
//!
//! Envoy's `source` address is the client as Envoy determined it (its own
//! `use_remote_address` / `xff_num_trusted_hops`): the listener should be reachable by Envoy
//! only, like the admin listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::google::rpc;
use http_body_util::BodyExt as _;

use crate::Shared;

/// gRPC status codes (google.rpc.Code) used in answers.
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAUTHENTICATED: i32 = 16;

/// Largest refusal body passed to Envoy (challenge pages are far smaller).
const MAX_BODY: usize = 256 * 1024;

/// The Authorization service over the gateway.
#[derive(Clone)]
pub struct ExtAuthz(pub Arc<Shared>);

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let caller = request.remote_addr();
        let answer = match to_request(request.into_inner(), caller) {
            Ok((parts, body, peer)) => {
                from_judgement(crate::embed::judge(&self.0, parts, body, peer, false).await).await
            }
            Err(message) => CheckResponse {
                status: Some(rpc::Status {
                    code: INVALID_ARGUMENT,
                    message: message.to_owned(),
                    details: Vec::new(),
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 400 }),
                    headers: vec![header("content-type", "application/json")],
                    body: serde_json::json!({ "error": "bad_request", "message": message })
                        .to_string(),
                })),
                dynamic_metadata: None,
            },
        };
        Ok(tonic::Response::new(answer))
    }
}

/// The gRPC service, for tonic's server.
pub fn service(shared: Arc<Shared>) -> AuthorizationServer<ExtAuthz> {
    AuthorizationServer::new(ExtAuthz(shared))
}

/// Serves ext_authz on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .add_service(service(shared))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the ext_authz server stopped");
    }
}

/// The request Envoy describes (its head and body), and the client's address.
type Described = (http::request::Parts, Option<Bytes>, SocketAddr);

/// The request Envoy describes, as the proxy path takes it.
fn to_request(check: CheckRequest, caller: Option<SocketAddr>) -> Result<Described, &'static str> {
    let attrs = check.attributes.ok_or("no attributes")?;
    let http = attrs
        .request
        .and_then(|r| r.http)
        .ok_or("no attributes.request.http")?;
    let method =
        http::Method::from_bytes(http.method.as_bytes()).map_err(|_| "not an HTTP method")?;
    let uri = http
        .path
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))
        .ok_or("attributes.request.http.path is not a path and query")?;
    let mut req = http::Request::builder().method(method).uri(uri);
    // Headers as a map (lower-case names; pseudo-headers such as `:authority` skipped), or as
    // the raw header map when Envoy sends that instead.
    let mut headers = http::HeaderMap::new();
    let mut put = |name: &str, value: &[u8]| {
        if name.starts_with(':') {
            return;
        }
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    };
    for (k, v) in &http.headers {
        put(k, v.as_bytes());
    }
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            put(&h.key, value);
        }
    }
    if !http.host.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&http.host)
    {
        headers.insert(http::header::HOST, v);
    }
    let body = if !http.raw_body.is_empty() {
        Some(Bytes::from(http.raw_body))
    } else if !http.body.is_empty() {
        Some(Bytes::from(http.body))
    } else {
        None
    };
    let version = match http.protocol.as_str() {
        "HTTP/2" => http::Version::HTTP_2,
        "HTTP/1.0" => http::Version::HTTP_10,
        "HTTP/3" => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    };
    if let Some(h) = req.headers_mut() {
        *h = headers;
    }
    let (parts, ()) = req
        .version(version)
        .body(())
        .map_err(|_| "not a request")?
        .into_parts();
    let peer = attrs
        .source
        .and_then(|p| p.address)
        .and_then(|a| a.address)
        .and_then(|a| match a {
            Address::SocketAddress(s) => s.address.parse::<IpAddr>().ok().map(|ip| {
                let port = match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).unwrap_or(0),
                    _ => 0,
                };
                SocketAddr::new(ip, port)
            }),
            _ => None,
        })
        .or(caller)
        .ok_or("no client address")?;
    Ok((parts, body, peer))
}

/// A header for Envoy to set (replacing one of the same name).
fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A refusal's body, up to [`MAX_BODY`] (Palisade's own answers: small and already whole).
async fn bounded(mut body: crate::wire::body::ProxyBody) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                break;
            }
            out.extend_from_slice(&data);
        }
    }
    out
}

/// Palisade's judgement as Envoy takes it.
async fn from_judgement(judgement: crate::embed::Judgement) -> CheckResponse {
    let text = |v: &http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let headers_of = |h: &http::HeaderMap| -> Vec<HeaderValueOption> {
        h.iter()
            .map(|(n, v)| header(n.as_str(), &text(v)))
            .collect()
    };
    let response = match judgement {
        crate::embed::Judgement::Refuse(r) => r,
        crate::embed::Judgement::Allow {
            upstream, client, ..
        } => {
            let ok = OkHttpResponse {
                headers: headers_of(&upstream),
                // The client learns its limits (and its request id, and a fresh clearance).
                response_headers_to_add: headers_of(&client),
                ..Default::default()
            };
            return CheckResponse {
                status: Some(rpc::Status {
                    code: OK,
                    message: String::new(),
                    details: Vec::new(),
                }),
                http_response: Some(HttpResponse::OkResponse(ok)),
                dynamic_metadata: None,
            };
        }
    };
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let body = String::from_utf8_lossy(&bounded(body).await).into_owned();
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| *n != http::header::CONTENT_LENGTH && *n != http::header::CONNECTION)
        .map(|(n, v)| header(n.as_str(), &text(v)))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: match status {
                401 => UNAUTHENTICATED,
                429 => RESOURCE_EXHAUSTED,
                _ => PERMISSION_DENIED,
            },
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}
