//! `[[tests]]`: the policy's own cases, run by `palisade check`.

use std::sync::Arc;

use http::{HeaderName, Method};

use super::*;
use crate::error::Collector;
use crate::raw::*;

/// `[[tests]]`.
pub(super) fn tests(raw: &RawConfig, c: &mut Collector<'_>) -> Vec<TestCase> {
    let mut tests = Vec::new();
    for t in &raw.tests {
        let path = format!("tests[{}]", t.index);
        let method = t
            .request
            .method
            .as_ref()
            .map(|m| {
                methods(
                    std::slice::from_ref(m),
                    &format!("{path}.request.method"),
                    c,
                )
                .into_iter()
                .next()
                .unwrap_or(Method::GET)
            })
            .unwrap_or(Method::GET);
        let full = t.request.path.get_ref();
        if !full.starts_with('/') {
            c.at(
                sp(&t.request.path),
                format!("{path}.request.path"),
                "path must start with '/'",
            );
        }
        let (p, q) = match full.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (full.clone(), None),
        };
        let ip = opt(
            &t.request.ip,
            std::net::IpAddr::from([198, 51, 100, 1]),
            &format!("{path}.request.ip"),
            c,
            |s| s.parse().map_err(|_| format!("`{s}` is not an IP address")),
        );
        let mut headers = http::HeaderMap::new();
        for (k, v) in &t.request.headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => {
                    headers.append(k, v);
                }
                _ => c.at(
                    sp(&t.request.path),
                    format!("{path}.request.headers"),
                    format!("`{k}: {v}` is not a valid header"),
                ),
            }
        }
        let every = opt(
            &t.request.every,
            0,
            &format!("{path}.request.every"),
            c,
            |s| palisade_engine::units::parse_duration(s).map_err(|e| e.to_string()),
        );
        let want = t.expect.action.get_ref();
        const ACTIONS: [&str; 12] = [
            "allow",
            "unauthorized",
            "tag",
            "delay",
            "challenge",
            "limit",
            "block",
            "would_tag",
            "would_delay",
            "would_challenge",
            "would_limit",
            "would_block",
        ];
        if !ACTIONS.contains(&want.as_str()) {
            c.at(
                sp(&t.expect.action),
                format!("{path}.expect.action"),
                format!("`{want}` is not one of: {}", ACTIONS.join(", ")),
            );
        }
        let line = Some(c.line_of(t.request.path.span().start));
        tests.push(TestCase {
            name: t.name.clone().unwrap_or_else(|| format!("{method} {full}")),
            method,
            path: p,
            query: q,
            ip,
            headers,
            repeat: t.request.repeat.unwrap_or(1).clamp(1, 100_000),
            every,
            expect_action: want.clone(),
            expect_rule: t.expect.rule.clone(),
            principal: t.request.api_key.as_ref().map(|k| {
                Arc::new(Principal {
                    kind: palisade_engine::model::principal::PrincipalKind::ApiKey,
                    key_id: Some(Arc::from(k.id.as_deref().unwrap_or("test"))),
                    account: k.account.as_deref().map(Arc::from),
                    scopes: k.scopes.iter().map(|s| Arc::from(s.as_str())).collect(),
                    claims: Vec::new(),
                    rate: None,
                    budget: Default::default(),
                    budget_items: None,
                    created_ms: None,
                })
            }),
            line,
        });
    }
    tests
}
