//! Unsubscribe and resubscribe (SPEC 7.2, 8; RFC 8058): the one writer of subscription
//! changes, whether they come from the public page (`/u/`), its one-click POST, or mail to
//! the unsubscribe address. Each change is a suppression entry (or its removal) and the
//! reference's Unsubscribe / Subscribe event to the asset's incoming webhook. Tokens,
//! headers and pages are `outbound::track::unsubscribe`'s.
//!
//! A GET never unsubscribes (link scanners fetch GETs): it only says what the page asks.
//! A message that went to several recipients has a token naming nobody: its page asks for
//! the address, which must be one the message went to; one-click cannot tell which.

use crate::config::Config;
use crate::feedback::Parts;
use crate::model::time::now_ms;
use crate::outbound::track::unsubscribe::{verify, Unsubscribe};
use crate::store::outbox::EventKind;
use crate::store::suppression::{Reason, Suppression};
use crate::store::{OutboxEntry, Payload, Store, StoreError};
use crate::webhooks::Outbox;

/// What the page shows, or what a POST came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The token is altered or not an unsubscribe token: nothing changed.
    Invalid,
    /// The transaction could not be read, or the change not recorded: try again later.
    Unavailable,
    /// A message to several recipients that is no longer on record: the address cannot be
    /// checked, nothing changed.
    Expired,
    /// Which address? (a message to several recipients); `refused` says why an answer
    /// was not taken.
    Ask {
        asset_name: String,
        refused: Option<Refusal>,
    },
    /// Confirm unsubscribing `recipient` (a GET).
    Confirm {
        asset_name: String,
        recipient: String,
    },
    /// A one-click unsubscribe was recorded.
    OneClick,
    /// `recipient` is now unsubscribed, or subscribed again (`resubscribed`); `several`:
    /// the message went to several recipients (the page repeats the address).
    Done {
        asset_name: String,
        recipient: String,
        resubscribed: bool,
        several: bool,
    },
}

/// Why an answer to a several-recipient message's page was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    OneClickForSeveral,
    NoAddress,
    NotARecipient,
}

impl Refusal {
    pub fn text(self) -> &'static str {
        match self {
            Refusal::OneClickForSeveral => "This email went to several people: one-click unsubscribe cannot tell which one. Nothing was changed.",
            Refusal::NoAddress => "address: enter the address this email was sent to. Nothing was changed.",
            Refusal::NotARecipient => "address: this email was not sent to that address. Nothing was changed.",
        }
    }
}

/// A POST to `/u/`: RFC 8058 one-click (`List-Unsubscribe=One-Click`) or the page's form.
#[derive(Debug, Default)]
pub struct Form {
    pub one_click: bool,
    /// The form's `action` is `resubscribe`.
    pub resubscribe: bool,
    /// The form's `address` (pages of several-recipient messages).
    pub address: String,
}

/// A GET of the page: what it asks.
pub async fn visit(parts: &Parts<'_>, token: &str) -> Outcome {
    let Some(s) = verify(parts.signer, token) else {
        return Outcome::Invalid;
    };
    let asset_name = asset_name(parts.config, &s);
    match listed_recipients(parts.store, &s).await {
        Err(outcome) => outcome,
        Ok(Some(_)) => Outcome::Ask {
            asset_name,
            refused: None,
        },
        Ok(None) => Outcome::Confirm {
            asset_name,
            recipient: s.recipient,
        },
    }
}

/// A POST: unsubscribes (or resubscribes) the token's recipient, or for a message to
/// several recipients the form's address if the message went to it.
pub async fn answer(parts: &Parts<'_>, token: &str, form: &Form) -> Outcome {
    let Some(mut s) = verify(parts.signer, token) else {
        return Outcome::Invalid;
    };
    let resubscribe = !form.one_click && form.resubscribe;
    let several = match listed_recipients(parts.store, &s).await {
        Err(outcome) => return outcome,
        Ok(list) => list,
    };
    if let Some(list) = &several {
        match chosen_recipient(&s.tid, list, form) {
            Ok(address) => s.recipient = address,
            Err(refused) => {
                return Outcome::Ask {
                    asset_name: asset_name(parts.config, &s),
                    refused: Some(refused),
                }
            }
        }
    }
    let changed = apply(
        parts.store,
        parts.outbox,
        parts.config,
        &s,
        !resubscribe,
        "unsubscribe-link",
    )
    .await;
    match changed {
        Ok(_) if form.one_click => Outcome::OneClick,
        Ok(_) => Outcome::Done {
            asset_name: asset_name(parts.config, &s),
            recipient: s.recipient,
            resubscribed: resubscribe,
            several: several.is_some(),
        },
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe could not be recorded");
            Outcome::Unavailable
        }
    }
}

