//! Rate limits over real HTTP: 429s and their headers, identity dimensions, delay queues and
//! upstream-reported cost.

use std::time::{Duration, Instant};

use sfv::{List, Parser};

use crate::common::*;

fn assert_sf_list(field: &str) -> usize {
    let l: List = Parser::new(field)
        .parse()
        .unwrap_or_else(|e| panic!("{field:?} is not an RFC 9651 List: {e}"));
    l.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_answers_429_with_headers_and_a_stable_body() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[[routes]]
name = "login"
match = { path = "/login", methods = ["POST"] }

[[limits]]
name = "per-ip"
key = ["ip"]
rate = "100/10s"

[[limits]]
name = "login-per-ip"
routes = ["login"]
key = ["ip"]
rate = "3/1m"
"#,
    )));
    for i in 0..3 {
        let r = send("POST", &g.url("/login"), &[], "").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header("ratelimit-policy"),
            r#""per-ip";q=100;w=10, "login-per-ip";q=3;w=60"#
        );
        assert_eq!(assert_sf_list(r.header("ratelimit")), 2);
        assert_eq!(r.header("x-ratelimit-limit"), "3");
        assert_eq!(r.header("x-ratelimit-remaining"), (2 - i).to_string());
    }
    let r = send("POST", &g.url("/login"), &[], "").await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(
        (19..=21).contains(&retry),
        "one unit per 20 s: retry after {retry}"
    );
    let j = r.json();
    assert_eq!(j["error"], "rate_limited");
    assert_eq!(j["retry_after"], retry);
    assert!(j["message"].is_string());
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains("login-per-ip") && !text.contains("limit/"),
        "the body never names the rule"
    );
    assert!(
        r.header("ratelimit").contains(r#""login-per-ip";r=0;t=60"#),
        "{}",
        r.header("ratelimit")
    );
    assert_eq!(assert_sf_list(r.header("ratelimit-policy")), 2);
    // Other routes are not affected by the login limit.
    assert_eq!(get(&g.url("/echo")).await.status, 200);
    // The upstream never saw the refused request.
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        4
    );

    let d = g.wait_decisions(5);
    let refused = d.iter().find(|d| d["status"] == 429).unwrap();
    assert_eq!(refused["action"], "limit");
    assert_eq!(refused["rule"], "limit/login-per-ip");
    assert_eq!(refused["route"], "login");
    assert_eq!(refused["method"], "POST");
    assert_eq!(refused["client_ip"], "127.0.0.1");
    assert_eq!(refused["reasons"][0]["signal"], "limit/login-per-ip");
    assert_eq!(refused["shadow"], false);
    assert!(refused["request_id"].as_str().unwrap().len() == 16);
    assert!(refused["time"].as_str().unwrap().ends_with('Z'));
    assert!(refused["latency_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_dimensions_from_trusted_proxies_and_headers() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[server]
trusted_proxies = ["127.0.0.1"]

[[limits]]
name = "per-subnet"
key = ["ip/24"]
rate = "2/1m"

[[limits]]
name = "per-tenant"
key = ["header:x-tenant", "method"]
rate = "3/1m"
"#,
    )));
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(
        send("GET", &g.url("/"), &xff("203.0.113.1"), "")
            .await
            .status,
        200
    );
    assert_eq!(
        send("GET", &g.url("/"), &xff("203.0.113.2"), "")
            .await
            .status,
        200
    );
    assert_eq!(
        send("GET", &g.url("/"), &xff("203.0.113.3"), "")
            .await
            .status,
        429
    );
    assert_eq!(
        send("GET", &g.url("/"), &xff("203.0.114.3"), "")
            .await
            .status,
        200
    );
    for ip in ["198.51.100.1", "198.51.101.1", "198.51.102.1"] {
        assert_eq!(
            send(
                "GET",
                &g.url("/"),
                &[("x-forwarded-for", ip), ("x-tenant", "acme")],
                ""
            )
            .await
            .status,
            200
        );
    }
    let r = send(
        "GET",
        &g.url("/"),
        &[("x-forwarded-for", "198.51.103.1"), ("x-tenant", "acme")],
        "",
    )
    .await;
    assert_eq!(r.status, 429);
    // Another method is another key.
    let r = send(
        "POST",
        &g.url("/"),
        &[("x-forwarded-for", "198.51.104.1"), ("x-tenant", "acme")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let d = g.wait_decisions(9);
    let last_limited = d.iter().rev().find(|d| d["status"] == 429).unwrap();
    assert_eq!(last_limited["rule"], "limit/per-tenant");
    assert_eq!(last_limited["identity"]["header:x-tenant"], "acme");
    assert_eq!(last_limited["identity"]["ip/24"], "198.51.103.0/24");
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_holds_requests_then_refuses_beyond_the_bound() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[[limits]]
name = "smooth"
key = ["ip"]
rate = "5/1s"
burst = 1
action = "delay"
max_delay = "500ms"
"#,
    )));
    let started = Instant::now();
    let (ua, ub, uc) = (g.url("/a"), g.url("/b"), g.url("/c"));
    let (a, b, c) = tokio::join!(get(&ua), get(&ub), get(&uc));
    let took = started.elapsed();
    let mut statuses = [a.status.as_u16(), b.status.as_u16(), c.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200], "held, not refused");
    assert!(
        took >= Duration::from_millis(390),
        "the third waited two intervals: {took:?}"
    );
    // A burst far beyond what fits in max_delay gets 429 for the excess.
    let futs: Vec<_> = (0..10)
        .map(|i| {
            let u = g.url(&format!("/n{i}"));
            tokio::spawn(async move { get(&u).await.status.as_u16() })
        })
        .collect();
    let mut codes = Vec::new();
    for f in futs {
        codes.push(f.await.unwrap());
    }
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
    let d = g.wait_decisions(13);
    assert!(
        d.iter()
            .any(|d| d["action"] == "delay" && d["status"] == 200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_reported_cost_is_charged_after_the_response() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[[routes]]
name = "llm"
match = { path = "/cost" }
cost = 10
cost_header = "x-cost-tokens"

[[limits]]
name = "tokens"
routes = ["llm"]
key = ["ip"]
rate = "100/1h"
unit = "cost"
"#,
    )));
    let r = get(&g.url("/cost?tokens=45")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        r#""tokens";q=100;w=3600;palisade-unit="cost""#
    );
    assert_eq!(r.header("x-ratelimit-remaining"), "90");
    let r = get(&g.url("/cost?tokens=45")).await;
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        "45",
        "the first call was charged 45, not 10"
    );
    let r = get(&g.url("/cost?tokens=45")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), "0");
    let r = get(&g.url("/cost?tokens=45")).await;
    assert_eq!(r.status, 429, "budget spent by reported cost");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_delay_queue_refuses_and_gives_the_reservation_back() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[[limits]]
