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

pub mod api;
pub mod compose;
pub mod config;
pub mod dkim;
pub mod domains;
pub mod events;
pub mod feedback;
pub mod health;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod queue;
pub mod route;
pub mod schedule;
pub mod ses_events;
pub mod smtp;
pub mod sns;
pub mod store;
pub mod suppression;
pub mod tokens;
pub mod track;
pub mod types;
pub mod urls;

use config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

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
    Dkim(#[from] dkim::DkimError),
}

/// The daemon's shared state.
pub struct Daemon {
    config: Arc<RwLock<Arc<Config>>>,
    config_path: Option<PathBuf>,
    pub store: store::Store,
    pub metrics: Arc<metrics::Metrics>,
    pub inbound: Arc<inbound::Inbound>,
    pub signer: tokens::Signer,
    pub outbox: events::Outbox,
    pub conns: Arc<smtp::ConnLimits>,
    pub queue: queue::Queue,
    pub queue_worker: Arc<queue::QueueWorker>,
    pub limiter: api::ratelimit::Limiter,
    pub url_policy: urls::Policy,
    pub keys: Arc<dkim::Keys>,
    /// Verifies SNS messages at `/ses/events` (caches signing certificates).
    pub sns: sns::Verifier,
    /// Free space and store writability: whether new work is taken (SPEC 6.3).
    pub health: Arc<health::Health>,
    tls: RwLock<Option<TlsAcceptor>>,
    ready: AtomicBool,
}

impl Daemon {
    /// The configuration in force (replaced as a whole on reload).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Re-reads the config file and the TLS certificate (SIGHUP). A bad file changes
    /// nothing. Listen addresses and the resolver need a restart; that is logged.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config_path else {
            return Err("no configuration file to reload".into());
        };
        let new = Config::load(path).map_err(|e| e.to_string())?;
        let tls = smtp::tls_from_config(&new)?;
        let old = self.config();
        if old.smtp.listen != new.smtp.listen || old.http.listen != new.http.listen {
            tracing::warn!("listen addresses changed: they take effect after a restart");
        }
        if old.dns.resolver != new.dns.resolver || old.server.data_dir != new.server.data_dir {
            tracing::warn!("dns.resolver and server.data_dir take effect after a restart");
        }
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        tracing::info!("configuration and certificates reloaded");
        Ok(())
    }
}

/// What one pass of [`Daemon::collect_garbage`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Dead letters past `webhooks.dead_letter_days` (their bodies go with them).
    pub dead_letters: usize,
    /// Stored inbound messages and bodies no record names.
    pub spool: usize,
    /// Frequency counters whose window ended.
    pub counters: usize,
    /// Finished outbound transactions past their retention.
    pub finished: usize,
}

impl Daemon {
    /// One garbage-collection pass as seen at `now_ms` (SPEC 6.3: disk use is bounded by
    /// retention). Dead letters go first, so the messages they pinned are released in the
    /// same pass. Blocking: call it off the async workers. The periodic task passes the
    /// wall clock; tests pass a later time instead of waiting days.
    pub fn collect_garbage(&self, now_ms: u64) -> Result<Collected, store::StoreError> {
        let config = self.config();
        let keep_dead = u64::from(config.webhooks.dead_letter_days) * 86_400_000;
        let window_ms = |group: &str| {
            config
                .contact_policy(group)
                .map(|g| g.window)
                .unwrap_or(86_400)
                .saturating_mul(1000)
        };
        let collected = Collected {
            dead_letters: self.store.collect_dead_letters(now_ms, keep_dead)?,
            spool: self.store.collect_garbage_at(now_ms)?,
            counters: self.store.prune_frequency(now_ms, &window_ms)?,
            finished: self.store.collect_finished()?,
        };
        if collected != Collected::default() {
            tracing::info!(?collected, "garbage collected");
        }
        Ok(collected)
    }
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
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let store = store::Store::open(&data_dir)?;
    let signer = tokens::Signer::load_or_create(&data_dir).map_err(StartError::Key)?;
    // One bound on heavy parsing (MO rendering, authentication, reports) for the daemon.
    let heavy = inbound::heavy::Heavy::per_core();
    let verifier = inbound::auth::Verifier::new(&config.dns.resolver)?.with_heavy(heavy.clone());
    let tls = smtp::tls_from_config(&config).map_err(StartError::Tls)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let (outbox, outbox_rx) = events::Outbox::channel();
    let client = events::Worker::http_client(Duration::from_secs(config.webhooks.timeout.max(1)));
    let url_policy =
        urls::Policy::new(&config.outbound.allow_private_targets).map_err(StartError::Config)?;
    let guarded_client = urls::guarded_client(
        &url_policy,
        Duration::from_secs(config.webhooks.timeout.max(1)),
    );
    let fetcher = urls::guarded_client(
        &url_policy,
        Duration::from_secs(config.queue.fetch_timeout.max(1)),
    );
    // Every asset domain's DKIM key exists before the first send, so first sends never race.
    let keys = Arc::new(dkim::Keys::default());
    for asset in &config.assets {
        if let Some(dk) = &asset.dkim {
            for domain in &asset.domains {
                let (dir, d, sel, alg) = (
                    data_dir.clone(),
                    domain.clone(),
                    dk.selector.clone(),
                    dk.algorithm,
                );
                let k = keys.clone();
                tokio::task::spawn_blocking(move || k.get(&dir, &d, &sel, alg))
                    .await
                    .map_err(|e| StartError::Config(e.to_string()))??;
            }
        }
    }
    let (queue, queue_rx) = queue::Queue::channel();
    let shared_config = Arc::new(RwLock::new(Arc::new(config)));
    let queue_worker = Arc::new(queue::QueueWorker {
        store: store.clone(),
        config: shared_config.clone(),
        outbox: outbox.clone(),
        queue: queue.clone(),
        keys: keys.clone(),
        signer: signer.clone(),
        fetcher,
        metrics: metrics.clone(),
        routes: Default::default(),
        unrecorded: Default::default(),
        in_flight: Default::default(),
    });

