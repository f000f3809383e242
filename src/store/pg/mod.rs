//! The state several nodes share, on PostgreSQL (SPEC 13): the only module that knows SQL.
//!
//! One pool per node. A keeper task connects, applies the embedded migrations under an
//! advisory lock, claims this node's id, and then checks the database every second; its
//! verdict is [`Health::database_up`], which the API's doors, `/readyz` and the queue read.
//! While the database is unreachable every query fails at once with
//! [`StoreError::Database`] rather than waiting on the pool, so callers can defer, answer
//! 503 or keep the work in sled. Each concern's SQL lives in its own file.

mod accounts;
pub(super) mod adopt;
mod bucket;
mod domains;
mod files;
mod messages;
mod policy;
mod suppression;
mod templates;

pub(super) use accounts::PgAccounts;
pub use adopt::Adopted;
pub(super) use bucket::PgBuckets;
pub(super) use domains::PgDomains;
pub(super) use messages::{mirror, ClusterMessages, ClusterRouteState, MirrorState};
pub(super) use policy::PgPolicy;
pub(super) use suppression::PgSuppressions;
pub(super) use templates::PgTemplates;

use super::StoreError;
use crate::model::health::Health;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a node needs to join the cluster (`[cluster]` in the configuration).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `postgres://…`, with `sslmode` (`disable`, `prefer`: the default, `require`).
    pub database_url: String,
    /// Unique among the live nodes.
    pub node_id: String,
}

/// The schema, one entry per version, applied in order at start under an advisory lock.
/// Never edit an entry that has shipped: add the next one.
const MIGRATIONS: &[&str] = &[
    // 1: nodes and the first shared concerns.
    "CREATE TABLE postern_nodes (
        node_id text PRIMARY KEY,
        instance text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now());
     CREATE TABLE suppressions (
        asset_id text NOT NULL,
        address text NOT NULL,
        reason text NOT NULL,
        since_ms bigint NOT NULL,
        expires_ms bigint,
        source text NOT NULL,
        PRIMARY KEY (asset_id, address));
     CREATE TABLE templates (
        service_id text NOT NULL,
        template_id text NOT NULL,
        body text NOT NULL,
        PRIMARY KEY (service_id, template_id));
     CREATE TABLE consent (
        grp text NOT NULL,
        address text NOT NULL,
        PRIMARY KEY (grp, address));
     CREATE TABLE sends (
        grp text NOT NULL,
        address text NOT NULL,
        at_ms bigint NOT NULL);
     CREATE INDEX sends_by_recipient ON sends (grp, address, at_ms);
     CREATE TABLE domains (
        domain text PRIMARY KEY,
        verified boolean NOT NULL,
        checked_ms bigint NOT NULL);
     CREATE TABLE secrets (
        name text PRIMARY KEY,
        value bytea NOT NULL);
     CREATE TABLE buckets (
        service text PRIMARY KEY,
        tat double precision NOT NULL);",
    // 2: transactions (status, history, per-request data) and what feedback finds them by.
    "CREATE TABLE transactions (
        tid text PRIMARY KEY,
        owner text NOT NULL,
        state text NOT NULL,
        finished boolean NOT NULL,
        created_ms bigint NOT NULL,
        updated_ms bigint NOT NULL,
        record bytea NOT NULL);
     CREATE INDEX transactions_finished ON transactions (created_ms) WHERE finished;
     CREATE TABLE route_ids (
        id text PRIMARY KEY,
        tid text NOT NULL);
     CREATE INDEX route_ids_by_tid ON route_ids (tid);
     CREATE TABLE track (
        tid text NOT NULL,
        recipient text NOT NULL,
        key text NOT NULL,
        window_ms bigint NOT NULL,
        count bigint NOT NULL,
        PRIMARY KEY (tid, recipient, key));
     CREATE TABLE sns_seen (
        message_id text PRIMARY KEY,
        seen_ms bigint NOT NULL);",
    // 3: files every node holds alike (DKIM keys and rotation states).
    "CREATE TABLE files (
        dir text NOT NULL,
        name text NOT NULL,
        content bytea NOT NULL,
        updated_ms bigint NOT NULL,
        PRIMARY KEY (dir, name));",
    // 4: an SNS message is claimed before it is recorded, so two nodes given the same
    // message at once record it once.
    "ALTER TABLE sns_seen ADD COLUMN recorded boolean NOT NULL DEFAULT true;",
    // 5: the TPS buckets are rate state, not records: unlogged, a request's take waits
    // for no WAL flush (a database crash empties them, which only forgets recent sends).
    "ALTER TABLE buckets SET UNLOGGED;",
    // 6: the message log (SPEC 14): searchable columns, filled from the records already
    // there, and an index per filter.
    "ALTER TABLE transactions ADD COLUMN sender text, ADD COLUMN asset text,
        ADD COLUMN correlation_id text, ADD COLUMN recipients text[];
     UPDATE transactions t SET sender = lower(j->>'from'), asset = j->>'asset_id',
        correlation_id = j->>'correlation_id',
        recipients = ARRAY(SELECT lower(x->>'address') FROM jsonb_array_elements(j->'recipients') x)
     FROM (SELECT tid, convert_from(substring(record FROM 2), 'UTF8')::jsonb AS j
           FROM transactions) s
     WHERE s.tid = t.tid;
     CREATE INDEX transactions_created ON transactions (created_ms DESC, tid DESC);
     CREATE INDEX transactions_recipients ON transactions USING gin (recipients)
        WITH (fastupdate = off);
     CREATE INDEX transactions_sender ON transactions (sender, created_ms DESC);
     CREATE INDEX transactions_asset ON transactions (asset, created_ms DESC);
     CREATE INDEX transactions_correlation ON transactions (correlation_id, created_ms DESC);",
    // 7: OAuth2 grants of smarthost routes, shared with their refresh lease, and the
    // authorization flows under way (SPEC 15).
    "CREATE TABLE route_tokens (asset_id text PRIMARY KEY, body text NOT NULL);
     CREATE TABLE oauth_flows (id text PRIMARY KEY, created_ms bigint NOT NULL, body text NOT NULL);",
];

