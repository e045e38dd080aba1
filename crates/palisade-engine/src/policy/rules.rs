//! Explicit rules: CEL expressions over request facts and signals, each with an action.
//!
//! Rules run after every detector, in configuration order. A rule whose action is `score` adds
//! a signal `rule/<name>` of its weight (every matching one does); the first matching rule with
//! another action decides what the score would have: `allow` (nothing, whatever the score),
//! `tag`, `delay` (progressive throttling), `challenge` or `block`. Rate limits and quotas still
//! refuse what they refuse; the static allow list is the way to exempt a client from
//! everything.
//!
//! Variables are resolved on demand (a rule that reads only `route` never builds the header
//! map): see [`VARIABLES`].

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{CelBool, CelInt, CelMap, CelMapKey, CelNull, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value};

use crate::model::decision::Decision;
use crate::model::facts::RequestFacts;

/// Variables a rule may read, with what they hold.
pub const VARIABLES: [(&str, &str); 20] = [
    ("route", "the matched route's name"),
    ("method", "the request method, e.g. \"GET\""),
    ("path", "the path, without the query"),
    ("query", "the raw query string (\"\" if none)"),
    ("ip", "the client address"),
    ("country", "ISO country code from [intel] (\"\" if unknown)"),
    (
        "asn",
        "{number, name, category}: the client's network from [intel] (category \"\" if unknown)",
    ),
    ("tor", "whether the client is a Tor exit"),
    (
        "bot",
        "{category, name, verified}: what the bot catalog made of the user agent",
    ),
    ("user_agent", "the User-Agent header (\"\" if none)"),
    ("headers", "request headers by lowercase name (first value)"),
    ("score", "the risk score from every signal so far (0-100)"),
    (
        "signals",
        "signal name -> weight, e.g. signals[\"behaviour/errors\"]",
    ),
    ("authenticated", "whether a key or token was verified"),
    ("api_key", "the key's id, or null"),
    ("account", "the caller's account, or null"),
    ("under_attack", "whether the route is in attack mode"),
    (
        "tls",
        "{ja4, ja3, version, sni, alpn, client}: the connection's TLS handshake when Palisade terminates TLS, or as a trusted front reported it (ja3: from a front only; client: the verified client certificate's identity; \"\" where unknown)",
    ),
    (
        "h2",
        "{fingerprint}: the connection's HTTP/2 client fingerprint, Akamai format (\"\" over HTTP/1)",
    ),
    (
        "client",
        "{family, kind, claimed}: the client its fingerprints show per [fingerprints] (family e.g. \"chromium\", \"curl\"; kind \"browser\" or \"library\"; \"\" if unknown) and the browser family its user agent claims (\"\" if none)",
    ),
];

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// The score's action does not apply.
    Allow,
    /// Forward with score headers.
    Tag,
    /// Delay (progressive throttling).
    Delay,
    /// Challenge.
    Challenge,
    /// Refuse.
    Block,
    /// Add a signal of this weight; later rules still run.
    Score(u8),
}

/// A compiled `[[rules]]` entry.
#[derive(Clone)]
pub struct RuleSpec {
    /// Name (`rule/<name>` in logs).
    pub name: Arc<str>,
    /// The expression as written.
    pub source: String,
    /// Compiled.
    pub program: Arc<Program>,
    /// What it does.
    pub action: RuleAction,
    /// Logged as `would_<action>`, never enforced.
    pub shadow: bool,
}

impl std::fmt::Debug for RuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSpec")
            .field("name", &self.name)
            .field("when", &self.source)
            .field("action", &self.action)
            .finish()
    }
}

impl PartialEq for RuleSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.action == other.action
            && self.shadow == other.shadow
    }
}

/// Compiled `[[rules]]`, with the environment they run in.
#[derive(Clone)]
pub struct RulesPolicy {
    /// The CEL environment.
    pub env: Arc<Env>,
    /// The rules, in configuration order.
    pub rules: Vec<RuleSpec>,
}

impl std::fmt::Debug for RulesPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.rules).finish()
    }
}

/// The CEL environment rules compile and run in (the standard library and macros).
pub fn environment() -> Arc<Env> {
    Arc::new(Env::stdlib())
}

/// Compiles an expression, refusing unknown variables (a typo would otherwise never match).
pub fn compile(env: &Env, source: &str) -> Result<Program, String> {
    let program = env.compile(source).map_err(|e| e.to_string())?;
    let refs = program.references();
    let bound = comprehension_variables(source);
    let unknown: Vec<&str> = refs
        .variables()
        .into_iter()
        .filter(|v| !VARIABLES.iter().any(|(k, _)| k == v) && !bound.iter().any(|b| b == v))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = VARIABLES.iter().map(|(k, _)| *k).collect();
        return Err(format!(
            "unknown variable{} `{}`; known: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join("`, `"),
            known.join(", ")
        ));
    }
    Ok(program)
}

