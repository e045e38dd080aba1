//! Bounded memory: a spray of a million distinct client identities through the real gateway
//! keeps the limiter tables at their cap, the process's memory bounded, and the gateway
//! answering.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

/// Distinct client addresses sent (through a trusted X-Forwarded-For). Overridable for quick
/// local runs; CI uses the full million.
fn spray_size() -> u32 {
    std::env::var("PALISADE_SPRAY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

const CAP: u64 = 50_000;
const BEHAVIOUR_CAP: u64 = 20_000;

/// Sends `count` pipelined requests with distinct client IPs over one connection; returns how
/// many responses came back.
fn spray(addr: std::net::SocketAddr, start: u32, count: u32) -> u32 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_nodelay(true).unwrap();
    let mut seen = 0u32;
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let batch = 200u32;
    let mut sent = 0u32;
    while sent < count {
        let n = batch.min(count - sent);
        let mut out = Vec::with_capacity(n as usize * 90);
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0x0b00_0000u32 + start + sent + i);
            out.extend_from_slice(
                format!("GET /spray HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n")
                    .as_bytes(),
            );
        }
        s.write_all(&out).unwrap();
        sent += n;
        let want = sent;
        while seen < want {
            let got = s.read(&mut buf).unwrap();
            assert!(got > 0, "gateway closed the connection");
            carry.extend_from_slice(&buf[..got]);
            // Count complete status lines; keep a tail in case one is split across reads.
            let text = &carry;
            let mut idx = 0;
            while let Some(pos) = find(&text[idx..], b"HTTP/1.1 ") {
                seen += 1;
                idx += pos + 9;
            }
            let keep = carry.len().saturating_sub(8);
            carry.drain(..keep.max(idx.min(carry.len())));
        }
    }
    seen
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_distinct_clients_keep_memory_under_the_cap() {
    let up = upstream().await;
    let g = Gateway::start(Some(
        &config_for(
            &up,
            &format!(
                r#"
[server]
trusted_proxies = ["127.0.0.1"]
max_tracked_keys = {CAP}

[[limits]]
name = "per-ip"
key = ["ip"]
rate = "10/1s"

# Refuses everything after the first request, locally: every sprayed address still gets a
# per-ip cell, without an upstream round trip per request.
[[limits]]
name = "global"
rate = "1/1h"
headers = false

# Behaviour records for every address and network too, capped on their own.
[behaviour]
max_entries = {BEHAVIOUR_CAP}
"#
            ),
        )
        .replace("decisions = \"stdout\"", "decisions = \"off\""),
    ));
    assert_eq!(get(&g.url("/warm")).await.status, 200);
    let before = g.rss_kib();
    let total = spray_size();
    let per = total / 4;
    let addr = g.proxy;
    let handles: Vec<_> = (0..4)
        .map(|k| std::thread::spawn(move || spray(addr, k * per, per)))
        .collect();
    let answered: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(answered, per * 4, "every request was answered");
    let after = g.rss_kib();

    let m = String::from_utf8_lossy(&get(&g.admin_url("/metrics")).await.body).to_string();
    let metric = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    let tracked = metric("palisade_limit_tracked_keys{limit=\"per-ip\"}");
    let capacity = metric("palisade_limit_tracked_keys_capacity{limit=\"per-ip\"}");
    let evicted = metric("palisade_limit_evictions_total{limit=\"per-ip\"}");
    println!(
        "spray: {answered} requests, per-ip table {tracked}/{capacity} keys, {evicted} evictions, RSS {before} KiB -> {after} KiB (+{} KiB)",
        after.saturating_sub(before)
    );
    let b_tracked = metric("palisade_behaviour_tracked ");
    let b_capacity = metric("palisade_behaviour_capacity ");
    let b_evicted = metric("palisade_behaviour_evictions_total ");
    let b_bytes = metric("palisade_behaviour_bytes ");
    println!(
        "behaviour: {b_tracked}/{b_capacity} records, {b_evicted} evictions, ~{} KiB",
        b_bytes / 1024
    );
    assert!(b_tracked <= b_capacity, "{b_tracked} > {b_capacity}");
    // Per dimension (ip, ip/24, ja4h, ...) each table is capped at BEHAVIOUR_CAP; the sprayed
    // addresses alone overflow the ip table many times.
    assert!(
        b_evicted >= u64::from(answered) - 2 * BEHAVIOUR_CAP,
        "{b_evicted}"
    );
    assert!(tracked <= capacity, "{tracked} > {capacity}");
    assert_eq!(capacity, CAP);
    assert!(
        evicted >= u64::from(answered) - CAP - 1000,
        "evictions {evicted}"
    );
    // 50k limiter keys at well under 100 B each and ~40k behaviour records at well under 1 KiB;
    // tables that kept every identity would need ~1M of each.
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 96,
        "RSS grew by {growth_mib} MiB for a {CAP}-key cap"
    );
    // Still answering, and still limiting a known client.
    assert_eq!(get(&g.admin_url("/healthz")).await.status, 200);
    let r = send(
        "GET",
        &g.url("/after"),
        &[("x-forwarded-for", "198.51.100.77")],
        "",
    )
    .await;
    assert_eq!(r.status, 429, "the global limit still holds");
}
