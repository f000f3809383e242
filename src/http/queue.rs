//! Admin routes for the outbound queue (SPEC 14): list, show, and the retry / cancel /
//! hold / release actions. Handlers translate; `outbound::queue::control` decides.

use super::{admin, ApiError, AppState};
use crate::model::time::{now_ms, timestamp};
use crate::model::types::ApiCode;
use crate::outbound::queue::control::{self, Action, ControlError, QueueFilter};
use crate::store::messages::{MessageRecord, QueueState, RecipientPhase};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The queue routes in the OpenAPI document (admin token required).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, show, act))]
pub struct QueueDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/queue", get(list))
        .route("/admin/queue/{tid}", get(show))
        .route("/admin/queue/{tid}/{action}", post(act))
}

/// The most entries one page holds.
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// scheduled, ready, retry or held.
    state: Option<String>,
    asset: Option<String>,
    /// An address or a domain.
    recipient: Option<String>,
    /// Seconds since acceptance, at least.
    older_than: Option<u64>,
    /// Default 100, at most 1000.
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `limit`, checked: 1..=1000, default 100.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(invalid(format!(
            "limit: {n} is out of range; give 1 to {MAX_LIMIT}"
        ))),
    }
}

/// 400 7004 with `message` (which names the parameter and the rule).
pub fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ApiCode::InvalidValue, message)
}

/// A `state` query parameter, checked against `allowed`.
pub fn state_param(
    state: Option<&str>,
    allowed: &[QueueState],
) -> Result<Option<QueueState>, ApiError> {
    let Some(label) = state else {
        return Ok(None);
    };
    match QueueState::parse(label).filter(|s| allowed.contains(s)) {
        Some(s) => Ok(Some(s)),
        None => Err(invalid(format!(
            "state: \"{label}\" is not one of {}",
            allowed
                .iter()
                .map(|s| s.label())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The transactions in this node's queue, oldest first, paged.
#[utoipa::path(get, path = "/admin/queue", tag = "admin", params(ListQuery), responses((status = 200), (status = 400)))]
async fn list(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let active = [
        QueueState::Scheduled,
        QueueState::Ready,
        QueueState::Retry,
        QueueState::Held,
    ];
    let filter = QueueFilter {
        state: state_param(q.state.as_deref(), &active)?,
        asset: q.asset,
        recipient: q.recipient.map(|r| r.trim().to_string()),
        older_than_secs: q.older_than,
        limit: page_limit(q.limit)?,
        cursor: q.cursor,
    };
    let page = control::list(&d.store, &filter, now_ms()).map_err(ApiError::store)?;
    let entries: Vec<Value> = page.entries.iter().map(entry).collect();
    Ok(Json(json!({"entries": entries, "next": page.next})).into_response())
}

/// One line of the queue listing (SPEC 14).
pub fn entry(r: &MessageRecord) -> Value {
    json!({
        "tid": r.tid,
        "state": r.state.label(),
        "asset": r.asset_id,
        "recipients": r.recipients.iter().map(|x| &x.address).collect::<Vec<_>>(),
        "attempts": r.attempts,
        "lastReply": r.last_error,
        "nextAttempt": next_attempt(r),
    })
}

fn next_attempt(r: &MessageRecord) -> Option<String> {
    matches!(
        r.state,
        QueueState::Scheduled | QueueState::Ready | QueueState::Retry
    )
    .then(|| timestamp(r.next_ms))
}

/// A transaction in full: its recipients with their states, and its history.
pub fn detail(r: &MessageRecord) -> Value {
    let mut v = entry(r);
    let recipients: Vec<Value> = r
        .recipients
        .iter()
        .map(|x| {
            json!({
                "address": x.address,
                "state": match x.phase {
                    RecipientPhase::Pending => "pending",
                    RecipientPhase::Submitted => "submitted",
                    RecipientPhase::Failed => "failed",
                },
                "code": x.code,
            })
        })
        .collect();
    let history: Vec<Value> = r
        .history
        .iter()
        .map(|h| {
            json!({
                "at": timestamp(h.at_ms),
                "destination": h.destination,
                "code": h.code,
                "status": h.status,
                "description": h.description,
                "additionalInfo": h.additional_info,
            })
        })
        .collect();
    v["recipients"] = json!(recipients);
    v["history"] = json!(history);
    v["from"] = json!(r.from);
    v["subject"] = json!(r.subject);
    v["correlationId"] = json!(r.correlation_id);
    v["accepted"] = json!(timestamp(r.created_ms));
    v
}

/// A transaction with its recipients' states, attempts, last reply, next attempt and
/// history (queued, or finished within retention).
#[utoipa::path(get, path = "/admin/queue/{tid}", tag = "admin", params(("tid" = String, Path)), responses((status = 200), (status = 404)))]
async fn show(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(tid): Path<String>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let record = control::show(&d.store, &tid).await.map_err(control_error)?;
    Ok(Json(detail(&record)).into_response())
}

/// retry (due now), cancel (pending recipients end with 7592 "cancelled by operator"),
/// hold (never sent until released), release (due now). No body is needed.
#[utoipa::path(post, path = "/admin/queue/{tid}/{action}", tag = "admin", params(("tid" = String, Path), ("action" = String, Path, description = "retry, cancel, hold or release")), responses((status = 200), (status = 404), (status = 409)))]
async fn act(
    State(d): State<AppState>,
    headers: HeaderMap,
    _: crate::http::Writable,
    Path((tid, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let Some(action) = Action::parse(&action) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("no queue action \"{action}\"; use retry, cancel, hold or release"),
        ));
    };
    let record = d
        .queue_worker
        .control(&tid, action)
        .await
        .map_err(control_error)?;
    Ok(Json(detail(&record)).into_response())
}

pub fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, ApiCode::NotFound, e.to_string())
        }
        ControlError::Conflict(_) => {
            ApiError::new(StatusCode::CONFLICT, ApiCode::Conflict, e.to_string())
        }
        ControlError::Busy(_) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ApiCode::Unavailable,
                e.to_string(),
            )
        },
        ControlError::Store(e) => ApiError::store(e),
    }
}
