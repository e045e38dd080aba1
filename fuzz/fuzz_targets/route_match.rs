//! Path normalisation and route matching on arbitrary paths: never panics; the normalised path
//! is rooted and has no empty, "." or ".." segment (escapes are decoded exactly once, as an
//! upstream decodes them, so double-encoded input is not normalised twice).
//! Run: cargo +nightly fuzz run route_match
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use palisade_engine::route::{RouteMatch, normalize_for_match};
use palisade_engine::{PathPattern, RouteTable};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let once = normalize_for_match(path).into_owned();
    assert!(once.starts_with('/'));
    let inner = once.strip_suffix('/').unwrap_or(&once);
    for seg in inner.split('/').skip(1) {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{seg:?} in {once:?}");
    }
    let table = RouteTable::new(vec![
        RouteMatch { path: PathPattern::parse("/api/login").unwrap(), methods: vec![] },
        RouteMatch { path: PathPattern::parse("/api/items/{id}").unwrap(), methods: vec![] },
        RouteMatch { path: PathPattern::parse("/static/*").unwrap(), methods: vec![] },
    ]);
    let _ = table.route_for(&Method::GET, path);
    let _ = PathPattern::parse(path);
});
