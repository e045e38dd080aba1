//! The monitoring hand-off: `deploy/prometheus/palisade-alerts.yml` passes `promtool check rules`
//! (Debian's `prometheus` package), `deploy/grafana/palisade-dashboard.json` is a well-formed
//! dashboard, and every metric either of them uses is one a running gateway exposes.

use std::collections::BTreeSet;

use crate::common::*;

fn deploy(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../deploy/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// `palisade_…` metric families named in a text (suffixes of counters and histograms taken off).
fn families(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text.get(i..).and_then(|t| t.find("palisade_")) {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                .count();
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_total", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                name = n;
                break;
            }
        }
        out.insert(name.to_owned());
        i = end.max(start + 1);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_rules_and_dashboard_use_the_metrics_the_gateway_exposes() {
    let rules = deploy("prometheus/palisade-alerts.yml");
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(format!(
            "{}/../../deploy/prometheus/palisade-alerts.yml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => println!("SKIPPED: promtool check rules (scripts/test.sh installs prometheus)"),
    }

    // The dashboard: a Grafana dashboard with a templated data source, panels that fit the
    // 24-column grid without overlapping, unique ids, and a query in every panel.
    let dashboard = deploy("grafana/palisade-dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert_eq!(d["uid"], "palisade");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{p}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "panels overlap at {cx},{cy}: {}",
                    p["title"]
                );
            }
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for t in targets {
            assert!(t["expr"].as_str().unwrap().contains("palisade_"), "{t}");
        }
    }

    // Every metric they use exists on a gateway with the features they watch: behaviour with
    // stuffing and attack mode, challenges, a shared store.
    let redis = Redis::start();
    let up = upstream().await;
    let config = config_for(
        &up,
        &format!(
            "[[upstreams]]\nname = \"dead\"\nurl = \"http://127.0.0.1:1\"\n\n\
             [[routes]]\nname = \"dead\"\nmatch = {{ path = \"/dead\" }}\nupstream = \"dead\"\n\n\
             [[routes]]\nname = \"login\"\nmatch = {{ path = \"/login\", methods = [\"POST\"] }}\n\n\
             [behaviour]\n\n[behaviour.stuffing]\nroute = \"login\"\nfailure_status = [401]\nusername_field = \"u\"\n\n\
             [behaviour.attack]\n\n\
             [[rules]]\nname = \"protect\"\nwhen = 'path.startsWith(\"/p\")'\naction = \"challenge\"\n\n\
             [store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
            redis.port
        ),
    );
    let g = Gateway::start(Some(&config));
    // A sample in every family: a request, a challenge, an upstream that is down, a reload.
    assert_eq!(send("GET", &g.url("/echo"), &[], "").await.status, 200);
    let r = send("GET", &g.url("/p/x"), &[("accept", "application/json")], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(send("GET", &g.url("/dead"), &[], "").await.status, 502);
    let r = send(
        "POST",
        &g.admin_url("/v1/reload"),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let exposed_text =
        String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).into_owned();
    let exposed: BTreeSet<String> = exposed_text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let used: BTreeSet<String> = families(&rules)
        .union(&families(&dashboard))
        .cloned()
        .collect();
    assert!(used.len() >= 12, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !exposed.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "used but not exposed: {missing:?}\nexposed: {exposed:?}"
    );
}
