//! The admin API: health, metrics, config, reload, recent decisions and identity look-ups.
//! `/healthz` and `/metrics` are open; everything under `/v1/` needs the bearer token.

mod blocks;
mod clock;
mod config;
pub mod dashboard;
mod identities;
mod keys;

pub mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use palisade_keys::StoreError;

use crate::Shared;
use crate::admin::token::constant_time_eq;
use crate::listen::idle::{IdleTimeoutIo, InFlight};

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
    use blocks::*;
    use clock::*;
    use config::*;
    use identities::*;
    use keys::*;
    Router::new()
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/login", post(dashboard::login))
        .route("/dashboard/logout", post(dashboard::logout))
        .route("/dashboard/assets/{name}", get(dashboard::asset))
        .route("/dashboard/api/overview", get(dashboard::overview))
        .route("/dashboard/api/stream", get(dashboard::stream))
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

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "message": message })),
    )
        .into_response()
}

/// `Some(401 response)` unless the request carries the admin token.
pub(super) fn unauthorized(headers: &HeaderMap, shared: &Shared) -> Option<Response> {
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
        // The dashboard page's own calls: its session cookie and header.
        None if dashboard::session(headers, shared, true) => None,
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

/// Who made an admin change, for the audit log.
pub(super) const ACTOR: &str = "admin-api";

pub(super) fn store_error(e: StoreError) -> Response {
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

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, serde_json::Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
}

pub(super) fn bad_json(e: serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_json",
        &format!("the body is not a valid request: {e}"),
    )
}

pub(super) fn count_change(shared: &Shared, action: &'static str) {
    shared
        .metrics
        .key_changes
        .get_or_create(&crate::telemetry::metrics::KeyChangeLabels { action })
        .inc();
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
    use super::identities::split_identity;

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
