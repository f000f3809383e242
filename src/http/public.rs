//! Public routes reached from recipients' mail clients: the unsubscribe page and RFC 8058
//! one-click endpoint, click redirects and the open pixel. Tokens are verified before
//! anything is looked up; a bad one changes nothing and gets a 400 page. Hits are counted
//! by `feedback::record` (bounded history, windowed opens), so a stranger replaying a link
//! costs a counter update, not a growing record.

use super::AppState;
use crate::outbound::track::unsubscribe::{self, Subject};
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
    d: &crate::daemon::Daemon,
    tid: &str,
    recipient: &str,
    code: crate::model::types::DeliveryCode,
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
    // Cut to 512 octets on a character boundary; octets that are not UTF-8 (obs-text)
    // become U+FFFD rather than losing the whole header.
    let agent = headers
        .get(header::USER_AGENT)
        .map(|v| {
            let raw = v.as_bytes();
            let head = &raw[..raw.len().min(crate::feedback::USER_AGENT_MAX + 4)];
            let text = String::from_utf8_lossy(head);
            crate::store::messages::cut(&text, crate::feedback::USER_AGENT_MAX).to_string()
        })
        .unwrap_or_default();
    track_event(
        &d,
        tid,
        rcpt,
        crate::model::types::DeliveryCode::Clicked,
        &format!("{url}|{}", peer.ip()),
        &agent,
    )
    .await;
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

async fn open(State(d): State<AppState>, Path(token): Path<String>) -> Response {
    if let Some(payload) = d.signer.verify("open", &token) {
        if let Some((tid, rcpt)) = payload.split_once('|') {
            track_event(
                &d,
                tid,
                rcpt,
                crate::model::types::DeliveryCode::Read,
                "Read",
                "",
            )
            .await;
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

fn asset_name(d: &crate::daemon::Daemon, s: &Subject) -> String {
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

/// The transaction's recipients when the token speaks for nobody in particular (a message
/// to several recipients); `Ok(None)` for a token naming its recipient.
fn listed_recipients(
    d: &crate::daemon::Daemon,
    s: &Subject,
) -> Result<Option<Vec<String>>, Box<Response>> {
    let record = match d.store.message(&s.tid) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe: transaction not readable");
            return Err(Box::new(
                (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response(),
            ));
        }
    };
    match record {
        // Tokens made before several-recipient links named nobody named the first
        // recipient: the record says whether the message went to several.
        Some(r) if r.recipients.len() > 1 || s.recipient.is_empty() => Ok(Some(
            r.recipients.into_iter().map(|x| x.address).collect(),
        )),
        None if s.recipient.is_empty() => Err(Box::new(html(
            StatusCode::GONE,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link expired</title></head>\
<body><main><h1>This link has expired</h1><p>The message it came with is no longer on record, so the address cannot be checked. Nothing was changed.</p></main></body></html>\n"
                .into(),
        ))),
        _ => Ok(None),
    }
}

async fn show(State(d): State<AppState>, Path(token): Path<String>) -> Response {
    let Some(s) = unsubscribe::verify(&d.signer, &token) else {
        return invalid();
    };
    match listed_recipients(&d, &s) {
        Err(r) => *r,
        Ok(Some(_)) => html(
            StatusCode::OK,
            unsubscribe::ask_page(&asset_name(&d, &s), None),
        ),
        Ok(None) => html(
            StatusCode::OK,
            unsubscribe::page(&asset_name(&d, &s), &s.recipient, "confirm"),
        ),
    }
}

async fn act(State(d): State<AppState>, Path(token): Path<String>, body: String) -> Response {
    let Some(mut s) = unsubscribe::verify(&d.signer, &token) else {
        return invalid();
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let one_click = field("List-Unsubscribe") == Some("One-Click");
    let resubscribe = !one_click && field("action") == Some("resubscribe");
    let several = match listed_recipients(&d, &s) {
        Err(r) => return *r,
        Ok(list) => list,
    };
    if let Some(list) = &several {
        // Any recipient could have clicked: the form names the address, and it must be
        // one the message went to. One-click has no form (and no header was sent).
        let name = asset_name(&d, &s);
        if one_click {
            return html(
                StatusCode::BAD_REQUEST,
                unsubscribe::ask_page(
                    &name,
                    Some("This email went to several people: one-click unsubscribe cannot tell which one. Nothing was changed."),
                ),
            );
        }
        let address = field("address").unwrap_or("").trim();
        match list.iter().find(|a| a.eq_ignore_ascii_case(address)) {
            Some(a) => s.recipient = a.clone(),
            None => {
                tracing::info!(tid = %s.tid, "unsubscribe page: address is not a recipient of the message; nothing changed");
                return html(
                    StatusCode::BAD_REQUEST,
                    unsubscribe::ask_page(
                        &name,
                        Some(if address.is_empty() {
                            "address: enter the address this email was sent to. Nothing was changed."
                        } else {
                            "address: this email was not sent to that address. Nothing was changed."
                        }),
                    ),
                );
            }
        }
    }
    let config = d.config();
    let changed = unsubscribe::apply(
        &d.store,
        &d.outbox,
        &config,
        &s,
        !resubscribe,
        "unsubscribe-link",
    )
    .await;
    match changed {
        Ok(_) if one_click => (StatusCode::OK, "unsubscribed\n").into_response(),
        Ok(_) => {
            let state = if resubscribe {
                "resubscribed"
            } else {
                "unsubscribed"
            };
            html(
                StatusCode::OK,
                unsubscribe::page_for(&asset_name(&d, &s), &s.recipient, state, several.is_some()),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe could not be recorded");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        }
    }
}
