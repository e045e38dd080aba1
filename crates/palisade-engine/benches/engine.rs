//! The engine alone: one request through route matching, identity, five matching limits and
//! the decision, with warm state (the client's cells exist). Budget: median <= 2 µs.
//!
//! Run: `cargo bench -p palisade-engine --bench engine` (or `bench/engine.sh`).

#![allow(clippy::panic, reason = "a benchmark's setup fails loudly")]

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue, Method};
use palisade_engine::request::route::RouteMatch;
use palisade_engine::{
    Algorithm, Engine, IpSet, KeyPart, LimitAction, LimitSpec, ListsPolicy, Mode, PathPattern,
    Policy, RequestFacts, RouteSpec, RouteTable, ScoringPolicy, Unit,
};

fn main() {
    divan::main();
}

fn limit(
    name: &str,
    key: Vec<KeyPart>,
    routes: Option<Vec<usize>>,
    algorithm: Algorithm,
) -> LimitSpec {
    LimitSpec {
        name: Arc::from(name),
        key,
        routes,
        methods: Vec::new(),
        algorithm,
        action: LimitAction::Limit,
        unit: Unit::Requests,
        quota: 1_000_000,
        window_secs: 1,
        headers: true,
        weight: 50,
        max_entries: 100_000,
    }
}

fn engine() -> Engine {
    engine_with(None, None, None, None)
}

fn bots() -> palisade_engine::policy::bots::BotsPolicy {
    use palisade_engine::policy::bots::{BotAction, BotsPolicy};
    let catalog = palisade_intel::BotCatalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    BotsPolicy {
        catalog: Arc::new(catalog),
        actions: [BotAction::Signal; palisade_intel::Category::ALL.len()],
        weight: 20,
        cache_entries: 10_000,
        verified: Vec::new(),
        on_pending: BotAction::Allow,
        on_spoofed: BotAction::Block,
        dns_servers: Vec::new(),
    }
}

fn engine_with(
    bots: Option<palisade_engine::policy::bots::BotsPolicy>,
    headers: Option<palisade_engine::policy::HeadersPolicy>,
    behaviour: Option<palisade_engine::behaviour::BehaviourPolicy>,
    rules: Option<palisade_engine::policy::rules::RulesPolicy>,
) -> Engine {
    let fast = Algorithm::Gcra {
        interval: 1,
        burst: 1_000_000_000,
    };
    let window = Algorithm::SlidingWindow {
        window: 1_000_000_000,
        limit: u64::MAX / 4,
    };
    let routes = vec![
        RouteMatch {
            path: PathPattern::parse("/api/login").unwrap_or_else(|_| PathPattern::catch_all()),
            methods: vec![Method::POST],
        },
        RouteMatch {
            path: PathPattern::parse("/api/items/{id}")
                .unwrap_or_else(|_| PathPattern::catch_all()),
            methods: Vec::new(),
        },
    ];
    let spec = |n: &str| RouteSpec::new(n, 0);
    let deny = IpSet::new(
        (0..1000u32)
            .map(|i| ipnet::IpNet::from(IpAddr::from((0xc000_0000u32 + (i << 8)).to_be_bytes()))),
    );
    let policy = Policy {
        mode: Mode::Enforce,
        routes: RouteTable::new(routes),
        route_specs: vec![spec("login"), spec("items"), spec("default")],
        limits: vec![
            limit("global", vec![], None, fast),
            limit("per-ip", vec![KeyPart::Ip], None, fast),
            limit(
                "per-subnet",
                vec![KeyPart::IpPrefix { v4: 24, v6: 48 }],
                None,
                window,
            ),
            limit(
                "items-per-ip",
                vec![KeyPart::Ip, KeyPart::Route],
                Some(vec![1]),
                fast,
            ),
            limit(
                "per-tenant",
                vec![KeyPart::Header(http::HeaderName::from_static("x-tenant"))],
                None,
                fast,
            ),
        ],
        lists: ListsPolicy {
            allow: IpSet::default(),
            deny,
            allow_if: Vec::new(),
        },
        scoring: ScoringPolicy::default(),
        quotas: Vec::new(),
        auth: Default::default(),
        bots,
        headers,
        fingerprints: None,
        web_bot_auth: None,
        honeypots: Vec::new(),
        max_blocks: 1000,
        intel: None,
        behaviour,
        rules,
        probes: None,
        contract_weight: 0,
    };
    Engine::new(policy, None)
}

