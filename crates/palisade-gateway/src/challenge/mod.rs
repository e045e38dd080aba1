//! Challenges that work: the `challenge` action puts a proof-of-work to the client — a page
//! for browsers (a Web Worker solves it; without JavaScript a timed refresh waits it out), a
//! machine-readable `401` with `WWW-Authenticate: PoW` for API clients — and a solved one earns
//! a clearance: a signed token (cookie or `Palisade-Clearance` header) bound to the client, with
//! an expiry and the policy's digest, which takes its discount off the score and is never
//! challenged again while it lasts.
//!
//! Tokens are stateless (HMAC under a key in the data dir, shared through the store in a
//! cluster); a solved puzzle is remembered until it expires so that one solution earns one
//! clearance. Nothing here panics on what a client sends.

pub mod page;
pub mod providers;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade_config::{ChallengeBind, ChallengeSettings};
use palisade_engine::model::facts::Clearance;
use palisade_engine::policy::{ChallengeKind, ClientKind};

use crate::telemetry::metrics::ChallengeLabels;
use crate::wire::body::ProxyBody;
use crate::{Runtime, Shared};
use token::{Pass, Puzzle, Sealer};

/// The clearance cookie.
pub const COOKIE: &str = "__palisade_clearance";
/// The clearance header (API clients).
pub const CLEARANCE_HEADER: &str = "palisade-clearance";
/// The header an API client answers a puzzle with: `<challenge>:<counter>`.
pub const POW_HEADER: &str = "palisade-pow";
/// Palisade's challenge endpoints.
pub const PREFIX: &str = "/.palisade/challenge/";

/// Solved puzzles remembered (bounded; each until its expiry).
const SOLVED_CAP: usize = 100_000;

/// Challenge state: the sealing key, the puzzles already solved, and the time zones' countries.
pub struct Challenges {
    sealer: ArcSwap<Sealer>,
    solved: quick_cache::sync::Cache<String, u64>,
    zones: std::sync::OnceLock<std::collections::HashMap<String, Vec<[u8; 2]>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("solved", &self.solved.len())
            .finish()
    }
}

impl Challenges {
    /// Challenge state under `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            sealer: ArcSwap::from_pointee(Sealer::new(secret)),
            solved: quick_cache::sync::Cache::new(SOLVED_CAP),
            zones: std::sync::OnceLock::new(),
        }
    }

    /// Sets the time zones' countries (read once at start, see [`read_zones`]).
    pub fn set_zones(&self, zones: std::collections::HashMap<String, Vec<[u8; 2]>>) {
        let _ = self.zones.set(zones);
    }

    /// Whether the time zone `tz` belongs to none of `country`'s zones: `None` when either is
    /// unknown (no evidence either way).
    pub fn tz_mismatch(&self, tz: &str, country: &str) -> Option<bool> {
        let countries = self.zones.get()?.get(tz)?;
        let cc: [u8; 2] = country.as_bytes().try_into().ok()?;
        Some(!countries.contains(&cc))
    }

    /// Uses `secret` from now on (the cluster's, once known).
    pub fn rekey(&self, secret: &[u8]) {
        self.sealer.store(Arc::new(Sealer::new(secret)));
    }

    /// Marks a puzzle solved; `false` if it already was (a replayed solution).
    fn first_solution(&self, nonce: &str, now: u64) -> bool {
        if self.solved.get(nonce).is_some_and(|exp| exp > now) {
            return false;
        }
        self.solved.insert(nonce.to_owned(), now + 86_400);
        true
    }
}

/// The countries of each IANA time zone, from the system's `zone1970.tab` and `zone.tab`
/// (tzdata): `Europe/Berlin -> [DE]`, `Europe/Zurich -> [CH, DE, LI]`. Empty when neither
/// file is there (then no time-zone signal).
pub fn read_zones() -> std::collections::HashMap<String, Vec<[u8; 2]>> {
    let mut out: std::collections::HashMap<String, Vec<[u8; 2]>> = std::collections::HashMap::new();
    for file in [
        "/usr/share/zoneinfo/zone1970.tab",
        "/usr/share/zoneinfo/zone.tab",
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut cols = line.split('\t');
            let (Some(ccs), Some(_), Some(tz)) = (cols.next(), cols.next(), cols.next()) else {
                continue;
            };
            let entry = out.entry(tz.to_owned()).or_default();
            for cc in ccs.split(',') {
                if let Ok(cc) = <[u8; 2]>::try_from(cc.as_bytes())
                    && !entry.contains(&cc)
                {
                    entry.push(cc);
                }
            }
        }
    }
    out
}

