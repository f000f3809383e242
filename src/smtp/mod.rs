//! The inbound SMTP listener: accept loop, connection caps (global and per IP), STARTTLS
//! certificates, and the drain on shutdown. Each connection runs a [`session::Session`].
//! Invariant: this module decides who may talk; what a message becomes is `inbound`'s job.

pub mod data;
pub mod session;
pub mod stream;

use crate::config::Config;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// Builds the STARTTLS acceptor from PEM files.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The STARTTLS acceptor named by the config, if any.
pub fn tls_from_config(config: &Config) -> Result<Option<TlsAcceptor>, String> {
    match (&config.smtp.tls_cert, &config.smtp.tls_key) {
        (Some(c), Some(k)) => load_tls(c, k).map(Some),
        _ => Ok(None),
    }
}

/// Who the per-IP cap counts a peer as: an IPv4 address is itself (also when it arrives
/// IPv4-mapped on a dual-stack socket); an IPv6 address is its /64, the smallest block a
/// site is given, so one network cannot take every slot by cycling its addresses.
pub fn cap_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// Open connections, in total and per peer network ([`cap_key`]).
#[derive(Default)]
pub struct ConnLimits {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    idle: Notify,
}

/// Holds one connection slot; frees it when dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    /// The [`cap_key`] of the peer.
    ip: IpAddr,
}

impl ConnLimits {
    /// A slot for `ip`, or `None` when either cap is reached.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<ConnSlot> {
        let ip = cap_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if mine >= max_per_ip || self.total.load(Ordering::Acquire) >= max_total {
            return None;
        }
        per_ip.insert(ip, mine + 1);
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, at most `grace`.
    pub async fn drained(&self, grace: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        if self.limits.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.limits.idle.notify_waiters();
        }
    }
}

/// Accepts connections on `listener` until `shutdown` flips.
pub async fn accept_loop(
    listener: TcpListener,
    daemon: Arc<crate::Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (sock, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let config = daemon.config();
        let ip = addr.ip();
        let Some(slot) = daemon.conns.acquire(
            ip,
            config.smtp.max_connections,
            config.smtp.max_connections_per_ip,
        ) else {
            tracing::info!(peer = %addr, "connection refused: connection cap reached");
            let host = config.server.hostname.clone();
            tokio::spawn(async move {
                let mut sock = sock;
                let line = format!("421 4.7.0 {host} too many connections, try again later\r\n");
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), sock.write_all(line.as_bytes()))
                        .await;
                let _ = sock.shutdown().await;
            });
            continue;
        };
        let params = session::SessionParams {
            config,
            tls: daemon.tls(),
            inbound: daemon.inbound.clone(),
            shutdown: shutdown.clone(),
        };
        let metrics = daemon.metrics.clone();
        let span =
            tracing::info_span!("smtp", peer = %addr, session = %uuid::Uuid::new_v4().simple());
        tokio::spawn(
            async move {
                metrics.smtp_connections.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("connected");
                session::Session::new(sock, ip, params).run().await;
                metrics.smtp_connections.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        cap_key(s.parse().expect("address")).to_string()
    }

    #[test]
    fn cap_groups_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_ne!(key("192.0.2.8"), key("192.0.2.7"));
        assert_eq!(key("::1"), "::");
    }

    #[test]
    fn one_64_shares_one_per_ip_cap() {
        let limits = Arc::new(ConnLimits::default());
        let take = |ip: &str| limits.acquire(ip.parse().expect("address"), 10, 2);
        let a = take("2001:db8::1");
        let b = take("2001:db8::2:3");
        assert!(a.is_some() && b.is_some());
        assert!(take("2001:db8::ffff").is_none(), "third from the same /64");
        let other = take("2001:db8:0:1::1");
        assert!(other.is_some(), "the next /64 has its own cap");
        drop(a);
        let again = take("2001:db8::9");
        assert!(again.is_some(), "a freed slot is reusable");
        assert_eq!(limits.open(), 3);
        drop((b, other, again));
        assert_eq!(limits.open(), 0);
    }
}
