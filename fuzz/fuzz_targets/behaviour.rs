//! Behaviour and rules on arbitrary requests: usernames read from arbitrary login bodies (JSON
//! and form), arbitrary paths, queries, cookies and user agents through the default policy's
//! behaviour tables and a few CEL rules, and arbitrary answers observed. Never panics; a
//! username never comes back longer than 256 bytes.
//! Run: cargo +nightly fuzz run behaviour
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use palisade_engine::{Engine, RequestFacts};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let src = format!(
            "{}\n{}",
            palisade_config::DEFAULT_CONFIG,
            r#"
[[rules]]
name = "r1"
when = 'headers["x-a"].startsWith("b") && score > 10'
action = "challenge"

[[rules]]
name = "r2"
when = 'signals.exists(s, s.startsWith("behaviour/")) || query.contains("x")'
action = "score"
weight = 5
"#
        );
        let c = palisade_config::compile_str(&src, "fuzz", Path::new(".")).unwrap();
        Engine::new(c.policy, None)
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(6, '\n');
    let path = parts.next().unwrap_or("/");
    let query = parts.next();
    let cookie = parts.next().unwrap_or("");
    let ua = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok()).unwrap_or(200);
    let body = parts.next().unwrap_or("").as_bytes();

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        headers.insert(http::header::COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(ua) {
        headers.insert(http::header::USER_AGENT, v.clone());
        headers.insert("x-a", v);
    }
    let mut form = headers.clone();
    form.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let json_user = palisade_gateway::proxy::username_in(body, "username", &headers);
    let form_user = palisade_gateway::proxy::username_in(body, "username", &form);
    for u in [&json_user, &form_user].into_iter().flatten() {
        assert!(u.len() <= 256);
    }
    let e = engine();
    let n = data.len() as u64;
    for (i, user) in [json_user.as_deref(), form_user.as_deref()].into_iter().enumerate() {
        let ip = std::net::IpAddr::from([10, (n % 7) as u8, i as u8, 1]);
        let method = if i == 0 { Method::GET } else { Method::POST };
        let facts = RequestFacts {
            method: &method,
            path,
            query,
            headers: &headers,
            client_ip: ip,
            peer_ip: ip,
            now: 3_600_000_000_000 + n * 1_000_000,
            unix_ms: 1_800_000_000_000,
            auth: palisade_engine::model::principal::Auth::Anonymous,
            version: http::Version::HTTP_11,
            ja4h: Some("ge11nn020000_000000000000_000000000000_000000000000"),
            hfp: None,
            tls: None,
            h2fp: None,
            ja3: None,
            clearance: None,
            signed_agent: None,
            ip_info: None,
            bot_verification: None,
            username: user,
            probes: &[],
            contract: None,
        };
        if let Ok(d) = e.evaluate(&facts) {
            assert!(d.score <= 100);
            e.observe_status(&d, status, palisade_engine::Origin::Upstream, facts.now);
        }
    }
});
