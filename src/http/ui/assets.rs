//! The stylesheet and the small script of the admin page, compiled into the binary and
//! served with a year's cache: their URLs carry a hash of their content, so a new build
//! is fetched at once.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");

/// FNV-1a of `bytes`, at compile time.
const fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

const CSS_HASH: u64 = fnv(CSS.as_bytes());
const JS_HASH: u64 = fnv(JS.as_bytes());

pub(super) fn css_url() -> String {
    format!("/admin/ui/assets/ui.css?v={CSS_HASH:016x}")
}

pub(super) fn js_url() -> String {
    format!("/admin/ui/assets/ui.js?v={JS_HASH:016x}")
}

pub(super) async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "ui.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}
