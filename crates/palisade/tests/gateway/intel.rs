//! IP intelligence: networks, countries and Tor exits as signals and limit keys.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn networks_countries_and_tor_exits_are_signals_and_keys() {
    let up = upstream().await;
    let dir = std::env::temp_dir().join(format!("palisade-intel-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    // A small iptoasn table and Tor exit list, made here (the real ones are downloads).
    std::fs::write(
        dir.join("ip2asn.tsv"),
        "3.0.0.0\t3.127.255.255\t16509\tUS\tAMAZON-02\n\
         81.2.69.0\t81.2.69.255\t20712\tGB\tANDREWS-ARNOLD\n\
         2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64500\tDE\tEXAMPLE-V6\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tor.txt"),
        "ExitNode 0011\nExitAddress 81.2.69.160 2026-11-20 10:00:00\n",
    )
    .unwrap();
    // And MaxMind-format databases for what the table lacks, written by the test.
    use palisade_intel::mmdb_write::{asn, country, write};
    std::fs::write(
        dir.join("asn.mmdb"),
        write(
            "GeoLite2-ASN",
            &[(
                "203.0.113.0".parse().unwrap(),
                24,
                asn(64496, "EXAMPLE-NET"),
            )],
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("country.mmdb"),
        write(
            "GeoLite2-Country",
            &[("203.0.113.0".parse().unwrap(), 24, country("NZ"))],
        ),
    )
    .unwrap();
    let g = Gateway::start(Some(&config_for(
        &up,
        &format!(
            r#"
[server]
trusted_proxies = ["127.0.0.1"]

[intel]
asn_db = "{dir}/ip2asn.tsv"
tor_exits = "{dir}/tor.txt"
mmdb = ["{dir}/asn.mmdb", "{dir}/country.mmdb"]

[intel.weights]
hosting = 25

[[limits]]
name = "per-asn"
key = ["asn"]
rate = "2/1m"

[[limits]]
name = "per-country"
key = ["country"]
rate = "100/1m"
"#,
            dir = dir.display()
        ),
    )));
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    // Two addresses of one cloud network share its budget.
    assert_eq!(
        send("GET", &g.url("/x"), &from("3.1.2.3"), "").await.status,
        200
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("3.9.9.9"), "").await.status,
        200
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("3.1.2.4"), "").await.status,
        429
    );
    let d = g.wait_decision(|d| d["action"] == "limit");
    assert_eq!(d["rule"], "limit/per-asn");
    assert_eq!(d["identity"]["asn"], "AS16509");
    assert_eq!(d["identity"]["country"], "US");
    assert_eq!(d["identity"]["network"], "hosting");
    assert!(
        d["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["signal"] == "intel/hosting" && r["weight"] == 25)
    );
    // A Tor exit on an ordinary network: the Tor signal, no network signal.
    assert_eq!(
        send("GET", &g.url("/x"), &from("81.2.69.160"), "")
            .await
            .status,
        200
    );
    let d = g.wait_decision(|d| d["identity"]["tor_exit"] == "true");
    assert_eq!(d["identity"]["asn"], "AS20712");
    let signals: Vec<&str> = d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signal"].as_str().unwrap())
        .collect();
    assert_eq!(signals, ["intel/tor"]);
    // From the MaxMind databases.
    assert_eq!(
        send("GET", &g.url("/x"), &from("203.0.113.50"), "")
            .await
            .status,
        200
    );
    let d = g.wait_decision(|d| d["identity"]["country"] == "NZ");
    assert_eq!(
        (
            d["identity"]["asn"].clone(),
            d["identity"]["as_name"].clone()
        ),
        (
            serde_json::json!("AS64496"),
            serde_json::json!("EXAMPLE-NET")
        )
    );
    let who = admin_get(&g, "/v1/identities/country/NZ").await.json();
    assert_eq!(who["identity"]["limits"][0]["remaining"], 99);
    // Unknown addresses carry nothing.
    assert_eq!(
        send("GET", &g.url("/x"), &from("198.51.100.1"), "")
            .await
            .status,
        200
    );
    let who = admin_get(&g, "/v1/identities/asn/AS16509").await.json();
    assert_eq!(who["identity"]["limits"][0]["remaining"], 0);
    // A whole network can be blocked for a while.
    let r = admin_json(
        &g,
        "POST",
        "/v1/blocks",
        serde_json::json!({ "dimension": "asn", "value": "AS20712", "ttl": "10m" }),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        send("GET", &g.url("/x"), &from("81.2.69.160"), "")
            .await
            .status,
        403
    );
    assert_eq!(
        send("GET", &g.url("/x"), &from("81.2.69.7"), "")
            .await
            .status,
        403
    );
    let _ = std::fs::remove_dir_all(&dir);
}
