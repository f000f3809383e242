//! The admin web page at `/admin/ui/` (SPEC 14): server-rendered HTML (maud) over the very
//! use-case functions the admin API handlers call, so the page can do nothing the API
//! cannot. Invariants: every page but sign-in needs a session (`session.rs`); every
//! state-changing request is a POST carrying the session's CSRF token, checked before
//! anything is looked at; every response carries a strict Content-Security-Policy (no
//! inline script or style, nothing from another origin); the CSS and the small script are
//! compiled into the binary (`assets.rs`) and reading works without the script.

mod assets;
mod dashboard;
mod dead_letters;
mod domains;
mod layout;
mod messages;
mod oauth;
mod queue;
mod routes_page;
mod session;
mod suppressions;

use super::AppState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Router};
use session::Ui;

/// The policy of every page: scripts, styles, images and frames from this origin only,
/// forms posted only here, never framed by another site.
pub(super) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
    frame-src 'self'";

/// Every route of the admin page, with its own session table (one per router, so two
/// daemons in one process never share sessions) and its security headers.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/ui", get(|| async { Redirect::to("/admin/ui/") }))
        .route("/admin/ui/", get(dashboard::page))
        .route(
            "/admin/ui/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/admin/ui/sign-out", post(session::sign_out))
        .route("/admin/ui/assets/{file}", get(assets::serve))
        .merge(domains::routes())
        .merge(suppressions::routes())
        .merge(dead_letters::routes())
        .merge(routes_page::routes())
        .merge(queue::routes())
        .merge(messages::routes())
        .merge(oauth::routes())
        .route("/admin/ui/{*rest}", any(not_found))
        .layer(Extension(Ui::new()))
        .layer(axum::middleware::map_response(security_headers))
}

async fn not_found(signed: Option<session::Signed>) -> Response {
    layout::error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
        signed.as_ref(),
    )
}

/// Headers on every response of the page; a response that set its own policy (the mail
/// preview) or cache rule (the assets) keeps it.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(PAGE_CSP));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// An HTML response.
fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}
