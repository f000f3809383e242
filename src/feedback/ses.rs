//! SES events delivered by Amazon SNS (SPEC 7.3): what `POST /ses/events` does.
//!
//! Every message is verified first (topic in `ses.topic_arns`, certificate URL, Timestamp
//! within the last hour, signature); one that is not believed changes nothing. A
//! subscription is confirmed by fetching its SubscribeURL, only from an SNS host or a
//! trusted prefix. A notification's SES event is matched to its transaction by SES's
//! MessageId and recorded like any other feedback; SNS message ids already recorded are
//! acknowledged without recording them twice.

use crate::config::Config;
use crate::feedback::ses_events;
use crate::feedback::sns::{self, VerifyError};
use crate::metrics::{Metrics, SnsResult};
use crate::store::{SnsClaim, Store, StoreError};
use crate::webhooks::Outbox;
use tracing::Instrument;

/// What handling an SNS message needs of the daemon.
pub struct Parts<'a> {
    pub store: &'a Store,
    pub outbox: &'a Outbox,
    pub config: &'a Config,
    pub sns: &'a sns::Verifier,
    pub metrics: &'a Metrics,
}

/// What was done with a message that was believed.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// A SubscriptionConfirmation whose SubscribeURL answered 2xx.
    Confirmed,
    /// An UnsubscribeConfirmation: SES events stop arriving.
    Noted,
    /// A notification deliberately not recorded (retrying would not change it): why.
    Ignored(String),
    /// A notification's SES event, recorded for transaction `tid`.
    Recorded {
        tid: String,
        event: String,
        recorded: usize,
    },
}

