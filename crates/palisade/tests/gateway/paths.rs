//! The path the policy judges is the path the upstream receives: spellings of a protected path
//! that lenient upstream routers would send to its handler must get that handler's policy, or be
//! refused. Judged against a real Express application (case-insensitive, non-strict routing)
//! and against an upstream that routes by the union of the lenient rules of other frameworks
//! (Tomcat/Spring matrix parameters and `..;`, `%2F` and `\` as separators, suffix matching,
//! trimmed spaces and dots, NUL truncation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::common::*;

/// Spellings of `/api/expensive` that some router reads as that path, and a few of `/api/login`.
const EXPENSIVE_VARIANTS: &[&str] = &[
    "/api/expensive",
    "/API/expensive",
    "/api/Expensive",
    "/api/EXPENSIVE/",
    "/Api/ExPeNsIvE",
    "/api/expensive;x=1",
    "/api;x=1/expensive",
    "/api/expensive;",
    "/api%2fexpensive",
    "/api%2Fexpensive",
    "/api\\expensive",
    "/api%5cexpensive",
    "/api/expensive.json",
    "/api/EXPENSIVE.JSON",
    "/api/expensive.",
    "/api/expensive..",
    "/api/expensive%2e",
    "/api/expensive%2ejson",
    "/api/expensive%20",
    "/api/%20expensive",
    "/api/expensive%09",
    "/api/expensive%00",
    "/api/expensive%00.json",
    "/api/%65xpensive",
    "/api/expen%73ive",
    "/api//expensive",
    "//api/expensive",
    "/api/./expensive",
    "/api/x/../expensive",
    "/api/expensive/.",
    "/api/expensive/x/..",
    "/api/public/..;/expensive",
    "/api/public/..%2fexpensive",
    "/api/public/..%5cexpensive",
    "/api/public/..\\expensive",
    "/api/public/%2e%2e/expensive",
    "/api/public/%2E%2E/expensive",
    "/api/%2e%2e/api/expensive",
    "/api/public/%252e%252e/expensive",
    "/api/expensive%252f",
    "/api/%c0%ae%c0%ae/api/expensive",
    "/api/expensive%3Bx",
    "/api/expensive?x=1",
    "/api/expensive/?x=/../",
];

/// Percent-decodes everything (lossy), as a lenient router does.
fn decode_all(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which handler the most lenient router known reaches with `raw` (path and query).
fn lenient_handler(method: &str, raw: &str) -> &'static str {
    let path = raw.split('?').next().unwrap_or("");
    // Tomcat and Spring strip `;params` from each raw segment before decoding (so `..;` is
    // `..`).
    let stripped: Vec<&str> = path
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect();
    let mut decoded = decode_all(&stripped.join("/"));
    // C-based servers stop at NUL.
    if let Some(nul) = decoded.find('\0') {
        decoded.truncate(nul);
    }
    // Windows servers and some routers read `\` as `/`.
    let decoded = decoded.replace('\\', "/");
    let mut segs: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        // Trimmed spaces and tabs, and (IIS) trailing dots.
        let seg = seg.trim_matches(|c: char| c == ' ' || c == '\t');
        let seg = if seg == "." || seg == ".." {
            seg
        } else {
            seg.trim_end_matches('.')
        };
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s.to_ascii_lowercase()),
        }
    }
    // Suffix pattern matching: `/x.json` is `/x`.
    if let Some(last) = segs.last_mut()
        && let Some((stem, _)) = last.split_once('.')
    {
        *last = stem.to_owned();
    }
    match (method, segs.join("/").as_str()) {
        ("GET", "api/expensive") => "expensive",
        ("POST", "api/login") => "login",
        _ => "other",
    }
}

