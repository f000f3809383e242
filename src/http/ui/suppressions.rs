//! Suppressions: search the list, add and remove entries, import a CSV file (multipart
//! upload) and download the export. Each action is the admin API's own function
//! (`crate::http::admin`), so the page and the API cannot disagree.

use super::layout::{self, Nav};
use super::session::{csrf_ok, csrf_refused, Action, Flash, Signed};
use crate::http::{admin, AppState};
use crate::store::suppression::Suppression;
use axum::extract::{Multipart, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

const PAGE: &str = "/admin/ui/suppressions";
/// Rows shown at most; a narrower search shows the rest.
const SHOWN: usize = 500;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(page))
        .route("/admin/ui/suppressions/add", post(add))
        .route("/admin/ui/suppressions/remove", post(remove))
        .route("/admin/ui/suppressions/import", post(import))
        .route("/admin/ui/suppressions/export.csv", get(export))
}

#[derive(Deserialize, Default)]
struct Search {
    #[serde(default)]
    q: String,
    #[serde(default)]
    asset: String,
}

impl Search {
    fn asset(&self) -> Option<&str> {
        Some(self.asset.trim()).filter(|a| !a.is_empty())
    }

    fn matches(&self, e: &Suppression) -> bool {
        let q = self.q.trim().to_ascii_lowercase();
        q.is_empty() || e.address.contains(&q)
    }
}

fn asset_select(id: &str, assets: &[String], selected: &str, any: bool) -> Markup {
    html! {
        select id=(id) name="asset" {
            @if any { option value="" selected[selected.is_empty()] { "All assets" } }
            @for a in assets {
                option value=(a) selected[a == selected] { (a) }
            }
        }
    }
}

