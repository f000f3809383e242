//! Dead letters: webhook events that exhausted their retries or were refused with a 4xx,
//! listed with their last error; replay one, all of one endpoint, or all. Replaying is
//! the dead-letter admin API's own `replay` (`crate::http`).

use super::layout::{self, Nav};
use super::session::{Action, Flash, Signed};
use crate::http::AppState;
use crate::store::outbox::DeadLetter;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};

const PAGE: &str = "/admin/ui/dead-letters";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(page))
        .route("/admin/ui/dead-letters/replay", post(replay_one))
        .route("/admin/ui/dead-letters/replay-all", post(replay_all))
}

fn table(signed: &Signed, list: &[DeadLetter]) -> Markup {
    html! {
        div.scroll {
            table.stack {
                thead { tr {
                    th scope="col" { "Event" } th scope="col" { "Kind" } th scope="col" { "Endpoint" }
                    th scope="col" { "Asset" } th scope="col" { "Attempts" } th scope="col" { "Why" }
                    th scope="col" { "Died" } th scope="col" { span.sr-only { "Action" } }
                } }
                tbody {
                    @for x in list {
                        tr {
                            th scope="row" { code { (x.entry.id) } }
                            td data-label="Kind" { (x.entry.kind.label()) }
                            td data-label="Endpoint" { code { (x.entry.url) } }
                            td data-label="Asset" { (x.entry.asset_id) }
                            td data-label="Attempts" { (x.entry.attempts) }
                            td data-label="Why" {
                                (x.reason)
                                @if !x.entry.last_error.is_empty() { p.hint { (x.entry.last_error) } }
                            }
                            td data-label="Died" { (layout::time(x.died_ms)) }
                            td { (layout::row_button(signed, "/admin/ui/dead-letters/replay", "Replay", Some(&x.entry.id), &[("id", &x.entry.id)], None)) }
                        }
                    }
                }
            }
        }
    }
}

async fn page(State(d): State<AppState>, signed: Signed) -> Response {
    let body = match d.store.dead_list(None) {
        Err(e) => html! { p.flash.bad role="alert" { "Dead letters cannot be read: " (e) } },
        Ok(list) if list.is_empty() => {
            html! { p { "No dead letters: every webhook event was delivered or is still being retried." } }
        }
        Ok(list) => {
            let mut urls: Vec<&str> = list.iter().map(|x| x.entry.url.as_str()).collect();
            urls.sort_unstable();
            urls.dedup();
            html! {
                p { (list.len()) " events. Fix the receiver, then replay: each goes back to the outbox with fresh attempts." }
                div.actions {
                    (layout::button(&signed, "/admin/ui/dead-letters/replay-all", "Replay all", &[],
                        Some("Replay every dead letter?")))
                    @if urls.len() > 1 {
                        @for u in &urls {
                            (layout::button(&signed, "/admin/ui/dead-letters/replay-all",
                                &format!("Replay all to {u}"), &[("url", u)], None))
                        }
                    }
                }
                (table(&signed, &list))
            }
        }
    };
    layout::page("Dead letters", Nav::DeadLetters, &signed, body)
}

async fn replay(d: &crate::daemon::Daemon, ids: Vec<String>) -> Flash {
    let n = ids.len();
    match crate::http::replay(d, ids).await {
        Ok(_) if n == 1 => Flash::Done("1 dead letter replayed.".into()),
        Ok(_) => Flash::Done(format!("{n} dead letters replayed.")),
        Err(e) => Flash::Failed(e.description),
    }
}

async fn replay_one(State(d): State<AppState>, action: Action) -> Response {
    let id = action.fields.get("id").to_string();
    let flash = match d.store.dead_list(None) {
        Ok(list) if list.iter().any(|x| x.entry.id == id) => replay(&d, vec![id]).await,
        Ok(_) => Flash::Failed(format!("There is no dead letter {id} (already replayed?).")),
        Err(e) => Flash::Failed(format!("Dead letters cannot be read: {e}")),
    };
    action.signed.redirect(PAGE, flash)
}

async fn replay_all(State(d): State<AppState>, action: Action) -> Response {
    let url = Some(action.fields.get("url")).filter(|u| !u.is_empty());
    let flash = match d.store.dead_list(url) {
        Ok(list) => replay(&d, list.into_iter().map(|x| x.entry.id).collect()).await,
        Err(e) => Flash::Failed(format!("Dead letters cannot be read: {e}")),
    };
    action.signed.redirect(PAGE, flash)
}
