//! Challenges by others' widgets: ALTCHA (self-hosted proof-of-work; its npm widget is served
//! by the gateway, its solutions checked here) and the hosted CAPTCHAs — Cloudflare Turnstile,
//! hCaptcha, Google reCAPTCHA v3 — checked through each provider's documented siteverify API,
//! with a timeout and a fail-open/closed choice.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use palisade_config::{CaptchaProvider, CaptchaSettings};
use serde::Deserialize;

use super::page::escape;
use super::token::{Puzzle, Sealer};

/// The ALTCHA challenge for a puzzle: its salt carries the puzzle's nonce and expiry (so a
/// solution answers this puzzle only), its number is at most `2^bits`.
pub fn altcha_challenge(sealer: &Sealer, puzzle: &Puzzle) -> serde_json::Value {
    let maxnumber: u64 = 1u64 << puzzle.b.min(23);
    let number = rand::random::<u64>() % (maxnumber + 1);
    let salt = format!("{}?expires={}", puzzle.n, puzzle.e);
    let challenge = sha256_hex(format!("{salt}{number}").as_bytes());
    let signature = sealer.mac_hex(challenge.as_bytes());
    serde_json::json!({
        "algorithm": "SHA-256",
        "challenge": challenge,
        "maxnumber": maxnumber,
        "salt": salt,
        "signature": signature,
    })
}

fn sha256_hex(data: &[u8]) -> String {
    palisade_keys::key::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// The ALTCHA widget's answer.
#[derive(Deserialize)]
struct AltchaPayload {
    algorithm: String,
    challenge: String,
    number: u64,
    salt: String,
    signature: String,
}

/// Whether an ALTCHA payload (base64 JSON, as the widget submits it) solves `puzzle`'s ALTCHA
/// challenge: the hash of salt and number is the challenge, the challenge carries our
/// signature, and the salt is this puzzle's.
pub fn altcha_solves(sealer: &Sealer, puzzle: &Puzzle, payload: &str) -> bool {
    if payload.len() > 4096 {
        return false;
    }
    let Some(p) = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .ok()
        .and_then(|b| serde_json::from_slice::<AltchaPayload>(&b).ok())
    else {
        return false;
    };
    p.algorithm == "SHA-256"
        && p.salt == format!("{}?expires={}", puzzle.n, puzzle.e)
        && sha256_hex(format!("{}{}", p.salt, p.number).as_bytes()) == p.challenge
        && sealer.mac_hex(p.challenge.as_bytes()) == p.signature
}

/// The ALTCHA page: the widget (served by the gateway) solves on load and submits its answer.
pub fn altcha_page(
    title: &str,
    body: &str,
    token: &str,
    challenge: &serde_json::Value,
    nonce: &str,
) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <script src=\"/.palisade/challenge/altcha.js\" nonce=\"{nonce}\"></script>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:10vh auto;padding:0 1rem}}</style></head>\
         <body><main><h1>{title}</h1><p>{body}</p>\
         <altcha-widget challengejson=\"{challenge}\" auto=\"onload\" hidelogo hidefooter></altcha-widget></main>\
         <script type=\"application/json\" id=\"t\">{token_json}</script>\
         <script nonce=\"{nonce}\">document.querySelector('altcha-widget').addEventListener('statechange',function(e){{\
         if(e.detail&&e.detail.state==='verified'&&e.detail.payload){{location.replace('/.palisade/challenge/altcha?t='+\
         encodeURIComponent(JSON.parse(document.getElementById('t').textContent))+'&altcha='+encodeURIComponent(e.detail.payload));}}}});</script></body></html>\n",
        title = escape(title),
        body = escape(body),
        token_json = serde_json::Value::from(token)
            .to_string()
            .replace('<', "\\u003c"),
        challenge = escape(&challenge.to_string()),
        nonce = escape(nonce),
    )
}

/// The hosted CAPTCHA's page: the provider's widget, whose token goes to
/// `/.palisade/challenge/captcha`. Answers the HTML and the CSP it needs.
pub fn captcha_page(
    c: &CaptchaSettings,
    title: &str,
    body: &str,
    token: &str,
    nonce: &str,
) -> (String, String) {
    let key = escape(&c.site_key);
    let action = escape(&c.action);
    let (script, widget, origins) = match c.provider {
        CaptchaProvider::Turnstile => (
            "<script src=\"https://challenges.cloudflare.com/turnstile/v0/api.js\" async defer></script>".to_owned(),
            format!("<div class=\"cf-turnstile\" data-sitekey=\"{key}\" data-action=\"{action}\" data-callback=\"palisadeDone\"></div>"),
            "https://challenges.cloudflare.com",
        ),
        CaptchaProvider::Hcaptcha => (
            "<script src=\"https://js.hcaptcha.com/1/api.js\" async defer></script>".to_owned(),
            format!("<div class=\"h-captcha\" data-sitekey=\"{key}\" data-callback=\"palisadeDone\"></div>"),
            "https://hcaptcha.com https://*.hcaptcha.com",
        ),
        CaptchaProvider::Recaptcha => (
            format!("<script src=\"https://www.google.com/recaptcha/api.js?render={key}\"></script>"),
            String::new(),
            "https://www.google.com https://www.gstatic.com https://www.recaptcha.net",
        ),
    };
    let cfg = serde_json::json!({ "t": token, "key": c.site_key, "action": c.action })
        .to_string()
        .replace('<', "\\u003c");
    let run = if c.provider == CaptchaProvider::Recaptcha {
        "grecaptcha.ready(function(){grecaptcha.execute(cfg.key,{action:cfg.action}).then(palisadeDone);});"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <script nonce=\"{nonce}\">var cfg={cfg};function palisadeDone(r){{location.replace('/.palisade/challenge/captcha?t='+encodeURIComponent(cfg.t)+'&r='+encodeURIComponent(r));}}</script>\
         {script}<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:10vh auto;padding:0 1rem}}</style></head>\
         <body><main><h1>{title}</h1><p>{body}</p>{widget}</main>\
         <script nonce=\"{nonce}\">window.addEventListener('load',function(){{{run}}});</script></body></html>\n",
        title = escape(title),
        body = escape(body),
        nonce = escape(nonce),
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}' {origins}; frame-src {origins}; connect-src {origins}; style-src 'unsafe-inline' {origins}; img-src data: {origins}; base-uri 'none'; frame-ancestors 'none'"
    );
    (html, csp)
}

