//! The queue: this node's queued transactions with filters and paging, and retry /
//! cancel / hold / release, which are the queue worker's own `control` (what
//! `POST /admin/queue/{tid}/{action}` calls), refused while the daemon refuses new work.

use super::layout::{self, Nav};
use super::session::{Action, Flash, Signed};
use crate::http::queue::{control_error, page_limit, state_param};
use crate::http::AppState;
use crate::model::time::now_ms;
use crate::outbound::queue::control::{self, Action as QueueAction, QueueFilter};
use crate::store::messages::{MessageRecord, QueueState};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

const PAGE: &str = "/admin/ui/queue";
const ACTIVE: [QueueState; 4] = [
    QueueState::Scheduled,
    QueueState::Ready,
    QueueState::Retry,
    QueueState::Held,
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(page))
        .route("/admin/ui/queue/action", post(act))
}

/// The filter form as submitted (empty fields mean no filter).
#[derive(Deserialize, Default)]
struct Search {
    #[serde(default)]
    state: String,
    #[serde(default)]
    asset: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    older_than: String,
    #[serde(default)]
    cursor: String,
}

fn some(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Search {
    fn filter(&self) -> Result<QueueFilter, String> {
        let older = match some(&self.older_than) {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| format!("older_than: \"{v}\" is not a number of seconds"))?,
            ),
        };
        Ok(QueueFilter {
            state: state_param(some(&self.state).as_deref(), &ACTIVE).map_err(|e| e.description)?,
            asset: some(&self.asset),
            recipient: some(&self.recipient),
            older_than_secs: older,
            limit: page_limit(None).map_err(|e| e.description)?,
            cursor: some(&self.cursor),
        })
    }

    /// This search's URL with another cursor.
    fn with_cursor(&self, cursor: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("state", &self.state)
            .append_pair("asset", &self.asset)
            .append_pair("recipient", &self.recipient)
            .append_pair("older_than", &self.older_than)
            .append_pair("cursor", cursor)
            .finish();
        format!("{PAGE}?{query}")
    }
}

/// The actions that apply to a transaction in `state` (as `control::apply` allows them).
pub(super) fn actions_for(state: QueueState) -> &'static [QueueAction] {
    match state {
        QueueState::Held => &[QueueAction::Release, QueueAction::Cancel],
        QueueState::Scheduled | QueueState::Ready | QueueState::Retry => {
            &[QueueAction::Retry, QueueAction::Hold, QueueAction::Cancel]
        }
        QueueState::Done | QueueState::Cancelled => &[],
    }
}

/// The action buttons of one transaction; `back` is where the page returns.
pub(super) fn buttons(signed: &Signed, r: &MessageRecord, back: &str) -> Markup {
    html! {
        div.actions {
            @for a in actions_for(r.state) {
                @let label = match a {
                    QueueAction::Retry => "Retry now",
                    QueueAction::Hold => "Hold",
                    QueueAction::Release => "Release",
                    QueueAction::Cancel => "Cancel",
                };
                @let confirm = (*a == QueueAction::Cancel)
                    .then_some("Cancel this transaction? Its unsent recipients end with 7592.");
                (layout::row_button(signed, "/admin/ui/queue/action", label, Some(&r.tid),
                    &[("tid", &r.tid), ("action", a.label()), ("back", back)], confirm))
            }
        }
    }
}

fn filter_form(s: &Search, assets: &[String]) -> Markup {
    html! {
        form.row role="search" method="get" action=(PAGE) {
            div { label for="q-state" { "State" }
                select #q-state name="state" {
                    option value="" selected[s.state.is_empty()] { "any" }
                    @for st in ACTIVE { option value=(st.label()) selected[s.state == st.label()] { (st.label()) } }
                }
            }
            div { label for="q-asset" { "Asset" }
                select #q-asset name="asset" {
                    option value="" selected[s.asset.is_empty()] { "any" }
                    @for a in assets { option value=(a) selected[&s.asset == a] { (a) } }
                }
            }
            div { label for="q-recipient" { "Recipient (address or domain)" }
                input #q-recipient type="search" name="recipient" value=(s.recipient) autocomplete="off"; }
            div { label for="q-older" { "Older than (seconds)" }
                input #q-older type="text" inputmode="numeric" name="older_than" value=(s.older_than); }
            div { button type="submit" { "Filter" } }
        }
    }
}

