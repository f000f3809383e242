//! Feedback that strangers can send (SPEC 6.3): ARF reports and unsubscribe mail over real
//! SMTP (mail-send), public links hit over HTTP, against the daemon in process with a
//! scriptable smarthost, a real webhook receiver and, for DMARC, a DNS server on loopback.
//! Forged feedback changes nothing, link hits keep the transaction bounded, and mail to the
//! bounce domain is deleted once processed.

mod common;
#[path = "common/dns.rs"]
mod dns;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use serde_json::{json, Value};
use smarthost::{Script, Smarthost};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// SPEC 6.3: bounce-domain mail is deleted within 2 minutes of its processing.
const BOUNCE_DEADLINE: Duration = Duration::from_secs(120);

struct Env {
    handle: Option<postern::Handle>,
    api: String,
    smtp: SocketAddr,
    hooks: Receiver,
    relay: Smarthost,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A sending daemon for asset `a_out` (inbound, with an unsubscribe mailto), trusting
/// `fbl.example.net` as a feedback loop, resolving through `dns` when given.
async fn start(dns: Option<SocketAddr>) -> Env {
    let relay = Smarthost::start(Script::default()).await;
    let hooks = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::outbound(&hooks.url(""), Route::smtp(relay.addr.port()))
        .trusted_reporters(&["fbl.example.net"])
        .asset(|a| a.inbound().unsubscribe("unsub@example.test", &[]));
    let config = match dns {
        Some(server) => config.dns(server),
        None => config,
    };
    let started = start_in_process(dir.path(), config).await;
    Env {
        api: format!("http://{}", started.http),
        smtp: started.smtp,
        handle: Some(started.handle),
        hooks,
        relay,
        client: reqwest::Client::new(),
        dir,
    }
}

impl Env {
    fn store(&self) -> &postern::store::Store {
        &self.handle.as_ref().unwrap().daemon.store
    }

    /// Posts one email; returns its tids.
    async fn send(&self, body: Value) -> Vec<String> {
        let r = self
            .client
            .post(format!("{}/v2/messages", self.api))
            .header("key", "key-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["tid"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until the relay has `n` messages and each has its 7501.
    async fn relayed(&self, n: usize) -> Vec<smarthost::Received> {
        let r = self.relay.received.clone();
        wait_for(WAIT, || r.lock().unwrap().len() >= n).await;
        let hooks = self.hooks.clone_hooks();
        wait_for(WAIT, || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.path == "/dlr" && code(&h.json()) == "7501")
                .count()
                >= n
        })
        .await;
        self.relay.messages()
    }

    /// Sends `body` over SMTP with mail-send, as `from` to `to`.
    async fn mail(&self, from: &str, to: &str, body: &str) {
        mail_send::SmtpClientBuilder::new("127.0.0.1", self.smtp.port())
            .unwrap()
            .implicit_tls(false)
            .helo_host("mx.fbl.example.net")
            .connect_plain()
            .await
            .expect("connect")
            .send(mail_send::smtp::message::Message::new(
                from,
                [to],
                body.as_bytes(),
            ))
            .await
            .expect("message accepted");
    }

    /// Waits until every inbound message carrying feedback was processed and deleted.
    async fn processed(&self, within: Duration) {
        let store = self.store().clone();
        wait_for(within, || {
            store.feedback_pending(u64::MAX).unwrap().is_empty() && store.spool_len() == 0
        })
        .await;
    }

