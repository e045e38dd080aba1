//! The TLS ClientHello reader on arbitrary bytes (what a client sends first on the TLS
//! listener): never panics, asks for more bytes only beyond what it was given, and a hello it
//! reads always fingerprints to JA4's three parts with a ten-character first one.
//! Run: cargo +nightly fuzz run client_hello
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_intel::ja4::{ClientHello, Read};

fuzz_target!(|data: &[u8]| {
    match ClientHello::read(data) {
        Read::Hello(h) => {
            let j = h.ja4();
            let parts: Vec<&str> = j.fingerprint.split('_').collect();
            assert_eq!(parts.len(), 3, "{}", j.fingerprint);
            assert_eq!(parts[0].len(), 10, "{}", j.fingerprint);
            assert!(parts[1].len() == 12 && parts[2].len() == 12, "{}", j.fingerprint);
        }
        Read::Incomplete(n) => assert!(n > data.len(), "wants {n} of {}", data.len()),
        Read::Invalid(_) => {}
    }
});
