//! What an API key adds to a request: verification against the directory (HMAC-SHA256 of the
//! key, a map look-up, a constant-time compare), and the engine deciding with the key's
//! principal (five limits, one of them keyed by `api_key`, plus the key's own rate limit and a
//! daily quota) against the same engine deciding for an anonymous client.
//!
//! Run: `cargo bench -p palisade-keys --bench keys` (or `bench/engine.sh`). Budget: the key
//! path adds at most 1 µs over `anonymous`.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a benchmark's setup fails loudly"
)]

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, Method};
use palisade_engine::model::principal::Auth;
use palisade_engine::{Engine, RequestFacts};
use palisade_keys::store::{KeyStore, NewKey};
use palisade_keys::{KeyDirectory, ServerSecret};

fn main() {
    divan::main();
}

const POLICY: &str = r#"
[[routes]]
name = "items"
match = { path = "/api/items/{id}" }
auth = "api_key"
scopes = ["items:read"]

[[routes]]
name = "open"
match = { path = "/api/open/{id}" }

[[limits]]
name = "global"
rate = "1000000000/1s"

[[limits]]
name = "per-ip"
key = ["ip"]
rate = "1000000000/1s"

[[limits]]
name = "per-subnet"
key = ["ip/24"]
rate = "1000000000/1s"
algorithm = "sliding_window"

[[limits]]
name = "items-per-ip"
key = ["ip", "route"]
routes = ["items", "open"]
rate = "1000000000/1s"

[[limits]]
name = "per-key"
key = ["api_key"]
rate = "1000000000/1s"

[[quotas]]
name = "daily"
key = ["api_key"]
requests_per_day = 1000000000000
"#;

struct Setup {
    engine: Engine,
    directory: KeyDirectory,
    key: String,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let compiled = palisade_config::compile_str(POLICY, "bench", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = KeyStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let created = store
        .create(
            &NewKey {
                scopes: vec!["items:read".into()],
                rate: Some("1000000000/1s".into()),
                ..NewKey::default()
            },
            1_700_000_000,
            10,
            "bench",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let directory = KeyDirectory::new(store.secret().clone(), store.list().unwrap_or_default());
    Setup {
        engine: Engine::new(compiled.policy, None),
        directory,
        key: created.key,
        _dir: dir,
    }
}

#[divan::bench]
fn verify_key(bencher: divan::Bencher) {
    let s = setup();
    bencher.bench_local(|| s.directory.verify(&s.key, 1_700_000_001).is_ok());
}

#[divan::bench]
fn hmac_only(bencher: divan::Bencher) {
    let secret = ServerSecret::from_bytes([7; 32]);
    let key = palisade_keys::key::new_raw_key("abcdefghijkl");
    bencher.bench_local(|| secret.key_hash(&key));
}

fn decide(s: &Setup, now: &AtomicU64, with_key: bool) -> bool {
    let headers = HeaderMap::new();
    let ip: IpAddr = IpAddr::from([203, 0, 113, 7]);
    let entry = if with_key {
        s.directory.verify(&s.key, 1_700_000_001).ok()
    } else {
        None
    };
    let auth = match &entry {
        Some(e) => Auth::Principal(&e.principal),
        None => Auth::Anonymous,
    };
    let facts = RequestFacts {
        method: &Method::GET,
        path: "/api/items/42",
        query: None,
        headers: &headers,
        client_ip: ip,
        peer_ip: ip,
        now: now.fetch_add(1000, Ordering::Relaxed),
        unix_ms: 1_700_000_001_000,
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
        auth,
    };
    let d = s.engine.evaluate(&facts);
    let settle = d.as_ref().map(|d| s.engine.quota_settlement(d));
    if let Ok(settlement) = settle {
        settlement.settle(None);
    }
    d.is_ok()
}

/// The baseline: an anonymous client on an open route with the same pattern, through four
/// limits (the fifth is keyed by `api_key` and does not apply without one).
#[divan::bench]
fn anonymous(bencher: divan::Bencher) {
    let s = setup();
    let now = AtomicU64::new(3_600_000_000_000);
    let headers = HeaderMap::new();
    let ip: IpAddr = IpAddr::from([203, 0, 113, 7]);
    bencher.bench_local(|| {
        s.engine
            .evaluate(&RequestFacts {
                method: &Method::GET,
                path: "/api/open/42",
                query: None,
                headers: &headers,
                client_ip: ip,
                peer_ip: ip,
                now: now.fetch_add(1000, Ordering::Relaxed),
                unix_ms: 1_700_000_001_000,
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
                auth: Auth::Anonymous,
            })
            .is_ok()
    });
}

/// Key verified, then five limits (one keyed by the key), the key's own rate and a daily
/// quota reserved and settled.
#[divan::bench]
fn with_api_key(bencher: divan::Bencher) {
    let s = setup();
    let now = AtomicU64::new(3_600_000_000_000);
    bencher.bench_local(|| decide(&s, &now, true));
}
