//! Hostile HTTP clients (SPEC 6.3 "HTTP" and "API"), against the daemon over TCP: headers
//! sent a byte at a time, idle keep-alive connections, more connections than the cap, a
//! request whose substitutions would expand it past every limit, and a body of another
//! channel.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: u64 = 2;

/// A sending daemon (services `key-a`, TPS 50) changed by `edit`.
async fn daemon(
    dir: &std::path::Path,
    hooks: &Receiver,
    edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> Started {
    let config = ConfigBuilder::outbound(&hooks.url(""), Route::smtp(9));
    start_in_process(dir, edit(config)).await
}

/// Sends a GET on `sock` and reads until the end of the health answer (or EOF).
async fn get_health(sock: &mut TcpStream) -> String {
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_answer(sock).await
}

async fn read_answer(sock: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"}") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads until the server closes the connection.
async fn until_closed(sock: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_at_header_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Receiver::start().await;
    let d = daemon(dir.path(), &hooks, |c| {
        c.http_header_timeout(HEADER_TIMEOUT)
    })
    .await;
    const SLOW: usize = 50;
    // How long each slow connection lasted, once the server closed it.
    let lasted: Arc<Mutex<Vec<Duration>>> = Arc::default();
    for _ in 0..SLOW {
        let sock = TcpStream::connect(d.http).await.unwrap();
        let lasted = lasted.clone();
        tokio::spawn(async move {
            let opened = Instant::now();
            let (mut r, mut w) = sock.into_split();
            // The attack: a header that never ends, one byte every 100 ms.
            let trickle = async move {
                let start = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ";
                for b in start.iter().chain(std::iter::repeat(&b'a')) {
                    if w.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = until_closed(&mut r) => {}
                _ = trickle => {}
            }
            lasted.lock().unwrap().push(opened.elapsed());
        });
    }
    // A normal client is served during the attack.
    let resp = reqwest::get(format!("http://{}/healthz", d.http))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        lasted.lock().unwrap().len() < SLOW,
        "the attack is still on while the normal client is served"
    );

    let l = lasted.clone();
    wait_for(Duration::from_secs(HEADER_TIMEOUT + 20), || {
        l.lock().unwrap().len() == SLOW
    })
    .await;
    let longest = lasted.lock().unwrap().iter().max().copied().unwrap();
    // Generous margin over the timeout: this asserts "closed", not a latency.
    assert!(
        longest < Duration::from_secs(HEADER_TIMEOUT + 8),
        "slowest slow connection lasted {longest:?}"
    );
    d.handle.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_and_silent_ones_too() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Receiver::start().await;
    let d = daemon(dir.path(), &hooks, |c| {
        c.http_header_timeout(HEADER_TIMEOUT)
    })
    .await;
    // One connection answered once then left idle, one that never says anything.
    let mut idle = TcpStream::connect(d.http).await.unwrap();
    assert!(get_health(&mut idle).await.starts_with("HTTP/1.1 200"));
    let silent = TcpStream::connect(d.http).await.unwrap();
    let closed = Arc::new(Mutex::new(0));
    for sock in [idle, silent] {
        let closed = closed.clone();
        tokio::spawn(async move {
            let (mut r, _w) = sock.into_split();
            until_closed(&mut r).await;
            *closed.lock().unwrap() += 1;
        });
    }
    wait_for(Duration::from_secs(HEADER_TIMEOUT + 10), || {
        *closed.lock().unwrap() == 2
    })
    .await;
    d.handle.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Receiver::start().await;
    const CAP: usize = 8;
    let d = daemon(dir.path(), &hooks, |c| {
        c.http_header_timeout(60).http_max_connections(CAP as u64)
    })
    .await;
    // CAP keep-alive connections, each served once and kept open.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(d.http).await.unwrap();
        assert!(get_health(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // One more: the kernel completes the handshake (backlog), the daemon does not serve it.
    let mut extra = TcpStream::connect(d.http).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), extra.read(&mut buf))
            .await
            .is_err(),
        "a connection over the cap was served"
    );
    // One closes: the waiting one is accepted and answered.
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(20), read_answer(&mut extra))
        .await
        .expect("served once a slot was free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Serving goes on for new clients too, within the cap.
    drop(held.pop());
    let resp = reqwest::get(format!("http://{}/healthz", d.http))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(held);
    d.handle.shutdown().await;
}

