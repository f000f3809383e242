//! The only module that touches sled, SQL or the spool directory.
//!
//! Two kinds of state. Node-local, always sled and reached through [`Store`]'s own
//! methods: `spool` (accepted inbound messages' envelopes), `bodies` (small message
//! bodies; large ones are files under `data_dir/spool/`), `outbox` (webhook events waiting
//! for delivery), `dead` (events that exhausted their retries), `inbound_tids` (MO tid ->
//! spool id, for signed attachment links), `feedback_pending` (`pending.rs`). Shared by
//! every node in cluster mode (SPEC 13), each concern behind its own interface: sled for
//! a node alone, PostgreSQL (`pg/`) in a cluster. [`Suppressions`] (`suppression`),
//! [`Templates`] (`templates`), [`Policy`] (`consent`, `frequency`), [`Domains`]
//! (`domains`), [`Buckets`] (in memory alone), [`Messages`] (`messages` / `finished`,
//! `track`; in a cluster the owner's sled and `mirror`, then the database), [`RouteState`]
//! (`route_ids`, `sns_seen`), [`Accounts`] (`route_tokens`, `oauth_flows`). DKIM files are kept in step by
//! [`Store::sync_files`].
//! `quarantine` holds records that no longer decode: kept, never deleted. Records carry a
//! version byte; anything this build cannot decode is moved to `quarantine` and logged
//! instead of stopping the daemon or being lost.
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

pub mod accounts;
pub mod bucket;
mod codec;
pub mod domains;
pub mod log;
pub mod messages;
pub mod outbox;
pub mod pending;
pub mod pg;
pub mod policy;
pub mod recent;
pub mod routes;
pub mod spool;
pub mod suppression;
pub mod templates;

use crate::model::health::Health;
use crate::model::time::now_ms;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

pub use accounts::Accounts;
pub use bucket::Buckets;
pub use domains::Domains;
pub use messages::{Messages, TidLock};
pub use outbox::{DeadLetter, OutboxEntry, Payload};
pub use policy::Policy;
pub use routes::{RouteState, SnsClaim};
pub use spool::{BodyLocation, SpoolRecord};
pub use suppression::Suppressions;
pub use templates::Templates;

/// What the interfaces' writing methods return: they finish once the write is durable.
/// A boxed future keeps the traits object-safe (`dyn Suppressions`), which `async fn` in
/// a trait is not.
pub type StoreFuture<'a, T> = futures::future::BoxFuture<'a, Result<T, StoreError>>;

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
    /// Cluster mode: the shared database refused or did not answer (SPEC 13).
    #[error("cluster database: {0}")]
    Database(String),
}

impl StoreError {
    /// Whether this is the shared database's failure, which passes when it returns: the
    /// API answers 503 with `Retry-After` and the queue defers.
    pub fn is_database(&self) -> bool {
        matches!(self, StoreError::Database(_))
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        }
    }
}

/// Handle to the store; cheap to clone.
///
/// It holds the node-local state itself (spool, outbox and dead letters, pending feedback:
/// always sled, always this node's) and reaches the state that several nodes will share
/// (SPEC 13) through one interface per concern: [`Store::suppressions`],
/// [`Store::templates`], [`Store::policy`], [`Store::domains`], [`Store::messages`],
/// [`Store::routes`], [`Store::accounts`]. [`Store::open`] puts the sled implementations behind them; a
/// cluster build puts PostgreSQL ones there, and nothing above the store changes.
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
    quarantine: Quarantine,
    spool_dir: PathBuf,
    durable: Durable,
    /// When the flush in progress started (ms since the epoch), 0 when none is.
    flushing_since: Arc<AtomicU64>,
    shared: Shared,
    /// Cluster mode: the shared database (SPEC 13).
    pg: Option<Arc<pg::Pg>>,
}

/// The state several nodes will share, one interface per concern.
struct Shared {
    suppressions: Box<dyn Suppressions>,
    templates: Box<dyn Templates>,
    policy: Box<dyn Policy>,
    domains: Box<dyn Domains>,
    messages: Box<dyn Messages>,
    routes: Box<dyn RouteState>,
    buckets: Box<dyn Buckets>,
    accounts: Box<dyn Accounts>,
}