/// The recipient a several-recipient message's form names: any recipient could have
/// clicked, so the address must be one the message went to. One-click has no form (and
/// no header was sent for such a message).
fn chosen_recipient(tid: &str, list: &[String], form: &Form) -> Result<String, Refusal> {
    if form.one_click {
        return Err(Refusal::OneClickForSeveral);
    }
    let address = form.address.trim();
    match list.iter().find(|a| a.eq_ignore_ascii_case(address)) {
        Some(a) => Ok(a.clone()),
        None => {
            tracing::info!(
                tid,
                "unsubscribe page: address is not a recipient of the message; nothing changed"
            );
            Err(if address.is_empty() {
                Refusal::NoAddress
            } else {
                Refusal::NotARecipient
            })
        }
    }
}

/// The name the page shows for the token's asset.
fn asset_name(config: &Config, s: &Unsubscribe) -> String {
    config
        .asset(&s.asset_id)
        .map(|a| {
            if a.name.is_empty() {
                a.id.clone()
            } else {
                a.name.clone()
            }
        })
        .unwrap_or_else(|| s.asset_id.clone())
}

/// The transaction's recipients when the token speaks for nobody in particular (a message
/// to several recipients); `Ok(None)` for a token naming its recipient.
async fn listed_recipients(store: &Store, s: &Unsubscribe) -> Result<Option<Vec<String>>, Outcome> {
    let record = match store.messages().get(&s.tid).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe: transaction not readable");
            return Err(Outcome::Unavailable);
        }
    };
    match record {
        // Tokens made before several-recipient links named nobody named the first
        // recipient: the record says whether the message went to several.
        Some(r) if r.recipients.len() > 1 || s.recipient.is_empty() => {
            Ok(Some(r.recipients.into_iter().map(|x| x.address).collect()))
        }
        None if s.recipient.is_empty() => Err(Outcome::Expired),
        _ => Ok(None),
    }
}

/// Records an (un)subscription and emits its event, once per actual change. Returns
/// whether anything changed.
pub async fn apply(
    store: &Store,
    outbox: &Outbox,
    config: &Config,
    s: &Unsubscribe,
    unsubscribe: bool,
    source: &str,
) -> Result<bool, StoreError> {
    let current = store
        .suppressions()
        .get(&s.asset_id, &s.recipient, now_ms())
        .await?;
    let was_unsubscribed = current
        .as_ref()
        .is_some_and(|e| e.reason == Reason::Unsubscribed);
    if unsubscribe == was_unsubscribed {
        return Ok(false);
    }
    if unsubscribe {
        store.suppressions().add(&[suppression(s, source)]).await?;
    } else {
        store
            .suppressions()
            .remove(&s.asset_id, &s.recipient)
            .await?;
    }
    tracing::info!(asset = %s.asset_id, recipient = %s.recipient, unsubscribe, source, "subscription changed");
    let correlation = store
        .messages()
        .get(&s.tid)
        .await
        .ok()
        .flatten()
        .and_then(|m| m.correlation_id);
    if let Some(e) = event(config, s, !unsubscribe, correlation.as_deref()) {
        store.enqueue_events(std::slice::from_ref(&e)).await?;
        outbox.schedule([e]);
    }
    Ok(true)
}

/// The Unsubscribe / Subscribe event for the asset's incoming webhook, in the reference's
/// format.
pub fn event(
    config: &Config,
    s: &Unsubscribe,
    subscribe: bool,
    correlation_id: Option<&str>,
) -> Option<OutboxEntry> {
    let url = config.asset(&s.asset_id)?.incoming_webhook.clone()?;
    let body = serde_json::json!({
        "channel": "Email",
        "from": s.recipient,
        "appId": s.asset_id,
        "event": if subscribe { "Subscribe" } else { "Unsubscribe" },
        "senderId": s.sender,
        "correlationId": correlation_id.unwrap_or(""),
        "ts": crate::model::time::timestamp(now_ms()),
        "tid": s.tid,
    });
    Some(OutboxEntry::new(
        EventKind::Unsubscribe,
        url,
        s.asset_id.clone(),
        Payload::Json(body.to_string()),
    ))
}

pub fn suppression(s: &Unsubscribe, source: &str) -> Suppression {
    Suppression {
        asset_id: s.asset_id.clone(),
        address: s.recipient.to_ascii_lowercase(),
        reason: Reason::Unsubscribed,
        since_ms: now_ms(),
        expires_ms: None,
        source: source.into(),
    }
}
