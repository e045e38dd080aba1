//! Blocks with a time to live (`/v1/blocks`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use palisade_engine::Clock;

use crate::Shared;

use super::*;

pub(super) async fn list_blocks(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let rt = shared.runtime.load();
    let now = shared.clock.unix_ms();
    let blocks: Vec<serde_json::Value> = rt
        .engine
        .blocks()
        .list(now)
        .into_iter()
        .map(|b| {
            json!({
                "key": b.key,
                "until": palisade_keys::time::rfc3339(b.until_ms / 1000),
                "expires_in_secs": b.until_ms.saturating_sub(now) / 1000,
                "reason": b.reason,
                "effect": b.effect,
                "strikes": b.strikes,
            })
        })
        .collect();
    axum::Json(json!({ "blocks": blocks })).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockRequest {
    dimension: String,
    value: String,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// A score weight instead of a block.
    #[serde(default)]
    score: Option<u8>,
}

pub(super) fn bad_block(message: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

pub(super) async fn add_block(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let req: BlockRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    let Some(key) = palisade_engine::state::blocks::block_key(&req.dimension, &req.value) else {
        return bad_block(&format!(
            "`{}` / `{}` is not a block: dimension is one of {} and the value must fit it",
            req.dimension,
            req.value,
            palisade_engine::state::blocks::DIMENSIONS.join(", ")
        ));
    };
    let ttl_ms = match req
        .ttl
        .as_deref()
        .map(palisade_engine::units::parse_duration)
    {
        None => 3_600_000,
        Some(Ok(ns)) if ns >= 1_000_000_000 => ns / 1_000_000,
        Some(Ok(_)) => return bad_block("ttl must be at least 1s"),
        Some(Err(e)) => return bad_block(&format!("ttl: {e}")),
    };
    let reason = match req.reason.as_deref() {
        Some(r)
            if !r.is_empty()
                && r.len() <= 64
                && r.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/')
                }) =>
        {
            format!("admin/{r}")
        }
        Some(_) => return bad_block("reason must be 1-64 letters, digits or -_./"),
        None => "admin".to_owned(),
    };
    let effect = match req.score {
        Some(w) if w <= 100 => palisade_engine::state::blocks::BlockEffect::Score(w),
        Some(_) => return bad_block("score must be between 0 and 100"),
        None => palisade_engine::state::blocks::BlockEffect::Block,
    };
    let rt = shared.runtime.load();
    let now = shared.clock.unix_ms();
    let entry = rt
        .engine
        .blocks()
        .add(key, ttl_ms, &reason, effect, true, now);
    drop(rt);
    // Written to the store now (not at the next flush), with an audit entry.
    let saved = entry.clone();
    let details = json!({ "block": entry.key, "until": palisade_keys::time::rfc3339(entry.until_ms / 1000), "reason": entry.reason, "strikes": entry.strikes });
    let secs = now / 1000;
    if let Err(e) = shared
        .keys
        .run(move |s| {
            s.save_blocks(std::slice::from_ref(&saved), now)?;
            s.append_audit(ACTOR, "block.add", secs, details)
        })
        .await
    {
        return store_error(e);
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "key": entry.key,
            "until": palisade_keys::time::rfc3339(entry.until_ms / 1000),
            "reason": entry.reason,
            "effect": entry.effect,
            "strikes": entry.strikes,
        })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnblockRequest {
    dimension: String,
    value: String,
}

pub(super) async fn remove_block(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let req: UnblockRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    let Some(key) = palisade_engine::state::blocks::block_key(&req.dimension, &req.value) else {
        return bad_block("no such dimension or value");
    };
    let removed = shared
        .runtime
        .load()
        .engine
        .blocks()
        .remove(&key, shared.clock.unix_ms());
    let k = key.clone();
    let now = shared.clock.unix_secs();
    if let Err(e) = shared
        .keys
        .run(move |s| s.delete_block(&k, ACTOR, now))
        .await
    {
        return store_error(e);
    }
    if removed {
        axum::Json(json!({ "removed": key })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", "no such block")
    }
}
