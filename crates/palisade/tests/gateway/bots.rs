//! The bot catalog's categories and actions, and verified good bots (published ranges and
//! forward-confirmed reverse DNS against a real dnsmasq).

use crate::common::*;

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

#[tokio::test(flavor = "multi_thread")]
async fn allow_verified_verifies_the_major_crawlers_with_no_verify_entries() {
    let up = upstream().await;
    // Google's documented example: 66.249.66.1 is crawl-66-249-66-1.googlebot.com and back.
    let dns = dnsmasq(
        &[
            ("66.249.66.1", "crawl-66-249-66-1.googlebot.com"),
            ("198.51.100.44", "bot.evil.example"),
            ("157.55.33.18", "msnbot-157-55-33-18.search.msn.com"),
        ],
        &[
            ("crawl-66-249-66-1.googlebot.com", "66.249.66.1"),
            ("msnbot-157-55-33-18.search.msn.com", "157.55.33.18"),
        ],
    );
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[bots]
dns_servers = ["127.0.0.1:{port}"]

[bots.actions]
search_engine = "allow_verified"
"#,
            port = dns.port
        ),
    )));
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const BINGBOT: &str = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)";
    let from = |ip: &'static str, ua: &'static str| {
        let url = g.url("/x");
        async move {
            send(
                "GET",
                &url,
                &[("x-forwarded-for", ip), ("user-agent", ua)],
                "",
            )
            .await
            .status
            .as_u16()
        }
    };
    // The first request of a claimant waits for nothing (pending is allowed by default); the
    // verdict follows within the DNS round trips.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut seen = (0, 0, 0);
    while std::time::Instant::now() < deadline {
        seen = (
            from("66.249.66.1", GOOGLEBOT).await,
            from("198.51.100.44", GOOGLEBOT).await,
            from("157.55.33.18", BINGBOT).await,
        );
        if seen == (200, 403, 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen,
        (200, 403, 200),
        "real Googlebot, fake Googlebot, real Bingbot"
    );
    g.wait_decision(|d| d["identity"]["bot_claim"] == "googlebot:verified");
    g.wait_decision(|d| {
        d["identity"]["bot_claim"] == "googlebot:spoofed" && d["rule"] == "bot/spoofed"
    });
    g.wait_decision(|d| d["identity"]["bot_claim"] == "bingbot:verified");
    // A crawler that publishes only ranges, with none loaded: unverifiable, so not allowed as
    // verified (a signal), and not blocked as false either.
    let gpt = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)";
    let r = send(
        "GET",
        &g.url("/x"),
        &[("x-forwarded-for", "198.51.100.45"), ("user-agent", gpt)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let d = g.wait_decision(|d| d["identity"]["bot_claim"] == "gptbot:unverifiable");
    assert_ne!(d["rule"], "bot/spoofed");
}

#[tokio::test]
#[cfg_attr(
    not(palisade_testdata),
    ignore = "shared testdata not found: Google's published googlebot ranges skipped"
)]
async fn googles_published_ranges_verify_googlebot_without_dns() {
    let up = upstream().await;
    let ranges =
        std::path::PathBuf::from(env!("PALISADE_TESTDATA_DIR")).join("goodbots/googlebot.json");
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[bots]\ndns_servers = [\"127.0.0.1:9\"]\npending = \"block\"\n\n[bots.ranges]\ngooglebot = \"{}\"\n\n[bots.actions]\nsearch_engine = \"allow_verified\"\n",
            ranges.display()
        ),
    )));
    let text = std::fs::read_to_string(&ranges).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = v["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["ipv4Prefix"].as_str())
        .unwrap();
    let ip = first.split('/').next().unwrap().to_owned();
    let r = send(
        "GET",
        &g.url("/x"),
        &[
            ("x-forwarded-for", ip.as_str()),
            (
                "user-agent",
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            ),
        ],
        "",
    )
    .await;
    // From the published ranges: verified at once (no DNS needed; pending would be blocked).
    assert_eq!(r.status, 200, "{ip}");
    g.wait_decision(|d| d["identity"]["bot_claim"] == "googlebot:verified");
}

