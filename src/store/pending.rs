//! Inbound messages that carry feedback still to act on (DSNs and ARF reports at the bounce
//! domain, mail to an unsubscribe address). The `feedback_pending` tree holds their spool
//! ids with the time they arrived; the mark is written with the message (one commit) and
//! removed only after the feedback was recorded, so a crash in between means the message
//! is processed again, never forgotten. Once processed, the message is deleted unless MO
//! events still need it: strangers' mail to the bounce domain never accumulates.

use super::{Store, StoreError};

const TREE: &str = "feedback_pending";

impl Store {
    /// Marks message `id` as carrying feedback. Not committed here: the commit that makes
    /// the message durable makes the mark durable with it.
    pub fn mark_feedback_pending(&self, id: &str, received_ms: u64) -> Result<(), StoreError> {
        self.inner
            .db
            .open_tree(TREE)?
            .insert(id.as_bytes(), &received_ms.to_be_bytes())?;
        Ok(())
    }

    /// Marked messages that arrived before `before_ms`.
    pub fn feedback_pending(&self, before_ms: u64) -> Result<Vec<String>, StoreError> {
        let tree = self.inner.db.open_tree(TREE)?;
        Ok(super::codec::stamped_before(&tree, before_ms)?
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect())
    }

    /// Marks every bounce-domain message stored before marks existed (such messages were
    /// kept for ever), so the next sweep processes and deletes them. Returns how many.
    pub fn mark_unmarked_bounces(&self) -> Result<usize, StoreError> {
        let tree = self.inner.db.open_tree(TREE)?;
        let mut n = 0;
        for item in self.inner.spool.iter() {
            let (k, v) = item?;
            let Ok(record) = super::codec::decode::<super::SpoolRecord>(&v) else {
                continue;
            };
            if record.bounce && !tree.contains_key(&k)? {
                tree.insert(k, &record.received_ms.to_be_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The feedback of message `id` was acted on: the message no longer waits for it, and
    /// is deleted now (body, spool file, record) unless MO events still refer to it.
    /// Durable when this returns.
    pub async fn feedback_done(&self, id: &str) -> Result<(), StoreError> {
        if let Some(mut record) = self.spool_record(id)? {
            if record.bounce {
                record.bounce = false;
                self.inner
                    .spool
                    .insert(id.as_bytes(), super::codec::encode(&record))?;
            }
        }
        self.inner.db.open_tree(TREE)?.remove(id.as_bytes())?;
        self.release_spool_if_done(id)?;
        self.commit().await
    }

    /// Whether message `id` is still marked (for tests and the admin view).
    pub fn is_feedback_pending(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.inner.db.open_tree(TREE)?.contains_key(id.as_bytes())?)
    }
}