    /// Waits until the webhook outbox is empty (every event delivered).
    async fn drained(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let text = self
                .client
                .get(format!("{}/metrics", self.api))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let backlog = text
                .lines()
                .find_map(|l| l.strip_prefix("postern_webhook_backlog "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if backlog == Some(0) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "webhook backlog not drained"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn notes(&self, code_: &str) -> Vec<Value> {
        self.hooks
            .delivered()
            .iter()
            .filter(|h| h.path == "/dlr")
            .map(|h| h.json())
            .filter(|n| code(n) == code_)
            .collect()
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.hooks
            .delivered()
            .iter()
            .filter(|h| h.path == "/mo")
            .map(|h| h.json())
            .filter(|e| e["event"] == kind)
            .collect()
    }

    async fn suppressed(&self) -> Vec<(String, String)> {
        let v: Value = admin_json(
            &self.client,
            format!("{}/admin/suppressions?asset=a_out", self.api),
        )
        .await;
        let mut out: Vec<(String, String)> = v["suppressions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["address"].as_str().unwrap().to_string(),
                    s["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    async fn status(&self, tid: &str) -> (usize, Value) {
        let r = self
            .client
            .get(format!("{}/v2/messages/{tid}", self.api))
            .header("key", "key-a")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        (bytes.len(), serde_json::from_slice(&bytes).unwrap())
    }

    async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

fn code(n: &Value) -> String {
    n["deliveryInfoNotification"]["deliveryInfo"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn info(n: &Value) -> &Value {
    &n["deliveryInfoNotification"]["deliveryInfo"]
}

fn email(to: &[&str]) -> Value {
    json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": to}],
        "content": {"type": "text", "subject": "Hello", "text": "Hi $(unsubscribe)"},
    })
}

fn header_of(data: &[u8], name: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse(data)?;
    parsed
        .header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// An ARF report from `from`, about the message whose Message-ID is `<tid@mx.example.test>`,
/// naming `rcpt` in Original-Rcpt-To.
fn arf(from: &str, tid: &str, rcpt: &str) -> String {
    format!(
        "From: {from}\r\nTo: fbl@bounces.example.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"p\"\r\n\r\n--p\r\nContent-Type: text/plain\r\n\r\nAbuse report.\r\n\r\n--p\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <{rcpt}>\r\n\r\n--p\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@example.test\r\nTo: {rcpt}\r\nSubject: Hello\r\nMessage-ID: <{tid}@mx.example.test>\r\n\r\nHi\r\n\r\n--p--\r\n"
    )
}

/// A zone in which `fbl.example.net` (SPF for 127.0.0.1, DMARC) passes aligned DMARC.
async fn fbl_dns() -> SocketAddr {
    let mut zone = HashMap::new();
    for d in ["fbl.example.net", "isp.example.org"] {
        zone.insert(d.to_string(), "v=spf1 ip4:127.0.0.1 -all".to_string());
        zone.insert(format!("_dmarc.{d}"), "v=DMARC1; p=reject".to_string());
    }
    dns::serve(zone).await
}

#[tokio::test]
async fn forged_arf_naming_another_address_changes_nothing() {
    let env = start(None).await;
    let ann = env.send(email(&["ann@example.org"])).await.remove(0);
    let bob = env.send(email(&["bob@example.org"])).await.remove(0);
    let msgs = env.relayed(2).await;
    let ann_verp = msgs
        .iter()
        .find(|m| m.rcpts == ["ann@example.org"])
        .unwrap()
        .mail_from
        .clone();

    // Ann reports her own copy (its Message-ID, and then its signed VERP address) but
    // names Bob: nothing changes for anyone.
    env.mail(
        "abuse@isp.example.org",
        "fbl@bounces.example.test",
        &arf("abuse@isp.example.org", &ann, "bob@example.org"),
    )
    .await;
    env.mail(
        "abuse@isp.example.org",
        &ann_verp,
        &arf("abuse@isp.example.org", &ann, "bob@example.org"),
    )
    .await;
    env.processed(WAIT).await;
    env.drained().await;
    assert_eq!(env.suppressed().await, []);
    assert!(env.notes("7521").is_empty());

    // The same report naming Ann herself is a complaint about Ann only.
    env.mail(
        "abuse@isp.example.org",
        "fbl@bounces.example.test",
        &arf("abuse@isp.example.org", &ann, "ann@example.org"),
    )
    .await;
    let hooks = env.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.path == "/dlr" && code(&h.json()) == "7521")
    })
    .await;
    let complaints = env.notes("7521");
    assert_eq!(complaints.len(), 1);
    assert_eq!(info(&complaints[0])["destination"], "ann@example.org");
    assert_eq!(complaints[0]["deliveryInfoNotification"]["transid"], ann);
    assert_eq!(
        env.suppressed().await,
        [("ann@example.org".to_string(), "complained".to_string())]
    );
    assert!(env
        .notes("7521")
        .iter()
        .all(|n| n["deliveryInfoNotification"]["transid"] != bob));
    env.stop().await;
}

#[tokio::test]
async fn multi_recipient_arf_needs_a_trusted_reporter_passing_aligned_dmarc() {
    let dns = fbl_dns().await;
    let env = start(Some(dns)).await;
    let mut b = email(&["ann@example.org", "bob@example.org"]);
    b["multipleToRecipients"] = true.into();
    let tid = env.send(b).await.remove(0);
    env.relayed(1).await;

    // A recipient's own ISP (DMARC passes, but not a trusted feedback loop), and a
    // "trusted" From that does not authenticate (sent from another envelope domain):
    // both ignored.
    env.mail(
        "abuse@isp.example.org",
        "fbl@bounces.example.test",
        &arf("abuse@isp.example.org", &tid, "bob@example.org"),
    )
    .await;
    env.mail(
        "someone@elsewhere.example",
        "fbl@bounces.example.test",
        &arf("feedback@fbl.example.net", &tid, "bob@example.org"),
    )
    .await;
    env.processed(WAIT).await;
    env.drained().await;
    assert_eq!(env.suppressed().await, []);
    assert!(env.notes("7521").is_empty());

    // The trusted feedback loop, authenticated: acted on for the address it names.
    env.mail(
        "feedback@fbl.example.net",
        "fbl@bounces.example.test",
        &arf("feedback@fbl.example.net", &tid, "bob@example.org"),
    )
    .await;
    let hooks = env.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.path == "/dlr" && code(&h.json()) == "7521")
    })
    .await;
    let complaints = env.notes("7521");
    assert_eq!(complaints.len(), 1);
    assert_eq!(info(&complaints[0])["destination"], "bob@example.org");
    assert_eq!(
        env.suppressed().await,
        [("bob@example.org".to_string(), "complained".to_string())]
    );
    env.stop().await;
}

#[tokio::test]
async fn unsubscribe_by_mail_needs_the_token_or_an_aligned_dmarc_from() {
    let dns = fbl_dns().await;
    let env = start(Some(dns)).await;
    env.send(email(&["ann@example.org"])).await;
    let msgs = env.relayed(1).await;
    let list = header_of(&msgs[0].data, "List-Unsubscribe").expect("List-Unsubscribe");
    let mailto = list
        .split("<mailto:")
        .nth(1)
        .and_then(|m| m.split('>').next())
        .unwrap()
        .to_string();
    let (address, query) = mailto.split_once('?').unwrap();
    assert_eq!(address, "unsub@example.test");
    let subject: String = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "subject")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert!(subject.starts_with("unsubscribe "), "{subject}");

