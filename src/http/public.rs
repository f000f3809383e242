//! Public routes reached from recipients' mail clients: the unsubscribe page and RFC 8058
//! one-click endpoint. Tokens are verified before anything is looked up; a bad one changes
//! nothing and gets a 400 page.

use super::AppState;
use crate::store::now_ms;
use crate::store::suppression::Reason;
use crate::track::unsubscribe::{self, Subject};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub fn routes() -> Router<AppState> {
    Router::new().route("/u/{token}", get(show).post(act))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn invalid() -> Response {
    html(
        StatusCode::BAD_REQUEST,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid</title></head>\
<body><main><h1>This link is not valid</h1><p>It may be incomplete or altered. Nothing was changed.</p></main></body></html>\n"
            .into(),
    )
}

fn asset_name(d: &crate::Daemon, s: &Subject) -> String {
    d.config()
        .asset(&s.asset_id)
        .map(|a| {
            if a.name.is_empty() {
                a.id.clone()
            } else {
                a.name.clone()
            }
        })
        .unwrap_or_else(|| s.asset_id.clone())
}

async fn show(State(d): State<AppState>, Path(token): Path<String>) -> Response {
    match unsubscribe::verify(&d.signer, &token) {
        Some(s) => html(
            StatusCode::OK,
            unsubscribe::page(&asset_name(&d, &s), &s.recipient, "confirm"),
        ),
        None => invalid(),
    }
}

async fn act(State(d): State<AppState>, Path(token): Path<String>, body: String) -> Response {
    let Some(s) = unsubscribe::verify(&d.signer, &token) else {
        return invalid();
    };
    let one_click = body.split('&').any(|kv| kv == "List-Unsubscribe=One-Click");
    let resubscribe = !one_click && body.split('&').any(|kv| kv == "action=resubscribe");
    match change(&d, &s, !resubscribe).await {
        Ok(()) if one_click => (StatusCode::OK, "unsubscribed\n").into_response(),
        Ok(()) => {
            let state = if resubscribe {
                "resubscribed"
            } else {
                "unsubscribed"
            };
            html(
                StatusCode::OK,
                unsubscribe::page(&asset_name(&d, &s), &s.recipient, state),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe could not be recorded");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        }
    }
}

/// Records the (un)subscription and emits its event, once per actual change.
pub async fn change(
    d: &crate::Daemon,
    s: &Subject,
    unsubscribe: bool,
) -> Result<(), crate::store::StoreError> {
    let current = d.store.suppression(&s.asset_id, &s.recipient, now_ms())?;
    let was_unsubscribed = current
        .as_ref()
        .is_some_and(|e| e.reason == Reason::Unsubscribed);
    if unsubscribe == was_unsubscribed {
        return Ok(());
    }
    if unsubscribe {
        d.store
            .suppress(&[unsubscribe::suppression(s, "unsubscribe-link")])
            .await?;
    } else {
        d.store.unsuppress(&s.asset_id, &s.recipient).await?;
    }
    tracing::info!(asset = %s.asset_id, recipient = %s.recipient, unsubscribe, "subscription changed");
    let correlation = d
        .store
        .message(&s.tid)
        .ok()
        .flatten()
        .and_then(|m| m.correlation_id);
    let config = d.config();
    if let Some(e) = unsubscribe::event(&config, s, !unsubscribe, correlation.as_deref()) {
        d.store.enqueue_events(std::slice::from_ref(&e)).await?;
        d.outbox.schedule([e]);
    }
    Ok(())
}
