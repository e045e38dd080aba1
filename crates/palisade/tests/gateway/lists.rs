//! Deny and allow lists, inline and from files.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn lists_inline_and_from_files() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-lists-it-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let deny_file = dir.join("deny.txt");
    std::fs::write(&deny_file, "# denied\n198.51.100.0/24\n").unwrap();
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[[limits]]
name = "tight"
key = ["ip"]
rate = "1/1h"

[lists]
deny = ["203.0.113.0/24", "file:{}"]
allow = ["192.0.2.10"]
"#,
            deny_file.display()
        ),
    )));
    for ip in ["203.0.113.50", "198.51.100.9"] {
        let r = send("GET", &g.url("/"), &[("x-forwarded-for", ip)], "").await;
        assert_eq!(r.status, 403, "{ip}");
        assert_eq!(r.json()["error"], "forbidden");
    }
    for _ in 0..5 {
        let r = send("GET", &g.url("/"), &[("x-forwarded-for", "192.0.2.10")], "").await;
        assert_eq!(r.status, 200, "allowlisted clients bypass limits");
    }
    let d = g.wait_decisions(7);
    assert_eq!(d[0]["rule"], "list/deny");
    assert_eq!(d[0]["score"], 100);
    assert_eq!(d[6]["rule"], "list/allow");
    let _ = std::fs::remove_dir_all(dir);
}
