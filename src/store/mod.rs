//! The only module that touches sled or the spool directory. One tree per concern:
//! `spool` (accepted inbound messages' envelopes), `bodies` (small message bodies; large
//! ones are files under `data_dir/spool/`), `outbox` (webhook events waiting for delivery),
//! `dead` (events that exhausted their retries), `inbound_tids` (MO tid -> spool id, for
//! signed attachment links), `messages` / `finished` (outbound transactions), `templates`,
//! `suppression`, `consent` and `frequency` (contact policy), `quarantine` (records that no longer decode: kept, never
//! deleted). Records carry a version byte; anything this build cannot decode is moved to
//! `quarantine` and logged instead of stopping the daemon or being lost.
//!
//! Durability: [`Store::commit`] returns once everything written before it is on disk. Many
//! callers share one flush (group commit), so a burst of SMTP sessions costs one fsync.
//! sled's own flush ends in `sync_file_range` (no device cache, no metadata) and never
//! syncs its blob files, so the commit then fdatasyncs new `db/blobs/*` files, their
//! directory and `db/db` itself. Every commit's outcome is reported to [`Health`]: a
//! failed or stalled flush refuses new work until a probe writes again.
//! The hot path uses plain inserts in a safe order, never sled transactions or batches:
//! in sled 0.34 each of those seals the IO buffer, which measured at several times the
//! cost of everything else in accepting a message.

mod codec;
pub mod domains;
pub mod messages;
pub mod outbox;
pub mod pending;
pub mod policy;
pub mod spool;
pub mod suppression;
pub mod tokens;

use crate::model::health::Health;
use crate::model::time::now_ms;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

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
    messages: sled::Tree,
    finished: sled::Tree,
    route_ids: sled::Tree,
    sns_seen: sled::Tree,
    domains: sled::Tree,
    templates: sled::Tree,
    suppression: sled::Tree,
    consent: sled::Tree,
    frequency: sled::Tree,
    quarantine: sled::Tree,
    spool_dir: PathBuf,
    flush_tx: std::sync::mpsc::Sender<FlushRequest>,
    /// Serialise read-modify-write of one transaction's record (striped by tid).
    tid_locks: Vec<tokio::sync::Mutex<()>>,
    health: Arc<Health>,
    /// When the flush in progress started (ms since the epoch), 0 when none is.
    flushing_since: Arc<AtomicU64>,
}

/// A commit not answered within this is treated as a failed write: sled 0.34's flush can
/// block for ever after an ENOSPC on a blob file (measured on a full tmpfs).
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A flush request carries its own database handle, so the flusher task never keeps the
/// database open: dropping the last `Store` releases sled's lock at once.
/// Spool files of the request are fsynced, then their directory, then the database.
type FlushRequest = (
    sled::Db,
    Vec<Arc<std::fs::File>>,
    oneshot::Sender<Result<(), String>>,
);

impl Store {
    /// Opens (creating) the database under `data_dir` and starts the group-commit thread.
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
        let (flush_tx, flush_rx) = std::sync::mpsc::channel();
        let health = Arc::new(Health::default());
        let flushing_since = Arc::new(AtomicU64::new(0));
        let durable = DbFiles::open(&data_dir.join("db")).map_err(|source| StoreError::File {
            path: data_dir.join("db"),
            source,
        })?;
        let inner = Inner {
            spool: db.open_tree("spool")?,
            bodies: db.open_tree("bodies")?,
            outbox: db.open_tree("outbox")?,
            dead: db.open_tree("dead")?,
            inbound_tids: db.open_tree("inbound_tids")?,
            messages: db.open_tree("messages")?,
            finished: db.open_tree("finished")?,
            route_ids: db.open_tree("route_ids")?,
            sns_seen: db.open_tree("sns_seen")?,
            domains: db.open_tree("domains")?,
            templates: db.open_tree("templates")?,
            suppression: db.open_tree("suppression")?,
            consent: db.open_tree("consent")?,
            frequency: db.open_tree("frequency")?,
            quarantine: db.open_tree("quarantine")?,
            db: db.clone(),
            spool_dir: spool_dir.clone(),
            flush_tx,
            tid_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            health: health.clone(),
            flushing_since: flushing_since.clone(),
        };
        let committer = Committer {
            spool_dir: spool_dir.clone(),
            files: durable,
            health,
            flushing_since,
        };
        std::thread::Builder::new()
            .name("postern-commit".into())
            .spawn(move || committer.run(flush_rx))
            .map_err(|source| StoreError::File {
                path: data_dir.to_path_buf(),
                source,
            })?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Waits until every write made before this call is durable. Concurrent callers are
    /// served by one `fsync`.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.commit_with(Vec::new()).await
    }

    /// [`Store::commit`], also making `files` (new spool files) and their directory durable.
    pub async fn commit_with(&self, files: Vec<Arc<std::fs::File>>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .flush_tx
            .send((self.inner.db.clone(), files, tx))
            .map_err(|_| StoreError::Closed)?;
        match tokio::time::timeout(COMMIT_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(StoreError::Db(sled::Error::Io(std::io::Error::other(e)))),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                // Not known to be durable: the caller answers as for a failed write.
                self.inner.health.store_failed();
                Err(StoreError::Db(sled::Error::Io(std::io::Error::other(
                    "the store did not flush within 10 s",
                ))))
            }
        }
    }

    /// The store's health flags (free space, failed writes), shared with the daemon.
    pub fn health(&self) -> Arc<Health> {
        self.inner.health.clone()
    }

    /// True while a flush has been running for longer than `limit`.
    pub fn flush_stalled(&self, limit: std::time::Duration) -> bool {
        let since = self.inner.flushing_since.load(Ordering::Acquire);
        since != 0 && now_ms().saturating_sub(since) > limit.as_millis() as u64
    }

    /// A tiny write and a commit: whether the store can write again after a failure.
    /// sled 0.34 keeps the first I/O error of its log for the life of the process, so once
    /// poisoned this keeps failing until the daemon restarts.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .insert(b"postern/probe", now_ms().to_be_bytes().to_vec())?;
        self.commit().await
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

    /// Drops this handle once it is the last one (waiting at most `within` for the others
    /// to go), which closes the database and releases its lock. False when others remain.
    pub async fn close(self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while Arc::strong_count(&self.inner) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The commit thread works in order and lets go of each request's database handle
        // before answering: once this last commit is answered, it holds none.
        if let Err(e) = self.commit().await {
            tracing::error!(error = %e, "final commit failed");
        }
        Arc::strong_count(&self.inner) == 1
    }

    /// Number of records moved aside because they did not decode.
    pub fn quarantined(&self) -> usize {
        self.inner.quarantine.len()
    }
}

