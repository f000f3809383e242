//! HTTP routes (axum): health and readiness, Prometheus metrics, the admin API for dead
//! letters, and the signed inbound links of `mo_attachments = "url"`. Every error is a
//! JSON `{"code","description"}` body, never a framework's plain-text default.
//! [`serve`] is the accept loop (header timeout, connection cap). [`router`] is the one
//! place that merges every handler file's routes, and [`openapi_json`] their OpenAPI
//! documents.

pub mod admin;
pub mod api;
pub mod domains;
pub mod log;
pub mod public;
pub mod queue;
pub mod routes;
mod serve;
pub mod ses;
mod ui;

pub use serve::serve;

use crate::daemon::Daemon;
use crate::model::links::Link;
use crate::model::time::now_ms;
use crate::model::tokens::TokenKind;
use crate::model::types::ApiCode;
use crate::webhooks::mo;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) type AppState = Arc<Daemon>;

pub fn router(daemon: Arc<Daemon>) -> Router {
    let limit = daemon.config().http.max_body_size;
    Router::new()
        .merge(crate::http::api::routes())
        .merge(admin::routes())
        .merge(public::routes())
        .merge(ses::routes())
        .merge(domains::routes())
        .merge(queue::routes())
        .merge(log::routes())
        .merge(routes::routes())
        .merge(ui::routes())
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/dead-letters", get(dead_list))
        .route("/admin/dead-letters/replay", post(dead_replay_all))
        .route("/admin/dead-letters/{id}/replay", post(dead_replay_one))
        .route("/v2/inbound/{tid}/raw", get(inbound_raw))
        .route("/v2/inbound/{tid}/attachments/{n}", get(inbound_attachment))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ApiCode::NotFound, "no such resource")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ApiCode::MethodNotAllowed,
                "method not allowed on this resource",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(daemon)
}

/// The OpenAPI document as served at `/openapi.json` and kept in the repository: the
/// Messaging API's, then every other handler file's paths.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    let mut doc = api::ApiDoc::openapi();
    doc.merge(admin::AdminDoc::openapi());
    doc.merge(domains::DomainDoc::openapi());
    doc.merge(ses::SesDoc::openapi());
    doc.merge(DeadLetterDoc::openapi());
    doc.merge(queue::QueueDoc::openapi());
    doc.merge(log::LogDoc::openapi());
    doc.merge(routes::RouteDoc::openapi());
    doc.to_pretty_json().unwrap_or_default()
}

/// Dead-letter routes in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(dead_list, dead_replay_one, dead_replay_all))]
pub struct DeadLetterDoc;

/// The one error shape of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// Seconds for `Retry-After`, on a refusal that passes.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error answered with `status` and `code`.
    pub fn new(status: StatusCode, code: ApiCode, description: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            description: description.into(),
            retry_after: None,
        }
    }

    /// A store failure: while the cluster database is unreachable, 503 with
    /// `{"code":"7010"}` and `Retry-After` (SPEC 13); anything else is internal.
    pub fn store(e: crate::store::StoreError) -> Self {
        if !e.is_database() {
            return ApiError::internal(e);
        }
        tracing::warn!(error = %e, "request refused: cluster database");
        ApiError {
            retry_after: Some(crate::model::health::Health::RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ApiCode::Unavailable,
                format!("{e}; try again later"),
            )
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ApiCode::Internal,
            "internal error; see the daemon log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"code": self.code, "description": self.description})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

async fn readyz(State(d): State<AppState>) -> Response {
    if let Err(why) = d.health.check_shared() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiCode::Unavailable,
            why.to_string(),
        )
        .into_response()
    } else if let Some(why) = reauthorization_needed(&d) {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ApiCode::Unavailable, why).into_response()
    } else if d.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiCode::Starting,
            "starting",
        )
        .into_response()
    }
}

/// The routes whose OAuth2 grant the provider refused (SPEC 15), in words, if any.
fn reauthorization_needed(d: &Daemon) -> Option<String> {
    let refused: Vec<String> = d
        .oauth
        .flagged()
        .into_iter()
        .filter_map(|(asset, need)| match need {
            crate::outbound::oauth::Need::Refused(why) => Some(format!(
                "asset {asset}: route needs re-authorization ({why}); run `postern route authorize {asset}`"
            )),
            crate::outbound::oauth::Need::Missing => None,
        })
        .collect();
    (!refused.is_empty()).then(|| refused.join("; "))
}