fn table(signed: &Signed, entries: &[MessageRecord], back: &str) -> Markup {
    html! {
        div.scroll {
            table.stack {
                thead { tr {
                    th scope="col" { "Transaction" } th scope="col" { "State" } th scope="col" { "Asset" }
                    th scope="col" { "Recipients" } th scope="col" { "Attempts" } th scope="col" { "Last reply" }
                    th scope="col" { "Next attempt" } th scope="col" { span.sr-only { "Actions" } }
                } }
                tbody {
                    @for r in entries {
                        tr {
                            th scope="row" { a href=(format!("/admin/ui/messages/{}", r.tid)) { code { (r.tid) } } }
                            td data-label="State" { (r.state.label()) }
                            td data-label="Asset" { (r.asset_id) }
                            td data-label="Recipients" { (r.recipients.iter().map(|x| x.address.as_str()).collect::<Vec<_>>().join(", ")) }
                            td data-label="Attempts" { (r.attempts) }
                            td data-label="Last reply" { (r.last_error) }
                            td data-label="Next attempt" {
                                @if matches!(r.state, QueueState::Scheduled | QueueState::Ready | QueueState::Retry) {
                                    (layout::time(r.next_ms))
                                } @else { "—" }
                            }
                            td { (buttons(signed, r, back)) }
                        }
                    }
                }
            }
        }
    }
}

async fn page(State(d): State<AppState>, signed: Signed, Query(s): Query<Search>) -> Response {
    let assets: Vec<String> = d.config().assets.iter().map(|a| a.id.clone()).collect();
    let listed = s
        .filter()
        .and_then(|f| control::list(&d.store, &f, now_ms()).map_err(|e| e.to_string()));
    let back = s.with_cursor(&s.cursor);
    let body = html! {
        (filter_form(&s, &assets))
        @match &listed {
            Err(e) => p.flash.bad role="alert" { (e) },
            Ok(p) if p.entries.is_empty() => p { "Nothing in this node's queue matches." },
            Ok(p) => {
                (table(&signed, &p.entries, &back))
                @if let Some(next) = &p.next { p { a href=(s.with_cursor(next)) { "Next page" } } }
            },
        }
    };
    layout::page("Queue", Nav::Queue, &signed, body)
}

/// Where to go after an action: `back` when it is a page of this UI, else the queue.
pub(super) fn back_to(back: &str) -> &str {
    if back.starts_with("/admin/ui/") && !back.starts_with("//") && !back.contains('\\') {
        back
    } else {
        PAGE
    }
}

async fn act(State(d): State<AppState>, action: Action) -> Response {
    let f = &action.fields;
    let (tid, back) = (f.get("tid"), back_to(f.get("back")));
    let flash = match (QueueAction::parse(f.get("action")), d.health.check_shared()) {
        (None, _) => Flash::Failed(format!("There is no queue action \"{}\".", f.get("action"))),
        (_, Err(why)) => Flash::Failed(format!("Nothing was changed: {why}; try again later.")),
        (Some(a), Ok(())) => match d.queue_worker.control(tid, a).await {
            Ok(r) => Flash::Done(format!(
                "{tid}: {} done; it is now {}.",
                a.label(),
                r.state.label()
            )),
            Err(e) => Flash::Failed(control_error(e).description),
        },
    };
    action.signed.redirect(back, flash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_return_only_to_pages_of_the_admin_ui() {
        assert_eq!(back_to("/admin/ui/messages/t1"), "/admin/ui/messages/t1");
        for outside in [
            "https://evil.example/",
            "//evil.example/admin/ui/",
            "/admin/uix",
            "",
            "/admin/ui/\\evil",
        ] {
            assert_eq!(back_to(outside), PAGE, "{outside}");
        }
    }

    #[test]
    fn a_held_transaction_offers_release_and_cancel_only() {
        assert_eq!(
            actions_for(QueueState::Held),
            &[QueueAction::Release, QueueAction::Cancel]
        );
        assert!(actions_for(QueueState::Done).is_empty());
        assert!(!actions_for(QueueState::Retry).contains(&QueueAction::Release));
    }
}