/// How long the first waiter of a batch waits for others to join it.
const COMMIT_WINDOW: std::time::Duration =
    std::time::Duration::from_micros(if cfg!(test) { 0 } else { 1000 });

/// The files sled writes that its own flush leaves short of the disk: `db/db` (the log,
/// only `sync_file_range`d) and `db/blobs/*` (large pages, never synced by sled).
/// `conf` is written once at creation; snapshots are fsynced by sled and are only a cache
/// of the log.
struct DbFiles {
    dir: PathBuf,
    log: std::fs::File,
    /// Blob files already made durable (sled never rewrites one; names are LSNs).
    synced_blobs: HashSet<std::ffi::OsString>,
}

impl DbFiles {
    fn open(dir: &Path) -> std::io::Result<DbFiles> {
        let log = std::fs::File::open(dir.join("db"))?;
        // The files sled created at open, and the directory entries naming them.
        log.sync_all()?;
        for d in [dir.to_path_buf(), dir.join("blobs")] {
            if d.is_dir() {
                std::fs::File::open(&d)?.sync_all()?;
            }
        }
        let mut files = DbFiles {
            dir: dir.to_path_buf(),
            log,
            synced_blobs: HashSet::new(),
        };
        files.sync()?;
        Ok(files)
    }

    /// fdatasync of new blob files and their directory, then of the log.
    fn sync(&mut self) -> std::io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut present = HashSet::new();
        let mut new = false;
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            for e in entries {
                let name = e?.file_name();
                if !self.synced_blobs.contains(&name) {
                    match std::fs::File::open(blobs.join(&name)) {
                        Ok(f) => f.sync_data()?,
                        // Collected by sled meanwhile: nothing to keep.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                    new = true;
                }
                present.insert(name);
            }
        }
        if new {
            std::fs::File::open(&blobs)?.sync_all()?;
        }
        self.synced_blobs = present;
        self.log.sync_data()
    }
}

/// The group-commit thread's state.
struct Committer {
    spool_dir: PathBuf,
    files: DbFiles,
    health: Arc<Health>,
    flushing_since: Arc<AtomicU64>,
}

impl Committer {
    /// One thread owns flushing: it takes every waiter queued so far, flushes once, answers
    /// all. A dedicated thread (not the blocking pool) keeps it to one wake-up per batch.
    fn run(mut self, rx: std::sync::mpsc::Receiver<FlushRequest>) {
        while let Ok((db, mut files, first)) = rx.recv() {
            let mut waiters = vec![first];
            // Commit delay: a flush costs sled several thread hand-offs, so give concurrent
            // sessions a moment to join the batch (as PostgreSQL's commit_delay does).
            let window = std::time::Instant::now() + COMMIT_WINDOW;
            loop {
                while let Ok((_, f, more)) = rx.try_recv() {
                    files.extend(f);
                    waiters.push(more);
                }
                let left = window.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok((_, f, more)) => {
                        files.extend(f);
                        waiters.push(more);
                    }
                    Err(_) => break,
                }
            }
            self.flushing_since
                .store(now_ms().max(1), Ordering::Release);
            let result = sync_files(&files, &self.spool_dir)
                .and_then(|_| db.flush().map(|_| ()).map_err(|e| e.to_string()))
                .and_then(|_| {
                    self.files
                        .sync()
                        .map_err(|e| format!("{}: fdatasync: {e}", self.files.dir.display()))
                });
            self.flushing_since.store(0, Ordering::Release);
            drop(db);
            match &result {
                Ok(()) => {}
                Err(e) => {
                    // Recovery is the storage monitor's probe, not any later success: sled
                    // may have dropped writes of this batch that a later flush won't redo.
                    self.health.store_failed();
                    tracing::error!(error = %e, "database flush failed; refusing new work");
                }
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }
}

fn sync_files(files: &[Arc<std::fs::File>], dir: &Path) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    for f in files {
        f.sync_data()
            .map_err(|e| format!("spool file fsync: {e}"))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: fsync: {e}", dir.display()))
}
