//! `palisade check` and the zero-argument start.

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

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("palisade-cli-{}-{name}", rand_u64()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_the_shipped_configs() {
    let (code, out, err) = palisade(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("13 passed, 0 failed"), "{out}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../palisade.example.toml");
    let (code, out, err) = palisade(&["check", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 failed"));
}

#[test]
fn check_reports_every_error_with_its_location() {
    let p = write_temp(
        "bad.toml",
        "[server]\nlisten = \"nope\"\n\n[[limits]]\nname = \"a\"\nrate = \"fast\"\n\n[[limits]]\nname = \"b\"\nrate = \"1/s\"\nbogus = 1\n",
    );
    let (code, _out, err) = palisade(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    let file = p.display().to_string();
    assert!(err.contains("3 errors"), "{err}");
    assert!(
        err.contains(&format!("{file}:2:10: server.listen")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:6:8: limits[0].rate")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:11:1: limits[1]: unknown field `bogus`")),
        "{err}"
    );

    let (code, out, _) = palisade(&["check", "--json", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["valid"], false);
    assert_eq!(j["errors"].as_array().unwrap().len(), 3);
    let _ = std::fs::remove_file(p);
}

#[test]
fn check_runs_test_cases_and_fails_on_a_wrong_expectation() {
    let p = write_temp(
        "cases.toml",
        r#"
[[limits]]
name = "one"
key = ["ip"]
rate = "1/1m"

[[tests]]
name = "second is limited"
request = { path = "/", repeat = 2 }
expect = { action = "limit" }

[[tests]]
name = "this expectation is wrong"
request = { path = "/", ip = "198.51.100.50" }
expect = { action = "block" }
"#,
    );
    let (code, out, _) = palisade(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    second is limited"), "{out}");
    assert!(out.contains("FAIL  this expectation is wrong"), "{out}");
    assert!(
        out.contains("expected block, got allow by default/allow"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
    let _ = std::fs::remove_file(p);
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let (code, _, err) = palisade(&["check", "--config", "/nonexistent/palisade.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file"), "{err}");
    let (code, _, err) = palisade(&["serve", "--config", "/nonexistent/palisade.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_config_start_serves_the_sample_api_behind_the_default_policy() {
    let g = Gateway::start(None);
    let index = get(&g.url("/")).await;
    assert_eq!(index.status, 200);
    assert!(String::from_utf8_lossy(&index.body).contains("Palisade sample API"));
    assert_eq!(get(&g.url("/api/items/1000")).await.status, 200);
    assert_eq!(get(&g.url("/api/items/1001")).await.status, 404);
    let ok = send(
        "POST",
        &g.url("/api/login"),
        &[("content-type", "application/json")],
        r#"{"username":"demo","password":"palisade-demo"}"#,
    )
    .await;
    assert_eq!(ok.status, 200);
    let bad = send(
        "POST",
        &g.url("/api/login"),
        &[],
        r#"{"username":"demo","password":"guess"}"#,
    )
    .await;
    assert_eq!(bad.status, 401);
    let s = get(&g.url("/api/search?q=99")).await;
    assert!(!s.json()["results"].as_array().unwrap().is_empty());
    let e = get(&g.url("/api/expensive")).await;
    assert_eq!(e.json()["error"], "missing_api_key");
    let (_, key) = create_key(&g, serde_json::json!({ "name": "demo" })).await;
    let e = send(
        "GET",
        &g.url("/api/expensive"),
        &[("authorization", &format!("Bearer {key}"))],
        "",
    )
    .await;
    assert_eq!(e.status, 200);
    assert_eq!(e.header("x-cost-tokens"), "150");
    assert!(
        e.header("ratelimit-policy")
            .contains(r#""daily";q=1000;w=86400"#)
    );
    // The default policy's login limit per address (a burst of 10, room for an office behind
    // one NAT): two logins above, nine more exceed it.
    let mut statuses = Vec::new();
    for _ in 0..9 {
        statuses.push(
            send("POST", &g.url("/api/login"), &[], "{}")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses[..8].iter().all(|s| *s != 429), "{statuses:?}");
    let banner = g.stderr();
    assert!(banner.contains("built-in sample API"), "{banner}");
    assert!(banner.contains("metrics     http://"), "{banner}");
    assert!(
        banner.contains("admin token from PALISADE_ADMIN_TOKEN"),
        "{banner}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_admin_token_is_written_to_the_data_dir() {
    let g = Gateway::start_with(None, &[], &[("PALISADE_ADMIN_TOKEN", "")]);
    let path = g.dir.join("data/admin.token");
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(token.trim().len(), 64);
    assert!(
        g.stderr()
            .contains(&format!("admin token in {}", path.display())),
        "{}",
        g.stderr()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let r = send(
        "GET",
        &g.admin_url("/v1/config"),
        &[("authorization", &format!("Bearer {}", token.trim()))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
}

fn keys_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("keys")
        .args(args)
        .env_remove("PALISADE_ADMIN_URL")
        .env_remove("PALISADE_DATA_DIR")
        .env_remove("PALISADE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_cli_works_offline_and_against_a_running_gateway() {
    let dir = std::env::temp_dir().join(format!("palisade-keys-cli-{}", rand_u64()));
    let data = dir.join("data");
    let d = data.to_str().unwrap();

    // Offline, on a data dir no gateway uses yet.
    let (code, out, err) = keys_cli(
        &[
            "create",
            "--data-dir",
            d,
            "--name",
            "ci",
            "--account",
            "acme",
            "--scopes",
            "items:read,items:write",
            "--expires-in",
            "90d",
            "--daily-requests",
            "1000",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (id, prefix, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["prefix"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    assert_eq!(prefix, format!("pal_{id}"));
    assert!(key.starts_with(&prefix));
    let (code, out, _) = keys_cli(&["create", "--data-dir", d, "--name", "people"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("only time the key is shown"), "{out}");
    let (code, out, _) = keys_cli(&["list", "--data-dir", d], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&prefix) && out.contains("acme") && !out.contains(&key),
        "{out}"
    );
    let (code, _, err) = keys_cli(&["create", "--data-dir", d, "--expires-in", "soon"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("expires_in"), "{err}");

    // The gateway picks the keys up from the same data dir.
    let up = upstream().await;
    let cfg = config_for(
        &up,
        "[[routes]]\nname = \"items\"\nmatch = { path = \"/items/*\" }\nauth = \"api_key\"\nscopes = [\"items:read\"]\n",
    );
    let g = Gateway::start_in(dir.clone(), Some(&cfg), &[], &[]);
    let auth = format!("Bearer {key}");
    assert_eq!(
        send("GET", &g.url("/items/1"), &[("authorization", &auth)], "")
            .await
            .status,
        200
    );

    // While it runs, the data dir is its own; the CLI says to use the admin API.
    let (code, _, err) = keys_cli(&["list", "--data-dir", d], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("in use by a running gateway"), "{err}");

    // Through the admin API: revoke, and the gateway refuses the key within a second.
    let admin = format!("http://{}", g.admin);
    let env = [("PALISADE_ADMIN_TOKEN", ADMIN_TOKEN)];
    // The key was used once: its last use is written within a flush (a second) and shown.
    let mut shown = serde_json::Value::Null;
    for _ in 0..50 {
        let (code, out, err) = keys_cli(&["show", &id, "--admin", &admin, "--json"], &env);
        assert_eq!(code, 0, "{err}");
        shown = serde_json::from_str(&out).unwrap();
        if shown["last_used_at"].is_string() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(shown["status"], "active");
    let last_used = shown["last_used_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        last_used.len() == 20 && last_used.ends_with('Z') && last_used.contains('T'),
        "RFC 3339 UTC: {last_used}"
    );
    let (code, out, err) = keys_cli(&["revoke", &id, "--admin", &admin], &env);
    assert_eq!(code, 0, "{out}{err}");
    let t = std::time::Instant::now();
    loop {
        let r = send("GET", &g.url("/items/1"), &[("authorization", &auth)], "").await;
        if r.status == 401 {
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
    let (code, out, _) = keys_cli(
        &["list", "--admin", &admin, "--status", "revoked", "--json"],
        &env,
    );
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    let (code, out, _) = keys_cli(&["audit", "--admin", &admin, "--json"], &env);
    assert_eq!(code, 0);
    let audit: serde_json::Value = serde_json::from_str(&out).unwrap();
    let actors: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actors,
        [
            ("cli", "key.create"),
            ("cli", "key.create"),
            ("admin-api", "key.revoke")
        ]
    );
    // A wrong token is a clear error.
    let (code, _, err) = keys_cli(
        &["list", "--admin", &admin],
        &[("PALISADE_ADMIN_TOKEN", "wrong")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("PALISADE_ADMIN_TOKEN"), "{err}");
}

#[test]
fn the_key_secret_can_come_from_the_environment_and_a_conflicting_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("palisade-secret-{}", rand_u64()));
    let d = dir.join("data");
    let d = d.to_str().unwrap();
    let a = "a1".repeat(32);
    // A fresh data dir takes the variable's secret (and keeps it, for the offline CLI).
    let (code, _, err) = keys_cli(
        &["create", "--data-dir", d, "--name", "x"],
        &[("PALISADE_KEY_SECRET", &a)],
    );
    assert_eq!(code, 0, "{err}");
    let stored = std::fs::read_to_string(dir.join("data/key-secret")).unwrap();
    assert_eq!(stored.trim(), a);
    // The same secret again: fine.
    let (code, _, err) = keys_cli(&["list", "--data-dir", d], &[("PALISADE_KEY_SECRET", &a)]);
    assert_eq!(code, 0, "{err}");
    // Another one: refused, with the reason, and the file is untouched.
    let (code, _, err) = keys_cli(
        &["list", "--data-dir", d],
        &[("PALISADE_KEY_SECRET", &"b2".repeat(32))],
    );
    assert_ne!(code, 0);
    assert!(err.contains("PALISADE_KEY_SECRET differs"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("data/key-secret"))
            .unwrap()
            .trim(),
        a
    );
    // Not a secret at all: refused, with the expected form.
    let (code, _, err) = keys_cli(
        &["list", "--data-dir", d],
        &[("PALISADE_KEY_SECRET", "short")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("64 hex digits"), "{err}");
}

/// `palisade probes`: lines of values in, the flagged ones and a summary out.
#[test]
fn probes_command_scans_lines_of_values() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["probes", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                b"# a comment\nO'Reilly\n1' UNION SELECT NULL--\n%3Csvg%20onload%3Dalert(1)%3E\n\n",
            )
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["probes"], serde_json::json!([]));
    assert_eq!(lines[1]["probes"][0]["class"], "sqli");
    assert_eq!(lines[2]["probes"][0]["class"], "xss");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("2 of 3 values flagged"), "{summary}");
}
