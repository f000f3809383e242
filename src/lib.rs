//! Postern: a self-hosted transactional mail daemon.
//!
//! Code map (see ARCHITECTURE.md for the data paths and invariants):
//! - [`config`]: typed TOML, validation with `file:line`; the only reader of env and files.
//! - [`store`]: the only module that touches sled and the spool directory.
//! - [`smtp`]: listener, connection caps, STARTTLS, the session state machine, DATA scanner.
//! - [`inbound`]: recipient policy, SPF/DKIM/DMARC/ARC, accept (spool + events), MO JSON.
//! - [`events`]: the durable webhook outbox worker (retry, signature, dead letters).
//! - [`http`]: axum routes (health, metrics, admin, inbound attachment links).
//! - [`tokens`]: signed tokens for public links. [`metrics`]: Prometheus counters.
//!
//! [`start`] runs the whole daemon on listeners the caller bound, so tests can use port 0
//! and stop it through the returned [`Handle`].

pub mod config;
pub mod daemon;
pub mod feedback;
pub mod health;
pub mod heavy;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod schedule;
pub mod smtp;
pub mod store;
pub mod webhooks;

use config::{Config, SharedConfig};
use daemon::Daemon;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Sockets bound before the daemon starts (so systemd ports and test port 0 both work).
pub struct Listeners {
    pub smtp: Vec<TcpListener>,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let mut smtp = Vec::new();
        for addr in &config.smtp.listen {
            smtp.push(
                listen(*addr).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("smtp.listen {addr}: {e}"))
                })?,
            );
        }
        let http = TcpListener::bind(config.http.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("http.listen {}: {e}", config.http.listen))
        })?;
        Ok(Listeners { smtp, http })
    }
}