/// The advisory lock key under which migrations run ("pstn").
const MIGRATION_LOCK: i64 = 0x7073_746e;

/// A node whose heartbeat is older than this no longer holds its id.
const NODE_LEASE: &str = "30 seconds";

/// Upper bounds (seconds) of `postern_cluster_query_seconds`' buckets.
pub const QUERY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Query latencies, for `postern_cluster_query_seconds`.
#[derive(Default)]
pub struct QueryStats {
    /// Per bucket (not cumulative), +Inf last.
    buckets: [AtomicU64; QUERY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl QueryStats {
    fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = QUERY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(QUERY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts per bucket (not cumulative, +Inf last) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let counts = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (counts, sum)
    }
}

/// The pool and what the keeper task knows about the database.
pub(super) struct Pg {
    pool: Pool,
    /// Migrations applied and the node id held: queries may run.
    ready: AtomicBool,
    health: Arc<Health>,
    pub(super) stats: QueryStats,
    node_id: String,
    /// Identifies this node's data directory, so the same node restarting reclaims its id
    /// at once while another machine given the same id is refused.
    instance: String,
}

/// Why a node may not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cluster.database_url: {0}")]
    Url(String),
    #[error("cluster.node_id \"{0}\" is held by another live node; give every node its own id")]
    NodeIdTaken(String),
}

impl Pg {
    /// Builds the pool and starts the keeper. Waits up to `first_try` for a first
    /// connection: a node whose id is taken refuses to start; an unreachable database
    /// leaves the node degraded, and the keeper connects when it can (SPEC 13).
    pub(super) async fn start(
        opts: &ClusterOptions,
        instance: String,
        health: Arc<Health>,
        first_try: Duration,
    ) -> Result<Arc<Pg>, JoinError> {
        let pool = pool(&opts.database_url)?;
        let pg = Arc::new(Pg {
            pool,
            ready: AtomicBool::new(false),
            health,
            stats: QueryStats::default(),
            node_id: opts.node_id.clone(),
            instance,
        });
        pg.health.set_database_up(false);
        match tokio::time::timeout(first_try, pg.join()).await {
            Ok(Err(JoinAttempt::Taken)) => return Err(JoinError::NodeIdTaken(pg.node_id.clone())),
            Ok(Err(JoinAttempt::Failed(e))) => {
                tracing::error!(error = %e, "database unreachable at start; running degraded until it answers")
            }
            Err(_) => {
                tracing::error!("database did not answer at start; running degraded until it does")
            }
            Ok(Ok(())) => {}
        }
        tokio::spawn(keep(Arc::downgrade(&pg)));
        Ok(pg)
    }

    /// Migrates and claims the node id; marks the database up on success.
    async fn join(&self) -> Result<(), JoinAttempt> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
        migrate(&mut client)
            .await
            .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
        self.heartbeat_with(&client).await?;
        self.ready.store(true, Ordering::Release);
        self.mark(true);
        Ok(())
    }

