//! The message log and a transaction's timeline. The search is the message log's own
//! (`GET /admin/messages`: the same parameters through `log_query`, the store's index);
//! the timeline reads the transaction as `GET /admin/queue/{tid}` does. The html body is
//! shown in a sandboxed frame from its own URL, under a policy that runs no script and
//! loads nothing but inline styles and `data:` images.

use super::layout::{self, Nav};
use super::session::Signed;
use crate::http::log::{log_query, LogParams};
use crate::http::AppState;
use crate::outbound::queue::control::{self, ControlError};
use crate::store::log::cursor_text;
use crate::store::messages::{MessageRecord, QueueState, RecipientPhase};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use std::collections::BTreeMap;

const PAGE: &str = "/admin/ui/messages";
/// The policy of the html preview: no script, nothing fetched (remote images and
/// tracking pixels stay unloaded), a unique origin.
const PREVIEW_CSP: &str =
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox; frame-ancestors 'self'";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(page))
        .route("/admin/ui/messages/{tid}", get(timeline))
        .route("/admin/ui/messages/{tid}/preview", get(preview))
}

/// The search form's fields by name, as submitted (empty ones dropped).
type Fields = BTreeMap<String, String>;

fn fields(raw: Option<&str>) -> Fields {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// A `datetime-local` value (`2026-12-03T10:00`, read as UTC) made RFC 3339; anything
/// else is passed on as typed.
fn rfc3339(v: &str) -> String {
    match v.len() {
        16 if v.as_bytes()[10] == b'T' => format!("{v}:00Z"),
        19 if v.as_bytes()[10] == b'T' => format!("{v}Z"),
        _ => v.to_string(),
    }
}

/// The message log's own parameters from the form's fields.
fn params(f: &Fields) -> Result<LogParams, String> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in f {
        match k.as_str() {
            "since" | "until" => query.append_pair(k, &rfc3339(v)),
            _ => query.append_pair(k, v),
        };
    }
    let uri: axum::http::Uri = format!("/?{}", query.finish())
        .parse()
        .map_err(|e| format!("{e}"))?;
    Query::<LogParams>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

fn url_with(f: &Fields, key: &str, value: &str) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in f.iter().filter(|(k, _)| *k != key) {
        query.append_pair(k, v);
    }
    query.append_pair(key, value);
    format!("{PAGE}?{}", query.finish())
}

fn input(f: &Fields, name: &str, label: &str, kind: &str) -> Markup {
    let id = format!("m-{name}");
    html! {
        div { label for=(id) { (label) }
            input id=(id) type=(kind) name=(name) value=[f.get(name)] autocomplete="off"; }
    }
}

fn search_form(f: &Fields, assets: &[String]) -> Markup {
    let selected = |k: &str, v: &str| f.get(k).is_some_and(|x| x == v);
    html! {
        form.row role="search" method="get" action=(PAGE) {
            (input(f, "recipient", "Recipient", "search"))
            (input(f, "sender", "Sender", "search"))
            (input(f, "tid", "Transaction id", "search"))
            (input(f, "correlationId", "Correlation id", "search"))
            div { label for="m-asset" { "Asset" }
                select #m-asset name="asset" {
                    option value="" { "any" }
                    @for a in assets { option value=(a) selected[selected("asset", a)] { (a) } }
                }
            }
            div { label for="m-state" { "State" }
                select #m-state name="state" {
                    option value="" { "any" }
                    @for s in ["scheduled", "ready", "retry", "held", "done", "cancelled"] {
                        option value=(s) selected[selected("state", s)] { (s) }
                    }
                }
            }
            (input(f, "since", "Accepted from (UTC)", "datetime-local"))
            (input(f, "until", "Accepted before (UTC)", "datetime-local"))
            div { button type="submit" { "Search" } }
        }
    }
}

/// The last code each recipient got, or its phase.
fn outcome(r: &MessageRecord, address: &str) -> String {
    let last = r.history.iter().rev().find(|h| h.destination == address);
    match last {
        Some(h) => format!("{} {}", h.code, h.status),
        None => "pending".into(),
    }
}