/// Binds an SMTP listener with a deep accept queue: bursts of new connections (an MX
/// gets them) must not wait for SYN retries behind the default backlog of 128.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("signing key: {0}")]
    Key(std::io::Error),
    #[error(transparent)]
    Resolver(#[from] inbound::auth::ResolverError),
    #[error("STARTTLS certificate: {0}")]
    Tls(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Dkim(#[from] crate::outbound::dkim::DkimError),
}

/// A running daemon.
pub struct Handle {
    pub daemon: Arc<Daemon>,
    pub smtp_addrs: Vec<SocketAddr>,
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    worker: JoinHandle<()>,
    queue_task: JoinHandle<()>,
}

impl Handle {
    /// SIGTERM semantics: stop accepting, let in-flight SMTP transactions finish (up to
    /// `smtp.shutdown_grace`; idle sessions get 421 at once, the others at the end of the
    /// grace, whatever they wait for), let in-flight webhooks finish, flush, return.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.daemon.config().smtp.shutdown_grace);
        let _ = self.shutdown.send(true);
        // Sessions cut themselves off at the end of the grace; the second wait covers
        // their last non-blocking write and a store step in flight.
        if !self.daemon.conns.drained(grace).await
            && !self.daemon.conns.drained(Duration::from_secs(2)).await
        {
            tracing::warn!(
                open = self.daemon.conns.open(),
                "shutdown grace ended with sessions open"
            );
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.queue_task.await;
        let _ = self.worker.await;
        if let Err(e) = self.daemon.store.flush_now() {
            tracing::error!(error = %e, "final flush failed");
        }
        // Tasks that ended their counted work a moment ago (HTTP keep-alive connections
        // closing after the graceful signal, SMTP sessions, webhook deliveries past their
        // permit) may still hold the store: wait for them (bounded), so that when this
        // returns the database is closed and its directory can be opened again.
        let store = self.daemon.store.clone();
        drop(self.daemon);
        if !store.close(Duration::from_secs(5)).await {
            tracing::warn!(
                "tasks still hold the store after shutdown; the database closes when they end"
            );
        }
        tracing::info!("stopped");
    }

    /// Waits for the shutdown signal, then shuts down.
    pub async fn run_until(self, mut signal: watch::Receiver<bool>) {
        while !*signal.borrow() {
            if signal.changed().await.is_err() {
                break;
            }
        }
        self.shutdown().await;
    }
}

/// Opens the store, loads the outbox, starts the SMTP and HTTP listeners and the webhook
/// worker. When this returns, the daemon is serving and ready.
pub async fn start(
    config: Config,
    config_path: Option<PathBuf>,
    listeners: Listeners,
) -> Result<Handle, StartError> {
    let (daemon, workers) = compose(config, config_path).await?;
    let gc = daemon.clone();
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || gc.collect_garbage(model::time::now_ms())).await
    {
        tracing::warn!(error = %e, "garbage collection failed");
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker = tokio::spawn(workers.webhooks.run(workers.outbox_rx, shutdown_rx.clone()));
    let queue_worker = daemon.queue_worker.clone();
    let queue_task = tokio::spawn(queue_worker.run(workers.queue_rx, shutdown_rx.clone()));
    let (mut tasks, smtp_addrs, http_addr) = serve(listeners, &daemon, &shutdown_rx)?;
    tasks.extend(background(&daemon, workers.feedback_rx));

    daemon.ready.store(true, Ordering::Release);
    tracing::info!(smtp = ?smtp_addrs, http = %http_addr, "postern ready");
    Ok(Handle {
        daemon,
        smtp_addrs,
        http_addr,
        shutdown: shutdown_tx,
        tasks,
        worker,
        queue_task,
    })
}

/// The workers [`compose`] built and [`start`] runs, with the channels that feed them.
struct Workers {
    webhooks: Arc<webhooks::Worker>,
    outbox_rx: tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
    queue_rx: tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
    feedback_rx: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Builds the daemon's parts from the configuration: the store and signing key in
/// `data_dir`, the DKIM keys, the queue, inbound and webhook workers (not yet running).
async fn compose(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<(Arc<Daemon>, Workers), StartError> {
    let (store, signer) = open_data_dir(&config).await?;
    // One bound on heavy parsing (MO rendering, authentication, reports) for the daemon.
    let heavy = heavy::Heavy::per_core();
    let verifier = inbound::auth::Verifier::new(&config.dns.resolver)?.with_heavy(heavy.clone());
    let tls = crate::inbound::tls::tls_from_config(&config).map_err(StartError::Tls)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let (outbox, outbox_rx) = webhooks::Outbox::channel();
    let url_policy = crate::model::urls::Policy::new(&config.outbound.allow_private_targets)
        .map_err(StartError::Config)?;
    let keys = cluster_dkim_keys(&store, &config).await?;
    let (queue, queue_rx) = crate::outbound::queue::Queue::channel();
    // Who holds this node's OAuth2 refresh leases: its id.
    let oauth = crate::outbound::oauth::OAuth::new(store.clone(), config.node_id());
    let webhook_timeout = Duration::from_secs(config.webhooks.timeout.max(1));
    let fetch_timeout = Duration::from_secs(config.queue.fetch_timeout.max(1));
    let webhook_concurrency = config.webhooks.concurrency;
    let shared_config = SharedConfig::new(config);
    let webhooks = Arc::new(webhooks::Worker {
        store: store.clone(),
        config: shared_config.clone(),
        metrics: metrics.clone(),
        signer: signer.clone(),
        outbox: outbox.clone(),
        client: webhooks::Worker::http_client(webhook_timeout),
        guarded_client: crate::model::urls::guarded_client(&url_policy, webhook_timeout),
        heavy,
        large: webhooks::Worker::large_slots(webhook_concurrency),
    });
    let fetcher = crate::model::urls::guarded_client(&url_policy, fetch_timeout);
    let queue_worker = Arc::new(crate::outbound::queue::QueueWorker {
        store: store.clone(),
        config: shared_config.clone(),
        outbox: outbox.clone(),
        queue: queue.clone(),
        keys: keys.clone(),
        signer: signer.clone(),
        fetcher,
        metrics: metrics.clone(),
        oauth: oauth.clone(),
        routes: Default::default(),
        unrecorded: Default::default(),
        in_flight: Default::default(),
    });
    let (inbound, feedback_rx) = inbound_part(&store, verifier, &signer, &outbox, &metrics);
    let daemon = Arc::new(Daemon {
        config: shared_config,
        config_path,
        store: store.clone(),
        metrics,
        inbound,
        signer,
        outbox,
        conns: Arc::new(crate::inbound::conns::ConnLimits::default()),
        queue,
        queue_worker,
        oauth,
        url_policy,
        keys,
        sns: feedback::sns::Verifier::default(),
        health: store.health(),
        tls: RwLock::new(tls),
        ready: AtomicBool::new(false),
    });
    let workers = Workers {
        webhooks,
        outbox_rx,
        queue_rx,
        feedback_rx,
    };
    Ok((daemon, workers))
}

/// The inbound side (SMTP sessions' use cases) and the channel that feeds DSNs and reports
/// to the feedback worker.
fn inbound_part(
    store: &store::Store,
    auth: inbound::auth::Verifier,
    signer: &crate::model::tokens::Signer,
    outbox: &webhooks::Outbox,
    metrics: &Arc<metrics::Metrics>,
) -> (
    Arc<inbound::Inbound>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (feedback, feedback_rx) = tokio::sync::mpsc::unbounded_channel();
    let inbound = Arc::new(inbound::Inbound {
        store: store.clone(),
        auth,
        signer: signer.clone(),
        outbox: outbox.clone(),
        metrics: metrics.clone(),
        feedback,
    });
    (inbound, feedback_rx)
}

/// Creates `data_dir` if needed and opens the store and the link-signing key in it; in
/// cluster mode the store also joins the shared database (SPEC 13).
async fn open_data_dir(
    config: &Config,
) -> Result<(store::Store, crate::model::tokens::Signer), StartError> {
    let data_dir = &config.server.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let store = match &config.cluster {
        None => store::Store::open(data_dir)?,
        Some(c) => {
            let opts = store::pg::ClusterOptions {
                database_url: c.database_url.expose().to_string(),
                node_id: c.node_id.clone(),
            };
            store::Store::open_cluster(data_dir, &opts, std::time::Duration::from_secs(5)).await?
        }
    };
    let mut signer =
        crate::model::tokens::Signer::load_or_create(data_dir).map_err(StartError::Key)?;
    // Cluster mode: every node signs links and VERP addresses with one key (SPEC 13).
    match store.shared_key("links", signer.key()).await {
        Ok(Some(key)) if key != signer.key() => {
            signer = crate::model::tokens::Signer::adopt(data_dir, key).map_err(StartError::Key)?;
            tracing::info!("link-signing key taken from the cluster");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "link-signing key not shared yet: links this node signs verify on the others once it has joined and restarted")
        }
    }
    Ok((store, signer))
}

/// `postern cluster adopt` (SPEC 13): the stopped node's shared state from its
/// `data_dir` into the empty database its `[cluster]` table names.
pub async fn cluster_adopt(config: &Config) -> Result<store::pg::Adopted, String> {
    let Some(c) = &config.cluster else {
        return Err(
            "the configuration has no [cluster] table: add database_url and node_id".into(),
        );
    };
    let data_dir = &config.server.data_dir;
    let signer = crate::model::tokens::Signer::load_or_create(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let opts = store::pg::ClusterOptions {
        database_url: c.database_url.expose().to_string(),
        node_id: c.node_id.clone(),
    };
    store::Store::adopt(data_dir, signer.key(), &opts)
        .await
        .map_err(|e| match e {
            store::StoreError::Db(e) => format!(
                "{}: {e} (is the node still running? stop it first)",
                data_dir.display()
            ),
            e => e.to_string(),
        })
}

/// [`dkim_keys`], in cluster mode between two passes over the keys the other nodes hold:
/// the first takes the keys they made, the second offers this node's and takes the one
/// that won where two nodes made one at once (SPEC 13). An unreachable database leaves
/// the periodic pass to do it.
async fn cluster_dkim_keys(
    store: &store::Store,
    config: &Config,
) -> Result<Arc<crate::outbound::dkim::Keys>, StartError> {
    let dir = config.server.data_dir.join("dkim");
    let sync = || async {
        if let Err(e) = store.sync_files("dkim", &dir).await {
            tracing::warn!(error = %e, "DKIM keys not taken from the cluster yet");
        }
    };
    if store.clustered() {
        sync().await;
    }
    let keys = dkim_keys(config, store.clustered()).await?;
    if store.clustered() {
        sync().await;
        keys.forget();
    }
    Ok(keys)
}

/// Every asset domain's configured DKIM key exists before the first send, so first sends
/// never race. In a cluster the default key of a sending asset without `[asset.dkim]` is
/// made now too (alone, on first use): made later, each node would make its own.
async fn dkim_keys(
    config: &Config,
    every_asset: bool,
) -> Result<Arc<crate::outbound::dkim::Keys>, StartError> {
    let keys = Arc::new(crate::outbound::dkim::Keys::default());
    for asset in &config.assets {
        if asset.dkim.is_none() && !(every_asset && asset.route.is_some()) {
            continue;
        }
        let (selector, algorithm) = asset.dkim_key();
        for domain in &asset.domains {
            let (dir, d, sel, alg) = (
                config.server.data_dir.clone(),
                domain.clone(),
                selector.to_string(),
                algorithm,
            );
            let k = keys.clone();
            tokio::task::spawn_blocking(move || k.get(&dir, &d, &sel, alg))
                .await
                .map_err(|e| StartError::Config(e.to_string()))??;
        }
    }
    Ok(keys)
}

/// Starts the SMTP accept loops and the HTTP server on the bound listeners.
#[allow(clippy::type_complexity)]
fn serve(
    listeners: Listeners,
    daemon: &Arc<Daemon>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Vec<JoinHandle<()>>, Vec<SocketAddr>, SocketAddr), StartError> {
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| StartError::DataDir {
            path: daemon.config().server.data_dir.clone(),
            source,
        })
    };
    let mut tasks = Vec::new();
    let mut smtp_addrs = Vec::new();
    for l in listeners.smtp {
        smtp_addrs.push(local(&l)?);
        tasks.push(tokio::spawn(smtp::accept_loop(
            l,
            daemon.clone(),
            shutdown.clone(),
        )));
    }
    let http_addr = local(&listeners.http)?;
    let app = http::router(daemon.clone());
    let http_config = daemon.config().http.clone();
    let http_shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        http::serve(listeners.http, app, &http_config, http_shutdown).await
    }));
    Ok((tasks, smtp_addrs, http_addr))
}

