//! Domains: per asset domain the DNS records to publish (with copy buttons), the stored
//! verification verdict, the last check of each record (ok / missing / wrong), and the
//! DKIM rotation state. "Verify" runs the admin API's own verification.

use super::layout::{self, Nav};
use super::session::{lock, Action, Flash, Signed};
use crate::http::AppState;
use crate::outbound::dkim::{Phase, Rotation};
use crate::outbound::domains::{Record, Status, Verification};
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/ui/domains", get(page))
        .route("/admin/ui/domains/verify", post(verify))
}

/// What the page shows of one domain.
struct DomainView {
    domain: String,
    asset: String,
    records: Result<Vec<Record>, String>,
    rotation: Result<Option<Rotation>, String>,
    state: Option<crate::store::domains::DomainState>,
}

fn status_badge(status: Status) -> Markup {
    match status {
        Status::Ok => html! { span.badge.ok { "ok" } },
        Status::Missing => html! { span.badge.bad { "missing" } },
        Status::Wrong => html! { span.badge.bad { "wrong" } },
        Status::Error => html! { span.badge.warn { "lookup failed" } },
    }
}

fn records_table(records: &[Record], checked: Option<&Verification>) -> Markup {
    let check = |r: &Record| {
        checked.and_then(|v| {
            v.records
                .iter()
                .find(|c| c.record.name == r.name && c.record.purpose == r.purpose)
        })
    };
    html! {
        div.scroll {
            table.stack {
                thead { tr {
                    th scope="col" { "Purpose" } th scope="col" { "Name" } th scope="col" { "Type" }
                    th scope="col" { "Value" } th scope="col" { "Last check" }
                } }
                tbody {
                    @for r in records {
                        tr {
                            th scope="row" { (r.purpose) }
                            td data-label="Name" { (layout::copyable(&r.name)) }
                            td data-label="Type" { (r.kind) }
                            td data-label="Value" { (layout::copyable(&r.value)) }
                            td data-label="Last check" {
                                @match check(r) {
                                    Some(c) => {
                                        (status_badge(c.status))
                                        @if c.status != Status::Ok && !c.found.is_empty() {
                                            p.hint { "found: " code { (c.found.join(" | ")) } }
                                        }
                                    },
                                    None => span.hint { "not checked yet" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Signing => "signing",
        Phase::Next => "next (published, signs later)",
        Phase::Retiring => "retiring (kept published)",
    }
}

fn rotation(view: &DomainView, now_s: u64) -> Markup {
    html! {
        h3 { "DKIM rotation" }
        @match &view.rotation {
            Err(e) => p.flash.bad { "The rotation state cannot be read: " (e) },
            Ok(None) => p { "Never rotated: the configured selector signs. Rotate with "
                code { "postern domain rotate-dkim " (view.domain) } "." },
            Ok(Some(r)) => {
                ul {
                    @for (s, phase) in r.published(now_s) {
                        li {
                            code { (s.selector) } " — " (phase_label(phase))
                            ", signs from " (layout::time(s.signing_from * 1000))
                            @if let Some(at) = s.retire_at { ", retire after " (layout::time(at * 1000)) }
                        }
                    }
                }
            },
        }
    }
}

fn domain_section(signed: &Signed, view: &DomainView, checked: Option<&Verification>) -> Markup {
    let now_s = crate::model::time::now_ms() / 1000;
    html! {
        section.card aria-labelledby=(format!("h-{}", view.domain)) {
            h2 id=(format!("h-{}", view.domain)) { (view.domain) }
            p {
                "Asset " code { (view.asset) } ". "
                @match &view.state {
                    Some(s) if s.verified => { span.badge.ok { "verified" } " checked " (layout::time(s.checked_ms)) },
                    Some(s) => { span.badge.bad { "not verified" } " checked " (layout::time(s.checked_ms)) },
                    None => span.badge.warn { "never verified" },
                }
            }
            (layout::button(signed, "/admin/ui/domains/verify", "Verify now", &[("domain", &view.domain)], None))
            h3 { "Records to publish" }
            @match &view.records {
                Ok(records) => (records_table(records, checked)),
                Err(e) => p.flash.bad { "The records cannot be made: " (e) },
            }
            (rotation(view, now_s))
        }
    }
}

async fn views(d: &crate::daemon::Daemon) -> Vec<DomainView> {
    let config = d.config();
    let mut out = Vec::new();
    for asset in &config.assets {
        for domain in &asset.domains {
            let state = d.store.domains().state(domain).await.ok().flatten();
            out.push(DomainView {
                domain: domain.clone(),
                asset: asset.id.clone(),
                records: Err(String::new()),
                rotation: Ok(None),
                state,
            });
        }
    }
    // Records may create a missing DKIM key (an RSA key takes a while): off the workers.
    tokio::task::spawn_blocking(move || {
        let data_dir = &config.server.data_dir;
        for v in &mut out {
            v.records =
                crate::outbound::domains::records(&config, &v.domain).map_err(|e| e.to_string());
            v.rotation = Rotation::load(data_dir, &v.domain).map_err(|e| e.to_string());
        }
        out
    })
    .await
    .unwrap_or_default()
}

async fn page(State(d): State<AppState>, signed: Signed) -> Response {
    let views = views(&d).await;
    let checked = lock(&signed.ui.verifications).clone();
    let body = html! {
        p.hint { "Publish these records at your DNS provider, then verify. A domain is verified when its "
            code { "_postern" } " TXT record and its signing DKIM key are both found." }
        @if views.is_empty() { p { "No asset has a domain." } }
        @for v in &views {
            (domain_section(&signed, v, checked.get(&v.domain)))
        }
    };
    layout::page("Domains", Nav::Domains, &signed, body)
}

async fn verify(State(d): State<AppState>, action: Action) -> Response {
    let domain = action.fields.get("domain").to_ascii_lowercase();
    let back = format!("/admin/ui/domains#h-{domain}");
    let flash = match crate::http::domains::verify_domain(&d, &domain).await {
        Ok(v) => {
            let flash = if v.verified {
                Flash::Done(format!("{domain} is verified."))
            } else {
                Flash::Failed(format!(
                    "{domain} is not verified: see the records marked missing or wrong."
                ))
            };
            lock(&action.signed.ui.verifications).insert(domain.clone(), v);
            flash
        }
        Err(e) => Flash::Failed(format!("{domain}: {}", e.description)),
    };
    action.signed.redirect(&back, flash)
}
