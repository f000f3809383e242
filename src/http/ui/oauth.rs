//! The browser's side of an OAuth2 authorization (SPEC 15): the routes page's "Connect
//! account" starts a flow (the admin API's own function) and sends the browser to the
//! provider's consent page; the provider sends it back to `GET /oauth/callback`, which
//! completes the flow and says in a page whether it worked. The callback needs no
//! session (the provider's redirect may come from any browser): its `state`, single use
//! and expiring, is what it trusts.

use super::layout;
use super::session::{Action, Flash};
use crate::http::AppState;
use crate::outbound::oauth::flow::{CallbackError, Started, CALLBACK_PATH};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/ui/routes/connect", post(connect))
        .route(CALLBACK_PATH, get(callback))
}

/// "Connect account": a flow for the asset, then 303 to the provider's consent page.
async fn connect(State(d): State<AppState>, action: Action) -> Response {
    let asset = action.fields.get("asset").to_string();
    match crate::http::routes::start_authorization(&d, &asset, false).await {
        Ok(Started::Code { url, .. }) => {
            tracing::info!(asset, "authorization started from the admin page");
            use axum::response::IntoResponse;
            Redirect::to(&url).into_response()
        }
        Ok(Started::Device { .. }) => action.signed.redirect(
            "/admin/ui/routes",
            Flash::Failed("unexpected device flow".into()),
        ),
        Err(e) => action.signed.redirect(
            &format!("/admin/ui/routes#h-{asset}"),
            Flash::Failed(format!("Connect account: {}", e.description)),
        ),
    }
}

/// The provider's redirect: `code` and `state`, or `error` (with `error_description`).
async fn callback(State(d): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let config = d.config();
    let state = q.get("state").map(String::as_str).unwrap_or("");
    let error = q.get("error").map(|e| match q.get("error_description") {
        Some(desc) if !desc.is_empty() => format!("{e}: {desc}"),
        _ => e.clone(),
    });
    let result = d
        .oauth
        .callback(&config, state, q.get("code").map(String::as_str), error)
        .await;
    match result {
        Ok(asset) => layout::bare_page(
            StatusCode::OK,
            "Account connected",
            html! {
                p.flash.ok role="status" {
                    "The route of " code { (asset) } " is authorized: its refresh token is stored, and its deferred mail goes out now."
                }
                p { "You can close this page, or go " a href="/admin/ui/routes" { "back to the admin page" } "." }
            },
        ),
        Err(e) => {
            let title = match e {
                CallbackError::Provider(_) => "Authorization refused",
                _ => "Authorization not completed",
            };
            tracing::warn!(reason = %e, "OAuth2 callback completed nothing");
            layout::bare_page(
                StatusCode::BAD_REQUEST,
                title,
                html! {
                    p.flash.bad role="alert" { (e.to_string()) }
                    p { "Nothing was stored. Start again with " code { "postern route authorize ASSET" } " or the admin page's \"Connect account\"." }
                },
            )
        }
    }
}