    // Without the token, an unauthenticated From (no SPF/DMARC for example.org here)
    // changes nothing, whoever it names.
    env.mail(
        "ann@example.org",
        "unsub@example.test",
        "From: ann@example.org\r\nTo: unsub@example.test\r\nSubject: unsubscribe\r\n\r\nplease\r\n",
    )
    .await;
    env.processed(WAIT).await;
    env.drained().await;
    assert_eq!(env.suppressed().await, []);
    assert!(env.events("Unsubscribe").is_empty());

    // With the token the mailto gave, Ann is unsubscribed, whatever the From says.
    env.mail(
        "mailer@client.example",
        "unsub@example.test",
        &format!(
            "From: someone@client.example\r\nTo: unsub@example.test\r\nSubject: {subject}\r\n\r\n"
        ),
    )
    .await;
    let hooks = env.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks.lock().unwrap().iter().any(|h| h.path == "/mo")
    })
    .await;
    let ev = &env.events("Unsubscribe")[0];
    assert_eq!(ev["from"], "ann@example.org");
    assert_eq!(ev["senderId"], "news@example.test");
    assert_eq!(ev["appId"], "a_out");
    assert_eq!(
        env.suppressed().await,
        [("ann@example.org".to_string(), "unsubscribed".to_string())]
    );

    // Without a token, a From that passes aligned DMARC speaks for itself.
    env.mail(
        "reader@fbl.example.net",
        "unsub@example.test",
        "From: Reader <reader@fbl.example.net>\r\nTo: unsub@example.test\r\nSubject: unsubscribe\r\n\r\nplease\r\n",
    )
    .await;
    let hooks = env.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == "/mo")
            .count()
            >= 2
    })
    .await;
    assert_eq!(
        env.events("Unsubscribe")[1]["from"],
        "reader@fbl.example.net"
    );
    env.processed(WAIT).await;
    env.stop().await;
}

