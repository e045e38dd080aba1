//! `[challenge]`: the proof-of-work, its clearance, and the page's texts.

use std::collections::BTreeMap;

use super::*;
use crate::error::Collector;
use crate::raw::RawChallenge;

/// What a clearance is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeBind {
    /// The client address.
    Ip,
    /// The client's /24 (IPv6 /48).
    Ip24,
    /// The `User-Agent` header.
    UserAgent,
    /// The connection's JA4 (when Palisade terminates TLS).
    Ja4,
    /// The API key presented.
    ApiKey,
}

/// Compiled `[challenge]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeSettings {
    /// Leading zero bits at the challenge threshold.
    pub difficulty: u8,
    /// Leading zero bits at most.
    pub max_difficulty: u8,
    /// Seconds a challenge may take.
    pub ttl_secs: u64,
    /// Seconds a clearance lasts.
    pub clearance_ttl_secs: u64,
    /// Points a clearance takes off the score.
    pub discount: u8,
    /// What a clearance is bound to.
    pub bind: Vec<ChallengeBind>,
    /// Seconds the no-JavaScript path waits (0: off).
    pub nojs_wait_secs: u64,
    /// Seconds a no-JavaScript clearance lasts.
    pub nojs_clearance_ttl_secs: u64,
    /// Page texts overridden.
    pub texts: BTreeMap<String, String>,
    /// Weights of `browser/webdriver`, `browser/headless`, `browser/no_languages`,
    /// `browser/no_interaction`.
    pub browser_signals: [u8; 4],
}

/// The browser signals' names in `[challenge] browser_signals`, in order.
pub const BROWSER_SIGNAL_NAMES: [&str; 4] =
    ["webdriver", "headless", "no_languages", "no_interaction"];

impl Default for ChallengeSettings {
    fn default() -> Self {
        Self {
            difficulty: 16,
            max_difficulty: 20,
            ttl_secs: 300,
            clearance_ttl_secs: 3600,
            discount: 30,
            bind: vec![ChallengeBind::Ip24, ChallengeBind::UserAgent],
            nojs_wait_secs: 5,
            nojs_clearance_ttl_secs: 900,
            texts: BTreeMap::new(),
            browser_signals: [40, 40, 15, 0],
        }
    }
}

/// The texts a page has, with their defaults.
pub const CHALLENGE_TEXTS: [(&str, &str); 6] = [
    ("title", "Checking your browser"),
    (
        "body",
        "This site checks that requests come from people's browsers. Your browser is solving a small puzzle; you will be on your way in a moment.",
    ),
    ("solving", "Working…"),
    ("done", "Done. Taking you back…"),
    (
        "nojs",
        "JavaScript is off: this page will reload by itself in a few seconds to let you through.",
    ),
    (
        "post",
        "Your form was not sent. You are verified now: go back and submit it again.",
    ),
];

fn secs(
    v: &Option<Spanned<String>>,
    default: u64,
    path: &str,
    min: u64,
    max: u64,
    c: &mut Collector<'_>,
) -> u64 {
    let Some(s) = v else {
        return default;
    };
    match palisade_engine::units::parse_duration(s.get_ref()) {
        Ok(n) => {
            let secs = n / palisade_engine::clock::SECOND;
            if (min..=max).contains(&secs) {
                secs
            } else {
                c.at(sp(s), path, format!("must be between {min} s and {max} s"));
                default
            }
        }
        Err(e) => {
            c.at(sp(s), path, e.to_string());
            default
        }
    }
}

/// `[challenge]`.
pub(super) fn compile_challenge(r: &RawChallenge, c: &mut Collector<'_>) -> ChallengeSettings {
    let d = ChallengeSettings::default();
    let bits = |v: &Option<Spanned<u64>>, default: u8, path: &str, c: &mut Collector<'_>| match v {
        Some(b) if (4..=32).contains(b.get_ref()) => *b.get_ref() as u8,
        Some(b) => {
            c.at(sp(b), path, "must be between 4 and 32 bits");
            default
        }
        None => default,
    };
    let difficulty = bits(&r.difficulty, d.difficulty, "challenge.difficulty", c);
    let max_difficulty = bits(
        &r.max_difficulty,
        d.max_difficulty.max(difficulty),
        "challenge.max_difficulty",
        c,
    );
    if max_difficulty < difficulty {
        c.at(
            r.max_difficulty.as_ref().and_then(sp),
            "challenge.max_difficulty",
            "max_difficulty must be at least difficulty",
        );
    }
    let discount = match &r.discount {
        Some(v) if *v.get_ref() <= 100 => *v.get_ref() as u8,
        Some(v) => {
            c.at(sp(v), "challenge.discount", "must be between 0 and 100");
            d.discount
        }
        None => d.discount,
    };
    let bind = match &r.bind {
        None => d.bind.clone(),
        Some(list) => list
            .iter()
            .filter_map(|b| {
                Some(match b.get_ref().as_str() {
                    "ip" => ChallengeBind::Ip,
                    "ip/24" => ChallengeBind::Ip24,
                    "user_agent" => ChallengeBind::UserAgent,
                    "ja4" => ChallengeBind::Ja4,
                    "api_key" => ChallengeBind::ApiKey,
                    other => {
                        c.at(
                            sp(b),
                            "challenge.bind",
                            format!("`{other}` is not one of: ip, ip/24, user_agent, ja4, api_key"),
                        );
                        return None;
                    }
                })
            })
            .collect(),
    };
    for k in r.texts.keys() {
        if !CHALLENGE_TEXTS.iter().any(|(n, _)| n == k) {
            let names: Vec<&str> = CHALLENGE_TEXTS.iter().map(|(n, _)| *n).collect();
            c.at(
                None,
                "challenge.texts",
                format!("`{k}` is not a text of the page: {}", names.join(", ")),
            );
        }
    }
    let mut browser_signals = d.browser_signals;
    for (k, v) in &r.browser_signals {
        match BROWSER_SIGNAL_NAMES.iter().position(|n| n == k) {
            Some(i) if *v.get_ref() <= 100 => {
                if let Some(w) = browser_signals.get_mut(i) {
                    *w = *v.get_ref() as u8;
                }
            }
            Some(_) => c.at(
                sp(v),
                format!("challenge.browser_signals.{k}"),
                "must be between 0 and 100",
            ),
            None => c.at(
                sp(v),
                "challenge.browser_signals",
                format!("`{k}` is not one of: {}", BROWSER_SIGNAL_NAMES.join(", ")),
            ),
        }
    }
    ChallengeSettings {
        browser_signals,
        difficulty,
        max_difficulty: max_difficulty.max(difficulty),
        ttl_secs: secs(&r.ttl, d.ttl_secs, "challenge.ttl", 10, 86_400, c),
        clearance_ttl_secs: secs(
            &r.clearance_ttl,
            d.clearance_ttl_secs,
            "challenge.clearance_ttl",
            60,
            30 * 86_400,
            c,
        ),
        discount,
        bind,
        nojs_wait_secs: secs(
            &r.nojs_wait,
            d.nojs_wait_secs,
            "challenge.nojs_wait",
            0,
            120,
            c,
        ),
        nojs_clearance_ttl_secs: secs(
            &r.nojs_clearance_ttl,
            d.nojs_clearance_ttl_secs,
            "challenge.nojs_clearance_ttl",
            60,
            30 * 86_400,
            c,
        ),
        texts: r
            .texts
            .iter()
            .filter(|(_, v)| v.len() <= 2000)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
