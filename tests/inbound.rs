//! Inbound path end to end: real SMTP clients (mail-send, raw sockets) over TCP, the MO
//! event at a real HTTP receiver, retries, dead letters, restarts and crashes.

mod common;

use base64::Engine;
use common::*;
use mail_send::mail_builder::MessageBuilder;
use mail_send::SmtpClientBuilder;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn mail_send_message_with_attachments_becomes_one_mo_event() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let pdf: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let message = MessageBuilder::new()
        .from(("Alice", "alice@example.org"))
        .to(vec!["support@example.test", "sales@example.test"])
        .reply_to("replies@example.org")
        .subject("Invoice 42")
        .text_body("Please find the invoice attached.")
        .html_body("<p>Please find the <b>invoice</b> attached.</p>")
        .attachment("application/pdf", "invoice.pdf", pdf.clone())
        .message_id("invoice-42@example.org");
    SmtpClientBuilder::new("127.0.0.1", d.smtp.port())
        .unwrap()
        .implicit_tls(false)
        .helo_host("client.example.org")
        .connect_plain()
        .await
        .expect("connect")
        .send(message)
        .await
        .expect("message accepted");

    let hooks = rx.wait_for_count(1, WAIT).await;
    assert_eq!(hooks.len(), 1, "one event per asset, not per recipient");
    let hook = &hooks[0];
    assert_eq!(hook.path, "/mo");
    assert!(hook.headers.contains_key("x-postern-event-id"));
    assert!(
        !hook.headers.contains_key("x-postern-signature"),
        "no secret, no signature"
    );
    let ev = hook.json();
    assert_eq!(ev["channel"], "email");
    assert_eq!(ev["event"], "MO");
    assert_eq!(ev["from"], "alice@example.org");
    assert_eq!(ev["returnPath"], "replies@example.org");
    assert_eq!(ev["subject"], "Invoice 42");
    assert_eq!(ev["messageId"], "invoice-42@example.org");
    let mut to: Vec<&str> = ev["to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    to.sort();
    assert_eq!(to, ["sales@example.test", "support@example.test"]);
    assert_eq!(ev["textMessage"], "Please find the invoice attached.");
    assert_eq!(
        ev["htmlMessage"],
        "<p>Please find the <b>invoice</b> attached.</p>"
    );
    assert_eq!(ev["authResults"]["spf"], "none");
    let att = &ev["attachments"][0];
    assert_eq!(att["name"], "invoice.pdf");
    assert_eq!(att["contentType"], "application/pdf");
    assert_eq!(att["contentTransferEncoding"], "base64");
    assert_eq!(b64(att["content"].as_str().unwrap()), pdf);
    assert!(uuid::Uuid::parse_str(ev["tid"].as_str().unwrap()).is_ok());
    d.stop().await;
}

#[tokio::test]
async fn starttls_with_mail_send_then_message_arrives() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
    let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url("")).smtp_tls(&c, &k)).await;

    let (mut raw, _) = Raw::connect(d.smtp).await;
    assert!(raw.cmd("EHLO x").await.contains("STARTTLS"));

    SmtpClientBuilder::new("127.0.0.1", d.smtp.port())
        .unwrap()
        .implicit_tls(false)
        .allow_invalid_certs()
        .connect()
        .await
        .expect("STARTTLS handshake")
        .send(
            MessageBuilder::new()
                .from("bob@example.org")
                .to("support@example.test")
                .subject("over TLS")
                .text_body("secret"),
        )
        .await
        .expect("accepted over TLS");
    let ev = rx.wait_for_count(1, WAIT).await[0].json();
    assert_eq!(ev["subject"], "over TLS");
    d.stop().await;
}

#[tokio::test]
async fn pipelined_transaction_gets_every_reply_in_order() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let (mut raw, banner) = Raw::connect(d.smtp).await;
    assert!(banner.starts_with("220 mx.example.test"));
    raw.cmd("EHLO client.example.org").await;
    raw.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.org>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n")
        .await;
    assert!(raw.reply().await.starts_with("250 2.1.0"));
    assert!(raw.reply().await.starts_with("550 5.7.1 relaying denied"));
    assert!(raw.reply().await.starts_with("250 2.1.5"));
    assert!(raw.reply().await.starts_with("354"));
    raw.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await;
    assert!(raw.reply().await.starts_with("250 2.0.0"));
    assert!(raw.reply().await.starts_with("221"));
    let ev = rx.wait_for_count(1, WAIT).await[0].json();
    assert_eq!(ev["to"], serde_json::json!(["support@example.test"]));
    d.stop().await;
}

