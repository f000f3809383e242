//! The dashboard: the queue by state, outbound results, the webhook backlog and dead
//! letters, and the health that `/readyz` reports (free space, store, cluster database).

use super::layout::{self, Nav};
use super::session::Signed;
use crate::http::AppState;
use crate::metrics::RouteResult;
use crate::model::types::DeliveryCode;
use crate::outbound::queue::control;
use crate::store::log::LogQuery;
use axum::extract::State;
use axum::response::Response;
use maud::{html, Markup};

/// The queue states of `postern_queue_entries`, in the order of `Metrics::queue_entries`.
const QUEUE_STATES: [&str; 4] = ["scheduled", "ready", "retry", "held"];

/// Sums `postern_outbound_messages_total` per result over every route, from the metrics
/// exposition. Pure.
pub(super) fn outbound_totals(exposition: &str) -> [u64; RouteResult::ALL.len()] {
    let mut totals = [0u64; RouteResult::ALL.len()];
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("postern_outbound_messages_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        for (i, r) in RouteResult::ALL.iter().enumerate() {
            if labels.contains(&format!("result=\"{}\"", r.label())) {
                totals[i] += value.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    totals
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Message-log pages (of 1000) the dashboard reads at most for its hour and day counts.
const MAX_PAGES: usize = 5;
/// The codes counted as sent, bounced and complained.
const COUNTED: [DeliveryCode; 3] = [
    DeliveryCode::Submitted,
    DeliveryCode::Bounce,
    DeliveryCode::Complaint,
];

/// Notifications of [`COUNTED`] in the last hour and the last day, over the transactions
/// accepted in the last day (the message log's index, newest first); `true` when more
/// transactions than [`MAX_PAGES`] pages hold were left uncounted.
async fn recent(d: &crate::daemon::Daemon, now: u64) -> Result<([u64; 3], [u64; 3], bool), String> {
    let (mut hour, mut day) = ([0u64; 3], [0u64; 3]);
    let mut q = LogQuery {
        since_ms: Some(now.saturating_sub(DAY_MS)),
        limit: 1000,
        ..LogQuery::default()
    };
    for _ in 0..MAX_PAGES {
        let page = control::search(&d.store, &q)
            .await
            .map_err(|e| e.to_string())?;
        for h in page.messages.iter().flat_map(|m| &m.history) {
            let Some(i) = COUNTED.iter().position(|c| c.code() == h.code) else {
                continue;
            };
            if h.at_ms + DAY_MS >= now {
                day[i] += 1;
            }
            if h.at_ms + HOUR_MS >= now {
                hour[i] += 1;
            }
        }
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return Ok((hour, day, false)),
        }
    }
    Ok((hour, day, true))
}

fn recent_card(counts: Result<([u64; 3], [u64; 3], bool), String>) -> Markup {
    html! {
        section.card aria-labelledby="h-recent" {
            h2 #h-recent { "Recent outcomes" }
            @match counts {
                Err(e) => p.flash.bad { "The message log cannot be read: " (e) },
                Ok((hour, day, capped)) => {
                    table {
                        thead { tr { th scope="col" { "Recipients" } th scope="col" { "Last hour" } th scope="col" { "Last day" } } }
                        tbody {
                            @for (i, name) in ["sent (7501)", "bounced (7520)", "complained (7521)"].iter().enumerate() {
                                tr { th scope="row" { (name) } td { (hour[i]) } td { (day[i]) } }
                            }
                        }
                    }
                    p.hint { "Of the transactions accepted in the last day"
                        @if capped { " (the newest " (MAX_PAGES * 1000) " only)" } "." }
                },
            }
        }
    }
}

fn badge(ok: bool, yes: &str, no: &str) -> Markup {
    html! {
        @if ok { span.badge.ok { (yes) } } @else { span.badge.bad { (no) } }
    }
}

fn health(d: &crate::daemon::Daemon) -> Markup {
    let config = d.config();
    let readiness = match d.health.check_shared() {
        Err(why) => Err(why.to_string()),
        Ok(()) if d.is_ready() => Ok(()),
        Ok(()) => Err("starting".to_string()),
    };
    let free = d.health.free();
    let min = config.server.min_free_space;
    html! {
        section.card aria-labelledby="h-health" {
            h2 #h-health { "Health" }
            dl.facts {
                dt { "Ready (" code { "/readyz" } ")" }
                dd {
                    @match &readiness {
                        Ok(()) => (badge(true, "ready", "")),
                        Err(why) => { (badge(false, "", "not ready")) " " (why) },
                    }
                }
                dt { "Store" }
                dd { (badge(!d.health.is_store_failing(), "writing", "cannot write")) }
                dt { "Free space" }
                dd {
                    (badge(free >= min, "enough", "low")) " "
                    (format!("{} MiB free, at least {} MiB kept", free >> 20, min >> 20))
                }
                dt { "Cluster database" }
                dd {
                    @if d.store.cluster_stats().is_some() {
                        (badge(d.health.database_up(), "up", "unreachable"))
                    } @else {
                        "not in cluster mode (this node's sled store only)"
                    }
                }
            }
        }
    }
}

fn counts_table(caption: &str, rows: &[(&str, String)]) -> Markup {
    html! {
        table {
            caption.sr-only { (caption) }
            tbody {
                @for (name, value) in rows {
                    tr { th scope="row" { (name) } td { (value) } }
                }
            }
        }
    }
}

pub(super) async fn page(State(d): State<AppState>, signed: Signed) -> Response {
    let queue: Vec<(&str, String)> = QUEUE_STATES
        .iter()
        .zip(&d.metrics.queue_entries)
        .map(|(s, n)| (*s, n.load(std::sync::atomic::Ordering::Relaxed).to_string()))
        .collect();
    let backlog = d.store.outbox_len();
    let totals = outbound_totals(&d.metrics.render(backlog));
    let outbound: Vec<(&str, String)> = RouteResult::ALL
        .iter()
        .zip(totals)
        .map(|(r, n)| (r.label(), n.to_string()))
        .collect();
    let dead = d.store.dead_list(None).map(|l| l.len());
    let counts = recent(&d, crate::model::time::now_ms()).await;
    let body = html! {
        div.grid {
            section.card aria-labelledby="h-queue" {
                h2 #h-queue { "Queue" }
                (counts_table("Queue entries by state", &queue))
            }
            section.card aria-labelledby="h-out" {
                h2 #h-out { "Outbound since start" }
                (counts_table("Recipients by result at the route", &outbound))
                p.hint { "Counted by this node since it started (" code { "/metrics" } ")." }
            }
            section.card aria-labelledby="h-hooks" {
                h2 #h-hooks { "Webhooks" }
                dl.facts {
                    dt { "Backlog" } dd { (backlog) " events waiting" }
                    dt { "Dead letters" }
                    dd {
                        @match dead {
                            Ok(0) => "none",
                            Ok(n) => a href="/admin/ui/dead-letters" { (n) " to look at" },
                            Err(e) => (format!("cannot be read: {e}")),
                        }
                    }
                }
            }
        }
        (recent_card(counts))
        (health(&d))
    };
    layout::page("Dashboard", Nav::Dashboard, &signed, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_totals_sum_every_route() {
        let text = "# HELP postern_outbound_messages_total x\n\
            postern_outbound_messages_total{route=\"smtp\",result=\"submitted\"} 3\n\
            postern_outbound_messages_total{route=\"ses\",result=\"submitted\"} 4\n\
            postern_outbound_messages_total{route=\"smtp\",result=\"bounced\"} 1\n\
            postern_outbound_messages_totally{route=\"smtp\",result=\"failed\"} 9\n";
        assert_eq!(outbound_totals(text), [7, 1, 0]);
    }
}
