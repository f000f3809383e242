//! Webhook events waiting for delivery (`outbox`) and those that gave up (`dead`). An entry
//! leaves the outbox only by a 2xx (deleted) or by moving to `dead` in one transaction, so
//! no event is ever dropped silently.

use super::{codec, Store, StoreError};
use crate::model::time::now_ms;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};

/// Which webhook family an event belongs to (also its metrics label).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Mo,
    Status,
    Unsubscribe,
}

impl EventKind {
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Mo => "mo",
            EventKind::Status => "status",
            EventKind::Unsubscribe => "unsubscribe",
        }
    }
}

/// What is POSTed. MO bodies are rendered from the stored message at delivery time so a
/// 40 MB message is not kept twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Payload {
    Json(String),
    Mo {
        spool_id: String,
        tid: String,
        asset_id: String,
        recipients: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Unique; sent as `X-Postern-Event-Id`.
    pub id: String,
    pub kind: EventKind,
    pub url: String,
    /// Whose `webhook_secret` signs it.
    pub asset_id: String,
    pub payload: Payload,
    pub attempts: u32,
    pub created_ms: u64,
    pub next_ms: u64,
    pub last_error: String,
    /// The URL came from an API request: POSTed through the guarded client (no private
    /// targets, after DNS and redirects).
    #[serde(default)]
    pub guarded: bool,
}

impl OutboxEntry {
    pub fn new(kind: EventKind, url: String, asset_id: String, payload: Payload) -> Self {
        let now = now_ms();
        OutboxEntry {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            url,
            asset_id,
            payload,
            attempts: 0,
            created_ms: now,
            next_ms: now,
            last_error: String::new(),
            guarded: false,
        }
    }

