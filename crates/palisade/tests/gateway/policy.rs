//! Policy over real HTTP: rate limits and their headers, delay, cost, lists, shadow mode, the
//! decision log.

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
async fn lists_inline_and_from_files() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-lists-it-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let deny_file = dir.join("deny.txt");
    std::fs::write(&deny_file, "# denied\n198.51.100.0/24\n").unwrap();
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[[limits]]
name = "tight"
key = ["ip"]
rate = "1/1h"

[lists]
deny = ["203.0.113.0/24", "file:{}"]
allow = ["192.0.2.10"]
"#,
            deny_file.display()
        ),
    )));
    for ip in ["203.0.113.50", "198.51.100.9"] {
        let r = send("GET", &g.url("/"), &[("x-forwarded-for", ip)], "").await;
        assert_eq!(r.status, 403, "{ip}");
        assert_eq!(r.json()["error"], "forbidden");
    }
    for _ in 0..5 {
        let r = send("GET", &g.url("/"), &[("x-forwarded-for", "192.0.2.10")], "").await;
        assert_eq!(r.status, 200, "allowlisted clients bypass limits");
    }
    let d = g.wait_decisions(7);
    assert_eq!(d[0]["rule"], "list/deny");
    assert_eq!(d[0]["score"], 100);
    assert_eq!(d[6]["rule"], "list/allow");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_forwards_and_logs_would_actions() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[server]
mode = "shadow"

[[limits]]
name = "tiny"
key = ["ip"]
rate = "1/1h"

[lists]
deny = ["127.0.0.0/8"]
"#,
    )));
    for _ in 0..3 {
        assert_eq!(get(&g.url("/x")).await.status, 200);
    }
    let d = g.wait_decisions(3);
    assert!(
        d.iter()
            .all(|d| d["action"] == "would_block" && d["shadow"] == true),
        "{d:?}"
    );
    let m = get(&g.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"palisade_shadow_decisions_total{route="default",action="would_block",rule="list/deny"} 3"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_limit_shadow_and_sampled_allows() {
    let up = upstream().await;
    let g = Gateway::start(Some(
        &config_for(
            &up,
            r#"
[log]
sample_allow = 0.0

[[limits]]
name = "trial"
key = ["ip"]
rate = "2/1h"
action = "shadow"
"#,
        )
        .replace("[log]\ndecisions = \"stdout\"\n\n", ""),
    ));
    for _ in 0..5 {
        assert_eq!(get(&g.url("/x")).await.status, 200);
    }
    // Allows are not logged at sample 0; the three would_limit decisions are.
    let d = g.wait_decisions(3);
    std::thread::sleep(Duration::from_millis(300));
    let d2 = g.decisions();
    assert_eq!(d2.len(), 3, "{d2:?}");
    assert!(
        d.iter()
            .all(|d| d["action"] == "would_limit" && d["rule"] == "limit/trial")
    );
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
async fn decision_log_can_go_to_a_file() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "").replace(
        "decisions = \"stdout\"",
        "decisions = \"logs/decisions.jsonl\"",
    )));
    for p in ["/a", "/b"] {
        assert_eq!(get(&g.url(p)).await.status, 200);
    }
    let file = g.dir.join("logs/decisions.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["path"], "/b");
    assert!(g.decisions().is_empty(), "nothing on stdout");
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

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const GPTBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)";

