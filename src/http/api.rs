//! The Messaging API v2 (SPEC 4): authentication, validation, rate limits and the routes.
//! Wire types live in [`wire`] and nowhere else; the OpenAPI document is generated from
//! them and the `#[utoipa::path]` annotations below ([`ApiDoc`], merged in `http/mod.rs`).
//! The handlers translate only: submitting is [`submit::submit`].

use crate::daemon::Daemon;
use crate::http::ApiError;
use crate::model::time::now_ms;
use crate::model::types::ApiCode;
use crate::model::wire;
use crate::outbound::{auth, submit, validate};
use crate::store::messages::RecipientPhase;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use utoipa::OpenApi;

type AppState = Arc<Daemon>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postern Messaging API",
        version = "2",
        description = "Self-hosted transactional email: send, track, template."
    ),
    paths(
        send_message,
        message_status,
        template_list,
        template_create,
        template_get,
        template_put,
        template_delete
    ),
    components(schemas(
        wire::SendRequest,
        wire::Destination,
        wire::Content,
        wire::AttachmentRef,
        wire::TemplateRef,
        wire::Options,
        wire::ContactPolicy,
        wire::Accepted,
        wire::AcceptedMessage,
        wire::ErrorBody,
        wire::Template,
        wire::MessageStatus,
        wire::RecipientStatus,
        wire::HistoryItem
    ))
)]
pub struct ApiDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/messages", axum::routing::post(send_message))
        .route("/v2/messages/{tid}", get(message_status))
        .route("/v2/templates", get(template_list).post(template_create))
        .route(
            "/v2/templates/{id}",
            get(template_get).put(template_put).delete(template_delete),
        )
}

fn service_of(d: &Daemon, headers: &HeaderMap) -> Result<crate::config::ServiceConfig, ApiError> {
    let config = d.config();
    let key = headers.get("key").and_then(|v| v.to_str().ok());
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let window = auth::JwtWindow {
        max_future: config.api.jwt_max_future,
        max_age: config.api.jwt_max_age,
    };
    match auth::authenticate(&config, key, authz, (now_ms() / 1000) as i64, &window) {
        Ok(s) => Ok(s.clone()),
        Err(auth::AuthError::Missing) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ApiCode::KeyMissing,
            "Service key missing",
        )),
        Err(auth::AuthError::Failed(why)) => {
            tracing::info!(reason = why, "API authentication failed");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ApiCode::AuthFailed,
                "Authentication failed",
            ))
        }
    }
}

/// The body as JSON of type `T`: 413 over the limit, 415 without a JSON content type, 7000
/// when malformed (or nested deeper than 128, or not UTF-8), 7003/7004 naming the field.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    typed(json_value(headers, body)?)
}

/// The body as a JSON value: 413, 415 and 7000 as for [`json_body`].
fn json_value(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiCode::InvalidValue,
            "Content-Type must be application/json",
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ApiCode::InvalidValue,
                "request body is larger than http.max_body_size",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ApiCode::Malformed,
                format!("request body could not be read: {e}"),
            )
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::Malformed,
            format!("malformed JSON: {e}"),
        )
    })
}

/// A JSON value as `T`: 7003 naming a missing field, 7004 naming a field of the wrong type.
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if let Some(field) = inner
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            let full = if path == "." {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ApiCode::MissingField,
                format!("missing mandatory field: {full}"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ApiCode::InvalidValue,
                format!("{path}: {inner}"),
            )
        }
    })
}

/// The answer to a refused submission: 400 with the validation code, 429 with
/// `Retry-After`, or 500.
fn refusal(refused: submit::Refused) -> Response {
    match refused {
        submit::Refused::Invalid(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, e.code, e.description).into_response()
        }
        submit::Refused::TpsExceeded {
            retry_after_secs, ..
        } => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ApiCode::TpsExceeded,
                refused.to_string(),
            )
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs.into());
            resp
        }
        submit::Refused::Store(e) => ApiError::store(e).into_response(),
    }
}

#[utoipa::path(post, path = "/v2/messages", request_body = wire::SendRequest,
    responses((status = 202, body = wire::Accepted), (status = 400, body = wire::ErrorBody),
              (status = 401, body = wire::ErrorBody), (status = 429, body = wire::ErrorBody)),
    params(("key" = Option<String>, Header, description = "service key (or Authorization: Bearer <HS256 JWT>)")))]
async fn send_message(
    _: crate::http::Writable,
    State(d): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service = service_of(&d, &headers)?;
    let value = json_value(&headers, body)?;
    let config = d.config();
    let parts = submit::Parts {
        config: &config,
        store: &d.store,
        queue: &d.queue,
        outbox: &d.outbox,
        metrics: &d.metrics,
        url_policy: &d.url_policy,
    };
    let channel = value.get("channel").and_then(|c| c.as_str());
    if let Err(refused) = submit::check_channel(&parts, channel) {
        return Ok(refusal(refused));
    }
    let request: wire::SendRequest = typed(value)?;
    let accepted = match submit::submit(&parts, &service, request, now_ms()).await {
        Ok(accepted) => accepted,
        Err(refused) => return Ok(refusal(refused)),
    };
    let body = wire::Accepted {
        code: ApiCode::Queued.as_str(),
        description: "Queued",
        request_id: accepted.request_id,
        messages: accepted.messages,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/v2/messages/{tid}", responses((status = 200, body = wire::MessageStatus), (status = 404, body = wire::ErrorBody)),
    params(("tid" = String, Path, description = "transaction id")))]