#[tokio::test]
async fn multi_recipient_unsubscribe_has_no_one_click_and_asks_for_a_listed_address() {
    let env = start(None).await;
    let mut b = email(&["ann@example.org", "bob@example.org"]);
    b["multipleToRecipients"] = true.into();
    env.send(b).await;
    let msgs = env.relayed(1).await;
    let data = &msgs[0].data;
    assert_eq!(header_of(data, "List-Unsubscribe-Post"), None);
    let list = header_of(data, "List-Unsubscribe").expect("List-Unsubscribe");
    assert!(
        list.contains("<mailto:unsub@example.test?subject=unsubscribe>"),
        "no per-recipient token for a shared message: {list}"
    );
    let url = list
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();

    let page = env.client.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("name=\"address\""), "{page}");

    let post = |body: &'static str| {
        env.client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(
        post("List-Unsubscribe=One-Click").await.unwrap().status(),
        400
    );
    assert_eq!(post("action=unsubscribe").await.unwrap().status(), 400);
    let r = post("action=unsubscribe&address=eve%40example.org")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Nothing was changed"));
    assert_eq!(env.suppressed().await, []);

    let r = post("action=unsubscribe&address=Bob%40example.org")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("bob@example.org"));
    assert_eq!(
        env.suppressed().await,
        [("bob@example.org".to_string(), "unsubscribed".to_string())]
    );
    let hooks = env.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks.lock().unwrap().iter().any(|h| h.path == "/mo")
    })
    .await;
    assert_eq!(env.events("Unsubscribe")[0]["from"], "bob@example.org");
    env.stop().await;
}

fn tracked(to: &str) -> Value {
    json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": [to]}],
        "options": {"trackClicks": true, "trackOpens": true},
        "content": {"type": "html", "subject": "Links", "text": "t",
            "html": "<html><body><a href=\"https://shop.example/a\">A</a></body></html>"},
    })
}

fn link(data: &[u8], prefix: &str) -> String {
    let parsed = mail_parser::MessageParser::default().parse(data).unwrap();
    let html = parsed.body_html(0).unwrap().to_string();
    html.split(&format!("{prefix}\""))
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn two_hundred_opens_are_counted_not_appended() {
    let env = start(None).await;
    let tid = env.send(tracked("ann@example.org")).await.remove(0);
    let msgs = env.relayed(1).await;
    let pixel = link(&msgs[0].data, "<img src=");
    for _ in 0..200 {
        let r = env.client.get(&pixel).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "image/gif");
    }
    env.drained().await;
    let reads = env.notes("7502");
    eprintln!("200 opens: {} 7502 notifications", reads.len());
    assert!(!reads.is_empty());
    assert!(
        reads.len() <= 1,
        "one 7502 per 60 s window: {}",
        reads.len()
    );
    let (size, status) = env.status(&tid).await;
    let events = status["events"].as_array().unwrap();
    eprintln!(
        "GET /v2/messages/{{tid}}: {size} bytes, {} history entries",
        events.len()
    );
    assert!(size < 64 * 1024, "{size}");
    assert!(events.len() <= 50);
    assert_eq!(
        events.iter().filter(|e| e["code"] == "7502").count(),
        1,
        "repeated opens are counted, not appended"
    );
    assert_eq!(
        env.store()
            .messages()
            .track_count(&tid, "ann@example.org", "open")
            .await
            .unwrap(),
        200
    );
    env.stop().await;
}