/// Resident memory of this process now, and its peak since the last reset (KiB).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

async fn post(http: SocketAddr, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/v2/messages"))
        .header("key", "key-a")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn substitution_bomb_is_refused_at_once_and_costs_little() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Receiver::start().await;
    let d = daemon(dir.path(), &hooks, |c| c).await;
    let data = dir.path().join("data");
    // 40 KB of html and a 1 KB value: 10 MB per destination, 200 MB for 20 if built.
    let to: Vec<String> = (0..20).map(|i| format!("u{i}@example.org")).collect();
    let bomb = json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": to}],
        "content": {"type": "html", "subject": "S", "html": "$(a)".repeat(10_000)},
        "substitutions": {"a": "x".repeat(1_000)},
    });
    d.handle.daemon.store.flush_now().unwrap();
    let size_before = dir_size(&data);
    // Peak RSS from here on (writing 5 resets VmHWM to the current RSS).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_before, _) = memory_kib();
    let started = Instant::now();
    let (status, body) = post(d.http, &bomb).await;
    let took = started.elapsed();
    let (_, peak) = memory_kib();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "7004");
    assert_eq!(
        body["description"],
        "to[0]: content.html is 10000000 octets after substitution, over 500 KB"
    );
    assert!(took < Duration::from_secs(10), "refusal took {took:?}");
    let grown_mb = peak.saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 50, "peak RSS grew by {grown_mb} MB");
    // Nothing was queued or stored.
    assert!(d
        .handle
        .daemon
        .store
        .messages()
        .active()
        .unwrap()
        .is_empty());
    d.handle.daemon.store.flush_now().unwrap();
    // Background work (start-up garbage collection, sled's own log) may write a few
    // hundred bytes; the refused request itself would have stored megabytes.
    let grown = dir_size(&data).saturating_sub(size_before);
    assert!(grown < 64 * 1024, "data_dir grew by {grown} bytes");

    // The same request with a small value is accepted: the limit is the expansion's.
    let mut fine = bomb.clone();
    fine["substitutions"]["a"] = "y".into();
    assert_eq!(post(d.http, &fine).await.0, 202);
    d.handle.shutdown().await;
}

#[tokio::test]
async fn other_channels_are_refused_naming_the_channel_whatever_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Receiver::start().await;
    let d = daemon(dir.path(), &hooks, |c| c).await;
    let sms = json!({
        "channel": "sms",
        "from": "Shop",
        "to": [{"msisdn": ["+4917012345678"], "correlationId": "c-1"}],
        "content": {"type": "text", "text": "Your code is 1234"},
    });
    let (status, body) = post(d.http, &sms).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "7004");
    assert_eq!(
        body["description"],
        "channel: channel 'sms' is not served by postern"
    );
    for body in [
        json!({"channel": "rcs", "to": [{"msisdn": ["+1"]}]}),
        json!({"channel": "RCS"}),
        json!({"channel": "whatsapp", "to": 5, "from": []}),
    ] {
        let ch = body["channel"].as_str().unwrap().to_string();
        let (status, got) = post(d.http, &body).await;
        assert_eq!((status, got["code"].as_str()), (400, Some("7004")), "{got}");
        assert_eq!(
            got["description"],
            format!("channel: channel '{ch}' is not served by postern")
        );
    }
    // An email body still gets its field checks.
    let email = json!({"channel": "email", "from": "news@example.test", "to": [{"msisdn": ["+1"]}],
        "content": {"type": "text", "text": "x"}});
    let (status, got) = post(d.http, &email).await;
    assert_eq!((status, got["code"].as_str()), (400, Some("7003")));
    assert_eq!(got["description"], "missing mandatory field: to[0].email");
    d.handle.shutdown().await;
}
