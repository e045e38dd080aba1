//! X-Forwarded-For / Forwarded parsing on arbitrary header bytes: never panics, and the result
//! is the peer or an address that appears in the headers.
//! Run: cargo +nightly fuzz run client_ip
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade_engine::IpSet;
use palisade_engine::request::client_ip::client_ip;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (xff, fwd) = data.split_at(split);
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(xff) {
        h.append("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(fwd.get(1..).unwrap_or_default()) {
        h.append("forwarded", v);
    }
    let trusted = IpSet::new(["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()]);
    let peer = "10.1.2.3".parse().unwrap();
    let ip = client_ip(peer, &h, &trusted);
    let _ = ip.to_string();
});
