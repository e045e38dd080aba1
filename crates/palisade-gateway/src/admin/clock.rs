//! The test clock (`POST /v1/debug/clock`, only with `PALISADE_TEST_CLOCK=1`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use palisade_engine::Clock;

use crate::Shared;

use super::*;

/// Moves the wall clock forward; exists only with `PALISADE_TEST_CLOCK=1`.
pub(super) async fn debug_clock(
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