fn list(signed: &Signed, entries: &[&Suppression]) -> Markup {
    html! {
        div.scroll {
            table.stack {
                thead { tr {
                    th scope="col" { "Address" } th scope="col" { "Asset" } th scope="col" { "Reason" }
                    th scope="col" { "Since" } th scope="col" { "Expires" } th scope="col" { "Source" }
                    th scope="col" { span.sr-only { "Action" } }
                } }
                tbody {
                    @for e in entries.iter().take(SHOWN) {
                        tr {
                            th scope="row" { (e.address) }
                            td data-label="Asset" { code { (e.asset_id) } }
                            td data-label="Reason" { (e.reason.label()) }
                            td data-label="Since" { (layout::time(e.since_ms)) }
                            td data-label="Expires" {
                                @match e.expires_ms { Some(ms) => (layout::time(ms)), None => "never" }
                            }
                            td data-label="Source" { (e.source) }
                            td {
                                (layout::row_button(signed, "/admin/ui/suppressions/remove", "Remove", Some(&e.address),
                                    &[("asset", &e.asset_id), ("address", &e.address)], None))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn forms(signed: &Signed, assets: &[String]) -> Markup {
    html! {
        section.card aria-labelledby="h-add" {
            h2 #h-add { "Add" }
            form.row method="post" action="/admin/ui/suppressions/add" {
                (layout::csrf(signed))
                div { label for="add-address" { "Address" }
                    input #add-address type="text" inputmode="email" name="address" required autocomplete="off"; }
                div { label for="add-asset" { "Asset" } (asset_select("add-asset", assets, "", false)) }
                div { label for="add-reason" { "Reason" }
                    select #add-reason name="reason" {
                        option value="unsubscribed" { "unsubscribed" }
                        option value="bounced" { "bounced" }
                        option value="complained" { "complained" }
                    }
                }
                div { button type="submit" { "Add" } }
            }
        }
        section.card aria-labelledby="h-import" {
            h2 #h-import { "Import and export" }
            form.row method="post" action="/admin/ui/suppressions/import" enctype="multipart/form-data" {
                (layout::csrf(signed))
                div { label for="import-file" { "CSV file" }
                    input #import-file type="file" name="file" accept=".csv,text/csv" required aria-describedby="import-help"; }
                div { button type="submit" { "Import" } }
            }
            p #import-help .hint { "Columns " code { "asset_id,address,reason" } " (and optionally "
                code { "since,expires" } ", as the export writes them). All lines or none." }
            p { a href="/admin/ui/suppressions/export.csv" download { "Download the whole list as CSV" } }
        }
    }
}

async fn page(State(d): State<AppState>, signed: Signed, Query(search): Query<Search>) -> Response {
    let assets: Vec<String> = d.config().assets.iter().map(|a| a.id.clone()).collect();
    let listed = admin::list_entries(&d, search.asset()).await;
    let body = html! {
        form.row role="search" method="get" action=(PAGE) {
            div { label for="q" { "Address contains" }
                input #q type="search" name="q" value=(search.q) autocomplete="off"; }
            div { label for="asset" { "Asset" } (asset_select("asset", &assets, &search.asset, true)) }
            div { button type="submit" { "Search" } }
        }
        @match &listed {
            Err(e) => p.flash.bad role="alert" { "The list cannot be read: " (e.description) },
            Ok(all) => {
                @let found: Vec<&Suppression> = all.iter().filter(|e| search.matches(e)).collect();
                h2 { (found.len()) " of " (all.len()) " suppressed" }
                @if found.len() > SHOWN { p.hint { "The first " (SHOWN) " are shown: search to narrow." } }
                @if !found.is_empty() { (list(&signed, &found)) }
            },
        }
        (forms(&signed, &assets))
    };
    layout::page("Suppressions", Nav::Suppressions, &signed, body)
}

fn done_or_failed<T>(r: Result<T, crate::http::ApiError>, done: impl FnOnce(T) -> String) -> Flash {
    match r {
        Ok(v) => Flash::Done(done(v)),
        Err(e) => Flash::Failed(e.description),
    }
}

async fn add(State(d): State<AppState>, action: Action) -> Response {
    let f = &action.fields;
    let r = admin::add_entry(
        &d,
        f.get("asset").to_string(),
        f.get("address"),
        f.get("reason"),
    )
    .await;
    let flash = done_or_failed(r, |e| {
        format!("{} is suppressed for {}.", e.address, e.asset_id)
    });
    action.signed.redirect(PAGE, flash)
}

async fn remove(State(d): State<AppState>, action: Action) -> Response {
    let (asset, address) = (action.fields.get("asset"), action.fields.get("address"));
    let r = admin::remove_entry(&d, asset, address).await;
    let flash = done_or_failed(r, |()| {
        format!("{address} is no longer suppressed for {asset}.")
    });
    action.signed.redirect(PAGE, flash)
}

/// The multipart form's CSRF token and file, read whole (the body limit bounds it).
async fn read_upload(mut form: Multipart) -> Result<(String, Vec<u8>), String> {
    let (mut csrf, mut file) = (String::new(), Vec::new());
    while let Some(field) = form.next_field().await.map_err(|e| e.body_text())? {
        match field.name() {
            Some("csrf") => csrf = field.text().await.map_err(|e| e.body_text())?,
            Some("file") => file = field.bytes().await.map_err(|e| e.body_text())?.to_vec(),
            _ => {}
        }
    }
    Ok((csrf, file))
}

async fn import(State(d): State<AppState>, signed: Signed, form: Multipart) -> Response {
    let (csrf, file) = match read_upload(form).await {
        Ok(upload) => upload,
        Err(why) => {
            tracing::warn!(error = %why, "admin page: unreadable upload");
            return layout::error_page(
                axum::http::StatusCode::BAD_REQUEST,
                "Upload refused",
                "The upload could not be read, so nothing was imported.",
                Some(&signed),
            );
        }
    };
    if !csrf_ok(&signed, csrf.trim()) {
        return csrf_refused(&signed);
    }
    let r = admin::import_csv(&d, &file).await;
    let flash = done_or_failed(r, |n| format!("{n} suppressions imported."));
    signed.redirect(PAGE, flash)
}

async fn export(
    State(d): State<AppState>,
    signed: Signed,
    Query(search): Query<Search>,
) -> Response {
    match admin::export_csv(&d, search.asset()).await {
        Ok(text) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"suppressions.csv\"",
                ),
            ],
            text,
        )
            .into_response(),
        Err(e) => signed.redirect(PAGE, Flash::Failed(e.description)),
    }
}
