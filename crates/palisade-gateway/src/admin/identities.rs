//! Recent decisions and "why was this client limited?" (`/v1/decisions`, `/v1/identities`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use palisade_engine::{Clock, KeyPart};

use crate::Shared;
use crate::telemetry::decision_log::DecisionRecord;

use super::*;

pub(super) async fn decisions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .min(1000);
    let items = shared.log.recent(limit, |r| {
        q.get("client_ip").is_none_or(|v| &r.client_ip == v)
            && q.get("action").is_none_or(|v| &r.action == v)
            && q.get("route").is_none_or(|v| &r.route == v)
    });
    axum::Json(json!({ "decisions": items })).into_response()
}

/// Splits `ip/24/203.0.113.0` into (`ip/24`, `203.0.113.0`), `header:x-tenant/acme` into
/// (`header:x-tenant`, `acme`).
pub(super) fn split_identity(rest: &str) -> Option<(String, String)> {
    let mut segs = rest.trim_start_matches('/').split('/');
    let first = segs.next()?.to_owned();
    let mut dim = first;
    let remaining: Vec<&str> = segs.collect();
    let mut used = 0;
    if dim == "ip" {
        for s in remaining.iter().take(2) {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                dim.push('/');
                dim.push_str(s);
                used += 1;
            } else {
                break;
            }
        }
    }
    let value = remaining.get(used..)?.join("/");
    if value.is_empty() {
        return None;
    }
    Some((dim, value))
}

pub(super) async fn identity(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let Some((dim_s, value)) = split_identity(&rest) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_identity",
            "use /v1/identities/{dimension}/{value}, e.g. /v1/identities/ip/203.0.113.7 or /v1/identities/ip/24/203.0.113.0",
        );
    };
    let dim = match KeyPart::parse(&dim_s) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_dimension", &e.to_string()),
    };
    let rt = shared.runtime.load();
    let report = match rt
        .engine
        .identity(&dim, &value, shared.clock.now(), shared.clock.unix_ms())
    {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_value", &e.to_string()),
    };
    let shown = report.value.clone();
    let matches = |r: &DecisionRecord| -> bool {
        match &dim {
            KeyPart::Ip => r.client_ip == shown,
            KeyPart::Route => r.route == shown,
            KeyPart::Method => r.method == shown,
            _ => r.identity.get(&dim_s).and_then(|v| v.as_str()) == Some(shown.as_str()),
        }
    };
    let recent = shared.log.recent(50, matches);
    // An active block on this identity, if any.
    let now = shared.clock.unix_ms();
    let block = palisade_engine::state::blocks::block_key(&dim_s, &value)
        .and_then(|k| rt.engine.blocks().find(&[k], now))
        .map(|b| {
            json!({
                "key": b.key,
                "until": palisade_keys::time::rfc3339(b.until_ms / 1000),
                "reason": b.reason,
                "effect": b.effect,
                "strikes": b.strikes,
            })
        });
    axum::Json(json!({
        "identity": report,
        "block": block,
        "recent_decisions": recent,
    }))
    .into_response()
}
