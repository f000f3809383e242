//! Queue control (SPEC 14): what `GET /admin/queue`, `GET /admin/queue/{tid}` and the
//! retry / cancel / hold / release actions do, for the admin API, the CLI and the admin
//! page alike.
//!
//! An action takes the tid the way an attempt does ([`QueueWorker`]'s in-flight set), so
//! it never races an attempt: it waits for one in progress to end, then reads the record,
//! changes it and makes it durable with its notifications in one update. A held
//! transaction stays in the queue (and across restarts) but the worker never takes it.

use super::{end_recipient, QueueWorker};
use crate::model::time::now_ms;
use crate::model::types::DeliveryCode;
use crate::store::log::{LogPage, LogQuery};
use crate::store::messages::{MessageRecord, QueueState};
use crate::store::{Store, StoreError};
use std::time::Duration;

/// What an operator asks of a queued transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Due now (a scheduled or deferred one).
    Retry,
    /// Its recipients not yet submitted end with 7592 "cancelled by operator".
    Cancel,
    /// Never sent until released.
    Hold,
    /// A held one, due now.
    Release,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "retry" => Action::Retry,
            "cancel" => Action::Cancel,
            "hold" => Action::Hold,
            "release" => Action::Release,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Hold => "hold",
            Action::Release => "release",
        }
    }
}

/// The Description of the 7592 a cancelled recipient ends with (SPEC 14).
pub const CANCELLED: &str = "cancelled by operator";

/// How long an action waits for an attempt at the same tid to end.
const ACTION_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no transaction {0}")]
    NotFound(String),
    /// The action does not apply to the transaction's state (or it is in another node's
    /// queue): the message says which and why.
    #[error("{0}")]
    Conflict(String),
    #[error("transaction {0} is being sent; try again")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `GET /admin/queue`'s query.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub state: Option<QueueState>,
    pub asset: Option<String>,
    /// An address (exact, case-insensitive) or a domain (with or without `@`).
    pub recipient: Option<String>,
    /// Only transactions accepted at least this many seconds ago.
    pub older_than_secs: Option<u64>,
    pub limit: usize,
    /// The last tid of the previous page.
    pub cursor: Option<String>,
}

/// One page of the queue, oldest first; `next` is the cursor of the page after it.
#[derive(Debug, Clone)]
pub struct QueuePage {
    pub entries: Vec<MessageRecord>,
    pub next: Option<String>,
}

/// The transactions in this node's queue that match `filter`, ordered by acceptance time
/// then tid. The queue is bounded by what this node accepted and has not finished, so it
/// is read whole; the message log (`outbound::log`) is the indexed search over all.
pub fn list(store: &Store, filter: &QueueFilter, now: u64) -> Result<QueuePage, StoreError> {
    let mut all: Vec<MessageRecord> = store
        .messages()
        .active()?
        .into_iter()
        .filter(|r| matches(r, filter, now))
        .collect();
    all.sort_by(|a, b| (a.created_ms, &a.tid).cmp(&(b.created_ms, &b.tid)));
    let start = match &filter.cursor {
        Some(c) => all.iter().position(|r| &r.tid == c).map_or(0, |i| i + 1),
        None => 0,
    };
    let limit = filter.limit.max(1);
    let entries: Vec<MessageRecord> = all.into_iter().skip(start).take(limit + 1).collect();
    let (entries, next) = if entries.len() > limit {
        let page: Vec<MessageRecord> = entries.into_iter().take(limit).collect();
        let next = page.last().map(|r| r.tid.clone());
        (page, next)
    } else {
        (entries, None)
    };
    Ok(QueuePage { entries, next })
}

fn matches(r: &MessageRecord, f: &QueueFilter, now: u64) -> bool {
    f.state.is_none_or(|s| r.state == s)
        && f.asset.as_ref().is_none_or(|a| &r.asset_id == a)
        && f.older_than_secs
            .is_none_or(|s| r.created_ms <= now.saturating_sub(s.saturating_mul(1000)))
        && f.recipient.as_ref().is_none_or(|want| {
            r.recipients
                .iter()
                .any(|rc| recipient_matches(&rc.address, want))
        })
}

/// `want` is an address (exact, case-insensitive) or a domain (`example.org` or
/// `@example.org`).
pub fn recipient_matches(address: &str, want: &str) -> bool {
    if want.contains('@') && !want.starts_with('@') {
        return address.eq_ignore_ascii_case(want);
    }
    let domain = want.trim_start_matches('@');
    address
        .rsplit_once('@')
        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
}

/// A transaction for `GET /admin/queue/{tid}` (queued or finished).
pub async fn show(store: &Store, tid: &str) -> Result<MessageRecord, ControlError> {
    store
        .messages()
        .get(tid)
        .await?
        .ok_or_else(|| ControlError::NotFound(tid.to_string()))
}

/// The message log (SPEC 14): every transaction of the retention period matching `q`,
/// newest first, through the store's index (sled's `log_index`, or the database's).
pub async fn search(store: &Store, q: &LogQuery) -> Result<LogPage, StoreError> {
    store.messages().search(q).await
}

impl QueueWorker {
    /// Applies an operator's `action` to `tid` and makes it durable with its
    /// notifications; returns the record as it now is.
    pub async fn control(&self, tid: &str, action: Action) -> Result<MessageRecord, ControlError> {
        self.act(tid, action, "operator").await
    }