async fn message_status(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(tid): Path<String>,
) -> Result<Json<wire::MessageStatus>, ApiError> {
    let service = service_of(&d, &headers)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("no transaction {tid}"),
        )
    };
    let r = d
        .store
        .messages()
        .get(&tid)
        .await
        .map_err(ApiError::store)?
        .ok_or_else(not_found)?;
    if r.service_id != service.id {
        return Err(not_found());
    }
    Ok(Json(wire::MessageStatus {
        tid: r.tid.clone(),
        request_id: r.request_id.clone(),
        state: r.state.label().to_string(),
        from: r.from.clone(),
        recipients: r
            .recipients
            .iter()
            .map(|x| wire::RecipientStatus {
                address: x.address.clone(),
                state: phase_wire_name(x.phase).to_string(),
                code: x.code.clone(),
            })
            .collect(),
        send_at: crate::model::time::timestamp(r.send_at_ms),
        expire_at: crate::model::time::timestamp(r.expire_at_ms),
        attempts: r.attempts,
        events: r
            .history
            .iter()
            .map(|h| wire::HistoryItem {
                time_stamp: crate::model::time::timestamp(h.at_ms),
                destination: h.destination.clone(),
                code: h.code.clone(),
                delivery_status: h.status.clone(),
                description: h.description.clone(),
                additional_info: h.additional_info.clone(),
            })
            .collect(),
    }))
}

/// A recipient's phase as `recipients[].state` names it.
fn phase_wire_name(phase: RecipientPhase) -> &'static str {
    match phase {
        RecipientPhase::Pending => "pending",
        RecipientPhase::Submitted => "submitted",
        RecipientPhase::Failed => "failed",
    }
}

fn check_template(t: &wire::Template) -> Result<(), ApiError> {
    let bad = |m: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ApiCode::InvalidValue,
            m.to_string(),
        )
    };
    if t.id.is_empty()
        || t.id.len() > 128
        || !t
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(bad("id: 1 to 128 letters, digits, '-', '_' or '.'"));
    }
    if t.subject.contains(['\r', '\n']) {
        return Err(bad("subject: must not contain CR or LF"));
    }
    if t.text.is_empty() && t.html.is_empty() {
        return Err(bad("text: a template needs text or html"));
    }
    if t.html.len() > validate::MAX_HTML {
        return Err(bad("html: is larger than 500 KB"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v2/templates", responses((status = 200, body = [wire::Template])))]
async fn template_list(
    State(d): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<wire::Template>>, ApiError> {
    let service = service_of(&d, &headers)?;
    Ok(Json(
        d.store
            .templates()
            .list(&service.id)
            .await
            .map_err(ApiError::store)?,
    ))
}

#[utoipa::path(post, path = "/v2/templates", request_body = wire::Template, responses((status = 201, body = wire::Template), (status = 409, body = wire::ErrorBody)))]
async fn template_create(
    _: crate::http::Writable,
    State(d): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service = service_of(&d, &headers)?;
    let t: wire::Template = json_body(&headers, body)?;
    check_template(&t)?;
    if d.store
        .templates()
        .get(&service.id, &t.id)
        .await
        .map_err(ApiError::store)?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ApiCode::InvalidValue,
            format!("id: template '{}' exists; use PUT", t.id),
        ));
    }
    d.store
        .templates()
        .put(&service.id, &t)
        .await
        .map_err(ApiError::store)?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

#[utoipa::path(get, path = "/v2/templates/{id}", responses((status = 200, body = wire::Template), (status = 404, body = wire::ErrorBody)), params(("id" = String, Path)))]
async fn template_get(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<wire::Template>, ApiError> {
    let service = service_of(&d, &headers)?;
    d.store
        .templates()
        .get(&service.id, &id)
        .await
        .map_err(ApiError::store)?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ApiCode::NotFound,
                format!("no template {id}"),
            )
        })
}

#[utoipa::path(put, path = "/v2/templates/{id}", request_body = wire::Template, responses((status = 200, body = wire::Template)), params(("id" = String, Path)))]
async fn template_put(
    _: crate::http::Writable,
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<wire::Template>, ApiError> {
    let service = service_of(&d, &headers)?;
    let mut t: wire::Template = json_body(&headers, body)?;
    t.id = id;
    check_template(&t)?;
    d.store
        .templates()
        .put(&service.id, &t)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(t))
}

#[utoipa::path(delete, path = "/v2/templates/{id}", responses((status = 204), (status = 404, body = wire::ErrorBody)), params(("id" = String, Path)))]
async fn template_delete(
    _: crate::http::Writable,
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let service = service_of(&d, &headers)?;
    if d.store
        .templates()
        .delete(&service.id, &id)
        .await
        .map_err(ApiError::store)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            format!("no template {id}"),
        ))
    }
}
