//! Never refusing the API's own customers, on the embedded default policy with `[headers]`:
//! a keyed integration walking the catalog in order at a steady pace is allowed while the same
//! walk from an anonymous client is scored; the gateway's own refusals are no evidence against
//! the client; a common client library seen from many networks is not a swarm, while burner
//! accounts on one network with one fingerprint are; keys created together are onboarding
//! unless they also share a network.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use palisade_config::{DEFAULT_CONFIG, compile_str};
use palisade_engine::clock::SECOND;
use palisade_engine::model::principal::{Auth, KeyBudget, Principal, PrincipalKind};
use palisade_engine::{Action, Decision, Engine, Origin, RequestFacts};

fn engine() -> Engine {
    let src = format!("{DEFAULT_CONFIG}\n[headers]\n");
    let c = compile_str(&src, "default+headers", Path::new(".")).unwrap();
    Engine::new(c.policy, None)
}

fn key(id: &str, account: &str, created_ms: u64) -> Principal {
    Principal {
        kind: PrincipalKind::ApiKey,
        key_id: Some(Arc::from(id)),
        account: Some(Arc::from(account)),
        scopes: Vec::new(),
        claims: Vec::new(),
        rate: None,
        budget: KeyBudget::default(),
        budget_items: None,
        created_ms: Some(created_ms),
    }
}

const T0: u64 = 3_600 * SECOND;
const UNIX: u64 = 1_800_000_000_000;

/// A python-requests-like client.
fn library_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "user-agent",
        HeaderValue::from_static("python-requests/2.32.3"),
    );
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip, deflate"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

struct Client<'a> {
    ip: IpAddr,
    principal: Option<&'a Principal>,
    ja4h: &'a str,
    headers: HeaderMap,
}

impl Client<'_> {
    fn get(&self, e: &Engine, path: &str, at: u64) -> Decision {
        let facts = RequestFacts {
            method: &Method::GET,
            path,
            query: None,
            headers: &self.headers,
            client_ip: self.ip,
            peer_ip: self.ip,
            now: at,
            unix_ms: UNIX + (at - T0) / 1_000_000,
            auth: self.principal.map_or(Auth::Anonymous, Auth::Principal),
            version: http::Version::HTTP_11,
            ja4h: Some(self.ja4h),
            tls: None,
            h2fp: None,
            ja3: None,
            clearance: None,
            signed_agent: None,
            hfp: Some(self.ja4h),
            ip_info: None,
            bot_verification: None,
            username: None,
            probes: &[],
            contract: None,
        };
        e.evaluate(&facts).unwrap()
    }
}

fn refused(d: &Decision) -> bool {
    !d.action.forwards() || matches!(d.action, Action::Delay { wait } if wait > 2 * SECOND)
}

fn fired(d: &Decision, name: &str) -> bool {
    d.signals.iter().any(|s| &*s.name == name)
}

#[test]
fn a_keyed_sequential_sync_is_allowed_and_the_same_walk_anonymous_is_not() {
    let e = engine();
    let k = key("synckey01", "acme", UNIX - 3_600_000);
    let keyed = Client {
        ip: "100.64.1.10".parse().unwrap(),
        principal: Some(&k),
        ja4h: "ge11nn040000_aaaaaaaaaaaa_000000000000_000000000000",
        headers: library_headers(),
    };
    let anon = Client {
        ip: "100.64.2.10".parse().unwrap(),
        principal: None,
        ..Client {
            headers: library_headers(),
            ..keyed
        }
    };
    let mut keyed_refused = 0;
    let mut anon_refused = 0;
    let mut discounted_seen = false;
    for i in 1..=180u64 {
        let at = T0 + i * SECOND;
        let d = keyed.get(&e, &format!("/api/items/{i}"), at);
        e.observe_status(&d, 200, Origin::Upstream, at);
        if refused(&d) {
            keyed_refused += 1;
        }
        if d.signals
            .iter()
            .any(|s| s.discounted && &*s.name == "behaviour/enumeration")
        {
            discounted_seen = true;
            // Shown, not scored.
            assert!(d.score < 30, "{:?}", d.signals);
        }
        let d = anon.get(&e, &format!("/api/items/{i}"), at);
        e.observe_status(
            &d,
            if refused(&d) { 429 } else { 200 },
            Origin::Upstream,
            at,
        );
        if refused(&d) {
            anon_refused += 1;
        }
    }
    assert_eq!(keyed_refused, 0, "a keyed sync was refused");
    assert!(discounted_seen, "the walk is seen and shown for the key");
    assert!(
        anon_refused > 50,
        "the anonymous walk was refused {anon_refused} times of 180"
    );
}

#[test]
fn the_gateways_own_refusals_are_no_evidence_against_the_client() {
    let e = engine();
    let c = |ip: &str| Client {
        ip: ip.parse().unwrap(),
        principal: None,
        ja4h: "ge11nn040000_bbbbbbbbbbbb_000000000000_000000000000",
        headers: library_headers(),
    };
    let (mine, theirs) = (c("100.64.3.10"), c("100.64.4.10"));
    let mut last_mine = None;
    let mut last_theirs = None;
    for i in 0..40u64 {
        let at = T0 + i * SECOND + 137 * i * 1_000_000;
        let path = format!("/api/search?q={}", i % 3);
        // The same 403 for both: once the gateway's own answer, once the upstream's.
        let d = mine.get(&e, &path, at);
        e.observe_status(&d, 403, Origin::Gateway, at);
        last_mine = Some(d);
        let d = theirs.get(&e, &path, at);
        e.observe_status(&d, 403, Origin::Upstream, at);
        last_theirs = Some(d);
    }
    assert!(!fired(&last_mine.unwrap(), "behaviour/errors"));
    assert!(fired(&last_theirs.unwrap(), "behaviour/errors"));
}

