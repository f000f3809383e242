//! SPEC 6.1 limits and their reply codes, over TCP with a raw client.

mod common;

use common::*;
use std::time::Duration;

async fn daemon(edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> (Receiver, TestDaemon) {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(edit(ConfigBuilder::inbound(&rx.url("")))).await;
    (rx, d)
}

async fn ready(d: &TestDaemon) -> Raw {
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO client.example.org").await;
    raw
}

#[tokio::test]
async fn ehlo_advertises_the_extensions_and_helo_none() {
    let (_rx, d) = daemon(|c| {
        c.max_message_size(2_000_000)
            .asset(|a| a.max_inbound_size(2_000_000))
    })
    .await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    let ehlo = raw.cmd("EHLO client.example.org").await;
    for ext in [
        "PIPELINING",
        "SIZE 2000000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS"), "no certificate, no STARTTLS");
    assert_eq!(
        raw.cmd("STARTTLS").await,
        "502 5.5.1 STARTTLS: not available\r\n"
    );
    assert_eq!(
        raw.cmd("HELO client.example.org").await,
        "250 mx.example.test\r\n"
    );
    d.stop().await;
}

#[tokio::test]
async fn size_declared_too_big_is_refused_at_mail_and_streamed_too_big_after_data() {
    let (rx, d) = daemon(|c| {
        c.max_message_size(10_000)
            .asset(|a| a.max_inbound_size(10_000))
    })
    .await;
    let mut raw = ready(&d).await;
    let r = raw.cmd("MAIL FROM:<a@example.org> SIZE=20000").await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    // 15 lines of 900 octets: over the 10,000-byte limit, every line legal.
    let body = format!(
        "Subject: big\r\n\r\n{}\r\n.",
        vec!["x".repeat(900); 15].join("\r\n")
    );
    let r = raw.cmd(&body).await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Still usable.
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    assert!(raw
        .cmd("Subject: small\r\n\r\nok\r\n.")
        .await
        .starts_with("250"));
    assert_eq!(
        rx.wait_for_count(1, Duration::from_secs(30)).await[0].json()["subject"],
        "small"
    );
    d.stop().await;
}

#[tokio::test]
async fn too_many_recipients_get_452() {
    let (_rx, d) = daemon(|c| c.max_recipients(2)).await;
    let mut raw = ready(&d).await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    assert!(raw.cmd("RCPT TO:<a@example.test>").await.starts_with("250"));
    assert!(raw.cmd("RCPT TO:<b@example.test>").await.starts_with("250"));
    assert!(raw
        .cmd("RCPT TO:<c@example.test>")
        .await
        .starts_with("452 4.5.3"));
    d.stop().await;
}

#[tokio::test]
async fn long_command_lines_nul_and_bare_lf_in_commands_get_500_5_5_2() {
    let (_rx, d) = daemon(|c| c).await;
    let mut raw = ready(&d).await;
    let long = format!("NOOP {}", "x".repeat(600));
    assert!(raw.cmd(&long).await.starts_with("500 5.5.2"));
    raw.send(b"NOOP\n").await;
    assert!(raw.reply().await.starts_with("500 5.5.2"));
    raw.send(b"NO\0OP\r\n").await;
    assert!(raw.reply().await.starts_with("500 5.5.2"));
    raw.send(b"NOOP\rRSET\r\n").await;
    assert!(raw.reply().await.starts_with("500 5.5.2"));
    assert!(raw.cmd("NOOP").await.starts_with("250"), "still in step");
    d.stop().await;
}

#[tokio::test]
async fn text_line_over_998_octets_gets_554_after_data() {
    let (_rx, d) = daemon(|c| c).await;
    let mut raw = ready(&d).await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    let r = raw
        .cmd(&format!("Subject: x\r\n\r\n{}\r\n.", "y".repeat(999)))
        .await;
    assert!(r.starts_with("554 5.5.2"), "{r}");
    assert!(raw.cmd("RSET").await.starts_with("250"));
    d.stop().await;
}

#[tokio::test]
async fn idle_client_gets_421_timeout_and_is_closed() {
    let (_rx, d) = daemon(|c| c.command_timeout(1)).await;
    let mut raw = ready(&d).await;
    let r = raw.reply().await;
    assert_eq!(r, "421 4.4.2 mx.example.test timeout\r\n");
    assert_eq!(raw.reply().await, "", "closed after the 421");
    d.stop().await;
}

#[tokio::test]
async fn per_ip_cap_answers_421_instead_of_the_banner() {
    let (_rx, d) = daemon(|c| c.max_connections_per_ip(2)).await;
    let (_a, b1) = Raw::connect(d.smtp).await;
    let (_b, b2) = Raw::connect(d.smtp).await;
    assert!(b1.starts_with("220") && b2.starts_with("220"));
    let (mut c, b3) = Raw::connect(d.smtp).await;
    assert!(b3.starts_with("421 4.7.0"), "{b3}");
    assert_eq!(c.reply().await, "");
    d.stop().await;
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let (rx, d) = daemon(|c| c).await;
    let mut raw = ready(&d).await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    let part1 = b"Subject: chunked\r\n\r\nfirst ";
    let part2 = b"second\r\n";
    raw.send(format!("BDAT {}\r\n", part1.len()).as_bytes())
        .await;
    raw.send(part1).await;
    assert!(raw.reply().await.starts_with("250"));
    raw.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes())
        .await;
    raw.send(part2).await;
    assert!(raw.reply().await.starts_with("250 2.0.0 OK queued"));
    let ev = rx.wait_for_count(1, Duration::from_secs(30)).await[0].json();
    assert_eq!(ev["subject"], "chunked");
    assert_eq!(ev["textMessage"], "first second\r\n");
    // BDAT without a transaction: the bytes are consumed, the command refused.
    raw.send(b"BDAT 4 LAST\r\nRSET").await;
    assert!(raw.reply().await.starts_with("503 5.5.1"));
    assert!(raw.cmd("NOOP").await.starts_with("250"));
    d.stop().await;
}

#[tokio::test]
async fn sender_equal_to_recipient_is_logged_not_posted() {
    let (rx, d) = daemon(|c| c).await;
    let mut raw = ready(&d).await;
    raw.cmd("MAIL FROM:<support@example.test>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    assert!(raw
        .cmd("From: support@example.test\r\nSubject: loop\r\n\r\nx\r\n.")
        .await
        .starts_with("250"));
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    assert!(raw
        .cmd("From: a@example.org\r\nSubject: real\r\n\r\nx\r\n.")
        .await
        .starts_with("250"));
    let hooks = rx.wait_for_count(1, Duration::from_secs(30)).await;
    // Events are posted in acceptance order by one worker; the loop mail never was.
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].json()["subject"], "real");
    d.stop().await;
}