/// The data dir's challenge key: read, or made (32 random bytes, owner-only).
pub fn load_or_make_key(data_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join("challenge.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => return Ok(k),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not a 32-byte key",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key: [u8; 32] = rand::random();
    crate::acme::write_atomic(&path, &key)?;
    Ok(key.to_vec())
}

/// In a cluster: the key every gateway uses (the first one offered wins), so that a clearance
/// from one replica is accepted by all. Retries until the store answers.
pub async fn join_cluster_key(shared: Arc<Shared>, mine: Vec<u8>) {
    let Some(store) = shared.store.clone() else {
        return;
    };
    let key = store.key_for("challenge", "key");
    let hex = palisade_keys::key::hex(&mine);
    loop {
        let offered = store
            .try_lock(
                &key,
                &hex,
                Duration::from_secs(10 * 365 * 86_400),
                Duration::from_secs(2),
            )
            .await;
        if offered.is_ok()
            && let Ok(Some(theirs)) = store.get_value(&key, Duration::from_secs(2)).await
            && let Some(bytes) = palisade_keys::key::unhex(&theirs)
            && bytes.len() == 32
        {
            if bytes != mine {
                tracing::info!("challenge key: using the cluster's");
            }
            shared.challenges.rekey(&bytes);
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What a clearance is bound to, hashed.
fn binding(
    s: &ChallengeSettings,
    parts: &http::request::Parts,
    client: IpAddr,
    api_key: Option<&str>,
) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for b in &s.bind {
        match b {
            ChallengeBind::Ip => ctx.update(client.to_canonical().to_string().as_bytes()),
            ChallengeBind::Ip24 => {
                let ip = client.to_canonical();
                let net = match ip {
                    IpAddr::V4(_) => ipnet::IpNet::new(ip, 24),
                    IpAddr::V6(_) => ipnet::IpNet::new(ip, 48),
                }
                .map(|n| n.trunc().to_string())
                .unwrap_or_default();
                ctx.update(net.as_bytes());
            }
            ChallengeBind::UserAgent => ctx.update(
                parts
                    .headers
                    .get(http::header::USER_AGENT)
                    .map_or(&b""[..], |v| v.as_bytes()),
            ),
            ChallengeBind::Ja4 => ctx.update(
                parts
                    .extensions
                    .get::<Arc<crate::listen::tls::TlsInfo>>()
                    .map_or(&b""[..], |t| t.ja4.as_bytes()),
            ),
            ChallengeBind::ApiKey => ctx.update(api_key.unwrap_or("").as_bytes()),
        }
        ctx.update(b"\x00");
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The API key a request presents (for `bind = ["api_key"]`), as sent.
fn api_key_of(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
}

fn now_secs(shared: &Shared) -> u64 {
    shared.clock.unix_secs()
}

fn count(shared: &Shared, kind: &'static str, route: &str, result: &'static str) {
    shared
        .metrics
        .challenges
        .get_or_create(&ChallengeLabels {
            kind,
            route: crate::telemetry::metrics::Label(Arc::from(route)),
            result,
        })
        .inc();
}

/// A cookie's value in the request.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    palisade_engine::request::header_all(headers, &http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// What a request's clearance showed.
pub struct Presented {
    /// The valid clearance, for the engine.
    pub clearance: Option<Clearance>,
    /// A clearance minted now (an API client's solved puzzle): sent back in
    /// `Palisade-Clearance`.
    pub minted: Option<String>,
    /// The signals the clearance carries (browser facts the page reported).
    pub flags: u16,
    /// The browser's time zone, as the page reported it.
    pub tz: Option<String>,
}

/// The clearance a request carries — a cookie or `Palisade-Clearance` — or earns now with a
/// `Palisade-PoW` answer. Only the one bound to this client, unexpired, from this policy.
pub fn presented(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    client: IpAddr,
) -> Presented {
    let none = Presented {
        clearance: None,
        minted: None,
        flags: 0,
        tz: None,
    };
    // Names made once (looked up by `&str`, a name is parsed on every request).
    const CLEARANCE_NAME: http::HeaderName = http::HeaderName::from_static(CLEARANCE_HEADER);
    const POW_NAME: http::HeaderName = http::HeaderName::from_static(POW_HEADER);
    let headers = &parts.headers;
    let pass_token = palisade_engine::request::header(headers, &CLEARANCE_NAME)
        .and_then(|v| v.to_str().ok())
        .or_else(|| cookie(headers, COOKIE));
    let pow = palisade_engine::request::header(headers, &POW_NAME).and_then(|v| v.to_str().ok());
    if pass_token.is_none() && pow.is_none() {
        return none;
    }
    let s = &rt.compiled.challenge;
    let now = now_secs(shared);
    let sealer = shared.challenges.sealer.load();
    let bound = binding(s, parts, client, api_key_of(parts));
    if let Some(t) = pass_token
        && let Some(p) = sealer.open::<Pass>(t)
        && p.k == "c"
        && p.e > now
        && p.h == bound
        && p.p == rt.compiled.digest
    {
        return Presented {
            clearance: Some(Clearance {
                discount: s.discount,
                level: match p.l.as_str() {
                    "wait" => "wait",
                    "altcha" => "altcha",
                    "captcha" => "captcha",
                    _ => "pow",
                },
                signals: [0; palisade_engine::model::facts::BROWSER_SIGNALS.len()],
            }),
            minted: None,
            flags: p.f,
            tz: p.z,
        };
    }
    if let Some(answer) = pow
        && let Some((t, n)) = answer.trim().rsplit_once(':')
    {
        let Some(puzzle) = sealer.open::<Puzzle>(t).filter(|p| p.k == "p") else {
            count(shared, "pow", "-", "failed");
            return none;
        };
        let result = judge(shared, &puzzle, (&bound, rt.compiled.digest), now, || {
            token::solves(t, n, puzzle.b)
        });
        count(shared, "pow", &puzzle.r, result);
        if result != "solved" {
            return none;
        }
        shared
            .metrics
            .challenge_solve_seconds
            .observe(now.saturating_sub(puzzle.i) as f64);
        let pass = Pass {
            k: "c".into(),
            i: now,
            e: now + s.clearance_ttl_secs,
            l: "pow".into(),
            h: bound,
            p: rt.compiled.digest,
            f: 0,
            z: None,
        };
        return Presented {
            clearance: Some(Clearance {
                discount: s.discount,
                level: "pow",
                signals: [0; palisade_engine::model::facts::BROWSER_SIGNALS.len()],
            }),
            minted: Some(sealer.seal(&pass)),
            flags: 0,
            tz: None,
        };
    }
    none
}

/// What became of an answer to `puzzle`: `expired`, `failed` (another client, another
/// policy, or `answered` false), `replayed`, or `solved` (then remembered, so only once).
fn judge(
    shared: &Shared,
    puzzle: &Puzzle,
    (bound, digest): (&str, u64),
    now: u64,
    answered: impl FnOnce() -> bool,
) -> &'static str {
    if puzzle.e <= now {
        "expired"
    } else if puzzle.h != bound || puzzle.p != digest || !answered() {
        "failed"
    } else if !shared.challenges.first_solution(&puzzle.n, now) {
        "replayed"
    } else {
        "solved"
    }
}

/// The body text of a widget's page (ALTCHA, CAPTCHA): the configured `body`, else one that
/// promises no puzzle of the browser's own.
fn widget_body(texts: &std::collections::BTreeMap<String, String>) -> &str {
    texts.get("body").map_or(
        "This site checks that requests come from people's browsers. You will be on your way in a moment.",
        String::as_str,
    )
}

/// The page's texts and language for this request (its `Accept-Language`).
fn texts_of<'a>(
    s: &'a ChallengeSettings,
    parts: &http::request::Parts,
) -> (std::collections::BTreeMap<String, String>, &'a str) {
    page::texts_for(
        &s.texts,
        &s.locales,
        parts
            .headers
            .get(http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Whether the client is a browser (gets a page) rather than a program (gets a
/// machine-readable challenge): by the route's `client`, else by `Accept`.
fn is_browser(kind: ClientKind, headers: &http::HeaderMap) -> bool {
    match kind {
        ClientKind::Api => false,
        ClientKind::Browser => true,
        ClientKind::Auto => headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html")),
    }
}

/// The difficulty for a score: `difficulty` at the challenge threshold, rising to
/// `max_difficulty` at the block threshold.
fn difficulty(s: &ChallengeSettings, rt: &Runtime, score: u8, under_attack: bool) -> u8 {
    let t = rt.compiled.policy.scoring.thresholds(under_attack);
    let (lo, hi) = (u32::from(t.challenge_at), u32::from(t.block_at));
    if hi <= lo || u32::from(score) <= lo {
        return s.difficulty;
    }
    let span = u32::from(s.max_difficulty - s.difficulty);
    let extra = (u32::from(score).min(hi) - lo) * span / (hi - lo);
    s.difficulty + extra as u8
}

fn nonce_hex() -> String {
    let n: [u8; 16] = rand::random();
    n.iter().map(|b| format!("{b:02x}")).collect()
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The answer to a request the decision challenges: a page for a browser, a `401` with
/// `WWW-Authenticate: PoW` and a problem document for a program.
pub fn respond(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    client: IpAddr,
    decision: &palisade_engine::Decision,
    request_id: &str,
) -> Response<ProxyBody> {
    let s = &rt.compiled.challenge;
    let now = now_secs(shared);
    let route = rt
        .compiled
        .policy
        .route(decision.route)
        .map_or("-", |r| &r.name);
    let spec = rt.compiled.policy.route(decision.route);
    let kind = spec.map_or(ClientKind::Auto, |r| r.client);
    let challenge_kind = spec.and_then(|r| r.challenge).unwrap_or(s.kind);
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .chars()
        .take(2048)
        .collect::<String>();
    let bits = difficulty(s, rt, decision.score, decision.under_attack);
    let puzzle = Puzzle {
        k: "p".into(),
        n: nonce_hex(),
        b: bits,
        i: now,
        e: now + s.ttl_secs,
        h: binding(s, parts, client, api_key_of(parts)),
        u: target,
        m: parts.method.as_str().chars().take(16).collect(),
        r: route.to_owned(),
        p: rt.compiled.digest,
    };
    let sealer = shared.challenges.sealer.load();
    let token = sealer.seal(&puzzle);
    let browser = is_browser(kind, &parts.headers);
    let label = match (browser, challenge_kind) {
        (false, _) => "pow",
        (true, ChallengeKind::Pow) => "page",
        (true, ChallengeKind::Altcha) => "altcha",
        (true, ChallengeKind::Captcha) => "captcha",
    };
    count(shared, label, route, "issued");
    // A browser's page (its texts in its language) and the CSP that page needs.
    let page = browser.then(|| {
        let (texts, lang) = texts_of(s, parts);
        let nonce = nonce_hex();
        match (challenge_kind, &s.captcha) {
            (ChallengeKind::Altcha, _) if s.altcha_widget.is_some() => {
                let challenge = providers::altcha_challenge(&sealer, &puzzle);
                let html = providers::altcha_page(
                    page::text(&texts, "title"),
                    widget_body(&texts),
                    &token,
                    &challenge,
                    &nonce,
                );
                (html, format!(
                    "default-src 'none'; script-src 'self' 'nonce-{nonce}'; worker-src blob:; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
                ))
            }
            (ChallengeKind::Captcha, Some(c)) => providers::captcha_page(
                c,
                page::text(&texts, "title"),
                widget_body(&texts),
                &token,
                &nonce,
            ),
            _ => {
                let html = page::render(&page::Page {
                    token: &token,
                    bits,
                    nojs_wait: s.nojs_wait_secs,
                    nonce: &nonce,
                    texts: &texts,
                    lang,
                    was_post: !matches!(parts.method, http::Method::GET | http::Method::HEAD),
                });
                (html, format!(
                    "default-src 'none'; script-src 'nonce-{nonce}'; worker-src blob:; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
                ))
            }
        }
    });
    let mut resp = if let Some((html, csp)) = page {
        let mut r = Response::new(full(html));
        *r.status_mut() = StatusCode::FORBIDDEN;
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            h.insert(http::header::CONTENT_SECURITY_POLICY, v);
        }
        r
    } else {
        let body = serde_json::json!({
            "type": "https://palisade.dev/problems/challenge",
            "title": "Proof of work required",
            "status": 401,
            "detail": "Solve the challenge and send the request again with the answer in the Palisade-PoW header: find a decimal counter such that SHA-256(challenge + \":\" + counter) starts with `difficulty` zero bits, then send `Palisade-PoW: <challenge>:<counter>`. The response carries a Palisade-Clearance token to send on later requests.",
            "challenge": {
                "token": token,
                "algorithm": "sha-256",
                "difficulty": bits,
                "expires": puzzle.e,
                "header": "Palisade-PoW",
                "answer": "<challenge>:<counter>",
                "clearance_header": "Palisade-Clearance",
            },
            "request_id": request_id,
        });
        let mut r = Response::new(full(body.to_string()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!(
            "PoW realm=\"palisade\", challenge=\"{token}\", algorithm=\"sha-256\", difficulty={bits}, expires={}",
            puzzle.e
        )) {
            h.insert(http::header::WWW_AUTHENTICATE, v);
        }
        r
    };
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(crate::wire::headers::names::X_REQUEST_ID, v);
    }
    resp
}

/// A query parameter's value (percent-decoded).
fn query_param(parts: &http::request::Parts, name: &str) -> Option<String> {
    form_urlencoded::parse(parts.uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn redirect(to: &str, cookie: Option<String>) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    // Only a path on this site (never `//host` or a scheme).
    let to = if to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\") {
        to
    } else {
        "/"
    };
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(SET_COOKIE, c);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn plain(status: StatusCode, html: String, cookie: Option<String>) -> Response<ProxyBody> {
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(SET_COOKIE, c);
    }
    r
}

/// Browser facts the page reported, as signal flags.
pub mod flags {
    /// `navigator.webdriver` was true.
    pub const WEBDRIVER: u16 = 1;
    /// A headless browser's user agent or brands.
    pub const HEADLESS: u16 = 2;
    /// No languages.
    pub const NO_LANGUAGES: u16 = 4;
    /// No pointer, key, touch or scroll event before the answer.
    pub const NO_INTERACTION: u16 = 8;
    /// A time zone none of the client network's country's (set per request, not stored).
    pub const TZ_MISMATCH: u16 = 16;
    /// No screen, or a size no device has (under 200 or over 16384 pixels a side).
    pub const ODD_SCREEN: u16 = 32;
}

/// The time zone the page reported: an IANA name (letters, digits, `_`, `/`, `+`, `-`).
fn reported_tz(raw: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(raw.filter(|r| r.len() <= 2048)?).ok()?;
    let tz = v.get("tz")?.as_str()?;
    (!tz.is_empty()
        && tz.len() <= 64
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'+' | b'-')))
    .then(|| tz.to_owned())
}

/// The weights of the signals `flags` raise, in the engine's order.
pub fn signal_weights(
    s: &ChallengeSettings,
    flags: u16,
) -> [u8; palisade_engine::model::facts::BROWSER_SIGNALS.len()] {
    let mut w = [0u8; palisade_engine::model::facts::BROWSER_SIGNALS.len()];
    for (i, (out, weight)) in w.iter_mut().zip(s.browser_signals).enumerate() {
        if flags & (1 << i) != 0 {
            *out = weight;
        }
    }
    w
}

/// The signal flags of the page's report (the `s` parameter): bounded JSON, junk gives none.
pub fn signal_flags(raw: Option<&str>) -> u16 {
    let Some(v) = raw
        .filter(|r| r.len() <= 2048)
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
    else {
        return 0;
    };
    let int = |k: &str| v.get(k).and_then(serde_json::Value::as_i64).unwrap_or(-1);
    let mut f = 0;
    if int("wd") == 1 {
        f |= flags::WEBDRIVER;
    }
    if int("hl") == 1 {
        f |= flags::HEADLESS;
    }
    if int("lg") == 0 {
        f |= flags::NO_LANGUAGES;
    }
    if int("ev") == 0 {
        f |= flags::NO_INTERACTION;
    }
    let (w, h) = (int("sw"), int("sh"));
    if (w, h) != (-1, -1) && !((200..=16_384).contains(&w) && (200..=16_384).contains(&h)) {
        f |= flags::ODD_SCREEN;
    }
    f
}

/// Serves `/.palisade/challenge/verify` (a page's answer) and `/.palisade/challenge/wait` (the
/// no-JavaScript path); `which` is the path after [`PREFIX`].
pub async fn endpoint(
    shared: &Shared,
    rt: &Runtime,
    parts: &http::request::Parts,
    client: IpAddr,
    which: &str,
) -> Option<Response<ProxyBody>> {
    let s = &rt.compiled.challenge;
    if which == "altcha.js" {
        let widget = s.altcha_widget.clone()?;
        let mut r = Response::new(full(Bytes::from(widget.as_ref().clone())));
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        return Some(r);
    }
    let now = now_secs(shared);
    let sealer = shared.challenges.sealer.load();
    let token = query_param(parts, "t").unwrap_or_default();
    let Some(puzzle) = sealer.open::<Puzzle>(&token).filter(|p| p.k == "p") else {
        count(shared, "page", "-", "failed");
        return Some(plain(
            StatusCode::BAD_REQUEST,
            "<!doctype html><title>Bad request</title><p>This verification link is not valid. <a href=\"/\">Start again</a>.</p>".into(),
            None,
        ));
    };
    let bound = binding(s, parts, client, api_key_of(parts));
    let back = puzzle.u.clone();
    let secure = parts
        .extensions
        .get::<Arc<crate::listen::tls::TlsInfo>>()
        .is_some();
    let set_cookie = |pass: &Pass, ttl: u64| {
        format!(
            "{COOKIE}={}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{}",
            sealer.seal(pass),
            if secure { "; Secure" } else { "" }
        )
    };
    let kind = match which {
        "wait" => "wait",
        "altcha" => "altcha",
        "captcha" => "captcha",
        _ => "page",
    };
    let mut fail_open = false;
    let result = match which {
        "altcha" => {
            let payload = query_param(parts, "altcha").unwrap_or_default();
            judge(shared, &puzzle, (&bound, rt.compiled.digest), now, || {
                providers::altcha_solves(&sealer, &puzzle, &payload)
            })
        }
        "captcha" => match &s.captcha {
            None => "failed",
            Some(c) => {
                let response = query_param(parts, "r").unwrap_or_default();
                let min_score = rt
                    .compiled
                    .policy
                    .route_specs
                    .iter()
                    .find(|r| *r.name == *puzzle.r)
                    .and_then(|r| r.captcha_min_score)
                    .unwrap_or(c.min_score);
                let checked = if puzzle.e <= now {
                    None
                } else {
                    Some(providers::siteverify(c, &response, &client.to_string(), min_score).await)
                };
                match checked {
                    None => "expired",
                    Some(providers::Verdict::Pass) => {
                        judge(shared, &puzzle, (&bound, rt.compiled.digest), now, || true)
                    }
                    Some(providers::Verdict::Fail(why)) => {
                        tracing::debug!(why, "CAPTCHA refused by its provider");
                        "failed"
                    }
                    Some(providers::Verdict::Error) if c.fail_open => {
                        fail_open = true;
                        judge(shared, &puzzle, (&bound, rt.compiled.digest), now, || true)
                    }
                    Some(providers::Verdict::Error) => "error",
                }
            }
        },
        "verify" => {
            let n = query_param(parts, "n").unwrap_or_default();
            judge(shared, &puzzle, (&bound, rt.compiled.digest), now, || {
                token::solves(&token, &n, puzzle.b)
            })
        }
        "wait" => {
            if s.nojs_wait_secs == 0 {
                "expired"
            } else if now < puzzle.i + s.nojs_wait_secs {
                "early"
            } else {
                judge(shared, &puzzle, (&bound, rt.compiled.digest), now, || true)
            }
        }
        _ => return None,
    };
    count(
        shared,
        kind,
        &puzzle.r,
        if result == "early" { "failed" } else { result },
    );
    if result != "solved" {
        // Back to the page: the request is challenged again, with a fresh puzzle.
        return Some(redirect(&back, None));
    }
    shared
        .metrics
        .challenge_solve_seconds
        .observe(now.saturating_sub(puzzle.i) as f64);
    if fail_open {
        count(shared, kind, &puzzle.r, "error_allowed");
    }
    let tz = if which == "verify" {
        reported_tz(query_param(parts, "s").as_deref())
    } else {
        None
    };
    let (level, ttl, f) = if which == "wait" {
        ("wait", s.nojs_clearance_ttl_secs, flags::NO_INTERACTION)
    } else if which == "altcha" || which == "captcha" {
        (kind, s.clearance_ttl_secs, 0)
    } else {
        (
            "pow",
            s.clearance_ttl_secs,
            signal_flags(query_param(parts, "s").as_deref()),
        )
    };
    let pass = Pass {
        k: "c".into(),
        i: now,
        e: now + ttl,
        l: level.into(),
        h: bound,
        p: rt.compiled.digest,
        f,
        z: tz,
    };
    let cookie = set_cookie(&pass, ttl);
    if matches!(puzzle.m.as_str(), "GET" | "HEAD") {
        Some(redirect(&back, Some(cookie)))
    } else {
        // A form's body was not kept: say so, never lose it silently.
        let (texts, lang) = texts_of(s, parts);
        let html = format!(
            "<!doctype html><html lang=\"{l}\"><meta charset=\"utf-8\"><title>{t}</title><p>{p}</p><p><a href=\"{u}\">{u}</a></p></html>",
            l = page::escape(lang),
            t = page::escape(page::text(&texts, "title")),
            p = page::escape(page::text(&texts, "post")),
            u = page::escape(&back),
        );
        Some(plain(StatusCode::OK, html, Some(cookie)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_flags_read_the_page_report_and_refuse_junk() {
        assert_eq!(signal_flags(None), 0);
        assert_eq!(signal_flags(Some("not json")), 0);
        assert_eq!(signal_flags(Some(&"x".repeat(5000))), 0);
        assert_eq!(
            signal_flags(Some(r#"{"wd":1,"hl":1,"lg":0,"ev":0,"sw":0,"sh":0}"#)),
            flags::WEBDRIVER
                | flags::HEADLESS
                | flags::NO_LANGUAGES
                | flags::NO_INTERACTION
                | flags::ODD_SCREEN
        );
        assert_eq!(
            signal_flags(Some(r#"{"wd":0,"hl":0,"lg":2,"ev":5,"sw":1920,"sh":1080}"#)),
            0
        );
        assert_eq!(
            signal_flags(Some(r#"{"sw":99999,"sh":1080}"#)) & flags::ODD_SCREEN,
            flags::ODD_SCREEN
        );
    }

    #[test]
    fn cookies_are_found_by_name_only() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; __palisade_clearance=tok; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn redirects_stay_on_the_site() {
        for (to, want) in [
            ("/a?b=1", "/a?b=1"),
            ("//evil.example/", "/"),
            ("https://evil.example", "/"),
            ("/\\evil", "/"),
        ] {
            let r = redirect(to, None);
            assert_eq!(
                r.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
                Some(want)
            );
        }
    }
}
