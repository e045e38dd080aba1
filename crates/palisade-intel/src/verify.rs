//! Verified good bots: a client that claims to be Googlebot, Bingbot, GPTBot and the like is
//! checked against the operator's published address ranges (the `{"prefixes": [{"ipv4Prefix":
//! ...}]}` JSON Google, Bing and OpenAI publish) and/or forward-confirmed reverse DNS (the PTR
//! name must end in one of the operator's domains, and that name must resolve back to the
//! address). The DNS part is done by the gateway, off the request path; this module holds the
//! pure parts.

use std::net::IpAddr;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};

use crate::ipinfo::to_u128;

/// The state of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerifyStatus {
    /// The address belongs to the operator.
    Verified,
    /// It does not: the claim is false.
    Spoofed,
    /// A DNS check is under way.
    Pending,
    /// Nothing to check the claim against (a bot that publishes only ranges, none loaded): not
    /// verified, but not known to be false either.
    Unverifiable,
}

impl VerifyStatus {
    /// The name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            VerifyStatus::Verified => "verified",
            VerifyStatus::Spoofed => "spoofed",
            VerifyStatus::Pending => "pending",
            VerifyStatus::Unverifiable => "unverifiable",
        }
    }
}

/// One verifiable bot.
#[derive(Debug, Clone)]
pub struct VerifiedBot {
    /// Its name (`googlebot`).
    pub name: Arc<str>,
    /// What a user agent claiming it matches.
    claims: Regex,
    /// Published ranges given in the config.
    ranges: Ranges,
    /// Domains the reverse DNS name must end in (empty: ranges only).
    pub rdns: Vec<String>,
}

fn cidr_bounds(s: &str) -> Option<(u128, u128)> {
    let (addr, len) = match s.trim().split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (s.trim(), None),
    };
    let ip: IpAddr = addr.trim().parse().ok()?;
    let (bits, width) = match ip {
        IpAddr::V4(_) => (len.unwrap_or(32) + 96, 128),
        IpAddr::V6(_) => (len.unwrap_or(128), 128),
    };
    if bits > width {
        return None;
    }
    let start = to_u128(ip);
    let host = if bits == 128 { 0 } else { u128::MAX >> bits };
    Some((start & !host, start | host))
}

