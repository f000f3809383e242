//! `POST /admin/routes/{asset}/test` (SPEC 14, the admin page's "test connection"): what
//! `postern route test` does, through the running daemon's kept route.

use super::{admin, ApiError, AppState};
use crate::model::types::ApiCode;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

/// How long a test may take before it is reported as failed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The route-test route in the OpenAPI document (admin token required).
#[derive(utoipa::OpenApi)]
#[openapi(paths(test))]
pub struct RouteDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/routes/{asset}/test", post(test))
}

/// Connects and authenticates to the asset's route (smarthost EHLO/AUTH, SES
/// GetAccount); sends nothing. 200 `{"ok":true,"report"}` or `{"ok":false,"error"}`.
#[utoipa::path(post, path = "/admin/routes/{asset}/test", tag = "admin", params(("asset" = String, Path)), responses((status = 200), (status = 404)))]
async fn test(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(asset): Path<String>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let result = test_route(&d, &asset).await?;
    Ok(Json(match result {
        Ok(report) => json!({"asset": asset, "ok": true, "report": report}),
        Err(e) => json!({"asset": asset, "ok": false, "error": e}),
    })
    .into_response())
}

/// The test itself, for the admin API and the admin page: the daemon's kept route for
/// `asset` connects and authenticates; its report, or why it failed.
pub(super) async fn test_route(
    d: &crate::daemon::Daemon,
    asset: &str,
) -> Result<Result<String, String>, ApiError> {
    let config = d.config();
    let Some(route) = d.queue_worker.route(&config, asset) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("asset \"{asset}\" has no route in the configuration"),
        ));
    };
    let result = match tokio::time::timeout(TEST_TIMEOUT, route.test()).await {
        Ok(r) => r
            .map(|report| report.to_string())
            .map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", TEST_TIMEOUT.as_secs())),
    };
    tracing::info!(asset = %asset, ok = result.is_ok(), "route tested by an operator");
    Ok(result)
}
