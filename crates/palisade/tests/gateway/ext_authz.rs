//! Envoy's external authorization: a real gRPC client built from Envoy's published protos
//! (`envoy-types`, generated from envoyproxy/data-plane-api) asks Palisade's
//! `envoy.service.auth.v3.Authorization/Check` about requests, as Envoy's `ext_authz` filter
//! does, and gets the same decisions as the proxy and the HTTP decision endpoint give.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{Address, CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::SocketAddress;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::common::*;

/// A CheckRequest as Envoy's ext_authz filter builds it.
pub(crate) fn check(
    client: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> CheckRequest {
    let mut h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.insert(":authority".into(), "api.example".into());
    h.insert(":method".into(), method.into());
    h.insert(":path".into(), path.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: client.into(),
                        port_specifier: Some(PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "envoy-1".into(),
                    method: method.into(),
                    headers: h,
                    path: path.into(),
                    host: "api.example".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    body: body.into(),
                    size: body.len() as i64,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn headers_of(
    r: &CheckResponse,
) -> (
    i32,
    HashMap<String, String>,
    HashMap<String, String>,
    String,
) {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => {
            let up = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            let down = ok
                .response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            (200, up, down, String::new())
        }
        HttpResponse::DeniedResponse(d) => {
            let h = d
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect();
            (
                d.status.as_ref().unwrap().code,
                HashMap::new(),
                h,
                d.body.clone(),
            )
        }
        HttpResponse::ErrorResponse(_) => panic!("error response"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_ext_authz_answers_allow_deny_429_and_challenges() {
    let up = upstream().await;
    let port = free_port();
    let config = config_for(
        &up,
        &format!(
            "[decision]\next_authz = \"127.0.0.1:{port}\"\n\n\
             [lists]\ndeny = [\"203.0.113.0/24\"]\n\n\
             [[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"2/1m\"\n\n\
             [[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/protected\")'\naction = \"challenge\"\n\n\
             [challenge]\ndifficulty = 8\n"
        ),
    );
    let g = Gateway::start(Some(&config));
    let mut client = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match AuthorizationClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no ext_authz server: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    };
    let ua = [
        ("user-agent", "python-requests/2.32.3"),
        ("accept", "application/json"),
    ];
    // Allowed: OK, with Palisade's headers for the upstream and the RateLimit ones for the
    // client; the decision log names the request Envoy described.
    let r = client
        .check(check("198.51.100.20", "GET", "/items/1?full=1", &ua, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    let (status, upstream_headers, client_headers, _) = headers_of(&r);
    assert_eq!(status, 200);
    let id = upstream_headers["x-request-id"].clone();
    assert_eq!(id.len(), 16);
    assert_eq!(upstream_headers["x-palisade-score"], "0");
    assert!(
        client_headers.contains_key("ratelimit"),
        "{client_headers:?}"
    );
    let d = g.wait_decision(|d| d["request_id"] == id.as_str());
    assert_eq!(d["path"], "/items/1");
    assert_eq!(d["client_ip"], "198.51.100.20", "Envoy's source address");
    // The limit: a denied 429 with Retry-After and the JSON body.
    let _ = client
        .check(check("198.51.100.20", "GET", "/items/2", &ua, ""))
        .await
        .unwrap();
    let r = client
        .check(check("198.51.100.20", "GET", "/items/3", &ua, ""))
        .await
        .unwrap()
        .into_inner();
    let (status, _, h, body) = headers_of(&r);
    assert_eq!(status, 429, "{r:?}");
    assert_eq!(r.status.as_ref().unwrap().code, 8, "RESOURCE_EXHAUSTED");
    assert!(h["retry-after"].parse::<u64>().unwrap() >= 1);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["error"], "rate_limited");
    // Another client is not limited by the first one's budget.
    let r = client
        .check(check("198.51.100.21", "GET", "/items/1", &ua, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(headers_of(&r).0, 200);
    // A denied network: 403, the reason kept out of the answer.
    let r = client
        .check(check("203.0.113.9", "GET", "/items/1", &ua, ""))
        .await
        .unwrap()
        .into_inner();
    let (status, _, _, body) = headers_of(&r);
    assert_eq!(status, 403);
    assert_eq!(r.status.as_ref().unwrap().code, 7, "PERMISSION_DENIED");
    assert!(!body.contains("203.0.113.0/24"), "{body}");
    // A challenge: problem+json with WWW-Authenticate: PoW, then paid and allowed.
    let r = client
        .check(check("192.0.2.77", "GET", "/protected/x", &ua, ""))
        .await
        .unwrap()
        .into_inner();
    let (status, _, h, _) = headers_of(&r);
    assert_eq!(status, 401);
    assert_eq!(h["content-type"], "application/problem+json");
    let www = h["www-authenticate"].clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["solve", &www])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut paid = ua.to_vec();
    paid.push(("palisade-pow", &answer));
    let r = client
        .check(check("192.0.2.77", "GET", "/protected/x", &paid, ""))
        .await
        .unwrap()
        .into_inner();
    let (status, _, client_headers, _) = headers_of(&r);
    assert_eq!(status, 200, "{r:?}");
    assert!(
        client_headers.contains_key("palisade-clearance"),
        "the clearance reaches the client: {client_headers:?}"
    );
    // A request Envoy could not describe is a clear INVALID_ARGUMENT with a 400 for the client.
    let r = client
        .check(CheckRequest { attributes: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status.as_ref().unwrap().code, 3);
    assert_eq!(headers_of(&r).0, 400);
}
