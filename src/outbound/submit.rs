//! The submit use case (SPEC 4.2, Postfix's cleanup for the API): a parsed request of an
//! authenticated service becomes stored, scheduled transactions, or a typed refusal.
//! Invariant: a refused request writes nothing; an accepted one is answered only after
//! its records (and the notifications of addresses failed at once) were committed.

use crate::config::{Config, ServiceConfig};
use crate::metrics::{self, Metrics};
use crate::model::types::ApiCode;
use crate::model::urls::Policy;
use crate::model::wire::{AcceptedMessage, SendRequest};
use crate::outbound::queue::{notify, Queue};
use crate::outbound::validate::{self, Checked, Invalid, Submission, Transaction};
use crate::store::messages::{
    Attachment, MessageRecord, QueueState, RecipientPhase, RecipientState,
};
use crate::store::{OutboxEntry, Store, StoreError};
use crate::webhooks::Outbox;
use std::sync::atomic::Ordering;

/// The daemon's parts a submission touches, lent by the transport for one request.
pub struct Parts<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub queue: &'a Queue,
    pub outbox: &'a Outbox,
    pub metrics: &'a Metrics,
    pub url_policy: &'a Policy,
}

/// A queued request: its id and one entry per transaction.
#[derive(Debug)]
pub struct Accepted {
    pub request_id: String,
    pub messages: Vec<AcceptedMessage>,
}

/// Why a request was not queued. Nothing was written for any of them.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A field, the channel, the sender's domain or the size after substitution was
    /// refused (400 with its code); counted as rejected.
    #[error("{}", .0.description)]
    Invalid(Invalid),
    /// The service's TPS bucket cannot cover the request's destinations now (429).
    #[error("TPS of service {service} exceeded; retry in {retry_after_secs} s")]
    TpsExceeded {
        service: String,
        retry_after_secs: u64,
    },
    /// The store failed while reading or writing.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses a channel other than email before any field is looked at (SPEC 4.2): an SMS
/// body has `to[].msisdn`, and "missing to[0].email" would not say what is wrong with it.
pub fn check_channel(parts: &Parts, channel: Option<&str>) -> Result<(), Refused> {
    match channel.and_then(validate::channel_refusal) {
        Some(refused) => Err(rejected(parts, refused)),
        None => Ok(()),
    }
}

/// Validates, charges the TPS bucket, expands, stores and schedules one request.
pub async fn submit(
    parts: &Parts<'_>,
    service: &ServiceConfig,
    request: SendRequest,
    now: u64,
) -> Result<Accepted, Refused> {
    let checked = check(parts, service, request, now).await?;
    check_verified_domain(parts, checked.from()).await?;
    // The bucket is charged before the expansion: a request it cannot cover costs nothing
    // more than its parse, and one refused while expanding has spent its tokens.
    let destinations = checked.destinations;
    charge_bucket(parts, service, destinations).await?;
    let mut new_tid = || uuid::Uuid::new_v4().to_string();
    let sub = validate::expand(checked, &mut new_tid).map_err(|e| rejected(parts, e))?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let (records, events) = build_records(parts.config, &sub, &request_id, now);
    parts.store.messages().submit(&records, &events).await?;
    parts
        .metrics
        .api_queued
        .fetch_add(destinations as u64, Ordering::Relaxed);
    schedule(parts, records.iter(), events);
    tracing::info!(request = %request_id, service = %service.id, transactions = records.len(), "request queued");
    Ok(Accepted {
        request_id,
        messages: sub.transactions.iter().map(accepted).collect(),
    })
}

/// The first step of validation: the request's fields (with its template, if it names one).
async fn check(
    parts: &Parts<'_>,
    service: &ServiceConfig,
    request: SendRequest,
    now: u64,
) -> Result<Checked, Refused> {
    let template = match &request.template {
        Some(t) => parts.store.templates().get(&service.id, &t.id).await?,
        None => None,
    };
    validate::check(
        request,
        service,
        parts.config,
        template,
        parts.url_policy,
        now,
    )
    .map_err(|e| rejected(parts, e))
}

/// Refuses a sender whose asset has `require_verified_domain` while its domain is not
/// verified (`postern domain verify` records that).
async fn check_verified_domain(parts: &Parts<'_>, from: &str) -> Result<(), Refused> {
    let from_domain = from
        .rsplit_once('@')
        .map(|(_, dom)| dom.to_string())
        .unwrap_or_default();
    let required = parts
        .config
        .asset_for_domain(&from_domain)
        .is_some_and(|a| a.require_verified_domain);
    if required && !parts.store.domains().verified(&from_domain).await? {
        return Err(rejected(
            parts,
            Invalid {
                code: ApiCode::InvalidValue,
                description: format!(
                    "from: domain '{from_domain}' is not verified; publish the records `postern domain records {from_domain}` prints, then run `postern domain verify {from_domain}`"
                ),
            },
        ));
    }
    Ok(())
}