name = "queue"
key = ["ip"]
rate = "1/1s"
burst = 1
action = "delay"
max_delay = "5s"
max_queue = 1
"#,
    )));
    assert_eq!(get(&g.url("/1")).await.status, 200);
    let held_url = g.url("/2");
    let held = tokio::spawn(async move { get(&held_url).await.status.as_u16() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The one queue slot is taken: refused at once, not held.
    let started = Instant::now();
    let r = get(&g.url("/3")).await;
    assert_eq!(r.status, 429);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(held.await.unwrap(), 200);
    // The refused request's reservation was refunded: right after the held one is served
    // (at ~1 s), the next one waits ~1 s more, not ~2 s.
    let started = Instant::now();
    assert_eq!(get(&g.url("/4")).await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited {:?}",
        started.elapsed()
    );
    let d = g.wait_decisions(4);
    assert!(
        d.iter()
            .any(|d| d["rule"] == "limit/queue/queue_full" && d["status"] == 429),
        "{d:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_delay_queue_counts_waiting_requests_not_forwarded_ones() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[[limits]]
name = "queue"
key = ["ip"]
rate = "1/1s"
burst = 1
action = "delay"
max_delay = "5s"
max_queue = 1
"#,
    )));
    assert_eq!(get(&g.url("/x")).await.status, 200);
    // Held ~1 s, then forwarded to an upstream that takes 2 s.
    let slow_url = g.url("/slow?ms=2000");
    let slow = tokio::spawn(async move { get(&slow_url).await.status.as_u16() });
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The slow one is no longer waiting, so the single queue slot is free for this one.
    let r = get(&g.url("/y")).await;
    assert_eq!(r.status, 200, "refused although nothing was waiting");
    assert_eq!(slow.await.unwrap(), 200);
}