/// The periodic and background tasks: garbage collection, the feedback worker, the
/// storage monitor, and in cluster mode the DKIM files' synchronisation.
fn background(
    daemon: &Arc<Daemon>,
    feedback_rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Vec<JoinHandle<()>> {
    let reports = feedback::reports::Reports {
        store: daemon.store.clone(),
        outbox: daemon.outbox.clone(),
        signer: daemon.signer.clone(),
        config: daemon.config.clone(),
        heavy: daemon.inbound.auth.heavy().clone(),
    };
    let mut tasks = vec![
        tokio::spawn(daemon::gc_loop(daemon.clone())),
        tokio::spawn(feedback::reports::run(Arc::new(reports), feedback_rx)),
        tokio::spawn(health::monitor(
            daemon.health.clone(),
            daemon.store.clone(),
            daemon.config.clone(),
            daemon.queue_worker.clone(),
        )),
    ];
    if daemon.store.clustered() {
        tasks.push(tokio::spawn(daemon::dkim_sync_loop(daemon.clone())));
    }
    let queue = daemon.queue_worker.clone();
    let woken = move |asset: String| {
        let queue = queue.clone();
        tokio::spawn(async move { queue.wake_asset(&asset).await });
    };
    tasks.push(tokio::spawn(
        daemon.oauth.clone().watch(daemon.config.clone(), woken),
    ));
    tasks
}
