//! API keys and their audit trail (`/v1/keys`, `/v1/audit`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use palisade_engine::{Clock, KeyPart};
use palisade_keys::{KeyUpdate, NewKey};

use crate::Shared;

use super::*;

pub(super) async fn list_keys(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let now = shared.clock.unix_secs();
    match shared.keys.run(|s| s.list()).await {
        Ok(list) => {
            let keys: Vec<_> = list
                .iter()
                .map(|r| r.view(now))
                .filter(|v| {
                    q.get("account")
                        .is_none_or(|a| v.account.as_ref() == Some(a))
                })
                .filter(|v| q.get("status").is_none_or(|st| v.status.name() == st))
                .collect();
            axum::Json(json!({ "keys": keys })).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn create_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let req: NewKey = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    let now = shared.clock.unix_secs();
    let max = shared.runtime.load().compiled.keys.max_keys_per_account;
    match shared
        .keys
        .run(move |s| {
            let created = s.create(&req, now, max, ACTOR)?;
            let record = s.get(&created.id)?;
            Ok((created, record))
        })
        .await
    {
        Ok((created, record)) => {
            shared.keys.publish(&[record]);
            count_change(&shared, "create");
            tracing::info!(key = %created.prefix, "api key created");
            (StatusCode::CREATED, axum::Json(created)).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn show_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let now = shared.clock.unix_secs();
    let lookup = id
        .strip_prefix(palisade_keys::key::KEY_PREFIX)
        .unwrap_or(&id)
        .to_owned();
    match shared.keys.run(move |s| s.get(&lookup)).await {
        Ok(r) => {
            let rt = shared.runtime.load();
            let usage = rt
                .engine
                .quota_report(&KeyPart::ApiKey, &r.id, shared.clock.unix_ms());
            let mut v = serde_json::to_value(r.view(now)).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "usage".to_owned(),
                    serde_json::to_value(usage).unwrap_or_default(),
                );
            }
            axum::Json(v).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn update_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let req: KeyUpdate = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    let now = shared.clock.unix_secs();
    match shared
        .keys
        .run(move |s| s.update(&id, &req, now, ACTOR))
        .await
    {
        Ok(r) => {
            shared.keys.publish(std::slice::from_ref(&r));
            count_change(&shared, "update");
            axum::Json(r.view(now)).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn revoke_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let now = shared.clock.unix_secs();
    match shared.keys.run(move |s| s.revoke(&id, now, ACTOR)).await {
        Ok(r) => {
            shared.keys.publish(std::slice::from_ref(&r));
            count_change(&shared, "revoke");
            tracing::info!(key = %r.prefix(), "api key revoked");
            axum::Json(r.view(now)).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn rotate_key(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let now = shared.clock.unix_secs();
    let grace = shared.runtime.load().compiled.keys.rotation_grace_secs;
    match shared
        .keys
        .run(move |s| {
            let created = s.rotate(&id, now, grace, ACTOR)?;
            Ok((created.clone(), vec![s.get(&id)?, s.get(&created.id)?]))
        })
        .await
    {
        Ok((created, records)) => {
            shared.keys.publish(&records);
            count_change(&shared, "rotate");
            (StatusCode::CREATED, axum::Json(created)).into_response()
        }
        Err(e) => store_error(e),
    }
}

pub(super) async fn audit(
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
        .min(10_000);
    match shared.keys.run(move |s| s.audit(limit)).await {
        Ok(entries) => axum::Json(json!({ "entries": entries })).into_response(),
        Err(e) => store_error(e),
    }
}
