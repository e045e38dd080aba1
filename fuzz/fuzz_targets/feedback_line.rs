//! Response-feedback datagrams of arbitrary content (they arrive from the network): reading one
//! never panics, and what it yields is bounded — an id of at most 64 bytes, a status from 100 to
//! 599, finite non-negative cost and spend. Run: cargo +nightly fuzz run feedback_line
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_gateway::proxy::feedback::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = parse(data) {
        assert!(!line.request_id.is_empty() && line.request_id.len() <= 64);
        assert!((100..600).contains(&line.status));
        for v in [line.cost, line.spend_usd].into_iter().flatten() {
            assert!(v.is_finite() && v >= 0.0);
        }
        assert!(line.resp_headers.len() <= 64);
    }
});
