//! Property tests over attacker-controlled input (the fuzz targets in `fuzz/` explore further):
//! client-IP derivation and path normalisation never panic and keep their invariants.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};
use palisade_engine::IpSet;
use palisade_engine::request::client_ip::client_ip;
use palisade_engine::request::route::{RouteMatch, normalize_for_match};
use palisade_engine::{PathPattern, RouteTable};
use proptest::prelude::*;

/// One X-Forwarded-For hop: a trusted address, an untrusted one, or garbage.
fn hop() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| format!("10.{a}.{b}.{c}")),
        (11u8..=223, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        "[a-z_]{1,8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn client_ip_never_panics_on_raw_bytes(xff in proptest::collection::vec(any::<u8>(), 0..300), fwd in "[ -~]{0,200}") {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&xff) {
            h.append("x-forwarded-for", v);
        }
        if let Ok(v) = HeaderValue::from_str(&fwd) {
            h.append("forwarded", v);
        }
        let trusted = IpSet::new(["10.0.0.0/8".parse().unwrap()]);
        let _ = client_ip("10.9.9.9".parse().unwrap(), &h, &trusted);
    }

    #[test]
    fn client_ip_matches_a_reference_walk(hops in proptest::collection::vec(hop(), 0..12)) {
        // Reference model: from the right, skip trusted hops; the first untrusted one is the
        // client; garbage stops the walk at the last address vouched for.
        let peer: IpAddr = "10.9.9.9".parse().unwrap();
        let mut want = peer;
        for h in hops.iter().rev() {
            match h.parse::<IpAddr>() {
                Ok(ip) if ip.to_string().starts_with("10.") => want = ip,
                Ok(ip) => { want = ip; break; }
                Err(_) => break,
            }
        }
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_str(&hops.join(", ")).unwrap());
        let trusted = IpSet::new(["10.0.0.0/8".parse().unwrap()]);
        prop_assert_eq!(client_ip(peer, &h, &trusted), want);
    }

    #[test]
    fn untrusted_peers_are_never_overridden(xff in "[0-9., a-f:]{0,100}") {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_str(&xff).unwrap());
        let trusted = IpSet::new(["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "203.0.113.5".parse().unwrap();
        prop_assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn normalisation_leaves_no_dot_or_empty_segments(path in "(/|[a-z]|%[0-9A-Fa-f]{2}|\\.|%|/\\.\\./|//|%2[eE]){0,40}") {
        // Percent-escapes are decoded exactly once, as an upstream decodes them; after that no
        // segment may be empty, "." or ".." (they would let a path dodge its route).
        let once = normalize_for_match(&path).into_owned();
        prop_assert!(once.starts_with('/'));
        let inner = once.strip_suffix('/').unwrap_or(&once);
        for seg in inner.split('/').skip(1) {
            prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "segment {:?} in {:?} from {:?}", seg, once, path);
        }
        if !path.contains('%') {
            prop_assert_eq!(normalize_for_match(&once).into_owned(), once.clone());
        }
        let table = RouteTable::new(vec![RouteMatch { path: PathPattern::parse("/a/{id}").unwrap(), methods: vec![] }]);
        let _ = table.route_for(&Method::GET, &path);
    }

}
