//! The dashboard: the queue by state, outbound results, the webhook backlog and dead
//! letters, and the health that `/readyz` reports (free space, store, cluster database).

use super::layout::{self, Nav};
use super::session::Signed;
use crate::http::AppState;
use crate::metrics::RouteResult;
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
