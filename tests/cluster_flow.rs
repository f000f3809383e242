//! Transactions across a cluster (SPEC 13), end to end: several daemons in process, each
//! with its own data directory, ports and `public_url`, sharing one private PostgreSQL
//! (`common/pg.rs`), one smarthost and one webhook receiver. A transaction accepted by one
//! node is read on another, and feedback about it (a click, an open, a DSN) arriving at
//! any node reaches it and notifies the request's own `notifyUrl`. Last, the way from one
//! node to several: `postern cluster adopt` moves a stopped single node's state into the
//! database, and a new node sees it.
//!
//! The cluster helpers are a trimmed copy of `tests/cluster.rs`'s (owned there).

mod common;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use pg::PgServer;
use serde_json::{json, Value};
use smarthost::{Script, Smarthost};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
/// SPEC 13: a transaction's status and history are readable on every node within 2 s of
/// each change.
const READABLE: Duration = Duration::from_secs(2);
/// SPEC 13: a suppression, consent change or template applies everywhere 1 s later.
const PROPAGATION: Duration = Duration::from_secs(1);
const ADMIN: &str = "admin-secret";
/// The path of the requests' own `notifyUrl` on the receiver (the asset's delivery
/// webhook is `/dlr`: a notification there would mean the request's URL was lost).
const NOTIFY: &str = "/notify";
const CALLBACK: &str = "cb-flow-1";
const CORRELATION: &str = "corr-1";