/// Why a message was not handled. The first four are refusals (the sender's doing: the
/// message changed nothing); the others are postern's or the SubscribeURL's.
#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    #[error("body is not an SNS message: {0}")]
    NotSns(String),
    /// `note` says when the list is empty (then no topic is accepted).
    #[error("TopicArn {arn} is not in ses.topic_arns{note}")]
    Topic { arn: String, note: &'static str },
    #[error(transparent)]
    Unverified(VerifyError),
    #[error("SubscribeURL {0} is not https on an SNS host nor under a trusted prefix")]
    UntrustedSubscribeUrl(String),
    /// Fetching the SubscribeURL failed or did not answer 2xx.
    #[error("confirming the subscription: {0}")]
    Confirm(String),
    /// Another delivery of the same SNS message is being recorded (on this node or
    /// another): SNS delivers it again, and then finds it recorded.
    #[error("SNS message {0} is being recorded by another delivery of it")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handles one SNS message (the body of `POST /ses/events`): verifies it, then confirms
/// the subscription, notes an unsubscription or records the notification's SES event.
pub async fn handle_message(parts: &Parts<'_>, body: &[u8]) -> Result<Handled, SnsError> {
    let msg = believed(parts, body)
        .await
        .inspect_err(|_| parts.metrics.sns_message(SnsResult::Refused))?;
    let span = tracing::info_span!("sns", message_id = %msg.message_id, topic = %msg.topic_arn);
    async {
        match msg.kind.as_str() {
            "SubscriptionConfirmation" => confirm(parts, &msg).await,
            "UnsubscribeConfirmation" => {
                tracing::warn!("SNS says this endpoint was unsubscribed from the topic: SES events stop arriving");
                Ok(Handled::Noted)
            }
            _ => handle_notification(parts, &msg).await,
        }
    }
    .instrument(span)
    .await
}

/// The message, once it is an SNS message from an allowed topic whose signature verifies.
async fn believed(parts: &Parts<'_>, body: &[u8]) -> Result<sns::Message, SnsError> {
    let msg: sns::Message =
        serde_json::from_slice(body).map_err(|e| SnsError::NotSns(e.to_string()))?;
    let ses = &parts.config.ses;
    // An empty list accepts nothing: confirming any topic's subscription would let anyone
    // point their own topic here (check-config refuses that configuration anyway).
    if !ses.topic_arns.contains(&msg.topic_arn) {
        let note = if ses.topic_arns.is_empty() {
            " (the list is empty: no topic is accepted)"
        } else {
            ""
        };
        return Err(SnsError::Topic {
            arn: msg.topic_arn,
            note,
        });
    }
    parts
        .sns
        .verify(&msg, &ses.trust_url_prefixes)
        .await
        .map_err(SnsError::Unverified)?;
    Ok(msg)
}

/// Confirms a subscription by fetching its SubscribeURL.
async fn confirm(parts: &Parts<'_>, msg: &sns::Message) -> Result<Handled, SnsError> {
    let url = msg.subscribe_url.as_deref().unwrap_or_default();
    if !sns::trusted_url(url, &parts.config.ses.trust_url_prefixes) {
        parts.metrics.sns_message(SnsResult::Refused);
        return Err(SnsError::UntrustedSubscribeUrl(url.to_string()));
    }
    match parts.sns.client().get(url).send().await {
        Ok(r) if r.status().is_success() => {
            parts.metrics.sns_message(SnsResult::Confirmed);
            tracing::info!("SNS subscription confirmed");
            Ok(Handled::Confirmed)
        }
        Ok(r) => Err(SnsError::Confirm(format!(
            "SubscribeURL answered {}",
            r.status()
        ))),
        Err(e) => Err(SnsError::Confirm(e.to_string())),
    }
}

/// How long, in a cluster, an SES event for an unknown MessageId is refused for SNS to
/// retry rather than ignored.
const UNKNOWN_RETRY_MINUTES: i64 = 10;

/// Whether an SNS `Timestamp` is within [`UNKNOWN_RETRY_MINUTES`].
fn recent(timestamp: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(timestamp).is_ok_and(|at| {
        chrono::Utc::now().signed_duration_since(at)
            < chrono::Duration::minutes(UNKNOWN_RETRY_MINUTES)
    })
}

/// How long an SNS claim holds off other deliveries of the message: a holder that has not
/// finished by then is taken to have died (recording takes milliseconds).
const CLAIM_STALE_MS: u64 = 60_000;
/// How long a delivery waits for another delivery's claim to end before answering 503.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Records a notification's SES event for the transaction SES's MessageId names, once
/// per SNS message id: the id is claimed first (one step with its check, on every node of
/// a cluster), recorded, then marked recorded; a failure gives the claim back.
pub async fn handle_notification(
    parts: &Parts<'_>,
    msg: &sns::Message,
) -> Result<Handled, SnsError> {
    let routes = parts.store.routes();
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        let stale = crate::model::time::now_ms().saturating_sub(CLAIM_STALE_MS);
        match routes.claim_sns(&msg.message_id, stale).await? {
            SnsClaim::Claimed => break,
            SnsClaim::Recorded => return Ok(ignored(parts, "already recorded")),
            SnsClaim::Busy if tokio::time::Instant::now() >= deadline => {
                return Err(SnsError::Busy(msg.message_id.clone()))
            }
            SnsClaim::Busy => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let handled = record_claimed(parts, msg).await;
    let kept = match &handled {
        Ok(Handled::Recorded { .. }) => routes.finish_sns(&msg.message_id).await,
        _ => routes.release_sns(&msg.message_id).await,
    };
    if let Err(e) = kept {
        // Recorded already: a redelivery would notify twice, which at-least-once allows.
        tracing::warn!(error = %e, "SNS message claim not updated");
    }
    if let Ok(Handled::Recorded { .. }) = handled {
        parts.metrics.sns_message(SnsResult::Recorded);
    }
    handled
}

fn ignored(parts: &Parts<'_>, why: &str) -> Handled {
    parts.metrics.sns_message(SnsResult::Ignored);
    tracing::info!("SNS notification ignored: {why}");
    Handled::Ignored(why.to_string())
}

/// Records the event of a notification whose SNS message id this delivery claimed.
async fn record_claimed(parts: &Parts<'_>, msg: &sns::Message) -> Result<Handled, SnsError> {
    let event = match ses_events::parse(&msg.message) {
        Ok(e) => e,
        // Validly signed but not an SES event (a test publish from the console):
        // retrying would not change it.
        Err(e) => return Ok(ignored(parts, &e.to_string())),
    };
    let Some(tid) = parts
        .store
        .routes()
        .tid_for_route_id(&event.message_id)
        .await?
    else {
        if parts.store.clustered() && recent(&msg.timestamp) {
            // The node that sent it may not have copied its MessageId to the database
            // yet (SPEC 13): a 503 makes SNS deliver it again, an "ignored" would not.
            return Err(SnsError::Store(StoreError::Database(
                "no transaction has this SES MessageId yet; another node may still be copying it"
                    .into(),
            )));
        }
        return Ok(ignored(parts, "no transaction has this SES MessageId"));
    };
    let recorded = crate::feedback::record(
        parts.store,
        parts.outbox,
        parts.config,
        &tid,
        &event.reports,
    )
    .await?;
    tracing::info!(tid = %tid, event = %event.kind, recorded, "SES event");
    Ok(Handled::Recorded {
        tid,
        event: event.kind,
        recorded,
    })
}
