//! Behaviour over time, per identity and across identities.
//!
//! For each tracked identity dimension (ip, ip prefix, api key, account, session, JA4H
//! fingerprint, ASN) the engine keeps a small fixed-size record of features in a bounded table
//! (S3-FIFO eviction, a hard cap per dimension). Counts are kept per epoch (the long window) and
//! read as a sliding estimate: this epoch's count plus the previous epoch's, weighted by how much
//! of it still overlaps. Distinct counts (user agents, addresses, keys, usernames ...) use 64-bit
//! linear-counting sketches, so a record never grows with what it sees.
//!
//! Detectors read the features and emit named, weighted signals. A signal an identity earned is
//! remembered on its record and decays with a half-life, so a client that stops misbehaving
//! earns its score back. Group detectors (many keys behind one prefix or fingerprint, keys whose
//! behaviour is near-identical) apply to every member of the group, because every member's
//! request looks the group up.
//!
//! Per-route baselines of request rate and error ratio switch a route (or the whole gateway)
//! into a stricter scoring profile when traffic deviates for a sustained time, and back when it
//! calms down.

mod assess;
mod baselines;
mod features;
mod report;
mod sharing;
pub mod spec;
mod tables;

pub use crate::model::trace::Trace;
pub use baselines::AttackEvent;
pub use features::{DISTINCTS, sketch_estimate};
pub use report::FeatureReport;
pub use sharing::{SHARED_TARGETS, SharedSketches};
pub use spec::*;

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::identity::mask;

use assess::*;
use baselines::*;
use features::*;
use tables::*;

/// A signal the behaviour detectors emitted for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emitted {
    /// Index: a [`Sig`] index, or `SIGS + i` for flow `i`.
    pub index: usize,
    /// Weight now (remembered signals decay).
    pub weight: u8,
}

/// The behaviour state of an engine.
pub struct Behaviour {
    policy: BehaviourPolicy,
    tables: [Option<Table<Features>>; DIMS],
    targets: Option<Table<Target>>,
    similar: Table<Group>,
    cohorts: Table<Group>,
    baselines: Vec<Mutex<Baseline>>,
    events: Mutex<Vec<AttackEvent>>,
    hasher: SipKeys,
    /// Records whose sketches changed since they were last shared (cluster mode): table
    /// ([`Dim`] index, or [`SHARED_TARGETS`]) and key.
    share_queue: Mutex<Vec<(u8, u64)>>,
    /// Whether any route is in attack mode (fast path).
    any_attack: AtomicU64,
    /// Failed logins in total, for the global view.
    failed_logins: AtomicU64,
    /// The routes flows wait for (`after`), one slot each, in slot order.
    flow_slots: Vec<crate::RouteId>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("tracked", &self.len())
            .finish()
    }
}