/// One client's request through five matching limits, again and again (warm cells).
fn bench_warm(bencher: divan::Bencher, e: &Engine, user_agent: &'static str) {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("user-agent", HeaderValue::from_static(user_agent));
    let ip: IpAddr = "203.0.113.7"
        .parse()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let now = AtomicU64::new(3_600_000_000_000);
    let method = Method::GET;
    bencher.bench_local(|| {
        let facts = RequestFacts {
            method: &method,
            path: "/api/items/42",
            query: None,
            headers: &headers,
            client_ip: ip,
            peer_ip: ip,
            now: now.fetch_add(1000, Ordering::Relaxed),
            unix_ms: 1_700_000_000_000,
            version: http::Version::HTTP_11,
            ja4h: Some("ge11nn030000_4e2fa2b3a2a4_000000000000_000000000000"),
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
            auth: palisade_engine::model::principal::Auth::Anonymous,
        };
        let d = e.evaluate(&facts);
        assert!(matches!(d.as_ref().map(|d| d.limits.len()), Ok(5)));
        d
    });
}

#[divan::bench]
fn five_limits_warm(bencher: divan::Bencher) {
    bench_warm(bencher, &engine(), "bench/1.0");
}

/// The same request with the client intelligence on: the bot catalog (a browser's user agent,
/// classification cached) and header consistency.
#[divan::bench]
fn five_limits_warm_with_intel(bencher: divan::Bencher) {
    let e = engine_with(
        Some(bots()),
        Some(palisade_engine::policy::HeadersPolicy {
            weight: 15,
            assume_https: true,
        }),
        None,
        None,
    );
    bench_warm(
        bencher,
        &e,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    );
}

/// The same request with everything on: client intelligence and behaviour (features on
/// ip, prefix, session and fingerprint, flows, cache keys, stuffing, baselines).
#[divan::bench]
fn five_limits_warm_with_behaviour(bencher: divan::Bencher) {
    bench_warm(
        bencher,
        &behaviour_engine(),
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    );
}

fn behaviour_engine() -> Engine {
    behaviour_engine_with(false)
}

/// Everything, plus three CEL rules (one reads the header map).
#[divan::bench]
fn five_limits_warm_with_behaviour_and_rules(bencher: divan::Bencher) {
    bench_warm(
        bencher,
        &behaviour_engine_with(true),
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    );
}

fn behaviour_engine_with(rules: bool) -> Engine {
    use palisade_engine::behaviour::{BehaviourPolicy, CacheKeySpec, FlowSpec, StuffingSpec};
    let b = BehaviourPolicy {
        flows: vec![FlowSpec {
            name: "login-first".into(),
            route: 1,
            after: 0,
            within: 600 * palisade_engine::clock::SECOND,
            min_gap: palisade_engine::clock::SECOND,
            anonymous_only: true,
            weight: 10,
        }],
        cache_keys: vec![CacheKeySpec {
            route: 1,
            params: vec!["q".to_owned()],
        }],
        stuffing: Some(StuffingSpec {
            route: 0,
            failure_status: vec![401],
            username_field: "username".to_owned(),
            min_failures: 10,
            min_usernames: 5,
            failure_share: 0.8,
            sources_per_username: 5,
            max_usernames: 10_000,
            max_body: 16 * 1024,
        }),
        ..BehaviourPolicy::default()
    };
    engine_with(
        Some(bots()),
        Some(palisade_engine::policy::HeadersPolicy {
            weight: 15,
            assume_https: true,
        }),
        Some(b),
        rules.then(|| {
            use palisade_engine::policy::rules::{
                RuleAction, RuleSpec, RulesPolicy, compile, environment,
            };
            let env = environment();
            let rule = |name: &str, when: &str, action| RuleSpec {
                name: name.into(),
                source: when.to_owned(),
                program: std::sync::Arc::new(compile(&env, when).unwrap_or_else(|e| panic!("{e}"))),
                action,
                shadow: false,
            };
            RulesPolicy {
                rules: vec![
                    rule(
                        "hosting-login",
                        "asn.category == \"hosting\" && route == \"login\"",
                        RuleAction::Challenge,
                    ),
                    rule(
                        "no-accept-language",
                        "!(\"accept-language\" in headers) && bot.category == \"human\"",
                        RuleAction::Score(10),
                    ),
                    rule(
                        "risky",
                        "score >= 50 && \"behaviour/enumeration\" in signals",
                        RuleAction::Block,
                    ),
                ],
                env,
            }
        }),
    )
}

/// A million-address spray through the engine with behaviour on.
#[divan::bench]
fn spray_new_identities_with_behaviour(bencher: divan::Bencher) {
    spray(bencher, &behaviour_engine());
}

#[divan::bench]
fn spray_new_identities(bencher: divan::Bencher) {
    spray(bencher, &engine());
}

