//! `POST /ses/events`: SES events delivered by Amazon SNS (SPEC 7.3), handled by
//! `feedback::ses`. Answers: 2xx when done or deliberately ignored (SNS stops retrying),
//! 5xx when postern could not record it (SNS retries), 4xx for what the sender got wrong
//! (a message that is not believed gets 403 and changes nothing).

use super::{ApiError, AppState};
use crate::feedback::ses::{self, Handled, SnsError};
use crate::feedback::sns::VerifyError;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

/// The SNS endpoint in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(events))]
pub struct SesDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ses/events", post(events))
}

/// An Amazon SNS message (SubscriptionConfirmation, Notification carrying an SES event,
/// UnsubscribeConfirmation). Verified before anything else.
#[utoipa::path(
    post,
    path = "/ses/events",
    tag = "ses",
    request_body(content = String, content_type = "text/plain", description = "the SNS message JSON"),
    responses(
        (status = 200, description = "recorded, confirmed, or deliberately ignored"),
        (status = 400, description = "not an SNS message"),
        (status = 403, description = "signature, certificate URL, SubscribeURL or topic not trusted, or Timestamp over an hour old"),
        (status = 500, description = "not recorded; SNS retries"),
        (status = 503, description = "signing certificate unavailable; SNS retries")
    )
)]
async fn events(State(d): State<AppState>, body: Bytes) -> Response {
    let config = d.config();
    let parts = ses::Parts {
        store: &d.store,
        outbox: &d.outbox,
        config: &config,
        sns: &d.sns,
        metrics: &d.metrics,
    };
    match ses::handle_message(&parts, &body).await {
        Ok(handled) => Json(answer(handled)).into_response(),
        Err(e) => error_response(e),
    }
}

fn answer(handled: Handled) -> serde_json::Value {
    match handled {
        Handled::Confirmed => json!({"status": "confirmed"}),
        Handled::Noted => json!({"status": "noted"}),
        Handled::Ignored(why) => json!({"status": "ignored", "reason": why}),
        Handled::Recorded {
            tid,
            event,
            recorded,
        } => json!({"status": "recorded", "transid": tid, "event": event, "recorded": recorded}),
    }
}

fn error_response(e: SnsError) -> Response {
    let status = match &e {
        SnsError::NotSns(_) => StatusCode::BAD_REQUEST,
        SnsError::Topic { .. } | SnsError::UntrustedSubscribeUrl(_) => StatusCode::FORBIDDEN,
        SnsError::Unverified(v) => match v {
            VerifyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            VerifyError::Type(_) | VerifyError::Missing { .. } => StatusCode::BAD_REQUEST,
            VerifyError::Unsigned
            | VerifyError::Version(_)
            | VerifyError::UntrustedUrl(_)
            | VerifyError::Certificate(_)
            | VerifyError::Signature
            | VerifyError::Stale(_) => StatusCode::FORBIDDEN,
        },
        SnsError::Confirm(_) => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                crate::model::types::ApiCode::Internal,
                e.to_string(),
            )
            .into_response()
        }
        SnsError::Busy(_) => {
            return ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    crate::model::types::ApiCode::Unavailable,
                    format!("{e}; try again later"),
                )
            }
            .into_response()
        }
        SnsError::Store(e) if e.is_database() => {
            let e = crate::store::StoreError::Database(e.to_string());
            return ApiError::store(e).into_response();
        }
        SnsError::Store(e) => return ApiError::internal(e).into_response(),
    };
    tracing::warn!(status = status.as_u16(), "SNS message refused: {e}");
    ApiError::new(
        status,
        crate::model::types::ApiCode::InvalidValue,
        e.to_string(),
    )
    .into_response()
}
