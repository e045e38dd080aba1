//! Client intelligence on arbitrary bytes: bot classification of a user agent, JA4H and header
//! consistency over arbitrary headers. Never panics; JA4H always has its four parts.
//! Run: cargo +nightly fuzz run client_intel
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_intel::BotCatalog;
use palisade_intel::ja4h::{HttpVersion, ja4h};

fn catalog() -> &'static BotCatalog {
    static C: OnceLock<BotCatalog> = OnceLock::new();
    C.get_or_init(|| BotCatalog::builtin().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = catalog().classify(&text);
    // Lines are headers: "name: value".
    let headers: Vec<(&str, &[u8])> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n, v.as_bytes()))
        .collect();
    let method = text.split_whitespace().next().unwrap_or("");
    let j = ja4h(method, HttpVersion::Http11, headers.iter().copied());
    assert_eq!(j.fingerprint.split('_').count(), 4, "{}", j.fingerprint);
    let ua = headers.first().map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let _ = palisade_intel::headers::check(&ua, headers.iter().copied(), true);
});
