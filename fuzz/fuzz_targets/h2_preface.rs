//! The HTTP/2 preface reader (the Akamai fingerprint) on arbitrary bytes after the preface:
//! never panics, and a fingerprint it reads always has its four parts.
//! Run: cargo +nightly fuzz run h2_preface
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_intel::h2fp::{PREFACE, Preface, read};

fuzz_target!(|data: &[u8]| {
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(data);
    if let Preface::Done(fp) = read(&bytes) {
        assert_eq!(fp.akamai().split('|').count(), 4);
    }
    let _ = read(data);
});
