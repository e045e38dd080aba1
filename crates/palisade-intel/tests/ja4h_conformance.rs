//! JA4H conformance: every cleartext HTTP/1 request in FoxIO's reference captures
//! (shared/testdata/ja4/pcap, FoxIO-LLC/ja4 @ 0e54bc8) must get exactly the JA4H (and JA4H_ro)
//! in ja4/expected/<capture>.json.
//!
//! The captures are read here with a small pcap/pcapng reader (Ethernet, Linux cooked, raw and
//! loopback link types; IPv4/IPv6; TCP payloads reassembled per direction by sequence number)
//! and the requests parsed with `httparse`, which keeps header names as sent. The HTTP/2 and
//! HTTP/3 streams in the corpus are inside TLS or QUIC; they are counted and reported, not
//! decrypted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use palisade_intel::ja4h::{HttpVersion, ja4h};

mod pcap;

use pcap::{Flow, streams};

/// (JA4H, JA4H_ro) of each HTTP/1 request in a client's stream.
fn requests(mut buf: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(buf) else {
            break;
        };
        let version = if req.version == Some(0) {
            HttpVersion::Http10
        } else {
            HttpVersion::Http11
        };
        let body_len = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        let fp = ja4h(
            req.method.unwrap_or(""),
            version,
            req.headers.iter().map(|h| (h.name, h.value)),
        );
        out.push((fp.fingerprint, fp.raw));
        buf = match buf.get(n + body_len..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => break,
        };
    }
    out
}

#[test]
#[cfg_attr(
    not(palisade_testdata),
    ignore = "shared testdata not found: JA4H conformance skipped"
)]
fn ja4h_matches_foxio_reference_values() {
    let dir = std::path::PathBuf::from(env!("PALISADE_TESTDATA_DIR")).join("ja4");
    let (mut checked, mut encrypted) = (0, 0);
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(dir.join("expected")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expected: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let wanted: Vec<&serde_json::Value> = expected
            .iter()
            .filter(|e| e.get("JA4H").is_some())
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let pcap = dir.join("pcap").join(name.trim_end_matches(".json"));
        let streams = streams(&std::fs::read(&pcap).unwrap());
        for e in wanted {
            let fp = e["JA4H"].as_str().unwrap();
            if !matches!(fp.get(2..4), Some("10" | "11")) {
                encrypted += 1;
                continue;
            }
            let flow: Flow = (
                e["src"].as_str().unwrap().parse().unwrap(),
                e["srcport"].as_str().unwrap().parse().unwrap(),
                e["dst"].as_str().unwrap().parse().unwrap(),
                e["dstport"].as_str().unwrap().parse().unwrap(),
            );
            // FoxIO names a stream by its first packet, which a server can send (as in the
            // CVE-2018-6794 capture): look at both directions.
            let reversed = (flow.2, flow.3, flow.0, flow.1);
            let mut got = streams.get(&flow).map(|b| requests(b)).unwrap_or_default();
            got.extend(
                streams
                    .get(&reversed)
                    .map(|b| requests(b))
                    .unwrap_or_default(),
            );
            let ro = e["JA4H_ro"].as_str().unwrap_or_default();
            if got.iter().any(|(f, r)| f == fp && r == ro) {
                checked += 1;
            } else {
                failures.push(format!(
                    "{name} stream {}: want {fp} / {ro}, got {got:?}",
                    e["stream"]
                ));
            }
        }
    }
    println!(
        "JA4H: {checked} HTTP/1 requests match FoxIO's values; {encrypted} HTTP/2-3 streams are encrypted in the captures and not checked"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(checked >= 70, "only {checked} requests checked");
}
