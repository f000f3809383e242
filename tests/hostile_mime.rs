//! SPEC 6.3 "MIME" through the real daemon: an 8 MB message of unclosed nested multiparts,
//! sent over SMTP, reaches the webhook receiver as an MO event within seconds, and an
//! ordinary message sent right after it is not held up behind it.

mod common;

use common::*;
use mail_send::smtp::message::Message;
use mail_send::SmtpClientBuilder;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Nested multiparts, none closed: every level has a text part, then opens the next level.
fn nested_unclosed(target: usize) -> Vec<u8> {
    let mut m = b"From: mallory@example.org\r\nTo: support@example.test\r\nSubject: nest\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < target {
        m.extend_from_slice(
            format!(
                "--b{i}\r\nContent-Type: text/plain\r\n\r\nlevel {i} text\r\n--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{}\"\r\n\r\n",
                i + 1
            )
            .as_bytes(),
        );
        i += 1;
    }
    m
}

async fn send(addr: std::net::SocketAddr, from: &str, body: Vec<u8>) {
    SmtpClientBuilder::new("127.0.0.1", addr.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .expect("connect")
        .send(Message::new(from, ["support@example.test"], body))
        .await
        .expect("accepted");
}

fn subjects(rx: &Receiver) -> Vec<String> {
    rx.delivered()
        .iter()
        .map(|h| h.json()["subject"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_megabyte_hostile_mime_arrives_and_does_not_hold_up_other_mail() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;

    let hostile = nested_unclosed(8 * 1024 * 1024);
    let size = hostile.len();
    send(d.smtp, "mallory@example.org", hostile).await;
    let sent = Instant::now();
    send(
        d.smtp,
        "carol@example.org",
        b"From: carol@example.org\r\nTo: support@example.test\r\nSubject: ordinary\r\n\r\nhello\r\n"
            .to_vec(),
    )
    .await;

    // The ordinary message is rendered on its own, whatever the hostile one costs.
    let hooks = rx.clone_hooks();
    wait_for(Duration::from_secs(10), || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.json()["subject"] == "ordinary")
    })
    .await;

    // The hostile message renders in seconds, with SPEC 6.2 semantics.
    wait_for(WAIT, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.json()["subject"] == "nest")
    })
    .await;
    eprintln!("both events within {:?} of the 250", sent.elapsed());
    let all = rx.delivered();
    let ev = all
        .iter()
        .map(|h| h.json())
        .find(|v| v["subject"] == "nest")
        .unwrap();
    assert_eq!(ev["event"], "MO");
    assert_eq!(ev["textMessage"], "level 0 text");
    let atts = ev["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 1, "levels past 64 are one part");
    assert!(atts[0]["size"].as_u64().unwrap() as usize > size - 16 * 1024);
    assert_eq!(subjects(&rx).len(), 2, "one event each");
    d.stop().await;
}

/// With two webhook slots, a burst of large hostile messages takes at most one of them:
/// the ordinary message sent after the burst still gets its webhook at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_messages_leaves_webhook_slots_for_small_ones() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url("")).webhook_concurrency(2)).await;
    for _ in 0..3 {
        send(
            d.smtp,
            "mallory@example.org",
            nested_unclosed(8 * 1024 * 1024),
        )
        .await;
    }
    send(
        d.smtp,
        "carol@example.org",
        b"From: carol@example.org\r\nTo: support@example.test\r\nSubject: ordinary\r\n\r\nhello\r\n"
            .to_vec(),
    )
    .await;
    let hooks = rx.clone_hooks();
    wait_for(Duration::from_secs(10), || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.json()["subject"] == "ordinary")
    })
    .await;
    rx.wait_for_count(4, WAIT).await;
    let mut s = subjects(&rx);
    s.sort();
    assert_eq!(s, ["nest", "nest", "nest", "ordinary"]);
    d.stop().await;
}