fn spray(bencher: divan::Bencher, e: &Engine) {
    let headers = HeaderMap::new();
    let counter = AtomicU64::new(0);
    let method = Method::GET;
    bencher.bench_local(|| {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::from((0x0b00_0000u32.wrapping_add(i as u32)).to_be_bytes());
        e.evaluate(&RequestFacts {
            method: &method,
            path: "/api/items/42",
            query: None,
            headers: &headers,
            client_ip: ip,
            peer_ip: ip,
            now: 3_600_000_000_000 + i * 1000,
            unix_ms: 1_700_000_000_000,
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
            auth: palisade_engine::model::principal::Auth::Anonymous,
        })
    });
}

/// The policy `bench/run.sh` measures as "full" (`bench/palisade-full.toml`): five limits,
/// lists, the bot catalog with actions, intel, header consistency, a honeypot, behaviour on every
/// dimension with stuffing, cache keys, a flow and attack mode, scoring and a CEL rule.
fn full_policy_engine() -> Engine {
    let src = include_str!("../../../bench/palisade-full.toml");
    let c =
        palisade_config::compile_str(src, "bench/palisade-full.toml", std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
    Engine::new(c.policy, None)
}

/// A library client's headers, as `bench/run.sh` sends them.
fn library_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("x-tenant", HeaderValue::from_static("acme"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("python-requests/2.32.3"),
    );
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip, deflate"));
    h
}

fn full_facts<'a>(
    headers: &'a HeaderMap,
    method: &'a Method,
    ip: IpAddr,
    now: u64,
) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path: "/api/items/42",
        query: None,
        headers,
        client_ip: ip,
        peer_ip: ip,
        now,
        unix_ms: 1_700_000_000_000 + now / 1_000_000,
        version: http::Version::HTTP_11,
        ja4h: Some("ge11nn050000_8cd4f1a7a0b2_000000000000_000000000000"),
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
        auth: palisade_engine::model::principal::Auth::Anonymous,
    }
}

/// The full policy, one client again and again (warm). Target: median <= 3 µs.
#[divan::bench]
fn full_policy_warm(bencher: divan::Bencher) {
    let e = full_policy_engine();
    let headers = library_headers();
    let method = Method::GET;
    let ip = IpAddr::from([203, 0, 113, 7]);
    let now = AtomicU64::new(3_600_000_000_000);
    bencher.bench_local(|| {
        let t = now.fetch_add(20_000, Ordering::Relaxed);
        e.evaluate(&full_facts(&headers, &method, ip, t))
    });
}

/// The full policy, a never-seen address every request (cells and feature records created,
/// tables evicting). Target: median <= 6 µs.
#[divan::bench]
fn full_policy_new_client(bencher: divan::Bencher) {
    let e = full_policy_engine();
    let headers = library_headers();
    let method = Method::GET;
    let counter = AtomicU64::new(0);
    bencher.bench_local(|| {
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::from((0x0b00_0000u32.wrapping_add(i as u32)).to_be_bytes());
        e.evaluate(&full_facts(
            &headers,
            &method,
            ip,
            3_600_000_000_000 + i * 20_000,
        ))
    });
}

/// The per-identity table on its own, against `quick_cache` (which it replaced): a warm lookup
/// of one of 10,000 tracked keys that updates its record, as limits and behaviour do a dozen
/// times per request.
mod tables {
    use palisade_engine::state::bounded::BoundedMap;
    use quick_cache::sync::{Cache, EntryAction, EntryResult};

    const KEYS: u64 = 10_000;

    fn key(i: u64) -> u64 {
        i.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[divan::bench]
    fn bounded_map_warm(bencher: divan::Bencher) {
        let m: BoundedMap<[u64; 3]> = BoundedMap::new(100_000);
        for i in 0..KEYS {
            m.with(key(i), || [0; 3], |_| ());
        }
        let mut i = 0u64;
        bencher.bench_local(|| {
            i = (i + 1) % KEYS;
            m.with(
                key(i),
                || [0; 3],
                |v| {
                    v[0] += 1;
                    v[0]
                },
            )
        });
    }

    #[divan::bench]
    fn quick_cache_warm(bencher: divan::Bencher) {
        let m: Cache<u64, [u64; 3]> = Cache::new(100_000);
        for i in 0..KEYS {
            m.insert(key(i), [0; 3]);
        }
        let mut i = 0u64;
        bencher.bench_local(|| {
            i = (i + 1) % KEYS;
            match m.entry(&key(i), None, |_, v| {
                v[0] += 1;
                EntryAction::Retain(v[0])
            }) {
                EntryResult::Retained(n) => n,
                _ => 0,
            }
        });
    }
}