    async fn heartbeat_with(&self, client: &deadpool_postgres::Client) -> Result<(), JoinAttempt> {
        let claimed = client
            .query_opt(
                &format!(
                    "INSERT INTO postern_nodes (node_id, instance) VALUES ($1, $2)
                     ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), instance = $2
                     WHERE postern_nodes.instance = $2
                        OR postern_nodes.heartbeat_at < now() - interval '{NODE_LEASE}'
                     RETURNING node_id"
                ),
                &[&self.node_id, &self.instance],
            )
            .await
            .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
        if claimed.is_none() {
            return Err(JoinAttempt::Taken);
        }
        Ok(())
    }

    fn mark(&self, up: bool) {
        if self.health.database_up() != up {
            if up {
                tracing::info!("database reachable: shared state in use");
            } else {
                tracing::error!("database unreachable: API refused, queue held, inbound kept in this node's store");
            }
        }
        self.health.set_database_up(up);
    }

    /// Runs one query (or a few on one connection), timing it. Fails at once while the
    /// database is known to be down; a lost connection marks it down.
    pub(super) async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(deadpool_postgres::Client) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        if !self.ready.load(Ordering::Acquire) || !self.health.database_up() {
            return Err(StoreError::Database("the database is unreachable".into()));
        }
        let started = Instant::now();
        let client = self.pool.get().await.map_err(|e| {
            self.mark(false);
            StoreError::Database(format!("no connection: {e}"))
        })?;
        let out = f(client).await;
        self.stats.observe(started.elapsed());
        out.map_err(|e| {
            if e.is_closed() || e.as_db_error().is_none() {
                self.mark(false);
            }
            StoreError::Database(e.to_string())
        })
    }
}

enum JoinAttempt {
    Failed(String),
    Taken,
}

/// The keeper: joins while the database is down, then checks it every second and
/// renews the node's lease every five. Ends when the store is dropped.
async fn keep(pg: std::sync::Weak<Pg>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(pg) = pg.upgrade() else { return };
        n += 1;
        if !pg.ready.load(Ordering::Acquire) || !pg.health.database_up() {
            match pg.join().await {
                Ok(()) => {}
                Err(JoinAttempt::Taken) => {
                    tracing::error!(node_id = %pg.node_id, "cluster.node_id is held by another live node; stopping");
                    pg.health.request_exit();
                    return;
                }
                Err(JoinAttempt::Failed(e)) => {
                    if n % 30 == 1 {
                        tracing::warn!(error = %e, "database still unreachable");
                    }
                }
            }
            continue;
        }
        let check = tokio::time::timeout(Duration::from_secs(3), async {
            let client = pg
                .pool
                .get()
                .await
                .map_err(|e| JoinAttempt::Failed(e.to_string()))?;
            if n.is_multiple_of(5) {
                pg.heartbeat_with(&client).await
            } else {
                client
                    .simple_query("SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| JoinAttempt::Failed(e.to_string()))
            }
        })
        .await;
        match check {
            Ok(Ok(())) => pg.mark(true),
            Ok(Err(JoinAttempt::Taken)) => {
                tracing::error!(node_id = %pg.node_id, "another node took cluster.node_id; stopping");
                pg.health.request_exit();
                return;
            }
            Ok(Err(JoinAttempt::Failed(_))) | Err(_) => pg.mark(false),
        }
    }
}

/// A pool over `url`, with TLS when `sslmode` asks for it (rustls, the web PKI roots).
fn pool(url: &str) -> Result<Pool, JoinError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| JoinError::Url(e.to_string()))?;
    config.connect_timeout(Duration::from_secs(3));
    if config.get_application_name().is_none() {
        config.application_name("postern");
    }
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Url(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let manager = Manager::from_config(
        config,
        tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(16)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| JoinError::Url(e.to_string()))
}

/// Applies the migrations this database lacks, under an advisory lock so nodes starting
/// together apply each once.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS postern_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let have: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM postern_schema", &[])
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO postern_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await
}

impl Pg {
    /// The cluster's secret `name`: `candidate` if no node stored one before (the first
    /// node's key wins, atomically), else the stored one.
    pub(super) async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.run(|c| async move {
            c.execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &candidate],
            )
            .await?;
            Ok(
                c.query_one("SELECT value FROM secrets WHERE name = $1", &[&name])
                    .await?
                    .get(0),
            )
        })
        .await
    }
}

/// Milliseconds as PostgreSQL's bigint.
pub(super) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A bigint column as milliseconds.
pub(super) fn from_ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