/// An upstream routing by [`lenient_handler`]; records what it handled.
async fn lenient_upstream() -> (SocketAddr, Arc<Mutex<Vec<(String, &'static str)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let target = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        let h = lenient_handler(req.method().as_str(), &target);
                        s.lock().unwrap().push((target.clone(), h));
                        let body = serde_json::json!({ "handler": h, "path": target }).to_string();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn policy(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[log]
decisions = "off"

[[upstreams]]
name = "api"
url = "http://{upstream}"

[[routes]]
name = "expensive"
match = {{ path = "/api/expensive" }}
auth = "api_key"

[[routes]]
name = "login"
match = {{ path = "/api/login", methods = ["POST"] }}

[[routes]]
name = "items"
match = {{ path = "/api/items/{{id}}" }}

[[routes]]
name = "legacy"
match = {{ path = "/legacy/*" }}
allow_in_path = ["semicolon"]

[[limits]]
name = "login-per-ip"
routes = ["login"]
key = ["ip"]
rate = "5/1m"
burst = 5
{extra}
"#
    )
}

/// Sends every variant without a key; returns the ones the upstream handled as `expensive`.
async fn bypasses(gateway: &Gateway) -> Vec<String> {
    let mut leaked = Vec::new();
    for v in EXPENSIVE_VARIANTS {
        let r = raw_request(gateway.proxy, "GET", v, "").await;
        assert_ne!(r.status, 0, "{v}: no answer");
        if r.status == 200 && r.body.contains("\"handler\":\"expensive\"") {
            leaked.push(format!("{v} -> {} {}", r.status, r.body));
        }
    }
    leaked
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_reaches_a_lenient_routers_handler() {
    let (up, seen) = lenient_upstream().await;
    let g = Gateway::start(Some(&policy(up, "")));
    // The test's own router agrees that these are the protected path.
    let reach: Vec<&&str> = EXPENSIVE_VARIANTS
        .iter()
        .filter(|v| lenient_handler("GET", v) == "expensive")
        .collect();
    assert!(reach.len() >= 35, "{reach:?}");

    let leaked = bypasses(&g).await;
    assert!(leaked.is_empty(), "forwarded without a key: {leaked:#?}");

    // The canonical path is what the upstream receives.
    seen.lock().unwrap().clear();
    let r = raw_request(g.proxy, "GET", "/api//items/./%34%32?q=a%2Fb", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got, vec![("/api/items/42?q=a%2Fb".to_owned(), "other")]);

    // Honest paths pass: ids with escapes, UTF-8, a percent sign, and matrix parameters where
    // the route allows them.
    for ok in [
        "/api/items/caf%C3%A9",
        "/api/items/100%25",
        "/api/items/a%20b",
        "/legacy/page;jsessionid=abc",
        "/api/public",
    ] {
        let r = raw_request(g.proxy, "GET", ok, "").await;
        assert_eq!(r.status, 200, "{ok}: {r:?}");
    }
    // Refused with a clear code, not forwarded.
    let r = raw_request(g.proxy, "GET", "/api/items/x;y", "").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("\"error\":\"invalid_path\""), "{r:?}");
}

#[tokio::test]
async fn login_limits_count_every_spelling_of_the_login_path() {
    let (up, seen) = lenient_upstream().await;
    let g = Gateway::start(Some(&policy(up, "")));
    let spellings = [
        "/api/login",
        "/api/Login",
        "/API/LOGIN/",
        "/api/login.json",
        "/api//login",
        "/api/%6cogin",
        "/api/login;jsessionid=1",
        "/api/LOGIN",
        "/api/login%20",
        "/Api/Login.do",
    ];
    let mut statuses = Vec::new();
    for s in spellings {
        statuses.push(raw_request(g.proxy, "POST", s, "").await.status);
    }
    let logins = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, h)| *h == "login")
        .count();
    assert!(
        logins <= 5,
        "{logins} logins reached the handler: {statuses:?}"
    );
    assert_eq!(logins, 5, "the first five are served: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_real_express_app_is_not_bypassed() {
    let express = NodePeer::start("express-app.js", &[]).expect(
        "node and express are needed: run scripts/test.sh (npm ci in crates/palisade/tests/node)",
    );
    let g = Gateway::start(Some(&policy(express.addr, "")));
    // Express itself routes these to the protected handler (shown directly).
    for v in ["/API/expensive", "/api/EXPENSIVE/", "/api/Expensive"] {
        let direct = raw_request(express.addr, "GET", v, "").await;
        assert!(
            direct.body.contains("\"handler\":\"expensive\""),
            "{v}: {direct:?}"
        );
    }
    let leaked = bypasses(&g).await;
    assert!(leaked.is_empty(), "forwarded without a key: {leaked:#?}");
    // 8 logins in several spellings from one address: 5 served, then 429.
    let mut served = 0;
    for s in ["/api/login", "/api/Login", "/API/LOGIN", "/api/login/"]
        .iter()
        .cycle()
        .take(8)
    {
        let r = raw_request(g.proxy, "POST", s, "content-type: application/json\r\n").await;
        if r.status == 200 {
            assert!(r.body.contains("\"handler\":\"login\""), "{r:?}");
            served += 1;
        } else {
            assert_eq!(r.status, 429, "{r:?}");
        }
    }
    assert_eq!(served, 5);
}

#[tokio::test]
async fn case_sensitive_paths_keeps_case_significant() {
    let (up, _) = lenient_upstream().await;
    let g = Gateway::start(Some(&policy(
        up,
        "\n[server]\ncase_sensitive_paths = true\n",
    )));
    // `/API/expensive` is then another path (the default route): forwarded without a key.
    let r = raw_request(g.proxy, "GET", "/API/expensive", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = raw_request(g.proxy, "GET", "/api/expensive", "").await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let (up, seen) = lenient_upstream().await;
    let g = Gateway::start(Some(&policy(up, "")));
    let r = raw_exchange(
        g.proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405, "{r:?}");
    assert!(r.head.to_ascii_lowercase().contains("\r\nallow: "), "{r:?}");
    assert!(seen.lock().unwrap().is_empty());
}
