//! Shadow mode and the decision log.

use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_forwards_and_logs_would_actions() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(
        &up,
        r#"
[server]
mode = "shadow"

[[limits]]
name = "tiny"
key = ["ip"]
rate = "1/1h"

[lists]
deny = ["127.0.0.0/8"]
"#,
    )));
    for _ in 0..3 {
        assert_eq!(get(&g.url("/x")).await.status, 200);
    }
    let d = g.wait_decisions(3);
    assert!(
        d.iter()
            .all(|d| d["action"] == "would_block" && d["shadow"] == true),
        "{d:?}"
    );
    let m = get(&g.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"palisade_shadow_decisions_total{route="default",action="would_block",rule="list/deny"} 3"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_limit_shadow_and_sampled_allows() {
    let up = upstream().await;
    let g = Gateway::start(Some(
        &config_for(
            &up,
            r#"
[log]
sample_allow = 0.0

[[limits]]
name = "trial"
key = ["ip"]
rate = "2/1h"
action = "shadow"
"#,
        )
        .replace("[log]\ndecisions = \"stdout\"\n\n", ""),
    ));
    for _ in 0..5 {
        assert_eq!(get(&g.url("/x")).await.status, 200);
    }
    // Allows are not logged at sample 0; the three would_limit decisions are.
    let d = g.wait_decisions(3);
    std::thread::sleep(Duration::from_millis(300));
    let d2 = g.decisions();
    assert_eq!(d2.len(), 3, "{d2:?}");
    assert!(
        d.iter()
            .all(|d| d["action"] == "would_limit" && d["rule"] == "limit/trial")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn decision_log_can_go_to_a_file() {
    let up = upstream().await;
    let g = Gateway::start(Some(&config_for(&up, "").replace(
        "decisions = \"stdout\"",
        "decisions = \"logs/decisions.jsonl\"",
    )));
    for p in ["/a", "/b"] {
        assert_eq!(get(&g.url(p)).await.status, 200);
    }
    let file = g.dir.join("logs/decisions.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["path"], "/b");
    assert!(g.decisions().is_empty(), "nothing on stdout");
}
