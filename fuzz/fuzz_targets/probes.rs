//! The injection-probe scan over arbitrary bytes in every place it looks (all of them are the
//! client's): path, query, a listed header, any header, a cookie, a JSON body and a form body.
//! It never panics, finds at most one hit per class, and what it reports is bounded: a
//! location of at most 48 bytes and a fingerprint of at most 16 printable bytes.
//! Run: cargo +nightly fuzz run probes
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_intel::probes::{Class, Hits, Scanner};

fuzz_target!(|data: &[u8]| {
    let scanner = Scanner::default();
    let mut hits = Hits::default();
    let text = String::from_utf8_lossy(data);
    scanner.scan_path(&text, &mut hits);
    scanner.scan_query(&text, &mut hits);
    scanner.scan_header("user-agent", data, &mut hits);
    scanner.scan_header("x-anything", data, &mut hits);
    scanner.scan_header("cookie", data, &mut hits);
    scanner.scan_json(data, &mut hits);
    scanner.scan_form(data, &mut hits);
    assert!(hits.hits.len() <= Class::ALL.len());
    for h in &hits.hits {
        assert!(h.location.len() <= 48, "{}", h.location);
        let fp = h.fingerprint.as_str();
        assert!(fp.len() <= 16 && fp.bytes().all(|b| b.is_ascii_graphic()), "{fp}");
    }
});
