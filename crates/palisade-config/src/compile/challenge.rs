//! `[challenge]`: the proof-of-work, its clearance, and the page's texts.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};

use palisade_engine::policy::ChallengeKind;

use super::*;
use crate::error::Collector;
use crate::raw::{RawCaptcha, RawChallenge};

/// A hosted CAPTCHA provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaProvider {
    /// Cloudflare Turnstile.
    Turnstile,
    /// hCaptcha.
    Hcaptcha,
    /// Google reCAPTCHA v3 (scored).
    Recaptcha,
}

impl CaptchaProvider {
    /// The provider's documented siteverify URL.
    pub fn default_verify_url(self) -> &'static str {
        match self {
            CaptchaProvider::Turnstile => {
                "https://challenges.cloudflare.com/turnstile/v0/siteverify"
            }
            CaptchaProvider::Hcaptcha => "https://api.hcaptcha.com/siteverify",
            CaptchaProvider::Recaptcha => "https://www.google.com/recaptcha/api/siteverify",
        }
    }

    /// The name in configs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CaptchaProvider::Turnstile => "turnstile",
            CaptchaProvider::Hcaptcha => "hcaptcha",
            CaptchaProvider::Recaptcha => "recaptcha",
        }
    }
}

/// Compiled `[challenge.captcha]`.
#[derive(Clone, PartialEq)]
pub struct CaptchaSettings {
    /// The provider.
    pub provider: CaptchaProvider,
    /// The site key.
    pub site_key: String,
    /// The secret key (resolved).
    pub secret: String,
    /// The siteverify URL.
    pub verify_url: String,
    /// Time siteverify has.
    pub timeout_ms: u64,
    /// Whether an unreachable siteverify lets the client through.
    pub fail_open: bool,
    /// The score a solution needs.
    pub min_score: f64,
    /// The action expected.
    pub action: String,
}

impl std::fmt::Debug for CaptchaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptchaSettings")
            .field("provider", &self.provider)
            .field("verify_url", &self.verify_url)
            .finish()
    }
}

/// A challenge kind by name.
pub(crate) fn kind(name: &str) -> Option<ChallengeKind> {
    match name {
        "pow" => Some(ChallengeKind::Pow),
        "altcha" => Some(ChallengeKind::Altcha),
        "captcha" => Some(ChallengeKind::Captcha),
        _ => None,
    }
}

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
#[derive(Debug, Clone, PartialEq)]
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
    /// Page texts by language tag (lowercase), chosen by `Accept-Language`.
    pub locales: BTreeMap<String, BTreeMap<String, String>>,
    /// Weights of `browser/webdriver`, `browser/headless`, `browser/no_languages`,
    /// `browser/no_interaction`.
    pub browser_signals: [u8; BROWSER_SIGNAL_NAMES.len()],
    /// What a browser gets by default.
    pub kind: ChallengeKind,
    /// The ALTCHA widget's script, read when the config is.
    pub altcha_widget: Option<std::sync::Arc<Vec<u8>>>,
    /// The hosted CAPTCHA.
    pub captcha: Option<CaptchaSettings>,
}

