//! The page shell of the admin page: document head (viewport, the embedded stylesheet and
//! script), a skip link, the navigation, the one-time message, and small form helpers.
//! Markup only: no handler logic here.

use super::assets;
use super::session::{Flash, Signed};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup, DOCTYPE};

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Dashboard,
    Messages,
    Queue,
    Domains,
    Suppressions,
    DeadLetters,
    Routes,
    None,
}

const NAV: [(Nav, &str, &str); 7] = [
    (Nav::Dashboard, "/admin/ui/", "Dashboard"),
    (Nav::Messages, "/admin/ui/messages", "Messages"),
    (Nav::Queue, "/admin/ui/queue", "Queue"),
    (Nav::Domains, "/admin/ui/domains", "Domains"),
    (Nav::Suppressions, "/admin/ui/suppressions", "Suppressions"),
    (Nav::DeadLetters, "/admin/ui/dead-letters", "Dead letters"),
    (Nav::Routes, "/admin/ui/routes", "Routes and assets"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            link rel="icon" href="data:,";
            title { (title) " · postern" }
            link rel="stylesheet" href=(assets::css_url());
            script src=(assets::js_url()) defer {}
        }
    }
}

fn flash(f: Option<&Flash>) -> Markup {
    html! {
        @match f {
            Some(Flash::Done(text)) => p.flash.ok role="status" { (text) },
            Some(Flash::Failed(text)) => p.flash.bad role="alert" { (text) },
            None => {},
        }
    }
}

fn header(current: Nav, signed: Option<&Signed>) -> Markup {
    html! {
        header.top {
            a.brand href="/admin/ui/" { "postern" }
            @if let Some(s) = signed {
                nav aria-label="Sections" {
                    ul {
                        @for (item, href, label) in NAV {
                            li {
                                @if item == current {
                                    a href=(href) aria-current="page" { (label) }
                                } @else {
                                    a href=(href) { (label) }
                                }
                            }
                        }
                    }
                }
                form.signout method="post" action="/admin/ui/sign-out" {
                    (csrf(s))
                    button type="submit" { "Sign out" }
                }
            }
        }
    }
}

/// A whole page: `title` is its `h1`.
pub(super) fn page(title: &str, current: Nav, signed: &Signed, body: Markup) -> Response {
    page_status(StatusCode::OK, title, current, Some(signed), body)
}

fn page_status(
    status: StatusCode,
    title: &str,
    current: Nav,
    signed: Option<&Signed>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                (header(current, signed))
                main #main {
                    h1 { (title) }
                    (flash(signed.and_then(|s| s.flash.as_ref())))
                    (body)
                }
            }
        }
    };
    super::html(status, markup)
}

/// A page outside a session (the OAuth2 callback): no navigation.
pub(super) fn bare_page(status: StatusCode, title: &str, body: Markup) -> Response {
    page_status(status, title, Nav::None, None, body)
}

/// An error page (403, 404, a failed lookup).
pub(super) fn error_page(
    status: StatusCode,
    title: &str,
    text: &str,
    signed: Option<&Signed>,
) -> Response {
    page_status(
        status,
        title,
        Nav::None,
        signed,
        html! {
            p { (text) }
            p { a href="/admin/ui/" { "Back to the dashboard" } }
        },
    )
}

/// The sign-in page, with `problem` shown when the last attempt failed.
pub(super) fn sign_in(status: StatusCode, problem: Option<&str>) -> Response {
    let body = html! {
        @if let Some(p) = problem {
            p.flash.bad role="alert" { (p) }
        }
        form.card method="post" action="/admin/ui/sign-in" {
            label for="token" { "Admin token" }
            input #token type="password" name="token" required autocomplete="current-password"
                autofocus aria-describedby="token-help";
            p #token-help .hint { "The " code { "[admin] token" } " of postern's configuration." }
            button type="submit" { "Sign in" }
        }
    };
    page_status(status, "Sign in", Nav::None, None, body)
}

/// The hidden CSRF field every form carries.
pub(super) fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

/// A one-button form posting `fields` to `action`.
pub(super) fn button(
    signed: &Signed,
    action: &str,
    label: &str,
    fields: &[(&str, &str)],
    confirm: Option<&str>,
) -> Markup {
    row_button(signed, action, label, None, fields, confirm)
}

/// [`button`] for one row of a table: its accessible name adds `context` (the row's
/// address or id), so "Remove" among many says which.
pub(super) fn row_button(
    signed: &Signed,
    action: &str,
    label: &str,
    context: Option<&str>,
    fields: &[(&str, &str)],
    confirm: Option<&str>,
) -> Markup {
    let name = context.map(|c| format!("{label} {c}"));
    html! {
        form.inline method="post" action=(action) {
            (csrf(signed))
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" class=[confirm.map(|_| "danger")] aria-label=[name]
                data-confirm=[confirm] { (label) }
        }
    }
}

/// A value with a copy button (the button appears only where the script runs).
pub(super) fn copyable(value: &str) -> Markup {
    html! {
        span.copyable {
            code { (value) }
            button.copy type="button" data-copy=(value) hidden { "Copy" }
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 in a `<time>` element.
pub(super) fn time(ms: u64) -> Markup {
    let t = crate::model::time::timestamp(ms);
    html! { time datetime=(t) { (t.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}
