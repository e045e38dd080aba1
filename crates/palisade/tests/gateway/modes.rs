//! One policy for every mode: a policy's `[[tests]]` cases, replayed as real requests, get the
//! same decision — action and rule, as the decision log records them — whether the request
//! came through the proxy, a decision call (nginx `auth_request` / Caddy `forward_auth` style),
//! Envoy's ext_authz over gRPC, or the in-process tower middleware; and that decision is the one
//! `palisade check` expects.

use std::net::SocketAddr;

use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::common::*;

/// The policy: lists, a per-subnet login limit, a honeypot, API keys required on a route, a
/// rule, the score — and its cases.
const POLICY: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[decision]
ext_authz = "127.0.0.1:EXT_AUTHZ_PORT"

[lists]
deny = ["192.0.2.0/24"]
allow = ["198.51.100.10"]

[[routes]]
name = "login"
match = { path = "/api/login", methods = ["POST"] }

[[routes]]
name = "private"
match = { path = "/api/private/{id}" }
auth = "api_key"

[[limits]]
name = "login-per-subnet"
routes = ["login"]
key = ["ip/24"]
rate = "5/1m"
algorithm = "sliding_window"

[[honeypots]]
name = "probes"
paths = ["/.env"]

[[rules]]
name = "no-admin"
when = 'path.startsWith("/admin")'
action = "block"

[[tests]]
name = "denylisted network"
request = { path = "/api/items/1", ip = "192.0.2.77" }
expect = { action = "block", rule = "list/deny" }

[[tests]]
name = "allowlisted partner is never limited"
request = { method = "POST", path = "/api/login", ip = "198.51.100.10", repeat = 12 }
expect = { action = "allow", rule = "list/allow" }

[[tests]]
name = "the 6th login from one /24 in a minute is limited"
request = { method = "POST", path = "/api/login", ip = "203.0.113.5", repeat = 6 }
expect = { action = "limit", rule = "limit/login-per-subnet" }

[[tests]]
name = "a trap path flags the client"
request = { path = "/.env", ip = "203.0.113.66" }
expect = { action = "block", rule = "honeypot/probes" }

[[tests]]
name = "private items need an API key"
request = { path = "/api/private/3", ip = "203.0.113.40" }
expect = { action = "unauthorized", rule = "auth/missing_api_key" }

[[tests]]
name = "a rule blocks the admin area"
request = { path = "/admin/users", ip = "203.0.113.41" }
expect = { action = "block", rule = "rule/no-admin" }

[[tests]]
name = "an ordinary request passes"
request = { path = "/api/items/2", ip = "203.0.113.42", headers = { accept = "application/json" } }
expect = { action = "allow" }
"#;

/// How a mode sends one request; returns Palisade's request id for it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Proxy,
    DecisionCall,
    ExtAuthz,
    Middleware,
}

