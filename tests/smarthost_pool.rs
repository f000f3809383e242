//! Smarthost connection reuse: a connection serves the next message only after an exchange
//! that ended in step. A scripted smarthost on loopback answers DATA late or refuses RSET
//! (and then answers everything on that connection with 451); the next message must get its
//! own outcome, on a new connection.

mod common;

use common::Route;
use postern::config::RouteConfig;
use postern::outbound::route::smtp::SmtpRoute;
use postern::outbound::route::RcptOutcome;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The route's command timeout in these tests, and how late the scripted DATA reply is.
const TIMEOUT: Duration = Duration::from_secs(2);
const LATE: Duration = Duration::from_secs(3);

/// Behaviour by content: a message containing `answer-late` gets its DATA reply after
/// [`LATE`]; recipients starting `reject` get 550; after a transaction with a recipient
/// containing `norset`, RSET is refused and the connection answers 451 to everything.
struct Scripted {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start() -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = session(sock).await;
                });
            }
        });
        Scripted { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn session(sock: tokio::net::TcpStream) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 scripted.test ESMTP\r\n").await?;
    let mut refuse_rset = false;
    let mut poisoned = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if poisoned {
            w.write_all(b"451 4.3.0 this session is confused\r\n")
                .await?;
        } else if upper.starts_with("EHLO") {
            w.write_all(b"250-scripted.test\r\n250 8BITMIME\r\n")
                .await?;
        } else if upper.starts_with("MAIL FROM:") {
            w.write_all(b"250 2.1.0 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            refuse_rset |= line.contains("norset");
            if upper.starts_with("RCPT TO:<REJECT") {
                w.write_all(b"550 5.1.1 no such user\r\n").await?;
            } else {
                w.write_all(b"250 2.1.5 OK\r\n").await?;
            }
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut late = false;
            loop {
                let mut buf = Vec::new();
                if r.read_until(b'\n', &mut buf).await? == 0 {
                    return Ok(());
                }
                if buf == b".\r\n" {
                    break;
                }
                late |= memchr::memmem::find(&buf, b"answer-late").is_some();
            }
            if late {
                tokio::time::sleep(LATE).await;
                w.write_all(b"250 2.0.0 queued (late)\r\n").await?;
            } else {
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
        } else if upper.starts_with("RSET") {
            if refuse_rset {
                poisoned = true;
                w.write_all(b"502 5.5.2 RSET not here\r\n").await?;
            } else {
                w.write_all(b"250 2.0.0 OK\r\n").await?;
            }
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.1 not implemented\r\n").await?;
        }
    }
}

fn route(server: &Scripted) -> SmtpRoute {
    let config: RouteConfig = toml::from_str(&Route::smtp(server.addr.port()).toml()).unwrap();
    let RouteConfig::Smtp(config) = config else {
        unreachable!("an smtp route")
    };
    SmtpRoute::new(config, "mx.example.test".into(), None).with_timeout(TIMEOUT)
}

fn message(body: &str) -> Vec<u8> {
    format!("From: a@example.test\r\nTo: b@example.org\r\nSubject: t\r\n\r\n{body}\r\n")
        .into_bytes()
}

async fn send(route: &SmtpRoute, rcpts: &[&str], body: &str) -> Vec<RcptOutcome> {
    let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string()).collect();
    route
        .send("bounce@example.test", &rcpts, &message(body))
        .await
}

#[tokio::test]
async fn a_connection_that_ended_in_step_is_reused() {
    let server = Scripted::start().await;
    let route = route(&server);
    for to in ["ann@example.org", "reject-1@example.org", "bob@example.org"] {
        let outcome = send(&route, &[to], "hello").await;
        let expected = if to.starts_with("reject") {
            RcptOutcome::Bounced("550 5.1.1 no such user".into())
        } else {
            RcptOutcome::Submitted
        };
        assert_eq!(outcome, vec![expected], "{to}");
    }
    assert_eq!(
        server.connections(),
        1,
        "accepted and refused-at-RCPT keep the connection"
    );
}

#[tokio::test]
async fn after_a_late_data_reply_the_next_message_gets_its_own_outcome() {
    let server = Scripted::start().await;
    let route = route(&server);
    let first = send(&route, &["ann@example.org"], "answer-late").await;
    assert!(
        matches!(first.as_slice(), [RcptOutcome::Deferred(why)] if why.starts_with("DATA")),
        "{first:?}"
    );
    // On a reused connection the late "250" would answer this message's commands one step
    // behind: RCPT would read MAIL's 250 and report a refused recipient as submitted.
    let second = send(&route, &["reject-2@example.org"], "hello").await;
    assert_eq!(
        second,
        vec![RcptOutcome::Bounced("550 5.1.1 no such user".into())]
    );
    let third = send(&route, &["bob@example.org"], "hello").await;
    assert_eq!(third, vec![RcptOutcome::Submitted]);
    assert_eq!(
        server.connections(),
        2,
        "the late connection was closed, the new one kept"
    );
}

#[tokio::test]
async fn after_a_refused_rset_the_connection_is_not_reused() {
    let server = Scripted::start().await;
    let route = route(&server);
    // Every recipient refused: RSET, which this server refuses.
    let first = send(&route, &["reject-norset@example.org"], "hello").await;
    assert_eq!(
        first,
        vec![RcptOutcome::Bounced("550 5.1.1 no such user".into())]
    );
    // The refusing connection answers 451 to everything: reused, this would be deferred.
    let second = send(&route, &["ann@example.org"], "hello").await;
    assert_eq!(second, vec![RcptOutcome::Submitted]);
    assert_eq!(server.connections(), 2);
}
