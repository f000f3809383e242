//! Admin routes for the suppression store (SPEC 4.3, 8): list, add, remove, CSV import and
//! export; and the consent lists of contact-policy groups. The admin token is checked before anything is looked up.

use super::{admin, ApiError, AppState};
use crate::model::time::now_ms;
use crate::model::types::ApiCode;
use crate::store::suppression::{Reason, Suppression};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// The admin routes in the OpenAPI document (all need `Authorization: Bearer <admin token>`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    add,
    remove,
    export,
    import,
    consent_list,
    consent_grant,
    consent_revoke
))]
pub struct AdminDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/suppressions", get(list).post(add))
        .route("/admin/suppressions/export", get(export))
        .route("/admin/suppressions/import", post(import))
        .route("/admin/suppressions/{asset}/{address}", delete(remove))
        .route("/admin/consent/{group}", get(consent_list))
        .route(
            "/admin/consent/{group}/{address}",
            axum::routing::put(consent_grant).delete(consent_revoke),
        )
}

fn known_group(d: &crate::daemon::Daemon, group: &str) -> Result<(), ApiError> {
    match d.config().contact_policy(group) {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("no contact-policy group '{group}'"),
        )),
    }
}

#[utoipa::path(get, path = "/admin/consent/{group}", tag = "admin", params(("group" = String, Path)), responses((status = 200), (status = 404)))]
async fn consent_list(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    known_group(&d, &group)?;
    let list = d
        .store
        .policy()
        .consents(&group)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(json!({"group": group, "consents": list})).into_response())
}

#[utoipa::path(put, path = "/admin/consent/{group}/{address}", tag = "admin", params(("group" = String, Path), ("address" = String, Path)), responses((status = 204)))]
async fn consent_grant(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path((group, address)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    known_group(&d, &group)?;
    crate::model::types::check_address(&address).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            "address: is not a valid email address",
        )
    })?;
    d.store
        .policy()
        .set_consent(&group, &address, true)
        .await
        .map_err(ApiError::store)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(delete, path = "/admin/consent/{group}/{address}", tag = "admin", params(("group" = String, Path), ("address" = String, Path)), responses((status = 204), (status = 404)))]
async fn consent_revoke(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path((group, address)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    known_group(&d, &group)?;
    if d.store
        .policy()
        .set_consent(&group, &address, false)
        .await
        .map_err(ApiError::store)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("{address} has no consent in {group}"),
        ))
    }
}

#[derive(Deserialize)]
struct AssetFilter {
    asset: Option<String>,
}

fn entry_json(e: &Suppression) -> serde_json::Value {
    json!({
        "assetId": e.asset_id,
        "address": e.address,
        "reason": e.reason.label(),
        "since": crate::model::time::timestamp(e.since_ms),
        "expires": e.expires_ms.map(crate::model::time::timestamp),
        "source": e.source,
    })
}

#[utoipa::path(get, path = "/admin/suppressions", tag = "admin", params(("asset" = Option<String>, Query)), responses((status = 200, description = "active entries"), (status = 401), (status = 403)))]
async fn list(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AssetFilter>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let entries = list_entries(&d, q.asset.as_deref()).await?;
    let items: Vec<_> = entries.iter().map(entry_json).collect();
    Ok(Json(json!({"suppressions": items, "count": items.len()})).into_response())
}

/// The active suppressions, of one asset or of all.
pub(super) async fn list_entries(
    d: &crate::daemon::Daemon,
    asset: Option<&str>,
) -> Result<Vec<Suppression>, ApiError> {
    d.store
        .suppressions()
        .list(asset, now_ms())
        .await
        .map_err(ApiError::store)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddRequest {
    asset_id: String,
    address: String,
    reason: String,
}

#[utoipa::path(post, path = "/admin/suppressions", tag = "admin",
    request_body(content = String, content_type = "application/json", description = "{\"assetId\", \"address\", \"reason\": unsubscribed|bounced|complained}"),
    responses((status = 201), (status = 400)))]
