//! The engine's pipeline, driven by policies written as config and a manual clock: lists,
//! limits, refunds, delay reservations, cost charging, shadow mode, scoring, reload state.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderValue, Method};
use palisade_config::compile_str;
use palisade_engine::clock::SECOND;
use palisade_engine::{Action, Decision, Engine, RequestFacts, ResponseFacts};

fn engine(src: &str) -> Engine {
    let c = compile_str(src, "t", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(c.policy, None)
}

const T0: u64 = 3_600 * SECOND;

struct Req<'a> {
    method: Method,
    path: &'a str,
    ip: &'a str,
    headers: HeaderMap,
    at: u64,
}

impl<'a> Req<'a> {
    fn get(path: &'a str, ip: &'a str) -> Self {
        Self {
            method: Method::GET,
            path,
            ip,
            headers: HeaderMap::new(),
            at: T0,
        }
    }
    fn at(mut self, secs_after_start: f64) -> Self {
        self.at = T0 + (secs_after_start * SECOND as f64) as u64;
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.insert(k, HeaderValue::from_str(v).unwrap());
        self
    }
    fn eval(&self, e: &Engine) -> Decision {
        let ip: IpAddr = self.ip.parse().unwrap();
        e.evaluate(&RequestFacts {
            method: &self.method,
            path: self.path,
            query: None,
            headers: &self.headers,
            client_ip: ip,
            peer_ip: ip,
            now: self.at,
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
        .unwrap()
    }
}

#[test]
fn deny_and_allow_lists() {
    let e = engine(
        r#"
[[limits]]
name = "tiny"
rate = "1/1h"
[lists]
deny = ["203.0.113.0/24"]
allow = ["198.51.100.10"]
"#,
    );
    let d = Req::get("/", "203.0.113.9").eval(&e);
    assert_eq!(
        (d.action, &*d.rule, d.score),
        (Action::Block, "list/deny", 100)
    );
    for _ in 0..5 {
        let d = Req::get("/", "198.51.100.10").eval(&e);
        assert_eq!((d.action, &*d.rule), (Action::Allow, "list/allow"));
        assert!(d.limits.is_empty(), "allowlisted clients skip limits");
    }
}

#[test]
fn every_matching_limit_applies_and_refused_requests_are_refunded() {
    let e = engine(
        r#"
[[routes]]
name = "login"
match = { path = "/login", methods = ["POST"] }

[[limits]]
name = "global"
rate = "100/1m"

[[limits]]
name = "login-per-ip"
routes = ["login"]
key = ["ip"]
rate = "2/1m"
"#,
    );
    let mut login = Req::get("/login", "198.51.100.1");
    login.method = Method::POST;
    assert_eq!(login.eval(&e).limits.len(), 2);
    assert_eq!(login.eval(&e).action, Action::Allow);
    let d = login.eval(&e);
    assert!(matches!(d.action, Action::Limit { .. }));
    assert_eq!(&*d.rule, "limit/login-per-ip");
    assert_eq!(d.signals.len(), 1);
    assert_eq!(d.score, 50);
    // The refused request gave back its global unit: 100 - 2 used = 98 left.
    let g = Req::get("/other", "198.51.100.2").eval(&e);
    assert_eq!(g.limits.len(), 1, "login limit does not apply off-route");
    assert_eq!(g.limits[0].verdict.remaining, 97);
}

#[test]
fn prefix_and_header_keys() {
    let e = engine(
        r#"
[[limits]]
name = "subnet"
key = ["ip/24"]
rate = "2/1m"

[[limits]]
name = "tenant"
key = ["header:x-tenant"]
rate = "3/1m"
"#,
    );
    assert_eq!(Req::get("/", "203.0.113.1").eval(&e).action, Action::Allow);
    assert_eq!(Req::get("/", "203.0.113.2").eval(&e).action, Action::Allow);
    let d = Req::get("/", "203.0.113.3").eval(&e);
    assert_eq!(&*d.rule, "limit/subnet", "one /24 shares a budget");
    assert_eq!(Req::get("/", "203.0.114.3").eval(&e).action, Action::Allow);
    // v6 clients: ip/24 pairs with /48.
    assert_eq!(
        Req::get("/", "2001:db8:1:1::1").eval(&e).action,
        Action::Allow
    );
    assert_eq!(
        Req::get("/", "2001:db8:1:2::1").eval(&e).action,
        Action::Allow
    );
    assert!(matches!(
        Req::get("/", "2001:db8:1:3::1").eval(&e).action,
        Action::Limit { .. }
    ));

    for i in 0..3 {
        let d = Req::get("/", &format!("198.51.{i}.1"))
            .header("x-tenant", "acme")
            .eval(&e);
        assert_eq!(d.action, Action::Allow);
    }
    let d = Req::get("/", "198.51.9.1")
        .header("x-tenant", "acme")
        .eval(&e);
    assert_eq!(
        &*d.rule, "limit/tenant",
        "the tenant key follows the header across addresses"
    );
    // No header, no key: the limit does not apply.
    let d = Req::get("/", "198.51.10.1").eval(&e);
    assert!(d.limits.iter().all(|l| &*l.name != "tenant"));
}

#[test]
fn time_replenishes_gcra_and_slides_windows() {
    let e = engine(
        r#"
[[limits]]
name = "gcra"
key = ["ip"]
rate = "10/10s"
burst = 2

[[limits]]
name = "window"
key = ["ip"]
rate = "4/10s"
algorithm = "sliding_window"
"#,
    );
    let ip = "198.51.100.1";
    assert_eq!(Req::get("/", ip).eval(&e).action, Action::Allow);
    assert_eq!(Req::get("/", ip).eval(&e).action, Action::Allow);
    let d = Req::get("/", ip).eval(&e);
    assert_eq!(
        d.action,
        Action::Limit {
            retry_after: SECOND
        }
    );
    assert_eq!(Req::get("/", ip).at(1.0).eval(&e).action, Action::Allow);
    assert_eq!(Req::get("/", ip).at(2.0).eval(&e).action, Action::Allow);
    // The sliding window (4 per 10 s) now has 4 counted.
    let d = Req::get("/", ip).at(3.5).eval(&e);
    assert_eq!(&*d.rule, "limit/window");
    // 15 s later half of the previous window still weighs: ceil(4 * 0.5) = 2 -> 2 more allowed.
    assert_eq!(Req::get("/", ip).at(15.0).eval(&e).action, Action::Allow);
    assert_eq!(Req::get("/", ip).at(15.0).eval(&e).action, Action::Allow);
    assert_eq!(&*Req::get("/", ip).at(15.0).eval(&e).rule, "limit/window");
}

#[test]
fn delay_reserves_capacity_up_to_the_bound() {
    let e = engine(
        r#"
[[limits]]
name = "smooth"
key = ["ip"]
rate = "10/1s"
burst = 1
action = "delay"
max_delay = "250ms"
"#,
    );
    let ip = "198.51.100.1";
    assert_eq!(Req::get("/", ip).eval(&e).action, Action::Allow);
    assert_eq!(
        Req::get("/", ip).eval(&e).action,
        Action::Delay { wait: SECOND / 10 }
    );
    assert_eq!(
        Req::get("/", ip).eval(&e).action,
        Action::Delay { wait: SECOND / 5 }
    );
    // The next would wait 300 ms, beyond max_delay: refused, and nothing reserved for it.
    let d = Req::get("/", ip).eval(&e);
    assert_eq!(
        d.action,
        Action::Limit {
            retry_after: 3 * SECOND / 10
        }
    );
    assert_eq!(&*d.rule, "limit/smooth");
    assert_eq!(Req::get("/", ip).at(0.3).eval(&e).action, Action::Allow);
}

#[test]
fn upstream_reported_cost_is_charged() {
    let e = engine(
        r#"
[[routes]]
name = "llm"
match = { path = "/v1/complete" }
cost = 10
cost_header = "x-tokens"

[[limits]]
name = "tokens"
routes = ["llm"]
key = ["ip"]
rate = "100/1h"
unit = "cost"
"#,
    );
    let ip = "198.51.100.1";
    let d = Req::get("/v1/complete", ip).eval(&e);
    assert_eq!(
        d.limits[0].verdict.remaining, 90,
        "charged the route's cost up front"
    );
    e.observe_response(
        &d,
        &ResponseFacts {
            status: 200,
            reported_cost: Some(60.0),
            now: T0,
        },
    );
    let d = Req::get("/v1/complete", ip).eval(&e);
    assert_eq!(
        d.limits[0].verdict.remaining, 30,
        "100 - 60 reported, then 10 up front"
    );
    e.observe_response(
        &d,
        &ResponseFacts {
            status: 200,
            reported_cost: Some(5.0),
            now: T0,
        },
    );
    // 5 reported for a 10-unit charge: 5 refunded (35), then 10 up front.
    let d = Req::get("/v1/complete", ip).eval(&e);
    assert_eq!(d.limits[0].verdict.remaining, 25);
    // Garbage reports change nothing.
    for bad in [f64::NAN, -5.0, f64::INFINITY] {
        e.observe_response(
            &d,
            &ResponseFacts {
                status: 200,
                reported_cost: Some(bad),
                now: T0,
            },
        );
    }
    assert_eq!(
        Req::get("/v1/complete", ip).eval(&e).limits[0]
            .verdict
            .remaining,
        15
    );
}

#[test]
fn global_shadow_mode_logs_would_actions_and_enforces_nothing() {
    let e = engine(
        r#"
[server]
mode = "shadow"
[[limits]]
name = "tiny"
key = ["ip"]
rate = "1/1h"
[lists]
deny = ["203.0.113.0/24"]
"#,
    );
    let d = Req::get("/", "203.0.113.1").eval(&e);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(
        (d.logged_action(), &**d.logged_rule(), d.is_shadowed()),
        ("would_block", "list/deny", true)
    );
    Req::get("/", "198.51.100.1").eval(&e);
    let d = Req::get("/", "198.51.100.1").eval(&e);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(
        (d.logged_action(), &**d.logged_rule()),
        ("would_limit", "limit/tiny")
    );
}

#[test]
fn per_limit_shadow_counts_without_enforcing() {
    let e = engine(
        r#"
[[limits]]
name = "trial"
key = ["ip"]
rate = "1/1h"
action = "shadow"
"#,
    );
    let ip = "198.51.100.1";
    Req::get("/", ip).eval(&e);
    let d = Req::get("/", ip).eval(&e);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.logged_action(), "would_limit");
    assert_eq!(
        d.score, 0,
        "shadowed signals do not raise the enforced score"
    );
    assert!(d.signals[0].shadow);
}

#[test]
fn score_thresholds_pick_tag_challenge_and_block() {
    let e = engine(
        r#"
[scoring]
tag_at = 20
challenge_at = 60
block_at = 90

[[limits]]
name = "soft"
key = ["ip"]
rate = "1/1h"
action = "shadow"
weight = 30

[[limits]]
name = "a"
key = ["ip"]
rate = "1/1h"
weight = 40
"#,
    );
    let ip = "198.51.100.1";
    Req::get("/", ip).eval(&e);
    let d = Req::get("/", ip).eval(&e);
    // The enforced limit wins; the shadowed one is only logged.
    assert_eq!(&*d.rule, "limit/a");
    assert_eq!(d.score, 40);
}

#[test]
fn reload_keeps_state_of_unchanged_limits_only() {
    let v1 = r#"
[[limits]]
name = "kept"
key = ["ip"]
rate = "2/1h"
[[limits]]
name = "changed"
key = ["ip"]
rate = "2/1h"
"#;
    let v2 = v1
        .replacen("rate = \"2/1h\"\n", "rate = \"2/1h\"\nheaders = false\n", 1)
        .replace(
            "name = \"changed\"\nkey = [\"ip\"]\nrate = \"2/1h\"",
            "name = \"changed\"\nkey = [\"ip\"]\nrate = \"3/1h\"",
        );
    let old = engine(v1);
    let ip = "198.51.100.1";
    Req::get("/", ip).eval(&old);
    Req::get("/", ip).eval(&old);
    let c = compile_str(&v2, "t", Path::new(".")).unwrap();
    let new = Engine::new(c.policy, Some(&old));
    let d = Req::get("/", ip).eval(&new);
    assert_eq!(
        &*d.rule, "limit/kept",
        "a reload is not a way to get a fresh budget"
    );
    let changed = d.limits.iter().find(|l| &*l.name == "changed").unwrap();
    assert_eq!(
        changed.verdict.remaining, 2,
        "a limit whose counting changed starts afresh"
    );
}

#[test]
fn route_evasion_does_not_dodge_route_limits() {
    let e = engine(
        r#"
[[routes]]
name = "login"
match = { path = "/api/login" }
[[limits]]
name = "login"
routes = ["login"]
key = ["ip"]
rate = "1/1h"
"#,
    );
    let ip = "198.51.100.1";
    Req::get("/api/login", ip).eval(&e);
    for p in [
        "/api//login",
        "/api/./login",
        "/api/%6Cogin",
        "/x/../api/login",
    ] {
        assert_eq!(&*Req::get(p, ip).eval(&e).rule, "limit/login", "{p}");
    }
}

#[test]
fn identity_report_shows_limiter_state() {
    let e = engine(
        r#"
[[limits]]
name = "per-ip"
key = ["ip"]
rate = "5/1m"
[[limits]]
name = "per-subnet"
key = ["ip/24"]
rate = "50/1m"
[[limits]]
name = "combo"
key = ["ip", "route"]
rate = "50/1m"
"#,
    );
    for _ in 0..3 {
        Req::get("/", "203.0.113.7").eval(&e);
    }
    let r = e
        .identity(&palisade_engine::KeyPart::Ip, "203.0.113.7", T0, 0)
        .unwrap();
    let per_ip = r.limits.iter().find(|l| l.limit == "per-ip").unwrap();
    assert!(per_ip.tracked);
    assert_eq!(per_ip.remaining, 2);
    assert!(
        r.limits
            .iter()
            .find(|l| l.limit == "combo")
            .unwrap()
            .note
            .is_some()
    );
    let sub = e
        .identity(
            &palisade_engine::KeyPart::parse("ip/24").unwrap(),
            "203.0.113.200",
            T0,
            0,
        )
        .unwrap();
    assert_eq!(sub.value, "203.0.113.0/24");
    assert_eq!(sub.limits[0].remaining, 47);
    let unknown = e
        .identity(&palisade_engine::KeyPart::Ip, "198.51.100.1", T0, 0)
        .unwrap();
    assert!(!unknown.limits[0].tracked);
    assert!(
        e.identity(&palisade_engine::KeyPart::Ip, "not-an-ip", T0, 0)
            .is_err()
    );
}

#[test]
fn spraying_a_million_identities_stays_within_the_table_cap() {
    let e = engine(
        r#"
[[limits]]
name = "per-ip"
key = ["ip"]
rate = "10/1s"
max_entries = 50000
"#,
    );
    let headers = HeaderMap::new();
    for i in 0..1_000_000u32 {
        let ip = IpAddr::from((0x0b00_0000u32 + i).to_be_bytes());
        let d = e
            .evaluate(&RequestFacts {
                method: &Method::GET,
                path: "/",
                query: None,
                headers: &headers,
                client_ip: ip,
                peer_ip: ip,
                now: T0 + u64::from(i) * 1000,
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
            .unwrap();
        assert_eq!(d.action, Action::Allow);
    }
    let t = &e.tables()[0];
    assert!(
        t.len() as u64 <= t.capacity(),
        "{} > {}",
        t.len(),
        t.capacity()
    );
    assert!(
        t.len() >= 40_000,
        "the table is used up to its cap: {}",
        t.len()
    );
    assert!(t.evictions() >= 950_000, "evictions: {}", t.evictions());
    // A client hammering during the spray is still tracked and limited.
    let ip = "198.51.100.1";
    for _ in 0..10 {
        Req::get("/", ip).at(2.0).eval(&e);
    }
    assert!(matches!(
        Req::get("/", ip).at(2.0).eval(&e).action,
        Action::Limit { .. }
    ));
}

#[test]
fn rules_score_override_and_shadow() {
    let e = engine(
        r#"
[[routes]]
name = "login"
match = { path = "/login" }

[bots]

[scoring]
tag_at = 30
delay_at = 0
challenge_at = 60
block_at = 90

[[rules]]
name = "scripted-login"
when = 'route == "login" && bot.category == "http_library"'
action = "score"
weight = 35

[[rules]]
name = "partner-monitor"
when = 'headers["x-monitor"] == "acme" && path.startsWith("/health")'
action = "allow"

[[rules]]
name = "no-language"
when = '!("accept-language" in headers) && score >= 30'
action = "challenge"

[[rules]]
name = "would-block-curl"
when = 'user_agent.matches("^curl/")'
action = "block"
shadow = true
"#,
    );
    // A library on the login route: the score rule adds 35 to the catalog's 20 -> 55, then the
    // header rule challenges (decisive rules see the score with the score rules' signals).
    let d = Req::get("/login", "198.51.100.1")
        .header("user-agent", "python-requests/2.32")
        .eval(&e);
    assert_eq!(
        (d.action, &*d.rule),
        (Action::Challenge, "rule/no-language")
    );
    assert!(
        d.signals
            .iter()
            .any(|s| &*s.name == "rule/scripted-login" && s.weight == 35)
    );
    assert_eq!(d.score, 55);
    // The same with accept-language: no decisive rule, the score (55) tags.
    let d = Req::get("/login", "198.51.100.1")
        .header("user-agent", "python-requests/2.32")
        .header("accept-language", "en")
        .eval(&e);
    assert_eq!((d.action, &*d.rule), (Action::Tag, "score/tag"));
    // Off the login route the score rule does not match.
    let d = Req::get("/items", "198.51.100.1")
        .header("user-agent", "python-requests/2.32")
        .header("accept-language", "en")
        .eval(&e);
    assert_eq!(d.score, 20);
    // An allow rule sets aside the score's action.
    let d = Req::get("/health", "198.51.100.2")
        .header("user-agent", "curl/8.1")
        .header("x-monitor", "acme")
        .eval(&e);
    assert_eq!(
        (d.action, &*d.rule),
        (Action::Allow, "rule/partner-monitor")
    );
    // A shadowed rule is logged as would_block, never enforced.
    let d = Req::get("/other", "198.51.100.3")
        .header("user-agent", "curl/8.1")
        .header("accept-language", "en")
        .eval(&e);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.logged_action(), "would_block");
    assert_eq!(&**d.logged_rule(), "rule/would-block-curl");
    // A rule reading a missing header key errors: no match, counted.
    let before = e.rule_errors();
    let d = Req::get("/health", "198.51.100.4")
        .header("accept-language", "en")
        .eval(&e);
    assert_eq!((d.action, d.score), (Action::Allow, 20));
    assert!(
        e.rule_errors() > before,
        "headers[\"x-monitor\"] is missing"
    );
}

#[test]
fn rule_errors_are_reported_with_their_place() {
    let err = compile_str(
        r#"
[[rules]]
name = "a"
when = 'route == '
action = "block"

[[rules]]
name = "b"
when = 'rout == "login"'
action = "block"

[[rules]]
name = "b"
when = 'true'
action = "explode"

[[rules]]
name = "c"
when = 'true'
action = "block"
weight = 5
"#,
        "t",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    for want in [
        "rules[0].when",
        "unknown variable `rout`",
        "rule name `b` is used twice",
        "`explode` is not one of",
        "`weight` is for action = \"score\"",
    ] {
        assert!(err.contains(want), "missing `{want}` in {err}");
    }
}

#[test]
fn ja4h_is_wanted_only_when_the_policy_reads_it() {
    let plain = engine(
        r#"
[[limits]]
name = "per-ip"
key = ["ip", "header:x-tenant"]
rate = "10/1s"
"#,
    );
    assert!(
        !plain.wants_ja4h(),
        "no limit, detector or honeypot reads it"
    );
    // A block may name a fingerprint at any time (admin API, honeypots): then it is read.
    plain.blocks().add(
        "ip:192.0.2.1".into(),
        60_000,
        "test",
        palisade_engine::state::blocks::BlockEffect::Block,
        false,
        1_700_000_000_000,
    );
    assert!(plain.wants_ja4h(), "a non-empty block table is checked");

    let keyed = engine(
        r#"
[[limits]]
name = "per-fingerprint"
key = ["ja4h"]
rate = "10/1s"
"#,
    );
    assert!(keyed.wants_ja4h());
    let honeypot = engine(
        r#"
[[honeypots]]
name = "probes"
paths = ["/.env"]
flag = ["ip", "ja4h"]
"#,
    );
    assert!(honeypot.wants_ja4h());
    // Behaviour tracks Palisade's own header fingerprint by default; JA4H (FoxIO licence) only
    // when `track` names it.
    let behaviour = engine(
        r#"
[behaviour]
"#,
    );
    assert!(!behaviour.wants_ja4h());
    assert!(behaviour.wants_hfp());
    assert!(!plain.wants_hfp() || !plain.blocks().is_empty());
    let opted_in = engine(
        r#"
[behaviour]
track = ["ip", "ja4h"]
"#,
    );
    assert!(opted_in.wants_ja4h());
    assert!(!opted_in.wants_hfp());
}

#[test]
fn the_advertised_limit_set_names_one_rendering_of_ratelimit_policy() {
    let e = engine(
        r#"
[[routes]]
name = "items"
match = { path = "/items/{id}" }

[[limits]]
name = "global"
rate = "100/1m"
headers = true

[[limits]]
name = "quiet"
rate = "100/1m"
headers = false

[[limits]]
name = "items"
routes = ["items"]
key = ["ip"]
rate = "10/1s"

[[limits]]
name = "tenant"
key = ["header:x-tenant"]
rate = "50/1s"
"#,
    );
    // (the set, the headers)
    let headers = |r: Req<'_>| {
        let d = r.eval(&e);
        let h = e.rate_limit_headers(&d, true).unwrap();
        // Without the policy (a caller that kept it), the rest is the same.
        let lean = e.rate_limit_headers(&d, false).unwrap();
        assert_eq!(lean.policy, "");
        assert_eq!(
            (&lean.ratelimit, lean.x_remaining),
            (&h.ratelimit, h.x_remaining)
        );
        (e.policy_set(&d), h)
    };
    let (set, items) = headers(Req::get("/items/1", "192.0.2.1"));
    assert_eq!(set, Some(0b0101));
    assert_eq!(items.policy, r#""global";q=100;w=60, "items";q=10;w=1"#);
    // Another request, other remaining counts: the same set renders the same policy.
    let (again_set, again) = headers(Req::get("/items/2", "192.0.2.1"));
    assert_eq!((again_set, &again.policy), (set, &items.policy));
    assert_ne!(
        again.ratelimit, items.ratelimit,
        "RateLimit itself is per request"
    );
    // A limit that applies only when its key is present changes the set.
    let (set, tenant) = headers(Req::get("/items/1", "192.0.2.1").header("x-tenant", "acme"));
    assert_eq!(set, Some(0b1101));
    assert!(tenant.policy.ends_with(r#", "tenant";q=50;w=1"#));
    let (set, other) = headers(Req::get("/", "192.0.2.1"));
    assert_eq!(set, Some(0b0001));
    assert_eq!(other.policy, r#""global";q=100;w=60"#);
}

#[test]
fn a_limit_shared_by_every_client_is_not_advertised_unless_asked() {
    // draft-ietf-httpapi-ratelimit-headers-10, section 7.2: a keyless limit's quota and what is
    // left of it are the API's capacity and load, not the client's quota.
    let quiet = engine(
        r#"
[[limits]]
name = "global"
rate = "100/1m"

[[limits]]
name = "per-ip"
key = ["ip"]
rate = "10/1s"
"#,
    );
    let d = Req::get("/", "192.0.2.1").eval(&quiet);
    let h = quiet.rate_limit_headers(&d, true).unwrap();
    assert_eq!(h.policy, r#""per-ip";q=10;w=1"#);
    assert!(!h.ratelimit.contains("global"), "{}", h.ratelimit);
    assert_eq!(h.x_limit, 10);
    let told = engine(
        r#"
[[limits]]
name = "global"
rate = "100/1m"
headers = true
"#,
    );
    let d = Req::get("/", "192.0.2.1").eval(&told);
    let h = told.rate_limit_headers(&d, true).unwrap();
    assert_eq!(h.policy, r#""global";q=100;w=60"#);
    // Only the keyless limit, unadvertised: no headers at all.
    let none = engine(
        r#"
[[limits]]
name = "global"
rate = "100/1m"
"#,
    );
    let d = Req::get("/", "192.0.2.1").eval(&none);
    assert!(none.rate_limit_headers(&d, true).is_none());
}