    /// [`QueueWorker::control`] on behalf of `by` (who the log names).
    async fn act(
        &self,
        tid: &str,
        action: Action,
        by: &str,
    ) -> Result<MessageRecord, ControlError> {
        let deadline = tokio::time::Instant::now() + ACTION_WAIT;
        let _in_flight = loop {
            if let Some(guard) = self.claim(tid) {
                break guard;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ControlError::Busy(tid.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut record = show(&self.store, tid).await?;
        if !self.store.messages().held_here(tid)? {
            return Err(ControlError::Conflict(format!(
                "transaction {tid} is {} and not in this node's queue",
                record.state.label()
            )));
        }
        let was = crate::metrics::queue_slot(record.state);
        let config = self.config();
        let now = now_ms();
        let mut events = Vec::new();
        apply(&mut record, action, now)?;
        if action == Action::Cancel {
            let pending: Vec<String> = record.pending().map(|r| r.address.clone()).collect();
            for addr in pending {
                let (code, text) = (DeliveryCode::RouteRefused, CANCELLED);
                end_recipient(
                    &config,
                    &mut record,
                    &addr,
                    code,
                    text,
                    "",
                    now,
                    &mut events,
                );
            }
        }
        self.store.messages().update(&record, &events).await?;
        tracing::info!(
            tid,
            action = action.label(),
            state = record.state.label(),
            by,
            "queue action"
        );
        self.metrics
            .queue_move(was, crate::metrics::queue_slot(record.state));
        self.outbox.schedule(events);
        if record.state == QueueState::Ready {
            self.queue.schedule(now, tid.to_string());
        }
        Ok(record)
    }
}

impl QueueWorker {
    /// Makes the asset's deferred transactions on this node due now: its route was just
    /// authorized (SPEC 15: deferred mail goes out within 30 s). Returns how many.
    pub async fn wake_asset(&self, asset: &str) -> usize {
        let waiting: Vec<String> = match self.store.messages().active() {
            Ok(all) => all
                .into_iter()
                .filter(|m| m.asset_id == asset && m.state == QueueState::Retry)
                .map(|m| m.tid)
                .collect(),
            Err(e) => {
                tracing::error!(asset, error = %e, "cannot read the queue to release the asset's deferred mail");
                return 0;
            }
        };
        let mut woken = 0;
        for tid in waiting {
            match self.act(&tid, Action::Retry, "authorization").await {
                Ok(_) => woken += 1,
                Err(e) => tracing::debug!(tid, error = %e, "not made due"),
            }
        }
        tracing::info!(
            asset,
            woken,
            "deferred mail due again after the route's authorization"
        );
        woken
    }
}

/// The state change `action` makes, or why it does not apply.
fn apply(record: &mut MessageRecord, action: Action, now: u64) -> Result<(), ControlError> {
    let state = record.state;
    let refuse = |why: &str| {
        Err(ControlError::Conflict(format!(
            "cannot {} transaction {}: it is {}{why}",
            action.label(),
            record.tid,
            state.label()
        )))
    };
    if matches!(state, QueueState::Done | QueueState::Cancelled) {
        return refuse(" (finished)");
    }
    match (action, state) {
        (Action::Retry, QueueState::Held) => return refuse("; release it instead"),
        (Action::Release, s) if s != QueueState::Held => return refuse(", not held"),
        (Action::Hold, QueueState::Held) => return refuse(" already"),
        _ => {}
    }
    match action {
        Action::Retry | Action::Release => {
            record.state = QueueState::Ready;
            record.next_ms = now;
        }
        Action::Hold => record.state = QueueState::Held,
        Action::Cancel => record.state = QueueState::Cancelled,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_match_by_address_or_domain() {
        assert!(recipient_matches("Ann@Example.org", "ann@example.ORG"));
        assert!(!recipient_matches("ann@example.org", "bob@example.org"));
        assert!(recipient_matches("ann@Example.org", "example.org"));
        assert!(recipient_matches("ann@example.org", "@EXAMPLE.org"));
        assert!(!recipient_matches("ann@sub.example.org", "example.org"));
    }

    #[test]
    fn actions_apply_only_where_they_make_sense() {
        let mut r = MessageRecord::blank("t1");
        r.state = QueueState::Retry;
        r.next_ms = 99_999;
        apply(&mut r, Action::Retry, 5).unwrap();
        assert_eq!((r.state, r.next_ms), (QueueState::Ready, 5));
        apply(&mut r, Action::Hold, 6).unwrap();
        assert_eq!(r.state, QueueState::Held);
        let e = apply(&mut r, Action::Retry, 7).unwrap_err().to_string();
        assert!(e.contains("release it instead"), "{e}");
        assert!(apply(&mut r, Action::Hold, 7).is_err());
        apply(&mut r, Action::Release, 8).unwrap();
        assert_eq!((r.state, r.next_ms), (QueueState::Ready, 8));
        assert!(apply(&mut r, Action::Release, 9).is_err());
        apply(&mut r, Action::Cancel, 9).unwrap();
        assert_eq!(r.state, QueueState::Cancelled);
        let e = apply(&mut r, Action::Retry, 10).unwrap_err().to_string();
        assert!(e.contains("finished"), "{e}");
    }
}
