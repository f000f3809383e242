//! `POST /admin/routes/{asset}/test` (SPEC 14, the admin page's "test connection"): what
//! `postern route test` does, through the running daemon's kept route. The OAuth2
//! authorization of a smarthost route (SPEC 15): `POST /admin/routes/{asset}/authorize`
//! starts a flow, `GET /admin/routes/{asset}/authorize/{flow}` tells how it went (what
//! `postern route authorize` polls), and `GET /oauth/callback` (public: the provider sends
//! the browser there) completes it, in `ui::oauth`.

use super::{admin, ApiError, AppState};
use crate::model::time::timestamp;
use crate::model::types::ApiCode;
use crate::outbound::oauth::flow::{StartError, Started};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

/// How long a test may take before it is reported as failed.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The route-test route in the OpenAPI document (admin token required).
#[derive(utoipa::OpenApi)]
#[openapi(paths(test, authorize, flow_status))]
pub struct RouteDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/routes/{asset}/test", post(test))
        .route("/admin/routes/{asset}/authorize", post(authorize))
        .route("/admin/routes/{asset}/authorize/{flow}", get(flow_status))
}

/// `POST /admin/routes/{asset}/authorize`'s body (optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeBody {
    /// The device-code flow instead of the browser's authorization-code flow.
    #[serde(default)]
    device: bool,
}

/// Starts an OAuth2 authorization of the asset's route: 200 with the consent `url`
/// (authorization-code flow with PKCE; the provider comes back to
/// `<public_url>/oauth/callback`), or with `{"device": true}` the `userCode` and
/// `verificationUri` of the device-code flow. The `flow` id is what to poll.
#[utoipa::path(post, path = "/admin/routes/{asset}/authorize", tag = "admin", params(("asset" = String, Path)), request_body(content = String, content_type = "application/json", description = "optional: {\"device\": true}"), responses((status = 200), (status = 400), (status = 404), (status = 502)))]
async fn authorize(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(asset): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let body: AuthorizeBody = if body.iter().all(u8::is_ascii_whitespace) {
        AuthorizeBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| super::queue::invalid(format!("the body: {e}")))?
    };
    let started = start_authorization(&d, &asset, body.device).await?;
    Ok(Json(match started {
        Started::Code {
            flow,
            url,
            expires_ms,
        } => json!({"asset": asset, "flow": flow, "url": url, "expiresAt": timestamp(expires_ms)}),
        Started::Device {
            flow,
            user_code,
            verification_uri,
            verification_uri_complete,
            interval_secs,
            expires_ms,
        } => json!({
            "asset": asset, "flow": flow, "userCode": user_code,
            "verificationUri": verification_uri,
            "verificationUriComplete": verification_uri_complete,
            "interval": interval_secs, "expiresAt": timestamp(expires_ms),
        }),
    })
    .into_response())
}

/// A flow started for the admin API or the admin page; errors as the API answers them.
pub(super) async fn start_authorization(
    d: &crate::daemon::Daemon,
    asset: &str,
    device: bool,
) -> Result<Started, ApiError> {
    let config = d.config();
    d.oauth
        .start(&config, asset, device)
        .await
        .map_err(|e| match e {
            StartError::NoRoute(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ApiCode::NotFound, e.to_string())
            }
            StartError::Invalid(m) => super::queue::invalid(m),
            StartError::Failed(m) => {
                ApiError::new(StatusCode::BAD_GATEWAY, ApiCode::Unavailable, m)
            }
        })
}

/// How an authorization flow went: `{"status": "pending" | "authorized" | "failed",
/// "error"}` (`exchanging` while the callback's code is being exchanged).
#[utoipa::path(get, path = "/admin/routes/{asset}/authorize/{flow}", tag = "admin", params(("asset" = String, Path), ("flow" = String, Path)), responses((status = 200), (status = 404)))]
async fn flow_status(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path((asset, flow)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let found = d
        .oauth
        .status(&flow)
        .await
        .map_err(ApiError::store)?
        .filter(|f| f.asset_id == asset)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ApiCode::NotFound,
                format!("no authorization flow {flow} for asset \"{asset}\""),
            )
        })?;
    let mut status = found.status.label();
    let mut error = found.error.clone();
    if status == "pending" && found.expires_ms <= crate::model::time::now_ms() {
        status = "failed";
        error = Some("the authorization expired (flows last 10 minutes)".into());
    }
    Ok(Json(json!({"asset": asset, "flow": flow, "status": status, "error": error, "expiresAt": timestamp(found.expires_ms)})).into_response())
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