/// The request id an answer carries (a refusal's JSON, or the header).
fn request_id_of(r: &Resp) -> String {
    let h = r.header("x-request-id");
    if !h.is_empty() {
        return h.to_owned();
    }
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|j| j["request_id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends every case's requests in `mode`; the decisions (action, rule) of each case's last.
async fn replay(
    mode: Mode,
    cases: &[palisade_config::TestCase],
    up: &Upstream,
) -> Vec<(String, String)> {
    let ext_port = free_port();
    let config = config_for(up, &POLICY.replace("EXT_AUTHZ_PORT", &ext_port.to_string()));
    // The middleware runs in this process; every other mode is the real binary.
    let (gateway, tower) = if mode == Mode::Middleware {
        let dir = std::env::temp_dir().join(format!("palisade-modes-{}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("palisade.toml"), &config).unwrap();
        let mut opts = palisade_tower::Options::file(dir.join("palisade.toml"));
        opts.overrides.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        opts.overrides.data_dir = Some(dir.join("data"));
        opts.admin_token = Some(ADMIN_TOKEN.into());
        let p = palisade_tower::Palisade::start(opts).await.unwrap();
        let app = axum::Router::new()
            .fallback(|| async { "ok" })
            .layer(p.layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        (None, Some((p, addr)))
    } else {
        (Some(Gateway::start(Some(&config))), None)
    };
    let mut grpc = if mode == Mode::ExtAuthz {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match AuthorizationClient::connect(format!("http://127.0.0.1:{ext_port}")).await {
                Ok(c) => break Some(c),
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => panic!("ext_authz: {e}"),
            }
        }
    } else {
        None
    };
    let mut out = Vec::new();
    for case in cases {
        let mut last_id = String::new();
        for n in 1..=case.repeat {
            let path = case.path.replace("{n}", &n.to_string());
            let target = match &case.query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let ip = case.ip.to_string();
            let mut headers: Vec<(&str, &str)> = case
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("")))
                .collect();
            headers.push(("x-forwarded-for", &ip));
            last_id = match mode {
                Mode::Proxy => {
                    let g = gateway.as_ref().unwrap();
                    request_id_of(&send(case.method.as_str(), &g.url(&target), &headers, "").await)
                }
                Mode::DecisionCall => {
                    let g = gateway.as_ref().unwrap();
                    let mut h = headers.clone();
                    let method = case.method.to_string();
                    h.push(("x-forwarded-method", &method));
                    h.push(("x-forwarded-uri", &target));
                    request_id_of(&send("GET", &g.url("/_palisade/authz"), &h, "").await)
                }
                Mode::ExtAuthz => {
                    let r = grpc
                        .as_mut()
                        .unwrap()
                        .check(crate::ext_authz::check(
                            &ip,
                            case.method.as_str(),
                            &target,
                            &headers,
                            "",
                        ))
                        .await
                        .unwrap()
                        .into_inner();
                    let pick = |h: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
                        h.iter()
                            .filter_map(|o| o.header.as_ref())
                            .find(|h| h.key == "x-request-id")
                            .map(|h| h.value.clone())
                    };
                    match r.http_response.unwrap() {
                        HttpResponse::OkResponse(ok) => pick(&ok.headers).unwrap_or_default(),
                        HttpResponse::DeniedResponse(d) => pick(&d.headers)
                            .or_else(|| {
                                serde_json::from_str::<serde_json::Value>(&d.body)
                                    .ok()
                                    .and_then(|j| j["request_id"].as_str().map(str::to_owned))
                            })
                            .unwrap_or_default(),
                        HttpResponse::ErrorResponse(_) => String::new(),
                    }
                }
                Mode::Middleware => {
                    let (_, addr) = tower.as_ref().unwrap();
                    let url = format!("http://{addr}{target}");
                    request_id_of(&send(case.method.as_str(), &url, &headers, "").await)
                }
            };
        }
        assert_eq!(last_id.len(), 16, "{mode:?} {}: no request id", case.name);
        let d = match (&gateway, &tower) {
            (Some(g), _) => g.wait_decision(|d| d["request_id"] == last_id.as_str()),
            (None, Some((p, _))) => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    let r = send(
                        "GET",
                        &format!("http://{}/v1/decisions?limit=1000", p.admin_addr()),
                        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                        "",
                    )
                    .await;
                    let all: serde_json::Value = r.json();
                    let found = all
                        .as_array()
                        .or_else(|| all["decisions"].as_array())
                        .and_then(|a| {
                            a.iter()
                                .find(|d| d["request_id"] == last_id.as_str())
                                .cloned()
                        });
                    if let Some(d) = found {
                        break d;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no decision {last_id}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            _ => unreachable!(),
        };
        out.push((
            d["action"].as_str().unwrap_or("").to_owned(),
            d["rule"].as_str().unwrap_or("").to_owned(),
        ));
    }
    if let Some((p, _)) = tower {
        p.shutdown().await;
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policys_cases_get_the_same_decision_in_every_mode() {
    let up = upstream().await;
    let compiled = palisade_config::compile_str(
        &POLICY.replace("EXT_AUTHZ_PORT", "1"),
        "modes.toml",
        std::path::Path::new("."),
    )
    .unwrap();
    // What `palisade check` says first: the cases hold on the engine alone.
    for o in palisade_config::run_cases(&compiled) {
        assert!(o.passed, "{o:?}");
    }
    let cases = compiled.tests.clone();
    for mode in [
        Mode::Proxy,
        Mode::DecisionCall,
        Mode::ExtAuthz,
        Mode::Middleware,
    ] {
        let got = replay(mode, &cases, &up).await;
        for (case, (action, rule)) in cases.iter().zip(got) {
            assert_eq!(action, case.expect_action, "{mode:?}: {}", case.name);
            if let Some(r) = &case.expect_rule {
                assert_eq!(&rule, r, "{mode:?}: {}", case.name);
            }
        }
    }
}
