//! Behaviour, scoring and progressive throttling through the real gateway, and the traffic
//! simulator's report.

use std::time::{Duration, Instant};

use crate::common::*;

/// A flow rule heavy enough that each violation is an offence: anonymous reads of /data
/// without a prior sign-in.
fn throttle_config(up: &Upstream) -> String {
    config_for(
        up,
        r#"
[[routes]]
name = "login"
match = { path = "/login", methods = ["POST"] }

[[routes]]
name = "data"
match = { path = "/echo" }

[behaviour]

[[behaviour.flows]]
name = "login-first"
route = "data"
after = "login"
within = "10m"
anonymous_only = true
weight = 45

[scoring]
tag_at = 30
delay_at = 40
challenge_at = 0
block_at = 0
throttle = ["1s", "2s"]
throttle_block_for = "5m"
"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn repeat_offenders_are_delayed_longer_then_blocked_and_explain_says_why() {
    let up = upstream().await;
    let g = Gateway::start(Some(&throttle_config(&up)));
    let timed = |path: &'static str| {
        let url = g.url(path);
        async move {
            let t = Instant::now();
            let r = send("GET", &url, &[("user-agent", "Mozilla/5.0")], "").await;
            (r, t.elapsed())
        }
    };
    // First offence: held 1 s, then forwarded with its score for the upstream.
    let (r, took) = timed("/echo").await;
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(950), "{took:?}");
    let seen = r.json();
    assert_eq!(seen["headers"]["x-palisade-score"][0], "45");
    assert!(
        seen["headers"]["x-palisade-signals"][0]
            .as_str()
            .unwrap()
            .contains("flow/login-first")
    );
    // Offending again after serving the step: the next step, 2 s.
    let (r, took) = timed("/echo").await;
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(1950), "{took:?}");
    // Past the last step: refused, and blocked for a while.
    let (r, took) = timed("/echo").await;
    assert_eq!(r.status, 403);
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(r.json()["error"], "forbidden");
    let (r, _) = timed("/echo").await;
    assert_eq!(r.status, 403);
    let d = g.wait_decision(|d| d["rule"] == "block/score/throttle");
    assert_eq!(d["action"], "block");
    let throttled = g.wait_decision(|d| d["rule"] == "score/throttle");
    assert_eq!(throttled["score"], 45);
    let delays: Vec<_> = g
        .decisions()
        .into_iter()
        .filter(|d| d["rule"] == "score/delay")
        .collect();
    assert_eq!(delays.len(), 2);
    assert_eq!(delays[0]["reasons"][0]["signal"], "flow/login-first");

    // The block is visible and can be lifted; explain shows features and the throttle level.
    let blocks = admin_get(&g, "/v1/blocks").await.json();
    assert!(blocks.to_string().contains("score/throttle"), "{blocks}");
    let who = admin_get(&g, "/v1/identities/ip/127.0.0.1").await.json();
    let b = &who["identity"]["behaviour"];
    assert_eq!(b["throttle_level"], 3, "{who}");
    // Requests refused by the block itself are not counted again, and the gateway's own 403s
    // are not the client's errors.
    assert!(b["requests"].as_f64().unwrap() >= 3.0, "{who}");
    assert_eq!(b["share_403"].as_f64().unwrap(), 0.0, "{who}");
    assert_eq!(who["identity"]["behaviour_tracked"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn stuffing_is_caught_by_fingerprint_and_usernames_are_never_stored() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-stuffing-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = Gateway::start_in(
        dir,
        Some(&config_for(
            &up,
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[[routes]]
name = "login"
match = { path = "/login", methods = ["POST"] }

[behaviour]

[behaviour.stuffing]
route = "login"
failure_status = [401]
username_field = "email"
min_failures = 8
min_usernames = 5

[scoring]
challenge_at = 60
"#,
        )),
        &[],
        &[],
    );
    // The echo upstream answers 401 when asked to; every attempt fails, from a new network
    // each time, with one client's header set.
    let mut challenged_at = None;
    for i in 0..30 {
        let ip = format!("203.0.{i}.7");
        let body = format!("{{\"email\":\"Victim{i}@Mail.Example\",\"password\":\"x\"}}");
        let r = send(
            "POST",
            &g.url("/login"),
            &[
                ("x-forwarded-for", &ip),
                ("x-echo-status", "401"),
                ("content-type", "application/json"),
                ("user-agent", "python-requests/2.32.3"),
            ],
            &body,
        )
        .await;
        // A program is challenged with a proof-of-work (401, WWW-Authenticate: PoW).
        let challenged = r.header("www-authenticate").starts_with("PoW ");
        if challenged && challenged_at.is_none() {
            assert_eq!(r.status, 401);
            assert_eq!(r.header("content-type"), "application/problem+json");
            challenged_at = Some(i);
        }
        if !challenged && r.status != 403 {
            // What the upstream saw is the body as sent.
            assert_eq!(r.json()["body"], body);
        }
    }
    let at = challenged_at.expect("the fingerprint was never challenged");
    assert!(at <= 12, "challenged only after {at} attempts");
    let d = g.wait_decision(|d| d["rule"] == "score/challenge");
    assert!(
        d["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["signal"] == "stuffing/source"),
        "{d}"
    );
    // A person on another network and client is not affected.
    let r = send(
        "POST",
        &g.url("/login"),
        &[
            ("x-forwarded-for", "198.51.100.9"),
            ("content-type", "application/json"),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
            ),
            ("accept-language", "en"),
        ],
        "{\"email\":\"me@example.com\",\"password\":\"right\"}",
    )
    .await;
    assert_eq!(r.status, 200);
    // The fingerprint's record explains it: failures, distinct usernames.
    // (The header fingerprint, tracked by default; JA4H is an opt-in, FoxIO licence.)
    let hfp = d["identity"]["hfp"].as_str().unwrap().to_owned();
    assert!(d["identity"].get("ja4h").is_none(), "{d}");
    let who = admin_get(&g, &format!("/v1/identities/hfp/{hfp}"))
        .await
        .json();
    let b = &who["identity"]["behaviour"];
    assert!(b["failed_logins"].as_f64().unwrap() >= 8.0, "{who}");
    assert!(b["distinct_usernames"].as_u64().unwrap() >= 5, "{who}");
    let m = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    assert!(m.contains("palisade_failed_logins_total "), "{m}");

    // No username, in any case, anywhere: not in the log, the admin API, metrics or on disk.
    let mut everything = g
        .decisions()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    everything.push_str(&who.to_string());
    everything.push_str(&m);
    everything.push_str(&g.stderr());
    let dir = g.kill9();
    let mut files = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                everything.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(files >= 2, "the data dir was not written");
    let lower = everything.to_ascii_lowercase();
    assert!(!lower.contains("victim"), "a username leaked");
    assert!(!lower.contains("me@example.com"), "a username leaked");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sustained_surge_switches_a_route_into_attack_mode_and_back() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[[routes]]
name = "hot"
match = { path = "/hot" }

[behaviour]

[behaviour.attack]
bucket = "1s"
warmup = 3
min_requests = 40
rate_factor = 4.0
enter_after = 2
leave_after = 2
"#,
    )));
    let c = client();
    let metric = |m: &str, name: &str| -> Option<u64> {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let metrics =
        || async { String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string() };
    // A baseline of ~5 requests a second.
    for _ in 0..25 {
        send_with(&c, "GET", &g.url("/hot"), &[], "").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&metrics().await, "palisade_under_attack{route=\"hot\"}"),
        Some(0)
    );
    // Then ~100 a second for 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        send_with(&c, "GET", &g.url("/hot"), &[], "").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = metrics().await;
    assert_eq!(
        metric(&m, "palisade_under_attack{route=\"hot\"}"),
        Some(1),
        "{m}"
    );
    // Requests on the route are decided with the stricter profile meanwhile.
    // Calm: a few slow requests over 4 s switch it off again (logged and counted).
    for _ in 0..8 {
        send_with(&c, "GET", &g.url("/hot"), &[], "").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics().await;
        let on = metric(
            &m,
            "palisade_attack_mode_switches_total{route=\"hot\",mode=\"on\"}",
        );
        let off = metric(
            &m,
            "palisade_attack_mode_switches_total{route=\"hot\",mode=\"off\"}",
        );
        if metric(&m, "palisade_under_attack{route=\"hot\"}") == Some(0)
            && on == Some(1)
            && off == Some(1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        g.stderr().contains("attack mode switched on"),
        "{}",
        g.stderr()
    );
}

/// The simulator against the embedded default policy: each bot class is stopped; people (also
/// behind one NAT address) and customers' integrations (sequential syncs, unrelated customers on
/// one library, keys made together) are not. (A shorter run than the default; `palisade
/// simulate` runs 90 s.)
#[test]
fn the_simulator_meets_its_targets_with_the_default_policy() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "simulate",
            "--duration",
            "30s",
            "--humans",
            "20",
            "--office",
            "8",
            "--integrations",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let classes = report["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 12);
    for c in classes {
        assert!(c["judged"].as_u64().unwrap() > 0, "{c}");
        if c["bot"] == true {
            assert!(c["stopped_share"].as_f64().unwrap() >= 0.99, "{c}");
        } else {
            assert_eq!(c["stopped"], 0, "{c}");
            assert!(c["requests"].as_u64().unwrap() >= 40, "{c}");
        }
    }
    for group in ["people", "integrations"] {
        assert_eq!(report[group]["stopped"], 0, "{}", report[group]);
        assert!(
            report[group]["judged"].as_u64().unwrap() >= 100,
            "{}",
            report[group]
        );
    }
    assert_eq!(report["all_targets_met"], true);
    assert!(out.status.success());
}
