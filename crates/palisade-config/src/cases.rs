//! Runs a config's `[[tests]]`: each request goes through a fresh engine built from the policy,
//! in file order, sharing state (so "the sixth login in a minute is limited" can be written as
//! a case with `repeat = 6`). The clock stands still unless a case spaces its sends (`every`);
//! then it moves on, for that case and the ones after it.

use palisade_engine::{Engine, RequestFacts};

use crate::compile::Compiled;

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// Case name.
    pub name: String,
    /// Line of the case in the file.
    pub line: Option<usize>,
    /// Whether the expectation held.
    pub passed: bool,
    /// The logged action the engine decided.
    pub got_action: String,
    /// The rule that decided it.
    pub got_rule: String,
    /// What was expected.
    pub expected: String,
}

/// Runs every case.
pub fn run_cases(compiled: &Compiled) -> Vec<CaseOutcome> {
    let engine = Engine::new(compiled.policy.clone(), None);
    let mut now = 1_000 * palisade_engine::clock::SECOND;
    let mut unix_ms = 1_700_000_000_000u64;
    compiled
        .tests
        .iter()
        .map(|case| {
            let mut last = None;
            for n in 1..=case.repeat {
                let path = if case.path.contains("{n}") {
                    std::borrow::Cow::Owned(case.path.replace("{n}", &n.to_string()))
                } else {
                    std::borrow::Cow::Borrowed(case.path.as_str())
                };
                let probes = compiled
                    .policy
                    .probes
                    .as_ref()
                    .map(|p| p.scan_head(&path, case.query.as_deref(), &case.headers))
                    .unwrap_or_default();
                let facts = RequestFacts {
                    method: &case.method,
                    path: &path,
                    query: case.query.as_deref(),
                    headers: &case.headers,
                    client_ip: case.ip,
                    peer_ip: case.ip,
                    now,
                    unix_ms,
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
                    probes: &probes.hits,
                    contract: None,
                    auth: match &case.principal {
                        Some(p) => palisade_engine::model::principal::Auth::Principal(p),
                        None => palisade_engine::model::principal::Auth::Anonymous,
                    },
                };
                last = Some(engine.evaluate(&facts));
                now += case.every;
                unix_ms += case.every / 1_000_000;
            }
            let (got_action, got_rule) = match last {
                Some(Ok(d)) => (d.logged_action().to_owned(), d.logged_rule().to_string()),
                Some(Err(e)) => ("error".to_owned(), e.to_string()),
                None => ("none".to_owned(), String::new()),
            };
            let passed = got_action == case.expect_action
                && case.expect_rule.as_ref().is_none_or(|r| *r == got_rule);
            let expected = match &case.expect_rule {
                Some(r) => format!("{} by {r}", case.expect_action),
                None => case.expect_action.clone(),
            };
            CaseOutcome {
                name: case.name.clone(),
                line: case.line,
                passed,
                got_action,
                got_rule,
                expected,
            }
        })
        .collect()
}
