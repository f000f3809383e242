//! Public routes reached from recipients' mail clients: the unsubscribe page and RFC 8058
//! one-click endpoint, click redirects and the open pixel. What they do is
//! `feedback::unsubscribe`'s and `feedback::tracking`'s (tokens verified before anything
//! is looked up; hits counted, not appended); this file turns requests into calls and
//! outcomes into pages.

use super::AppState;
use crate::daemon::Daemon;
use crate::feedback::tracking;
use crate::feedback::unsubscribe::{self as unsubscribing, Form, Outcome};
use crate::feedback::Parts;
use crate::outbound::track::unsubscribe;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;

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

/// Calls `f` with the parts of the daemon the public doors' feedback needs.
async fn with_parts<T>(d: &Daemon, f: impl AsyncFnOnce(&Parts<'_>) -> T) -> T {
    let config = d.config();
    let parts = Parts {
        store: &d.store,
        outbox: &d.outbox,
        config: &config,
        signer: &d.signer,
    };
    f(&parts).await
}

async fn click(
    State(d): State<AppState>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let agent = headers.get(header::USER_AGENT).map(|v| v.as_bytes());
    let clicked = with_parts(&d, async |p| {
        tracking::click(p, &token, peer.ip(), agent).await
    })
    .await;
    match clicked {
        Ok(url) => (StatusCode::FOUND, [(header::LOCATION, url)]).into_response(),
        Err(e) => super::ApiError::new(
            StatusCode::BAD_REQUEST,
            crate::model::types::ApiCode::InvalidValue,
            e.to_string(),
        )
        .into_response(),
    }
}

async fn open(State(d): State<AppState>, Path(token): Path<String>) -> Response {
    with_parts(&d, async |p| tracking::open(p, &token).await).await;
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

async fn show(State(d): State<AppState>, Path(token): Path<String>) -> Response {
    page(with_parts(&d, async |p| unsubscribing::visit(p, &token).await).await)
}

async fn act(State(d): State<AppState>, Path(token): Path<String>, body: String) -> Response {
    let form = form(&body);
    page(with_parts(&d, async |p| unsubscribing::answer(p, &token, &form).await).await)
}

/// The POST body's fields (the first of each counts).
fn form(body: &str) -> Form {
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    Form {
        one_click: field("List-Unsubscribe") == Some("One-Click"),
        resubscribe: field("action") == Some("resubscribe"),
        address: field("address").unwrap_or("").to_string(),
    }
}

/// The page (or the one-click answer) for an unsubscribe outcome.
fn page(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Invalid => html(
            StatusCode::BAD_REQUEST,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid</title></head>\
<body><main><h1>This link is not valid</h1><p>It may be incomplete or altered. Nothing was changed.</p></main></body></html>\n"
                .into(),
        ),
        Outcome::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        }
        Outcome::Expired => html(
            StatusCode::GONE,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link expired</title></head>\
<body><main><h1>This link has expired</h1><p>The message it came with is no longer on record, so the address cannot be checked. Nothing was changed.</p></main></body></html>\n"
                .into(),
        ),
        Outcome::Ask {
            asset_name,
            refused: None,
        } => html(StatusCode::OK, unsubscribe::ask_page(&asset_name, None)),
        Outcome::Ask {
            asset_name,
            refused: Some(why),
        } => html(
            StatusCode::BAD_REQUEST,
            unsubscribe::ask_page(&asset_name, Some(why.text())),
        ),
        Outcome::Confirm {
            asset_name,
            recipient,
        } => html(
            StatusCode::OK,
            unsubscribe::page(&asset_name, &recipient, "confirm"),
        ),
        Outcome::OneClick => (StatusCode::OK, "unsubscribed\n").into_response(),
        Outcome::Done {
            asset_name,
            recipient,
            resubscribed,
            several,
        } => {
            let state = if resubscribed {
                "resubscribed"
            } else {
                "unsubscribed"
            };
            html(
                StatusCode::OK,
                unsubscribe::page_for(&asset_name, &recipient, state, several),
            )
        }
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}
