//! Honeypots and blocks: trap paths, decoy keys, escalation, persistence, management.

use crate::common::*;

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
