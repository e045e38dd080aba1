//! The parts of RateLimit header items that never change, rendered once per policy: for each
//! limit and each daily budget.

use std::sync::Arc;

/// The parts of a limit's header items that never change, rendered once per policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderItem {
    /// The policy name as an sf-string, e.g. `"per-ip"`.
    pub name: String,
    /// The whole `RateLimit-Policy` item, e.g. `"per-ip";q=100;w=10`.
    pub policy: String,
}

impl HeaderItem {
    /// Renders a limit's items.
    pub fn for_limit(name: &str, quota: u64, window_secs: u64, cost_unit: bool) -> Self {
        let name = sf_string(name);
        let mut policy = String::with_capacity(name.len() + 32);
        policy.push_str(&name);
        policy.push_str(";q=");
        policy.push_str(itoa::Buffer::new().format(quota));
        policy.push_str(";w=");
        policy.push_str(itoa::Buffer::new().format(window_secs.max(1)));
        if cost_unit {
            policy.push_str(";palisade-unit=\"cost\"");
        }
        Self { name, policy }
    }

    /// Renders a daily quota's item: `"<name>";q=N;w=86400;palisade-unit="<unit>"`.
    pub fn for_daily(name: &str, quota: u64, unit: &str) -> Self {
        let name = sf_string(name);
        let mut policy = String::with_capacity(name.len() + 48);
        policy.push_str(&name);
        policy.push_str(";q=");
        policy.push_str(itoa::Buffer::new().format(quota));
        policy.push_str(";w=86400;palisade-unit=");
        policy.push_str(&sf_string(unit));
        Self { name, policy }
    }
}

/// Header items for a quota's two budgets, rendered once.
#[derive(Debug, Clone)]
pub struct QuotaItems {
    /// For the request budget: `"<name>";q=N;w=86400`.
    pub requests: Option<Arc<HeaderItem>>,
    /// For the spend budget, in micro-dollars.
    pub spend: Option<Arc<HeaderItem>>,
}

impl QuotaItems {
    /// Renders the items of a quota.
    pub fn new(name: &str, requests: Option<u64>, spend_micros: Option<u64>) -> Self {
        Self {
            requests: requests.map(|q| Arc::new(HeaderItem::for_daily(name, q, "requests"))),
            spend: spend_micros.map(|q| {
                Arc::new(HeaderItem::for_daily(
                    &format!("{name}-usd"),
                    q,
                    "usd-micros",
                ))
            }),
        }
    }
}

/// An RFC 9651 String: printable ASCII, with `"` and `\` escaped; anything else is dropped (the
/// config only admits ASCII names, this is belt and braces).
pub(crate) fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}