impl Shared {
    /// Every concern on this node's sled database.
    fn sled(
        db: &sled::Db,
        outbox: &sled::Tree,
        durable: &Durable,
        q: &Quarantine,
    ) -> sled::Result<Shared> {
        Ok(Shared {
            suppressions: Box::new(suppression::SledSuppressions {
                tree: db.open_tree("suppression")?,
                quarantine: q.clone(),
                durable: durable.clone(),
            }),
            templates: Box::new(templates::SledTemplates {
                tree: db.open_tree("templates")?,
                durable: durable.clone(),
            }),
            policy: Box::new(policy::SledPolicy {
                consent: db.open_tree("consent")?,
                frequency: db.open_tree("frequency")?,
                quarantine: q.clone(),
                durable: durable.clone(),
            }),
            domains: Box::new(domains::SledDomains {
                tree: db.open_tree("domains")?,
                durable: durable.clone(),
            }),
            messages: Box::new(Shared::sled_messages(db, outbox, durable, q, true)?),
            buckets: Box::<bucket::MemoryBuckets>::default(),
            routes: Box::new(Shared::sled_routes(db, durable)?),
            accounts: Box::new(accounts::SledAccounts::open(db, durable)?),
        })
    }

    /// Transactions on sled; with `log`, the message log's index too (a node alone),
    /// built from the records when a store from before the index has none.
    fn sled_messages(
        db: &sled::Db,
        outbox: &sled::Tree,
        durable: &Durable,
        q: &Quarantine,
        log: bool,
    ) -> sled::Result<messages::SledMessages> {
        let m = messages::SledMessages {
            db: db.clone(),
            messages: db.open_tree("messages")?,
            finished: db.open_tree("finished")?,
            outbox: outbox.clone(),
            tid_locks: Arc::new((0..64).map(|_| tokio::sync::Mutex::new(())).collect()),
            log: if log {
                Some(db.open_tree("log_index")?)
            } else {
                None
            },
            quarantine: q.clone(),
            durable: durable.clone(),
        };
        m.index_unindexed()?;
        Ok(m)
    }

    fn sled_routes(db: &sled::Db, durable: &Durable) -> sled::Result<routes::SledRouteState> {
        Ok(routes::SledRouteState {
            route_ids: db.open_tree("route_ids")?,
            sns_seen: db.open_tree("sns_seen")?,
            durable: durable.clone(),
        })
    }

    /// Transactions and route state of a cluster node, and the task that mirrors this
    /// node's transactions to the database (SPEC 13).
    fn cluster_messages(inner: &mut Inner, db: &Arc<pg::Pg>) -> sled::Result<()> {
        let mirror = inner.db.open_tree("mirror")?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let (d, o, q) = (&inner.db, &inner.outbox, &inner.quarantine);
        let local = Shared::sled_messages(d, o, &inner.durable, q, false)?;
        // The same locks as `local`'s: the mirror task and feedback never interleave.
        let state = Arc::new(pg::MirrorState {
            local: local.clone(),
            tree: mirror.clone(),
        });
        tokio::spawn(pg::mirror(
            Arc::downgrade(db),
            Arc::downgrade(&state),
            wake.clone(),
        ));
        wake.notify_one();
        inner.shared.messages = Box::new(pg::ClusterMessages {
            local,
            pg: db.clone(),
            mirror,
            wake,
            _state: state,
        });
        inner.shared.routes = Box::new(pg::ClusterRouteState {
            local: Shared::sled_routes(d, &inner.durable)?,
            pg: db.clone(),
        });
        Ok(())
    }
}