    /// The spool message this event renders from, if any.
    pub fn spool_id(&self) -> Option<&str> {
        match &self.payload {
            Payload::Mo { spool_id, .. } => Some(spool_id),
            Payload::Json(_) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: OutboxEntry,
    pub reason: String,
    pub died_ms: u64,
}

impl Store {
    /// Adds events and waits until they are durable.
    pub async fn enqueue_events(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(e.id.as_bytes(), codec::encode(e));
        }
        self.inner.outbox.apply_batch(batch)?;
        self.commit().await
    }

    /// Every pending event, in id (creation) order. Undecodable ones are quarantined.
    pub fn outbox_all(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.outbox.iter() {
            let (k, v) = item?;
            match codec::decode::<OutboxEntry>(&v) {
                Ok(e) => out.push(e),
                Err(reason) => {
                    self.quarantine("outbox", &k, &v, &reason);
                    self.inner.outbox.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    pub fn outbox_get(&self, id: &str) -> Result<Option<OutboxEntry>, StoreError> {
        match self.inner.outbox.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: "outbox",
                    key: id.into(),
                    reason,
                }),
        }
    }

    pub fn outbox_update(&self, entry: &OutboxEntry) -> Result<(), StoreError> {
        self.inner
            .outbox
            .insert(entry.id.as_bytes(), codec::encode(entry))?;
        Ok(())
    }

    /// Delivered: the event is gone. Not flushed: losing this delete only repeats a POST.
    pub fn outbox_done(&self, id: &str) -> Result<(), StoreError> {
        self.inner.outbox.remove(id.as_bytes())?;
        Ok(())
    }

    pub fn outbox_len(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Moves an event to the dead-letter store atomically.
    pub async fn outbox_to_dead(
        &self,
        entry: OutboxEntry,
        reason: String,
    ) -> Result<(), StoreError> {
        let key = entry.id.clone();
        let dead = DeadLetter {
            entry,
            reason,
            died_ms: now_ms(),
        };
        let encoded = codec::encode(&dead);
        (&self.inner.outbox, &self.inner.dead)
            .transaction(|(outbox, deadt)| {
                outbox.remove(key.as_bytes())?;
                deadt.insert(key.as_bytes(), encoded.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(StoreError::from)?;
        self.commit().await
    }

    /// Dead letters, optionally only those of one endpoint URL.
    pub fn dead_list(&self, url: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.dead.iter() {
            let (k, v) = item?;
            match codec::decode::<DeadLetter>(&v) {
                Ok(d) if url.is_none_or(|u| d.entry.url == u) => out.push(d),
                Ok(_) => {}
                Err(reason) => self.quarantine("dead", &k, &v, &reason),
            }
        }
        Ok(out)
    }

    /// Moves dead letters back to the outbox with fresh attempts, returning them so the
    /// worker can schedule them now.
    pub async fn dead_replay(&self, ids: &[String]) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut replayed = Vec::new();
        for id in ids {
            let Some(v) = self.inner.dead.get(id.as_bytes())? else {
                continue;
            };
            let dead: DeadLetter = codec::decode(&v).map_err(|reason| StoreError::Corrupt {
                tree: "dead",
                key: id.clone(),
                reason,
            })?;
            let mut entry = dead.entry;
            let now = now_ms();
            entry.attempts = 0;
            entry.created_ms = now;
            entry.next_ms = now;
            entry.last_error.clear();
            let encoded = codec::encode(&entry);
            // Moved only if it is still a dead letter inside the transaction: one that the
            // garbage collector expired (or another replay took) meanwhile stays gone.
            let moved = (&self.inner.outbox, &self.inner.dead)
                .transaction(|(outbox, deadt)| {
                    if deadt.remove(id.as_bytes())?.is_none() {
                        return Ok(false);
                    }
                    outbox.insert(id.as_bytes(), encoded.as_slice())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(true)
                })
                .map_err(StoreError::from)?;
            if moved {
                replayed.push(entry);
            }
        }
        self.commit().await?;
        Ok(replayed)
    }

    /// Deletes dead letters that died `keep_ms` or more before `now_ms`, then releases the
    /// stored messages they pinned (body included) unless a live event or another dead
    /// letter still needs them or their own retention runs longer. Returns how many dead
    /// letters went.
    ///
    /// Each removal is a compare-and-swap against the value read, so a dead letter replayed
    /// meanwhile is left to the replay. A crash between the removal and the release leaves
    /// an unreferenced message, which [`Store::collect_garbage`] removes.
    pub fn collect_dead_letters(&self, now_ms: u64, keep_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.inner.dead.iter() {
            let (k, v) = item?;
            // Undecodable ones were quarantined by `dead_list` and stay where they are.
            let Ok(dead) = codec::decode::<DeadLetter>(&v) else {
                continue;
            };
            if dead.died_ms.saturating_add(keep_ms) > now_ms {
                continue;
            }
            if self
                .inner
                .dead
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                .is_err()
            {
                continue;
            }
            removed += 1;
            tracing::info!(event = %dead.entry.id, url = %dead.entry.url,
                died_ms = dead.died_ms, "dead letter expired");
            if let Some(spool) = dead.entry.spool_id() {
                self.release_spool_at(spool, now_ms)?;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_letters_expire_after_retention_and_an_expired_one_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entry = OutboxEntry::new(
            EventKind::Status,
            "http://h/".into(),
            "a".into(),
            Payload::Json("{}".into()),
        );
        let id = entry.id.clone();
        store
            .enqueue_events(std::slice::from_ref(&entry))
            .await
            .unwrap();
        store.outbox_to_dead(entry, "404".into()).await.unwrap();
        let died = store.dead_list(None).unwrap()[0].died_ms;
        let day = 86_400_000;
        assert_eq!(
            store
                .collect_dead_letters(died + 7 * day - 1, 7 * day)
                .unwrap(),
            0
        );
        assert_eq!(
            store.collect_dead_letters(died + 7 * day, 7 * day).unwrap(),
            1
        );
        assert!(store.dead_list(None).unwrap().is_empty());
        assert!(store.dead_replay(&[id]).await.unwrap().is_empty());
        assert_eq!(store.outbox_len(), 0);
    }
}
