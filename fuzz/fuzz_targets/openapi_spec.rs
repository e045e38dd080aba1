//! OpenAPI documents of arbitrary content (a spec file is the operator's, but it is often
//! fetched or generated): compiling one never panics and returns a spec or a list of errors.
//! Run: cargo +nightly fuzz run openapi_spec
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_config::openapi::{OpenApiMode, compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = compile(text, None, OpenApiMode::Enforce, 1 << 20) {
        assert!(!errors.is_empty());
    }
});
