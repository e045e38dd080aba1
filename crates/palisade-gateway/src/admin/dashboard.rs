//! The dashboard (`/dashboard` on the admin listener): a login form that takes the admin token
//! and sets a session cookie (`HttpOnly`, `Secure`, `SameSite=Strict`, 12 hours, signed with a
//! per-process key), then one page — decisions over the last hour by action (uPlot, served from
//! here), latency of forwarded requests, routes, rules, top identities with a click-through to
//! the explain view, blocks, keys with today's quota use, attack mode, challenges, store health,
//! and a live decision stream (server-sent events) filterable by action, route and rule.
//!
//! The page's calls to the admin API carry the session cookie and an `X-Palisade-Dashboard`
//! header: a cross-site page can send neither (the cookie is `SameSite=Strict`, the header needs
//! a CORS preflight that is never granted).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Shared;
use crate::telemetry::decision_log::DecisionRecord;
use crate::telemetry::series::{ACTIONS, BUCKETS};

/// The session cookie's name.
pub const COOKIE: &str = "palisade_dashboard";
/// The header the page's API calls carry.
pub const HEADER: &str = "x-palisade-dashboard";
/// How long a session lasts.
const SESSION_SECS: u64 = 12 * 3600;

const UPLOT_JS: &str = include_str!("../../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/uplot/uPlot.min.css");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");
const PAGE: &str = include_str!("../../assets/dashboard/index.html");

/// Identity dimensions shown in the top tables, in the decision log's names.
const DIMENSIONS: [&str; 8] = [
    "ip", "ip/24", "asn", "api_key", "account", "hfp", "ja4h", "ja4",
];

/// The per-process key sessions are signed with (sessions end with the process).
fn key() -> &'static aws_lc_rs::hmac::Key {
    static KEY: OnceLock<aws_lc_rs::hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut k);
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k)
    })
}

fn sign(expires: u64) -> String {
    let tag = aws_lc_rs::hmac::sign(key(), format!("dashboard:{expires}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{expires}.{hex}")
}

/// Whether a cookie value is a live session.
fn valid(value: &str, now_secs: u64) -> bool {
    let Some((exp, hex)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = exp.parse::<u64>() else {
        return false;
    };
    if expires <= now_secs || expires > now_secs + SESSION_SECS || hex.len() != 64 {
        return false;
    }
    let Some(tag) = (0..32)
        .map(|i| {
            hex.get(i * 2..i * 2 + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    aws_lc_rs::hmac::verify(key(), format!("dashboard:{expires}").as_bytes(), &tag).is_ok()
}

/// The session cookie's value in `headers`, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == COOKIE)
        .map(|(_, v)| v)
}

/// Whether the request comes from a logged-in dashboard page: a live session cookie and, for
/// the admin API (`api`), the dashboard's header.
pub fn session(headers: &HeaderMap, shared: &Shared, api: bool) -> bool {
    (!api || headers.contains_key(HEADER))
        && cookie(headers).is_some_and(|c| valid(c, shared.clock.unix_secs()))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn login_page(message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>Palisade — sign in</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/dashboard/assets/app.css\"></head>\
         <body class=\"login\"><form method=\"post\" action=\"/dashboard/login\"><h1>Palisade</h1>\
         <p>The admin token: <code>PALISADE_ADMIN_TOKEN</code>, <code>[server] admin_token</code>, or <code>admin.token</code> in the data dir.</p>\
         <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus required></label>\
         <p class=\"error\">{}</p><button>Sign in</button></form></body></html>",
        message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    )
}

/// `GET /dashboard`: the page, or the login form.
pub async fn page(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if session(&headers, &shared, false) {
        html(StatusCode::OK, PAGE.to_owned())
    } else {
        html(StatusCode::OK, login_page(""))
    }
}

/// `POST /dashboard/login`: the token from the form; a session cookie when it is right.
pub async fn login(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !super::token::constant_time_eq(token.trim().as_bytes(), shared.admin_token.as_bytes()) {
        // Guessing costs a second per try on this connection.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return html(
            StatusCode::UNAUTHORIZED,
            login_page("That is not the admin token."),
        );
    }
    let expires = shared.clock.unix_secs() + SESSION_SECS;
    let cookie = format!(
        "{COOKIE}={}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; Secure; SameSite=Strict",
        sign(expires)
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/dashboard".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

/// `POST /dashboard/logout`: forgets the cookie.
pub async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"),
            ),
            (header::LOCATION, "/dashboard".to_owned()),
        ],
    )
        .into_response()
}

/// `GET /dashboard/assets/{name}`: uPlot and the page's own script and style.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn forbidden() -> Response {
    super::error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sign in to the dashboard",
    )
}