impl Behaviour {
    /// Fresh state for a policy.
    pub fn new(policy: BehaviourPolicy, routes: usize) -> Self {
        let tables = Dim::ALL.map(|d| {
            policy
                .track
                .contains(&d)
                .then(|| Table::new(policy.max_entries))
        });
        let targets = policy
            .stuffing
            .as_ref()
            .map(|s| Table::new(s.max_usernames));
        let groups = (policy.max_entries / 4).max(1024);
        let mut flow_slots: Vec<crate::RouteId> = Vec::new();
        for f in &policy.flows {
            if !flow_slots.contains(&f.after) && flow_slots.len() < FLOW_SLOTS {
                flow_slots.push(f.after);
            }
        }
        Self {
            flow_slots,
            tables,
            targets,
            similar: Table::new(groups),
            cohorts: Table::new(groups),
            baselines: (0..=routes)
                .map(|_| Mutex::new(Baseline::default()))
                .collect(),
            events: Mutex::new(Vec::new()),
            hasher: if policy.shared {
                SipKeys::CLUSTER
            } else {
                SipKeys::random()
            },
            share_queue: Mutex::new(Vec::new()),
            any_attack: AtomicU64::new(0),
            failed_logins: AtomicU64::new(0),
            policy,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &BehaviourPolicy {
        &self.policy
    }

    /// Routes with a baseline (the policy's routes plus the default route).
    pub fn routes(&self) -> usize {
        self.baselines.len().saturating_sub(1)
    }

    /// Identities tracked now, over all dimensions.
    pub fn len(&self) -> usize {
        self.tables.iter().flatten().map(|t| t.len()).sum::<usize>()
            + self.targets.as_ref().map_or(0, |t| t.len())
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most identities tracked at once, over all tables.
    pub fn capacity(&self) -> u64 {
        (self
            .tables
            .iter()
            .flatten()
            .map(|t| t.capacity())
            .sum::<usize>()
            + self.targets.as_ref().map_or(0, |t| t.capacity())
            + self.similar.capacity()
            + self.cohorts.capacity()) as u64
    }

    /// Records evicted so far.
    pub fn evictions(&self) -> u64 {
        self.tables
            .iter()
            .flatten()
            .map(|t| t.evictions())
            .sum::<u64>()
            + self.targets.as_ref().map_or(0, |t| t.evictions())
    }

    /// Approximate bytes the tables hold.
    pub fn approx_bytes(&self) -> usize {
        self.tables
            .iter()
            .flatten()
            .map(|t| t.approx_bytes())
            .sum::<usize>()
            + self.targets.as_ref().map_or(0, |t| t.approx_bytes())
            + self.similar.approx_bytes()
            + self.cohorts.approx_bytes()
    }

    /// Failed logins seen in total.
    pub fn failed_logins(&self) -> u64 {
        self.failed_logins.load(Ordering::Relaxed)
    }

    /// Hashes an identity's value the way the tables key it.
    pub fn key_of(&self, dim: Dim, value: &[u8]) -> u64 {
        hash_one(&self.hasher, 100 + dim as u8, value)
    }

    /// Hashes an address (`ip`) or a network's first address (`ip/24`) the way the tables
    /// key it.
    pub fn ip_key(&self, dim: Dim, ip: IpAddr) -> u64 {
        let ip = ip.to_canonical();
        let ip = if dim == Dim::Prefix {
            mask(ip, 24, 48)
        } else {
            ip
        };
        hash_one(&self.hasher, 100 + dim as u8, ip)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use crate::clock::{Nanos, SECOND};
    use crate::model::facts::RequestFacts;
    use crate::model::principal::{Auth, KeyBudget, Principal, PrincipalKind};
    use crate::request::route::RouteId;
    use http::{HeaderMap, HeaderValue, Method};
    use std::hash::RandomState;
    use std::sync::Arc;

    const LOGIN: RouteId = 0;
    const ITEMS: RouteId = 1;
    const SEARCH: RouteId = 2;

    /// The tests' policy. Hashing is the cluster's fixed one, so that sketch collisions
    /// (and so estimates near a threshold) are the same on every run.
    fn policy() -> BehaviourPolicy {
        BehaviourPolicy {
            shared: true,
            stuffing: Some(StuffingSpec {
                route: LOGIN,
                failure_status: vec![401],
                username_field: "username".into(),
                min_failures: 10,
                min_usernames: 5,
                failure_share: 0.8,
                sources_per_username: 5,
                max_usernames: 1000,
                max_body: 16 * 1024,
            }),
            cache_keys: vec![CacheKeySpec {
                route: SEARCH,
                params: vec!["q".into()],
            }],
            flows: vec![FlowSpec {
                name: Arc::from("login-first"),
                route: ITEMS,
                after: LOGIN,
                within: 600 * SECOND,
                min_gap: SECOND,
                anonymous_only: true,
                weight: 25,
            }],
            ..BehaviourPolicy::default()
        }
    }

    fn key(id: &str, created_ms: Option<u64>) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            key_id: Some(Arc::from(id)),
            account: None,
            scopes: vec![],
            claims: vec![],
            rate: None,
            budget: KeyBudget::default(),
            budget_items: None,
            created_ms,
        }
    }

    struct Req<'a> {
        ip: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        ua: &'a str,
        principal: Option<&'a Principal>,
        username: Option<&'a [u8]>,
        ja4h: &'a str,
    }

    impl Default for Req<'_> {
        fn default() -> Self {
            Req {
                ip: "198.51.100.1",
                path: "/api/items/1",
                query: None,
                ua: "Mozilla/5.0",
                principal: None,
                username: None,
                ja4h: "ge11nn05enus_aaaaaaaaaaaa_000000000000_000000000000",
            }
        }
    }

