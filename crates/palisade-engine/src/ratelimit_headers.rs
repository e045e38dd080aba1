//! RateLimit header fields as in draft-ietf-httpapi-ratelimit-headers-10, plus the customary
//! `X-RateLimit-*` trio.
//!
//! `RateLimit-Policy` and `RateLimit` are RFC 9651 Lists of Items whose bare item is the policy
//! name as a String, with Integer parameters `q`, `w` and `r`, `t`. The `X-RateLimit-*` values
//! describe the most restrictive advertised limit; `X-RateLimit-Reset` is in seconds from now,
//! like `t`.

use crate::model::decision::LimitOutcome;
use crate::model::header_item::HeaderItem;
use crate::state::limiter::ceil_secs;

/// One advertised limit's current state.
#[derive(Debug, Clone, Copy)]
pub struct HeaderEntry<'a> {
    /// The limit's rendered items.
    pub item: &'a HeaderItem,
    /// `q`, for `X-RateLimit-Limit`.
    pub quota: u64,
    /// `r`.
    pub remaining: u64,
    /// `t`, in seconds.
    pub reset_secs: u64,
}

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
/// `items` are the policy's [`HeaderItem`]s, indexed like its limits.
pub fn render(outcomes: &[LimitOutcome], items: &[HeaderItem]) -> Option<RateLimitHeaders> {
    render_entries(
        outcomes.iter().filter(|o| o.headers).filter_map(|o| {
            Some(HeaderEntry {
                item: items.get(o.index)?,
                quota: o.quota,
                remaining: o.verdict.remaining,
                reset_secs: ceil_secs(o.verdict.reset),
            })
        }),
        true,
    )
}

/// Builds the headers from advertised entries; `None` if there are none. The `X-RateLimit-*`
/// trio describes the entry with the fewest units remaining. `policy` stays empty unless
/// `with_policy`.
pub fn render_entries<'a>(
    entries: impl IntoIterator<Item = HeaderEntry<'a>>,
    with_policy: bool,
) -> Option<RateLimitHeaders> {
    // Sized for a handful of limits, so that rendering does not grow the strings piecemeal.
    let mut out = RateLimitHeaders {
        policy: if with_policy {
            String::with_capacity(256)
        } else {
            String::new()
        },
        ratelimit: String::with_capacity(256),
        ..RateLimitHeaders::default()
    };
    let mut tightest: Option<HeaderEntry<'a>> = None;
    for e in entries {
        if !out.ratelimit.is_empty() {
            if with_policy {
                out.policy.push_str(", ");
            }
            out.ratelimit.push_str(", ");
        }
        if with_policy {
            out.policy.push_str(&e.item.policy);
        }
        out.ratelimit.push_str(&e.item.name);
        out.ratelimit.push_str(";r=");
        out.ratelimit
            .push_str(itoa::Buffer::new().format(e.remaining));
        out.ratelimit.push_str(";t=");
        out.ratelimit
            .push_str(itoa::Buffer::new().format(e.reset_secs));
        if tightest.is_none_or(|t| e.remaining < t.remaining) {
            tightest = Some(e);
        }
    }
    let t = tightest?;
    out.x_limit = t.quota;
    out.x_remaining = t.remaining;
    out.x_reset = t.reset_secs;
    Some(out)
}