#[test]
fn a_common_library_is_no_swarm_but_burner_accounts_on_one_network_are() {
    let e = engine();
    let lib = "ge11nn040000_cccccccccccc_000000000000_000000000000";
    // Twelve customers on python-requests, each its own account and network.
    let customers: Vec<Principal> = (0..12)
        .map(|i| {
            key(
                &format!("cust{i:06}"),
                &format!("customer-{i}"),
                UNIX - 3_600_000,
            )
        })
        .collect();
    let mut last = None;
    for round in 0..6u64 {
        for (i, k) in customers.iter().enumerate() {
            let c = Client {
                ip: format!("100.{}.{}.7", 70 + i, round).parse().unwrap(),
                principal: Some(k),
                ja4h: lib,
                headers: library_headers(),
            };
            let at = T0 + round * 10 * SECOND + i as u64 * 100_000_000;
            let d = c.get(&e, &format!("/api/items/{}", round * 12 + i as u64 + 1), at);
            e.observe_status(&d, 200, Origin::Upstream, at);
            last = Some(d);
        }
    }
    let d = last.unwrap();
    for s in [
        "collective/accounts_per_source",
        "collective/keys_per_fingerprint",
        "collective/key_cohort",
    ] {
        assert!(!fired(&d, s), "{s}: {:?}", d.signals);
    }
    assert!(!refused(&d));

    // Thirty burner accounts created together, one /24, one fingerprint.
    let swarm_fp = "ge11nn040000_dddddddddddd_000000000000_000000000000";
    let burners: Vec<Principal> = (0..30)
        .map(|i| {
            key(
                &format!("burn{i:06}"),
                &format!("burner-{i}"),
                UNIX - 600_000,
            )
        })
        .collect();
    let mut last = None;
    for (i, k) in burners.iter().enumerate() {
        let c = Client {
            ip: format!("198.18.7.{}", i + 1).parse().unwrap(),
            principal: Some(k),
            ja4h: swarm_fp,
            headers: library_headers(),
        };
        let at = T0 + 100 * SECOND + i as u64 * 200_000_000;
        let d = c.get(&e, "/api/items/1", at);
        e.observe_status(&d, 200, Origin::Upstream, at);
        last = Some(d);
    }
    let d = last.unwrap();
    assert!(
        fired(&d, "collective/accounts_per_source"),
        "{:?}",
        d.signals
    );
    assert!(
        fired(&d, "collective/keys_per_fingerprint"),
        "{:?}",
        d.signals
    );
    assert!(fired(&d, "collective/key_cohort"), "{:?}", d.signals);
    assert!(
        d.signals
            .iter()
            .filter(|s| s.name.starts_with("collective/"))
            .all(|s| !s.discounted)
    );
}

#[test]
fn a_customer_on_the_same_library_as_a_swarm_is_not_part_of_it() {
    let e = engine();
    let lib = "ge11nn050000_eeeeeeeeeeee_000000000000_000000000000";
    let burners: Vec<Principal> = (0..30)
        .map(|i| {
            key(
                &format!("burn{i:06}"),
                &format!("burner-{i}"),
                UNIX - 600_000,
            )
        })
        .collect();
    let customers: Vec<Principal> = (0..2)
        .map(|i| {
            key(
                &format!("cust{i:06}"),
                &format!("customer-{i}"),
                UNIX - 900_000,
            )
        })
        .collect();
    let mut swarm = None;
    let mut customer = Vec::new();
    for round in 0..4u64 {
        for (i, k) in burners.iter().enumerate() {
            let c = Client {
                ip: format!("198.18.7.{}", i + 1).parse().unwrap(),
                principal: Some(k),
                ja4h: lib,
                headers: library_headers(),
            };
            let at = T0 + round * 10 * SECOND + i as u64 * 200_000_000;
            let d = c.get(&e, "/api/items/1", at);
            e.observe_status(&d, 200, Origin::Upstream, at);
            swarm = Some(d);
        }
        // Two customers on the same library, each from its own network, between the swarm's
        // rounds, syncing in order.
        for (i, k) in customers.iter().enumerate() {
            let c = Client {
                ip: format!("100.{}.0.7", 90 + i).parse().unwrap(),
                principal: Some(k),
                ja4h: lib,
                headers: library_headers(),
            };
            let at = T0 + round * 10 * SECOND + 7 * SECOND + i as u64 * 300_000_000;
            let d = c.get(&e, &format!("/api/items/{}", round + 1), at);
            e.observe_status(&d, 200, Origin::Upstream, at);
            customer.push(d);
        }
    }
    let d = swarm.unwrap();
    assert!(
        fired(&d, "collective/keys_per_fingerprint"),
        "the swarm is still seen: {:?}",
        d.signals
    );
    for d in &customer {
        assert!(
            d.signals
                .iter()
                .filter(|s| s.name.starts_with("collective/"))
                .all(|s| s.name.as_ref() == "collective/key_cohort" && s.discounted),
            "{:?}",
            d.signals
        );
        assert!(!refused(d), "{d:?}");
        assert!(d.score < 30, "score {} {:?}", d.score, d.signals);
    }
}
