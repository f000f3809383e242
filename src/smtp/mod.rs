//! The inbound SMTP listener: accept loop, connection caps (global and per IP), STARTTLS
//! certificates, and the drain on shutdown. Each connection runs a [`session::Session`].
//! Invariant: this module decides who may talk; what a message becomes is `inbound`'s job.

pub mod data;
pub mod session;
pub mod stream;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// Accepts connections on `listener` until `shutdown` flips.
pub async fn accept_loop(
    listener: TcpListener,
    daemon: Arc<crate::daemon::Daemon>,
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
