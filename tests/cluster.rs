//! Cluster mode (SPEC 13) end to end: several daemons on loopback, each with its own
//! data directory and ports but the same services and assets, sharing one private
//! PostgreSQL server (`common/pg.rs`), one smarthost and one webhook receiver. What one
//! node changes (suppressions, templates, consent and frequency counters, domain
//! verdicts) applies to every node's sends from 1 s later; with the database gone (or not
//! there yet when the node starts), a node refuses new API work with 503 7010 while its
//! SMTP door and webhooks keep working, and serves again by itself when the database
//! returns; a `node_id` held by a live node is refused, except to that node restarting.

mod common;
#[path = "common/dns.rs"]
mod dns;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use hickory_proto::rr::RecordType;
use pg::PgServer;
use serde_json::{json, Value};
use smarthost::{Script, Smarthost};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// SPEC 13: a change saved through any node applies to every node's sends from 1 s later.
const PROPAGATION: Duration = Duration::from_secs(1);
const ADMIN: &str = "admin-secret";

/// One daemon of the cluster, in-process, in a directory of its own.
struct Node {
    id: String,
    handle: Option<postern::Handle>,
    api: String,
    smtp: SocketAddr,
    /// Its configuration as written (for the command line, and to restart it).
    config: PathBuf,
    builder: ConfigBuilder,
    dir: tempfile::TempDir,
}

/// Nodes `a`, `b`, ... sharing `pg`, sending through `relay` (asset `a_out`, services
/// `key-a` and `key-b`, preset `ConfigBuilder::outbound`), notifying `hooks`.
struct Cluster {
    nodes: Vec<Node>,
    hooks: Receiver,
    relay: Smarthost,
    client: reqwest::Client,
    // Last, so the nodes are dropped before their database.
    pg: PgServer,
}

impl Cluster {
    /// `n` nodes, each configuration changed by `edit`; returns once every node is ready.
    /// One after the other: the first applies the migrations, the others find them.
    async fn start(n: usize, edit: impl Fn(ConfigBuilder) -> ConfigBuilder) -> Cluster {
        let mut c = Cluster::without_nodes().await;
        for id in ["a", "b", "c", "d"].into_iter().take(n) {
            c.add_node(id, edit(c.config(id))).await;
            c.wait_ready(id).await;
        }
        c
    }

    /// The database, smarthost and receiver, no node yet.
    async fn without_nodes() -> Cluster {
        Cluster {
            nodes: Vec::new(),
            hooks: Receiver::start().await,
            relay: Smarthost::start(Script::default()).await,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            pg: PgServer::start().await,
        }
    }

    /// Node `id`'s configuration: the outbound preset and `[cluster]`.
    fn config(&self, id: &str) -> ConfigBuilder {
        ConfigBuilder::outbound(&self.hooks.url(""), Route::smtp(self.relay.addr.port()))
            .set("cluster.database_url", self.pg.url())
            .set("cluster.node_id", id)
    }

    /// Starts node `id` on `config` in a new directory (ready or not).
    async fn add_node(&mut self, id: &str, config: ConfigBuilder) {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(id, dir, config).await;
        self.nodes.push(node);
    }