async fn add(
    State(d): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let req: AddRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            format!("body: {e}"),
        )
    })?;
    let entry = add_entry(&d, req.asset_id, &req.address, &req.reason).await?;
    Ok((StatusCode::CREATED, Json(entry_json(&entry))).into_response())
}

/// Adds one suppression as the admin API and the admin page do: the asset must be
/// configured, the address valid, the reason one of the three.
pub(super) async fn add_entry(
    d: &crate::daemon::Daemon,
    asset_id: String,
    address: &str,
    reason: &str,
) -> Result<Suppression, ApiError> {
    let config = d.config();
    let asset = config.asset(&asset_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            format!("assetId: '{asset_id}' is not configured"),
        )
    })?;
    crate::model::types::check_address(address).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            "address: is not a valid email address",
        )
    })?;
    let reason = Reason::parse(reason).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            "reason: must be unsubscribed, bounced or complained",
        )
    })?;
    let now = now_ms();
    let retention_ms = config.bounce_retention_ms(&asset.id);
    let entry = Suppression {
        asset_id,
        address: address.to_ascii_lowercase(),
        reason,
        since_ms: now,
        expires_ms: (reason == Reason::Bounced).then_some(now + retention_ms),
        source: "admin".into(),
    };
    d.store
        .suppressions()
        .add(std::slice::from_ref(&entry))
        .await
        .map_err(ApiError::store)?;
    Ok(entry)
}

#[utoipa::path(delete, path = "/admin/suppressions/{asset}/{address}", tag = "admin", params(("asset" = String, Path), ("address" = String, Path)), responses((status = 204), (status = 404)))]
async fn remove(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path((asset, address)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    remove_entry(&d, &asset, &address).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes one suppression; 404 when the address is not suppressed for the asset.
pub(super) async fn remove_entry(
    d: &crate::daemon::Daemon,
    asset: &str,
    address: &str,
) -> Result<(), ApiError> {
    if d.store
        .suppressions()
        .remove(asset, address)
        .await
        .map_err(ApiError::store)?
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("{address} is not suppressed for {asset}"),
        ))
    }
}

#[utoipa::path(get, path = "/admin/suppressions/export", tag = "admin", params(("asset" = Option<String>, Query)), responses((status = 200, description = "CSV: asset_id,address,reason,since,expires", content_type = "text/csv")))]
async fn export(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AssetFilter>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let text = export_csv(&d, q.asset.as_deref()).await?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response())
}

/// The active suppressions as CSV (`asset_id,address,reason,since,expires`).
pub(super) async fn export_csv(
    d: &crate::daemon::Daemon,
    asset: Option<&str>,
) -> Result<String, ApiError> {
    let entries = list_entries(d, asset).await?;
    crate::outbound::suppression::to_csv(&entries).map_err(ApiError::internal)
}

#[utoipa::path(post, path = "/admin/suppressions/import", tag = "admin", request_body(content = String, content_type = "text/csv"), responses((status = 200), (status = 400, description = "names the bad line; nothing imported")))]
async fn import(
    State(d): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let imported = import_csv(&d, &body).await?;
    Ok(Json(json!({"imported": imported})).into_response())
}

/// Imports a CSV of suppressions, all or nothing: a bad line is named and nothing is
/// stored. Returns how many entries were imported.
pub(super) async fn import_csv(d: &crate::daemon::Daemon, body: &[u8]) -> Result<usize, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::Malformed,
            "CSV is not UTF-8",
        )
    })?;
    let config = d.config();
    let entries = crate::outbound::suppression::from_csv(
        text,
        now_ms(),
        &|a| config.asset(a).is_some(),
        &|a| config.bounce_retention_ms(a),
    )
    .map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            format!("{e}; nothing was imported"),
        )
    })?;
    d.store
        .suppressions()
        .add(&entries)
        .await
        .map_err(ApiError::store)?;
    Ok(entries.len())
}
