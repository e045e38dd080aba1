//! The config compiler: the shipped configs compile and pass their own cases; broken configs
//! report every error at once, each with its line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on the unexpected"
)]

use std::path::Path;

use palisade_config::{DEFAULT_CONFIG, compile_str, load_file, run_cases};

fn errors(src: &str) -> Vec<String> {
    match compile_str(src, "test.toml", Path::new(".")) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn embedded_default_compiles_and_passes_its_cases() {
    let c = compile_str(DEFAULT_CONFIG, "default", Path::new(".")).unwrap();
    assert!(c.upstreams.is_empty(), "the default runs the sample API");
    assert_eq!(c.policy.limits.len(), 5);
    let outcomes = run_cases(&c);
    assert_eq!(outcomes.len(), 13);
    assert!(
        c.policy.probes.is_some(),
        "injection probes are on by default"
    );
    assert!(c.policy.behaviour.is_some(), "behaviour is on by default");
    assert_eq!(c.policy.quotas.len(), 1);
    for o in outcomes {
        assert!(o.passed, "{o:?}");
    }
}

#[test]
fn example_config_compiles_and_passes_its_cases() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../palisade.example.toml");
    let c = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.tests.is_empty());
    for o in run_cases(&c) {
        assert!(o.passed, "{o:?}");
    }
}

#[test]
fn every_error_is_reported_at_once_with_its_line() {
    let src = r#"
[server]
listen = "not-an-address"
mode = "paranoid"

[[upstreams]]
name = "api"
url = "ftp://example"

[[routes]]
name = "login"
match = { path = "api/login" }
upstream = "nope"

[[limits]]
name = "a"
key = ["ip", "colour"]
rate = "100 per minute"
typo_field = 1

[[limits]]
name = "b"
rate = "10/s"
routes = ["missing"]
action = "delay"
algorithm = "sliding_window"

[[limits]]
name = "c"
rate = "10/s"
unknown = true

[lists]
deny = ["10.0.0.0/33"]
"#;
    let errs = errors(src);
    let joined = errs.join("\n");
    for (line, needle) in [
        (3, "server.listen"),
        (4, "server.mode"),
        (8, "upstreams[0].url"),
        (12, "routes[0].match.path"),
        (13, "routes[0].upstream"),
        (24, "limits[1].routes"),
        (25, "limits[1].action"),
        (34, "lists.deny"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{line}:")) && e.contains(needle)),
            "missing error at line {line} about {needle} in:\n{joined}"
        );
    }
    // Unknown fields in two different limits are both reported (serde alone stops at the first).
    assert!(joined.contains("typo_field"), "{joined}");
    assert!(joined.contains("unknown"), "{joined}");
    assert!(errs.len() >= 10, "{joined}");
}

#[test]
fn semantic_errors_in_one_limit_are_all_reported() {
    let src = r#"
[[limits]]
name = "bad name!"
key = ["ip", "colour"]
rate = "100 per minute"
weight = 101
"#;
    let errs = errors(src);
    let joined = errs.join("\n");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("3:") && e.contains("limit name")),
        "{joined}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("4:") && e.contains("colour")),
        "{joined}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("5:") && e.contains("not a rate")),
        "{joined}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("6:") && e.contains("weight")),
        "{joined}"
    );
}

#[test]
fn syntax_errors_have_locations() {
    let errs = errors("[server\nlisten = 1\n");
    assert!(errs[0].starts_with("1:"), "{errs:?}");
}

#[test]
fn sections_from_later_versions_are_named_not_silently_ignored() {
    let errs = errors("[[rules]]\nname = \"x\"\n\n[store]\nbackend = \"redis\"\n\n[colours]\n");
    let joined = errs.join("\n");
    assert!(
        joined.contains("rules[0]: missing field `when`"),
        "{joined}"
    );
    assert!(joined.contains("needs `url`"), "{joined}");
    assert!(joined.contains("unknown section `colours`"), "{joined}");
}