fn results(list: &[MessageRecord]) -> Markup {
    html! {
        div.scroll {
            table.stack {
                thead { tr {
                    th scope="col" { "Accepted" } th scope="col" { "Recipients" } th scope="col" { "From" }
                    th scope="col" { "Subject" } th scope="col" { "State" } th scope="col" { "Transaction" }
                } }
                tbody {
                    @for r in list {
                        tr {
                            th scope="row" { (layout::time(r.created_ms)) }
                            td data-label="Recipients" {
                                @for x in &r.recipients { div { (x.address) " — " (outcome(r, &x.address)) } }
                            }
                            td data-label="From" { (r.from) }
                            td data-label="Subject" { (r.subject) }
                            td data-label="State" { (r.state.label()) }
                            td data-label="Transaction" {
                                a href=(format!("{PAGE}/{}", r.tid)) { "Timeline" span.sr-only { " of " (r.tid) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn page(State(d): State<AppState>, signed: Signed, RawQuery(raw): RawQuery) -> Response {
    let f = fields(raw.as_deref());
    let assets: Vec<String> = d.config().assets.iter().map(|a| a.id.clone()).collect();
    let found = match params(&f).and_then(|p| log_query(p).map_err(|e| e.description)) {
        Err(e) => Err(e),
        Ok(q) => control::search(&d.store, &q)
            .await
            .map_err(|e| e.to_string()),
    };
    let body = html! {
        p.hint { "Every outbound transaction of the retention period, newest first. Recipient and sender match whole addresses." }
        (search_form(&f, &assets))
        @match &found {
            Err(e) => p.flash.bad role="alert" { (e) },
            Ok(p) if p.messages.is_empty() => p { "No transaction matches." },
            Ok(p) => {
                (results(&p.messages))
                @if let Some(next) = &p.next { p { a href=(url_with(&f, "cursor", &cursor_text(next))) { "Older messages" } } }
            },
        }
    };
    layout::page("Message log", Nav::Messages, &signed, body)
}

fn phase(p: RecipientPhase) -> &'static str {
    match p {
        RecipientPhase::Pending => "pending",
        RecipientPhase::Submitted => "submitted",
        RecipientPhase::Failed => "failed",
    }
}

fn summary(r: &MessageRecord) -> Markup {
    let active = matches!(
        r.state,
        QueueState::Scheduled | QueueState::Ready | QueueState::Retry
    );
    html! {
        dl.facts {
            dt { "Transaction" } dd { (layout::copyable(&r.tid)) }
            dt { "State" } dd { (r.state.label()) }
            dt { "Asset" } dd { (r.asset_id) }
            dt { "Accepted" } dd { (layout::time(r.created_ms)) }
            dt { "Attempts" } dd { (r.attempts) }
            dt { "Last SMTP reply" } dd { @if r.last_error.is_empty() { "—" } @else { code { (r.last_error) } } }
            @if active { dt { "Next attempt" } dd { (layout::time(r.next_ms)) } }
            @if let Some(c) = &r.correlation_id { dt { "Correlation id" } dd { (c) } }
            @if !r.route_ids.is_empty() { dt { "Route message ids" } dd { (r.route_ids.join(", ")) } }
        }
    }
}

fn headers(r: &MessageRecord) -> Markup {
    let from = match &r.from_name {
        Some(n) => format!("{n} <{}>", r.from),
        None => r.from.clone(),
    };
    let mut rows = vec![
        ("From", from),
        ("To", r.to.join(", ")),
        ("Subject", r.subject.clone()),
    ];
    if !r.cc.is_empty() {
        rows.push(("Cc", r.cc.join(", ")));
    }
    if let Some(x) = &r.reply_to {
        rows.push(("Reply-To", x.clone()));
    }
    if let Some(x) = &r.list_unsubscribe_url {
        rows.push(("List-Unsubscribe", format!("<{x}>")));
    }
    html! {
        h2 { "Headers" }
        p.hint { "As submitted; Message-ID, Date, List-Unsubscribe and the DKIM signature are added when the message is built." }
        table {
            tbody { @for (k, v) in rows { tr { th scope="row" { (k) } td { (v) } } } }
        }
    }
}

fn events(r: &MessageRecord) -> Markup {
    let mut history: Vec<_> = r.history.iter().collect();
    history.sort_by_key(|h| h.at_ms);
    html! {
        h2 { "Timeline" }
        ol.timeline {
            li { (layout::time(r.created_ms)) " — accepted" @if r.send_at_ms > r.created_ms { ", to be sent at " (layout::time(r.send_at_ms)) } }
            @for h in history {
                li {
                    (layout::time(h.at_ms)) " — " (h.destination) ": " strong { (h.code) " " (h.status) }
                    @if !h.description.is_empty() { " — " (h.description) }
                    @if !h.additional_info.is_empty() { br; code { (h.additional_info) } }
                }
            }
            li { "now: " (r.state.label())
                @if matches!(r.state, QueueState::Scheduled | QueueState::Ready | QueueState::Retry) {
                    ", next attempt " (layout::time(r.next_ms))
                }
            }
        }
    }
}

async fn timeline(State(d): State<AppState>, signed: Signed, Path(tid): Path<String>) -> Response {
    let r = match control::show(&d.store, &tid).await {
        Ok(r) => r,
        Err(e @ ControlError::NotFound(_)) => {
            return layout::error_page(
                StatusCode::NOT_FOUND,
                "No such transaction",
                &e.to_string(),
                Some(&signed),
            )
        }
        Err(e) => {
            return layout::error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read it",
                &e.to_string(),
                Some(&signed),
            )
        }
    };
    let back = format!("{PAGE}/{tid}");
    let body = html! {
        (summary(&r))
        (super::queue::buttons(&signed, &r, &back))
        h2 { "Recipients" }
        table {
            thead { tr { th scope="col" { "Address" } th scope="col" { "State" } th scope="col" { "Code" } } }
            tbody { @for x in &r.recipients {
                tr { th scope="row" { (x.address) } td { (phase(x.phase)) } td { (x.code.as_deref().unwrap_or("—")) } }
            } }
        }
        (events(&r))
        (headers(&r))
        @if let Some(text) = &r.text { h2 { "Text" } pre { (text) } }
        @if r.html.is_some() {
            h2 { "HTML preview" }
            p.hint { "As submitted, before substitution; no script runs and no remote image loads." }
            iframe.preview sandbox="" src=(format!("{PAGE}/{tid}/preview")) title="HTML preview of the message" {}
        }
    };
    layout::page(&format!("Transaction {tid}"), Nav::Messages, &signed, body)
}

/// The html body alone, under its own sandboxing policy.
async fn preview(State(d): State<AppState>, _signed: Signed, Path(tid): Path<String>) -> Response {
    match control::show(&d.store, &tid).await {
        Ok(MessageRecord {
            html: Some(html), ..
        }) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, PREVIEW_CSP),
            ],
            html,
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_SECURITY_POLICY, PREVIEW_CSP)],
            "no html body",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_local_values_are_read_as_utc() {
        assert_eq!(rfc3339("2026-12-03T10:00"), "2026-12-03T10:00:00Z");
        assert_eq!(rfc3339("2026-12-03T10:00:30"), "2026-12-03T10:00:30Z");
        assert_eq!(
            rfc3339("2026-12-03T10:00:00+01:00"),
            "2026-12-03T10:00:00+01:00"
        );
    }

    #[test]
    fn empty_form_fields_are_no_filter_and_bad_ones_are_named() {
        let f = fields(Some("recipient=+Ann%40Example.org+&sender=&state=done"));
        assert_eq!(f.len(), 2);
        let q = log_query(params(&f).unwrap()).unwrap();
        assert_eq!(q.recipient.as_deref(), Some("Ann@Example.org"));
        assert_eq!(q.state, Some(QueueState::Done));
        let bad = fields(Some("since=yesterday"));
        let e = log_query(params(&bad).unwrap()).unwrap_err();
        assert!(e.description.contains("since"), "{}", e.description);
    }
}
