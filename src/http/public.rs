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
    Router::new()
        .route("/u/{token}", get(show).post(act))
        .route("/t/c/{token}", get(click))
        .route("/t/o/{token}", get(open))
}

/// A transparent 1x1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Emits a tracking notification for `tid`/`recipient` (and records it in the history
/// when the transaction is finished; an active one is the queue's to write).
async fn track_event(
    d: &crate::Daemon,
    tid: &str,
    recipient: &str,
    code: crate::types::DeliveryCode,
    description: &str,
    additional: &str,
) {
    let config = d.config();
    let report = crate::feedback::Report::new(Some(recipient.to_string()), code, description)
        .additional(additional);
    if let Err(e) = crate::feedback::record(&d.store, &d.outbox, &config, tid, &[report]).await {
        tracing::error!(error = %e, "tracking event not recorded");
    }
}

async fn click(
    State(d): State<AppState>,
    Path(token): Path<String>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    // Verified before anything else: a forged token never redirects (no open redirect).
    let Some(payload) = d.signer.verify("click", &token) else {
        return super::ApiError::new(
            StatusCode::BAD_REQUEST,
            "7004",
            "link token is altered or not a click link",
        )
        .into_response();
    };
    let mut f = payload.splitn(3, '|');
    let (Some(tid), Some(rcpt), Some(url)) = (f.next(), f.next(), f.next()) else {
        return super::ApiError::new(StatusCode::BAD_REQUEST, "7004", "link token is malformed")
            .into_response();
    };
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    track_event(
        &d,
        tid,
        rcpt,
        crate::types::DeliveryCode::Clicked,
        &format!("{url}|{}", peer.ip()),
        agent,
    )
    .await;
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

async fn open(State(d): State<AppState>, Path(token): Path<String>) -> Response {
    if let Some(payload) = d.signer.verify("open", &token) {
        if let Some((tid, rcpt)) = payload.split_once('|') {
            track_event(&d, tid, rcpt, crate::types::DeliveryCode::Read, "Read", "").await;
        }
    }
    // The image is served either way: a mail client showing a broken image helps no one.
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, private"),
        ],
        PIXEL,
    )
        .into_response()
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
