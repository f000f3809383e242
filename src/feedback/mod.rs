//! Feedback about mail a route already took: DSNs and ARF reports arriving as inbound
//! mail (`reports`), SES events arriving from SNS (`ses`), opens and clicks on tracked
//! links (`tracking`); subscription changes are `unsubscribe`'s. Each becomes a
//! notification for one recipient of one transaction (SPEC 5) and, for hard bounces and
//! complaints, an entry in the asset's suppression store (SPEC 8). One place does this so
//! every source records the same way.
//!
//! Opens and clicks (from links or SES) are counted, not appended: the first of each kind
//! per recipient gets a history entry, later ones bump a counter; opens notify at most once
//! per [`OPEN_WINDOW_MS`], clicks every time (with the User-Agent cut to
//! [`USER_AGENT_MAX`] octets). A hit that only counts never rewrites the transaction.

pub mod arf;
pub mod dsn;
pub mod reports;
pub mod ses;
pub mod ses_events;
pub mod sns;
pub mod tracking;
pub mod unsubscribe;

use crate::config::Config;
use crate::model::time::now_ms;
use crate::model::tokens::Signer;
use crate::model::types::DeliveryCode;
use crate::store::messages::{cut, Hit, MessageRecord, QueueState};
use crate::store::suppression::{Reason, Suppression};
use crate::store::{OutboxEntry, Store, StoreError};
use crate::webhooks::Outbox;

/// What the public doors' feedback (tracked links, the unsubscribe page) needs of the
/// daemon.
pub struct Parts<'a> {
    pub store: &'a Store,
    pub outbox: &'a Outbox,
    pub config: &'a Config,
    /// Verifies the links' tokens.
    pub signer: &'a Signer,
}

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

/// Opens of one tid and recipient notify at most once per window this long, the window
/// starting at the first open (SPEC 6.3).
pub const OPEN_WINDOW_MS: u64 = 60_000;

/// A User-Agent is cut to this many octets (SPEC 6.3).
pub const USER_AGENT_MAX: usize = 512;

/// Repeats of a report with the same key are counted, not appended: opens, and clicks of
/// one URL (the Description is `url|client-ip`).
fn repeat_key(report: &Report) -> Option<String> {
    match report.code {
        DeliveryCode::Read => Some("open".into()),
        DeliveryCode::Clicked => {
            let url = report
                .description
                .rsplit_once('|')
                .map_or(report.description.as_str(), |(u, _)| u);
            Some(format!("click|{url}"))
        }
        _ => None,
    }
}

/// What to do with one hit given its counter.
fn hit_effect(code: DeliveryCode, hit: Hit) -> (bool, bool) {
    let notify = match code {
        DeliveryCode::Read => hit.new_window,
        _ => true,
    };
    (notify, hit.first)
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
    // Before the lock: the node that owns the transaction takes it to mirror it.
    wait_until_current(store, tid).await?;
    let _guard = store.messages().lock_tid(tid).await;
    let now = now_ms();
    let (mut recorded, todo) = settle_repeats(store, tid, reports, now).await?;
    if todo.is_empty() {
        return Ok(recorded);
    }
    let Some(mut record) = store.messages().get(tid).await? else {
        tracing::info!(
            tid,
            "feedback for an unknown or expired transaction: ignored"
        );
        return Ok(recorded);
    };
    let mut changes = Changes::default();
    for (report, hit) in todo {
        let Some(rcpt) = recipient_of(&record, report.recipient.as_deref()) else {
            tracing::info!(
                tid,
                recipient = report.recipient.as_deref().unwrap_or("(none)"),
                code = report.code.code(),
                "feedback names no recipient of this transaction: ignored"
            );
            continue;
        };
        let effect = effect_of(store, tid, &rcpt, report, hit, now).await?;
        recorded += 1;
        changes.add(config, &mut record, &rcpt, report, effect, now);
    }
    changes.save(store, outbox, record).await?;
    Ok(recorded)
}

