//! The running daemon's parts, composed once at start (`crate::start`) and handed to the
//! transports (SMTP sessions, HTTP handlers) as their shared state. Features never see
//! this type: each is given the parts it needs, so the layers point one way.

use crate::config::{Config, SharedConfig};
use crate::model::health::Health;
use crate::{feedback, inbound, metrics, model, store, webhooks};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The daemon's shared state.
pub struct Daemon {
    pub(crate) config: SharedConfig,
    pub(crate) config_path: Option<PathBuf>,
    pub store: store::Store,
    pub metrics: Arc<metrics::Metrics>,
    pub inbound: Arc<inbound::Inbound>,
    pub signer: crate::model::tokens::Signer,
    pub outbox: webhooks::Outbox,
    pub conns: Arc<crate::inbound::conns::ConnLimits>,
    pub queue: crate::outbound::queue::Queue,
    pub queue_worker: Arc<crate::outbound::queue::QueueWorker>,
    /// OAuth2 accounts of smarthost routes: grants, flows, re-authorization flags.
    pub oauth: Arc<crate::outbound::oauth::OAuth>,
    pub url_policy: crate::model::urls::Policy,
    pub keys: Arc<crate::outbound::dkim::Keys>,
    /// Verifies SNS messages at `/ses/events` (caches signing certificates).
    pub sns: feedback::sns::Verifier,
    /// Free space and store writability: whether new work is taken (SPEC 6.3).
    pub health: Arc<Health>,
    pub(crate) tls: RwLock<Option<TlsAcceptor>>,
    pub(crate) ready: AtomicBool,
}

impl Daemon {
    /// The configuration in force (replaced as a whole on reload).
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
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
        let tls = crate::inbound::tls::tls_from_config(&new)?;
        let old = self.config();
        if old.smtp.listen != new.smtp.listen || old.http.listen != new.http.listen {
            tracing::warn!("listen addresses changed: they take effect after a restart");
        }
        if old.dns.resolver != new.dns.resolver || old.server.data_dir != new.server.data_dir {
            tracing::warn!("dns.resolver and server.data_dir take effect after a restart");
        }
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        self.config.replace(new);
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
            // Run on a blocking thread (it walks sled); the counters may be a query.
            counters: tokio::runtime::Handle::current()
                .block_on(self.store.policy().prune_frequency(now_ms, &window_ms))?,
            finished: self.store.collect_finished()?,
        };
        if collected != Collected::default() {
            tracing::info!(?collected, "garbage collected");
        }
        Ok(collected)
    }
}

/// Cluster mode: every 2 s, this node's DKIM keys and rotation states in step with the
/// other nodes' (SPEC 13: a rotation made on one node signs on all within 5 s of its grace
/// ending, since every node re-reads the state each second).
pub(crate) async fn dkim_sync_loop(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        daemon.sync_dkim().await;
    }
}

impl Daemon {
    /// One pass of [`dkim_sync_loop`]; a key replaced here empties the key cache.
    pub(crate) async fn sync_dkim(&self) {
        let dir = self.config().server.data_dir.join("dkim");
        match self.store.sync_files("dkim", &dir).await {
            Ok(changed) if changed.iter().any(|n| n.ends_with(".pem")) => {
                tracing::info!(files = ?changed, "DKIM keys taken from the cluster");
                self.keys.forget();
            }
            Ok(_) => {}
            Err(e) if e.is_database() => {}
            Err(e) => tracing::warn!(error = %e, "DKIM files not synchronised"),
        }
    }
}

/// Every minute: expired dead letters and the bodies they held, spool entries past
/// retention, unreferenced bodies, ended frequency windows, old finished transactions.
pub(crate) async fn gc_loop(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let d = daemon.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || d.collect_garbage(model::time::now_ms())).await
        {
            tracing::warn!(error = %e, "garbage collection failed");
        }
    }
}