#[tokio::test(flavor = "multi_thread")]
async fn bot_categories_are_signals_or_actions_as_configured() {
    let up = upstream().await;
    let bots = r#"
[bots]
weight = 10

[bots.actions]
ai_training = "block"
http_library = "tag"
"#;
    let g = Gateway::start(Some(&config_for(&up, bots)));
    let ua = |u: &'static str| [("user-agent", u)];

    let r = send("GET", &g.url("/echo"), &ua(GPTBOT), "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, serde_json::json!("forbidden"))
    );
    let d = g.wait_decision(|d| d["rule"] == "bot/ai_training");
    assert_eq!(d["action"], "block");
    assert_eq!(d["identity"]["bot"], "ai_training");
    assert_eq!(d["identity"]["bot_name"], "GPTBot");

    // Tagged: forwarded, with the score and the signal for the upstream.
    let r = send("GET", &g.url("/echo"), &ua("curl/8.5.0"), "").await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-palisade-score"][0], "10");
    assert_eq!(seen["headers"]["x-palisade-signals"][0], "bot/http_library");

    // A person's browser: no signal. A bot with the default action: a signal only.
    let r = send("GET", &g.url("/echo"), &ua(CHROME), "").await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-palisade-score").is_none());
    let r = send(
        "GET",
        &g.url("/echo"),
        &ua("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let d = g.wait_decision(|d| d["identity"]["bot"] == "seo");
    assert_eq!(d["action"], "allow");
    assert_eq!(d["reasons"][0]["signal"], "bot/seo");
    assert_eq!(d["reasons"][0]["weight"], 10);

    // Shadow mode: the block is logged as would_block and the request forwarded.
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!("[server]\nmode = \"shadow\"\n{bots}"),
    )));
    let r = send("GET", &g.url("/echo"), &ua(GPTBOT), "").await;
    assert_eq!(r.status, 200);
    let d = g.wait_decision(|d| d["rule"] == "bot/ai_training");
    assert_eq!(
        (d["action"].clone(), d["shadow"].clone()),
        (serde_json::json!("would_block"), serde_json::json!(true))
    );
    let m = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    assert!(m.contains("palisade_bot_cache_entries 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ja4h_is_logged_and_limits_can_key_on_it() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[[limits]]\nname = \"per-fingerprint\"\nkey = [\"ja4h\"]\nrate = \"2/1m\"\n",
    )));
    let a = [("accept", "*/*"), ("x-client", "a")];
    let b = [
        ("accept-language", "de-DE,de;q=0.9"),
        ("accept", "text/html"),
    ];
    for expect in [200, 200, 429] {
        assert_eq!(send("GET", &g.url("/x"), &a, "").await.status, expect);
    }
    // Other header habits: another fingerprint, its own budget.
    assert_eq!(send("GET", &g.url("/x"), &b, "").await.status, 200);
    let limited = g.wait_decision(|d| d["action"] == "limit");
    let fp = limited["identity"]["ja4h"].as_str().unwrap().to_owned();
    // GET, HTTP/1.1, no cookie or referer, the client's headers plus Host, no Accept-Language.
    assert!(fp.starts_with("ge11nn"), "{fp}");
    assert!(fp.ends_with("0000_") || fp.contains("0000_"), "{fp}");
    let other = g.wait_decision(|d| {
        d["identity"]["ja4h"]
            .as_str()
            .is_some_and(|j| j.contains("dede"))
    });
    assert_ne!(other["identity"]["ja4h"], limited["identity"]["ja4h"]);
    // "Why was this fingerprint limited?"
    let who = admin_get(&g, &format!("/v1/identities/ja4h/{fp}"))
        .await
        .json();
    assert_eq!(who["identity"]["limits"][0]["remaining"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_library_dressed_as_chrome_is_flagged_by_its_headers() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[bots]\n\n[headers]\nweight = 15\n\n[scoring]\ntag_at = 30\ndelay_at = 0\nchallenge_at = 0\nblock_at = 0\n",
    )));
    // The same Chrome user agent: once with Chrome's headers, once as a script sends it.
    let real = [
        ("user-agent", CHROME),
        (
            "sec-ch-ua",
            "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\"",
        ),
        ("sec-ch-ua-mobile", "?0"),
        ("accept", "text/html,application/xhtml+xml"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("accept-language", "en-GB,en;q=0.9"),
    ];
    let r = send("GET", &g.url("/echo"), &real, "").await;
    assert!(
        r.json()["headers"].get("x-palisade-score").is_none(),
        "{}",
        r.json()
    );
    let r = send("GET", &g.url("/echo"), &[("user-agent", CHROME)], "").await;
    let seen = r.json();
    assert_eq!(seen["headers"]["x-palisade-score"][0], "60");
    let signals = seen["headers"]["x-palisade-signals"][0]
        .as_str()
        .unwrap()
        .to_owned();
    for s in [
        "headers/chromium_without_client_hints",
        "headers/browser_without_fetch_metadata",
        "headers/browser_without_accept_language",
        "headers/browser_with_library_headers",
    ] {
        assert!(signals.contains(s), "{signals}");
    }
    let d = g.wait_decision(|d| d["action"] == "tag");
    assert_eq!(d["score"], 60);
    assert_eq!(d["identity"]["bot"], "human");
}

