//! Feedback about mail a route already took: DSNs and ARF reports arriving as inbound
//! mail, SES events arriving from SNS, opens and clicks on tracked links. Each becomes a
//! notification for one recipient of one transaction (SPEC 5) and, for hard bounces and
//! complaints, an entry in the asset's suppression store (SPEC 8). One place does this so
//! every source records the same way.

use crate::config::Config;
use crate::events::Outbox;
use crate::store::messages::{MessageRecord, QueueState};
use crate::store::suppression::{Reason, Suppression};
use crate::store::{now_ms, OutboxEntry, Store, StoreError};
use crate::types::DeliveryCode;

/// One piece of feedback about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The recipient it is about; `None` means the transaction's only recipient (an ARF
    /// report that does not name one).
    pub recipient: Option<String>,
    pub code: DeliveryCode,
    pub description: String,
    pub additional: String,
    /// Put the recipient on the suppression list: a hard bounce or a complaint, with
    /// where it came from ("dsn 5.1.1", "ses Permanent_General").
    pub suppress: Option<(Reason, String)>,
}

impl Report {
    pub fn new(recipient: Option<String>, code: DeliveryCode, description: &str) -> Report {
        Report {
            recipient,
            code,
            description: description.to_string(),
            additional: String::new(),
            suppress: None,
        }
    }

    pub fn additional(mut self, additional: &str) -> Report {
        self.additional = additional.to_string();
        self
    }

    pub fn suppress(mut self, reason: Reason, source: impl Into<String>) -> Report {
        self.suppress = Some((reason, source.into()));
        self
    }
}

/// The transaction's own spelling of `wanted` (recipients match case-insensitively).
fn recipient_of(record: &MessageRecord, wanted: Option<&str>) -> Option<String> {
    match wanted {
        Some(w) => record
            .recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(w))
            .map(|r| r.address.clone()),
        None if record.recipients.len() == 1 => Some(record.recipients[0].address.clone()),
        None => None,
    }
}

/// Records `reports` about transaction `tid`: notifications (durable before this returns,
/// then scheduled), history for a finished transaction, suppression entries. Reports about
/// addresses the transaction never had, and transactions that are unknown or past their
/// retention, are ignored (logged). Returns how many reports were recorded.
pub async fn record(
    store: &Store,
    outbox: &Outbox,
    config: &Config,
    tid: &str,
    reports: &[Report],
) -> Result<usize, StoreError> {
    let _guard = store.lock_tid(tid).await;
    let Some(mut record) = store.message(tid)? else {
        tracing::info!(
            tid,
            "feedback for an unknown or expired transaction: ignored"
        );
        return Ok(0);
    };
    let now = now_ms();
    let retention_ms = config.bounce_retention_ms(&record.asset_id);
    let mut events: Vec<OutboxEntry> = Vec::new();
    let mut suppressions = Vec::new();
    let mut recorded = 0;
    for report in reports {
        let Some(rcpt) = recipient_of(&record, report.recipient.as_deref()) else {
            tracing::info!(
                tid,
                recipient = report.recipient.as_deref().unwrap_or("(none)"),
                code = report.code.code(),
                "feedback names no recipient of this transaction: ignored"
            );
            continue;
        };
        tracing::info!(tid, rcpt = %rcpt, code = report.code.code(), description = %report.description, "feedback");
        events.extend(crate::queue::notify::notify(
            config,
            &mut record,
            &rcpt,
            report.code,
            &report.description,
            &report.additional,
            now,
        ));
        if let Some((reason, source)) = &report.suppress {
            suppressions.push(Suppression {
                asset_id: record.asset_id.clone(),
                address: rcpt.to_ascii_lowercase(),
                reason: *reason,
                since_ms: now,
                expires_ms: match reason {
                    Reason::Bounced => Some(now + retention_ms),
                    _ => None,
                },
                source: source.clone(),
            });
        }
        recorded += 1;
    }
    if !suppressions.is_empty() {
        store.suppress(&suppressions).await?;
    }
    // A finished transaction keeps the history; an active one is the queue's to write, so
    // only the events are stored.
    if record.state == QueueState::Done {
        store.update_message(&record, &events).await?;
    } else if !events.is_empty() {
        store.enqueue_events(&events).await?;
    }
    outbox.schedule(events);
    Ok(recorded)
}
