//! RateLimit header fields as in draft-ietf-httpapi-ratelimit-headers-10, plus the customary
//! `X-RateLimit-*` trio.
//!
//! `RateLimit-Policy` and `RateLimit` are RFC 9651 Lists of Items whose bare item is the policy
//! name as a String, with Integer parameters `q`, `w` and `r`, `t`. The `X-RateLimit-*` values
//! describe the most restrictive advertised limit; `X-RateLimit-Reset` is in seconds from now,
//! like `t`.

use std::fmt::Write as _;

use crate::decision::LimitOutcome;
use crate::limits::{Unit, ceil_secs};

/// Header values for one response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimitHeaders {
    /// `RateLimit-Policy`.
    pub policy: String,
    /// `RateLimit`.
    pub ratelimit: String,
    /// `X-RateLimit-Limit`.
    pub x_limit: u64,
    /// `X-RateLimit-Remaining`.
    pub x_remaining: u64,
    /// `X-RateLimit-Reset`.
    pub x_reset: u64,
}

/// Builds the headers for the limits that applied and are advertised; `None` if there are none.
pub fn render(outcomes: &[LimitOutcome]) -> Option<RateLimitHeaders> {
    let mut out = RateLimitHeaders::default();
    let mut tightest: Option<&LimitOutcome> = None;
    for o in outcomes.iter().filter(|o| o.headers) {
        let sep = if out.policy.is_empty() { "" } else { ", " };
        let name = sf_string(&o.name);
        let _ = write!(
            out.policy,
            "{sep}{name};q={};w={}",
            o.quota,
            o.window_secs.max(1)
        );
        if o.unit == Unit::Cost {
            out.policy.push_str(";palisade-unit=\"cost\"");
        }
        let _ = write!(
            out.ratelimit,
            "{sep}{name};r={};t={}",
            o.verdict.remaining,
            ceil_secs(o.verdict.reset)
        );
        if tightest.is_none_or(|t| o.verdict.remaining < t.verdict.remaining) {
            tightest = Some(o);
        }
    }
    let t = tightest?;
    out.x_limit = t.quota;
    out.x_remaining = t.verdict.remaining;
    out.x_reset = ceil_secs(t.verdict.reset);
    Some(out)
}

/// An RFC 9651 String: printable ASCII, with `"` and `\` escaped; anything else is dropped (the
/// config only admits ASCII names, this is belt and braces).
fn sf_string(s: &str) -> String {
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