fn palisade_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("PALISADE_ADMIN_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn honeypots_flag_clients_and_blocks_escalate_persist_and_are_managed() {
    let up = upstream().await;
    let cfg = config_for(
        &up,
        r#"
[server]
trusted_proxies = ["127.0.0.1"]

[[honeypots]]
name = "wp"
paths = ["/wp-login.php", "/hidden/*"]
decoy_keys = ["pal_decoydecoyde_DECOYDECOYDECOYDECOYDECOYDECOYDE"]
block_for = "1h"
flag = ["ip"]
robots_txt = true
"#,
    );
    let g = Gateway::start_with(Some(&cfg), &[], &[TEST_CLOCK]);
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let robots = get(&g.url("/robots.txt")).await;
    let text = String::from_utf8_lossy(&robots.body).to_string();
    assert!(
        text.contains("Disallow: /wp-login.php") && text.contains("Disallow: /hidden/"),
        "{text}"
    );

    // A trap: answered as if nothing were there, and the client is blocked from then on.
    let r = send("GET", &g.url("/hidden/feed"), &from("198.51.100.7"), "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (404, serde_json::json!("not_found"))
    );
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the trap never reaches the API"
    );
    let r = send("GET", &g.url("/x"), &from("198.51.100.7"), "").await;
    assert_eq!(r.status, 403);
    g.wait_decision(|d| d["rule"] == "block/honeypot/wp");
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.8"), "")
            .await
            .status,
        200
    );

    // A decoy key flags whoever presents it.
    let decoy = "Bearer pal_decoydecoyde_DECOYDECOYDECOYDECOYDECOYDECOYDE";
    let r = send(
        "GET",
        &g.url("/x"),
        &[
            ("x-forwarded-for", "198.51.100.9"),
            ("authorization", decoy),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.9"), "")
            .await
            .status,
        403
    );

    // Repeat offenders stay out twice as long.
    advance_clock(&g, 3_601).await;
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.7"), "")
            .await
            .status,
        200
    );
    send("GET", &g.url("/wp-login.php"), &from("198.51.100.7"), "").await;
    let blocks = admin_get(&g, "/v1/blocks").await.json();
    let b = blocks["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["key"] == "ip:198.51.100.7")
        .unwrap()
        .clone();
    assert_eq!(b["strikes"], 2);
    assert!(
        (7_190..=7_200).contains(&b["expires_in_secs"].as_u64().unwrap()),
        "{b}"
    );

    // Operators add, list and lift blocks with the CLI.
    let admin = format!("http://{}", g.admin);
    let (code, out, err) = palisade_cli(&[
        "blocks",
        "add",
        "ip",
        "198.51.100.10",
        "--ttl",
        "10m",
        "--reason",
        "abuse-report",
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.10"), "")
            .await
            .status,
        403
    );
    g.wait_decision(|d| d["rule"] == "block/admin/abuse-report");
    let who = admin_get(&g, "/v1/identities/ip/198.51.100.10")
        .await
        .json();
    assert_eq!(who["block"]["reason"], "admin/abuse-report");
    let (_, out, _) = palisade_cli(&["blocks", "list", "--admin", &admin]);
    assert!(
        out.contains("ip:198.51.100.10") && out.contains("admin/abuse-report"),
        "{out}"
    );
    let (code, _, err) = palisade_cli(&["blocks", "add", "colour", "red", "--admin", &admin]);
    assert_eq!(code, 1);
    assert!(err.contains("dimension"), "{err}");
    let (code, out, err) =
        palisade_cli(&["blocks", "remove", "ip", "198.51.100.10", "--admin", &admin]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.10"), "")
            .await
            .status,
        200
    );

    // Blocks survive a crash (honeypot blocks are flushed every second).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let dir = g.kill9();
    let g = Gateway::start_in(dir, Some(&cfg), &[], &[TEST_CLOCK]);
    // (198.51.100.7's second block runs two hours past the clock moved forward above.)
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.7"), "")
            .await
            .status,
        403
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.8"), "")
            .await
            .status,
        200
    );
    let audit = admin_get(&g, "/v1/audit").await.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"block.add") && actions.contains(&"block.remove"),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn networks_countries_and_tor_exits_are_signals_and_keys() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-intel-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    // A small iptoasn table and Tor exit list, made here (the real ones are downloads).
    std::fs::write(
        dir.join("ip2asn.tsv"),
        "3.0.0.0\t3.127.255.255\t16509\tUS\tAMAZON-02\n\
         81.2.69.0\t81.2.69.255\t20712\tGB\tANDREWS-ARNOLD\n\
         2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64500\tDE\tEXAMPLE-V6\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tor.txt"),
        "ExitNode 0011\nExitAddress 81.2.69.160 2026-11-20 10:00:00\n",
    )
    .unwrap();
    // And MaxMind-format databases for what the table lacks, written by the test.
    use palisade_intel::mmdb_write::{asn, country, write};
    std::fs::write(
        dir.join("asn.mmdb"),
        write(
            "GeoLite2-ASN",
            &[(
                "203.0.113.0".parse().unwrap(),
                24,
                asn(64496, "EXAMPLE-NET"),
            )],
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("country.mmdb"),
        write(
            "GeoLite2-Country",
            &[("203.0.113.0".parse().unwrap(), 24, country("NZ"))],
        ),
    )
    .unwrap();
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[intel]
asn_db = "{dir}/ip2asn.tsv"
tor_exits = "{dir}/tor.txt"
mmdb = ["{dir}/asn.mmdb", "{dir}/country.mmdb"]

[intel.weights]
hosting = 25

[[limits]]
name = "per-asn"
key = ["asn"]
rate = "2/1m"

[[limits]]
name = "per-country"
key = ["country"]
rate = "100/1m"
"#,
            dir = dir.display()
        ),
    )));
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    // Two addresses of one cloud network share its budget.
    assert_eq!(
        send("GET", &g.url("/x"), &from("3.1.2.3"), "").await.status,
        200
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("3.9.9.9"), "").await.status,
        200
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("3.1.2.4"), "").await.status,
        429
    );
    let d = g.wait_decision(|d| d["action"] == "limit");
    assert_eq!(d["rule"], "limit/per-asn");
    assert_eq!(d["identity"]["asn"], "AS16509");
    assert_eq!(d["identity"]["country"], "US");
    assert_eq!(d["identity"]["network"], "hosting");
    assert!(
        d["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["signal"] == "intel/hosting" && r["weight"] == 25)
    );
    // A Tor exit on an ordinary network: the Tor signal, no network signal.
    assert_eq!(
        send("GET", &g.url("/x"), &from("81.2.69.160"), "")
            .await
            .status,
        200
    );
    let d = g.wait_decision(|d| d["identity"]["tor_exit"] == "true");
    assert_eq!(d["identity"]["asn"], "AS20712");
    let signals: Vec<&str> = d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signal"].as_str().unwrap())
        .collect();
    assert_eq!(signals, ["intel/tor"]);
    // From the MaxMind databases.
    assert_eq!(
        send("GET", &g.url("/x"), &from("203.0.113.50"), "")
            .await
            .status,
        200
    );
    let d = g.wait_decision(|d| d["identity"]["country"] == "NZ");
    assert_eq!(
        (
            d["identity"]["asn"].clone(),
            d["identity"]["as_name"].clone()
        ),
        (
            serde_json::json!("AS64496"),
            serde_json::json!("EXAMPLE-NET")
        )
    );
    let who = admin_get(&g, "/v1/identities/country/NZ").await.json();
    assert_eq!(who["identity"]["limits"][0]["remaining"], 99);
    // Unknown addresses carry nothing.
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.1"), "")
            .await
            .status,
        200
    );
    let who = admin_get(&g, "/v1/identities/asn/AS16509").await.json();
    assert_eq!(who["identity"]["limits"][0]["remaining"], 0);
    // A whole network can be blocked for a while.
    let r = admin_json(
        &g,
        "POST",
        "/v1/blocks",
        serde_json::json!({ "dimension": "asn", "value": "AS20712", "ttl": "10m" }),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        send("GET", &g.url("/x"), &from("81.2.69.160"), "")
            .await
            .status,
        403
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("81.2.69.7"), "")
            .await
            .status,
        403
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real DNS server (dnsmasq) on a free loopback port, answering the given PTR and A records.
struct Dns {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Dns {
    /// What dnsmasq logged (its queries and errors), for a failing test's message.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A DNS query (RFC 1035 §4.1) for the PTR record of an IPv4 address, with id `id`.
fn ptr_query(id: u16, ip: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    let rev: Vec<&str> = ip.split('.').rev().collect();
    for label in rev.iter().copied().chain(["in-addr", "arpa"]) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 12, 0, 1]); // root; PTR; IN
    q
}

