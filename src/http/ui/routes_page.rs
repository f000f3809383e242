//! Routes and assets: per asset its domains, forwarding address and route (kind, host or
//! region, security, authentication), with "Test connection": the route-test admin API's
//! own function (`POST /admin/routes/{asset}/test`), which sends nothing.
//! Below each, the last mails the asset received (what `GET /admin/assets/{asset}/inbound`
//! reads), a Gmail or Outlook forwarding confirmation's code and link up front. An OAuth2
//! route has "Connect account" (SPEC 15, `ui::oauth`) and says when it needs (re-)
//! authorization.

use super::layout::{self, Nav};
use super::session::{lock, Action, Flash, RouteTest, Signed};
use crate::config::{AssetConfig, RouteAuth, RouteConfig, Security};
use crate::http::AppState;
use crate::outbound::oauth::Need;
use crate::store::recent::InboundNote;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};

const PAGE: &str = "/admin/ui/routes";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(page))
        .route("/admin/ui/routes/test", post(test))
}

fn security(s: Security) -> &'static str {
    match s {
        Security::None => "no TLS",
        Security::Ssl => "TLS (implicit)",
        Security::Starttls => "STARTTLS",
    }
}

fn auth(a: RouteAuth) -> &'static str {
    match a {
        RouteAuth::None => "no authentication",
        RouteAuth::Password => "password",
        RouteAuth::Oauth2 => "OAuth2 (XOAUTH2)",
    }
}

fn route_facts(route: &RouteConfig) -> Markup {
    html! {
        @match route {
            RouteConfig::Smtp(s) => {
                dt { "Route" } dd { "smtp (smarthost)" }
                dt { "Server" } dd { code { (s.host) @if let Some(p) = s.port { ":" (p) } } }
                dt { "Security" } dd { (security(s.security)) }
                dt { "Authentication" } dd {
                    (auth(s.auth))
                    @if let Some(u) = s.username.as_deref().filter(|u| !u.is_empty()) { " as " code { (u) } }
                }
            },
            RouteConfig::Ses(s) => {
                dt { "Route" } dd { "ses (Amazon SES v2)" }
                dt { "Region" } dd { code { (s.region) } }
                @if let Some(e) = &s.endpoint { dt { "Endpoint" } dd { code { (e) } } }
            },
        }
    }
}

/// A forwarding confirmation, up front: its code to copy and its link to follow.
fn confirmation(n: &InboundNote) -> Markup {
    html! {
        div.flash.ok role="status" {
            strong { "Forwarding confirmation" } " from " (n.from) ", " (layout::time(n.received_ms)) ". "
            @if let Some(code) = &n.confirmation_code { "Code: " (layout::copyable(code)) " " }
            @if let Some(link) = &n.confirmation_link {
                a href=(link) rel="noopener noreferrer" { "Confirm the forwarding" }
                " (" code { (link) } ")"
            }
        }
    }
}

fn received(notes: &Result<Vec<InboundNote>, String>) -> Markup {
    html! {
        h3 { "Last mails received" }
        @match notes {
            Err(e) => p.flash.bad { "They cannot be read: " (e) },
            Ok(n) if n.is_empty() => p.hint { "None yet on this node." },
            Ok(notes) => {
                @if let Some(c) = notes.iter().find(|n| n.confirmation_code.is_some() || n.confirmation_link.is_some()) {
                    (confirmation(c))
                }
                div.scroll {
                    table.stack {
                        thead { tr {
                            th scope="col" { "Received" } th scope="col" { "From" } th scope="col" { "To" }
                            th scope="col" { "Subject" } th scope="col" { "Start of the text" }
                        } }
                        tbody { @for n in notes {
                            tr {
                                th scope="row" { (layout::time(n.received_ms)) }
                                td data-label="From" { (n.from) }
                                td data-label="To" { (n.to.join(", ")) }
                                td data-label="Subject" { (n.subject) }
                                td data-label="Text" { (n.snippet) }
                            }
                        } }
                    }
                }
            },
        }
    }
}

/// An OAuth2 route's account: whether it can authenticate, and "Connect account".
fn account(signed: &Signed, asset: &str, need: Option<Need>) -> Markup {
    html! {
        @match &need {
            Some(Need::Refused(why)) => p.flash.bad role="alert" {
                strong { "Needs re-authorization." } " The provider refused the grant (" (why) "): mail is deferred until the account is connected again."
            },
            Some(Need::Missing) => p.flash.bad role="status" {
                strong { "No account connected yet." } " Mail is deferred until one is."
            },
            None => {},
        }
        p { (layout::button(signed, "/admin/ui/routes/connect", "Connect account", &[("asset", asset)], None)) }
    }
}