/// Takes a token per destination from the service's TPS bucket.
async fn charge_bucket(
    parts: &Parts<'_>,
    service: &ServiceConfig,
    destinations: usize,
) -> Result<(), Refused> {
    let n = u32::try_from(destinations).unwrap_or(u32::MAX);
    parts
        .store
        .buckets()
        .take(&service.id, service.tps, n)
        .await?
        .map_err(|wait| Refused::TpsExceeded {
            service: service.id.clone(),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
}

/// A validation refusal, counted as a rejected request.
fn rejected(parts: &Parts, e: Invalid) -> Refused {
    parts.metrics.api_rejected.fetch_add(1, Ordering::Relaxed);
    Refused::Invalid(e)
}

/// The records to store, one per transaction, and the notifications of the transactions
/// failed at once (an address refused for its syntax or length).
fn build_records(
    config: &Config,
    sub: &Submission,
    request_id: &str,
    now: u64,
) -> (Vec<MessageRecord>, Vec<OutboxEntry>) {
    let mut records = Vec::with_capacity(sub.transactions.len());
    let mut events = Vec::new();
    for t in &sub.transactions {
        let mut record = record(sub, t, request_id, now);
        if let Some(code) = t.immediate {
            events.extend(fail_at_once(config, &mut record, code, now));
        }
        records.push(record);
    }
    (records, events)
}

/// Marks every recipient of `record` failed with `code` and the record done; returns the
/// notification to send.
fn fail_at_once(
    config: &Config,
    record: &mut MessageRecord,
    code: crate::model::types::DeliveryCode,
    now: u64,
) -> Option<OutboxEntry> {
    for r in &mut record.recipients {
        r.phase = RecipientPhase::Failed;
        r.code = Some(code.code().to_string());
    }
    let addr = record.recipients[0].address.clone();
    let event = notify::notify(
        config,
        record,
        &addr,
        code,
        code.default_description(),
        "",
        now,
    );
    record.state = QueueState::Done;
    event
}

/// The stored record of one validated transaction, as queued at `now`.
fn record(sub: &Submission, t: &Transaction, request_id: &str, now: u64) -> MessageRecord {
    MessageRecord {
        tid: t.tid.clone(),
        request_id: request_id.to_string(),
        service_id: sub.service_id.clone(),
        asset_id: sub.asset_id.clone(),
        from: sub.from.clone(),
        from_name: sub.from_name.clone(),
        reply_to: sub.reply_to.clone(),
        to: t.to.clone(),
        cc: t.cc.clone(),
        recipients: t.recipients.iter().map(|a| pending(a)).collect(),
        subject: t.subject.clone(),
        text: t.text.clone(),
        html: t.html.clone(),
        attachments: sub
            .attachments
            .iter()
            .map(|a| Attachment {
                mimetype: a.mimetype.clone(),
                name: a.name.clone(),
                media_url: a.media_url.clone(),
            })
            .collect(),
        receipts: sub.receipts,
        correlation_id: t.correlation_id.clone(),
        callback_data: sub.callback_data.clone(),
        notify_url: sub.notify_url.clone(),
        send_at_ms: sub.send_at_ms,
        expire_at_ms: sub.expire_at_ms,
        track_clicks: sub.track_clicks,
        track_opens: sub.track_opens,
        list_unsubscribe_url: sub.list_unsubscribe_url.clone(),
        unsubscribe_email: sub.unsubscribe_email.clone(),
        unsubscribe_subject: sub.unsubscribe_subject.clone(),
        contact_policy: sub.contact_policy.clone(),
        state: if sub.send_at_ms > now {
            QueueState::Scheduled
        } else {
            QueueState::Ready
        },
        attempts: 0,
        next_ms: sub.send_at_ms,
        created_ms: now,
        last_error: String::new(),
        history: Vec::new(),
        route_ids: Vec::new(),
    }
}

fn pending(address: &str) -> RecipientState {
    RecipientState {
        address: address.to_string(),
        phase: RecipientPhase::Pending,
        code: None,
    }
}

fn accepted(t: &Transaction) -> AcceptedMessage {
    AcceptedMessage {
        tid: t.tid.clone(),
        to: t.recipients.clone(),
        correlation_id: t.correlation_id.clone(),
    }
}

/// Hands the stored notifications to the webhook worker and every record still to send
/// to the queue, counting it in its queue slot.
fn schedule<'r>(
    parts: &Parts<'_>,
    records: impl Iterator<Item = &'r MessageRecord>,
    events: Vec<OutboxEntry>,
) {
    parts.outbox.schedule(events);
    for r in records.filter(|r| r.state != QueueState::Done) {
        parts.metrics.queue_move(None, metrics::queue_slot(r.state));
        parts.queue.schedule(r.next_ms, r.tid.clone());
    }
}
