//! The dashboard on the admin listener: the login form and its session cookie, the admin API
//! taking the session only with the dashboard's header, the overview, the live stream — and
//! the page itself in a real browser (Debian's chromium).

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::common::*;

/// Signs in; the session cookie (`name=value`).
async fn sign_in(g: &Gateway) -> String {
    let r = send(
        "POST",
        &g.admin_url("/dashboard/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={ADMIN_TOKEN}"),
    )
    .await;
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_signs_in_with_the_admin_token_and_serves_its_data() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"3/1m\"\n",
    )));
    // Signed out: the form, never the data.
    let r = get(&g.admin_url("/dashboard")).await;
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body).into_owned();
    assert!(page.contains("name=\"token\""), "{page}");
    assert!(
        r.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert_eq!(
        get(&g.admin_url("/dashboard/api/overview")).await.status,
        401
    );
    let wrong = send(
        "POST",
        &g.admin_url("/dashboard/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=guess",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_empty());
    let forged = format!("palisade_dashboard=99999999999.{}", "ab".repeat(32));
    let r = send(
        "GET",
        &g.admin_url("/dashboard/api/overview"),
        &[("cookie", &forged), ("x-palisade-dashboard", "1")],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "a forged session");

    let cookie = sign_in(&g).await;
    let r = send(
        "GET",
        &g.admin_url("/dashboard"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert!(String::from_utf8_lossy(&r.body).contains("uPlot.iife.min.js"));
    // The admin API takes the session only with the page's header (a cross-site form cannot
    // send it).
    let r = send(
        "GET",
        &g.admin_url("/v1/blocks"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let page_headers = [("cookie", cookie.as_str()), ("x-palisade-dashboard", "1")];
    assert_eq!(
        send("GET", &g.admin_url("/v1/blocks"), &page_headers, "")
            .await
            .status,
        200
    );

    // The live stream sees decisions as they happen.
    let admin: std::net::SocketAddr = g
        .admin_url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!(
            "GET /dashboard/api/stream?action=limit HTTP/1.1\r\nhost: a\r\ncookie: {cookie}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    let status = lines.next_line().await.unwrap().unwrap();
    assert!(status.contains("200"), "{status}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        send(
            "GET",
            &g.url("/echo"),
            &[("x-forwarded-for", "203.0.113.8")],
            "",
        )
        .await;
    }
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = lines.next_line().await.unwrap().unwrap();
            if let Some(data) = l.strip_prefix("data: ") {
                return serde_json::from_str::<serde_json::Value>(data).unwrap();
            }
        }
    })
    .await
    .expect("no live decision");
    assert_eq!(got["action"], "limit", "filtered to limits: {got}");
    assert_eq!(got["path"], "/echo");

    // The overview: the last hour in 10 s buckets, routes, rules, top identities.
    let r = send(
        "GET",
        &g.admin_url("/dashboard/api/overview"),
        &page_headers,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let o = r.json();
    assert_eq!(o["series"].as_array().unwrap().len(), 360);
    let totals: u64 = o["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap())
        })
        .sum();
    assert!(totals >= 5, "{totals}");
    assert!(
        o["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule"] == "limit/per-ip"),
        "{o}"
    );
    assert_eq!(
        o["top"]["ip"][0]["value"], "127.0.0.1",
        "the limited client first: {}",
        o["top"]
    );
    assert!(o["top"]["ip"][0]["refusals"].as_u64().unwrap() >= 2);

    // Signed out: the cookie is cleared.
    let r = send(
        "POST",
        &g.admin_url("/dashboard/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").contains("Max-Age=0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_page_works_in_a_real_browser_without_external_assets() {
    let Some(dir) = node_peers() else {
        println!("SKIPPED: node peers missing (scripts/test.sh installs them)");
        return;
    };
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        println!("SKIPPED: chromium missing (scripts/test.sh installs it)");
        return;
    }
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"2/1m\"\n",
    )));
    // Traffic before the page opens: four addresses, each over its limit.
    for i in 0..32 {
        let ip = format!("203.0.113.{}", i % 4);
        send("GET", &g.url("/echo"), &[("x-forwarded-for", &ip)], "").await;
    }
    // The screenshot is kept (beside the test binaries) for people to look at.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let admin = g.admin_url("").trim_end_matches('/').to_owned();
    let proxy = g.url("/echo");
    let shot_arg = shot.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(dir.join("dashboard.js"))
            .args([&admin, ADMIN_TOKEN, shot_arg.to_str().unwrap(), &proxy])
            .current_dir(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "dashboard.js: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(v.get("failure").is_none(), "{v}");
    assert_eq!(v["login_form"], true);
    assert_eq!(v["cookie"]["httpOnly"], true);
    assert_eq!(v["cookie"]["secure"], true);
    assert_eq!(v["cookie"]["sameSite"], "Strict");
    assert_eq!(
        v["foreign"],
        serde_json::json!([]),
        "no external assets: {v}"
    );
    assert_eq!(v["errors"], serde_json::json!([]), "console errors: {v}");
    assert!(
        v["status"].as_str().unwrap().contains("enforce mode"),
        "{v}"
    );
    assert!(v["rules"].to_string().contains("limit/per-ip"), "{v}");
    assert!(v["top"][0].as_str().unwrap().contains("203.0.113."), "{v}");
    assert!(v["live"].as_array().unwrap().len() >= 3, "{v}");
    // The flooded address explained: its limit, spent.
    let explain = v["explain"].as_str().unwrap();
    assert!(explain.contains("203.0.113."), "{v}");
    assert!(
        explain.contains("per-ip"),
        "the explain view shows the limit: {explain}"
    );
    // The chart holds the numbers /metrics reports, action by action.
    let (chart, metrics) = (&v["chart"], &v["metrics"]);
    assert!(metrics["allow"].as_f64().unwrap() >= 4.0, "{v}");
    assert!(metrics["limit"].as_f64().unwrap() >= 20.0, "{v}");
    for (action, n) in metrics.as_object().unwrap() {
        assert_eq!(
            chart[action].as_f64(),
            n.as_f64(),
            "{action}: chart {chart} against /metrics {metrics}"
        );
    }
    // The block added in the form is in the admin API's list and is enforced.
    assert!(
        v["blocks"].as_str().unwrap().contains("from-the-dashboard"),
        "{v}"
    );
    let blocks = admin_get(&g, "/v1/blocks").await.json();
    assert!(blocks.to_string().contains("198.51.100.250"), "{blocks}");
    let r = send(
        "GET",
        &g.url("/echo"),
        &[("x-forwarded-for", "198.51.100.250")],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    // The screenshot was taken.
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    println!("screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn palisade_demo_runs_traffic_and_shows_the_dashboard() {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "demo",
            "--duration",
            "12s",
            "--humans",
            "4",
            "--integrations",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut dashboard = None;
    let mut token = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dashboard.is_none() || token.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the demo printed no dashboard address");
        if let Some(u) = line.trim().strip_prefix("dashboard") {
            dashboard = Some(u.trim().to_owned());
        }
        if let Some(t) = line
            .trim()
            .strip_prefix("sign in     with the one-time admin token ")
        {
            token = Some(t.trim().to_owned());
        }
    }
    let (dashboard, token) = (dashboard.unwrap(), token.unwrap());
    assert!(dashboard.ends_with("/dashboard"), "{dashboard}");
    let r = send(
        "POST",
        &format!("{dashboard}/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={token}"),
    )
    .await;
    assert_eq!(r.status, 303, "the printed token signs in");
    let cookie = r.header("set-cookie").split(';').next().unwrap().to_owned();
    // The simulator's traffic shows on the dashboard within seconds: allowed and refused.
    let overview = format!("{dashboard}/api/overview");
    let mut seen = (0u64, 0u64);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let o = send(
            "GET",
            &overview,
            &[("cookie", &cookie), ("x-palisade-dashboard", "1")],
            "",
        )
        .await
        .json();
        let sum = |i: usize| -> u64 {
            o["series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["actions"][i].as_u64().unwrap())
                .sum()
        };
        seen = (sum(0), (3..7).map(sum).sum());
        if seen.0 > 20 && seen.1 > 5 {
            break;
        }
    }
    assert!(seen.0 > 20 && seen.1 > 5, "allowed/refused seen: {seen:?}");
    // At the end, the simulator's report.
    let mut report = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(40)) {
        report.push_str(&line);
        report.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{report}");
    // The report: people and integrations never stopped; the flood stopped.
    let row = |class: &str| -> Vec<String> {
        report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(class))
            .unwrap_or_else(|| panic!("no {class} row: {report}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    for class in ["human", "integration"] {
        assert_eq!(row(class)[8], "0.00%", "{class} never stopped: {report}");
    }
    let flood: f64 = row("flood")[8].trim_end_matches('%').parse().unwrap();
    assert!(flood >= 99.0, "the flood is stopped: {report}");
    assert!(report.contains("false positives, people: 0 of"), "{report}");
}
