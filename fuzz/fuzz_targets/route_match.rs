//! Path normalisation and route matching on arbitrary paths: never panics; the normalised path
//! is rooted and has no empty, "." or ".." segment (escapes are decoded exactly once, as an
//! upstream decodes them, so double-encoded input is not normalised twice).
//! The canonical path the gateway forwards ([`palisade_engine::request::path::canonicalize`]) is ASCII,
//! rooted, free of empty and dot segments, a fixed point (canonicalising it again changes
//! nothing, and flags no ambiguity the path did not have), and matches the same route as the
//! path it came from.
//! Run: cargo +nightly fuzz run route_match
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use palisade_engine::request::route::{RouteMatch, normalize_for_match};
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
    if let Ok(c) = palisade_engine::request::path::canonicalize(path) {
        assert!(c.path.is_ascii() && c.path.starts_with('/'), "{:?}", c.path);
        let inner = c.path.strip_suffix('/').unwrap_or(&c.path);
        for seg in inner.split('/').skip(1) {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{seg:?} in {:?}", c.path);
        }
        let again = palisade_engine::request::path::canonicalize(&c.path).expect("canonical is valid");
        assert_eq!(again.path, c.path, "not a fixed point for {path:?}");
        // Ambiguities describe the raw path: one in a segment that `..` then dropped stays
        // flagged on the raw path (an upstream that splits on `\` resolves it differently),
        // while the canonical path no longer carries it. Never the other way round.
        assert_eq!(
            again.ambiguities.union(c.ambiguities),
            c.ambiguities,
            "the canonical form of {path:?} is more ambiguous than the path"
        );
        assert_eq!(
            table.route_for(&Method::GET, &c.path),
            table.route_for(&Method::GET, path),
            "{path:?} -> {:?}",
            c.path
        );
    }
});
