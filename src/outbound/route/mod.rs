//! Routes: how an outbound message leaves (SPEC 7.3). Delivery only: no retries, no
//! storage, no policy; the queue decides what an outcome means for the transaction.

pub mod ses;
pub mod smtp;

use crate::config::{RouteConfig, RouteKind};
use std::sync::Arc;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The route took the message for this recipient (7501).
    Submitted,
    /// Permanent refusal of this recipient at RCPT (7520), with the server's reply.
    Bounced(String),
    /// Permanent refusal of the message (5xx at MAIL/DATA, auth refused, SES
    /// MessageRejected): 7592.
    Refused(String),
    /// Try again later (4xx, timeouts, connection errors, throttling).
    Deferred(String),
}

impl RcptOutcome {
    pub fn is_final(&self) -> bool {
        !matches!(self, RcptOutcome::Deferred(_))
    }
}

/// The two senders of one message: the envelope's return path (our signed VERP address,
/// where DSNs come back) and the header From (the identity SES checks).
pub struct Envelope<'a> {
    pub return_path: &'a str,
    pub from: &'a str,
}

/// The result of one route call: one outcome per recipient, and the provider's ids for
/// the message (SES's MessageIds, which its events refer to; one per SendEmail call).
pub struct Sent {
    pub outcomes: Vec<RcptOutcome>,
    pub message_ids: Vec<String>,
}

/// A configured route, kept by the queue (in an `Arc`, once per asset) so connections
/// are reused.
#[allow(clippy::large_enum_variant)]
pub enum Route {
    Smtp(smtp::SmtpRoute),
    Ses(ses::SesRoute),
}

impl Route {
    /// A route outside the daemon (`postern route test` without it): no OAuth2 grant.
    pub fn new(config: &RouteConfig, hostname: &str) -> Arc<Route> {
        Self::make(config, hostname, None)
    }

    /// The daemon's route of `asset_id`: XOAUTH2 with the asset's grant in `oauth`.
    pub fn for_asset(
        config: &RouteConfig,
        hostname: &str,
        oauth: &Arc<crate::outbound::oauth::OAuth>,
        asset_id: &str,
    ) -> Arc<Route> {
        let grant = smtp::Grant {
            oauth: oauth.clone(),
            asset_id: asset_id.to_string(),
        };
        Self::make(config, hostname, Some(grant))
    }

    fn make(config: &RouteConfig, hostname: &str, grant: Option<smtp::Grant>) -> Arc<Route> {
        Arc::new(match config {
            RouteConfig::Smtp(smtp) => {
                Route::Smtp(smtp::SmtpRoute::new(smtp.clone(), hostname.into(), grant))
            }
            RouteConfig::Ses(ses) => Route::Ses(ses::SesRoute::new(ses)),
        })
    }

    /// The `route` label of metrics.
    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Smtp(_) => RouteKind::Smtp,
            Route::Ses(_) => RouteKind::Ses,
        }
    }

    pub async fn send(&self, envelope: &Envelope<'_>, rcpts: &[String], message: &[u8]) -> Sent {
        match self {
            Route::Smtp(r) => Sent {
                outcomes: r.send(envelope.return_path, rcpts, message).await,
                message_ids: Vec::new(),
            },
            Route::Ses(r) => {
                // SES takes at most 50 recipients a message: larger transactions go as
                // several calls, each with its own MessageId.
                let mut sent = Sent {
                    outcomes: Vec::with_capacity(rcpts.len()),
                    message_ids: Vec::new(),
                };
                for chunk in rcpts.chunks(ses::MAX_RECIPIENTS) {
                    match r.send(envelope.from, chunk, message).await {
                        ses::SesAnswer::Accepted { message_id } => {
                            sent.outcomes
                                .extend(std::iter::repeat_n(RcptOutcome::Submitted, chunk.len()));
                            sent.message_ids.push(message_id);
                        }
                        ses::SesAnswer::Failed(outcome) => sent
                            .outcomes
                            .extend(std::iter::repeat_n(outcome, chunk.len())),
                    }
                }
                sent
            }
        }
    }

    /// Why the route cannot authenticate until its OAuth2 account is authorized, if so:
    /// its mail waits without calling it.
    pub fn needs_authorization(&self) -> Option<crate::outbound::oauth::Need> {
        match self {
            Route::Smtp(r) => r.needs_authorization(),
            Route::Ses(_) => None,
        }
    }

    /// Connects and authenticates without sending; the server's answer.
    pub async fn test(&self) -> Result<String, String> {
        match self {
            Route::Smtp(r) => r.test().await,
            Route::Ses(r) => r.test().await,
        }
    }
}
