//! `GET /admin/messages`: the message log (SPEC 14). Handlers translate; the store's
//! index answers.

use super::queue::{detail, invalid, page_limit, state_param};
use super::{admin, ApiError, AppState};
use crate::model::types::ApiCode;
use crate::outbound::queue::control;
use crate::store::log::{cursor_text, parse_cursor, LogQuery};
use crate::store::messages::QueueState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// The message-log route in the OpenAPI document (admin token required).
#[derive(utoipa::OpenApi)]
#[openapi(paths(messages, inbound))]
pub struct LogDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/messages", get(messages))
        .route("/admin/assets/{asset}/inbound", get(inbound))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct LogParams {
    /// An address, exact and case-insensitive.
    recipient: Option<String>,
    /// The From address, exact and case-insensitive.
    sender: Option<String>,
    tid: Option<String>,
    correlation_id: Option<String>,
    asset: Option<String>,
    /// scheduled, ready, retry, held, done or cancelled.
    state: Option<String>,
    /// RFC 3339: accepted at or after.
    since: Option<String>,
    /// RFC 3339: accepted before.
    until: Option<String>,
    /// Default 100, at most 1000.
    limit: Option<usize>,
    cursor: Option<String>,
}

fn time_param(name: &str, v: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(v) = v else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .map(Some)
        .ok_or_else(|| invalid(format!("{name}: \"{v}\" is not an RFC 3339 time")))
}

/// The query the parameters ask for, or the first bad parameter named.
pub fn log_query(p: LogParams) -> Result<LogQuery, ApiError> {
    let all = [
        QueueState::Scheduled,
        QueueState::Ready,
        QueueState::Retry,
        QueueState::Held,
        QueueState::Done,
        QueueState::Cancelled,
    ];
    let cursor = match p.cursor.as_deref() {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            invalid(format!(
                "cursor: \"{c}\" is not a cursor this search returned"
            ))
        })?),
    };
    let text = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(LogQuery {
        state: state_param(p.state.as_deref(), &all)?,
        since_ms: time_param("since", p.since.as_deref())?,
        until_ms: time_param("until", p.until.as_deref())?,
        limit: page_limit(p.limit)?,
        recipient: text(p.recipient),
        sender: text(p.sender),
        tid: text(p.tid),
        correlation_id: text(p.correlation_id),
        asset: text(p.asset),
        cursor,
    })
}

/// Every transaction of the retention period matching the filters, newest first, paged;
/// each with its recipients' states and its history.
#[utoipa::path(get, path = "/admin/messages", tag = "admin", params(LogParams), responses((status = 200), (status = 400)))]
async fn messages(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<LogParams>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let q = log_query(p)?;
    let page = control::search(&d.store, &q)
        .await
        .map_err(ApiError::store)?;
    let messages: Vec<Value> = page.messages.iter().map(detail).collect();
    let next = page.next.as_ref().map(cursor_text);
    Ok(Json(json!({"messages": messages, "next": next})).into_response())
}

/// An asset's forwarding address (`<asset-id>@<inbound_domain>`) and the last mails it
/// received on this node (there or at its domains), a forwarding confirmation's code and
/// link up front.
#[utoipa::path(get, path = "/admin/assets/{asset}/inbound", tag = "admin", params(("asset" = String, Path)), responses((status = 200), (status = 404)))]
async fn inbound(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(asset): Path<String>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let config = d.config();
    let Some(a) = config.asset(&asset) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("no asset \"{asset}\""),
        ));
    };
    let notes = d.store.recent_inbound(&asset).map_err(ApiError::internal)?;
    let mails: Vec<Value> = notes
        .iter()
        .map(|n| {
            json!({
                "tid": n.tid,
                "receivedAt": crate::model::time::timestamp(n.received_ms),
                "from": n.from,
                "to": n.to,
                "subject": n.subject,
                "snippet": n.snippet,
                "confirmation": (n.confirmation_code.is_some() || n.confirmation_link.is_some())
                    .then(|| json!({"code": n.confirmation_code, "link": n.confirmation_link})),
            })
        })
        .collect();
    Ok(Json(json!({
        "asset": a.id,
        "inbound": a.inbound,
        "forwardingAddress": format!("{}@{}", a.id, config.server.inbound_domain),
        "domains": a.domains,
        "messages": mails,
    }))
    .into_response())
}
