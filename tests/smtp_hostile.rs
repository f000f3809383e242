//! SPEC 6.3 "SMTP" against the real daemon over TCP: clients that never read their replies,
//! junk commands, the per-IP cap, shutdown in the middle of everything, and partial bodies
//! of abandoned DATA/BDAT transactions.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

async fn daemon(edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> (Receiver, TestDaemon) {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(edit(ConfigBuilder::inbound(&rx.url("")))).await;
    (rx, d)
}

fn open_sessions(d: &TestDaemon) -> usize {
    d.handle.as_ref().expect("running").daemon.conns.open()
}

/// A client socket bound to `source` (any 127.0.0.x works on loopback), with a small
/// receive buffer when asked, so that unread replies back up after a few kilobytes.
async fn connect_from(source: &str, to: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    sock.bind(format!("{source}:0").parse().expect("address"))
        .expect("bind source address");
    sock.connect(to).await.expect("connect")
}

/// Pipelines EHLO, MAIL and then RCPT after RCPT (each answered 250, none of them junk)
/// and never reads a reply. The task ends when the server drops the connection (the
/// write fails); the counter says how many bytes went out.
fn never_reads(mut stream: TcpStream) -> (JoinHandle<std::io::Error>, Arc<AtomicUsize>) {
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let task = tokio::spawn(async move {
        let start = b"EHLO hostile.example.org\r\nMAIL FROM:<h@example.org>\r\n";
        if let Err(e) = stream.write_all(start).await {
            return e;
        }
        let chunk = "RCPT TO:<support@example.test>\r\n".repeat(2000);
        // 200 MB at most: far more than any socket buffer, so the server must stop
        // reading long before; a daemon that never lets go keeps this task blocked.
        for _ in 0..3000 {
            if let Err(e) = stream.write_all(chunk.as_bytes()).await {
                return e;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        std::io::Error::other("the server read 200 MB of pipelined commands")
    });
    (task, written)
}

/// One message through a well-behaved client; returns the 250 line.
async fn send_one(smtp: SocketAddr, subject: &str) -> String {
    let (mut raw, banner) = Raw::connect(smtp).await;
    assert!(banner.starts_with("220"), "{banner}");
    raw.cmd("EHLO client.example.org").await;
    assert!(raw
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("250"));
    assert!(raw
        .cmd("RCPT TO:<support@example.test>")
        .await
        .starts_with("250"));
    assert!(raw.cmd("DATA").await.starts_with("354"));
    let r = raw
        .cmd(&format!("Subject: {subject}\r\n\r\nhello\r\n."))
        .await;
    raw.cmd("QUIT").await;
    r
}

fn spool_dir(dir: &Path) -> PathBuf {
    dir.join("data").join("spool")
}

fn spool_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool_dir(dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn has_partial_body(dir: &Path) -> bool {
    spool_files(dir).iter().any(|n| n.ends_with(".tmp"))
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_within_command_timeout_others_are_served() {
    let (rx, d) = daemon(|c| c.command_timeout(2)).await;
    let hostile = connect_from("127.0.0.1", d.smtp, Some(4096)).await;
    let started = Instant::now();
    let (task, written) = never_reads(hostile);
    // Thousands of commands are in before the daemon stops reading them.
    let w = written.clone();
    wait_for(Duration::from_secs(30), || {
        w.load(Ordering::Relaxed) >= 200 * 1024 || task.is_finished()
    })
    .await;
    // Meanwhile a normal client is served.
    let r = send_one(d.smtp, "served").await;
    assert!(r.starts_with("250 2.0.0 OK queued"), "{r}");
    assert_eq!(
        rx.wait_for_count(1, Duration::from_secs(30)).await[0].json()["subject"],
        "served"
    );
    // The hostile client loses its connection and its slot (without the write timeout it
    // would hold both for ever).
    wait_for(Duration::from_secs(30), || task.is_finished()).await;
    let err = task.await.expect("writer task");
    eprintln!(
        "unread client cut off after {:?} ({} bytes of commands sent): {err}",
        started.elapsed(),
        written.load(Ordering::Relaxed)
    );
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    wait_for(Duration::from_secs(10), || open_sessions(&d) == 0).await;
    d.stop().await;
}

#[tokio::test]
async fn junk_commands_past_the_limit_get_421_4_7_0_and_close() {
    let (_rx, d) = daemon(|c| c.junk_command_limit(5)).await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    // Five junk commands are answered as usual; a first EHLO and MAIL are not junk.
    assert!(raw.cmd("EHLO again.example.org").await.starts_with("250"));
    assert!(raw.cmd("NOOP").await.starts_with("250"));
    assert!(raw
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("250"));
    assert!(raw.cmd("RSET").await.starts_with("250"));
    assert!(raw.cmd("VRFY someone").await.starts_with("252"));
    assert!(raw.cmd("HELP").await.starts_with("214"));
    let r = raw.cmd("NOOP").await;
    assert!(
        r.starts_with("421 4.7.0 mx.example.test too many junk commands"),
        "{r}"
    );
    assert_eq!(raw.reply().await, "", "closed after the 421");

    // Error replies count the same way, over the whole session.
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    for _ in 0..3 {
        assert!(raw.cmd("XYZZY").await.starts_with("500 5.5.1"));
    }
    assert!(raw
        .cmd("RCPT TO:<support@example.test>")
        .await
        .starts_with("503"));
    assert!(raw
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("250"));
    assert!(raw
        .cmd("RCPT TO:<x@elsewhere.org>")
        .await
        .starts_with("550 5.7.1"));
    let r = raw.cmd("RCPT TO:<y@elsewhere.org>").await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert_eq!(raw.reply().await, "", "closed after the 421");
    wait_for(Duration::from_secs(10), || open_sessions(&d) == 0).await;
    d.stop().await;
}

#[tokio::test]
async fn rset_after_each_delivered_message_is_not_junk() {
    // Connection-reusing clients (mail-send, Postfix's smtp) send RSET before the next
    // message: eight messages on one connection stay under a limit of 5.
    let (_rx, d) = daemon(|c| c.junk_command_limit(5)).await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    for i in 0..8 {
        assert!(raw
            .cmd("MAIL FROM:<a@example.org>")
            .await
            .starts_with("250"));
        assert!(raw
            .cmd("RCPT TO:<support@example.test>")
            .await
            .starts_with("250"));
        assert!(raw.cmd("DATA").await.starts_with("354"));
        let r = raw.cmd(&format!("Subject: m{i}\r\n\r\nhello\r\n.")).await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
        assert!(raw.cmd("RSET").await.starts_with("250"), "message {i}");
    }
    assert!(raw.cmd("QUIT").await.starts_with("221"));
    d.stop().await;
}

#[tokio::test]
async fn per_ip_cap_counts_each_source_address() {
    let (_rx, d) = daemon(|c| c.max_connections_per_ip(1)).await;
    let first = connect_from("127.0.0.2", d.smtp, None).await;
    let mut first = Raw {
        stream: tokio::io::BufReader::new(first),
    };
    assert!(first.reply().await.starts_with("220"));
    let again = connect_from("127.0.0.2", d.smtp, None).await;
    let mut again = Raw {
        stream: tokio::io::BufReader::new(again),
    };
    let r = again.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert_eq!(again.reply().await, "");
    let other = connect_from("127.0.0.3", d.smtp, None).await;
    let mut other = Raw {
        stream: tokio::io::BufReader::new(other),
    };
    assert!(other.reply().await.starts_with("220"), "another address");
    d.stop().await;
}

#[tokio::test]
async fn shutdown_ends_every_session_within_the_grace_and_keeps_what_was_accepted() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ConfigBuilder::inbound(&rx.url("")).shutdown_grace(3);
    let Started { handle, smtp, .. } = start_in_process(dir.path(), config).await;
    let conns = handle.daemon.conns.clone();

    // Idle after EHLO.
    let (mut idle, _) = Raw::connect(smtp).await;
    idle.cmd("EHLO idle.example.org").await;
    // Mid-DATA, will finish its message during the grace.
    let (mut finishing, _) = Raw::connect(smtp).await;
    finishing.cmd("EHLO finishing.example.org").await;
    finishing.cmd("MAIL FROM:<a@example.org>").await;
    finishing.cmd("RCPT TO:<support@example.test>").await;
    assert!(finishing.cmd("DATA").await.starts_with("354"));
    finishing
        .send(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .await;
    // Mid-DATA, stuck: 100 KB of body (a spool file) and then nothing.
    let (mut stuck, _) = Raw::connect(smtp).await;
    stuck.cmd("EHLO stuck.example.org").await;
    stuck.cmd("MAIL FROM:<a@example.org>").await;
    stuck.cmd("RCPT TO:<support@example.test>").await;
    assert!(stuck.cmd("DATA").await.starts_with("354"));
    stuck
        .send(
            format!(
                "Subject: stuck\r\n\r\n{}",
                format!("{}\r\n", "x".repeat(98)).repeat(1000)
            )
            .as_bytes(),
        )
        .await;
    wait_for(Duration::from_secs(30), || has_partial_body(dir.path())).await;
    // Blocked writing replies nobody reads.
    let hostile = connect_from("127.0.0.1", smtp, Some(4096)).await;
    let (writer, written) = never_reads(hostile);
    wait_for(Duration::from_secs(30), || {
        written.load(Ordering::Relaxed) >= 200 * 1024
    })
    .await;
    assert_eq!(conns.open(), 4);

    let started = Instant::now();
    let stopping = tokio::spawn(handle.shutdown());
    // The idle session is told at once; the transaction in flight may still finish.
    let r = idle.reply().await;
    assert!(
        r.starts_with("421 4.3.2 mx.example.test shutting down"),
        "{r}"
    );
    let r = finishing.cmd("second half\r\n.").await;
    assert!(r.starts_with("250 2.0.0 OK queued"), "{r}");
    assert!(finishing.reply().await.starts_with("421 4.3.2"));
    // The others are closed when the grace ends, the stuck one told so.
    let r = stuck.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    stopping.await.expect("shutdown");
    let took = started.elapsed();
    eprintln!("shutdown with a stuck DATA and an unread client took {took:?} (grace 3 s)");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!(conns.open(), 0);
    let err = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("unread client disconnected")
        .expect("writer task");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    assert!(
        !has_partial_body(dir.path()),
        "{:?}",
        spool_files(dir.path())
    );

    // What was accepted during the grace is delivered (now, or after a restart).
    let again = start_in_process(dir.path(), ConfigBuilder::inbound(&rx.url(""))).await;
    let hooks = rx.clone_hooks();
    wait_for(Duration::from_secs(30), || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.json()["subject"] == "in flight")
    })
    .await;
    again.handle.shutdown().await;
}

#[tokio::test]
async fn abandoned_data_and_bdat_leave_no_partial_body() {
    let (_rx, d) = daemon(|c| c.data_timeout(2)).await;
    let dir = d.dir.path().to_path_buf();
    let before = spool_files(&dir);
    let body_100k = format!(
        "Subject: partial\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(98)).repeat(1000)
    );

    // BDAT: one chunk in, the next one cut off by a disconnect.
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.send(format!("BDAT {}\r\n", body_100k.len()).as_bytes())
        .await;
    raw.send(body_100k.as_bytes()).await;
    assert!(raw.reply().await.starts_with("250"));
    assert!(has_partial_body(&dir), "the chunk is spooled");
    raw.send(b"BDAT 100000 LAST\r\nonly a little").await;
    drop(raw);
    wait_for(Duration::from_secs(10), || !has_partial_body(&dir)).await;

    // BDAT: a chunk, then RSET.
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.send(format!("BDAT {}\r\n", body_100k.len()).as_bytes())
        .await;
    raw.send(body_100k.as_bytes()).await;
    assert!(raw.reply().await.starts_with("250"));
    assert!(has_partial_body(&dir));
    assert!(raw.cmd("RSET").await.starts_with("250"));
    wait_for(Duration::from_secs(10), || !has_partial_body(&dir)).await;
    raw.cmd("QUIT").await;

    // DATA cut off by a disconnect.
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    assert!(raw.cmd("DATA").await.starts_with("354"));
    raw.send(body_100k.as_bytes()).await;
    wait_for(Duration::from_secs(30), || has_partial_body(&dir)).await;
    drop(raw);
    wait_for(Duration::from_secs(10), || !has_partial_body(&dir)).await;

    // DATA that stalls past data_timeout.
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    assert!(raw.cmd("DATA").await.starts_with("354"));
    raw.send(body_100k.as_bytes()).await;
    wait_for(Duration::from_secs(30), || has_partial_body(&dir)).await;
    assert_eq!(raw.reply().await, "421 4.4.2 mx.example.test timeout\r\n");
    wait_for(Duration::from_secs(10), || !has_partial_body(&dir)).await;

    wait_for(Duration::from_secs(10), || open_sessions(&d) == 0).await;
    assert_eq!(spool_files(&dir), before, "nothing left in data_dir/spool");
    d.stop().await;
}
