//! `GET /v1/config` (secrets redacted) and `POST /v1/reload`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Shared;
use crate::reload::reload as do_reload;

use super::*;

pub(super) async fn config(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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

pub(super) async fn reload(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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