/// How long feedback waits for another node to finish and mirror a transaction.
const ELSEWHERE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until this node reads the transaction as feedback must see it. In a cluster,
/// one still in another node's queue is read again until that node has finished it and
/// its copy arrived (normally milliseconds); past [`ELSEWHERE_WAIT`] this fails with a
/// database error, which every feedback path retries, rather than let history be
/// recorded on a copy that is behind.
async fn wait_until_current(store: &Store, tid: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + ELSEWHERE_WAIT;
    loop {
        if store.messages().held_here(tid)? {
            return Ok(());
        }
        let record = store.messages().get(tid).await?;
        let queued = record
            .as_ref()
            .is_some_and(|r| !matches!(r.state, QueueState::Done | QueueState::Cancelled));
        if !queued {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Database(format!(
                "transaction {tid} is still in another node's queue; its feedback is retried"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Reports still to record, each with its counter's hit if a counter exists.
type Todo<'a> = Vec<(&'a Report, Option<Hit>)>;

/// Settles repeated hits of a counter that exists (its recipient was checked at the first
/// hit) before the transaction is even read: the ones that only count are recorded here.
/// Returns how many were, and the reports left to record, with their hit if counted.
async fn settle_repeats<'a>(
    store: &Store,
    tid: &str,
    reports: &'a [Report],
    now: u64,
) -> Result<(usize, Todo<'a>), StoreError> {
    let mut todo = Vec::new();
    let mut recorded = 0;
    for report in reports {
        if let (Some(key), Some(rcpt)) = (repeat_key(report), report.recipient.as_deref()) {
            if let Some(hit) = store
                .messages()
                .track_hit(tid, rcpt, &key, now, OPEN_WINDOW_MS, false)
                .await?
            {
                if hit_effect(report.code, hit) == (false, false) {
                    recorded += 1;
                } else {
                    todo.push((report, Some(hit)));
                }
                continue;
            }
        }
        todo.push((report, None));
    }
    Ok((recorded, todo))
}

/// Whether a report about `rcpt` notifies and whether it is appended to the history:
/// both, unless it repeats a counted hit (the counter is created by its first hit).
async fn effect_of(
    store: &Store,
    tid: &str,
    rcpt: &str,
    report: &Report,
    hit: Option<Hit>,
    now: u64,
) -> Result<(bool, bool), StoreError> {
    Ok(match (hit, repeat_key(report)) {
        (Some(h), _) => hit_effect(report.code, h),
        (None, Some(key)) => {
            match store
                .messages()
                .track_hit(tid, rcpt, &key, now, OPEN_WINDOW_MS, true)
                .await?
            {
                Some(h) => hit_effect(report.code, h),
                None => (true, true),
            }
        }
        (None, None) => (true, true),
    })
}

/// What recording the reports of one transaction writes.
#[derive(Default)]
struct Changes {
    events: Vec<OutboxEntry>,
    suppressions: Vec<Suppression>,
    /// The history gained an entry.
    changed: bool,
}

impl Changes {
    /// Adds one report about `rcpt` with its `(notify, append)` effect: the notification,
    /// the history entry (kept only when appended), the suppression entry.
    fn add(
        &mut self,
        config: &Config,
        record: &mut MessageRecord,
        rcpt: &str,
        report: &Report,
        (notify, append): (bool, bool),
        now: u64,
    ) {
        if !notify && !append {
            return;
        }
        let additional = if repeat_key(report).is_some() {
            cut(&report.additional, USER_AGENT_MAX)
        } else {
            report.additional.as_str()
        };
        tracing::info!(tid = %record.tid, rcpt = %rcpt, code = report.code.code(), description = %report.description, "feedback");
        let before = record.history.len();
        let event = crate::outbound::queue::notify::notify(
            config,
            record,
            rcpt,
            report.code,
            &report.description,
            additional,
            now,
        );
        if append {
            self.changed = true;
        } else {
            // A later window's open: notified, but the history keeps only the first.
            record.history.truncate(before);
        }
        if notify {
            self.events.extend(event);
        }
        if let Some((reason, source)) = &report.suppress {
            let retention_ms = config.bounce_retention_ms(&record.asset_id);
            self.suppressions.push(Suppression {
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
    }

    /// Writes the suppression entries, then the history (a finished transaction keeps it;
    /// an active one is the queue's to write, so only the events are stored), then
    /// schedules the events.
    async fn save(
        self,
        store: &Store,
        outbox: &Outbox,
        mut record: MessageRecord,
    ) -> Result<(), StoreError> {
        if !self.suppressions.is_empty() {
            store.suppressions().add(&self.suppressions).await?;
        }
        if record.state == QueueState::Done && self.changed {
            record.bound_history();
            store.messages().update(&record, &self.events).await?;
        } else if !self.events.is_empty() {
            store.enqueue_events(&self.events).await?;
        }
        outbox.schedule(self.events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_notify_per_window_and_clicks_always_but_append_once() {
        let first = Hit {
            first: true,
            new_window: true,
            count: 1,
        };
        let again = Hit {
            first: false,
            new_window: false,
            count: 2,
        };
        let later = Hit {
            first: false,
            new_window: true,
            count: 3,
        };
        assert_eq!(hit_effect(DeliveryCode::Read, first), (true, true));
        assert_eq!(hit_effect(DeliveryCode::Read, again), (false, false));
        assert_eq!(hit_effect(DeliveryCode::Read, later), (true, false));
        assert_eq!(hit_effect(DeliveryCode::Clicked, again), (true, false));
        let click = Report::new(None, DeliveryCode::Clicked, "https://a.example/x|1.2.3.4");
        assert_eq!(
            repeat_key(&click).as_deref(),
            Some("click|https://a.example/x")
        );
        assert_eq!(
            repeat_key(&Report::new(None, DeliveryCode::Bounce, "x")),
            None
        );
    }
}