/// A bot operator's site publishing a ranges document: what it answers can be changed.
async fn publisher(doc: std::sync::Arc<std::sync::Mutex<(u16, String)>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = doc.lock().unwrap().clone();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// `[bots.ranges] gptbot = { url, refresh }`: the gateway fetches the published ranges itself,
/// verifies the crawler by them (no `[[bots.verify]]`), keeps using the last good copy while the
/// site fails or serves garbage, follows a change, and after a restart during an outage verifies
/// at once from the copy it kept in its data dir.
#[tokio::test(flavor = "multi_thread")]
async fn fetched_ranges_verify_a_crawler_and_the_last_good_copy_outlives_outages() {
    use std::time::{Duration, Instant};
    let up = upstream().await;
    let doc = std::sync::Arc::new(std::sync::Mutex::new((
        200u16,
        r#"{"creationTime": "2026-12-01T00:00:00", "prefixes": [{"ipv4Prefix": "198.51.100.0/28"}]}"#
            .to_owned(),
    )));
    let site = publisher(doc.clone()).await;
    let config = config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[bots.ranges]
gptbot = {{ url = "http://{site}/gptbot.json", refresh = "1s" }}

[bots.actions]
ai_training = "allow_verified"
"#
        ),
    );
    let g = Gateway::start(Some(&config));
    let status = |g: &Gateway, ip: &'static str| {
        let url = g.url("/x");
        async move {
            send(
                "GET",
                &url,
                &[("x-forwarded-for", ip), ("user-agent", GPTBOT)],
                "",
            )
            .await
            .status
            .as_u16()
        }
    };
    let until = |what: &str, deadline: Instant| {
        assert!(Instant::now() < deadline, "{what}");
    };
    // Until the first fetch lands the claim is pending (allowed, not verified): ask again until
    // a request is verified by the fetched ranges.
    let deadline = Instant::now() + Duration::from_secs(20);
    let verified = |d: &serde_json::Value| {
        d["identity"]["bot_claim"] == "gptbot:verified" && d["client_ip"] == "198.51.100.5"
    };
    loop {
        let s = status(&g, "198.51.100.5").await;
        if s == 200 && g.decisions().iter().any(verified) {
            break;
        }
        until("never verified from the fetched ranges", deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Outside the ranges, with no DNS domain to try: a false claim.
    assert_eq!(status(&g, "203.0.113.9").await, 403);
    g.wait_decision(|d| d["identity"]["bot_claim"] == "gptbot:spoofed");

    // The site fails, then serves an error page with 200: the copy in use stays.
    let copy = g.dir.join("data/bot-ranges/gptbot.json");
    let kept = std::fs::read_to_string(&copy).unwrap();
    assert!(kept.contains("198.51.100.0/28"), "{kept}");
    *doc.lock().unwrap() = (503, "down for maintenance".to_owned());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    *doc.lock().unwrap() = (200, "<html>maintenance</html>".to_owned());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status(&g, "198.51.100.5").await, 200);
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), kept);
    let m = get(&g.admin_url("/metrics")).await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    let errors = m
        .lines()
        .find(|l| {
            l.starts_with("palisade_bot_ranges_fetches_total{")
                && l.contains("bot=\"gptbot\"")
                && l.contains("result=\"error\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{m}");

    // The operator moves its crawler: the new ranges apply without a restart.
    *doc.lock().unwrap() = (
        200,
        r#"{"prefixes": [{"ipv4Prefix": "203.0.113.0/28"}]}"#.to_owned(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&g, "203.0.113.9").await != 200 {
        until("the changed ranges never applied", deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&g, "198.51.100.5").await, 403);

    // Restarted while the site is down: verified at once from the kept copy.
    *doc.lock().unwrap() = (500, String::new());
    let dir = g.kill9();
    let g = Gateway::start_in(dir, Some(&config), &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.stderr().contains("last good copy") {
        until("the kept copy was not loaded", deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&g, "203.0.113.9").await, 200);
    assert_eq!(status(&g, "198.51.100.5").await, 403);
}