/// What siteverify said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A human, with the score the route needs and the expected action.
    Pass,
    /// Refused: invalid, expired or duplicate, wrong action, low score.
    Fail(&'static str),
    /// siteverify unreachable, too slow, or answering nonsense.
    Error,
}

/// The provider's documented siteverify answer (the fields Palisade reads).
#[derive(Deserialize)]
struct SiteVerify {
    success: bool,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default, rename = "error-codes")]
    error_codes: Vec<String>,
}

type CaptchaClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> Option<&'static CaptchaClient> {
    static CLIENT: OnceLock<Option<CaptchaClient>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .ok()?
                .https_or_http()
                .enable_http1()
                .build();
            Some(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
        })
        .as_ref()
}

/// Checks a widget's token with the provider: `secret`, `response` and `remoteip` posted as a
/// form; `success`, the action and the score (at least `min_score`) read from its JSON.
pub async fn siteverify(
    c: &CaptchaSettings,
    response: &str,
    remote_ip: &str,
    min_score: f64,
) -> Verdict {
    if response.is_empty() || response.len() > 4096 {
        return Verdict::Fail("invalid");
    }
    let Some(client) = client() else {
        return Verdict::Error;
    };
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("secret", &c.secret)
        .append_pair("response", response)
        .append_pair("remoteip", remote_ip)
        .append_pair("sitekey", &c.site_key)
        .finish();
    let Ok(req) = http::Request::post(&c.verify_url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(form)))
    else {
        return Verdict::Error;
    };
    let timeout = Duration::from_millis(c.timeout_ms);
    let answer = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice::<SiteVerify>(&body).ok()
    })
    .await;
    let Ok(Some(v)) = answer else {
        return Verdict::Error;
    };
    if !v.success {
        return Verdict::Fail(
            if v.error_codes.iter().any(|e| e == "timeout-or-duplicate") {
                "expired"
            } else {
                "invalid"
            },
        );
    }
    if let Some(a) = &v.action
        && !a.is_empty()
        && *a != c.action
    {
        return Verdict::Fail("wrong_action");
    }
    match (c.provider, v.score) {
        // reCAPTCHA v3 always scores: 1.0 is very likely a good interaction.
        (CaptchaProvider::Recaptcha, None) => Verdict::Fail("no_score"),
        (CaptchaProvider::Recaptcha | CaptchaProvider::Turnstile, Some(s)) if s < min_score => {
            Verdict::Fail("low_score")
        }
        // hCaptcha Enterprise's score is a risk score: higher is more likely a bot.
        (CaptchaProvider::Hcaptcha, Some(risk)) if 1.0 - risk < min_score => {
            Verdict::Fail("low_score")
        }
        _ => Verdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puzzle() -> Puzzle {
        Puzzle {
            k: "p".into(),
            n: "00ff".into(),
            b: 10,
            i: 1,
            e: 99,
            h: String::new(),
            u: "/".into(),
            m: "GET".into(),
            r: "default".into(),
            p: 0,
        }
    }

    /// Solves an ALTCHA challenge as the widget does: the number whose salted hash is the
    /// challenge.
    fn widget_solve(c: &serde_json::Value) -> String {
        let salt = c["salt"].as_str().unwrap_or_default();
        let want = c["challenge"].as_str().unwrap_or_default();
        let max = c["maxnumber"].as_u64().unwrap_or_default();
        let n = (0..=max)
            .find(|n| sha256_hex(format!("{salt}{n}").as_bytes()) == want)
            .unwrap_or(u64::MAX);
        let payload = serde_json::json!({
            "algorithm": "SHA-256", "challenge": want, "number": n, "salt": salt,
            "signature": c["signature"], "took": 10,
        });
        base64::engine::general_purpose::STANDARD.encode(payload.to_string())
    }

    #[test]
    fn an_altcha_solution_answers_its_own_puzzle_only() {
        let s = Sealer::new(&[3; 32]);
        let p = puzzle();
        let c = altcha_challenge(&s, &p);
        assert!(c["maxnumber"].as_u64().unwrap_or_default() == 1024);
        let answer = widget_solve(&c);
        assert!(altcha_solves(&s, &p, &answer));
        // Another puzzle, another key, junk: no.
        let mut other = puzzle();
        other.n = "11".into();
        assert!(!altcha_solves(&s, &other, &answer));
        assert!(!altcha_solves(&Sealer::new(&[4; 32]), &p, &answer));
        assert!(!altcha_solves(&s, &p, "bm90IGpzb24="));
        assert!(!altcha_solves(&s, &p, "%%%"));
        assert!(!altcha_solves(&s, &p, &"A".repeat(5000)));
        // A wrong number with the right signature: no.
        let mut v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(&answer)
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        v["number"] = serde_json::json!(v["number"].as_u64().unwrap_or_default() + 1);
        let wrong = base64::engine::general_purpose::STANDARD.encode(v.to_string());
        assert!(!altcha_solves(&s, &p, &wrong));
    }
}
