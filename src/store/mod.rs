//! The only module that touches sled or the spool directory. One tree per concern:
//! `spool` (accepted inbound messages' envelopes), `bodies` (small message bodies; large
//! ones are files under `data_dir/spool/`), `outbox` (webhook events waiting for delivery),
//! `dead` (events that exhausted their retries), `inbound_tids` (MO tid -> spool id, for
//! signed attachment links), `quarantine` (records that no longer decode: kept, never
//! deleted). Records carry a version byte; anything this build cannot decode is moved to
//! `quarantine` and logged instead of stopping the daemon or being lost.
//!
//! Durability: [`Store::commit`] returns once everything written before it is on disk. Many
//! callers share one flush (group commit), so a burst of SMTP sessions costs one fsync.

mod codec;
pub mod outbox;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub use outbox::{DeadLetter, OutboxEntry, Payload};
pub use spool::{BodyLocation, SpoolRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("spool file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record {key} in {tree} does not decode: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("the store is shutting down")]
    Closed,
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    spool: sled::Tree,
    bodies: sled::Tree,
    outbox: sled::Tree,
    dead: sled::Tree,
    inbound_tids: sled::Tree,
    quarantine: sled::Tree,
    spool_dir: PathBuf,
    flush_tx: mpsc::UnboundedSender<FlushRequest>,
}

/// A flush request carries its own database handle, so the flusher task never keeps the
/// database open: dropping the last `Store` releases sled's lock at once.
type FlushRequest = (sled::Db, oneshot::Sender<Result<(), String>>);

impl Store {
    /// Opens (creating) the database under `data_dir` and starts the group-commit flusher.
    /// Must be called inside a tokio runtime.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let spool_dir = data_dir.join("spool");
        std::fs::create_dir_all(&spool_dir).map_err(|source| StoreError::File {
            path: spool_dir.clone(),
            source,
        })?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            .cache_capacity(128 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .open()?;
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let inner = Inner {
            spool: db.open_tree("spool")?,
            bodies: db.open_tree("bodies")?,
            outbox: db.open_tree("outbox")?,
            dead: db.open_tree("dead")?,
            inbound_tids: db.open_tree("inbound_tids")?,
            quarantine: db.open_tree("quarantine")?,
            db: db.clone(),
            spool_dir,
            flush_tx,
        };
        tokio::spawn(group_commit(flush_rx));
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Waits until every write made before this call is durable. Concurrent callers are
    /// served by one `fsync`.
    pub async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .flush_tx
            .send((self.inner.db.clone(), tx))
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Db(sled::Error::Io(std::io::Error::other(e)))),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Synchronous flush, for shutdown.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    pub fn spool_dir(&self) -> &Path {
        &self.inner.spool_dir
    }

    fn quarantine(&self, tree: &'static str, key: &[u8], value: &[u8], reason: &str) {
        let mut qkey = tree.as_bytes().to_vec();
        qkey.push(b'/');
        qkey.extend_from_slice(key);
        tracing::error!(tree, key = %String::from_utf8_lossy(key), reason, "record quarantined");
        if let Err(e) = self.inner.quarantine.insert(qkey, value) {
            tracing::error!(error = %e, "could not write the quarantine record; the original is kept");
        }
    }

    /// Number of records moved aside because they did not decode.
    pub fn quarantined(&self) -> usize {
        self.inner.quarantine.len()
    }
}

/// One task owns flushing: it takes every waiter queued so far, flushes once, answers all.
async fn group_commit(mut rx: mpsc::UnboundedReceiver<FlushRequest>) {
    while let Some((db, first)) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok((_, more)) = rx.try_recv() {
            waiters.push(more);
        }
        let result =
            tokio::task::spawn_blocking(move || db.flush().map(|_| ()).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(format!("flush task failed: {e}")));
        if let Err(e) = &result {
            tracing::error!(error = %e, "database flush failed");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Milliseconds since the Unix epoch: the time unit of every stored timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