    /// Waits until `id`'s `/readyz` answers 200.
    async fn wait_ready(&self, id: &str) {
        let url = format!("{}/readyz", self.node(id).api);
        wait_until(WAIT, &format!("node {id} ready"), async || {
            status(&self.client, &url).await == 200
        })
        .await;
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// `POST /v2/messages` on `node` as service `key-a`: status, body, and the tid of
    /// each destination address.
    async fn send(&self, node: &str, body: &Value) -> (u16, Value, HashMap<String, String>) {
        let resp = self
            .client
            .post(format!("{}/v2/messages", self.node(node).api))
            .header("key", "key-a")
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let mut tids = HashMap::new();
        for m in body["messages"].as_array().into_iter().flatten() {
            for to in m["to"].as_array().into_iter().flatten() {
                tids.insert(
                    to.as_str().unwrap().to_string(),
                    m["tid"].as_str().unwrap().to_string(),
                );
            }
        }
        (status, body, tids)
    }

    /// Sends `body` through `node`, which must accept it (202).
    async fn send_ok(&self, node: &str, body: &Value) -> HashMap<String, String> {
        let (status, reply, tids) = self.send(node, body).await;
        assert_eq!(status, 202, "node {node}: {reply}");
        tids
    }

    /// An admin request (`Bearer admin-secret`) to `path` on `node`.
    fn admin(&self, method: reqwest::Method, node: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.node(node).api))
            .bearer_auth(ADMIN)
    }

    /// A service request (`key: key-a`) to `path` on `node`.
    fn service(&self, method: reqwest::Method, node: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.node(node).api))
            .header("key", "key-a")
    }

    /// Sends `req`: status and body text (status 0 when the request failed).
    async fn get_text(&self, req: reqwest::RequestBuilder) -> (u16, String) {
        match req.send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// The first delivery notification for `address` in transaction `tid`.
    async fn note(&self, tid: &str, address: &str) -> Value {
        let hooks = self.hooks.clone_hooks();
        let find = || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.path == "/dlr")
                .map(Hook::json)
                .find(|n| {
                    n["deliveryInfoNotification"]["transid"] == tid
                        && info(n)["destination"] == address
                })
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(n) = find() {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no notification for {address} (tid {tid}) within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The code of the first notification for `address` of the send that made `tids`.
    async fn code(&self, tids: &HashMap<String, String>, address: &str) -> String {
        let tid = tids
            .get(address)
            .unwrap_or_else(|| panic!("no tid for {address} in {tids:?}"));
        info(&self.note(tid, address).await)["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The messages the smarthost got with `address` among their recipients.
    fn relayed_to(&self, address: &str) -> Vec<smarthost::Received> {
        self.relay
            .messages()
            .into_iter()
            .filter(|m| m.rcpts.iter().any(|r| r == address))
            .collect()
    }

    /// Waits until the smarthost got a message for `address`; returns it.
    async fn wait_relayed(&self, address: &str) -> smarthost::Received {
        let received = self.relay.received.clone();
        wait_for(WAIT, || {
            received
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.rcpts.iter().any(|r| r == address))
        })
        .await;
        self.relayed_to(address).remove(0)
    }

    async fn stop(mut self) {
        for node in &mut self.nodes {
            node.shutdown().await;
        }
    }
}

impl Node {
    /// Node `id`, the daemon on `builder` in `dir` (its data in `dir/data`).
    async fn start(id: &str, dir: tempfile::TempDir, builder: ConfigBuilder) -> Node {
        let started = start_in_process(dir.path(), builder.clone()).await;
        Node {
            id: id.to_string(),
            handle: Some(started.handle),
            api: format!("http://{}", started.http),
            smtp: started.smtp,
            config: started.config_path,
            builder,
            dir,
        }
    }

    /// Shuts the node down and starts it again on its directory and configuration (new
    /// ports).
    async fn restart(&mut self) {
        self.shutdown().await;
        let started = start_in_process(self.dir.path(), self.builder.clone()).await;
        self.handle = Some(started.handle);
        self.api = format!("http://{}", started.http);
        self.smtp = started.smtp;
        self.config = started.config_path;
    }

    async fn shutdown(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

fn info(n: &Value) -> &Value {
    &n["deliveryInfoNotification"]["deliveryInfo"]
}

fn email(to: &[&str], subject: &str) -> Value {
    json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": to, "correlationId": "c-1"}],
        "content": {"type": "text", "subject": subject, "text": "Hello"},
    })
}

/// A send asking for `group`'s consent check and frequency cap as told.
fn with_policy(to: &str, group: &str, consent: bool, cap: bool) -> Value {
    let mut b = email(&[to], "policy");
    b["contactPolicy"] = json!({
        "contactPolicyGroup": group,
        "channelCheckConsent": consent,
        "channelApplyFrequencyCap": cap,
    });
    b
}

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    match client.get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits out the promise itself: a change acknowledged at `acked` governs every node's
/// sends from `acked + PROPAGATION` on, so a send right after tests exactly that (a node
/// may cache what it reads, for no longer than this). The tests first check, with a
/// deadline, that the other node's read API shows the change too; normally it already
/// does, and the send leaves milliseconds after the second is up.
async fn propagated(acked: Instant) {
    tokio::time::sleep_until((acked + PROPAGATION).into()).await;
}

/// The value of the first sample of `name` in a Prometheus text, labels or not.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn private_postgres_starts_answers_and_restarts() {
    let pg = PgServer::start().await;
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postern")
    );
    assert_eq!(pg.psql("SELECT 1").await.unwrap(), "1");
    assert_eq!(
        pg.psql("SELECT current_database()").await.unwrap(),
        "postern"
    );
    assert_eq!(pg.psql("SHOW listen_addresses").await.unwrap(), "127.0.0.1");
    pg.psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();

    pg.stop().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(pg.psql("SELECT 1").await.is_err());

    pg.start_again().await;
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql("SELECT n FROM kept").await.unwrap(),
        "42",
        "data kept"
    );

    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "dropped: directory removed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "dropped: server stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppression_added_on_one_node_stops_a_send_on_another() {
    let c = Cluster::start(3, |c| c).await;
    let r = c
        .admin(reqwest::Method::POST, "a", "/admin/suppressions")
        .json(&json!({"assetId": "a_out", "address": "Gone@Example.org", "reason": "unsubscribed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "C lists the suppression", async || {
        let req = c.admin(reqwest::Method::GET, "c", "/admin/suppressions?asset=a_out");
        c.get_text(req).await.1.contains("gone@example.org")
    })
    .await;

    let tids = c
        .send_ok("c", &email(&["gone@example.org", "fine@example.org"], "hi"))
        .await;
    let gone = c.note(&tids["gone@example.org"], "gone@example.org").await;
    assert_eq!(info(&gone)["code"], "7241", "{gone}");
    assert_eq!(
        info(&gone)["Description"],
        "unsubscribed : gone@example.org"
    );
    assert_eq!(c.code(&tids, "fine@example.org").await, "7501");
    c.wait_relayed("fine@example.org").await;
    assert!(
        c.relayed_to("gone@example.org").is_empty(),
        "a suppressed address never reaches the smarthost"
    );

    // Removed through B: A sends to the address again.
    let r = c
        .admin(
            reqwest::Method::DELETE,
            "b",
            "/admin/suppressions/a_out/gone@example.org",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "A no longer lists the suppression", async || {
        let req = c.admin(reqwest::Method::GET, "a", "/admin/suppressions?asset=a_out");
        let (status, body) = c.get_text(req).await;
        status == 200 && !body.contains("gone@example.org")
    })
    .await;
    let tids = c.send_ok("a", &email(&["gone@example.org"], "again")).await;
    assert_eq!(c.code(&tids, "gone@example.org").await, "7501");
    c.wait_relayed("gone@example.org").await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_made_on_one_node_is_used_on_another() {
    let c = Cluster::start(3, |c| c).await;
    let template = |subject: &str| {
        json!({"id": "welcome", "name": "Welcome", "subject": subject,
               "text": "Hi $(name)", "html": "<b>Hi $(name)</b>"})
    };
    let send = |to: &str| {
        json!({
            "channel": "email",
            "from": "news@example.test",
            "to": [{"email": [to], "substitutions": {"name": "Tess"}}],
            "template": {"id": "welcome"},
        })
    };
    let subject_seen_on = async |node: &str, want: &str| {
        let req = c.service(reqwest::Method::GET, node, "/v2/templates/welcome");
        let (status, body) = c.get_text(req).await;
        status == 200 && serde_json::from_str::<Value>(&body).unwrap()["subject"] == want
    };
    let r = c
        .service(reqwest::Method::POST, "a", "/v2/templates")
        .json(&template("Welcome $(name)"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "B has the template", async || {
        subject_seen_on("b", "Welcome $(name)").await
    })
    .await;
    c.send_ok("b", &send("t1@example.org")).await;
    let msg = c.wait_relayed("t1@example.org").await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&msg.data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Welcome Tess"));
    assert_eq!(parsed.body_html(0).unwrap(), "<b>Hi Tess</b>");
    assert_eq!(parsed.body_text(0).unwrap(), "Hi Tess");

    // Changed through C: A renders the new version, not a copy it kept.
    let r = c
        .service(reqwest::Method::PUT, "c", "/v2/templates/welcome")
        .json(&template("Welcome back $(name)"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "A has the new template", async || {
        subject_seen_on("a", "Welcome back $(name)").await
    })
    .await;
    c.send_ok("a", &send("t2@example.org")).await;
    let msg = c.wait_relayed("t2@example.org").await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&msg.data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Welcome back Tess"));

    // Deleted through B: C refuses a send naming it.
    let r = c
        .service(reqwest::Method::DELETE, "b", "/v2/templates/welcome")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "C no longer has the template", async || {
        let req = c.service(reqwest::Method::GET, "c", "/v2/templates/welcome");
        c.get_text(req).await.0 == 404
    })
    .await;
    let (status, body, _) = c.send("c", &send("t3@example.org")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("7004")),
        "{body}"
    );
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("template.id"),
        "{body}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_given_on_one_node_counts_on_another() {
    // Group "promo": consent list, and at most one mail per recipient per hour.
    let c = Cluster::start(3, |c| c.contact_policy("promo", 1, 3600)).await;
    let r = c
        .admin(
            reqwest::Method::PUT,
            "a",
            "/admin/consent/promo/yes@example.org",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "B lists the consent", async || {
        let req = c.admin(reqwest::Method::GET, "b", "/admin/consent/promo");
        c.get_text(req).await.1.contains("yes@example.org")
    })
    .await;

    let yes = c
        .send_ok("b", &with_policy("yes@example.org", "promo", true, true))
        .await;
    let no = c
        .send_ok("b", &with_policy("no@example.org", "promo", true, false))
        .await;
    assert_eq!(c.code(&yes, "yes@example.org").await, "7501");
    assert_eq!(c.code(&no, "no@example.org").await, "7593");
    let counted = Instant::now();

    // The frequency counter is shared: the cap (one an hour) holds on C too.
    propagated(counted).await;
    let again = c
        .send_ok("c", &with_policy("yes@example.org", "promo", true, true))
        .await;
    assert_eq!(c.code(&again, "yes@example.org").await, "7594");

    // Consent revoked through C: A refuses the address.
    let r = c
        .admin(
            reqwest::Method::DELETE,
            "c",
            "/admin/consent/promo/yes@example.org",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "A no longer lists the consent", async || {
        let req = c.admin(reqwest::Method::GET, "a", "/admin/consent/promo");
        let (status, body) = c.get_text(req).await;
        status == 200 && !body.contains("yes@example.org")
    })
    .await;
    let revoked = c
        .send_ok("a", &with_policy("yes@example.org", "promo", true, false))
        .await;
    assert_eq!(c.code(&revoked, "yes@example.org").await, "7593");

    assert_eq!(c.relayed_to("yes@example.org").len(), 1);
    assert!(c.relayed_to("no@example.org").is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_verified_on_one_node_lets_another_send() {
    let zone: dns::Zone = Default::default();
    let dns_addr = dns::serve_zone(zone.clone()).await;
    let c = Cluster::start(2, |c| {
        c.dns(dns_addr).asset(|a| a.require_verified_domain())
    })
    .await;
    let (status, body, _) = c.send("b", &email(&["ann@example.org"], "early")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("7004")),
        "{body}"
    );

    // Publish what A says to publish, and verify through A.
    let config = c.node("a").config.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
            .args([
                "domain",
                "records",
                "example.test",
                "--format",
                "json",
                "--config",
            ])
            .arg(config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    {
        let mut z = zone.lock().unwrap();
        for r in records
            .iter()
            .filter(|r| r["purpose"] == "verification" || r["purpose"] == "dkim")
        {
            z.insert(
                (r["name"].as_str().unwrap().to_string(), RecordType::TXT),
                vec![r["value"].as_str().unwrap().to_string()],
            );
        }
    }
    let r = c
        .admin(
            reqwest::Method::POST,
            "a",
            "/admin/domains/example.test/verify",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let verdict: Value = r.json().await.unwrap();
    assert_eq!(verdict["verified"], true, "{verdict}");
    let acked = Instant::now();
    propagated(acked).await;
    wait_until(WAIT, "B shows the domain verified", async || {
        let req = c.admin(reqwest::Method::GET, "b", "/admin/domains");
        let (_, body) = c.get_text(req).await;
        serde_json::from_str::<Value>(&body).is_ok_and(|v| v["domains"][0]["verified"] == true)
    })
    .await;
    let tids = c
        .send_ok("b", &email(&["ann@example.org"], "verified"))
        .await;
    assert_eq!(c.code(&tids, "ann@example.org").await, "7501");
    c.stop().await;
}

/// One inbound message through a raw SMTP dialogue; the reply to its end of data.
async fn smtp_message(smtp: SocketAddr, to: &str, subject: &str) -> String {
    let (mut raw, banner) = Raw::connect(smtp).await;
    assert!(banner.starts_with("220"), "{banner}");
    raw.cmd("EHLO client.example.org").await;
    let r = raw.cmd("MAIL FROM:<alice@example.org>").await;
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = raw.cmd(&format!("RCPT TO:<{to}>")).await;
    assert!(r.starts_with("250"), "RCPT: {r}");
    let r = raw.cmd("DATA").await;
    assert!(r.starts_with("354"), "DATA: {r}");
    let message = format!(
        "From: alice@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello while the database is away\r\n.\r\n"
    );
    raw.send(message.as_bytes()).await;
    let reply = raw.reply().await;
    raw.cmd("QUIT").await;
    reply
}

impl Cluster {
    /// The gauge `postern_cluster_database_up` of node `id`.
    async fn database_up(&self, id: &str) -> Option<f64> {
        let req = self.client.get(format!("{}/metrics", self.node(id).api));
        metric(&self.get_text(req).await.1, "postern_cluster_database_up")
    }

    /// Node `id` without its database (SPEC 13): /readyz 503 naming the database, /healthz
    /// 200, the gauge 0; the Messaging API and the admin API answer 503 7010 (the first
    /// with Retry-After) and queue nothing (the send was to `refused`); inbound SMTP
    /// answers 250 and its MO event (subject `subject`) reaches the receiver.
    async fn assert_degraded(&self, id: &str, refused: &str, subject: &str) {
        let node = self.node(id);
        let readyz = format!("{}/readyz", node.api);
        wait_until(Duration::from_secs(15), "/readyz 503", async || {
            status(&self.client, &readyz).await == 503
        })
        .await;
        let (_, body) = self.get_text(self.client.get(&readyz)).await;
        let ready: Value = serde_json::from_str(&body).expect("/readyz answers JSON");
        assert!(
            ready.to_string().to_lowercase().contains("database"),
            "/readyz names the database: {ready}"
        );
        let healthz = format!("{}/healthz", node.api);
        assert_eq!(status(&self.client, &healthz).await, 200);
        wait_until(WAIT, "postern_cluster_database_up 0", async || {
            self.database_up(id).await == Some(0.0)
        })
        .await;

        let resp = self
            .service(reqwest::Method::POST, id, "/v2/messages")
            .json(&email(&[refused], "while the database is away"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"), "{resp:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "7010", "{body}");
        let resp = self
            .admin(reqwest::Method::POST, id, "/admin/suppressions")
            .json(
                &json!({"assetId": "a_out", "address": "x@example.org", "reason": "unsubscribed"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "7010", "{body}");

        // The SMTP door is local: 250, and the MO event goes out.
        let reply = smtp_message(node.smtp, "support@example.test", subject).await;
        assert!(reply.starts_with("250"), "{reply}");
        let hooks = self.hooks.clone_hooks();
        wait_for(WAIT, || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.path == "/mo" && h.json()["subject"] == subject)
        })
        .await;
    }

    /// Node `id` with its database back: ready, the gauge 1, and a send to `address`
    /// relayed (7501); the refused send to `refused` never reached the smarthost.
    async fn assert_recovered(&self, id: &str, address: &str, refused: &str) {
        self.wait_ready(id).await;
        wait_until(WAIT, "postern_cluster_database_up 1 again", async || {
            self.database_up(id).await == Some(1.0)
        })
        .await;
        let tids = self
            .send_ok(id, &email(&[address], "after the outage"))
            .await;
        assert_eq!(self.code(&tids, address).await, "7501");
        self.wait_relayed(address).await;
        assert!(
            self.relayed_to(refused).is_empty(),
            "the refused request queued nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_the_api_answers_503_and_smtp_still_accepts() {
    // One node whose asset also receives mail (support@example.test).
    let c = Cluster::start(1, |c| c.asset(|a| a.inbound())).await;
    wait_until(WAIT, "postern_cluster_database_up 1", async || {
        c.database_up("a").await == Some(1.0)
    })
    .await;
    let req = c.client.get(format!("{}/metrics", c.node("a").api));
    assert!(
        c.get_text(req)
            .await
            .1
            .contains("postern_cluster_query_seconds"),
        "the query histogram is exported"
    );

    c.pg.stop().await;
    c.assert_degraded("a", "during@example.org", "while away")
        .await;
    c.pg.start_again().await;
    c.assert_recovered("a", "after@example.org", "during@example.org")
        .await;
    assert_eq!(c.relay.messages().len(), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_its_database_runs_degraded_until_it_answers() {
    let mut c = Cluster::without_nodes().await;
    c.pg.stop().await;
    let config = c.config("a").asset(|a| a.inbound());
    c.add_node("a", config).await;
    c.assert_degraded("a", "early@example.org", "before the database")
        .await;
    c.pg.start_again().await;
    c.assert_recovered("a", "joined@example.org", "early@example.org")
        .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_held_by_a_live_node_is_refused_and_its_own_node_takes_it_back() {
    let mut c = Cluster::start(1, |c| c).await;
    let other = tempfile::tempdir().unwrap();
    match try_start(other.path(), c.config("a")).await {
        Ok(h) => {
            h.shutdown().await;
            panic!("a second node with node_id a started while a runs");
        }
        Err(e) => assert!(e.contains("cluster.node_id"), "{e}"),
    }
    // Node a itself, restarted on its own data directory, takes its id back at once.
    c.node_mut("a").restart().await;
    c.wait_ready("a").await;
    let tids = c.send_ok("a", &email(&["back@example.org"], "back")).await;
    assert_eq!(c.code(&tids, "back@example.org").await, "7501");
    c.stop().await;
}

/// `postern::start` on `config` in `dir`, its error as text.
async fn try_start(
    dir: &std::path::Path,
    config: ConfigBuilder,
) -> Result<postern::Handle, String> {
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config.listen(smtp.local_addr().unwrap(), http.local_addr().unwrap());
    let text = std::fs::read_to_string(config.write_in(dir)).unwrap();
    let parsed =
        postern::config::Config::parse(&text, "postern.toml").expect("test config is valid");
    let listeners = postern::Listeners {
        smtp: vec![smtp],
        http,
    };
    postern::start(parsed, None, listeners)
        .await
        .map_err(|e| e.to_string())
}