    let (feedback_tx, feedback_rx) = tokio::sync::mpsc::unbounded_channel();
    let inbound = Arc::new(inbound::Inbound {
        store: store.clone(),
        auth: verifier,
        signer: signer.clone(),
        outbox: outbox.clone(),
        metrics: metrics.clone(),
        feedback: feedback_tx,
    });
    let daemon = Arc::new(Daemon {
        config: shared_config.clone(),
        config_path,
        store: store.clone(),
        metrics: metrics.clone(),
        inbound,
        signer: signer.clone(),
        outbox: outbox.clone(),
        conns: Arc::new(smtp::ConnLimits::default()),
        queue,
        queue_worker: queue_worker.clone(),
        limiter: api::ratelimit::Limiter::default(),
        url_policy,
        keys,
        sns: sns::Verifier::default(),
        health: store.health(),
        tls: RwLock::new(tls),
        ready: AtomicBool::new(false),
    });

    let gc = daemon.clone();
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || gc.collect_garbage(store::now_ms())).await
    {
        tracing::warn!(error = %e, "garbage collection failed");
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let webhook_concurrency = daemon.config().webhooks.concurrency;
    let worker = Arc::new(events::Worker {
        store: store.clone(),
        config: shared_config,
        metrics,
        signer,
        outbox,
        client,
        guarded_client,
        heavy,
        large: events::Worker::large_slots(webhook_concurrency),
    });
    let worker = tokio::spawn(worker.run(outbox_rx, shutdown_rx.clone()));
    let queue_task = tokio::spawn(queue_worker.run(queue_rx, shutdown_rx.clone()));

    let mut tasks = Vec::new();
    let mut smtp_addrs = Vec::new();
    for l in listeners.smtp {
        smtp_addrs.push(l.local_addr().map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?);
        tasks.push(tokio::spawn(smtp::accept_loop(
            l,
            daemon.clone(),
            shutdown_rx.clone(),
        )));
    }
    let http_addr = listeners
        .http
        .local_addr()
        .map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
    let app = http::router(daemon.clone());
    let http_config = daemon.config().http.clone();
    let http_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        http::serve(listeners.http, app, &http_config, http_shutdown).await
    }));
    tasks.push(tokio::spawn(gc_loop(daemon.clone())));
    tasks.push(tokio::spawn(inbound::reports::run(
        daemon.clone(),
        feedback_rx,
    )));
    tasks.push(tokio::spawn(health::monitor(daemon.clone())));

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

/// Every minute: expired dead letters and the bodies they held, spool entries past
/// retention, unreferenced bodies, ended frequency windows, old finished transactions.
async fn gc_loop(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let d = daemon.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || d.collect_garbage(store::now_ms())).await
        {
            tracing::warn!(error = %e, "garbage collection failed");
        }
    }
}
