//! The admin API: auth, health, metrics, config, decisions, identities, reload.

use std::time::{Duration, Instant};

use crate::common::*;

const LIMITS: &str = r#"
[server]
admin_token = "config-token-should-be-redacted"

[[routes]]
name = "login"
match = { path = "/login" }

[[limits]]
name = "per-ip"
key = ["ip"]
rate = "2/1m"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_are_open_everything_else_needs_the_token() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, LIMITS)));
    let h = get(&g.admin_url("/healthz")).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    for path in ["/v1/config", "/v1/decisions", "/v1/identities/ip/127.0.0.1"] {
        let r = get(&g.admin_url(path)).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), "Bearer");
        let r = send(
            "GET",
            &g.admin_url(path),
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{path}");
    }
    assert_eq!(
        send("POST", &g.admin_url("/v1/reload"), &[], "")
            .await
            .status,
        401
    );
    // PALISADE_ADMIN_TOKEN wins over the config's token, and the config's token is redacted.
    let c = admin_get(&g, "/v1/config").await;
    assert_eq!(c.status, 200);
    let text = String::from_utf8_lossy(&c.body);
    assert!(!text.contains("config-token-should-be-redacted"), "{text}");
    assert!(text.contains("<redacted>"));
    assert_eq!(c.json()["config"]["limits"][0]["name"], "per-ip");
    assert_eq!(
        get(&g.admin_url("/v1/openapi.json")).await.json()["openapi"],
        "3.1.0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_bounded_labels() {
    let up = upstream().await;
    let g = Gateway::start_with(Some(&config_for(&up, LIMITS)), &[], &[]);
    for _ in 0..3 {
        send(
            "GET",
            &g.url("/login"),
            &[("user-agent", "curl/8.0 secret-agent")],
            "",
        )
        .await;
    }
    let m = get(&g.admin_url("/metrics")).await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body).to_string();
    assert!(
        text.contains(
            r#"palisade_requests_total{route="login",action="allow",rule="default/allow"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"palisade_requests_total{route="login",action="limit",rule="limit/per-ip"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("palisade_decision_duration_seconds_bucket"));
    assert!(
        text.contains(r#"palisade_upstream_duration_seconds_count{route="login"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_limit_tracked_keys{limit="per-ip"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"palisade_limit_tracked_keys_capacity{limit="per-ip"}"#));
    assert!(text.contains(r#"palisade_limit_evictions_total{limit="per-ip"} 0"#));
    assert!(text.ends_with("# EOF\n"));
    for forbidden in ["127.0.0.1", "secret-agent", "curl"] {
        assert!(
            !text.contains(forbidden),
            "metrics must not carry identities: found {forbidden}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn why_was_this_client_limited() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, LIMITS)));
    for _ in 0..3 {
        get(&g.url("/login")).await;
    }
    g.wait_decisions(3);
    let r = admin_get(&g, "/v1/identities/ip/127.0.0.1").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["identity"]["dimension"], "ip");
    let lim = &j["identity"]["limits"][0];
    assert_eq!(lim["limit"], "per-ip");
    assert_eq!(lim["tracked"], true);
    assert_eq!(lim["remaining"], 0);
    let recent = j["recent_decisions"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[0]["action"], "limit", "newest first");
    assert_eq!(recent[0]["rule"], "limit/per-ip");

    let d = admin_get(&g, "/v1/decisions?action=limit").await.json();
    assert_eq!(d["decisions"].as_array().unwrap().len(), 1);

    let unknown = admin_get(&g, "/v1/identities/ip/198.51.100.1").await.json();
    assert_eq!(unknown["identity"]["limits"][0]["tracked"], false);
    assert_eq!(
        admin_get(&g, "/v1/identities/ip/not-an-ip").await.status,
        400
    );
    assert_eq!(admin_get(&g, "/v1/identities/colour/red").await.status, 400);
    let sub = admin_get(&g, "/v1/identities/ip/24/127.0.0.9").await.json();
    assert_eq!(sub["identity"]["value"], "127.0.0.0/24");
}

fn with_rate(rate: &str) -> String {
    LIMITS.replace("rate = \"2/1m\"", &format!("rate = \"{rate}\""))
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_good_configs_and_refuses_bad_ones() {
    let up = upstream().await;
    let g = Gateway::start_with(
        Some(&config_for(&up, &with_rate("2/1m"))),
        &["--watch-interval", "3600"],
        &[],
    );
    let path = g.config_path();

    // A broken config: refused with every error, old policy in force.
    std::fs::write(&path, config_for(&up, &with_rate("lots")) + "\n[colours]\n").unwrap();
    let r = admin_post(&g, "/v1/reload").await;
    assert_eq!(r.status, 422);
    let j = r.json();
    assert_eq!(j["error"], "invalid_config");
    assert!(j["errors"].as_array().unwrap().len() >= 2, "{j}");
    assert!(j["errors"][0]["line"].is_number());
    for _ in 0..2 {
        assert_eq!(get(&g.url("/x")).await.status, 200);
    }
    assert_eq!(
        get(&g.url("/x")).await.status,
        429,
        "the old limit (2/1m) still holds"
    );

    // A good config: applied at once.
    std::fs::write(&path, config_for(&up, &with_rate("100/1m"))).unwrap();
    let r = admin_post(&g, "/v1/reload").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(get(&g.url("/x")).await.status, 200);

    // SIGHUP reloads too.
    std::fs::write(&path, config_for(&up, &with_rate("1/1h"))).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&g.url("/x")).await;
        if r.header("ratelimit-policy").contains("q=1;w=3600") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    assert!(
        m.contains(r#"palisade_config_reloads_total{result="error"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"palisade_config_reloads_total{result="ok"} 2"#),
        "{m}"
    );
    assert!(g.stderr().contains("configuration refused"));
    // Every reload is in the audit log, with what triggered it (written just after the new
    // policy takes effect, so wait for the third).
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let a = admin_get(&g, "/v1/audit").await.json();
        if a["entries"].as_array().unwrap().len() >= 3 || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entries: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.reload")
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["details"]["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("admin-api".to_owned(), "refused".to_owned()),
            ("admin-api".to_owned(), "ok".to_owned()),
            ("SIGHUP".to_owned(), "ok".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_file_changes_are_picked_up() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, &with_rate("100/1m"))));
    assert!(
        get(&g.url("/x"))
            .await
            .header("ratelimit-policy")
            .contains("q=100")
    );
    std::fs::write(g.config_path(), config_for(&up, &with_rate("7/1m"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if get(&g.url("/x"))
            .await
            .header("ratelimit-policy")
            .contains("q=7;")
        {
            break;
        }
        assert!(Instant::now() < deadline, "file change not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken edit keeps the running policy.
    std::fs::write(g.config_path(), "this is not toml [").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        get(&g.url("/x"))
            .await
            .header("ratelimit-policy")
            .contains("q=7;")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_cuts_off_slow_clients_too() {
    use std::io::{Read, Write};
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    )));
    let mut s = std::net::TcpStream::connect(g.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    // hyper answers 408 or just closes; either way the read ends well before our 10 s timeout.
    let _ = s.read(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "admin connection lived {:?}",
        started.elapsed()
    );
    assert_eq!(get(&g.admin_url("/healthz")).await.status, 200);
}
