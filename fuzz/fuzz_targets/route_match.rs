//! Path normalisation and route matching on arbitrary paths: never panics, and normalisation is
//! idempotent.
//! Run: cargo +nightly fuzz run route_match
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use palisade_engine::route::{RouteMatch, normalize_for_match};
use palisade_engine::{PathPattern, RouteTable};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let once = normalize_for_match(path).into_owned();
    assert_eq!(normalize_for_match(&once), once.as_str());
    let table = RouteTable::new(vec![
        RouteMatch { path: PathPattern::parse("/api/login").unwrap(), methods: vec![] },
        RouteMatch { path: PathPattern::parse("/api/items/{id}").unwrap(), methods: vec![] },
        RouteMatch { path: PathPattern::parse("/static/*").unwrap(), methods: vec![] },
    ]);
    let _ = table.route_for(&Method::GET, path);
    let _ = PathPattern::parse(path);
});
