//! The TLS edge: real `curl` (OpenSSL, nghttp2) over HTTP/1.1 and HTTP/2 through Palisade's
//! TLS listener, certificates chosen by server name and reloaded from their files, JA4 taken
//! from the ClientHello and usable by limits, rules and the decision log, hostile handshakes.
//! Certificates are made by the `openssl` command line for each test.

use std::path::Path;
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A self-signed certificate for `names` (the first is the subject) into `dir/{stem}.crt/.key`.
fn make_cert(dir: &Path, stem: &str, names: &[&str]) {
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "30", "-subj", &format!("/CN={}", names[0])])
        .args(["-addext", &format!("subjectAltName={}", san.join(","))])
        .arg("-keyout")
        .arg(dir.join(format!("{stem}.key")))
        .arg("-out")
        .arg(dir.join(format!("{stem}.crt")))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn tls_config(up: &Upstream, certs: &[&str], extra: &str) -> String {
    let mut c = String::from("[tls]\nlisten = \"127.0.0.1:0\"\n");
    for stem in certs {
        c.push_str(&format!(
            "\n[[tls.certificates]]\ncert = \"{stem}.crt\"\nkey = \"{stem}.key\"\n"
        ));
    }
    config_for(up, &format!("{c}\n{extra}"))
}

/// Starts a gateway whose directory holds the certificates first (relative paths in the config
/// resolve against it).
fn start_with_certs(config: &str, certs: &[(&str, &[&str])]) -> Gateway {
    let dir = std::env::temp_dir().join(format!(
        "palisade-tls-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (stem, names) in certs {
        make_cert(&dir, stem, names);
    }
    Gateway::start_in(dir, Some(config), &[], &[])
}

struct Curl {
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

/// `curl` to `https://{host}:{port}{path}`, trusting `ca`, with extra arguments.
fn curl(g: &Gateway, host: &str, path: &str, ca: &str, args: &[&str]) -> Curl {
    let port = g.tls.expect("the TLS listener").port();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(g.dir.join(format!("{ca}.crt")))
        .args(args)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split_whitespace();
    Curl {
        status: it.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: it.next().unwrap_or("").to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn metrics(g: &Gateway) -> String {
    String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_over_http1_and_http2_is_proxied_and_fingerprinted() {
    let up = upstream().await;
    let g = start_with_certs(&tls_config(&up, &["api"], ""), &[("api", &["api.test"])]);
    let h1 = curl(&g, "api.test", "/items/1?x=1", "api", &["--http1.1"]);
    assert_eq!(
        (h1.status, h1.version.as_str()),
        (200, "1.1"),
        "{}",
        h1.stderr
    );
    let h2 = curl(&g, "api.test", "/items/2", "api", &["--http2"]);
    assert_eq!(
        (h2.status, h2.version.as_str()),
        (200, "2"),
        "{}",
        h2.stderr
    );
    assert!(h2.body.contains("/items/2"), "{}", h2.body);

    let d1 = g.wait_decision(|d| d["path"] == "/items/1");
    let d2 = g.wait_decision(|d| d["path"] == "/items/2");
    let ja4_1 = d1["identity"]["ja4"].as_str().unwrap().to_owned();
    let ja4_2 = d2["identity"]["ja4"].as_str().unwrap().to_owned();
    // curl sends SNI, offers TLS 1.3; ALPN http/1.1 alone, then h2 first.
    assert!(ja4_1.starts_with("t13d") && ja4_1.len() == 36, "{ja4_1}");
    assert_eq!(&ja4_1[8..10], "h1", "{ja4_1}");
    assert_eq!(&ja4_2[8..10], "h2", "{ja4_2}");
    // The same client: the same ciphers; the extension lists differ only by ALPN, which JA4's
    // last part leaves out.
    assert_eq!(ja4_1[11..], ja4_2[11..], "{ja4_1} / {ja4_2}");
    assert_eq!(d1["identity"]["tls"], "1.3");
    assert_eq!(d1["identity"]["sni"], "api.test");
    let m = metrics(&g).await;
    assert!(
        m.contains(r#"palisade_tls_handshakes_total{result="ok"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_follows_the_server_name_and_reloads_from_its_files() {
    let up = upstream().await;
    let g = start_with_certs(
        &tls_config(&up, &["a", "b"], ""),
        &[("a", &["a.test"]), ("b", &["b.test", "*.b.test"])],
    );
    // Each name gets its own certificate (curl trusts only that one), wildcards included; an
    // unknown name gets the first.
    assert_eq!(curl(&g, "a.test", "/", "a", &[]).status, 200);
    assert_eq!(curl(&g, "b.test", "/", "b", &[]).status, 200);
    assert_eq!(curl(&g, "x.b.test", "/", "b", &[]).status, 200);
    let wrong = curl(&g, "b.test", "/", "a", &[]);
    assert_eq!(wrong.status, 0, "b.test must not be served a's certificate");
    let other = curl(&g, "other.test", "/", "a", &["--insecure"]);
    assert_eq!(other.status, 200);

    // A broken certificate file: reported, and the old certificate is still served.
    let a_crt = g.dir.join("a.crt");
    let old = std::fs::read(&a_crt).unwrap();
    std::fs::write(&a_crt, b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let r = send(
        "POST",
        &g.admin_url("/v1/reload"),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("a.crt"),
        "{:?}",
        r.body
    );
    std::fs::copy(g.dir.join("a.key"), g.dir.join("a-old.key")).unwrap();
    std::fs::write(g.dir.join("a-old.crt"), &old).unwrap();
    assert_eq!(curl(&g, "a.test", "/", "a-old", &[]).status, 200);

    // A new certificate in the files: served after the reload (the file watcher or the API).
    make_cert(&g.dir, "a", &["a.test"]);
    let r = send(
        "POST",
        &g.admin_url("/v1/reload"),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(curl(&g, "a.test", "/", "a", &[]).status, 200);
    assert_eq!(
        curl(&g, "a.test", "/", "a-old", &[]).status,
        0,
        "the old certificate is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_blocks_and_rules_see_the_handshake() {
    let up = upstream().await;
    let g = start_with_certs(
        &tls_config(
            &up,
            &["api"],
            "[[limits]]\nname = \"per-ja4\"\nkey = [\"ja4\"]\nrate = \"3/1m\"\n\n\
             [[rules]]\nname = \"old-tls\"\nwhen = 'tls.version == \"1.2\" && path == \"/legacy\"'\naction = \"block\"\n",
        ),
        &[("api", &["api.test"])],
    );
    // TLS 1.2 on the rule's path: refused; TLS 1.3: allowed.
    let old = curl(&g, "api.test", "/legacy", "api", &["--tls-max", "1.2"]);
    assert_eq!(old.status, 403, "{}", old.stderr);
    assert_eq!(curl(&g, "api.test", "/legacy", "api", &[]).status, 200);
    // One handshake's fingerprint: a budget of 3 shared by every connection with it.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(curl(&g, "api.test", "/x", "api", &[]).status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Plain HTTP has no JA4: not limited by it.
    for _ in 0..4 {
        assert_eq!(get(&g.url("/x")).await.status, 200);
    }
    let limited = g.wait_decision(|d| d["action"] == "limit");
    assert_eq!(limited["rule"], "limit/per-ja4");
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_handshakes_fail_cleanly() {
    let up = upstream().await;
    let g = start_with_certs(&tls_config(&up, &["api"], ""), &[("api", &["api.test"])]);
    let addr = g.tls.unwrap();
    // Plain HTTP to the TLS port: a clear answer.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("plain_http_to_tls_port"), "{text}");

    // Garbage, a hello that claims to be huge, and one cut short then abandoned: closed.
    for bytes in [
        &b"\x00\x01\x02garbage"[..],
        &[22, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff][..],
        &[22, 3, 1, 0x02, 0x00, 1, 0, 1, 0xfc, 3, 3][..],
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        if bytes.len() == 11 {
            // Cut short: the client goes away.
            drop(s);
            continue;
        }
        let mut buf = Vec::new();
        let r =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "the gateway did not close a hostile handshake");
    }
    // Still serving, and the failures are counted by reason.
    assert_eq!(curl(&g, "api.test", "/", "api", &[]).status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let m = metrics(&g).await;
        let seen = [
            "plain_http",
            "not_a_client_hello",
            "hello_too_large",
            "closed_in_hello",
        ]
        .iter()
        .all(|r| {
            m.contains(&format!(
                "palisade_tls_handshakes_total{{result=\"{r}\"}} 1"
            ))
        });
        if seen {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plain_listener_can_redirect_to_https() {
    let up = upstream().await;
    let g = start_with_certs(
        &tls_config(&up, &["api"], "").replace("[tls]\n", "[tls]\nredirect_plain = true\n"),
        &[("api", &["api.test"])],
    );
    let port = g.tls.unwrap().port();
    let r = send(
        "GET",
        &g.url("/items/1?q=2"),
        &[("host", "api.test:8080")],
        "",
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        format!("https://api.test:{port}/items/1?q=2")
    );
    // Over TLS the request is served.
    assert_eq!(curl(&g, "api.test", "/items/1", "api", &[]).status, 200);
}

#[test]
fn check_reports_a_missing_or_mismatched_key() {
    let dir = std::env::temp_dir().join(format!(
        "palisade-tlscheck-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&dir, "a", &["a.test"]);
    make_cert(&dir, "b", &["b.test"]);
    let config = dir.join("palisade.toml");
    std::fs::write(
        &config,
        "[tls]\n[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"b.key\"\n\n[[tls.certificates]]\ncert = \"missing.crt\"\nkey = \"a.key\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("is not the key of"), "{text}");
    assert!(text.contains("missing.crt"), "{text}");
}

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";

/// Whether python3 can import curl_cffi (scripts/test.sh installs it).
fn curl_cffi() -> bool {
    Command::new("python3")
        .args(["-c", "import curl_cffi"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_library_in_a_browsers_user_agent_is_told_from_the_browser() {
    let up = upstream().await;
    let g = start_with_certs(
        &tls_config(&up, &["api"], "[fingerprints]\n"),
        &[("api", &["api.test"])],
    );
    let reasons = |d: &serde_json::Value| d["reasons"].to_string();
    // curl saying it is Chrome, over HTTP/2: its SETTINGS are curl's.
    let r = curl(&g, "api.test", "/h2", "api", &["--http2", "-A", CHROME]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    let d = g.wait_decision(|d| d["path"] == "/h2");
    assert!(reasons(&d).contains("fingerprint/ua_mismatch"), "{d}");
    assert_eq!(d["identity"]["claimed_family"], "chromium", "{d}");
    assert_eq!(d["identity"]["observed_family"], "curl", "{d}");
    assert_eq!(
        d["identity"]["h2fp"], "3:100;4:33554432;2:0|33488897|0|m,p,s,a",
        "curl 7.88.1's HTTP/2 fingerprint, as captured in shared/testdata/h2"
    );
    // The same over HTTP/1.1: a browser would have offered h2.
    let r = curl(&g, "api.test", "/h1", "api", &["--http1.1", "-A", CHROME]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    let d = g.wait_decision(|d| d["path"] == "/h1");
    assert!(
        reasons(&d).contains("fingerprint/browser_without_h2"),
        "{d}"
    );
    // curl as itself: nothing claimed, nothing to contradict.
    let r = curl(&g, "api.test", "/honest", "api", &["--http2"]);
    assert_eq!(r.status, 200);
    let d = g.wait_decision(|d| d["path"] == "/honest");
    assert!(!reasons(&d).contains("fingerprint/"), "{d}");

    // curl_cffi impersonating Chrome: its handshake and frames are Chrome's, its user agent
    // too: no mismatch.
    if !curl_cffi() {
        println!("SKIPPED: curl_cffi is not installed (scripts/test.sh installs it)");
        return;
    }
    let port = g.tls.unwrap().port();
    let script = format!(
        "from curl_cffi import requests\n\
         r = requests.get('https://127.0.0.1:{port}/impersonated', impersonate='chrome', verify=False, headers={{'Host': 'api.test'}})\n\
         print(r.status_code, r.http_version)\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("200"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = g.wait_decision(|d| d["path"] == "/impersonated");
    assert!(!reasons(&d).contains("fingerprint/"), "{d}");
    assert!(
        d["identity"]["ja4"].as_str().unwrap().contains("h2_"),
        "{d}"
    );
}

/// Whether python3 has `requests` and `httpx` with HTTP/2 (scripts/test.sh installs them).
fn python_clients() -> bool {
    Command::new("python3")
        .args(["-c", "import requests, httpx, h2"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn python_clients_are_served_and_judged_by_what_they_claim() {
    if !python_clients() {
        println!(
            "SKIPPED: requests / httpx[http2] are not installed (scripts/test.sh installs them)"
        );
        return;
    }
    let up = upstream().await;
    let g = start_with_certs(
        &tls_config(&up, &["api"], "[fingerprints]\n"),
        &[("api", &["api.test"])],
    );
    let port = g.tls.unwrap().port();
    let ca = g.dir.join("api.crt");
    let run = |code: String| {
        let out = Command::new("python3")
            .args(["-c", &code])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    // `requests` talks to 127.0.0.1 but names api.test (SNI and Host) through a pinned resolver.
    let requests = |path: &str, ua: Option<&str>| {
        let ua = ua.map_or(String::new(), |u| {
            format!(", headers={{'User-Agent': '{u}'}}")
        });
        run(format!(
            "import socket, requests\n\
             real = socket.getaddrinfo\n\
             socket.getaddrinfo = lambda h, *a, **k: real('127.0.0.1' if h == 'api.test' else h, *a, **k)\n\
             r = requests.get('https://api.test:{port}{path}', verify='{}'{ua})\n\
             print(r.status_code)",
            ca.display()
        ))
    };
    let httpx = |path: &str, ua: Option<&str>| {
        let ua = ua.map_or(String::new(), |u| {
            format!(", headers={{'User-Agent': '{u}'}}")
        });
        run(format!(
            "import socket, httpx\n\
             real = socket.getaddrinfo\n\
             socket.getaddrinfo = lambda h, *a, **k: real('127.0.0.1' if h == 'api.test' else h, *a, **k)\n\
             with httpx.Client(http2=True, verify='{}') as c:\n\
             \x20   r = c.get('https://api.test:{port}{path}'{ua})\n\
             \x20   print(r.status_code, r.http_version)",
            ca.display()
        ))
    };
    let reasons = |d: &serde_json::Value| d["reasons"].to_string();
    // As themselves: served, fingerprinted, nothing claimed so nothing contradicted.
    assert_eq!(requests("/requests", None), "200");
    let d = g.wait_decision(|d| d["path"] == "/requests");
    assert_eq!(d["identity"]["sni"], "api.test", "{d}");
    assert!(
        d["identity"]["ja4"]
            .as_str()
            .is_some_and(|j| j.starts_with('t')),
        "{d}"
    );
    assert!(!reasons(&d).contains("fingerprint/"), "{d}");
    assert_eq!(httpx("/httpx", None), "200 HTTP/2");
    let d = g.wait_decision(|d| d["path"] == "/httpx");
    assert!(
        d["identity"]["h2fp"]
            .as_str()
            .is_some_and(|f| f.split('|').count() == 4),
        "{d}"
    );
    assert!(!reasons(&d).contains("fingerprint/"), "{d}");
    // `requests` claiming Chrome: it offered no HTTP/2, which Chrome always does.
    assert_eq!(requests("/requests-as-chrome", Some(CHROME)), "200");
    let d = g.wait_decision(|d| d["path"] == "/requests-as-chrome");
    assert!(
        reasons(&d).contains("fingerprint/browser_without_h2"),
        "{d}"
    );
}

#[test]
fn check_reports_each_certificate_and_its_expiry() {
    let dir = std::env::temp_dir().join(format!(
        "palisade-tlscheck-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&dir, "a", &["a.test", "www.a.test"]);
    let config = dir.join("palisade.toml");
    std::fs::write(
        &config,
        "[tls]\n[[tls.certificates]]\ncert = \"a.crt\"\nkey = \"a.key\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["check", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["certificates"][0];
    assert_eq!(c["names"], serde_json::json!(["a.test", "www.a.test"]));
    // Made for 30 days just now.
    let days = c["days_left"].as_i64().unwrap();
    assert!((28..=30).contains(&days), "{days}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fingerprints_reach_the_upstream_only_when_asked() {
    let up = upstream().await;
    let g = start_with_certs(
        &tls_config(&up, &["api"], "[fingerprints]\nforward = true\n"),
        &[("api", &["api.test"])],
    );
    let r = curl(
        &g,
        "api.test",
        "/echo",
        "api",
        &["--http2", "-H", "x-palisade-ja4: forged"],
    );
    assert_eq!(r.status, 200, "{}", r.stderr);
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let ja4 = seen["headers"]["x-palisade-ja4"][0].as_str().unwrap();
    assert!(ja4.starts_with("t13d") && ja4 != "forged", "{seen}");
    assert_eq!(
        seen["headers"]["x-palisade-h2fp"][0],
        "3:100;4:33554432;2:0|33488897|0|m,p,s,a"
    );
    // Off by default.
    let g2 = start_with_certs(&tls_config(&up, &["api"], ""), &[("api", &["api.test"])]);
    let r = curl(&g2, "api.test", "/echo", "api", &["--http2"]);
    let seen: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(seen["headers"].get("x-palisade-ja4").is_none(), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_front_can_report_the_fingerprints() {
    let up = upstream().await;
    let policy = |trusted: &str| {
        config_for(
            &up,
            &format!(
                "[server]\ntrusted_proxies = [{trusted}]\n\
                 trusted_fingerprint_headers = {{ ja4 = \"cloudfront-viewer-ja4-fingerprint\", h2 = \"x-h2-fingerprint\", ja3 = \"cloudfront-viewer-ja3-fingerprint\" }}\n\n\
                 [fingerprints]\n\n\
                 [[limits]]\nname = \"per-ja4\"\nkey = [\"ja4\"]\nrate = \"2/1m\"\n\n\
                 [[limits]]\nname = \"per-ja3\"\nkey = [\"ja3\"]\nrate = \"100/1m\"\n\n\
                 [[rules]]\nname = \"curl-as-chrome\"\n\
                 when = 'client.family == \"curl\" && client.kind == \"library\" && client.claimed == \"chromium\" && tls.ja3 == \"e7d705a3286e19ea42f587b344ee6865\" && path == \"/rule\"'\n\
                 action = \"block\"\n"
            ),
        )
    };
    let ja4 = "t13d1516h2_8daaf6152771_02713d6af862";
    let h = [
        ("cloudfront-viewer-ja4-fingerprint", ja4),
        (
            "x-h2-fingerprint",
            "3:100;4:33554432;2:0|33488897|0|m,p,s,a",
        ),
        ("user-agent", CHROME),
        (
            "cloudfront-viewer-ja3-fingerprint",
            "e7d705a3286e19ea42f587b344ee6865",
        ),
    ];
    // From a trusted front: believed, limited by, and the h2 frames contradict the claim.
    let g = Gateway::start(Some(&policy("\"127.0.0.1\"")));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(send("GET", &g.url("/x"), &h, "").await.status);
    }
    assert_eq!(got, vec![200, 200, 429]);
    let d = g.wait_decision(|d| d["path"] == "/x");
    assert_eq!(d["identity"]["ja4"], ja4, "{d}");
    assert_eq!(
        d["identity"]["ja3"], "e7d705a3286e19ea42f587b344ee6865",
        "{d}"
    );
    assert!(
        d["reasons"].to_string().contains("fingerprint/ua_mismatch"),
        "{d}"
    );
    // Rules see the client the fingerprints show, the one claimed, and the front's JA3.
    assert_eq!(send("GET", &g.url("/rule"), &h, "").await.status, 403);
    let d = g.wait_decision(|d| d["path"] == "/rule");
    assert_eq!(d["rule"], "rule/curl-as-chrome", "{d}");
    // A JA3 header that is neither a JA3 string nor its MD5 is not believed.
    let mut junk = h;
    junk[3].1 = "'; DROP TABLE";
    junk[0].1 = "t13d1715h2_5b57614c22b0_3d5424432f57";
    assert_eq!(send("GET", &g.url("/junk"), &junk, "").await.status, 200);
    let d = g.wait_decision(|d| d["path"] == "/junk");
    assert!(d["identity"].get("ja3").is_none(), "{d}");
    // From anyone else: ignored.
    let g = Gateway::start(Some(&policy("")));
    for _ in 0..3 {
        assert_eq!(send("GET", &g.url("/x"), &h, "").await.status, 200);
    }
    let d = g.wait_decision(|d| d["path"] == "/x");
    assert!(d["identity"].get("ja4").is_none(), "{d}");
}

/// Whether python3 can import http_message_signatures (scripts/test.sh installs it).
fn http_message_signatures() -> bool {
    Command::new("python3")
        .args(["-c", "import http_message_signatures"])
        .status()
        .is_ok_and(|s| s.success())
}

fn wba(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/wba_sign.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_agent_is_verified_and_a_forged_one_is_not() {
    if !http_message_signatures() {
        println!(
            "SKIPPED: http-message-signatures (PyPI) is not installed (scripts/test.sh installs it)"
        );
        return;
    }
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!(
        "palisade-wba-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap().to_owned();
    wba(&["key", &d]);
    // Scripts on an HTTP library are refused; the signed agent is an AI assistant, allowed.
    let config = config_for(
        &up,
        "[bots]\n[bots.actions]\nhttp_library = \"block\"\nai_assistant = \"allow_verified\"\n\n\
         [web_bot_auth]\n[[web_bot_auth.agents]]\nname = \"test-agent\"\n\
         agent = \"https://agent.palisade-test.example\"\nkeys = \"agent.jwks\"\n",
    );
    let g = Gateway::start_in(dir, Some(&config), &[], &[]);
    let url = g.url("/signed");
    // Unsigned, the same library: refused.
    assert_eq!(
        send("GET", &url, &[("user-agent", "Python-urllib/3")], "")
            .await
            .status,
        403
    );
    // Signed by the agent's key (a real RFC 9421 signer): verified, allowed.
    assert_eq!(wba(&["send", &d, &url]), "200");
    let ok = g.wait_decision(|d| d["path"] == "/signed" && d["action"] == "allow");
    assert_eq!(ok["identity"]["agent"], "test-agent", "{ok}");
    assert_eq!(ok["identity"]["bot_claim"], "test-agent:verified", "{ok}");
    // The same signature sent to another path (@path is covered): not verified, a signal.
    assert_eq!(wba(&["send", &d, &url, "/tampered"]), "403");
    let bad = g.wait_decision(|d| d["path"] == "/tampered");
    assert_eq!(
        bad["identity"]["agent_signature"], "signature_mismatch",
        "{bad}"
    );
    assert!(
        bad["reasons"].to_string().contains("webbotauth/invalid"),
        "{bad}"
    );
}

/// A CA (`ca.crt`/`ca.key`) and a client certificate for `cn` it issued (`{stem}.crt/.key`).
fn make_client_cert(dir: &Path, stem: &str, cn: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("ca.crt").exists() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=Partner CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
    }
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &format!("{stem}.key"),
        "-out",
        &format!("{stem}.csr"),
    ]);
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{stem}.csr"),
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "client.ext",
        "-out",
        &format!("{stem}.crt"),
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn partners_are_identified_by_their_client_certificates() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!(
        "palisade-mtls-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&dir, "api", &["api.test"]);
    make_client_cert(&dir, "acme", "acme-partner");
    make_client_cert(&dir, "globex", "globex-partner");
    let config = tls_config(
        &up,
        &["api"],
        "[[routes]]\nname = \"partner\"\nmatch = { path = \"/partner/*\" }\n\n\
         [[limits]]\nname = \"per-partner\"\nroutes = [\"partner\"]\nkey = [\"mtls\"]\nrate = \"2/1m\"\n\n\
         [[rules]]\nname = \"partners-only\"\nwhen = 'route == \"partner\" && tls.client == \"\"'\naction = \"block\"\n",
    )
    .replace("[tls]\n", "[tls]\nclient_ca = \"ca.crt\"\n");
    let g = Gateway::start_in(dir, Some(&config), &[], &[]);
    let with = |stem: &str| {
        [
            "--cert".to_owned(),
            g.dir.join(format!("{stem}.crt")).display().to_string(),
            "--key".to_owned(),
            g.dir.join(format!("{stem}.key")).display().to_string(),
        ]
    };
    let acme = with("acme");
    let acme: Vec<&str> = acme.iter().map(String::as_str).collect();
    let globex = with("globex");
    let globex: Vec<&str> = globex.iter().map(String::as_str).collect();
    // Without a certificate: connected (optional), public routes served, partner routes not.
    assert_eq!(curl(&g, "api.test", "/public", "api", &[]).status, 200);
    assert_eq!(curl(&g, "api.test", "/partner/x", "api", &[]).status, 403);
    // Each partner has its own budget on the partner routes.
    let got: Vec<u16> = (0..3)
        .map(|_| curl(&g, "api.test", "/partner/x", "api", &acme).status)
        .collect();
    assert_eq!(got, vec![200, 200, 429]);
    assert_eq!(
        curl(&g, "api.test", "/partner/x", "api", &globex).status,
        200
    );
    let d = g.wait_decision(|d| d["identity"]["mtls"] == "globex-partner");
    assert_eq!(d["action"], "allow", "{d}");
    // A certificate from another CA: the handshake fails.
    let stranger = std::env::temp_dir().join(format!(
        "palisade-mtls-x-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&stranger).unwrap();
    make_client_cert(&stranger, "eve", "eve");
    let r = curl(
        &g,
        "api.test",
        "/partner/x",
        "api",
        &[
            "--cert",
            stranger.join("eve.crt").to_str().unwrap(),
            "--key",
            stranger.join("eve.key").to_str().unwrap(),
        ],
    );
    assert_eq!(r.status, 0, "{}", r.stderr);
}
