//! The admin API: health, metrics, config, reload, recent decisions and identity look-ups.
//! `/healthz` and `/metrics` are open; everything under `/v1/` needs the bearer token.

pub mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use palisade_engine::{Clock, KeyPart};
use palisade_keys::{KeyUpdate, NewKey, StoreError};

use crate::Shared;
use crate::admin::token::constant_time_eq;
use crate::listen::idle::{IdleTimeoutIo, InFlight};
use crate::reload::reload as do_reload;
use crate::telemetry::decision_log::DecisionRecord;

/// The admin API's OpenAPI description.
pub const OPENAPI: &str = include_str!("../../../../docs/admin-api.openapi.json");

/// Serves the admin API until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Served like the proxy (header-read and idle timeouts, a connection cap, graceful
    // drain), not with `axum::serve`, which has no timeouts.
    const MAX_ADMIN_CONNECTIONS: usize = 256;
    let app = router(shared.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let (builder, idle) = {
                    let rt = shared.runtime.load();
                    let mut b = connection_builder(&rt);
                    // The admin API keeps hyper's header timer (a timer per request is no cost
                    // here); the proxy's is kept by `IdleTimeoutIo`, which needs requests
                    // counted.
                    b.http1().header_read_timeout(Duration::from_nanos(
                        rt.compiled.server.header_read_timeout,
                    ));
                    (b, Duration::from_nanos(rt.compiled.server.idle_timeout))
                };
                let io = TokioIo::new(IdleTimeoutIo::new(stream, idle, None, InFlight::default()));
                let svc = TowerToHyperService::new(app.clone());
                let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// The admin router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/config", get(config))
        .route("/v1/reload", post(reload))
        .route("/v1/decisions", get(decisions))
        .route("/v1/identities/{*rest}", get(identity))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", get(show_key).patch(update_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/audit", get(audit))
        .route("/v1/blocks", get(list_blocks).post(add_block))
        .route("/v1/blocks/remove", post(remove_block))
        .route("/v1/debug/clock", post(debug_clock))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint") })
        .with_state(shared)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "message": message })),
    )
        .into_response()
}

/// `Some(401 response)` unless the request carries the admin token.
fn unauthorized(headers: &HeaderMap, shared: &Shared) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), shared.admin_token.as_bytes()) => None,
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Some(r)
        }
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let rt = shared.runtime.load();
    let mode = match rt.compiled.policy.mode {
        palisade_engine::Mode::Enforce => "enforce",
        palisade_engine::Mode::Shadow => "shadow",
    };
    // A gateway whose shared store is down still answers (with its fallback): degraded, not
    // dead, so load balancers keep it.
    let (status, store) = match &shared.store {
        None => ("ok", "embedded"),
        Some(s) if s.is_healthy() => ("ok", "connected"),
        Some(_) => ("degraded", "unreachable"),
    };
    let keys = shared
        .store
        .as_ref()
        .map_or("local", |s| s.key_sharing_state());
    axum::Json(json!({ "status": status, "mode": mode, "store": store, "keys": keys, "version": env!("CARGO_PKG_VERSION") }))
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let rt = shared.runtime.load();
    let body = shared.metrics.render(&rt.engine, shared.store.as_deref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn config(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    let rt = shared.runtime.load();
    axum::Json(json!({
        "source": shared.source.describe(),
        "config": rt.compiled.redacted,
    }))
    .into_response()
}

async fn reload(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    match do_reload(&shared, "admin API").await {
        Ok(()) => axum::Json(json!({ "status": "reloaded", "source": shared.source.describe() }))
            .into_response(),
        Err(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "error": "invalid_config",
                "message": "the configuration was refused; the previous policy stays in force",
                "source": errs.origin,
                "errors": errs.errors,
            })),
        )
            .into_response(),
    }
}

async fn decisions(
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
fn split_identity(rest: &str) -> Option<(String, String)> {
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

async fn identity(
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

/// Who made an admin change, for the audit log.
const ACTOR: &str = "admin-api";

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", &e.to_string()),
        StoreError::Invalid(list) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "error": "invalid_request",
                "message": "the request was refused; see errors",
                "errors": list,
            })),
        )
            .into_response(),
        StoreError::AccountFull { .. } => {
            error(StatusCode::CONFLICT, "account_key_limit", &e.to_string())
        }
        StoreError::Revoked(_) => error(StatusCode::CONFLICT, "key_revoked", &e.to_string()),
        StoreError::InUse(_) | StoreError::Io(_) | StoreError::Db(_) => {
            tracing::error!(error = %e, "key store failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "the key store failed; see the gateway log",
            )
        }
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
}

fn bad_json(e: serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_json",
        &format!("the body is not a valid request: {e}"),
    )
}

fn count_change(shared: &Shared, action: &'static str) {
    shared
        .metrics
        .key_changes
        .get_or_create(&crate::telemetry::metrics::KeyChangeLabels { action })
        .inc();
}

async fn list_keys(
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

async fn create_key(
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

async fn show_key(
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

async fn update_key(
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

async fn revoke_key(
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

async fn rotate_key(
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

async fn audit(
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

async fn list_blocks(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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
struct BlockRequest {
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

fn bad_block(message: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

async fn add_block(
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
struct UnblockRequest {
    dimension: String,
    value: String,
}

async fn remove_block(
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

/// Moves the wall clock forward; exists only with `PALISADE_TEST_CLOCK=1`.
async fn debug_clock(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !shared.clock.adjustable() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint");
    }
    if let Some(r) = unauthorized(&headers, &shared) {
        return r;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Advance {
        advance_secs: u64,
    }
    let req: Advance = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    let offset = shared.clock.advance(req.advance_secs.saturating_mul(1000));
    axum::Json(json!({ "offset_ms": offset, "unix_ms": shared.clock.unix_ms() })).into_response()
}

/// How many request headers hyper's HTTP/1 parser accepts when not told otherwise.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The hyper connection builder with the configured timeouts and bounds, for the admin
/// listener (the proxy's HTTP/1.x side is `h1server`, its HTTP/2 side [`h2_builder`]).
pub(crate) fn connection_builder(
    rt: &crate::Runtime,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let s = &rt.compiled.server;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The header-read timeout is kept by `IdleTimeoutIo` (without a timer per request).
        .header_read_timeout(None::<Duration>)
        .max_buf_size(s.max_header_bytes.max(8192))
        // Responses here are mostly small: one flattened buffer measured ~4% faster than a
        // vectored write (bench/README.md).
        .writev(false);
    // hyper refuses more than 100 headers by default, from a stack array; a configured cap
    // makes it zero a heap array of that size per request, so it is only set above 100.
    if s.max_header_count > HYPER_DEFAULT_MAX_HEADERS {
        b.http1().max_headers(s.max_header_count);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

#[cfg(test)]
mod tests {
    use super::split_identity;

    #[test]
    fn identity_paths() {
        let s = |x: &str| split_identity(x).map(|(a, b)| format!("{a}|{b}"));
        assert_eq!(s("ip/203.0.113.7").as_deref(), Some("ip|203.0.113.7"));
        assert_eq!(s("ip/24/203.0.113.0").as_deref(), Some("ip/24|203.0.113.0"));
        assert_eq!(
            s("ip/24/56/2001:db8::").as_deref(),
            Some("ip/24/56|2001:db8::")
        );
        assert_eq!(
            s("header:x-tenant/acme/x").as_deref(),
            Some("header:x-tenant|acme/x")
        );
        assert_eq!(s("ip"), None);
        assert_eq!(s("ip/24"), None);
    }
}
