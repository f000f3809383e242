//! Outbound transactions. `messages` holds every tid still to be worked on; when a tid is
//! finished it moves to `finished` (kept for `GET /v2/messages/{tid}`, then collected).
//! Templates live in `templates`, keyed `service/id`.

use super::{codec, now_ms, OutboxEntry, Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueState {
    /// Waiting for its sendAt.
    Scheduled,
    /// Due now.
    Ready,
    /// A transient failure; due again at `next_ms`.
    Retry,
    /// Every recipient has a final state.
    Done,
    /// Cancelled by an operator.
    Cancelled,
}

impl QueueState {
    pub fn label(self) -> &'static str {
        match self {
            QueueState::Scheduled => "scheduled",
            QueueState::Ready => "ready",
            QueueState::Retry => "retry",
            QueueState::Done => "done",
            QueueState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientPhase {
    Pending,
    /// The route took it (250 / MessageId): never submitted again.
    Submitted,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    pub phase: RecipientPhase,
    pub code: Option<String>,
}

/// One event in a transaction's history (what `GET /v2/messages/{tid}` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
    pub destination: String,
    pub code: String,
    pub status: String,
    pub description: String,
    pub additional_info: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub mimetype: String,
    pub name: String,
    pub media_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactPolicy {
    pub group: String,
    pub check_consent: bool,
    pub apply_frequency_cap: bool,
}

/// A queued outbound email (one tid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub tid: String,
    pub request_id: String,
    pub service_id: String,
    pub asset_id: String,
    pub from: String,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub recipients: Vec<RecipientState>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Bits of `types::Receipts`.
    pub receipts: crate::types::Receipts,
    pub correlation_id: Option<String>,
    pub callback_data: String,
    pub notify_url: Option<String>,
    pub send_at_ms: u64,
    pub expire_at_ms: u64,
    pub track_clicks: bool,
    pub track_opens: bool,
    pub list_unsubscribe_url: Option<String>,
    pub unsubscribe_email: Option<String>,
    pub unsubscribe_subject: Option<String>,
    /// `contactPolicy`: the group, and whether consent and the frequency cap apply.
    #[serde(default)]
    pub contact_policy: Option<ContactPolicy>,
    pub state: QueueState,
    pub attempts: u32,
    pub next_ms: u64,
    pub created_ms: u64,
    pub last_error: String,
    pub history: Vec<HistoryEntry>,
    /// The route's ids for this message (SES MessageIds), which its events refer to.
    #[serde(default)]
    pub route_ids: Vec<String>,
}

impl MessageRecord {
    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.phase == RecipientPhase::Pending)
    }
}

/// How long finished transactions stay queryable.
pub const FINISHED_RETENTION_MS: u64 = 7 * 86_400_000;

impl Store {
    /// Queues transactions and their immediate notifications, then waits for the commit:
    /// the 202 may be written when this returns.
    pub async fn submit(
        &self,
        records: &[MessageRecord],
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        for r in records {
            let tree = if matches!(r.state, QueueState::Done) {
                &i.finished
            } else {
                &i.messages
            };
            tree.insert(r.tid.as_bytes(), codec::encode(r))?;
        }
        for e in events {
            i.outbox.insert(e.id.as_bytes(), codec::encode(e))?;
        }
        self.commit().await
    }

    /// Records a transaction's new state with the events it produced; a finished one moves
    /// to `finished`. Durable when this returns.
    pub async fn update_message(
        &self,
        record: &MessageRecord,
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        for e in events {
            i.outbox.insert(e.id.as_bytes(), codec::encode(e))?;
        }
        let key = record.tid.as_bytes();
        if matches!(record.state, QueueState::Done | QueueState::Cancelled) {
            i.finished.insert(key, codec::encode(record))?;
            i.messages.remove(key)?;
        } else {
            i.messages.insert(key, codec::encode(record))?;
        }
        self.commit().await
    }

    /// Held while a transaction's record is read, changed and written back by feedback
    /// (SES events, DSNs, opens), so two at once do not lose each other's history.
    pub async fn lock_tid(&self, tid: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tid.hash(&mut h);
        let locks = &self.inner.tid_locks;
        locks[(h.finish() as usize) % locks.len()].lock().await
    }