async fn metrics(State(d): State<AppState>) -> Response {
    let mut text = d.metrics.render(d.store.outbox_len());
    let config = d.config();
    let routes = crate::outbound::oauth::oauth_routes(&config);
    if !routes.is_empty() {
        let needs = routes
            .iter()
            .map(|(asset, _)| (asset.clone(), d.oauth.needs_authorization(asset).is_some()));
        text.push_str(&crate::metrics::Metrics::render_authorization(needs));
    }
    if let Some(stats) = d.store.cluster_stats() {
        let up = d.health.database_up();
        text.push_str(&crate::metrics::Metrics::render_cluster(up, stats));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Checks `Authorization: Bearer <admin token>` before anything else is looked at.
pub(crate) fn admin(d: &Daemon, headers: &HeaderMap) -> Result<(), ApiError> {
    let config = d.config();
    let want = config.admin.token.expose();
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ApiCode::AuthFailed,
            "Authentication failed: admin token required",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if want.is_empty() || !crate::model::tokens::constant_time_eq(given.as_bytes(), want.as_bytes())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ApiCode::AuthFailed,
            "Authentication failed",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct UrlFilter {
    url: Option<String>,
}

#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", params(("url" = Option<String>, Query)), responses((status = 200), (status = 401), (status = 403)))]
async fn dead_list(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UrlFilter>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let list = d
        .store
        .dead_list(q.url.as_deref())
        .map_err(ApiError::internal)?;
    let items: Vec<_> = list
        .iter()
        .map(|x| {
            json!({
                "id": x.entry.id,
                "kind": x.entry.kind.label(),
                "url": x.entry.url,
                "assetId": x.entry.asset_id,
                "attempts": x.entry.attempts,
                "reason": x.reason,
                "lastError": x.entry.last_error,
                "createdAt": crate::model::time::timestamp(x.entry.created_ms),
                "diedAt": crate::model::time::timestamp(x.died_ms),
            })
        })
        .collect();
    Ok(Json(json!({"deadLetters": items, "count": items.len()})).into_response())
}

async fn replay(d: &Daemon, ids: Vec<String>) -> Result<Response, ApiError> {
    let entries = d
        .store
        .dead_replay(&ids)
        .await
        .map_err(ApiError::internal)?;
    let replayed: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    tracing::info!(count = replayed.len(), "dead letters replayed");
    d.outbox.schedule(entries);
    Ok(Json(json!({"replayed": replayed})).into_response())
}

#[utoipa::path(post, path = "/admin/dead-letters/{id}/replay", tag = "admin", params(("id" = String, Path)), responses((status = 200), (status = 404)))]
async fn dead_replay_one(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    if d.store
        .dead_list(None)
        .map_err(ApiError::internal)?
        .iter()
        .all(|x| x.entry.id != id)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("no dead letter with id {id}"),
        ));
    }
    replay(&d, vec![id]).await
}

/// Replays every dead letter, or only those of `?url=`.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "admin", params(("url" = Option<String>, Query)), responses((status = 200)))]
async fn dead_replay_all(
    State(d): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UrlFilter>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let ids = d
        .store
        .dead_list(q.url.as_deref())
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|x| x.entry.id)
        .collect();
    replay(&d, ids).await
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Verifies an inbound link token for `tid` and `part`, returning the stored message.
fn inbound_link(
    d: &Daemon,
    tid: &str,
    part: &str,
    token: Option<&str>,
) -> Result<crate::store::SpoolRecord, ApiError> {
    let refused = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            ApiCode::AuthFailed,
            "link token is missing, altered or expired",
        )
    };
    let Some(Link::InboundAttachment {
        tid: t,
        part: p,
        expires_ms,
    }) = Link::verify(
        &d.signer,
        TokenKind::InboundAttachment,
        token.ok_or_else(refused)?,
    )
    else {
        return Err(refused());
    };
    if t != tid || p != part || expires_ms < now_ms() {
        return Err(refused());
    }
    let expired = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            "the stored message has expired",
        )
    };
    let spool_id = d
        .store
        .spool_id_for_tid(tid)
        .map_err(ApiError::internal)?
        .ok_or_else(expired)?;
    d.store
        .spool_record(&spool_id)
        .map_err(ApiError::internal)?
        .ok_or_else(expired)
}

async fn inbound_raw(
    State(d): State<AppState>,
    Path(tid): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let record = inbound_link(&d, &tid, "raw", q.token.as_deref())?;
    let body = d.store.load_body(&record).map_err(ApiError::internal)?;
    let mut raw = Vec::with_capacity(record.auth_header.len() + body.len());
    raw.extend_from_slice(record.auth_header.as_bytes());
    raw.extend_from_slice(&body);
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], raw).into_response())
}

async fn inbound_attachment(
    State(d): State<AppState>,
    Path((tid, n)): Path<(String, usize)>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let record = inbound_link(&d, &tid, &n.to_string(), q.token.as_deref())?;
    let store = d.store.clone();
    let found = tokio::task::spawn_blocking(
        move || -> Result<Option<(String, String, Vec<u8>)>, String> {
            let body = store.load_body(&record).map_err(|e| e.to_string())?;
            let bytes = mo::repaired(&body);
            let Some(message) = mo::parse(&bytes) else {
                return Ok(None);
            };
            Ok(mo::attachments(&message)
                .into_iter()
                .nth(n)
                .map(|a| (a.name, a.content_type, a.bytes.to_vec())))
        },
    )
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let Some((name, content_type, bytes)) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("message has no attachment {n}"),
        ));
    };
    let safe_name: String = name
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe_name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Extractor for the API's writing handlers: refuses the request up front, before its
/// body is read, with `503` `{"code":"7010"}` and `Retry-After` while [`crate::model::health::Health::check`]
/// fails (SPEC 6.3). Reading endpoints do not take it.
pub struct Writable;

impl axum::extract::FromRequestParts<Arc<Daemon>> for Writable {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        daemon: &Arc<Daemon>,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        match daemon.health.check_shared() {
            Ok(()) => Ok(Writable),
            Err(why) => {
                let mut resp = (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "code": ApiCode::Unavailable.as_str(),
                        "description": format!("{why}; try again later"),
                    })),
                )
                    .into_response();
                resp.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    daemon.health.retry_after_secs().into(),
                );
                Err(resp)
            }
        }
    }
}
