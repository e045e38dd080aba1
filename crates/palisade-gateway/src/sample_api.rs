//! The built-in sample API: served on loopback when no upstream is configured, so a newcomer
//! sees the gateway working at once. Also `palisade sample-api` for benchmarks and demos.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

/// The demo user.
pub const DEMO_USER: &str = "demo";
/// The demo user's password.
pub const DEMO_PASSWORD: &str = "palisade-demo";
/// Tokens `/api/expensive` reports per call in `x-cost-tokens`.
pub const EXPENSIVE_TOKENS: u64 = 150;

/// The router.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/login", post(login))
        .route("/api/items/{id}", get(item))
        .route("/api/search", get(search))
        .route("/api/expensive", get(expensive))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "not_found"})),
            )
        })
}

/// Binds and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router()).await {
            tracing::error!(error = %e, "sample API stopped");
        }
    });
    Ok(bound)
}

/// Serves on an existing listener until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

async fn index() -> &'static str {
    "Palisade sample API\n\
     POST /api/login          {\"username\":\"demo\",\"password\":\"palisade-demo\"} -> 200, else 401\n\
     GET  /api/items/{id}     ids 1-1000 exist, others 404\n\
     GET  /api/search?q=      items whose name contains q\n\
     GET  /api/expensive      slow on purpose; reports its cost in x-cost-tokens\n"
}

async fn login(body: Bytes) -> Response {
    let creds: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            Some((
                v.get("username")?.as_str()?.to_owned(),
                v.get("password")?.as_str()?.to_owned(),
            ))
        });
    match creds {
        Some((u, p)) if known_user(&u) && p == DEMO_PASSWORD => {
            let session = format!("{:032x}", rand::random::<u128>());
            (
                [(
                    axum::http::header::SET_COOKIE,
                    format!("session={session}; Path=/; HttpOnly; SameSite=Lax"),
                )],
                axum::Json(json!({ "token": "demo-session-token", "user": u })),
            )
                .into_response()
        }
        Some(_) => (StatusCode::UNAUTHORIZED, axum::Json(json!({ "error": "invalid_credentials" }))).into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "bad_request", "message": "send JSON {\"username\":…,\"password\":…}" })),
        )
            .into_response(),
    }
}

/// The demo user, and `user-1` ... `user-1000` (for the traffic simulator's people), all with
/// the demo password.
fn known_user(u: &str) -> bool {
    u == DEMO_USER
        || u.strip_prefix("user-")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=1000).contains(&n) && !u.contains('+'))
}

fn item_json(id: u64) -> serde_json::Value {
    json!({ "id": id, "name": format!("Item {id}"), "price_cents": 100 + (id * 37) % 9900 })
}

async fn item(Path(id): Path<String>) -> Response {
    match id.parse::<u64>() {
        Ok(id @ 1..=1000) => axum::Json(item_json(id)).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "not_found" })),
        )
            .into_response(),
    }
}

async fn search(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    let query = q.get("q").cloned().unwrap_or_default();
    let results: Vec<serde_json::Value> = (1..=1000u64)
        .filter(|id| format!("Item {id}").contains(query.as_str()))
        .take(10)
        .map(item_json)
        .collect();
    axum::Json(json!({ "query": query, "results": results })).into_response()
}

async fn expensive() -> Response {
    tokio::time::sleep(Duration::from_millis(250)).await;
    (
        [("x-cost-tokens", EXPENSIVE_TOKENS.to_string())],
        axum::Json(json!({ "report": "done", "tokens": EXPENSIVE_TOKENS })),
    )
        .into_response()
}