    /// Sends one request at `now` and returns the signals it got.
    fn send(b: &Behaviour, r: &Req<'_>, route: RouteId, now: Nanos, status: u16) -> Vec<String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_str(r.ua).unwrap(),
        );
        let facts = RequestFacts {
            method: &Method::GET,
            path: r.path,
            query: r.query,
            headers: &headers,
            client_ip: r.ip.parse().unwrap(),
            peer_ip: r.ip.parse().unwrap(),
            now,
            unix_ms: 1_800_000_000_000 + now / 1_000_000,
            auth: r.principal.map_or(Auth::Anonymous, Auth::Principal),
            version: http::Version::HTTP_11,
            ja4h: Some(r.ja4h),
            tls: None,
            h2fp: None,
            ja3: None,
            clearance: None,
            signed_agent: None,
            // The test's fingerprint stands for the header fingerprint too (tracked by default).
            hfp: Some(r.ja4h),
            ip_info: None,
            bot_verification: None,
            username: r.username,
            probes: &[],
            contract: None,
        };
        let mut out = Vec::new();
        let created = r.principal.and_then(|p| p.created_ms);
        let trace = b.assess(&facts, route, r.username, created, &mut out);
        b.observe(&trace, status, true, SECOND, now);
        out.iter()
            .map(|e| match Sig::ALL.get(e.index) {
                Some(s) => s.name().to_owned(),
                None => format!("flow/{}", e.index - SIGS),
            })
            .collect()
    }

    fn has(signals: &[String], name: &str) -> bool {
        signals.iter().any(|s| s == name)
    }

    #[test]
    fn sketches_count_distinct_values_roughly() {
        let h = RandomState::new();
        for n in [1u32, 5, 10, 20, 40] {
            let mut bits = 0u64;
            for i in 0..n {
                sketch_add(&mut bits, hash_one(&h, 0, i));
            }
            let e = sketch_estimate(bits);
            assert!(
                e.abs_diff(n) <= (n / 3).max(2),
                "{n} distinct estimated as {e}"
            );
        }
        assert_eq!(sketch_estimate(0), 0);
    }

    #[test]
    fn a_sequential_id_walk_is_enumeration_and_a_reader_is_not() {
        let b = Behaviour::new(policy(), 3);
        let mut last = Vec::new();
        for i in 1..=25u64 {
            let path = format!("/api/items/{i}");
            let r = Req {
                ip: "198.51.100.7",
                path: &path,
                ..Req::default()
            };
            last = send(&b, &r, ITEMS, i * SECOND, 200);
            if i < 20 {
                assert!(!has(&last, "behaviour/enumeration"), "fired at {i}");
            }
        }
        assert!(has(&last, "behaviour/enumeration"), "{last:?}");

        // A human reading a handful of scattered items.
        for (n, id) in [17u64, 4, 912, 55, 3, 600, 71].iter().enumerate() {
            let path = format!("/api/items/{id}");
            let r = Req {
                ip: "203.0.113.8",
                path: &path,
                ..Req::default()
            };
            let s = send(&b, &r, ITEMS, (n as u64 + 1) * 7 * SECOND, 200);
            assert!(!has(&s, "behaviour/enumeration"));
        }
    }

    #[test]
    fn a_shuffled_dense_walk_is_enumeration_too() {
        let b = Behaviour::new(policy(), 3);
        let mut ids: Vec<u64> = (100..160).collect();
        // A fixed shuffle: steps are large, the ids dense.
        ids.sort_by_key(|i| (i * 37) % 61);
        let mut last = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let path = format!("/api/items/{id}");
            let r = Req {
                ip: "198.51.100.9",
                path: &path,
                ..Req::default()
            };
            last = send(&b, &r, ITEMS, n as u64 * SECOND, 200);
        }
        assert!(has(&last, "behaviour/enumeration"), "{last:?}");
    }

    #[test]
    fn errors_and_ignoring_retry_after_are_seen() {
        let b = Behaviour::new(policy(), 3);
        let r = Req {
            ip: "198.51.100.10",
            path: "/api/items/abc",
            ..Req::default()
        };
        let mut s = Vec::new();
        for i in 0..25 {
            s = send(&b, &r, ITEMS, i * SECOND, 404);
        }
        assert!(has(&s, "behaviour/errors"), "{s:?}");

        // A 429 with Retry-After 1 s, then three requests within that second.
        let r = Req {
            ip: "198.51.100.11",
            ..Req::default()
        };
        let t0 = 100 * SECOND;
        send(&b, &r, ITEMS, t0, 429);
        let mut s = Vec::new();
        for i in 1..=3 {
            s = send(&b, &r, ITEMS, t0 + i * 100_000_000, 429);
        }
        assert!(has(&s, "behaviour/ignores_retry_after"), "{s:?}");
        // A client that waits out its Retry-After is not flagged.
        let r = Req {
            ip: "198.51.100.12",
            ..Req::default()
        };
        for i in 0..5 {
            let s = send(&b, &r, ITEMS, t0 + i * 2 * SECOND, 429);
            assert!(!has(&s, "behaviour/ignores_retry_after"));
        }
    }

    #[test]
    fn remembered_signals_decay_with_the_half_life() {
        let b = Behaviour::new(policy(), 3);
        let r = Req {
            ip: "198.51.100.13",
            ..Req::default()
        };
        let t0 = SECOND;
        send(&b, &r, ITEMS, t0, 429);
        for i in 1..=3 {
            send(&b, &r, ITEMS, t0 + i * 10_000_000, 429);
        }
        let key = b.ip_key(Dim::Ip, "198.51.100.13".parse().unwrap());
        let names = |i: usize| Sig::ALL[i].name().to_owned();
        let w = |at: Nanos| {
            b.report(Dim::Ip, key, at, &names)
                .unwrap()
                .remembered
                .iter()
                .find(|(n, _)| n == "behaviour/ignores_retry_after")
                .map_or(0, |x| x.1)
        };
        assert_eq!(w(2 * SECOND), 50);
        let half = w(2 * SECOND + b.policy.half_life);
        assert!((24..=26).contains(&half), "{half}");
        assert_eq!(w(2 * SECOND + 10 * b.policy.half_life), 0);
    }

    #[test]
    fn shared_sketches_merge_what_each_gateway_saw() {
        let a = Behaviour::new(policy(), 3);
        let b = Behaviour::new(policy(), 3);
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_k{i:011}"), None))
            .collect();
        // One address, six keys at each gateway: under the threshold (10) at each.
        for (i, k) in keys.iter().enumerate() {
            let r = Req {
                principal: Some(k),
                ..Req::default()
            };
            let g = if i % 2 == 0 { &a } else { &b };
            let s = send(g, &r, ITEMS, i as u64 * SECOND, 200);
            assert!(!has(&s, "collective/keys_per_ip"), "{s:?}");
        }
        let from_a = a.take_shared();
        let from_b = b.take_shared();
        // Every touched record is queued once, and only once.
        assert!(!from_a.is_empty());
        assert!(a.take_shared().is_empty());
        // Records are keyed alike on both gateways, so each takes the other's sketches.
        let ip_key = a.ip_key(Dim::Ip, "198.51.100.1".parse().unwrap());
        assert_eq!(ip_key, b.ip_key(Dim::Ip, "198.51.100.1".parse().unwrap()));
        assert!(from_b.iter().any(|r| r.key == ip_key));
        a.merge_shared(&from_b);
        b.merge_shared(&from_a);
        for g in [&a, &b] {
            let r = Req {
                principal: keys.first(),
                ..Req::default()
            };
            let s = send(g, &r, ITEMS, 20 * SECOND, 200);
            assert!(has(&s, "collective/keys_per_ip"), "{s:?}");
        }
        // Without cluster mode, records are keyed per process.
        let local = BehaviourPolicy {
            shared: false,
            ..policy()
        };
        let c = Behaviour::new(local.clone(), 3);
        let d = Behaviour::new(local, 3);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert_ne!(c.ip_key(Dim::Ip, ip), d.ip_key(Dim::Ip, ip));
    }

    #[test]
    fn the_clusters_previous_window_counts_here_but_is_never_sent_back() {
        let a = Behaviour::new(policy(), 3);
        let b = Behaviour::new(policy(), 3);
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_p{i:011}"), None))
            .collect();
        // Gateway b saw eight keys from the address in the store's previous window; a sees four
        // now. Merged as the previous window, b's keys count at a (12 > 10) ...
        for (i, k) in keys.iter().enumerate() {
            let r = Req {
                principal: Some(k),
                ..Req::default()
            };
            let g = if i < 8 { &b } else { &a };
            let s = send(g, &r, ITEMS, i as u64 * SECOND, 200);
            assert!(!has(&s, "collective/keys_per_ip"), "{s:?}");
        }
        let ip_key = a.ip_key(Dim::Ip, "198.51.100.1".parse().unwrap());
        let from_b: Vec<SharedSketches> = b
            .take_shared()
            .into_iter()
            .map(|r| SharedSketches {
                sketches: [0; DISTINCTS],
                previous: r.sketches,
                ..r
            })
            .collect();
        assert!(from_b.iter().any(|r| r.key == ip_key));
        a.take_shared();
        a.merge_shared(&from_b);
        let r = Req {
            principal: keys.last(),
            ..Req::default()
        };
        let s = send(&a, &r, ITEMS, 20 * SECOND, 200);
        assert!(has(&s, "collective/keys_per_ip"), "{s:?}");
        // ... but what a sends to the store is only its own current window: the previous one is
        // never carried forward into a later epoch.
        let sent = a.take_shared();
        let row = sent.iter().find(|r| r.key == ip_key).unwrap();
        let keys_bits = row.sketches[Distinct::Keys as usize];
        assert!(
            sketch_estimate(keys_bits) <= 4,
            "{}",
            sketch_estimate(keys_bits)
        );
        assert_eq!(row.previous, [0; DISTINCTS]);
    }

    #[test]
    fn a_key_used_from_many_addresses_agents_and_keys_per_prefix() {
        let b = Behaviour::new(policy(), 3);
        let k = key("pal_aaaaaaaaaaaa", None);
        let mut s = Vec::new();
        for i in 0..25 {
            let ip = format!("203.0.{i}.9");
            let ua = format!("agent/{}", i % 6);
            let r = Req {
                ip: &ip,
                ua: &ua,
                principal: Some(&k),
                ..Req::default()
            };
            s = send(&b, &r, ITEMS, i * SECOND, 200);
        }
        assert!(has(&s, "behaviour/many_ips"), "{s:?}");
        assert!(has(&s, "behaviour/many_user_agents"), "{s:?}");

        // Twelve keys from one /24: every one of them carries the group's signal.
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_k{i:011}"), None))
            .collect();
        let mut s = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let ip = format!("192.0.2.{}", i + 1);
            let r = Req {
                ip: &ip,
                principal: Some(k),
                ..Req::default()
            };
            s = send(&b, &r, ITEMS, 30 * SECOND + i as u64 * SECOND, 200);
        }
        assert!(has(&s, "collective/keys_per_prefix"), "{s:?}");
        assert!(!has(&s, "collective/keys_per_ip"), "{s:?}");
        let r = Req {
            ip: "192.0.2.200",
            principal: keys.first(),
            ..Req::default()
        };
        let s = send(&b, &r, ITEMS, 60 * SECOND, 200);
        assert!(has(&s, "collective/keys_per_prefix"), "{s:?}");
    }

    #[test]
    fn stuffing_from_many_addresses_is_caught_by_fingerprint_and_target() {
        let b = Behaviour::new(policy(), 3);
        let mut s = Vec::new();
        for i in 0..12u64 {
            let ip = format!("10.{i}.0.1");
            let user = format!("user{i}@example.com");
            let r = Req {
                ip: &ip,
                path: "/api/login",
                username: Some(user.as_bytes()),
                ja4h: "po11nn03enus_bbbbbbbbbbbb_000000000000_000000000000",
                ..Req::default()
            };
            s = send(&b, &r, LOGIN, i * SECOND, 401);
        }
        assert!(has(&s, "stuffing/source"), "{s:?}");

        // One username from many addresses.
        let mut s = Vec::new();
        for i in 0..7u64 {
            let ip = format!("10.99.{i}.1");
            let ja4h = format!("po11nn03enus_{i:012}_000000000000_000000000000");
            let r = Req {
                ip: &ip,
                path: "/api/login",
                username: Some(b"ceo@example.com"),
                ja4h: &ja4h,
                ..Req::default()
            };
            s = send(&b, &r, LOGIN, 100 * SECOND + i * SECOND, 401);
        }
        assert!(has(&s, "stuffing/target"), "{s:?}");
        assert!(!has(&s, "stuffing/source"), "{s:?}");

        // A person mistyping their password twice, then getting in.
        for (i, status) in [401u16, 401, 200].iter().enumerate() {
            let r = Req {
                ip: "198.51.100.50",
                path: "/api/login",
                username: Some(b"me@example.com"),
                ja4h: "po11cn05enus_cccccccccccc_000000000000_000000000000",
                ..Req::default()
            };
            let s = send(&b, &r, LOGIN, 200 * SECOND + i as u64 * 5 * SECOND, *status);
            assert!(s.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn cache_busting_counts_only_non_resource_parameters() {
        let b = Behaviour::new(policy(), 3);
        // Different searches are different resources.
        for i in 0..30u64 {
            let q = format!("q=term{i}");
            let r = Req {
                ip: "198.51.100.60",
                path: "/api/search",
                query: Some(&q),
                ..Req::default()
            };
            let s = send(&b, &r, SEARCH, i * 3 * SECOND, 200);
            assert!(!has(&s, "behaviour/cache_busting"), "{s:?}");
        }
        let mut s = Vec::new();
        for i in 0..30u64 {
            let q = format!("q=same&_={i}");
            let r = Req {
                ip: "198.51.100.61",
                path: "/api/search",
                query: Some(&q),
                ..Req::default()
            };
            s = send(&b, &r, SEARCH, i * SECOND, 200);
        }
        assert!(has(&s, "behaviour/cache_busting"), "{s:?}");
    }

    #[test]
    fn flows_need_the_earlier_step_in_time() {
        let b = Behaviour::new(policy(), 3);
        let r = Req {
            ip: "198.51.100.70",
            ..Req::default()
        };
        // Straight to the data: a violation.
        let s = send(&b, &r, ITEMS, SECOND, 200);
        assert!(has(&s, "flow/0"), "{s:?}");
        // A failed login does not count.
        let login = Req {
            ip: "198.51.100.70",
            path: "/api/login",
            ..Req::default()
        };
        send(&b, &login, LOGIN, 2 * SECOND, 401);
        assert!(has(&send(&b, &r, ITEMS, 5 * SECOND, 200), "flow/0"));
        // A successful one does, once the minimum gap has passed, until `within` runs out.
        send(&b, &login, LOGIN, 10 * SECOND, 200);
        assert!(has(
            &send(&b, &r, ITEMS, 10 * SECOND + 100_000_000, 200),
            "flow/0"
        ));
        assert!(!has(&send(&b, &r, ITEMS, 14 * SECOND, 200), "flow/0"));
        assert!(has(&send(&b, &r, ITEMS, 700 * SECOND, 200), "flow/0"));
        // Keyed callers are exempt from this flow.
        let k = key("pal_flowflowflow", None);
        let keyed = Req {
            ip: "198.51.100.71",
            principal: Some(&k),
            ..Req::default()
        };
        assert!(!has(&send(&b, &keyed, ITEMS, SECOND, 200), "flow/0"));
    }

    #[test]
    fn regular_traffic_and_similar_keys_and_cohorts() {
        let b = Behaviour::new(policy(), 3);
        // One client every 500 ms on the dot.
        let r = Req {
            ip: "198.51.100.80",
            ..Req::default()
        };
        let mut s = Vec::new();
        for i in 0..30 {
            s = send(&b, &r, SEARCH, i * SECOND / 2, 200);
        }
        assert!(has(&s, "behaviour/regular"), "{s:?}");
        // A person: bursty think times.
        let gaps = [
            1u64, 7, 2, 30, 1, 1, 12, 4, 60, 2, 9, 1, 25, 3, 2, 40, 1, 6, 2, 15, 1, 8,
        ];
        let mut t = 0;
        for g in gaps {
            t += g * SECOND;
            let r = Req {
                ip: "198.51.100.81",
                ..Req::default()
            };
            assert!(!has(&send(&b, &r, SEARCH, t, 200), "behaviour/regular"));
        }

        // Twelve keys, created in the same hour, behaving the same from different networks.
        let created = 1_800_000_000_000u64;
        let keys: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_s{i:011}"), Some(created)))
            .collect();
        let mut last = Vec::new();
        for round in 0..25u64 {
            for (i, k) in keys.iter().enumerate() {
                let ip = format!("100.{i}.{round}.1");
                let r = Req {
                    ip: &ip,
                    principal: Some(k),
                    ..Req::default()
                };
                last = send(
                    &b,
                    &r,
                    ITEMS,
                    10 * SECOND + round * 2 * SECOND + i as u64,
                    200,
                );
            }
        }
        assert!(has(&last, "collective/similar_keys"), "{last:?}");
        // Created together but used from their own networks: onboarding, not a cohort.
        assert!(!has(&last, "collective/key_cohort"), "{last:?}");

        // Twelve keys created together and used from one network: a cohort.
        let created = created + 7_200_000;
        let swarm: Vec<Principal> = (0..12)
            .map(|i| key(&format!("pal_c{i:011}"), Some(created)))
            .collect();
        let mut last = Vec::new();
        for (i, k) in swarm.iter().enumerate() {
            let ip = format!("203.0.113.{}", i + 1);
            let r = Req {
                ip: &ip,
                principal: Some(k),
                ..Req::default()
            };
            last = send(&b, &r, ITEMS, 80 * SECOND + i as u64, 200);
        }
        assert!(has(&last, "collective/key_cohort"), "{last:?}");
    }

    #[test]
    fn a_sustained_surge_switches_attack_mode_on_and_calm_switches_it_off() {
        let b = Behaviour::new(policy(), 3);
        let r = Req::default();
        let bucket = 10 * SECOND;
        let mut t = 0;
        // Ten buckets of 20 requests: the baseline.
        for _ in 0..10 {
            for i in 0..20 {
                send(&b, &r, ITEMS, t + i * (bucket / 20), 200);
            }
            t += bucket;
        }
        assert!(!b.under_attack(ITEMS));
        // Four buckets of 200.
        for _ in 0..4 {
            for i in 0..200 {
                send(&b, &r, ITEMS, t + i * (bucket / 200), 200);
            }
            t += bucket;
        }
        send(&b, &r, ITEMS, t, 200);
        assert!(b.under_attack(ITEMS));
        assert!(!b.under_attack(SEARCH));
        let ev = b.take_events();
        assert_eq!(ev.len(), 1);
        assert!(ev[0].on && ev[0].route == ITEMS);
        // Back to normal for a minute and more.
        for _ in 0..8 {
            for i in 0..20 {
                send(&b, &r, ITEMS, t + i * (bucket / 20), 200);
            }
            t += bucket;
        }
        send(&b, &r, ITEMS, t, 200);
        assert!(!b.under_attack(ITEMS));
        assert!(!b.take_events()[0].on);
    }

    #[test]
    fn throttling_escalates_after_each_served_step_and_relaxes() {
        let b = Behaviour::new(policy(), 3);
        let r = Req::default();
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::USER_AGENT, HeaderValue::from_static("x"));
        let facts = RequestFacts {
            method: &Method::GET,
            path: r.path,
            query: None,
            headers: &headers,
            client_ip: r.ip.parse().unwrap(),
            peer_ip: r.ip.parse().unwrap(),
            now: SECOND,
            unix_ms: 0,
            auth: Auth::Anonymous,
            version: http::Version::HTTP_11,
            ja4h: None,
            tls: None,
            h2fp: None,
            ja3: None,
            clearance: None,
            signed_agent: None,
            hfp: None,
            ip_info: None,
            bot_verification: None,
            username: None,
            probes: &[],
            contract: None,
        };
        let trace = b.assess(&facts, ITEMS, None, None, &mut out);
        assert_eq!(trace.throttle_identity(), Some(Dim::Ip));
        let steps = [SECOND, 5 * SECOND, 30 * SECOND];
        let relax = 120 * SECOND;
        let at = |s: u64| s * SECOND;
        assert_eq!(b.throttle(&trace, at(1), true, &steps, relax), 1);
        // Offending again within the step does not escalate.
        assert_eq!(
            b.throttle(&trace, at(1) + 500_000_000, true, &steps, relax),
            1
        );
        assert_eq!(b.throttle(&trace, at(2), true, &steps, relax), 2);
        assert_eq!(b.throttle(&trace, at(7), true, &steps, relax), 3);
        assert_eq!(b.throttle(&trace, at(37), true, &steps, relax), 4);
        // Two relax periods of good behaviour take two steps off.
        assert_eq!(b.throttle(&trace, at(37 + 240), false, &steps, relax), 2);
    }

    #[test]
    fn tables_stay_within_their_cap_under_a_spray() {
        let p = BehaviourPolicy {
            max_entries: 1000,
            ..policy()
        };
        let b = Behaviour::new(p, 3);
        for i in 0..20_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            let r = Req {
                ip: &ip,
                ..Req::default()
            };
            send(&b, &r, ITEMS, u64::from(i) * 1000, 200);
        }
        for t in b.tables.iter().flatten() {
            assert!(t.len() <= t.capacity());
        }
        assert!(b.evictions() > 0);
        assert!(b.len() <= b.capacity() as usize);
    }

    #[test]
    fn ids_come_from_the_last_segment_or_named_parameters() {
        let p = ["id".to_owned()];
        assert_eq!(request_id("/api/items/42", None, &p), Some(42));
        assert_eq!(request_id("/api/items/x42", None, &p), None);
        assert_eq!(request_id("/api/items", Some("a=1&id=7"), &p), Some(7));
        assert_eq!(request_id("/api/items", Some("page=7"), &p), None);
        assert_eq!(request_id("/a/99999999999999999999", None, &p), None);
        assert_eq!(
            request_id("/a/999999999999999999", None, &p),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(request_id("/api/items/007", None, &p), Some(7));
        assert_eq!(request_id("42", None, &p), Some(42));
        assert_eq!(request_id("/api/items/", Some("id=5"), &p), Some(5));
        assert_eq!(request_id("/api/items/4-2", None, &p), None);
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; sid=xyz"),
        );
        assert_eq!(cookie(&h, "sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "s"), None);
    }
}