/// A real dnsmasq on a free port serving `ptr` and `hosts`, returned once it answers a query
/// for the first PTR record. It is started again on another port if it could not bind (the
/// port a moment ago free may be taken by then, for UDP or for the TCP listener beside it).
fn dnsmasq(ptr: &[(&str, &str)], hosts: &[(&str, &str)]) -> Dns {
    let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("dnsmasq must be installed (scripts/test.sh installs dnsmasq-base)");
    let mut last_log = String::new();
    for _attempt in 0..5 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("palisade-dnsmasq-{}.log", rand_u64()));
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--log-queries",
        ])
        .args([
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"));
        for (ip, name) in ptr {
            let rev: Vec<&str> = ip.split('.').rev().collect();
            cmd.arg(format!(
                "--ptr-record={}.in-addr.arpa,{name}",
                rev.join(".")
            ));
        }
        for (name, ip) in hosts {
            cmd.arg(format!("--host-record={name},{ip}"));
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut dns = Dns { child, port, log };
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut answered = false;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = dns.child.try_wait() {
                break; // it exited: most likely the port was taken
            }
            let _ = probe.send_to(&ptr_query(0x5a5a, ptr[0].0), ("127.0.0.1", port));
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = probe.recv_from(&mut buf)
                && n >= 12
                && buf[..2] == [0x5a, 0x5a]
            {
                answered = true;
                break;
            }
        }
        if answered {
            return dns;
        }
        last_log = dns.log();
        drop(dns);
    }
    panic!("dnsmasq did not start; its last log:\n{last_log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claimed_good_bots_are_verified_by_ranges_and_forward_confirmed_dns() {
    let up = upstream().await;
    let dns = dnsmasq(
        &[
            ("198.51.100.7", "crawl-198-51-100-7.googlebot.com"),
            ("198.51.100.8", "evil.example.com"),
            ("198.51.100.9", "crawl-fake.googlebot.com"),
        ],
        &[
            ("crawl-198-51-100-7.googlebot.com", "198.51.100.7"),
            ("crawl-fake.googlebot.com", "203.0.113.1"),
        ],
    );
    let dir = std::env::temp_dir().join(format!("palisade-verify-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("googlebot.json"),
        r#"{"creationTime": "2026-11-21T00:00:00", "prefixes": [{"ipv4Prefix": "66.249.64.0/27"}]}"#,
    )
    .unwrap();
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[bots]
dns_servers = ["127.0.0.1:{port}"]
pending = "allow"
spoofed = "block"

[bots.actions]
search_engine = "allow_verified"

[[bots.verify]]
name = "googlebot"
claims = "googlebot"
ranges = ["{dir}/googlebot.json"]
rdns = ["googlebot.com", "google.com"]
"#,
            port = dns.port,
            dir = dir.display()
        ),
    )));
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    let as_googlebot = |ip: &'static str| [("x-forwarded-for", ip), ("user-agent", GOOGLEBOT)];

    // In the published ranges: verified at once, and allowed without a signal.
    assert_eq!(
        send("GET", &g.url("/x"), &as_googlebot("66.249.64.5"), "")
            .await
            .status,
        200
    );
    let d = g.wait_decision(|d| d["identity"]["bot_claim"] == "googlebot:verified");
    assert_eq!(d["score"], 0);

    // Elsewhere: reverse DNS, then forward confirmation, in the background. Pending claimants
    // are allowed (as configured); the verdict follows.
    let status = |ip: &'static str| {
        let url = g.url("/x");
        async move {
            send("GET", &url, &as_googlebot(ip), "")
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(status("198.51.100.7").await, 200);
    g.wait_decision(|d| d["identity"]["bot_claim"] == "googlebot:pending");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut outcomes = (0, 0, 0);
    while std::time::Instant::now() < deadline {
        outcomes = (
            status("198.51.100.7").await,
            status("198.51.100.8").await,
            status("198.51.100.9").await,
        );
        if outcomes == (200, 403, 403) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        outcomes,
        (200, 403, 403),
        "genuine, wrong domain, forward mismatch\n--- gateway:\n{}\n--- dnsmasq:\n{}",
        g.stderr(),
        dns.log()
    );
    g.wait_decision(|d| {
        d["identity"]["bot_claim"] == "googlebot:verified" && d["client_ip"] == "198.51.100.7"
    });
    let spoofed = g.wait_decision(|d| d["rule"] == "bot/spoofed");
    assert_eq!(spoofed["action"], "block");
    // The block is for the false claim, not the address.
    let browser = [("x-forwarded-for", "198.51.100.8"), ("user-agent", CHROME)];
    assert_eq!(send("GET", &g.url("/x"), &browser, "").await.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
