//! The HTTP accept loop (SPEC 6.3 "HTTP"). At most `http.max_connections` connections are
//! open: past that, new ones wait in the listen backlog, unaccepted. A connection whose
//! request headers have not all arrived within `http.header_timeout` is closed, and so is
//! a keep-alive connection idle that long between requests: no client holds a connection
//! (or its slot) by sending slowly or not at all. Shutdown stops accepting, lets requests
//! in flight finish and closes idle connections.

use crate::config::HttpConfig;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Serves `router` on `listener` until `shutdown` turns true, then waits for the open
/// connections to finish (those still reading headers end within the header timeout).
/// The limits are read once: a reload changes them after a restart.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    // Within what both the semaphore and `acquire_many` (u32) can count.
    let cap = config.max_connections.clamp(1, (u32::MAX >> 3) as usize);
    let slots = Arc::new(Semaphore::new(cap));
    let header_timeout = Duration::from_secs(config.header_timeout.max(1));
    loop {
        // The slot is taken before accepting: at the cap, connections stay in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopping(&mut shutdown) => break,
        };
        let (sock, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = stopping(&mut shutdown) => break,
        };
        tokio::spawn(connection(
            sock,
            peer,
            router.clone(),
            header_timeout,
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    // Every connection holds a slot until it ends: all slots back = all connections closed.
    let _ = slots.acquire_many(cap as u32).await;
}

/// Resolves once shutdown is asked for (or its sender is gone). Holds no `watch::Ref`
/// across the await, so the futures selecting on it stay `Send`.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A failed accept: one client's trouble (reset before accept) is skipped at once; the
/// process's (out of file descriptors) is waited out briefly instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "HTTP accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One HTTP/1.1 connection, holding its slot (`_permit`) until it closes.
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = sock.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper starts the header timer whenever it waits for a request head: on a new
    // connection and between keep-alive requests alike.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(sock), WithPeer { router, peer });
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stopping(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// The router with the peer address in each request's extensions, as axum's
/// `ConnectInfo<SocketAddr>` extractor expects it.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        // A Router is always ready: no poll_ready needed.
        tower::Service::call(&mut self.router.clone(), req)
    }
}