#[tokio::test]
async fn forwarding_address_and_bounce_domain_are_ours_and_nothing_else_is() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO c").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    for (rcpt, want) in [
        ("a_demo@inbound.example.test", "250"),
        ("a_other@inbound.example.test", "550 5.7.1"),
        ("v-123@bounces.example.test", "250"),
        ("user@[192.0.2.1]", "550 5.7.1"),
        ("user%elsewhere.org@example.test", "250"),
        ("x@example.test.elsewhere.org", "550 5.7.1"),
    ] {
        let r = raw.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert!(r.starts_with(want), "{rcpt}: {r}");
    }
    d.stop().await;
}

#[tokio::test]
async fn smuggling_sequences_do_not_end_data_and_are_refused() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO c").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    assert!(raw.cmd("DATA").await.starts_with("354"));
    raw.send(b"Subject: s\r\n\r\nhello\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@elsewhere.org>\r\n.\r\n").await;
    let r = raw.reply().await;
    assert!(r.starts_with("554 5.5.2"), "{r}");
    // The connection is still in step: a clean message goes through.
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    let r = raw.cmd("Subject: clean\r\n\r\nok\r\n.").await;
    assert!(r.starts_with("250"), "{r}");
    let hooks = rx.wait_for_count(1, WAIT).await;
    assert_eq!(hooks[0].json()["subject"], "clean");
    d.stop().await;
}

#[tokio::test]
async fn receiver_down_then_up_gets_the_event_and_404_goes_to_dead_letters() {
    let rx = Receiver::start().await;
    rx.status.store(503, std::sync::atomic::Ordering::SeqCst);
    let d = TestDaemon::start(
        ConfigBuilder::inbound(&rx.url("")).asset(|a| a.webhook_secret("s3cret")),
    )
    .await;
    send_simple(d.smtp, "first").await;
    // First attempt fails with 503; the retry comes within 10 s and succeeds.
    rx.wait_for_count(1, WAIT).await;
    rx.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let hooks = rx.wait_for_count(2, WAIT).await;
    let (a, b) = (&hooks[0], &hooks[1]);
    assert_eq!(
        a.headers["x-postern-event-id"], b.headers["x-postern-event-id"],
        "same event retried"
    );
    assert_eq!(a.body, b.body);
    // The signature verifies: HMAC-SHA256 over "<t>.<body>".
    let sig = b.headers["x-postern-signature"].to_str().unwrap();
    let t: u64 = sig
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("t=")
        .parse()
        .unwrap();
    assert_eq!(sig, postern::webhooks::signature("s3cret", t, &b.body));

    // A 404 is not retried: the event moves to the dead letters, and replay delivers it.
    rx.status.store(404, std::sync::atomic::Ordering::SeqCst);
    send_simple(d.smtp, "second").await;
    rx.wait_for_count(3, WAIT).await;
    let admin = reqwest::Client::new();
    let list_url = format!("http://{}/admin/dead-letters", d.http);
    let mut listed = serde_json::Value::Null;
    for _ in 0..500 {
        listed = admin_json(&admin, &list_url).await;
        if listed["count"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed["count"], 1, "{listed}");
    assert!(listed["deadLetters"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("404"));
    let unauth = admin.get(&list_url).send().await.unwrap();
    assert_eq!(unauth.status(), 401);
    let wrong = admin
        .get(&list_url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["code"], "7001");

    rx.status.store(200, std::sync::atomic::Ordering::SeqCst);
    let id = listed["deadLetters"][0]["id"].as_str().unwrap();
    let r = admin
        .post(format!("http://{}/admin/dead-letters/{id}/replay", d.http))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hooks = rx.wait_for_count(4, WAIT).await;
    assert_eq!(hooks[3].json()["subject"], "second");
    d.stop().await;
}

#[tokio::test]
async fn webhook_posts_reuse_one_connection_to_the_receiver() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    for n in 1..=10 {
        send_simple(d.smtp, &format!("message {n}")).await;
        rx.wait_for_count(n, WAIT).await;
    }
    // One after the other, each POST finds the previous one's connection idle in the pool:
    // the receiver's reply is read to its end, so hyper keeps the connection.
    let connections = rx.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 2,
        "10 webhook POSTs used {connections} connections"
    );
}

