//! Queue control and the message log (SPEC 14): `GET /admin/queue` with its filters and
//! paging, `GET /admin/queue/{tid}`, retry / cancel / hold / release, and
//! `GET /admin/messages`, through the admin API and the `postern queue` CLI, against a
//! real smarthost and webhook receiver; each on a node alone (sled) and on a cluster node
//! (a private PostgreSQL started by the test).

mod common;
#[path = "common/pg.rs"]
mod pg;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use pg::PgServer;
use serde_json::{json, Value};
use smarthost::{Script, Smarthost};
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "admin-secret";

struct Node {
    daemon: Option<postern::Handle>,
    api: String,
    dir: tempfile::TempDir,
    hooks: Receiver,
    client: reqwest::Client,
}

impl Node {
    async fn start(relay: &Smarthost, retry_base: u64) -> Node {
        Self::start_on(relay, retry_base, None).await
    }

    /// A node alone, or with `pg` a cluster node on that database.
    async fn start_on(relay: &Smarthost, retry_base: u64, pg: Option<&PgServer>) -> Node {
        let hooks = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = ConfigBuilder::outbound(&hooks.url(""), Route::smtp(relay.addr.port()))
            .retry_base(retry_base);
        if let Some(pg) = pg {
            config = config
                .set("cluster.database_url", pg.url())
                .set("cluster.node_id", "a");
        }
        let Started { handle, http, .. } = start_in_process(dir.path(), config).await;
        Node {
            daemon: Some(handle),
            api: format!("http://{http}"),
            dir,
            hooks,
            client: reqwest::Client::new(),
        }
    }

    /// Sends to `to`, due `in_secs` from now; the tid.
    async fn send(&self, to: &str, in_secs: u64) -> String {
        self.send_from("news@example.test", to, in_secs).await
    }