/// This data directory's identity among the cluster's nodes (`data_dir/node-instance`,
/// made once): the node that restarts on it keeps its `node_id`.
fn node_instance(data_dir: &Path) -> Result<String, StoreError> {
    let path = data_dir.join("node-instance");
    let err = |source| StoreError::File {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(id)
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

/// The way to the group-commit thread, held by every sled concern so each can make its
/// own writes durable.
#[derive(Clone)]
struct Durable {
    db: sled::Db,
    flush_tx: std::sync::mpsc::Sender<FlushRequest>,
    health: Arc<Health>,
}

impl Durable {
    /// See [`Store::commit`].
    async fn commit(&self) -> Result<(), StoreError> {
        self.commit_with(Vec::new()).await
    }

    /// See [`Store::commit_with`].
    async fn commit_with(&self, files: Vec<Arc<std::fs::File>>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx
            .send((self.db.clone(), files, tx))
            .map_err(|_| StoreError::Closed)?;
        match tokio::time::timeout(COMMIT_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(StoreError::Db(sled::Error::Io(std::io::Error::other(e)))),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => {
                // Not known to be durable: the caller answers as for a failed write.
                self.health.store_failed();
                Err(StoreError::Db(sled::Error::Io(std::io::Error::other(
                    "the store did not flush within 10 s",
                ))))
            }
        }
    }
}

/// The `quarantine` tree: records that no longer decode, kept under `tree/key`, never
/// deleted.
#[derive(Clone)]
struct Quarantine {
    tree: sled::Tree,
}

impl Quarantine {
    /// Keeps `value` aside and logs why; the caller then removes the original.
    fn put(&self, tree: &'static str, key: &[u8], value: &[u8], reason: &str) {
        let mut qkey = tree.as_bytes().to_vec();
        qkey.push(b'/');
        qkey.extend_from_slice(key);
        tracing::error!(tree, key = %String::from_utf8_lossy(key), reason, "record quarantined");
        if let Err(e) = self.tree.insert(qkey, value) {
            tracing::error!(error = %e, "could not write the quarantine record; the original is kept");
        }
    }

    /// Whether `key` of `tree` was quarantined.
    fn holds(&self, tree: &'static str, key: &[u8]) -> Result<bool, StoreError> {
        let mut qkey = tree.as_bytes().to_vec();
        qkey.push(b'/');
        qkey.extend_from_slice(key);
        Ok(self.tree.contains_key(qkey)?)
    }
}

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
        let durable_files =
            DbFiles::open(&data_dir.join("db")).map_err(|source| StoreError::File {
                path: data_dir.join("db"),
                source,
            })?;
        let durable = Durable {
            db: db.clone(),
            flush_tx,
            health: health.clone(),
        };
        let quarantine = Quarantine {
            tree: db.open_tree("quarantine")?,
        };
        let outbox = db.open_tree("outbox")?;
        let inner = Inner {
            spool: db.open_tree("spool")?,
            bodies: db.open_tree("bodies")?,
            dead: db.open_tree("dead")?,
            inbound_tids: db.open_tree("inbound_tids")?,
            shared: Shared::sled(&db, &outbox, &durable, &quarantine)?,
            outbox,
            quarantine,
            db,
            spool_dir: spool_dir.clone(),
            durable,
            flushing_since: flushing_since.clone(),
            pg: None,
        };
        let committer = Committer {
            spool_dir: spool_dir.clone(),
            files: durable_files,
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

    /// Opens the store for a node of a cluster (SPEC 13): the node-local state on sled as
    /// [`Store::open`] does, the shared concerns on the database `opts` names. Waits up to
    /// `first_try` for the database: a node whose id another live node holds is refused;
    /// an unreachable database leaves the node degraded until it answers. Shared today:
    /// suppressions, templates, consent and frequency counters, domain verdicts.
    pub async fn open_cluster(
        data_dir: &Path,
        opts: &pg::ClusterOptions,
        first_try: std::time::Duration,
    ) -> Result<Store, StoreError> {
        let mut store = Store::open(data_dir)?;
        let instance = node_instance(data_dir)?;
        let health = store.health();
        let db = pg::Pg::start(opts, instance, health, first_try)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let inner = Arc::get_mut(&mut store.inner).ok_or(StoreError::Closed)?;
        inner.shared.suppressions = Box::new(pg::PgSuppressions(db.clone()));
        inner.shared.templates = Box::new(pg::PgTemplates(db.clone()));
        inner.shared.policy = Box::new(pg::PgPolicy(db.clone()));
        inner.shared.domains = Box::new(pg::PgDomains(db.clone()));
        inner.shared.buckets = Box::new(pg::PgBuckets(db.clone()));
        inner.shared.accounts = Box::new(pg::PgAccounts(db.clone()));
        Shared::cluster_messages(inner, &db)?;
        inner.pg = Some(db);
        Ok(store)
    }

    /// Cluster mode: the key every node uses for `name` (`candidate`, this node's own,
    /// when it is the first to offer one). `None` on a node alone.
    pub async fn shared_key(
        &self,
        name: &str,
        candidate: [u8; 32],
    ) -> Result<Option<[u8; 32]>, StoreError> {
        let Some(pg) = &self.inner.pg else {
            return Ok(None);
        };
        let value = pg.secret(name, &candidate).await?;
        let key = <[u8; 32]>::try_from(value.as_slice()).map_err(|_| StoreError::Corrupt {
            tree: "secrets",
            key: name.into(),
            reason: format!("{} bytes, not 32", value.len()),
        })?;
        Ok(Some(key))
    }

    /// `postern cluster adopt`: this stopped node's shared state into the empty database
    /// `opts` names (SPEC 13). Returns the rows copied per table.
    pub async fn adopt(
        data_dir: &Path,
        link_key: [u8; 32],
        opts: &pg::ClusterOptions,
    ) -> Result<pg::Adopted, StoreError> {
        let store = Store::open(data_dir)?;
        pg::adopt::adopt(&store.inner.db, data_dir, link_key, opts).await
    }

    /// Cluster mode: brings the files of `dir` (known to the cluster as `label`, e.g.
    /// "dkim") in step with the other nodes': keys made elsewhere are copied here, the
    /// newest rotation state wins. Returns the names of the files changed here; nothing on
    /// a node alone.
    pub async fn sync_files(&self, label: &str, dir: &Path) -> Result<Vec<String>, StoreError> {
        match &self.inner.pg {
            Some(pg) => pg.sync_files(label, dir).await,
            None => Ok(Vec::new()),
        }
    }

    /// Whether this node shares state through a database (SPEC 13).
    pub fn clustered(&self) -> bool {
        self.inner.pg.is_some()
    }

    /// Cluster mode: the shared database's query latencies.
    pub fn cluster_stats(&self) -> Option<&pg::QueryStats> {
        self.inner.pg.as_deref().map(|p| &p.stats)
    }

    /// The TPS buckets of every service (SPEC 4.2).
    pub fn buckets(&self) -> &dyn Buckets {
        &*self.inner.shared.buckets
    }

    /// Suppression entries (SPEC 8).
    pub fn suppressions(&self) -> &dyn Suppressions {
        &*self.inner.shared.suppressions
    }

    /// Templates of every service.
    pub fn templates(&self) -> &dyn Templates {
        &*self.inner.shared.templates
    }

    /// Consent lists and frequency counters (contact policy).
    pub fn policy(&self) -> &dyn Policy {
        &*self.inner.shared.policy
    }

    /// Domain verification verdicts.
    pub fn domains(&self) -> &dyn Domains {
        &*self.inner.shared.domains
    }

    /// Outbound transactions: status, history, open and click counters.
    pub fn messages(&self) -> &dyn Messages {
        &*self.inner.shared.messages
    }

    /// OAuth2 grants of smarthost routes and the authorization flows under way (SPEC 15).
    pub fn accounts(&self) -> &dyn Accounts {
        &*self.inner.shared.accounts
    }

    /// What routes and their feedback need kept: route message ids, SNS de-duplication,
    /// rotated refresh tokens.
    pub fn routes(&self) -> &dyn RouteState {
        &*self.inner.shared.routes
    }

    /// Waits until every write made before this call is durable. Concurrent callers are
    /// served by one `fsync`.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.inner.durable.commit().await
    }

    /// [`Store::commit`], also making `files` (new spool files) and their directory durable.
    pub async fn commit_with(&self, files: Vec<Arc<std::fs::File>>) -> Result<(), StoreError> {
        self.inner.durable.commit_with(files).await
    }

    /// The store's health flags (free space, failed writes), shared with the daemon.
    pub fn health(&self) -> Arc<Health> {
        self.inner.durable.health.clone()
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

    /// Notes a mail `asset` received, for the admin page (this node's, at most
    /// [`recent::KEEP`] per asset; not made durable on its own).
    pub fn note_inbound(&self, asset: &str, note: &recent::InboundNote) -> Result<(), StoreError> {
        recent::note(&self.inner.db.open_tree("recent_inbound")?, asset, note)
    }

    /// The last mails `asset` received on this node, newest first.
    pub fn recent_inbound(&self, asset: &str) -> Result<Vec<recent::InboundNote>, StoreError> {
        recent::recent(&self.inner.db.open_tree("recent_inbound")?, asset)
    }

    fn quarantine(&self, tree: &'static str, key: &[u8], value: &[u8], reason: &str) {
        self.inner.quarantine.put(tree, key, value, reason)
    }

    /// Removes finished transactions older than their retention, with what refers to them
    /// (route ids, open and click counters) and the SNS de-duplication entries of the same
    /// age. Returns how many transactions went.
    pub fn collect_finished(&self) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(messages::FINISHED_RETENTION_MS);
        self.routes().forget_sns_seen_before(cutoff)?;
        let mut n = 0;
        for record in self.messages().finished_before(cutoff)? {
            self.routes().forget_route_ids(&record.route_ids)?;
            self.messages().forget_finished(&record.tid)?;
            n += 1;
        }
        Ok(n)
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
        self.inner.quarantine.tree.len()
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
