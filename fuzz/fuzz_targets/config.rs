//! The config compiler on arbitrary text: errors, never panics.
//! Run: cargo +nightly fuzz run config
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = palisade_config::compile_str(text, "fuzz", std::path::Path::new("/nonexistent"));
});