/// One daemon of the cluster, in process, in a directory of its own.
struct Node {
    id: String,
    handle: Option<postern::Handle>,
    /// `http://host:port` of its HTTP listener (also its `public_url`).
    api: String,
    smtp: SocketAddr,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(id: &str, config: ConfigBuilder) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let started = start_in_process(dir.path(), config).await;
        Node {
            id: id.to_string(),
            handle: Some(started.handle),
            api: format!("http://{}", started.http),
            smtp: started.smtp,
            dir,
        }
    }

    async fn shutdown(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

/// Nodes sharing `pg`, sending through `relay` (preset `ConfigBuilder::outbound`: asset
/// `a_out`, service `key-a`), notifying `hooks`.
struct Cluster {
    nodes: Vec<Node>,
    hooks: Receiver,
    relay: Smarthost,
    client: reqwest::Client,
    /// Follows no redirect (click links).
    no_redirect: reqwest::Client,
    // Last, so the nodes are dropped before their database.
    pg: PgServer,
}

impl Cluster {
    /// Nodes `ids`, started one after the other (the first applies the migrations), each
    /// ready before the next starts.
    async fn start(ids: &[&str]) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            hooks: Receiver::start().await,
            relay: Smarthost::start(Script::default()).await,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            no_redirect: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            pg: PgServer::start().await,
        };
        for id in ids {
            let config = node_config(&c.hooks, &c.relay, Some((&c.pg.url(), id)));
            c.nodes.push(Node::start(id, config).await);
            c.wait_ready(id).await;
        }
        c
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    async fn wait_ready(&self, id: &str) {
        let url = format!("{}/readyz", self.node(id).api);
        wait_until(WAIT, &format!("node {id} ready"), async || {
            get_status(&self.client, &url).await == 200
        })
        .await;
    }

    /// `POST /v2/messages` on `node` as `key-a`; must be 202. The tid of the first message.
    async fn send(&self, node: &str, body: &Value) -> String {
        let r = self
            .client
            .post(format!("{}/v2/messages", self.node(node).api))
            .header("key", "key-a")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let reply: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "node {node}: {reply}");
        reply["messages"][0]["tid"].as_str().unwrap().to_string()
    }

    /// `GET /v2/messages/{tid}` on `node` as `key-a`: status and body (Null unless JSON).
    async fn message(&self, node: &str, tid: &str) -> (u16, Value) {
        message_on(&self.client, &self.node(node).api, tid).await
    }

    /// Waits until `node` answers `GET /v2/messages/{tid}` with a body that `cond`
    /// accepts; returns it and when it was answered.
    async fn wait_message(
        &self,
        node: &str,
        tid: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> (Value, Instant) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.message(node, tid).await;
            if status == 200 && cond(&body) {
                return (body, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "node {node}, tid {tid}: {what} not within {WAIT:?}; last answer {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The notifications for `tid` the receiver got at `path` so far.
    fn notes(&self, path: &str, tid: &str) -> Vec<Value> {
        self.hooks
            .delivered()
            .iter()
            .filter(|h| h.path == path)
            .map(Hook::json)
            .filter(|n| n["deliveryInfoNotification"]["transid"] == tid)
            .collect()
    }

    /// Waits for the notification with `code` for `address` in `tid` at the request's
    /// `notifyUrl`; returns it.
    async fn wait_note(&self, tid: &str, address: &str, code: &str) -> Value {
        let find = || {
            self.notes(NOTIFY, tid)
                .into_iter()
                .find(|n| info(n)["code"] == code && info(n)["destination"] == address)
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(n) = find() {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no {code} for {address} (tid {tid}) at {NOTIFY} within {WAIT:?}; got {:?}",
                self.hooks
                    .delivered()
                    .iter()
                    .map(|h| (
                        h.path.clone(),
                        String::from_utf8_lossy(&h.body).into_owned()
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the smarthost got a message for `address`; returns the first.
    async fn wait_relayed(&self, address: &str) -> smarthost::Received {
        wait_relayed(&self.relay, address).await
    }

    async fn stop(mut self) {
        for node in &mut self.nodes {
            node.shutdown().await;
        }
    }
}

/// The outbound preset on `relay`, notifying `hooks`; with `[cluster]` when `cluster` is
/// (database URL, node id).
fn node_config(
    hooks: &Receiver,
    relay: &Smarthost,
    cluster: Option<(&str, &str)>,
) -> ConfigBuilder {
    let config = ConfigBuilder::outbound(&hooks.url(""), Route::smtp(relay.addr.port()));
    match cluster {
        Some((url, id)) => config
            .set("cluster.database_url", url)
            .set("cluster.node_id", id),
        None => config,
    }
}

async fn message_on(client: &reqwest::Client, api: &str, tid: &str) -> (u16, Value) {
    match client
        .get(format!("{api}/v2/messages/{tid}"))
        .header("key", "key-a")
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn wait_relayed(relay: &Smarthost, address: &str) -> smarthost::Received {
    let received = relay.received.clone();
    wait_for(WAIT, || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.rcpts.iter().any(|r| r == address))
    })
    .await;
    relay
        .messages()
        .into_iter()
        .find(|m| m.rcpts.iter().any(|r| r == address))
        .unwrap()
}

fn info(n: &Value) -> &Value {
    &n["deliveryInfoNotification"]["deliveryInfo"]
}

/// The history entries (`events`) of a `GET /v2/messages/{tid}` body with `code`.
fn events_with<'a>(status: &'a Value, code: &str) -> Vec<&'a Value> {
    status["events"]
        .as_array()
        .map(|a| a.iter().filter(|e| e["code"] == code).collect())
        .unwrap_or_default()
}

/// A text email to `to` (one tid each) from news@example.test, its notifications to the
/// receiver's `NOTIFY` path, with a correlation id and callback data.
fn email(hooks: &Receiver, to: &[&str], subject: &str) -> Value {
    json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": to, "correlationId": CORRELATION}],
        "content": {"type": "text", "subject": subject, "text": "Hello"},
        "notifyUrl": hooks.url(NOTIFY),
        "callbackData": CALLBACK,
    })
}

/// An html email to `to` whose one link (to `target`) is tracked, with an open pixel.
fn tracked(hooks: &Receiver, to: &str, target: &str) -> Value {
    let mut b = email(hooks, &[to], "Links");
    b["options"] = json!({"trackClicks": true, "trackOpens": true});
    b["content"] = json!({
        "type": "html", "subject": "Links", "text": "see the shop",
        "html": format!("<html><body><a href=\"{target}\">Shop</a></body></html>"),
    });
    b
}

/// The value of the attribute introduced by `prefix` (`<a href=`, `<img src=`) in the
/// html part of `data`.
fn link(data: &[u8], prefix: &str) -> String {
    let parsed = mail_parser::MessageParser::default().parse(data).unwrap();
    let html = parsed.body_html(0).unwrap().to_string();
    html.split(&format!("{prefix}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no {prefix} in {html}"))
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

/// `link` with its scheme, host and port replaced by `node`'s (`http://host:port`).
fn on_node(link: &str, node: &str) -> String {
    let mut url = url::Url::parse(link).unwrap();
    let base = url::Url::parse(node).unwrap();
    url.set_host(base.host_str()).unwrap();
    url.set_port(base.port()).unwrap();
    url.to_string()
}

/// A DSN (RFC 3464) reporting a hard bounce (5.1.1) of `rcpt`, sent to `verp`.
fn dsn(verp: &str, rcpt: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.org\r\nTo: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: User unknown\r\n\r\n--B--\r\n"
    )
}

/// Delivers `body` by SMTP to `smtp`, null sender, for `to`; every step must succeed.
async fn deliver(smtp: SocketAddr, to: &str, body: &str) {
    let (mut raw, banner) = Raw::connect(smtp).await;
    assert!(banner.starts_with("220"), "{banner}");
    let r = raw.cmd("EHLO mx.example.org").await;
    assert!(r.starts_with("250"), "EHLO: {r}");
    let r = raw.cmd("MAIL FROM:<>").await;
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = raw.cmd(&format!("RCPT TO:<{to}>")).await;
    assert!(r.starts_with("250"), "RCPT {to}: {r}");
    let r = raw.cmd("DATA").await;
    assert!(r.starts_with("354"), "DATA: {r}");
    let r = raw.cmd(&format!("{body}.")).await;
    assert!(r.starts_with("250"), "end of data: {r}");
    raw.cmd("QUIT").await;
}

async fn get_status(client: &reqwest::Client, url: &str) -> u16 {
    match client.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The suppressions of asset `a_out` listed by `api`: (address, reason), sorted.
async fn suppressions(client: &reqwest::Client, api: &str) -> Vec<(String, String)> {
    let v: Value = client
        .get(format!("{api}/admin/suppressions?asset=a_out"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<(String, String)> = v["suppressions"]
        .as_array()
        .unwrap_or_else(|| panic!("a suppression list: {v}"))
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

/// Checks the echo of the request's per-request data in a notification.
fn assert_request_data(n: &Value) {
    let d = &n["deliveryInfoNotification"];
    assert_eq!(d["correlationid"], CORRELATION, "{n}");
    assert_eq!(d["callbackData"], CALLBACK, "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_accepted_on_one_node_is_read_on_another() {
    let c = Cluster::start(&["a", "b", "c"]).await;
    // One transaction, two recipients: the smarthost takes ann, refuses reject-bob at RCPT.
    let mut body = email(
        &c.hooks,
        &["ann@example.org", "reject-bob@example.org"],
        "Hi",
    );
    body["multipleToRecipients"] = true.into();
    let tid = c.send("a", &body).await;

    let submitted = c.wait_note(&tid, "ann@example.org", "7501").await;
    let bounced = c.wait_note(&tid, "reject-bob@example.org", "7520").await;
    assert_request_data(&submitted);
    assert_request_data(&bounced);
    assert!(
        c.notes("/dlr", &tid).is_empty(),
        "every notification goes to the request's notifyUrl"
    );
    let relayed = c.wait_relayed("ann@example.org").await;
    assert_eq!(relayed.rcpts, ["ann@example.org"]);

    // A's own answer once the transaction is finished.
    let (on_a, answered_a) = c
        .wait_message("a", &tid, "done with both outcomes", |s| {
            s["state"] == "done" && s["events"].as_array().is_some_and(|e| e.len() >= 2)
        })
        .await;
    assert_eq!(on_a["tid"], tid.as_str());
    assert_eq!(on_a["from"], "news@example.test");
    let recipients: Vec<(&str, &str)> = on_a["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        recipients,
        [
            ("ann@example.org", "submitted"),
            ("reject-bob@example.org", "failed")
        ],
        "{on_a}"
    );
    assert_eq!(events_with(&on_a, "7501").len(), 1, "{on_a}");
    assert_eq!(events_with(&on_a, "7520").len(), 1, "{on_a}");

    // C (and B) answer the same, whole body, within 2 s of A's answer.
    for node in ["c", "b"] {
        let (on_other, answered) = c
            .wait_message(node, &tid, "the same answer as A", |s| s == &on_a)
            .await;
        let lag = answered.saturating_duration_since(answered_a);
        eprintln!("node {node} answered as A {lag:?} after A");
        assert!(lag <= READABLE, "node {node}: {lag:?} after A");
        assert_eq!(on_other, on_a);
    }
    // Another service's tid is not found on another node either.
    let r = c
        .client
        .get(format!("{}/v2/messages/{tid}", c.node("c").api))
        .header("key", "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_link_made_by_one_node_is_followed_on_another() {
    let c = Cluster::start(&["a", "b", "c"]).await;
    let target = "https://shop.example/item?x=1&y=2";
    let tid = c
        .send("a", &tracked(&c.hooks, "ann@example.org", target))
        .await;
    let mail = c.wait_relayed("ann@example.org").await;
    let click = link(&mail.data, "<a href=");
    let pixel = link(&mail.data, "<img src=");
    assert!(
        click.starts_with(&format!("{}/t/c/", c.node("a").api)),
        "A's public_url: {click}"
    );
    c.wait_note(&tid, "ann@example.org", "7501").await;
    // The click comes after the transaction finished and reached the database (read on
    // B); a click racing that copy is `..._before_the_database_has_the_finished_...`.
    c.wait_message("b", &tid, "done", |s| s["state"] == "done")
        .await;

    // On C, whose public_url differs: A's signature verifies, the redirect is A's URL.
    let on_c = on_node(&click, &c.node("c").api);
    assert_ne!(on_c, click);
    let r = c
        .no_redirect
        .get(&on_c)
        .header("user-agent", "FlowAgent/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{on_c}");
    assert_eq!(r.headers()["location"], target);

    let clicked = c.wait_note(&tid, "ann@example.org", "7528").await;
    assert_eq!(info(&clicked)["deliveryStatus"], "Clicked");
    assert_eq!(info(&clicked)["Description"], format!("{target}|127.0.0.1"));
    assert_eq!(info(&clicked)["additionalInfo"], "FlowAgent/1.0");
    assert_request_data(&clicked);

    // The open pixel, on B.
    let r = c
        .client
        .get(on_node(&pixel, &c.node("b").api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/gif");
    let read = c.wait_note(&tid, "ann@example.org", "7502").await;
    assert_request_data(&read);
    assert!(c.notes("/dlr", &tid).is_empty());

    // The history read on B (neither the sender nor the clicked node) shows both.
    let (on_b, _) = c
        .wait_message("b", &tid, "the click and the open in the history", |s| {
            !events_with(s, "7528").is_empty() && !events_with(s, "7502").is_empty()
        })
        .await;
    let click_event = events_with(&on_b, "7528")[0];
    assert_eq!(click_event["destination"], "ann@example.org");
    assert_eq!(click_event["description"], format!("{target}|127.0.0.1"));
    assert_eq!(events_with(&on_b, "7501").len(), 1, "{on_b}");
    // A forged link is refused on C and redirects nowhere.
    let forged = format!("{}/t/c/eyJ4IjoxfQ.AAAA", c.node("c").api);
    let r = c.no_redirect.get(&forged).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(!r.headers().contains_key("location"));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_delivered_to_another_node_reaches_the_transaction() {
    let c = Cluster::start(&["a", "b", "c"]).await;
    let tid = c
        .send("a", &email(&c.hooks, &["nobody@example.org"], "Hi"))
        .await;
    let mail = c.wait_relayed("nobody@example.org").await;
    let verp = mail.mail_from.clone();
    assert!(verp.ends_with("@bounces.example.test"), "{verp}");
    c.wait_note(&tid, "nobody@example.org", "7501").await;
    // As in the click test: the DSN comes once the finished transaction is shared.
    c.wait_message("c", &tid, "done", |s| s["state"] == "done")
        .await;

    // The remote MTA's DSN reaches B's MX, addressed to A's signed VERP return path.
    deliver(c.node("b").smtp, &verp, &dsn(&verp, "nobody@example.org")).await;
    let bounce = c.wait_note(&tid, "nobody@example.org", "7520").await;
    assert_eq!(info(&bounce)["deliveryStatus"], "Bounce");
    assert_eq!(info(&bounce)["Description"], "Permanent_NoEmail");
    assert_eq!(
        info(&bounce)["additionalInfo"],
        "5.1.1|failed|smtp; 550 5.1.1 <nobody@example.org>: User unknown"
    );
    assert_request_data(&bounce);
    assert!(c.notes("/dlr", &tid).is_empty());

    // The history read on C shows it.
    let (on_c, _) = c
        .wait_message("c", &tid, "the bounce in the history", |s| {
            !events_with(s, "7520").is_empty()
        })
        .await;
    let event = events_with(&on_c, "7520")[0];
    assert_eq!(event["destination"], "nobody@example.org");
    assert_eq!(event["description"], "Permanent_NoEmail");

    // A hard bounce suppresses: C lists it, and C's next send to it ends with 7240.
    assert_eq!(
        suppressions(&c.client, &c.node("c").api).await,
        [("nobody@example.org".to_string(), "bounced".to_string())]
    );
    tokio::time::sleep(PROPAGATION).await;
    let again = c
        .send("c", &email(&c.hooks, &["nobody@example.org"], "again"))
        .await;
    let refused = c.wait_note(&again, "nobody@example.org", "7240").await;
    assert_eq!(
        info(&refused)["Description"],
        "already bounced : nobody@example.org"
    );
    assert_eq!(
        c.relay
            .messages()
            .iter()
            .filter(|m| m.rcpts.iter().any(|r| r == "nobody@example.org"))
            .count(),
        1,
        "the bounced address never reaches the smarthost again"
    );
    c.stop().await;
}

/// SPEC 13: feedback arriving at any node reaches the transaction, whichever node sent
/// it. Here a click arrives at B after A finished the transaction but before A's mirror
/// task has copied the finished record (the copy is held back by a row lock, standing
/// for the milliseconds it normally takes). The click is redirected at once; its
/// notification and history entry follow once the copy lands (it is retried meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_on_another_node_before_the_database_has_the_finished_transaction_reaches_its_history(
) {
    let c = Cluster::start(&["a", "b"]).await;
    let target = "https://shop.example/early";
    let mut body = tracked(&c.hooks, "early@example.org", target);
    // Sent two to three seconds from now, so the queued record is in the database first.
    let send_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3;
    body["sendAt"] = send_at.into();
    let tid = c.send("a", &body).await;
    c.wait_message("b", &tid, "the queued transaction", |s| {
        s["state"] != "done"
    })
    .await;
    let lock = pg::RowLock::take(&c.pg.url(), &tid).await;

    let mail = c.wait_relayed("early@example.org").await;
    c.wait_note(&tid, "early@example.org", "7501").await;
    let (on_a, _) = c
        .wait_message("a", &tid, "done on its owner", |s| s["state"] == "done")
        .await;
    assert_eq!(events_with(&on_a, "7501").len(), 1);
    let (status, on_b) = c.message("b", &tid).await;
    assert_eq!(status, 200);
    assert_ne!(on_b["state"], "done", "the copy is held back: {on_b}");

    let click = on_node(&link(&mail.data, "<a href="), &c.node("b").api);
    let r = c.no_redirect.get(&click).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], target);

    // The click waits for the finished copy (it is retried in the background), so its
    // notification and history entry come together once the owner's copy lands.
    lock.release().await;
    c.wait_message("b", &tid, "done on B", |s| s["state"] == "done")
        .await;
    c.wait_note(&tid, "early@example.org", "7528").await;
    // Normally within a second of the copy (the retry period); 5 s is generous.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, on_a) = c.message("a", &tid).await;
        let (_, on_b) = c.message("b", &tid).await;
        if !events_with(&on_a, "7528").is_empty() && !events_with(&on_b, "7528").is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the click (notified 7528) never reached the history of {tid}: A {on_a}, B {on_b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop().await;
}

/// `postern ARGS` (the binary cargo built for these tests): exit code, stdout, stderr.
async fn postern(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run postern");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn signing_key(data_dir: &Path) -> Vec<u8> {
    std::fs::read(data_dir.join("keys").join("signing.key")).expect("data_dir/keys/signing.key")
}

/// A service request (`key: key-a`) on `api`: its status.
async fn service_call(
    client: &reqwest::Client,
    method: reqwest::Method,
    api: &str,
    path: &str,
    body: Option<Value>,
) -> u16 {
    let mut req = client
        .request(method, format!("{api}{path}"))
        .header("key", "key-a");
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

/// An admin request on `api`: its status.
async fn admin_call(
    client: &reqwest::Client,
    method: reqwest::Method,
    api: &str,
    path: &str,
    body: Option<Value>,
) -> u16 {
    let mut req = client
        .request(method, format!("{api}{path}"))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap().status().as_u16()
}

/// What the single node left behind for the adopt test.
struct SingleNode {
    dir: tempfile::TempDir,
    /// Its data directory.
    data: PathBuf,
    /// A click link it signed, and where it leads.
    click: String,
    target: String,
    /// A transaction it sent (finished).
    tid: String,
}

/// Runs a node without `[cluster]`, gives it a suppression, a template, a consent and a
/// counted send of group `promo`, and a tracked send; then stops it.
async fn populated_single_node(
    hooks: &Receiver,
    relay: &Smarthost,
    client: &reqwest::Client,
) -> SingleNode {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = node_config(hooks, relay, None).contact_policy("promo", 1, 3600);
    let started = start_in_process(dir.path(), config).await;
    let api = format!("http://{}", started.http);
    let post = reqwest::Method::POST;
    let status = admin_call(
        client,
        post.clone(),
        &api,
        "/admin/suppressions",
        Some(json!({"assetId": "a_out", "address": "Gone@Example.org", "reason": "unsubscribed"})),
    )
    .await;
    assert_eq!(status, 201);
    let template = json!({"id": "welcome", "name": "Welcome", "subject": "Welcome $(name)",
                          "text": "Hi $(name)", "html": "<b>Hi $(name)</b>"});
    let status = service_call(client, post.clone(), &api, "/v2/templates", Some(template)).await;
    assert_eq!(status, 201);
    let put = reqwest::Method::PUT;
    let status = admin_call(
        client,
        put,
        &api,
        "/admin/consent/promo/yes@example.org",
        None,
    )
    .await;
    assert_eq!(status, 204);

    // One counted send of group promo (cap: one an hour), and one tracked send.
    let mut policy = email(hooks, &["yes@example.org"], "promo");
    policy["contactPolicy"] = json!({"contactPolicyGroup": "promo",
        "channelCheckConsent": true, "channelApplyFrequencyCap": true});
    let target = "https://shop.example/single".to_string();
    let mut tids = Vec::new();
    for body in [policy, tracked(hooks, "ann@example.org", &target)] {
        let r = client
            .post(format!("{api}/v2/messages"))
            .header("key", "key-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        tids.push(v["messages"][0]["tid"].as_str().unwrap().to_string());
    }
    wait_relayed(relay, "yes@example.org").await;
    let mail = wait_relayed(relay, "ann@example.org").await;
    let click = link(&mail.data, "<a href=");
    let tid = tids.pop().unwrap();
    let done = async || message_on(client, &api, &tid).await.1["state"] == "done";
    wait_until(WAIT, "the single node's sends finished", done).await;
    started.handle.shutdown().await;
    SingleNode {
        dir,
        data,
        click,
        target,
        tid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_adopt_moves_a_single_nodes_state_and_a_second_node_sees_it() {
    let hooks = Receiver::start().await;
    let relay = Smarthost::start(Script::default()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let pg = PgServer::start().await;
    let single = populated_single_node(&hooks, &relay, &client).await;

    // Its configuration plus [cluster], on its data directory.
    let adopt_dir = tempfile::tempdir().unwrap();
    let adopt_config = node_config(&hooks, &relay, Some((&pg.url(), "a")))
        .contact_policy("promo", 1, 3600)
        .data_dir(&single.data)
        .write_in(adopt_dir.path());
    let (code, stdout, stderr) = postern(&["cluster", "adopt"], &adopt_config).await;
    eprintln!("adopt: {code}\n{stdout}{stderr}");
    assert_eq!(code, 0, "{stdout}{stderr}");
    for line in [
        "suppressions: 1",
        "templates: 1",
        "consent: 1",
        "sends: 1",
        "secrets: 1",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "adopt names {line}: {stdout}"
        );
    }
    assert!(stdout.contains("domains: 0"), "{stdout}");

    // Again: refused, naming what the database holds, and nothing changes.
    let (code, stdout, stderr) = postern(&["cluster", "adopt"], &adopt_config).await;
    eprintln!("adopt again: {code}\n{stdout}{stderr}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    for held in [
        "suppressions: 1 rows",
        "templates: 1 rows",
        "consent: 1 rows",
        "sends: 1 rows",
        "secrets: 1 rows",
    ] {
        assert!(stderr.contains(held), "the refusal names {held}: {stderr}");
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM suppressions").await.unwrap(),
        "1"
    );

    // A second node, new data directory, [cluster] on that database.
    let config =
        node_config(&hooks, &relay, Some((&pg.url(), "b"))).contact_policy("promo", 1, 3600);
    let mut second = Node::start("b", config).await;
    let api = second.api.clone();
    wait_until(WAIT, "node b ready", async || {
        get_status(&client, &format!("{api}/readyz")).await == 200
    })
    .await;
    assert_eq!(
        signing_key(&second.dir.path().join("data")),
        signing_key(&single.data),
        "the second node signs with the adopted link key"
    );

    // The suppression: listed, and a send to it ends with 7241 without being relayed.
    assert_eq!(
        suppressions(&client, &api).await,
        [("gone@example.org".to_string(), "unsubscribed".to_string())]
    );
    let hook_log = hooks.clone_hooks();
    let note = async |tid: &str, code: &str| {
        let found = || {
            hook_log.lock().unwrap().iter().any(|h| {
                h.path == NOTIFY && {
                    let n = h.json();
                    n["deliveryInfoNotification"]["transid"] == tid && info(&n)["code"] == code
                }
            })
        };
        wait_for(WAIT, found).await;
    };
    let send = async |body: Value| {
        let r = client
            .post(format!("{api}/v2/messages"))
            .header("key", "key-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        v["messages"][0]["tid"].as_str().unwrap().to_string()
    };
    let gone = send(email(&hooks, &["gone@example.org"], "still there?")).await;
    note(&gone, "7241").await;

    // The template.
    let mut templated = email(&hooks, &["tess@example.org"], "unused");
    templated.as_object_mut().unwrap().remove("content");
    templated["template"] = json!({"id": "welcome"});
    templated["to"][0]["substitutions"] = json!({"name": "Tess"});
    let t = send(templated).await;
    note(&t, "7501").await;
    let mail = wait_relayed(&relay, "tess@example.org").await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Welcome Tess"));

    // The consent list, and the frequency counter of the single node's send.
    let consent = client
        .get(format!("{api}/admin/consent/promo"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(consent.contains("yes@example.org"), "{consent}");
    let mut capped = email(&hooks, &["yes@example.org"], "promo again");
    capped["contactPolicy"] = json!({"contactPolicyGroup": "promo",
        "channelCheckConsent": true, "channelApplyFrequencyCap": true});
    let capped = send(capped).await;
    note(&capped, "7594").await;

    // A link the single node signed verifies on the second node.
    let click = on_node(&single.click, &api);
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect.get(&click).send().await.unwrap();
    assert_eq!(r.status(), 302, "{click}");
    assert_eq!(r.headers()["location"], single.target.as_str());
    assert_eq!(
        relay
            .messages()
            .iter()
            .filter(|m| m
                .rcpts
                .iter()
                .any(|r| r == "gone@example.org" || r == "yes@example.org"))
            .count(),
        1,
        "only the single node's promo send reached the smarthost"
    );
    second.shutdown().await;
    drop(single.dir);
}

/// SPEC 13: `postern cluster adopt` copies "transaction status and history" too ("a user
/// who outgrows one machine keeps everything"): a transaction the single node finished is
/// read afterwards on the adopted node itself, started in cluster mode on its own
/// `data_dir`, and on a new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_adopt_keeps_the_single_nodes_transactions() {
    let hooks = Receiver::start().await;
    let relay = Smarthost::start(Script::default()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let pg = PgServer::start().await;
    let single = populated_single_node(&hooks, &relay, &client).await;
    let adopted = node_config(&hooks, &relay, Some((&pg.url(), "a")))
        .contact_policy("promo", 1, 3600)
        .data_dir(&single.data);
    let adopt_dir = tempfile::tempdir().unwrap();
    let adopt_config = adopted.write_in(adopt_dir.path());
    let (code, stdout, stderr) = postern(&["cluster", "adopt"], &adopt_config).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    let mut answers = Vec::new();
    let second =
        node_config(&hooks, &relay, Some((&pg.url(), "b"))).contact_policy("promo", 1, 3600);
    for (id, config) in [("a", adopted), ("b", second)] {
        let mut node = Node::start(id, config).await;
        let api = node.api.clone();
        wait_until(WAIT, &format!("node {id} ready"), async || {
            get_status(&client, &format!("{api}/readyz")).await == 200
        })
        .await;
        answers.push((id, message_on(&client, &api, &single.tid).await));
        node.shutdown().await;
    }
    for (id, (status, body)) in answers {
        assert_eq!(
            status, 200,
            "node {id}: the single node's transaction {} is not read after adopt: {body}",
            single.tid
        );
        assert_eq!(body["state"], "done", "node {id}: {body}");
        assert_eq!(events_with(&body, "7501").len(), 1, "node {id}: {body}");
    }
}