    /// Maps a route's message id (SES MessageId) to its tid. Not committed here: the
    /// caller's next commit (the update recording 7501) makes it durable with the rest.
    pub fn map_route_id(&self, id: &str, tid: &str) -> Result<(), StoreError> {
        self.inner.route_ids.insert(id.as_bytes(), tid.as_bytes())?;
        Ok(())
    }

    /// The tid a route's message id belongs to.
    pub fn tid_for_route_id(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .inner
            .route_ids
            .get(id.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Whether the SNS message `id` was already recorded (SNS delivers at least once).
    pub fn sns_seen(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.inner.sns_seen.contains_key(id.as_bytes())?)
    }

    /// Remembers SNS message `id` as recorded, until `collect_finished` forgets it with
    /// the transactions it could refer to.
    pub async fn mark_sns_seen(&self, id: &str) -> Result<(), StoreError> {
        self.inner
            .sns_seen
            .insert(id.as_bytes(), &now_ms().to_be_bytes())?;
        self.commit().await
    }

    /// An active or finished transaction.
    pub fn message(&self, tid: &str) -> Result<Option<MessageRecord>, StoreError> {
        for (name, tree) in [
            ("messages", &self.inner.messages),
            ("finished", &self.inner.finished),
        ] {
            if let Some(v) = tree.get(tid.as_bytes())? {
                return codec::decode(&v)
                    .map(Some)
                    .map_err(|reason| StoreError::Corrupt {
                        tree: name,
                        key: tid.into(),
                        reason,
                    });
            }
        }
        Ok(None)
    }

    /// Every active transaction (for the scheduler at start). Undecodable ones are
    /// quarantined, never deleted silently.
    pub fn active_messages(&self) -> Result<Vec<MessageRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.messages.iter() {
            let (k, v) = item?;
            match codec::decode::<MessageRecord>(&v) {
                Ok(r) => out.push(r),
                Err(reason) => {
                    self.quarantine("messages", &k, &v, &reason);
                    self.inner.messages.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes finished transactions older than the retention.
    pub fn collect_finished(&self) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(FINISHED_RETENTION_MS);
        let mut n = 0;
        for item in self.inner.sns_seen.iter() {
            let (k, v) = item?;
            let at = v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            if at < cutoff {
                self.inner.sns_seen.remove(&k)?;
            }
        }
        for item in self.inner.finished.iter() {
            let (k, v) = item?;
            if let Ok(r) = codec::decode::<MessageRecord>(&v) {
                if r.created_ms < cutoff {
                    for id in &r.route_ids {
                        self.inner.route_ids.remove(id.as_bytes())?;
                    }
                    self.inner.finished.remove(&k)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    pub fn template_get(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<crate::api::wire::Template>, StoreError> {
        match self
            .inner
            .templates
            .get(format!("{service}/{id}").as_bytes())?
        {
            None => Ok(None),
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: "templates",
                    key: id.into(),
                    reason,
                }),
        }
    }

    pub fn template_list(
        &self,
        service: &str,
    ) -> Result<Vec<crate::api::wire::Template>, StoreError> {
        let prefix = format!("{service}/");
        let mut out = Vec::new();
        for item in self.inner.templates.scan_prefix(prefix.as_bytes()) {
            let (_, v) = item?;
            if let Ok(t) = codec::decode(&v) {
                out.push(t);
            }
        }
        Ok(out)
    }

    pub async fn template_put(
        &self,
        service: &str,
        t: &crate::api::wire::Template,
    ) -> Result<(), StoreError> {
        self.inner
            .templates
            .insert(format!("{service}/{}", t.id).as_bytes(), codec::encode(t))?;
        self.commit().await
    }

    /// Returns whether it existed.
    pub async fn template_delete(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let existed = self
            .inner
            .templates
            .remove(format!("{service}/{id}").as_bytes())?
            .is_some();
        self.commit().await?;
        Ok(existed)
    }
}
