//! Access log lines of arbitrary content (`palisade replay` reads logs that attackers' requests
//! were written into): detecting the format and reading a line in every format never panics,
//! and what is read is bounded — a status of 0 or 100-599, a path starting with `/`, at most 64
//! headers, at most 16 answer headers of at most 64 bytes, and a reported cost that is a finite,
//! non-negative number or none. Run: cargo +nightly fuzz run access_log
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_gateway::replay::{Format, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Format::detect(&text);
    for f in [
        Format::Combined,
        Format::NginxJson,
        Format::Caddy,
        Format::Traefik,
        Format::Palisade,
    ] {
        if let Ok(r) = parse(f, &text) {
            assert!(r.status == 0 || (100..600).contains(&r.status));
            assert!(r.path.starts_with('/'));
            assert!(r.headers.len() <= 64);
            assert!(r.answer_headers.len() <= 16);
            assert!(r.answer_headers.iter().all(|(_, v)| v.len() <= 64));
            if let Some(c) = r.reported_cost("x-cost") {
                assert!(c.is_finite() && c >= 0.0);
            }
        }
    }
});