/// The routes a rule can match on, when its expression says so: `route == "x"` (or `route in
/// [...]`) in a conjunction makes every other route a certain non-match, so the rule is not run
/// there at all. `None`: any route. (CEL's `&&` is false when either side is false, whatever the
/// other side would give, errors included: skipping it changes no result.)
pub fn route_scope(program: &Program) -> Option<Vec<String>> {
    scope_of(program.expression())
}

fn scope_of(e: &cel::common::ast::IdedExpr) -> Option<Vec<String>> {
    use cel::common::ast::{Expr, LiteralValue, operators};
    let route_name =
        |e: &cel::common::ast::IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == "route");
    let literal = |e: &cel::common::ast::IdedExpr| match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
        _ => None,
    };
    let Expr::Call(call) = &e.expr else {
        return None;
    };
    if call.target.is_some() {
        return None;
    }
    match (call.func_name.as_str(), call.args.as_slice()) {
        (operators::LOGICAL_AND, [a, b]) => match (scope_of(a), scope_of(b)) {
            (Some(x), Some(y)) => Some(x.into_iter().filter(|r| y.contains(r)).collect()),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        },
        (operators::LOGICAL_OR, [a, b]) => {
            let mut x = scope_of(a)?;
            for r in scope_of(b)? {
                if !x.contains(&r) {
                    x.push(r);
                }
            }
            Some(x)
        }
        (operators::EQUALS, [a, b]) if route_name(a) => literal(b).map(|r| vec![r]),
        (operators::EQUALS, [a, b]) if route_name(b) => literal(a).map(|r| vec![r]),
        (operators::IN, [a, b]) if route_name(a) => match &b.expr {
            Expr::List(l) if l.optional_indices.is_empty() => {
                l.elements.iter().map(literal).collect::<Option<Vec<_>>>()
            }
            _ => None,
        },
        _ => None,
    }
}

/// Names bound by the comprehension macros (`x` in `list.exists(x, ...)`), which the
/// expression's references list as variables.
fn comprehension_variables(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in ["all", "exists", "exists_one", "map", "filter"] {
        let pat = format!(".{m}(");
        let mut rest = source;
        while let Some(i) = rest.find(&pat) {
            rest = rest.get(i + pat.len()..).unwrap_or("");
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let after = rest.trim_start().get(name.len()..).unwrap_or("");
            if !name.is_empty() && after.trim_start().starts_with(',') {
                out.push(name);
            }
        }
    }
    out
}

/// Resolves a rule's variables from one request, on demand, each at most once (every rule of
/// the pass shares them).
pub struct Facts<'a> {
    facts: &'a RequestFacts<'a>,
    route: &'a str,
    decision: &'a Decision,
    score: u8,
    /// The [`COMPOUND`] variables' values, made when first read.
    cache: [std::sync::OnceLock<Option<Box<dyn Val + 'a>>>; COMPOUND.len()],
}

/// The variables whose values are built from several facts (maps, and the formatted address):
/// made once per request when first read, as rules may read them more than once. The others
/// are one fact each, made afresh when read: a request then carries (and drops) a few cache
/// slots, not one per variable.
const COMPOUND: [&str; 8] = [
    "asn", "bot", "headers", "signals", "tls", "h2", "client", "ip",
];

impl<'a> Facts<'a> {
    /// A view of one request: its facts, route name, the decision so far and its score.
    pub fn new(
        facts: &'a RequestFacts<'a>,
        route: &'a str,
        decision: &'a Decision,
        score: u8,
    ) -> Self {
        Self {
            facts,
            route,
            decision,
            score,
            cache: std::array::from_fn(|_| std::sync::OnceLock::new()),
        }
    }
}

type Boxed<'a> = Box<dyn Val + 'a>;

fn st(v: &str) -> Boxed<'_> {
    Box::new(CelString::from(v))
}

fn owned(v: String) -> Boxed<'static> {
    Box::new(CelString::from(std::borrow::Cow::Owned::<str>(v)))
}

fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Boxed<'a>)>) -> Boxed<'a> {
    let m: HashMap<CelMapKey<'a>, Boxed<'a>> = pairs
        .into_iter()
        .map(|(k, v)| (CelMapKey::String(CelString::from(k)), v))
        .collect();
    Box::new(CelMap::from(m))
}