/// The browser signals' names in `[challenge] browser_signals`, in order.
pub const BROWSER_SIGNAL_NAMES: [&str; 6] = [
    "webdriver",
    "headless",
    "no_languages",
    "no_interaction",
    "tz_mismatch",
    "odd_screen",
];

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
            locales: BTreeMap::new(),
            browser_signals: [40, 40, 15, 0, 10, 15],
            kind: ChallengeKind::Pow,
            altcha_widget: None,
            captcha: None,
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
pub(super) fn compile_challenge(
    r: &RawChallenge,
    base: &Path,
    c: &mut Collector<'_>,
    files: &mut Vec<PathBuf>,
) -> ChallengeSettings {
    let d = ChallengeSettings::default();
    let kind_ = r.kind.as_ref().map_or(ChallengeKind::Pow, |k| {
        kind(k.get_ref()).unwrap_or_else(|| {
            c.at(
                sp(k),
                "challenge.kind",
                format!("`{}` is not one of: pow, altcha, captcha", k.get_ref()),
            );
            ChallengeKind::Pow
        })
    });
    let altcha_widget = r.altcha_widget.as_ref().and_then(|w| {
        let file = base.join(w.get_ref());
        files.push(file.clone());
        match std::fs::read(&file) {
            Ok(bytes) if bytes.len() <= 2 * 1024 * 1024 => Some(std::sync::Arc::new(bytes)),
            Ok(_) => {
                c.at(
                    sp(w),
                    "challenge.altcha_widget",
                    format!("`{}` is not a script file of at most 2 MiB", file.display()),
                );
                None
            }
            Err(e) => {
                c.at(
                    sp(w),
                    "challenge.altcha_widget",
                    format!(
                        "cannot read `{}`: {e} (npm install altcha; use dist/altcha.umd.cjs)",
                        file.display()
                    ),
                );
                None
            }
        }
    });
    if kind_ == ChallengeKind::Altcha && r.altcha_widget.is_none() {
        c.at(
            r.kind.as_ref().and_then(sp),
            "challenge.altcha_widget",
            "kind = \"altcha\" needs altcha_widget: the widget script to serve (npm install altcha; dist/altcha.umd.cjs) — pages never load it from a CDN",
        );
    }
    let captcha = r.captcha.as_ref().and_then(|cap| compile_captcha(cap, c));
    if kind_ == ChallengeKind::Captcha && r.captcha.is_none() {
        c.at(
            r.kind.as_ref().and_then(sp),
            "challenge.captcha",
            "kind = \"captcha\" needs [challenge.captcha] (provider, site_key, secret)",
        );
    }
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
    for (lang, texts) in &r.locales {
        let ok = !lang.is_empty()
            && lang.len() <= 35
            && lang.split('-').all(|p| {
                !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if !ok {
            c.at(
                None,
                "challenge.locales",
                format!("`{lang}` is not a language tag such as de or pt-BR"),
            );
        }
        for k in texts.keys() {
            if !CHALLENGE_TEXTS.iter().any(|(n, _)| n == k) {
                let names: Vec<&str> = CHALLENGE_TEXTS.iter().map(|(n, _)| *n).collect();
                c.at(
                    None,
                    format!("challenge.locales.{lang}"),
                    format!("`{k}` is not a text of the page: {}", names.join(", ")),
                );
            }
        }
    }
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
        kind: kind_,
        altcha_widget,
        captcha,
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
        locales: r
            .locales
            .iter()
            .map(|(l, t)| {
                (
                    l.to_ascii_lowercase(),
                    t.iter()
                        .filter(|(_, v)| v.len() <= 2000)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect(),
        texts: r
            .texts
            .iter()
            .filter(|(_, v)| v.len() <= 2000)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// `[challenge.captcha]`.
fn compile_captcha(r: &RawCaptcha, c: &mut Collector<'_>) -> Option<CaptchaSettings> {
    let before = c.errors.len();
    let provider = match r.provider.get_ref().as_str() {
        "turnstile" => CaptchaProvider::Turnstile,
        "hcaptcha" => CaptchaProvider::Hcaptcha,
        "recaptcha" => CaptchaProvider::Recaptcha,
        other => {
            c.at(
                sp(&r.provider),
                "challenge.captcha.provider",
                format!("`{other}` is not one of: turnstile, hcaptcha, recaptcha"),
            );
            CaptchaProvider::Turnstile
        }
    };
    let secret = match r.secret.expose().strip_prefix("env:") {
        Some(var) => std::env::var(var).unwrap_or_else(|_| {
            c.at(
                sp(r.secret.spanned()),
                "challenge.captcha.secret",
                format!("the environment variable `{var}` is not set"),
            );
            String::new()
        }),
        None => r.secret.expose().to_owned(),
    };
    let verify_url = r.verify_url.as_ref().map_or_else(
        || provider.default_verify_url().to_owned(),
        |u| {
            let v = u.get_ref();
            if !(v.starts_with("https://") || v.starts_with("http://"))
                || v.parse::<http::Uri>().is_err()
            {
                c.at(
                    sp(u),
                    "challenge.captcha.verify_url",
                    format!("`{v}` is not an http(s) URL"),
                );
            }
            v.clone()
        },
    );
    let timeout_ms = secs_ms(&r.timeout, 3000, "challenge.captcha.timeout", c);
    let fail_open = match r.on_error.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => {
            c.at(
                r.on_error.as_ref().and_then(sp),
                "challenge.captcha.on_error",
                format!("`{other}` is not one of: allow, deny"),
            );
            false
        }
    };
    let min_score = match &r.min_score {
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            c.at(
                sp(v),
                "challenge.captcha.min_score",
                "must be between 0.0 and 1.0",
            );
            0.5
        }
        None => 0.5,
    };
    let action = r
        .action
        .as_ref()
        .map_or_else(|| "palisade".to_owned(), |a| a.get_ref().clone());
    if action.is_empty()
        || action.len() > 64
        || !action
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/')
    {
        c.at(
            r.action.as_ref().and_then(sp),
            "challenge.captcha.action",
            "an action is 1-64 letters, digits, `_` or `/`",
        );
    }
    let key = r.site_key.get_ref();
    if key.is_empty()
        || key.len() > 256
        || !key.bytes().all(|b| {
            b.is_ascii_graphic() && b != b'"' && b != b'<' && b != b'>' && b != b'&' && b != b'\''
        })
    {
        c.at(
            sp(&r.site_key),
            "challenge.captcha.site_key",
            "not a site key",
        );
    }
    (c.errors.len() == before).then(|| CaptchaSettings {
        provider,
        site_key: key.clone(),
        secret,
        verify_url,
        timeout_ms,
        fail_open,
        min_score,
        action,
    })
}

fn secs_ms(v: &Option<Spanned<String>>, default: u64, path: &str, c: &mut Collector<'_>) -> u64 {
    let Some(s) = v else {
        return default;
    };
    match palisade_engine::units::parse_duration(s.get_ref()) {
        Ok(n) => {
            let ms = n / 1_000_000;
            if (100..=30_000).contains(&ms) {
                ms
            } else {
                c.at(sp(s), path, "must be between 100ms and 30s");
                default
            }
        }
        Err(e) => {
            c.at(sp(s), path, e.to_string());
            default
        }
    }
}