async fn send_simple(addr: std::net::SocketAddr, subject: &str) {
    SmtpClientBuilder::new("127.0.0.1", addr.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .expect("connect")
        .send(
            MessageBuilder::new()
                .from("carol@example.org")
                .to("support@example.test")
                .subject(subject)
                .text_body("hello"),
        )
        .await
        .expect("accepted");
}

#[tokio::test]
async fn pending_event_survives_a_clean_restart() {
    let rx = Receiver::start().await;
    rx.status.store(500, std::sync::atomic::Ordering::SeqCst);
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    send_simple(d.smtp, "survivor").await;
    rx.wait_for_count(1, WAIT).await;
    let dir = d.stop().await;
    rx.status.store(200, std::sync::atomic::Ordering::SeqCst);

    // Same data_dir, new ports.
    let h = start_in_process(dir.path(), ConfigBuilder::inbound(&rx.url("")))
        .await
        .handle;
    let hooks = rx.wait_for_count(2, WAIT).await;
    assert_eq!(hooks[1].json()["subject"], "survivor");
    h.shutdown().await;
}

#[tokio::test]
async fn kill_dash_nine_right_after_250_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody listens on the webhook port yet: the event must wait in the outbox.
    let hook_addr = free_port();
    let config = ConfigBuilder::inbound(&format!("http://{hook_addr}")).on_free_ports();
    let smtp = config.smtp_addr();
    let child = ChildDaemon::spawn(dir.path(), &config, &dir.path().join("run1.log")).await;
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    SmtpClientBuilder::new("127.0.0.1", smtp.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .unwrap()
        .send(
            MessageBuilder::new()
                .from("dave@example.org")
                .to("support@example.test")
                .subject("crash")
                .text_body("before the crash")
                .attachment("application/octet-stream", "blob.bin", big.clone()),
        )
        .await
        .expect("250");
    child.kill9();

    let rx = Receiver::start_on(hook_addr).await;
    let _child = ChildDaemon::spawn(dir.path(), &config, &dir.path().join("run2.log")).await;
    let hooks = rx.wait_for_count(1, WAIT).await;
    let ev = hooks[0].json();
    assert_eq!(ev["subject"], "crash");
    assert_eq!(b64(ev["attachments"][0]["content"].as_str().unwrap()), big);
}

#[tokio::test]
async fn url_mode_serves_signed_links_and_refuses_altered_ones() {
    let rx = Receiver::start().await;
    let d =
        TestDaemon::start(ConfigBuilder::inbound(&rx.url("")).asset(|a| a.mo_attachments_url()))
            .await;
    let png = vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3];
    SmtpClientBuilder::new("127.0.0.1", d.smtp.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .unwrap()
        .send(
            MessageBuilder::new()
                .from("erin@example.org")
                .to("support@example.test")
                .subject("linked")
                .text_body("see attachment")
                .attachment("image/png", "a.png", png.clone()),
        )
        .await
        .unwrap();
    let ev = rx.wait_for_count(1, WAIT).await[0].json();
    let att = &ev["attachments"][0];
    assert!(att.get("content").is_none());
    let url = att["url"].as_str().unwrap();
    let client = reqwest::Client::new();
    let got = client.get(url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.unwrap().to_vec(), png);
    let raw = client
        .get(ev["rawUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.starts_with("Authentication-Results: mx.example.test"));
    assert!(raw.contains("Subject: linked"));
    // Another attachment index with this token, or an altered token: refused.
    let other = url.replace("/attachments/0?", "/attachments/1?");
    assert_eq!(client.get(other).send().await.unwrap().status(), 403);
    let altered = format!("{}x", url);
    assert_eq!(client.get(altered).send().await.unwrap().status(), 403);
    d.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_transaction_in_flight() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO c").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    assert!(raw.cmd("DATA").await.starts_with("354"));
    raw.send(b"Subject: in flight\r\n\r\npart one\r\n").await;
    let stopping = tokio::spawn(d.stop());
    // The session is mid-DATA: it is allowed to finish and gets its 250.
    raw.send(b"part two\r\n.\r\n").await;
    let r = raw.reply().await;
    assert!(r.starts_with("250"), "{r}");
    let r = raw.cmd("NOOP").await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    let dir = stopping.await.unwrap();
    // The event of the message accepted during the drain is durable: the next start sends it.
    let h = start_in_process(dir.path(), ConfigBuilder::inbound(&rx.url("")))
        .await
        .handle;
    let hooks = rx.wait_for_count(1, WAIT).await;
    assert_eq!(hooks[0].json()["subject"], "in flight");
    h.shutdown().await;
}

#[tokio::test]
async fn large_message_is_streamed_to_the_webhook_signed_and_intact() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(
        ConfigBuilder::inbound(&rx.url("")).asset(|a| a.webhook_secret("big-secret")),
    )
    .await;
    let blob: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    SmtpClientBuilder::new("127.0.0.1", d.smtp.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .unwrap()
        .send(
            MessageBuilder::new()
                .from("frank@example.org")
                .to("support@example.test")
                .subject("big")
                .text_body("three megabytes")
                .attachment("application/octet-stream", "big.bin", blob.clone()),
        )
        .await
        .unwrap();
    let hook = rx.wait_for_count(1, WAIT).await.remove(0);
    let sig = hook.headers["x-postern-signature"].to_str().unwrap();
    let t: u64 = sig
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("t=")
        .parse()
        .unwrap();
    assert_eq!(
        sig,
        postern::webhooks::signature("big-secret", t, &hook.body)
    );
    let ev = hook.json();
    assert_eq!(b64(ev["attachments"][0]["content"].as_str().unwrap()), blob);
    assert_eq!(ev["attachments"][0]["size"], 3_000_000);
    // The rendered file is removed once the receiver's answer is read (just after the
    // receiver saw the body).
    let spool = d.dir.path().join("data/spool");
    wait_for(WAIT, || {
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("render-"))
    })
    .await;
    d.stop().await;
}

/// `GET /admin/assets/a_demo/inbound` with the admin token.
async fn inbound_view(d: &TestDaemon) -> serde_json::Value {
    admin_json(
        &reqwest::Client::new(),
        format!("http://{}/admin/assets/a_demo/inbound", d.http),
    )
    .await
}

/// SPEC 14: the admin page shows an asset's last mails, a Gmail forwarding confirmation's
/// code and link up front (`GET /admin/assets/{asset}/inbound`, which the page calls).
#[tokio::test]
async fn a_gmail_forwarding_confirmation_shows_its_code_and_link() {
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let link = "https://mail-settings.google.com/mail/vf-%5BANGjdJ9x%5D-Zk2";
    let address = inbound_view(&d).await["forwardingAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let confirmation = MessageBuilder::new()
        .from(("Gmail Team", "forwarding-noreply@google.com"))
        .to(address.as_str())
        .subject("(#612873440) Gmail Forwarding Confirmation - Receive Mail from mary@gmail.com")
        .text_body(format!(
            "mary@gmail.com has requested to automatically forward mail to your email\r\n\
             address support@example.test.\r\nConfirmation code: 612873440\r\n\r\n\
             To allow mary@gmail.com to automatically forward mail to your address, please\r\n\
             click the link below to confirm the request:\r\n\r\n{link}\r\n"
        ));
    let ordinary = MessageBuilder::new()
        .from("alice@example.org")
        .to("sales@example.test")
        .subject("Order 77")
        .text_body("Where is my order? code: 123456");
    for m in [ordinary, confirmation] {
        SmtpClientBuilder::new("127.0.0.1", d.smtp.port())
            .unwrap()
            .implicit_tls(false)
            .connect_plain()
            .await
            .expect("connect")
            .send(m)
            .await
            .expect("accepted");
    }
    rx.wait_for_count(2, WAIT).await;
    let got = inbound_view(&d).await;
    assert_eq!(got["forwardingAddress"], address.as_str(), "{got}");
    assert!(address.starts_with("a_demo@"), "{got}");
    let mails = got["messages"].as_array().unwrap();
    assert_eq!(mails.len(), 2, "{got}");
    let newest = &mails[0];
    assert_eq!(newest["from"], "forwarding-noreply@google.com");
    assert_eq!(newest["confirmation"]["code"], "612873440", "{got}");
    assert_eq!(newest["confirmation"]["link"], link);
    assert_eq!(mails[1]["subject"], "Order 77");
    assert_eq!(mails[1]["confirmation"], serde_json::Value::Null, "{got}");
    let r = reqwest::Client::new()
        .get(format!("http://{}/admin/assets/a_demo/inbound", d.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