impl<'a> Facts<'a> {
    /// A variable's value, borrowing from the request where it can.
    fn value(&self, name: &str) -> Option<Boxed<'a>> {
        let f = self.facts;
        let principal = f.auth.principal();
        let d: &'a Decision = self.decision;
        Some(match name {
            "route" => st(self.route),
            "method" => st(f.method.as_str()),
            "path" => st(f.path),
            "query" => st(f.query.unwrap_or("")),
            "ip" => owned(f.client_ip.to_canonical().to_string()),
            "country" => st(f.ip_info.map_or("", |i| &*i.country)),
            "asn" => {
                let (number, name, category) = match f.ip_info {
                    Some(i) => (
                        i64::from(i.asn),
                        &*i.as_name,
                        i.category.map_or("", |c| c.name()),
                    ),
                    None => (0, "", ""),
                };
                map([
                    ("number", Box::new(CelInt::from(number)) as Boxed<'a>),
                    ("name", st(name)),
                    ("category", st(category)),
                ])
            }
            "tor" => Box::new(CelBool::from(f.ip_info.is_some_and(|i| i.tor_exit))),
            "bot" => {
                let c = d.client.as_ref();
                let verified = c
                    .and_then(|c| c.verification.as_ref())
                    .is_some_and(|(_, st)| *st == palisade_intel::verify::VerifyStatus::Verified);
                map([
                    ("category", st(c.map_or("", |c| c.category.name()))),
                    ("name", st(c.and_then(|c| c.name.as_deref()).unwrap_or(""))),
                    ("verified", Box::new(CelBool::from(verified)) as Boxed<'a>),
                ])
            }
            "user_agent" => st(f
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")),
            "headers" => {
                let mut m: HashMap<CelMapKey<'a>, Boxed<'a>> = HashMap::new();
                for (k, v) in f.headers {
                    if let Ok(v) = v.to_str() {
                        m.entry(CelMapKey::String(CelString::from(k.as_str())))
                            .or_insert_with(|| st(v));
                    }
                }
                Box::new(CelMap::from(m))
            }
            "score" => Box::new(CelInt::from(i64::from(self.score))),
            "signals" => {
                let mut m: HashMap<CelMapKey<'a>, Boxed<'a>> = HashMap::new();
                for sig in d.signals.iter().filter(|x| !x.shadow) {
                    m.insert(
                        CelMapKey::String(CelString::from(&*sig.name)),
                        Box::new(CelInt::from(i64::from(sig.weight))),
                    );
                }
                Box::new(CelMap::from(m))
            }
            "authenticated" => Box::new(CelBool::from(principal.is_some())),
            "api_key" => match principal.and_then(|p| p.key_id.as_deref()) {
                Some(k) => st(k),
                None => Box::new(CelNull),
            },
            "account" => match principal.and_then(|p| p.account.as_deref()) {
                Some(a) => st(a),
                None => Box::new(CelNull),
            },
            "under_attack" => Box::new(CelBool::from(d.under_attack)),
            "tls" => {
                let t = f.tls;
                map([
                    ("ja4", st(t.map_or("", |t| t.ja4))),
                    ("ja3", st(f.ja3.unwrap_or(""))),
                    ("version", st(t.map_or("", |t| t.version))),
                    ("sni", st(t.and_then(|t| t.server_name).unwrap_or(""))),
                    ("alpn", st(t.and_then(|t| t.alpn).unwrap_or(""))),
                    ("client", st(t.and_then(|t| t.client).unwrap_or(""))),
                ])
            }
            "h2" => map([("fingerprint", st(f.h2fp.unwrap_or("")))]),
            "client" => {
                let o = d.observed_client.as_ref();
                let claimed = f
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(palisade_intel::clients::claimed_browser)
                    .unwrap_or("");
                map([
                    ("family", st(o.map_or("", |k| &*k.family))),
                    (
                        "kind",
                        st(match o.map(|k| k.kind) {
                            Some(palisade_intel::clients::Kind::Browser) => "browser",
                            Some(palisade_intel::clients::Kind::Library) => "library",
                            None => "",
                        }),
                    ),
                    ("claimed", st(claimed)),
                ])
            }
            _ => return None,
        })
    }
}

impl VariableResolver for Facts<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match COMPOUND.iter().position(|k| *k == variable) {
            Some(i) => {
                let slot = self.cache.get(i)?;
                let val = slot.get_or_init(|| self.value(variable));
                val.as_deref().map(CowVal::Borrowed)
            }
            None => self.value(variable).map(CowVal::Owned),
        }
    }
}