fn asset_section(
    signed: &Signed,
    asset: &AssetConfig,
    inbound_domain: &str,
    tested: Option<&RouteTest>,
    notes: &Result<Vec<InboundNote>, String>,
    need: Option<Need>,
) -> Markup {
    let oauth = matches!(&asset.route, Some(RouteConfig::Smtp(s)) if s.auth == RouteAuth::Oauth2);
    let forwarding = format!("{}@{inbound_domain}", asset.id);
    html! {
        section.card aria-labelledby=(format!("h-{}", asset.id)) {
            h2 id=(format!("h-{}", asset.id)) {
                (if asset.name.is_empty() { &asset.id } else { &asset.name })
            }
            dl.facts {
                dt { "Asset id" } dd { code { (asset.id) } }
                dt { "Domains" } dd { (asset.domains.join(", ")) }
                dt { "Forwarding address" } dd { (layout::copyable(&forwarding)) }
                dt { "Inbound mail" } dd { @if asset.inbound { "accepted" } @else { "refused" } }
                @match &asset.route {
                    Some(r) => (route_facts(r)),
                    None => { dt { "Route" } dd { "none: this asset does not send" } },
                }
            }
            @if oauth { (account(signed, &asset.id, need)) }
            @if asset.route.is_some() {
                p { (layout::button(signed, "/admin/ui/routes/test", "Test connection", &[("asset", &asset.id)], None)) }
                @match tested {
                    Some((at, Ok(text))) => p.flash.ok role="status" { "Test at " (layout::time(*at)) ": " (text) },
                    Some((at, Err(text))) => p.flash.bad role="alert" { "Test at " (layout::time(*at)) " failed: " (text) },
                    None => {},
                }
            }
            (received(notes))
        }
    }
}

async fn page(State(d): State<AppState>, signed: Signed) -> Response {
    let config = d.config();
    let tested = lock(&signed.ui.route_tests).clone();
    let body = html! {
        p.hint { "Mail sent to an asset's forwarding address (for example by a Gmail or Outlook forwarding rule) becomes an MO event at its incoming webhook." }
        @for a in &config.assets {
            @let notes = d.store.recent_inbound(&a.id).map_err(|e| e.to_string());
            @let need = d.oauth.needs_authorization(&a.id);
            (asset_section(&signed, a, &config.server.inbound_domain, tested.get(&a.id), &notes, need))
        }
    };
    let mut page = layout::page("Routes and assets", Nav::Routes, &signed, body);
    if let Some(csp) = connect_policy(&config) {
        page.headers_mut()
            .insert(axum::http::header::CONTENT_SECURITY_POLICY, csp);
    }
    page
}

/// The page's policy when it has "Connect account" buttons: browsers hold the redirect
/// that follows a form's POST to `form-action` too, so the providers' consent pages
/// (the origins of the OAuth2 routes' `auth_url`) are added to it; nothing else changes.
fn connect_policy(config: &crate::config::Config) -> Option<axum::http::HeaderValue> {
    let mut origins: Vec<String> = crate::outbound::oauth::oauth_routes(config)
        .iter()
        .filter_map(|(_, r)| r.oauth_endpoints().auth_url)
        .filter_map(|u| url::Url::parse(&u).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .collect();
    origins.sort();
    origins.dedup();
    if origins.is_empty() {
        return None;
    }
    let csp = super::PAGE_CSP.replace(
        "form-action 'self'",
        &format!("form-action 'self' {}", origins.join(" ")),
    );
    axum::http::HeaderValue::from_str(&csp).ok()
}

async fn test(State(d): State<AppState>, action: Action) -> Response {
    let asset = action.fields.get("asset").to_string();
    let back = format!("{PAGE}#h-{asset}");
    let result = match crate::http::routes::test_route(&d, &asset).await {
        Ok(r) => r,
        Err(e) => return action.signed.redirect(PAGE, Flash::Failed(e.description)),
    };
    let flash = match &result {
        Ok(_) => Flash::Done(format!("The route of {asset} answered.")),
        Err(_) => Flash::Failed(format!("The route of {asset} failed its test.")),
    };
    lock(&action.signed.ui.route_tests).insert(asset, (crate::model::time::now_ms(), result));
    action.signed.redirect(&back, flash)
}
