//! HAProxy's `req.hdrs_bin` of arbitrary content (it carries the client's headers): reading it
//! never panics, never reads past the input, and yields at most 256 headers. Run:
//! cargo +nightly fuzz run spoe_headers
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_gateway::proxy::spoa::headers_bin;

fuzz_target!(|data: &[u8]| {
    let h = headers_bin(data);
    assert!(h.len() <= 256);
    let total: usize = h.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert!(total <= data.len());
    assert!(h.iter().all(|(n, _)| !n.is_empty()));
});
