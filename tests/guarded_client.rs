//! The guarded HTTP client (attachments, notifyUrl targets) ignores proxies from the
//! environment: a proxy would resolve and connect itself, past the guarded resolver, so
//! `HTTP_PROXY` must not be a way round the private-address refusal.
//!
//! Its own test binary: it sets process environment variables, which no other test in
//! this process may see.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts connections and answers each with `body` as a 200.
async fn counting_server(body: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn proxy_environment_variables_are_not_used() {
    let (proxy, proxied) = counting_server("from the proxy").await;
    let (target, direct) = counting_server("from the target").await;
    let proxy_url = format!("http://{proxy}");
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
    ] {
        // SAFETY (edition 2024 wording): the only test of this binary, set before any
        // client or thread that reads the environment exists.
        std::env::set_var(var, &proxy_url);
    }
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");

    // A plain client does take the proxy: the environment is as intended.
    let plain = reqwest::Client::new();
    let via = plain
        .get(format!("http://{target}/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        via, "from the proxy",
        "the test's proxy variables are not in effect"
    );

    let policy = postern::model::urls::Policy::new(&["127.0.0.0/8".to_string()]).unwrap();
    let guarded = postern::model::urls::guarded_client(&policy, Duration::from_secs(10));
    let before = proxied.load(Ordering::SeqCst);
    let body = guarded
        .get(format!("http://{target}/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "from the target");
    assert_eq!(proxied.load(Ordering::SeqCst), before, "the proxy was used");
    assert_eq!(direct.load(Ordering::SeqCst), 1);

    // And with nothing allowed, a loopback target is refused rather than handed to a proxy.
    let strict = postern::model::urls::guarded_client(
        &postern::model::urls::Policy::default(),
        Duration::from_secs(10),
    );
    let refused = strict
        .get(format!("http://localhost:{}/x", target.port()))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(proxied.load(Ordering::SeqCst), before, "the proxy was used");
    assert_eq!(direct.load(Ordering::SeqCst), 1);
}
