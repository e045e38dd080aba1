//! Automatic certificates against a real ACME CA: Debian's `pebble` (Let's Encrypt's test CA),
//! with `pebble-challtestsrv` as its DNS (every name resolves to 127.0.0.1), started by each
//! test on free ports. Pebble validates HTTP-01 on Palisade's plain listener and TLS-ALPN-01 on
//! its TLS listener; the certificate Palisade then serves must chain to pebble's root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A running pebble and its DNS server, killed on drop.
struct Pebble {
    ca: Child,
    dns: Child,
    dir: PathBuf,
    port: u16,
    management: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.ca.kill();
        let _ = self.dns.kill();
        let _ = self.ca.wait();
        let _ = self.dns.wait();
    }
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    fn start(dir: &Path, http_port: u16, tls_port: u16) -> Self {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // Pebble's own HTTPS certificate, from a CA made here (Palisade trusts it by `ca_root`).
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut a = vec!["req", "-x509"];
        a.extend(p256);
        a.extend([
            "-days",
            "30",
            "-subj",
            "/CN=pebble test root",
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
        ]);
        openssl(&dir, &a);
        let mut a = vec!["req"];
        a.extend(p256);
        a.extend([
            "-subj",
            "/CN=localhost",
            "-keyout",
            "https.key",
            "-out",
            "https.csr",
        ]);
        openssl(&dir, &a);
        std::fs::write(
            dir.join("https.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "https.csr",
                "-CA",
                "root.crt",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "https.ext",
                "-out",
                "https.crt",
            ],
        );
        let (port, management, dns_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("https.crt"),
            "privateKey": dir.join("https.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (scripts/test.sh installs the pebble package)");
        let ca = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (scripts/test.sh installs it)");
        let p = Pebble {
            ca,
            dns,
            dir,
            port,
            management,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", management)).is_err()
        {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    fn https_root(&self) -> PathBuf {
        self.dir.join("root.crt")
    }

    /// The root pebble signs certificates with (made fresh at each start), as a PEM file.
    fn issuing_root(&self) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.https_root())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.join("issuing-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

/// A config with `[tls]` on `tls_port` and `[tls.acme]` for `domains` from `pebble`.
fn acme_config(
    up: &Upstream,
    pebble: &Pebble,
    tls_port: u16,
    challenge: &str,
    extra: &str,
) -> String {
    config_for(
        up,
        &format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\n\n[tls.acme]\ndomains = [\"api.palisade.test\", \"www.palisade.test\"]\ndirectory = \"{}\"\nca_root = \"{}\"\ncontact = [\"mailto:ops@palisade.test\"]\naccept_terms = true\nchallenge = \"{challenge}\"\n\n{extra}",
            pebble.directory(),
            pebble.https_root().display()
        ),
    )
}

fn start_gateway(dir: &Path, config: &str, http_port: u16) -> Gateway {
    std::fs::create_dir_all(dir).unwrap();
    Gateway::start_in(
        dir.to_path_buf(),
        Some(config),
        &["--listen", &format!("127.0.0.1:{http_port}")],
        &[("RUST_LOG", "info")],
    )
}

/// `curl https://{name}:{port}/` trusting `root`: (status, the served certificate's serial).
fn fetch(name: &str, port: u16, root: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(root)
        .arg(format!("https://{name}:{port}/api/items/1"))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, served_serial(name, port))
}

/// The serial number of the certificate served for `name` (by `openssl s_client`).
fn served_serial(name: &str, port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until `name` is served a certificate that chains to `root`; answers its serial.
fn wait_for_certificate(
    g: &Gateway,
    name: &str,
    port: u16,
    root: &Path,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, serial) = fetch(name, port, root);
        if status == 200 {
            return serial;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from the ACME CA for {name} (last status {status}):\n{}",
            g.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "palisade-acme-{name}-{}-{}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn http01_orders_a_certificate_serves_it_and_keeps_it_across_restarts() {
    let up = upstream().await;
    let dir = test_dir("http01");
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(&dir, http_port, tls_port);
    let config = acme_config(&up, &pebble, tls_port, "http-01", "");
    let g = start_gateway(&dir.join("gw"), &config, http_port);
    let root = pebble.issuing_root();
    let serial = wait_for_certificate(
        &g,
        "api.palisade.test",
        tls_port,
        &root,
        Duration::from_secs(60),
    );
    // Both names are on it; the plain listener still proxies; one order was made.
    assert_eq!(served_serial("www.palisade.test", tls_port), serial);
    assert_eq!(get(&g.url("/api/items/1")).await.status, 200);
    assert_eq!(
        metric_sum(&g, "palisade_acme_orders_total{result=\"issued\"}").await,
        1.0
    );
    assert!(metric_sum(&g, "palisade_acme_certificate_expiry_seconds").await > 86_400.0);
    // A challenge token nobody published is a 404, never proxied.
    let seen = up.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = get(&g.url("/.well-known/acme-challenge/unknown-token")).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        up.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        seen
    );
    // The certificate and account are in the data dir, private to the owner.
    let acme_dir = g.dir.join("data").join("acme");
    let files: Vec<_> = std::fs::read_dir(&acme_dir).unwrap().flatten().collect();
    assert!(
        files
            .iter()
            .any(|f| f.file_name().to_string_lossy().starts_with("cert-"))
    );
    assert!(
        files
            .iter()
            .any(|f| f.file_name().to_string_lossy().starts_with("account-"))
    );
    #[cfg(unix)]
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            f.metadata().unwrap().permissions().mode() & 0o777,
            0o600,
            "{:?}",
            f.path()
        );
    }
    // Restarted, the gateway serves the stored certificate at once and orders nothing.
    let gw_dir = g.kill9();
    let g = start_gateway(&gw_dir, &config, http_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial("api.palisade.test", tls_port) != serial {
        assert!(Instant::now() < deadline, "{}", g.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fetch("api.palisade.test", tls_port, &root).0, 200);
    assert_eq!(
        metric_sum(&g, "palisade_acme_orders_total{result=\"issued\"}").await,
        0.0
    );
    assert!(
        g.stderr().contains("loaded from the data dir"),
        "{}",
        g.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn01_orders_on_the_tls_listener_and_renews_a_certificate_about_to_expire() {
    let up = upstream().await;
    let dir = test_dir("alpn");
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(&dir, http_port, tls_port);
    let config = acme_config(&up, &pebble, tls_port, "tls-alpn-01", "");
    let g = start_gateway(&dir.join("gw"), &config, http_port);
    let root = pebble.issuing_root();
    let first = wait_for_certificate(
        &g,
        "api.palisade.test",
        tls_port,
        &root,
        Duration::from_secs(60),
    );
    assert!(
        metric_sum(
            &g,
            "palisade_tls_handshakes_total{result=\"acme_challenge\"}"
        )
        .await
            >= 1.0,
        "the CA's checks came over TLS-ALPN-01"
    );
    // A connection offering acme-tls/1 for a name with no challenge in flight fails cleanly.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -connect 127.0.0.1:{tls_port} -servername api.palisade.test -alpn acme-tls/1 </dev/null 2>&1"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ALPN protocol: acme-tls/1"));
    assert!(
        metric_sum(
            &g,
            "palisade_tls_handshakes_total{result=\"no_acme_challenge\"}"
        )
        .await
            >= 1.0
    );

    // Replace the stored certificate by one that expires tomorrow: on restart it is due, and a
    // new one is ordered and served.
    let gw_dir = g.kill9();
    let acme_dir = gw_dir.join("data").join("acme");
    let stored = std::fs::read_dir(&acme_dir)
        .unwrap()
        .flatten()
        .find(|f| f.file_name().to_string_lossy().starts_with("cert-"))
        .unwrap()
        .path();
    openssl(
        &acme_dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=api.palisade.test",
            "-addext",
            "subjectAltName=DNS:api.palisade.test,DNS:www.palisade.test",
            "-keyout",
            "old.key",
            "-out",
            "old.crt",
        ],
    );
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stored).unwrap()).unwrap();
    json["cert"] = std::fs::read_to_string(acme_dir.join("old.crt"))
        .unwrap()
        .into();
    json["key"] = std::fs::read_to_string(acme_dir.join("old.key"))
        .unwrap()
        .into();
    std::fs::write(&stored, json.to_string()).unwrap();
    let old_serial_cmd = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(acme_dir.join("old.crt"))
        .output()
        .unwrap();
    let old = String::from_utf8_lossy(&old_serial_cmd.stdout)
        .trim()
        .to_owned();
    let g = start_gateway(&gw_dir, &config, http_port);
    let renewed = wait_for_certificate(
        &g,
        "api.palisade.test",
        tls_port,
        &root,
        Duration::from_secs(60),
    );
    assert_ne!(renewed, old);
    assert_ne!(renewed, first);
    assert_eq!(
        metric_sum(&g, "palisade_acme_orders_total{result=\"issued\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_orders_once_and_every_gateway_serves_the_certificate() {
    let up = upstream().await;
    let redis = Redis::start();
    let dir = test_dir("cluster");
    let (http_a, tls_a, http_b, tls_b) = (free_port(), free_port(), free_port(), free_port());
    // The CA reaches gateway A only: if B holds the lock, A answers B's challenge through the
    // store.
    let pebble = Pebble::start(&dir, http_a, tls_a);
    let store = format!("[store]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url());
    let a = start_gateway(
        &dir.join("a"),
        &acme_config(&up, &pebble, tls_a, "http-01", &store),
        http_a,
    );
    let b = start_gateway(
        &dir.join("b"),
        &acme_config(&up, &pebble, tls_b, "http-01", &store),
        http_b,
    );
    let root = pebble.issuing_root();
    let on_a = wait_for_certificate(
        &a,
        "api.palisade.test",
        tls_a,
        &root,
        Duration::from_secs(90),
    );
    let on_b = wait_for_certificate(
        &b,
        "api.palisade.test",
        tls_b,
        &root,
        Duration::from_secs(90),
    );
    assert_eq!(on_a, on_b, "one certificate for the cluster");
    let orders = metric_sum(&a, "palisade_acme_orders_total{result=\"issued\"}").await
        + metric_sum(&b, "palisade_acme_orders_total{result=\"issued\"}").await;
    assert_eq!(orders, 1.0, "exactly one gateway ordered");
    let failed = metric_sum(&a, "palisade_acme_orders_total{result=\"failed\"}").await
        + metric_sum(&b, "palisade_acme_orders_total{result=\"failed\"}").await;
    assert_eq!(failed, 0.0);
    // A challenge published by another gateway (only in the store) is answered by this one,
    // and TLS-ALPN-01 likewise.
    redis.cli(&[
        "SET",
        "palisade:acme:http01:tok-from-b",
        "tok-from-b.thumbprint",
        "EX",
        "60",
    ]);
    let r = get(&a.url("/.well-known/acme-challenge/tok-from-b")).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], &b"tok-from-b.thumbprint"[..]);
    assert_eq!(
        get(&a.url("/.well-known/acme-challenge/tok-nobody"))
            .await
            .status,
        404
    );
    redis.cli(&[
        "SET",
        "palisade:acme:alpn01:other.palisade.test",
        &"ab".repeat(32),
        "EX",
        "60",
    ]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -connect 127.0.0.1:{tls_a} -servername other.palisade.test -alpn acme-tls/1 </dev/null 2>/dev/null | openssl x509 -noout -text"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1.3.6.1.5.5.7.1.31: critical"), "{text}");
    assert!(text.contains("DNS:other.palisade.test"), "{text}");
}

#[test]
fn check_reports_acme_and_refuses_what_no_ca_would_issue() {
    let dir = test_dir("check");
    let run = |config: &str| {
        let path = dir.join("p.toml");
        std::fs::write(&path, config).unwrap();
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let base = "[[upstreams]]\nname = \"api\"\nurl = \"http://127.0.0.1:9\"\n\n[tls]\nlisten = \"127.0.0.1:0\"\n";
    let ok = run(&format!(
        "{base}\n[tls.acme]\ndomains = [\"api.example.com\"]\naccept_terms = true\nchallenge = \"http-01\"\n"
    ));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains("ACME certificate for api.example.com"),
        "{out}"
    );
    assert!(out.contains("acme-v02.api.letsencrypt.org"), "{out}");
    assert!(out.contains("HTTP-01"), "{out}");
    let bad = run(&format!(
        "{base}\n[tls.acme]\ndomains = [\"*.example.com\", \"localhost\", \"bad_name.example.com\"]\ndirectory = \"http://ca.example/dir\"\ncontact = [\"ops@example.com\"]\nchallenge = \"dns-01\"\nrenew_before_days = 0\nca_root = \"missing.pem\"\n"
    ));
    assert!(!bad.status.success());
    let err =
        String::from_utf8_lossy(&bad.stderr).into_owned() + &String::from_utf8_lossy(&bad.stdout);
    for expected in [
        "wildcard names need the DNS-01 challenge",
        "`localhost` is not a DNS name",
        "`bad_name.example.com` is not a DNS name",
        "is not an https:// URL",
        "is not a contact URL",
        "accept_terms = true",
        "`dns-01` is not one of",
        "renew_before_days must be between 1 and 365",
        "missing.pem",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}