/// `GET /dashboard/api/overview`: the page's data in one call.
pub async fn overview(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !session(&headers, &shared, true) && super::unauthorized(&headers, &shared).is_some() {
        return forbidden();
    }
    let now = shared.clock.unix_secs();
    let rt = shared.runtime.load();
    let labels = &rt.route_labels;
    let routes: Vec<serde_json::Value> = shared
        .series
        .routes(now, labels.len())
        .into_iter()
        .zip(labels.iter())
        .map(|((total, refused), name)| json!({ "route": &**name, "requests": total, "refused": refused }))
        .collect();
    // Top identities, rules and scores over the decisions kept in memory.
    let lines = shared.log.recent_lines();
    let records: Vec<DecisionRecord> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    let mut rules: std::collections::HashMap<&str, u64> = Default::default();
    let mut per_dim: std::collections::HashMap<(&str, String), Agg> = Default::default();
    for r in &records {
        let refused = matches!(
            r.action.as_str(),
            "limit" | "block" | "unauthorized" | "challenge"
        );
        if r.action != "allow" {
            *rules.entry(r.rule.as_str()).or_default() += 1;
        }
        for dim in DIMENSIONS {
            let Some(v) = r.identity.get(dim) else {
                continue;
            };
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let a = per_dim.entry((dim, value)).or_default();
            a.requests += 1;
            a.max_score = a.max_score.max(r.score);
            if refused {
                a.refusals += 1;
                *a.rules.entry(r.rule.clone()).or_default() += 1;
            }
            for reason in &r.reasons {
                *a.signals.entry(reason.signal.clone()).or_default() += 1;
            }
        }
    }
    let mut top = serde_json::Map::new();
    for dim in DIMENSIONS {
        let mut rows: Vec<(&String, &Agg)> = per_dim
            .iter()
            .filter(|((d, _), _)| *d == dim)
            .map(|((_, v), a)| (v, a))
            .collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by(|a, b| {
            (b.1.refusals, b.1.max_score)
                .cmp(&(a.1.refusals, a.1.max_score))
                .then(a.0.cmp(b.0))
        });
        top.insert(
            dim.to_owned(),
            rows.into_iter()
                .take(15)
                .map(|(v, a)| {
                    json!({
                        "value": v, "requests": a.requests, "refusals": a.refusals,
                        "max_score": a.max_score, "rules": first(&a.rules, 3), "signals": first(&a.signals, 3),
                    })
                })
                .collect(),
        );
    }
    let mut rules: Vec<(&str, u64)> = rules.into_iter().collect();
    rules.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mode = match rt.compiled.policy.mode {
        palisade_engine::Mode::Enforce => "enforce",
        palisade_engine::Mode::Shadow => "shadow",
    };
    axum::Json(json!({
        "now": now,
        "mode": mode,
        "version": env!("CARGO_PKG_VERSION"),
        "store": match &shared.store {
            None => "embedded",
            Some(s) if s.is_healthy() => "connected",
            Some(_) => "unreachable",
        },
        "actions": ACTIONS,
        "series": shared.series.points(now, BUCKETS),
        "routes": routes,
        "rules": rules.into_iter().take(20).map(|(r, n)| json!({ "rule": r, "count": n })).collect::<Vec<_>>(),
        "top": top,
        "recent": records.len(),
    }))
    .into_response()
}

#[derive(Default)]
struct Agg {
    requests: u64,
    refusals: u64,
    max_score: u8,
    rules: std::collections::HashMap<String, u64>,
    signals: std::collections::HashMap<String, u64>,
}

fn first(m: &std::collections::HashMap<String, u64>, n: usize) -> Vec<String> {
    let mut v: Vec<(&String, &u64)> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.into_iter().take(n).map(|(k, _)| k.clone()).collect()
}

/// `GET /dashboard/api/stream?action=&route=&rule=`: logged decisions as they happen
/// (server-sent events, one JSON decision per event). A slow reader skips lines (an event
/// `skipped` says how many) rather than slowing the gateway.
pub async fn stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if !session(&headers, &shared, false) && super::unauthorized(&headers, &shared).is_some() {
        return forbidden();
    }
    let rx = shared.log.subscribe();
    let filter = move |line: &[u8]| -> bool {
        if q.is_empty() {
            return true;
        }
        let Ok(r) = serde_json::from_slice::<DecisionRecord>(line) else {
            return false;
        };
        q.get("action")
            .is_none_or(|v| v.is_empty() || &r.action == v)
            && q.get("route").is_none_or(|v| v.is_empty() || &r.route == v)
            && q.get("rule")
                .is_none_or(|v| v.is_empty() || r.rule.starts_with(v.as_str()))
    };
    let events = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    if filter(&line) {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        return Some((
                            Ok::<_, std::convert::Infallible>(Event::default().data(text)),
                            (rx, filter),
                        ));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    return Some((
                        Ok(Event::default().event("skipped").data(n.to_string())),
                        (rx, filter),
                    ));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let now = 1_796_630_400;
        let s = sign(now + 60);
        assert!(valid(&s, now));
        assert!(!valid(&s, now + 61), "expired");
        let forged = format!("{}.{}", now + 60, "0".repeat(64));
        assert!(!valid(&forged, now));
        let longer = s.replacen(&(now + 60).to_string(), &(now + 120).to_string(), 1);
        assert!(!valid(&longer, now), "the expiry is signed");
        assert!(
            !valid(&sign(now + SESSION_SECS + 10), now),
            "no session beyond 12 h"
        );
        assert!(!valid("garbage", now) && !valid("1.zz", now));
    }
}