/// Parses a published ranges document (`{"prefixes": [{"ipv4Prefix": ...}|{"ipv6Prefix": ...}]}`)
/// or a plain list of CIDRs (one per line, `#` comments).
pub fn parse_ranges(text: &str) -> Result<Vec<(u128, u128)>, String> {
    let trimmed = text.trim_start();
    let mut out = Vec::new();
    if trimmed.starts_with('{') {
        // Stray zero-width spaces have appeared in published files; drop them before parsing.
        let clean: String = text.chars().filter(|c| *c != '\u{200b}').collect();
        let v: serde_json::Value =
            serde_json::from_str(&clean).map_err(|e| format!("not a ranges document: {e}"))?;
        let prefixes = v
            .get("prefixes")
            .and_then(|p| p.as_array())
            .ok_or("no `prefixes` array")?;
        for p in prefixes {
            let s = p
                .get("ipv4Prefix")
                .or_else(|| p.get("ipv6Prefix"))
                .and_then(|s| s.as_str())
                .ok_or("a prefix without ipv4Prefix or ipv6Prefix")?;
            out.push(cidr_bounds(s).ok_or_else(|| format!("`{s}` is not a CIDR"))?);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let l = line.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            out.push(cidr_bounds(l).ok_or_else(|| format!("line {}: `{l}` is not a CIDR", i + 1))?);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A set of address ranges: sorted, merged, inclusive `u128` bounds (IPv4 mapped into IPv6), so
/// one binary search decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    /// The set of `ranges` (in any order, overlapping or not).
    pub fn new(mut ranges: Vec<(u128, u128)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Self(merged)
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let x = to_u128(ip);
        let i = self.0.partition_point(|r| r.0 <= x);
        i.checked_sub(1)
            .and_then(|i| self.0.get(i))
            .is_some_and(|r| r.1 >= x)
    }

    /// Disjoint ranges in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl VerifiedBot {
    /// A verifiable bot: `claims` is a case-insensitive regular expression on the user agent.
    pub fn new(
        name: &str,
        claims: &str,
        ranges: Vec<(u128, u128)>,
        rdns: Vec<String>,
    ) -> Result<Self, String> {
        let claims = RegexBuilder::new(claims)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("claims: {e}"))?;
        Ok(Self {
            name: Arc::from(name),
            claims,
            ranges: Ranges::new(ranges),
            rdns: rdns
                .into_iter()
                .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether a user agent claims to be this bot.
    pub fn claimed_by(&self, user_agent: &str) -> bool {
        self.claims.is_match(user_agent)
    }

    /// Whether an address is in the published ranges given in the config.
    pub fn in_ranges(&self, ip: IpAddr) -> bool {
        self.ranges.contains(ip)
    }

    /// Whether a reverse DNS name is in one of the operator's domains.
    pub fn rdns_matches(&self, name: &str) -> bool {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        self.rdns.iter().any(|d| {
            n.len() > d.len() && n.ends_with(d.as_str()) && n[..n.len() - d.len()].ends_with('.')
        })
    }

    /// What can be said without DNS: `Some` if the ranges decide, `None` if DNS must.
    pub fn check_without_dns(&self, ip: IpAddr) -> Option<VerifyStatus> {
        self.check_with(ip, None)
    }

    /// [`Self::check_without_dns`], with `fetched` ranges (published ranges the gateway fetched
    /// itself) counting as the bot's own.
    pub fn check_with(&self, ip: IpAddr, fetched: Option<&Ranges>) -> Option<VerifyStatus> {
        let fetched = fetched.filter(|r| !r.is_empty());
        if self.in_ranges(ip) || fetched.is_some_and(|r| r.contains(ip)) {
            Some(VerifyStatus::Verified)
        } else if !self.rdns.is_empty() {
            None
        } else if self.ranges.is_empty() && fetched.is_none() {
            Some(VerifyStatus::Unverifiable)
        } else {
            Some(VerifyStatus::Spoofed)
        }
    }
}

/// A crawler whose operator publishes how to verify it, as built in.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinBot {
    /// Name in logs and in `[bots.ranges]`.
    pub name: &'static str,
    /// Regular expression (case-insensitive) on user agents that claim to be it.
    pub claims: &'static str,
    /// Domains its forward-confirmed reverse DNS names end in (empty: ranges only).
    pub rdns: &'static [&'static str],
    /// Where its operator publishes its address ranges (`{"prefixes": [...]}`), if anywhere.
    pub ranges_url: Option<&'static str>,
}

/// When the built-in verification rules were last checked against the operators' documentation.
pub const BUILTIN_AS_OF: &str = "2026-12-06";

/// The crawlers verified out of the box (when a category is `allow_verified` and the config
/// names no bot of the same name), from each operator's published instructions (see the README,
/// "Verified good bots"). Those that publish only ranges are verified once their ranges are
/// loaded (`[bots.ranges]`); until then their claims are unverifiable, never verified.
pub const BUILTIN: &[BuiltinBot] = &[
    BuiltinBot {
        name: "googlebot",
        claims: r"Googlebot|Google-InspectionTool|GoogleOther|Storebot-Google|AdsBot-Google|Mediapartners-Google|APIs-Google|FeedFetcher-Google|Google-Site-Verification",
        rdns: &["googlebot.com", "google.com", "googleusercontent.com"],
        ranges_url: Some(
            "https://developers.google.com/static/search/apis/ipranges/googlebot.json",
        ),
    },
    BuiltinBot {
        name: "bingbot",
        claims: r"bingbot|BingPreview|msnbot|adidxbot",
        rdns: &["search.msn.com"],
        ranges_url: Some("https://www.bing.com/toolbox/bingbot.json"),
    },
    BuiltinBot {
        name: "applebot",
        claims: r"Applebot",
        rdns: &["applebot.apple.com"],
        ranges_url: Some("https://search.developer.apple.com/applebot.json"),
    },
    BuiltinBot {
        name: "duckduckbot",
        claims: r"DuckDuckBot|DuckAssistBot",
        rdns: &[],
        ranges_url: Some("https://duckduckgo.com/duckduckbot.json"),
    },
    BuiltinBot {
        name: "yandexbot",
        claims: r"YandexBot|YandexImages|YandexMobileBot|YandexAccessibilityBot",
        rdns: &["yandex.ru", "yandex.net", "yandex.com"],
        ranges_url: None,
    },
    BuiltinBot {
        name: "baiduspider",
        claims: r"Baiduspider",
        rdns: &["baidu.com", "baidu.jp"],
        ranges_url: None,
    },
    BuiltinBot {
        name: "amazonbot",
        claims: r"Amazonbot",
        rdns: &["crawl.amazonbot.amazon"],
        ranges_url: None,
    },
    BuiltinBot {
        name: "petalbot",
        claims: r"PetalBot",
        rdns: &["petalsearch.com"],
        ranges_url: None,
    },
    BuiltinBot {
        name: "gptbot",
        claims: r"GPTBot",
        rdns: &[],
        ranges_url: Some("https://openai.com/gptbot.json"),
    },
    BuiltinBot {
        name: "oai-searchbot",
        claims: r"OAI-SearchBot",
        rdns: &[],
        ranges_url: Some("https://openai.com/searchbot.json"),
    },
    BuiltinBot {
        name: "chatgpt-user",
        claims: r"ChatGPT-User",
        rdns: &[],
        ranges_url: Some("https://openai.com/chatgpt-user.json"),
    },
    BuiltinBot {
        name: "perplexitybot",
        claims: r"PerplexityBot",
        rdns: &[],
        ranges_url: Some("https://www.perplexity.ai/perplexitybot.json"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_documents_and_rdns_names() {
        let r = parse_ranges(
            r#"{"creationTime": "x", "prefixes": [{"ipv4Prefix": "66.249.64.0/27"}, {"ipv6Prefix": "2001:4860:4801:10::/64"}]}"#,
        )
        .unwrap();
        let g = VerifiedBot::new(
            "googlebot",
            "googlebot",
            r,
            vec![".googlebot.com".into(), "google.com".into()],
        )
        .unwrap();
        assert!(g.claimed_by(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        ));
        assert_eq!(
            g.check_without_dns("66.249.64.31".parse().unwrap()),
            Some(VerifyStatus::Verified)
        );
        assert_eq!(
            g.check_without_dns("2001:4860:4801:10::7".parse().unwrap()),
            Some(VerifyStatus::Verified)
        );
        assert_eq!(g.check_without_dns("66.249.64.32".parse().unwrap()), None);
        assert!(g.rdns_matches("crawl-66-249-66-1.googlebot.com."));
        assert!(g.rdns_matches("rate-limited-proxy-66-249-90-77.google.com"));
        assert!(!g.rdns_matches("googlebot.com.evil.example"));
        assert!(!g.rdns_matches("evilgooglebot.com"));
        let ranges_only = VerifiedBot::new(
            "gptbot",
            "gptbot",
            parse_ranges("20.171.206.0/24\n").unwrap(),
            vec![],
        )
        .unwrap();
        assert_eq!(
            ranges_only.check_without_dns("1.2.3.4".parse().unwrap()),
            Some(VerifyStatus::Spoofed)
        );
        assert!(parse_ranges("{\"prefixes\": [{\"ipv4Prefix\": \"nope\"}]}").is_err());
    }

    #[test]
    fn builtins_compile_and_claims_name_their_bot() {
        for b in BUILTIN {
            let v = VerifiedBot::new(b.name, b.claims, Vec::new(), Vec::new()).unwrap();
            assert!(
                b.rdns
                    .iter()
                    .all(|d| !d.starts_with('.') && d.contains('.')),
                "{}",
                b.name
            );
            let _ = v;
        }
        let claim = |ua: &str| {
            BUILTIN
                .iter()
                .find(|b| {
                    VerifiedBot::new(b.name, b.claims, Vec::new(), Vec::new())
                        .unwrap()
                        .claimed_by(ua)
                })
                .map(|b| b.name)
        };
        assert_eq!(
            claim("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
            Some("googlebot")
        );
        assert_eq!(
            claim("Mozilla/5.0 (compatible; bingbot/2.0)"),
            Some("bingbot")
        );
        assert_eq!(
            claim("Mozilla/5.0 AppleWebKit/537.36 (compatible; GPTBot/1.2)"),
            Some("gptbot")
        );
        assert_eq!(claim("curl/8.5.0"), None);
        // Without ranges or DNS domains, a claim is unverifiable: neither verified nor false.
        let bare = VerifiedBot::new("gptbot", "GPTBot", Vec::new(), Vec::new()).unwrap();
        assert_eq!(
            bare.check_without_dns("203.0.113.9".parse().unwrap()),
            Some(VerifyStatus::Unverifiable)
        );
    }

    #[test]
    fn ranges_merge_and_fetched_ranges_verify() {
        let doc = parse_ranges(
            r#"{"prefixes": [{"ipv4Prefix": "20.0.0.0/25"}, {"ipv4Prefix": "20.0.0.128/25"}, {"ipv4Prefix": "20.0.0.64/26"}, {"ipv6Prefix": "2600:1f28::/32"}]}"#,
        )
        .unwrap();
        let r = Ranges::new(doc);
        assert_eq!(r.len(), 2, "adjacent and nested ranges merge: {r:?}");
        for ip in ["20.0.0.0", "20.0.0.255", "::ffff:20.0.0.7", "2600:1f28::1"] {
            assert!(r.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["19.255.255.255", "20.0.1.0", "2600:1f29::1", "::1"] {
            assert!(!r.contains(ip.parse().unwrap()), "{ip}");
        }
        // A bot with no ranges and no reverse-DNS domains cannot be verified by itself...
        let gpt = VerifiedBot::new("gptbot", "gptbot", Vec::new(), Vec::new()).unwrap();
        let ip = "20.0.0.9".parse().unwrap();
        assert_eq!(gpt.check_with(ip, None), Some(VerifyStatus::Unverifiable));
        assert_eq!(
            gpt.check_with(ip, Some(&Ranges::new(Vec::new()))),
            Some(VerifyStatus::Unverifiable)
        );
        // ...the ranges its operator publishes decide once fetched.
        assert_eq!(gpt.check_with(ip, Some(&r)), Some(VerifyStatus::Verified));
        assert_eq!(
            gpt.check_with("30.0.0.9".parse().unwrap(), Some(&r)),
            Some(VerifyStatus::Spoofed)
        );
    }
}