    async fn send_from(&self, from: &str, to: &str, in_secs: u64) -> String {
        let at = SystemTime::now() + Duration::from_secs(in_secs);
        let body = json!({
            "channel": "email",
            "from": from,
            "to": [{"email": [to], "correlationId": format!("corr-{to}")}],
            "content": {"type": "text", "subject": "Queue", "text": "Queue control"},
            "sendAt": chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339(),
        });
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
        v["messages"][0]["tid"].as_str().unwrap().to_string()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn act(&self, tid: &str, action: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/admin/queue/{tid}/{action}", self.api))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The notification for `to` with `code`, waited for.
    async fn note(&self, to: &str, code: &str) -> Value {
        let mut found = None;
        wait_for(WAIT, || {
            found = self
                .hooks
                .delivered()
                .into_iter()
                .map(|h| h.json())
                .find(|n| {
                    let i = &n["deliveryInfoNotification"]["deliveryInfo"];
                    i["destination"] == to && i["code"] == code
                });
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// `postern queue ARGS` against this daemon: exit code, stdout and stderr.
    async fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        self.postern(&all).await
    }

    /// `postern ARGS` against this daemon: exit code, stdout and stderr.
    async fn postern(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let config = self.dir.path().join("postern.toml");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
                .args(&args)
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }

    async fn stop(mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

fn received_by(relay: &Smarthost, to: &str) -> usize {
    relay
        .received
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.rcpts.iter().any(|r| r == to))
        .count()
}

#[tokio::test]
async fn a_held_message_stays_unsent_until_released() {
    held(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_stays_unsent_until_released_on_postgresql() {
    let pg = PgServer::start().await;
    held(Some(&pg)).await;
    pg.stop().await;
}

async fn held(pg: Option<&PgServer>) {
    let relay = Smarthost::start(Script::default()).await;
    let node = Node::start_on(&relay, 1, pg).await;
    let held = node.send("held@example.org", 1).await;
    let (s, v) = node.act(&held, "hold").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("held")), "{v}");
    // A later message, due after the held one, goes out: the held one was due first
    // and still is not sent.
    let marker = node.send("marker@example.org", 2).await;
    node.note("marker@example.org", "7501").await;
    assert_eq!(received_by(&relay, "held@example.org"), 0);
    let (_, shown) = node.get(&format!("/admin/queue/{held}")).await;
    assert_eq!(shown["state"], "held", "{shown}");
    assert_eq!(shown["nextAttempt"], Value::Null);
    assert_eq!(shown["recipients"][0]["state"], "pending");
    // Held is a state of the listing, and retry does not apply to it.
    let (_, listed) = node.get("/admin/queue?state=held").await;
    let tids: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tid"].as_str().unwrap())
        .collect();
    assert_eq!(tids, [held.as_str()]);
    let (s, v) = node.act(&held, "retry").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("7409")), "{v}");
    assert!(v["description"]
        .as_str()
        .unwrap()
        .contains("release it instead"));

    // Released through the CLI: due now, sent once.
    let (code, out, err) = node.cli(&["release", &held]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    node.note("held@example.org", "7501").await;
    assert_eq!(received_by(&relay, "held@example.org"), 1);
    let (s, v) = node.act(&marker, "hold").await;
    assert_eq!(s, 409, "a finished transaction cannot be held: {v}");
    assert!(v["description"].as_str().unwrap().contains("finished"));
    node.stop().await;
}

#[tokio::test]
async fn cancel_ends_pending_recipients_with_7592_and_sends_nothing() {
    cancel(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_pending_recipients_with_7592_and_sends_nothing_on_postgresql() {
    let pg = PgServer::start().await;
    cancel(Some(&pg)).await;
    pg.stop().await;
}

async fn cancel(pg: Option<&PgServer>) {
    let relay = Smarthost::start(Script::default()).await;
    let node = Node::start_on(&relay, 1, pg).await;
    let tid = node.send("cancel-me@example.org", 3600).await;
    let (code, out, err) = node.cli(&["cancel", &tid]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let note = node.note("cancel-me@example.org", "7592").await;
    let info = &note["deliveryInfoNotification"]["deliveryInfo"];
    assert_eq!(info["Description"], "cancelled by operator", "{note}");
    let (_, shown) = node.get(&format!("/admin/queue/{tid}")).await;
    assert_eq!(shown["state"], "cancelled", "{shown}");
    assert_eq!(shown["recipients"][0]["code"], "7592");
    let (_, status) = (
        0,
        node.client
            .get(format!("{}/v2/messages/{tid}", node.api))
            .header("key", "key-a")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
    );
    assert_eq!(status["state"], "cancelled", "{status}");
    // Gone from the queue, and a second cancel is refused.
    let (_, listed) = node.get("/admin/queue").await;
    assert_eq!(listed["entries"], json!([]));
    let (s, _) = node.act(&tid, "cancel").await;
    assert_eq!(s, 409);
    // A marker sent after it arrives alone.
    node.send("after-cancel@example.org", 0).await;
    node.note("after-cancel@example.org", "7501").await;
    assert_eq!(received_by(&relay, "cancel-me@example.org"), 0);
    node.stop().await;
}

#[tokio::test]
async fn retry_sends_a_deferred_message_now() {
    retry(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_sends_a_deferred_message_now_on_postgresql() {
    let pg = PgServer::start().await;
    retry(Some(&pg)).await;
    pg.stop().await;
}

async fn retry(pg: Option<&PgServer>) {
    let relay = Smarthost::start(Script {
        tempfail_times: 1,
        ..Default::default()
    })
    .await;
    // A deferred message would wait an hour.
    let node = Node::start_on(&relay, 3600, pg).await;
    let tid = node.send("tempfail@example.org", 0).await;
    let mut entry = Value::Null;
    wait_until(WAIT, "the message deferred", async || {
        let (_, v) = node.get("/admin/queue?state=retry").await;
        entry = v["entries"][0].clone();
        entry["tid"] == tid.as_str()
    })
    .await;
    assert_eq!(entry["attempts"], 1, "{entry}");
    assert!(
        entry["lastReply"].as_str().unwrap().contains("451"),
        "{entry}"
    );
    let next =
        chrono::DateTime::parse_from_rfc3339(entry["nextAttempt"].as_str().unwrap()).unwrap();
    assert!(
        next > chrono::Utc::now() + chrono::Duration::minutes(10),
        "{entry}"
    );
    let (code, out, err) = node.cli(&["list", "--state", "retry"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&tid) && out.contains("tempfail@example.org"),
        "{out}"
    );
    let (s, v) = node.act(&tid, "retry").await;
    assert_eq!(s, 200, "{v}");
    node.note("tempfail@example.org", "7501").await;
    assert_eq!(received_by(&relay, "tempfail@example.org"), 1);
    node.stop().await;
}

#[tokio::test]
async fn the_listing_filters_pages_and_names_bad_parameters() {
    let relay = Smarthost::start(Script::default()).await;
    let node = Node::start(&relay, 1).await;
    let a = node.send("one@alpha.example", 3600).await;
    let b = node.send("two@beta.example", 3600).await;
    let c = node.send("three@beta.example", 3600).await;
    let tids = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["tid"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all) = node.get("/admin/queue").await;
    assert_eq!(
        tids(&all),
        [a.clone(), b.clone(), c.clone()],
        "oldest first"
    );
    let e = &all["entries"][0];
    assert_eq!(e["state"], "scheduled");
    assert_eq!(e["asset"], "a_out");
    assert_eq!(e["recipients"], json!(["one@alpha.example"]));
    let (_, beta) = node.get("/admin/queue?recipient=beta.example").await;
    assert_eq!(tids(&beta), [b.clone(), c.clone()]);
    let (_, one) = node.get("/admin/queue?recipient=TWO@Beta.example").await;
    assert_eq!(tids(&one), vec![b.clone()]);
    let (_, none) = node.get("/admin/queue?older_than=3600").await;
    assert_eq!(tids(&none), Vec::<String>::new());
    let (_, other) = node.get("/admin/queue?asset=nope").await;
    assert_eq!(tids(&other), Vec::<String>::new());
    // Paging: two pages of two and one.
    let (_, p1) = node.get("/admin/queue?limit=2").await;
    assert_eq!(tids(&p1), [a.clone(), b.clone()]);
    let next = p1["next"].as_str().unwrap().to_string();
    let (_, p2) = node
        .get(&format!("/admin/queue?limit=2&cursor={next}"))
        .await;
    assert_eq!(tids(&p2), vec![c.clone()]);
    assert_eq!(p2["next"], Value::Null);
    // Bad parameters name themselves.
    let (s, v) = node.get("/admin/queue?state=done").await;
    assert_eq!((s, v["code"].as_str()), (400, Some("7004")));
    assert!(
        v["description"].as_str().unwrap().starts_with("state:"),
        "{v}"
    );
    let (s, v) = node.get("/admin/queue?limit=0").await;
    assert_eq!(s, 400);
    assert!(
        v["description"].as_str().unwrap().starts_with("limit:"),
        "{v}"
    );
    let (s, _) = node.get("/admin/queue/no-such-tid").await;
    assert_eq!(s, 404);
    let (s, v) = node.act(&a, "explode").await;
    assert_eq!(s, 404, "{v}");
    // Without the admin token nothing is listed or changed.
    let r = node
        .client
        .post(format!("{}/admin/queue/{a}/cancel", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, shown) = node.get(&format!("/admin/queue/{a}")).await;
    assert_eq!(shown["state"], "scheduled");
    node.stop().await;
}

#[tokio::test]
async fn the_message_log_finds_transactions_by_every_filter() {
    message_log(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_log_finds_transactions_by_every_filter_on_postgresql() {
    let pg = PgServer::start().await;
    message_log(Some(&pg)).await;
    pg.stop().await;
}

async fn message_log(pg: Option<&PgServer>) {
    let relay = Smarthost::start(Script::default()).await;
    let node = Node::start_on(&relay, 1, pg).await;
    let m1 = node.send("Ann@Alpha.example", 0).await;
    node.note("Ann@Alpha.example", "7501").await;
    let m2 = node
        .send_from("other@example.test", "bob@beta.example", 0)
        .await;
    node.note("bob@beta.example", "7501").await;
    let m3 = node.send("ann@alpha.example", 3600).await;
    let tids = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|e| e["tid"].as_str().unwrap().to_string())
            .collect()
    };
    // A cluster node's log is the database's: wait for the copies (at most a moment).
    let mut found = Value::Null;
    wait_until(WAIT, "three transactions in the log", async || {
        found = node.get("/admin/messages?asset=a_out").await.1;
        tids(&found).len() == 3
    })
    .await;
    assert_eq!(
        tids(&found),
        [m3.clone(), m2.clone(), m1.clone()],
        "newest first"
    );
    let search = async |q: &str| -> Vec<String> {
        let (s, v) = node.get(&format!("/admin/messages?{q}")).await;
        assert_eq!(s, 200, "{q}: {v}");
        tids(&v)
    };
    assert_eq!(
        search("recipient=ANN@alpha.EXAMPLE").await,
        [m3.clone(), m1.clone()]
    );
    assert_eq!(
        search("recipient=nobody@alpha.example").await,
        Vec::<String>::new()
    );
    assert_eq!(search("sender=Other@Example.test").await, vec![m2.clone()]);
    assert_eq!(search(&format!("tid={m2}")).await, vec![m2.clone()]);
    assert_eq!(
        search("correlationId=corr-bob@beta.example").await,
        vec![m2.clone()]
    );
    assert_eq!(search("asset=nope").await, Vec::<String>::new());
    assert_eq!(search("state=done").await, [m2.clone(), m1.clone()]);
    assert_eq!(
        search("state=scheduled&recipient=ann@alpha.example").await,
        vec![m3.clone()]
    );
    // Time range, from the acceptance times the log itself gives.
    let accepted = found["messages"][1]["accepted"]
        .as_str()
        .unwrap()
        .to_string();
    let at = urlencode(&accepted);
    assert_eq!(
        search(&format!("since={at}")).await,
        [m3.clone(), m2.clone()]
    );
    assert_eq!(search(&format!("until={at}")).await, vec![m1.clone()]);
    // Each entry carries its recipients' states and history.
    let first = &found["messages"][2];
    assert_eq!(first["recipients"][0]["code"], "7501", "{first}");
    assert!(first["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["code"] == "7501"));
    // Pages of one.
    let (_, p1) = node.get("/admin/messages?limit=1").await;
    assert_eq!(tids(&p1), vec![m3.clone()]);
    let c1 = p1["next"].as_str().unwrap().to_string();
    let (_, p2) = node
        .get(&format!("/admin/messages?limit=1&cursor={c1}"))
        .await;
    assert_eq!(tids(&p2), vec![m2.clone()]);
    let c2 = p2["next"].as_str().unwrap().to_string();
    let (_, p3) = node
        .get(&format!("/admin/messages?limit=1&cursor={c2}"))
        .await;
    assert_eq!(tids(&p3), vec![m1.clone()]);
    assert_eq!(p3["next"], Value::Null, "{p3}");
    // Bad parameters name themselves.
    for (q, field) in [
        ("since=yesterday", "since:"),
        ("cursor=junk", "cursor:"),
        ("state=lost", "state:"),
        ("limit=5000", "limit:"),
    ] {
        let (s, v) = node.get(&format!("/admin/messages?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(
            v["description"].as_str().unwrap().starts_with(field),
            "{q}: {v}"
        );
    }
    node.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postern_send_prints_tids_and_waits_for_every_final_notification() {
    let relay = Smarthost::start(Script::default()).await;
    let node = Node::start(&relay, 1).await;
    let html = node.dir.path().join("body.html");
    std::fs::write(&html, "<p>Hello <b>operator</b></p>").unwrap();
    let file = node.dir.path().join("report.csv");
    std::fs::write(&file, "a,b\n1,2\n").unwrap();
    let (code, out, err) = node
        .postern(&[
            "send",
            "--from",
            "news@example.test",
            "--to",
            "one@example.org",
            "--to",
            "two@example.org",
            "--subject",
            "From the CLI",
            "--text",
            "Plain",
            "--html",
            html.to_str().unwrap(),
            "--attach",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "30",
        ])
        .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let tids: Vec<&str> = lines.iter().take(2).copied().collect();
    assert!(tids.iter().all(|t| !t.contains(' ')), "{out}");
    for (tid, to) in tids.iter().zip(["one@example.org", "two@example.org"]) {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(tid) && l.contains(to) && l.contains(" 7501 ")),
            "no 7501 line for {to}: {out}"
        );
    }
    // Both went out once, with the HTML part and the attachment the CLI served.
    assert_eq!(received_by(&relay, "one@example.org"), 1);
    let data = relay.received.lock().unwrap()[0].data.clone();
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.contains("text/html") && text.contains("report.csv"),
        "{text}"
    );
    // Bad input is named.
    let (code, _, err) = node
        .postern(&[
            "send",
            "--from",
            "news@example.test",
            "--to",
            "x@example.org",
            "--subject",
            "s",
            "--text",
            "t",
            "--service",
            "nope",
        ])
        .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--service: no service \"nope\""), "{err}");
    node.stop().await;
}

#[tokio::test]
async fn route_test_through_the_admin_api_reports_the_smarthost() {
    let relay = Smarthost::start(Script::default()).await;
    let node = Node::start(&relay, 1).await;
    let post = |path: String| {
        node.client
            .post(format!("{}{path}", node.api))
            .bearer_auth(ADMIN)
            .send()
    };
    let r = post("/admin/routes/a_out/test".into()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(!v["report"].as_str().unwrap().is_empty(), "{v}");
    assert_eq!(relay.received.lock().unwrap().len(), 0, "nothing sent");
    let r = post("/admin/routes/nope/test".into()).await.unwrap();
    assert_eq!(r.status(), 404);
    node.stop().await;
}