#[tokio::test]
async fn clicks_with_huge_user_agents_keep_the_record_small() {
    let env = start(None).await;
    let tid = env.send(tracked("ann@example.org")).await.remove(0);
    let msgs = env.relayed(1).await;
    let click = link(&msgs[0].data, "<a href=");
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // 60 KB of a multi-byte character: the cut must land on a character boundary.
    let agent = "é".repeat(30 * 1024);
    for _ in 0..20 {
        let r = no_redirect
            .get(&click)
            .header("user-agent", agent.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    }
    env.drained().await;
    let clicks = env.notes("7528");
    assert_eq!(clicks.len(), 20, "every click is notified");
    for c in &clicks {
        let ua = info(c)["additionalInfo"].as_str().unwrap();
        assert!(ua.len() <= 512 && !ua.is_empty(), "{}", ua.len());
    }
    let record = env.store().messages().get(&tid).await.unwrap().unwrap();
    let stored = serde_json::to_vec(&record).unwrap().len();
    let (size, status) = env.status(&tid).await;
    eprintln!("20 clicks with a 60 KB User-Agent: record {stored} bytes, GET {size} bytes");
    assert!(stored < 16 * 1024, "{stored}");
    assert!(size < 64 * 1024, "{size}");
    let events = status["events"].as_array().unwrap();
    assert_eq!(events.iter().filter(|e| e["code"] == "7528").count(), 1);
    env.stop().await;
}

/// Octets under `dir` (the spool directory's files).
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn bounce_domain_mail_is_deleted_once_processed() {
    let env = start(None).await;
    let tid = env.send(email(&["nobody@example.org"])).await.remove(0);
    let msgs = env.relayed(1).await;
    let verp = msgs[0].mail_from.clone();
    let spool = env.dir.path().join("data").join("spool");
    let before = du(&spool);
    // Large enough to be spool files, not inline bodies.
    let pad = format!("{}\r\n", "x".repeat(76)).repeat(2000);
    let dsn = format!(
        "From: MAILER-DAEMON@mx.example.org\r\nTo: {verp}\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n{pad}\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n--B--\r\n"
    );
    env.mail("", &verp, &dsn).await;
    env.mail(
        "abuse@isp.example.org",
        "fbl@bounces.example.test",
        &arf("abuse@isp.example.org", &tid, "nobody@example.org").replace("Abuse report.", &pad),
    )
    .await;
    env.mail(
        "junk@spam.example",
        "anything-at-all@bounces.example.test",
        &format!("From: junk@spam.example\r\nSubject: buy\r\n\r\n{pad}"),
    )
    .await;
    env.mail(
        "junk@spam.example",
        "small@bounces.example.test",
        "From: junk@spam.example\r\nSubject: buy\r\n\r\nsmall\r\n",
    )
    .await;
    // Processed (the DSN became a 7520, the report a 7521), then deleted.
    let hooks = env.hooks.clone_hooks();
    wait_for(WAIT, || {
        let h = hooks.lock().unwrap();
        h.iter()
            .any(|h| h.path == "/dlr" && code(&h.json()) == "7520")
            && h.iter()
                .any(|h| h.path == "/dlr" && code(&h.json()) == "7521")
    })
    .await;
    env.processed(BOUNCE_DEADLINE).await;
    let after = du(&spool);
    eprintln!("spool directory: {before} octets before, {after} after four bounce-domain messages");
    assert!(after <= before, "{before} -> {after}");
    assert_eq!(env.store().spool_len(), 0);
    env.stop().await;
}