#[test]
fn list_files_are_read_and_bad_lines_located() {
    let dir = std::env::temp_dir().join(format!("palisade-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deny.txt"),
        "# bad actors\n203.0.113.0/24\n198.51.100.7 ; one host\n\n",
    )
    .unwrap();
    let c = compile_str(
        "[lists]\ndeny = [\"file:deny.txt\", \"2001:db8::/32\"]\n",
        "t",
        &dir,
    )
    .unwrap();
    assert!(c.policy.lists.deny.contains("203.0.113.9".parse().unwrap()));
    assert!(
        c.policy
            .lists
            .deny
            .contains("198.51.100.7".parse().unwrap())
    );
    assert!(c.policy.lists.deny.contains("2001:db8::1".parse().unwrap()));
    assert!(
        !c.policy
            .lists
            .deny
            .contains("198.51.100.8".parse().unwrap())
    );
    assert!(c.files.iter().any(|f| f.ends_with("deny.txt")));

    std::fs::write(dir.join("bad.txt"), "203.0.113.0/24\nnot-an-ip\n").unwrap();
    let e = compile_str(
        "[lists]\nallow = [\"file:bad.txt\", \"file:missing.txt\"]\n",
        "t",
        &dir,
    )
    .unwrap_err();
    let joined: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
    assert!(
        joined
            .iter()
            .any(|e| e.contains("bad.txt:2") && e.contains("not-an-ip")),
        "{joined:?}"
    );
    assert!(
        joined.iter().any(|e| e.contains("missing.txt")),
        "{joined:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Every string in a JSON value, with its path.
fn strings(v: &serde_json::Value, path: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(s) => out.push((path, s.clone())),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                strings(x, format!("{path}/{i}"), out);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                strings(x, format!("{path}/{k}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_secret_in_the_config_is_redacted() {
    // Every secret-bearing field holds a value with the marker `SECRETMARK`; none may show in
    // the config the admin API serves, wherever it sits. Two configs, because a store takes
    // either one URL or cluster nodes.
    let with_url = r#"
[server]
admin_token = "SECRETMARK-admin-token"

[[upstreams]]
name = "api"
url = "http://svc:SECRETMARK-upstream-pw@127.0.0.1:3000"

[[routes]]
name = "all"
match = { path = "/*" }
auth = "jwt"

[jwt]
jwks_url = "https://idp.example/jwks.json?access_token=SECRETMARK-jwks"
[[jwt.keys]]
algorithm = "HS256"
secret = "SECRETMARK-hs256-secret-0123456789"

[[honeypots]]
decoy_keys = ["pal_SECRETMARKdecoy_0123456789abcdef"]

[store]
backend = "redis"
url = "redis://default:SECRETMARK-redis-pw@127.0.0.1:6379/0"
"#;
    let with_nodes = r#"
[store]
backend = "redis"
nodes = ["redis://u:SECRETMARK-node-pw@127.0.0.1:7000", "redis://:SECRETMARK-node-pw2@127.0.0.1:7001"]
"#;
    for (src, secrets) in [(with_url, 6), (with_nodes, 2)] {
        let c = compile_str(src, "t", Path::new(".")).unwrap();
        let mut all = Vec::new();
        strings(&c.redacted, String::new(), &mut all);
        let leaked: Vec<_> = all
            .iter()
            .filter(|(_, s)| s.contains("SECRETMARK"))
            .collect();
        assert!(leaked.is_empty(), "secrets shown: {leaked:?}");
        let redacted = all.iter().filter(|(_, s)| s.contains("<redacted>")).count();
        assert_eq!(redacted, secrets, "{all:?}");
        // Where each value points is kept: hosts, ports and users stay readable.
        let text = c.redacted.to_string();
        assert!(text.contains("127.0.0.1"), "{text}");
    }
    let c = compile_str(with_url, "t", Path::new(".")).unwrap();
    let text = c.redacted.to_string();
    assert!(
        text.contains("https://idp.example/jwks.json?<redacted>"),
        "{text}"
    );
    assert!(
        text.contains("redis://default:<redacted>@127.0.0.1:6379/0"),
        "{text}"
    );
    // A broken secret's error message does not print it either.
    let err = compile_str(
        "[[upstreams]]\nname = \"a\"\nurl = \"ftp://u:SECRETMARK@h\"\n",
        "t",
        Path::new("."),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(!err.contains("SECRETMARK"), "{err}");
}

#[test]
fn rates_are_advertised_in_whole_seconds() {
    let c = compile_str(
        "[[limits]]\nname = \"fast\"\nrate = \"10/500ms\"\n",
        "t",
        Path::new("."),
    )
    .unwrap();
    let l = &c.policy.limits[0];
    assert_eq!((l.quota, l.window_secs), (20, 1));
}

#[test]
fn failing_cases_are_reported() {
    let src = r#"
[[limits]]
name = "tight"
key = ["ip"]
rate = "1/1m"

[[tests]]
name = "second request is limited"
request = { path = "/x", repeat = 2 }
expect = { action = "limit", rule = "limit/tight" }

[[tests]]
name = "wrong on purpose"
request = { path = "/x", ip = "198.51.100.99" }
expect = { action = "block" }
"#;
    let c = compile_str(src, "t", Path::new(".")).unwrap();
    let out = run_cases(&c);
    assert!(out[0].passed, "{:?}", out[0]);
    assert!(!out[1].passed);
    assert_eq!(out[1].got_action, "allow");
    assert_eq!(out[1].line, Some(14), "the line of the case's request");
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn arbitrary_text_is_an_error_or_a_config_never_a_panic(text in "[\\[\\]a-z_=\"0-9/. \n{},#:-]{0,300}") {
            match compile_str(&text, "fuzz", Path::new("/nonexistent")) {
                // A config that compiles shows itself (redacted) as a table.
                Ok(c) => prop_assert!(c.redacted.is_object()),
                // One that does not says why, every error with a message.
                Err(e) => {
                    prop_assert!(!e.errors.is_empty());
                    prop_assert!(e.errors.iter().all(|x| !x.to_string().trim().is_empty()));
                }
            }
        }
    }
}

#[test]
fn bots_section_reports_every_bad_category_and_action() {
    let err = compile_str(
        "[bots]\nweight = 200\n[bots.actions]\nrobots = \"block\"\nsearch_engine = \"allow_verified\"\nscanner = \"nuke\"\nai_training = \"block\"\n",
        "t",
        Path::new("."),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("3 errors"), "{text}");
    assert!(text.contains("unknown bot category `robots`"), "{text}");
    assert!(text.contains("`nuke` is not one of"), "{text}");
    assert!(text.contains("bots.weight"), "{text}");
    let ok = compile_str("[bots.actions]\nscanner = \"block\"\n", "t", Path::new(".")).unwrap();
    let bots = ok.policy.bots.unwrap();
    assert_eq!(
        bots.action(palisade_intel::Category::Scanner),
        palisade_engine::policy::bots::BotAction::Block
    );
    assert_eq!(
        bots.action(palisade_intel::Category::Human),
        palisade_engine::policy::bots::BotAction::Allow
    );
    assert_eq!(
        bots.action(palisade_intel::Category::Seo),
        palisade_engine::policy::bots::BotAction::Signal
    );
}

#[test]
fn conditional_allow_entries_need_every_condition() {
    let c = compile_str(
        r#"
[lists]
allow = ["192.0.2.1"]
allow_if = [{ net = "198.51.100.0/24", paths = ["/partner/*"], header = "x-partner: acme" }]

[[limits]]
name = "per-ip"
key = ["ip"]
rate = "1/1m"

[[tests]]
name = "the partner, on its paths, with its header"
request = { path = "/partner/feed", ip = "198.51.100.7", repeat = 5, headers = { x-partner = "acme" } }
expect = { action = "allow", rule = "list/allow" }

[[tests]]
name = "the same range without the header"
request = { path = "/partner/feed", ip = "198.51.100.8", repeat = 2 }
expect = { action = "limit" }

[[tests]]
name = "the same range and header, another path"
request = { path = "/admin", ip = "198.51.100.9", repeat = 2, headers = { x-partner = "acme" } }
expect = { action = "limit" }

[[tests]]
name = "a wrong header value"
request = { path = "/partner/feed", ip = "198.51.100.10", repeat = 2, headers = { x-partner = "evil" } }
expect = { action = "limit" }

[[tests]]
name = "a plain entry still works"
request = { path = "/anything", ip = "192.0.2.1", repeat = 3 }
expect = { action = "allow", rule = "list/allow" }
"#,
        "t",
        Path::new("."),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for o in run_cases(&c) {
        assert!(o.passed, "{o:?}");
    }
    let err = compile_str(
        "[lists]\nallow_if = [{ net = \"nope\", paths = [\"/x\"] }, { net = \"10.0.0.0/8\", header = \"bad header\" }]\n",
        "t",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope") && err.contains("bad header"), "{err}");
}

#[test]
fn behaviour_and_scoring_errors_are_all_reported_and_good_values_compile() {
    let src = r#"
[[routes]]
name = "login"
match = { path = "/login" }

[behaviour]
track = ["ip", "mac_address"]
window = "five minutes"
session = ["cookie:sid", "tea"]
thresholds = { error_share = 1.5, enumeration_run = 0, colour = 3 }
weights = { enumeration = 200, telepathy = 5 }

[behaviour.stuffing]
route = "signin"
failure_status = [200]

[[behaviour.flows]]
name = "x"
route = "login"
after = "login"
within = "1s"
min_gap = "2s"

[behaviour.attack]
scope = "planet"

[scoring]
tag_at = 50
delay_at = 40
throttle = ["0s", "10m"]
"#;
    let errs = errors(src);
    let text = errs.join("\n");
    for want in [
        "unknown dimension `mac_address`",
        "behaviour.window",
        "`tea` is not a session source",
        "behaviour.thresholds.error_share",
        "behaviour.thresholds.enumeration_run",
        "unknown threshold `colour`",
        "behaviour.weights.enumeration",
        "unknown signal `telepathy`",
        "signin",
        "a failure status must be from 400 to 599",
        "min_gap must be shorter than within",
        "a flow's two routes must differ",
        "`planet` is not one of",
        "thresholds must rise",
        "a delay step must be longer than 0s",
        "longer than 5m",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    // Every error has its line (those of a whole section name the section).
    assert!(errs.len() >= 16, "{text}");

    let ok = compile_str(
        r#"
[[routes]]
name = "login"
match = { path = "/login", methods = ["POST"] }

[[routes]]
name = "items"
match = { path = "/items/{id}" }

[behaviour]
track = ["ip", "ip/24", "api_key"]
max_entries = 1000
session = ["cookie:sid", "jwt:sub", "header:x-session", "api_key"]
thresholds = { enumeration_run = 30, error_share = 0.6 }
weights = { enumeration = 80 }

[behaviour.stuffing]
route = "login"
username_field = "email"

[[behaviour.flows]]
name = "sign-in-first"
route = "items"
after = "login"
within = "30m"
min_gap = "2s"

[behaviour.attack]
scope = "gateway"

[scoring]
delay_at = 45
throttle = ["2s", "10s"]
under_attack = { challenge_at = 50 }
"#,
        "t",
        Path::new("."),
    )
    .unwrap();
    let b = ok.policy.behaviour.unwrap();
    assert_eq!(b.track.len(), 3);
    assert_eq!(b.max_entries, 1000);
    assert_eq!(b.session.len(), 4);
    assert_eq!(b.thresholds.enumeration_run, 30);
    assert_eq!(
        b.weights[palisade_engine::behaviour::Sig::Enumeration as usize],
        80
    );
    let s = b.stuffing.unwrap();
    assert_eq!((s.route, s.failure_status), (0, vec![401, 403]));
    assert_eq!(s.username_field, "email");
    let f = &b.flows[0];
    assert_eq!((f.route, f.after, f.min_gap), (1, 0, 2_000_000_000));
    assert_eq!(
        b.attack.unwrap().scope,
        palisade_engine::behaviour::AttackScope::Gateway
    );
    assert_eq!(ok.policy.scoring.delay_at, 45);
    assert_eq!(
        ok.policy.scoring.throttle,
        vec![2_000_000_000, 10_000_000_000]
    );
    assert_eq!(ok.policy.scoring.under_attack.challenge_at, 50);
    assert_eq!(ok.policy.scoring.under_attack.block_at, 75);
    // Switched off, it compiles to nothing.
    let off = compile_str("[behaviour]\nenabled = false\n", "t", Path::new(".")).unwrap();
    assert!(off.policy.behaviour.is_none());
}

#[test]
fn store_settings_are_checked_and_passwords_redacted() {
    let errs = errors(
        "[store]\nbackend = \"redis\"\nurl = \"http://x\"\ntimeout = \"1h\"\non_store_error = \"panic\"\nsync = \"eventually\"\n",
    )
    .join("\n");
    for want in [
        "is not a redis:// or rediss:// URL",
        "store.timeout",
        "`panic` is not one of",
        "`eventually` is not one of",
    ] {
        assert!(errs.contains(want), "missing `{want}` in {errs}");
    }
    let errs = errors("[store]\nbackend = \"redis\"\n").join("\n");
    assert!(errs.contains("needs `url`"), "{errs}");
    let ok = compile_str(
        "[store]\nbackend = \"redis\"\nurl = \"redis://:s3cret@10.0.0.5:6379/0\"\non_store_error = \"deny\"\n",
        "t",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(ok.store.on_error, palisade_config::OnStoreError::Deny);
    assert_eq!(ok.store.timeout, std::time::Duration::from_millis(5));
    assert!(matches!(
        &ok.store.backend,
        palisade_config::StoreBackend::Redis { urls, cluster: false } if urls[0].contains("s3cret")
    ));
    let shown = ok.redacted.to_string();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let cluster = compile_str(
        "[store]\nbackend = \"redis\"\nnodes = [\"redis://a:7000\", \"redis://b:7000\"]\n",
        "t",
        Path::new("."),
    )
    .unwrap();
    assert!(matches!(
        cluster.store.backend,
        palisade_config::StoreBackend::Redis { cluster: true, .. }
    ));
}

#[test]
fn bot_ranges_take_a_file_or_a_fetch_table_and_say_which_line_is_wrong() {
    let dir = std::env::temp_dir().join(format!("palisade-cfg-ranges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("googlebot.json"),
        r#"{"prefixes": [{"ipv4Prefix": "66.249.64.0/27"}]}"#,
    )
    .unwrap();
    let src = "[bots.ranges]\ngooglebot = \"googlebot.json\"\ngptbot = { refresh = \"6h\" }\nbingbot = { url = \"https://example.com/bing.json\" }\n";
    let c = compile_str(src, "t.toml", &dir).unwrap();
    let fetched: Vec<_> = c.bot_ranges.iter().map(|r| r.bot.clone()).collect();
    assert_eq!(fetched, ["bingbot", "gptbot"]);
    assert!(
        c.bot_ranges
            .iter()
            .any(|r| r.url == "https://example.com/bing.json")
    );
    let gptbot = c.bot_ranges.iter().find(|r| r.bot == "gptbot").unwrap();
    assert_eq!(gptbot.refresh, 6 * 3600 * 1_000_000_000);

    let e = match compile_str(
        "[bots.ranges]\ngooglebot = \"missing.json\"\ngptbot = { url = \"ftp://x\" }\napplebot = 3\n",
        "t.toml",
        &dir,
    ) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let all = e.join("\n");
    assert!(
        all.contains("4:12") && all.contains("a file name or a table"),
        "the bad value's line: {all}"
    );
    let e = errors("[bots.ranges]\ngooglebot = \"missing.json\"\ngptbot = { url = \"ftp://x\" }\n");
    assert!(
        e.iter()
            .any(|l| l.starts_with("2:") && l.contains("missing.json")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.starts_with("3:") && l.contains("http")),
        "{e:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn response_feedback_is_checked_and_defaulted() {
    let e = errors(
        "[decision.feedback]\nudp = \"localhost\"\nwait = \"2h\"\nmax_pending = 0\n\n\
         [[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
    );
    let all = e.join("\n");
    for path in [
        "decision.feedback.udp",
        "decision.feedback.wait",
        "decision.feedback.max_pending",
    ] {
        assert!(all.contains(path), "{path} not reported: {all}");
    }
    let e = errors(
        "[decision.feedback]\n\n[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
    );
    assert!(e.join("\n").contains("udp ="), "{e:?}");
    let c = compile_str(
        "[decision.feedback]\nunix = \"/run/palisade/feedback.sock\"\n\n\
         [[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
        "t",
        Path::new("."),
    )
    .unwrap();
    let f = c.feedback.unwrap();
    assert_eq!(f.wait, std::time::Duration::from_secs(120));
    assert_eq!(f.max_pending, 100_000);
    assert_eq!(c.decision_path.as_deref(), Some("/_palisade/authz"));
}

/// An OpenAPI spec's operations become routes named by their `operationId`, with the
/// `x-palisade-*` extensions as their settings; `[[routes]]` of the same name refine them; bad
/// extensions are reported.
#[test]
fn spec_operations_are_routes_with_their_extensions() {
    let dir = std::env::temp_dir().join(format!("palisade-spec-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = r#"
openapi: 3.0.3
info: { title: t, version: "1" }
servers: [{ url: /api }]
paths:
  /items/{id}:
    get:
      operationId: getItem
      x-palisade-cost: 5
      x-palisade-auth: api_key
      x-palisade-scopes: ["items:read"]
      x-palisade-limits: ["per-item-reader"]
      parameters: [{ name: id, in: path, required: true, schema: { type: integer } }]
      responses: { "200": { description: ok } }
  /search:
    get:
      operationId: search
      x-palisade-cost: 2
      responses: { "200": { description: ok } }
  /health:
    get:
      responses: { "200": { description: ok } }
"#;
    std::fs::write(dir.join("api.yaml"), spec).unwrap();
    let config = r#"
[[routes]]
name = "search"
match = { path = "/api/search" }
cost = 9

[[limits]]
name = "per-item-reader"
key = ["ip"]
routes = ["search"]
rate = "10/1s"

[openapi]
spec = "api.yaml"
"#;
    let c = compile_str(config, "t.toml", &dir).unwrap();
    let spec_of = |name: &str| {
        c.policy
            .route_specs
            .iter()
            .find(|r| &*r.name == name)
            .unwrap_or_else(|| panic!("no route {name}"))
    };
    let item = spec_of("getItem");
    assert_eq!(item.cost, 5);
    assert_eq!(item.scopes.len(), 1);
    assert_eq!(&*item.scopes[0], "items:read");
    assert!(matches!(
        item.auth,
        palisade_engine::model::principal::AuthRequirement::ApiKey
    ));
    // The config's own route of the same name wins.
    assert_eq!(spec_of("search").cost, 9);
    // Routing: the operation's method and path under the base path.
    let id = c
        .policy
        .routes
        .route_for(&http::Method::GET, "/api/items/7");
    assert_eq!(&*c.policy.route_specs[id].name, "getItem");
    let other = c
        .policy
        .routes
        .route_for(&http::Method::DELETE, "/api/items/7");
    assert_ne!(&*c.policy.route_specs[other].name, "getItem");
    // x-palisade-limits put the route in the limit's routes.
    let limit = c
        .policy
        .limits
        .iter()
        .find(|l| &*l.name == "per-item-reader")
        .unwrap();
    assert_eq!(limit.routes.as_ref().unwrap().len(), 2);

    // Bad extensions are errors with their place in the spec.
    std::fs::write(
        dir.join("api.yaml"),
        spec.replace("x-palisade-cost: 5", "x-palisade-cost: -1")
            .replace("x-palisade-auth: api_key", "x-palisade-auth: password")
            .replace("[\"per-item-reader\"]", "[\"nope\"]"),
    )
    .unwrap();
    let errors = match compile_str(config, "t.toml", &dir) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    let all = errors.join("\n");
    assert!(
        all.contains("paths./items/{id}.get.x-palisade-cost"),
        "{all}"
    );
    assert!(
        all.contains("paths./items/{id}.get.x-palisade-auth"),
        "{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `x-palisade-mode` sets one operation's mode over the spec's; a bad one is reported.
#[test]
fn an_operation_can_have_its_own_mode() {
    use palisade_config::openapi::{OpenApiMode, compile};
    let spec = r#"
openapi: 3.1.0
info: { title: t, version: "1" }
paths:
  /legacy:
    post:
      operationId: legacy
      x-palisade-mode: shadow
      responses: { "200": { description: ok } }
  /items:
    get:
      operationId: items
      responses: { "200": { description: ok } }
"#;
    let api = compile(spec, None, OpenApiMode::Enforce, 1 << 16).unwrap();
    assert_eq!(
        api.mode_for(&http::Method::POST, "/legacy"),
        OpenApiMode::Shadow
    );
    assert_eq!(
        api.mode_for(&http::Method::GET, "/items"),
        OpenApiMode::Enforce
    );
    assert_eq!(
        api.mode_for(&http::Method::GET, "/nowhere"),
        OpenApiMode::Enforce
    );
    let errors = compile(
        &spec.replace("x-palisade-mode: shadow", "x-palisade-mode: loud"),
        None,
        OpenApiMode::Enforce,
        1 << 16,
    )
    .err()
    .unwrap();
    assert!(
        errors[0].contains("paths./legacy.post.x-palisade-mode"),
        "{errors:?}"
    );
}
