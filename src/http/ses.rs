//! `POST /ses/events`: SES events delivered by Amazon SNS (SPEC 7.3).
//!
//! Every message is verified first (topic in `ses.topic_arns`, certificate URL, Timestamp
//! within the last hour, signature); one that is not believed gets 403 and changes nothing. A subscription is confirmed by fetching its
//! SubscribeURL, only from an SNS host or a trusted prefix. A notification's SES event is
//! matched to its transaction by SES's MessageId and recorded like any other feedback;
//! SNS message ids already recorded are acknowledged without recording them twice.
//! Answers: 2xx when done or deliberately ignored (SNS stops retrying), 5xx when postern
//! could not record it (SNS retries), 4xx for what the sender got wrong.

use super::{ApiError, AppState};
use crate::config::Config;
use crate::feedback::sns::{self, VerifyError};
use crate::metrics::SnsResult;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tracing::Instrument;

/// The SNS endpoint in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(events))]
pub struct SesDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ses/events", post(events))
}

fn refused(d: &crate::daemon::Daemon, status: StatusCode, description: String) -> Response {
    d.metrics.sns_message(SnsResult::Refused);
    tracing::warn!(
        status = status.as_u16(),
        "SNS message refused: {description}"
    );
    ApiError::new(status, "7004", description).into_response()
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
    let msg: sns::Message = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return refused(
                &d,
                StatusCode::BAD_REQUEST,
                format!("body is not an SNS message: {e}"),
            )
        }
    };
    let config = d.config();
    // An empty list accepts nothing: confirming any topic's subscription would let anyone
    // point their own topic here (check-config refuses that configuration anyway).
    if !config.ses.topic_arns.contains(&msg.topic_arn) {
        let empty = if config.ses.topic_arns.is_empty() {
            " (the list is empty: no topic is accepted)"
        } else {
            ""
        };
        return refused(
            &d,
            StatusCode::FORBIDDEN,
            format!("TopicArn {} is not in ses.topic_arns{empty}", msg.topic_arn),
        );
    }
    if let Err(e) = d.sns.verify(&msg, &config.ses.trust_url_prefixes).await {
        let status = match e {
            VerifyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            VerifyError::Type(_) | VerifyError::Missing { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        };
        return refused(&d, status, e.to_string());
    }
    let span = tracing::info_span!("sns", message_id = %msg.message_id, topic = %msg.topic_arn);
    async {
        match msg.kind.as_str() {
            "SubscriptionConfirmation" => confirm(&d, &msg, &config.ses.trust_url_prefixes).await,
            "UnsubscribeConfirmation" => {
                tracing::warn!("SNS says this endpoint was unsubscribed from the topic: SES events stop arriving");
                Json(json!({"status": "noted"})).into_response()
            }
            _ => notification(&d, &msg, &config).await,
        }
    }
    .instrument(span)
    .await
}

/// Confirms a subscription by fetching its SubscribeURL.
async fn confirm(d: &crate::daemon::Daemon, msg: &sns::Message, trusted: &[String]) -> Response {
    let url = msg.subscribe_url.as_deref().unwrap_or_default();
    if !sns::trusted_url(url, trusted) {
        return refused(
            d,
            StatusCode::FORBIDDEN,
            format!("SubscribeURL {url} is not https on an SNS host nor under a trusted prefix"),
        );
    }
    match d.sns.client().get(url).send().await {
        Ok(r) if r.status().is_success() => {
            d.metrics.sns_message(SnsResult::Confirmed);
            tracing::info!("SNS subscription confirmed");
            Json(json!({"status": "confirmed"})).into_response()
        }
        Ok(r) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "7500",
            format!(
                "confirming the subscription: SubscribeURL answered {}",
                r.status()
            ),
        )
        .into_response(),
        Err(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "7500",
            format!("confirming the subscription: {e}"),
        )
        .into_response(),
    }
}

async fn notification(d: &crate::daemon::Daemon, msg: &sns::Message, config: &Config) -> Response {
    let ignored = |why: &str| {
        d.metrics.sns_message(SnsResult::Ignored);
        tracing::info!("SNS notification ignored: {why}");
        Json(json!({"status": "ignored", "reason": why})).into_response()
    };
    match d.store.sns_seen(&msg.message_id) {
        Ok(true) => return ignored("already recorded"),
        Ok(false) => {}
        Err(e) => return ApiError::internal(e).into_response(),
    }
    let event = match crate::feedback::ses_events::parse(&msg.message) {
        Ok(e) => e,
        // Validly signed but not an SES event (a test publish from the console):
        // retrying would not change it.
        Err(e) => return ignored(&e.to_string()),
    };
    let tid = match d.store.tid_for_route_id(&event.message_id) {
        Ok(Some(t)) => t,
        Ok(None) => return ignored("no transaction has this SES MessageId"),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let recorded =
        match crate::feedback::record(&d.store, &d.outbox, config, &tid, &event.reports).await {
            Ok(n) => n,
            Err(e) => return ApiError::internal(e).into_response(),
        };
    if let Err(e) = d.store.mark_sns_seen(&msg.message_id).await {
        // Recorded already: a redelivery would notify twice, which at-least-once allows.
        tracing::warn!(error = %e, "SNS message id not remembered");
    }
    d.metrics.sns_message(SnsResult::Recorded);
    tracing::info!(tid = %tid, event = %event.kind, recorded, "SES event");
    Json(json!({"status": "recorded", "transid": tid, "event": event.kind, "recorded": recorded}))
        .into_response()
}