/// Whether a rule matches: its expression evaluates to `true`. An error (a missing map key, a
/// type mismatch) is no match; `Err` carries it for counting.
pub fn matches(env: &Arc<Env>, rule: &RuleSpec, facts: &Facts<'_>) -> Result<bool, String> {
    let mut ctx = Context::with_env(env.clone());
    ctx.set_variable_resolver(facts);
    match rule.program.execute(&ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("rule {} gave {other:?}, not a bool", rule.name)),
        Err(e) => Err(format!("rule {}: {e}", rule.name)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn every_variable_resolves_and_compound_ones_are_made_once() {
        assert!(
            COMPOUND
                .iter()
                .all(|c| VARIABLES.iter().any(|(k, _)| k == c))
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("x-monitor", http::HeaderValue::from_static("acme"));
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("curl/8.5.0"),
        );
        let facts = RequestFacts {
            method: &http::Method::GET,
            path: "/health",
            query: Some("a=1"),
            headers: &headers,
            client_ip: "192.0.2.7".parse().unwrap(),
            peer_ip: "192.0.2.7".parse().unwrap(),
            now: 0,
            unix_ms: 0,
            auth: crate::model::principal::Auth::Anonymous,
            version: http::Version::HTTP_11,
            ja4h: None,
            hfp: None,
            tls: None,
            h2fp: None,
            ja3: None,
            clearance: None,
            signed_agent: None,
            ip_info: None,
            bot_verification: None,
            username: None,
            probes: &[],
            contract: None,
        };
        let decision = Decision::new(0, Arc::from("default"));
        let view = Facts::new(&facts, "health", &decision, 7);
        for (name, _) in VARIABLES {
            assert!(view.resolve(name).is_some(), "{name}");
        }
        assert!(view.resolve("nope").is_none());
        // A compound value is the same one each time it is read; a simple one is made afresh.
        let addr = |v: Option<CowVal<'_, '_>>| match v {
            Some(CowVal::Borrowed(b)) => Some(std::ptr::from_ref(b).cast::<u8>()),
            _ => None,
        };
        assert!(addr(view.resolve("headers")).is_some());
        assert_eq!(addr(view.resolve("headers")), addr(view.resolve("headers")));
        assert!(matches!(view.resolve("route"), Some(CowVal::Owned(_))));
        let env = environment();
        let rule = |when: &str| RuleSpec {
            name: "r".into(),
            source: when.to_owned(),
            program: Arc::new(compile(&env, when).unwrap()),
            action: RuleAction::Tag,
            shadow: false,
        };
        for (when, want) in [
            (
                r#"headers["x-monitor"] == "acme" && headers["user-agent"].startsWith("curl")"#,
                true,
            ),
            (
                r#"route == "health" && ip == "192.0.2.7" && score == 7 && query == "a=1""#,
                true,
            ),
            (
                r#"asn.number == 0 && bot.name == "" && !authenticated && api_key == null"#,
                true,
            ),
            (
                r#"route == "health" && headers["x-monitor"] == "other""#,
                false,
            ),
        ] {
            assert_eq!(matches(&env, &rule(when), &view), Ok(want), "{when}");
        }
    }

    #[test]
    fn unknown_variables_are_refused_and_comprehension_variables_are_not() {
        let env = environment();
        assert!(compile(&env, "route == \"login\" && score > 3").is_ok());
        assert!(compile(&env, "signals.exists(s, s.startsWith(\"behaviour/\"))").is_ok());
        assert!(
            compile(
                &env,
                "[1, 2].all(n, n > 0) && headers.exists_one(h, h == \"a\")"
            )
            .is_ok()
        );
        let e = compile(&env, "rout == \"x\" || signals.exists(s, s == nme)").unwrap_err();
        assert!(
            e.contains("`rout`") && e.contains("`nme`") && !e.contains("`s`"),
            "{e}"
        );
        assert!(compile(&env, "route ==").is_err());
    }

    #[test]
    fn a_rule_scoped_to_routes_says_which() {
        let env = environment();
        let scope = |src: &str| route_scope(&compile(&env, src).unwrap());
        assert_eq!(
            scope(r#"asn.category == "hosting" && route == "login""#),
            Some(vec!["login".to_owned()])
        );
        assert_eq!(
            scope(r#""login" == route && (score > 3 || bot.verified)"#),
            Some(vec!["login".to_owned()])
        );
        assert_eq!(
            scope(r#"route in ["login", "signup"] && score > 10"#),
            Some(vec!["login".to_owned(), "signup".to_owned()])
        );
        assert_eq!(
            scope(r#"(route == "a" && score > 1) || route == "b""#),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            scope(r#"route == "a" && route == "b""#),
            Some(Vec::new()),
            "can never match"
        );
        // Not scoped: a disjunction with an unscoped side, a negation, another variable.
        assert_eq!(scope(r#"route == "a" || score > 50"#), None);
        assert_eq!(scope(r#"route != "login""#), None);
        assert_eq!(scope(r#"!(route == "login")"#), None);
        assert_eq!(scope(r#"path == "/login""#), None);
        assert_eq!(scope(r#"route.startsWith("log")"#), None);
    }
}
