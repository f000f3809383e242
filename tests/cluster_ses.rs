//! SES events over SNS in a cluster (SPEC 7.3, 13): several daemons in process sharing one
//! private PostgreSQL (`common/pg.rs`), an SES-routed asset sending through a scriptable
//! SES v2 endpoint on loopback, and SNS notifications signed here with a test key whose
//! certificate URL `ses.trust_url_prefixes` trusts (as in `tests/ses.rs`). SES MessageId
//! -> tid and SNS de-duplication live in the database, so an SNS event posted to any node
//! reaches the transaction another node sent, and a redelivery to a third node records
//! nothing twice.
//!
//! The cluster helpers are a trimmed copy of `tests/cluster_flow.rs`'s, the SES fake and
//! SNS signer of `tests/ses.rs`'s (owned there).

mod common;
#[path = "common/pg.rs"]
mod pg;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use common::*;
use pg::PgServer;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:postern-events";
const ADMIN: &str = "admin-secret";
/// The path of the requests' own `notifyUrl` on the receiver (the asset's delivery
/// webhook is `/dlr`: a notification there would mean the request's URL was lost).
const NOTIFY: &str = "/notify";
const CALLBACK: &str = "cb-ses-1";
const CORRELATION: &str = "corr-ses-1";

/// A fake SES v2 endpoint: every `SendEmail` answers 200 with a fresh MessageId.
#[derive(Clone, Default)]
struct FakeSes {
    /// The MessageIds returned, in order.
    ids: Arc<Mutex<Vec<String>>>,
}

async fn ses_send(State(s): State<FakeSes>) -> axum::Json<Value> {
    let id = {
        let mut ids = s.ids.lock().unwrap();
        let id = format!("0100019a-cluster-ses-{}", ids.len() + 1);
        ids.push(id.clone());
        id
    };
    axum::Json(json!({ "MessageId": id }))
}

impl FakeSes {
    async fn start() -> (FakeSes, SocketAddr) {
        let s = FakeSes::default();
        let app = Router::new()
            .route("/v2/email/outbound-emails", post(ses_send))
            .with_state(s.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (s, addr)
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

/// Serves the test signing certificate; signs SNS messages with its key.
struct SnsHost {
    /// `http://host:port/`: the trusted prefix of the certificate URL.
    base: String,
    key: rsa::RsaPrivateKey,
}

impl SnsHost {
    async fn start() -> SnsHost {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pair =
            rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sns.test".to_string()])
            .unwrap()
            .self_signed(&pair)
            .unwrap()
            .pem();
        let app = Router::new().route("/certs/test.pem", get(move || async move { cert }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        SnsHost {
            base: format!("http://{addr}/"),
            key,
        }
    }

    /// A signed (SignatureVersion 2) SNS Notification `id` carrying the SES event `message`.
    fn notification(&self, id: &str, message: &str) -> Value {
        use rsa::pkcs1v15::SigningKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let mut m = json!({
            "Type": "Notification",
            "MessageId": id,
            "TopicArn": TOPIC,
            "Message": message,
            "Timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "SignatureVersion": "2",
            "SigningCertURL": format!("{}certs/test.pem", self.base),
        });
        let parsed: postern::feedback::sns::Message = serde_json::from_value(m.clone()).unwrap();
        let text = parsed.string_to_sign().unwrap();
        let sig = SigningKey::<sha2::Sha256>::new(self.key.clone())
            .sign(text.as_bytes())
            .to_vec();
        m["Signature"] = base64::engine::general_purpose::STANDARD.encode(sig).into();
        m
    }
}

/// An SES configuration-set event of `kind` about SES message `message_id` sent to `to`.
fn ses_event(kind: &str, message_id: &str, to: &str, body: &str) -> String {
    format!(
        r#"{{"eventType":"{kind}","mail":{{"timestamp":"2026-11-23T10:00:00.000Z","source":"news@example.test","sourceArn":"arn:aws:ses:us-east-1:123456789012:identity/example.test","sendingAccountId":"123456789012","messageId":"{message_id}","destination":["{to}"],"headersTruncated":false,"tags":{{"ses:configuration-set":["postern-events"]}}}},{body}}}"#
    )
}

/// A permanent (NoEmail) bounce of `to`.
fn permanent_bounce(message_id: &str, to: &str) -> String {
    ses_event(
        "Bounce",
        message_id,
        to,
        &format!(
            r#""bounce":{{"bounceType":"Permanent","bounceSubType":"NoEmail","bouncedRecipients":[{{"emailAddress":"{to}","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}}],"timestamp":"2026-11-23T10:00:02.000Z","feedbackId":"f-cluster-1","reportingMTA":"dsn; a8-70.smtp-out.amazonses.com"}}"#
        ),
    )
}

/// One daemon of the cluster, in process, in a directory of its own.
struct Node {
    id: String,
    handle: Option<postern::Handle>,
    /// `http://host:port` of its HTTP listener.
    api: String,
    _dir: tempfile::TempDir,
}

/// Nodes sharing `pg`, sending through the fake SES (preset `ConfigBuilder::outbound`:
/// asset `a_out`, service `key-a`), notifying `hooks`.
struct Cluster {
    nodes: Vec<Node>,
    hooks: Receiver,
    ses: FakeSes,
    sns: SnsHost,
    client: reqwest::Client,
    // Last, so the nodes are dropped before their database.
    pg: PgServer,
}

impl Cluster {
    /// Nodes `ids`, started one after the other (the first applies the migrations), each
    /// ready before the next starts; all with the same configuration but `node_id`.
    async fn start(ids: &[&str]) -> Cluster {
        let (ses, ses_addr) = FakeSes::start().await;
        let mut c = Cluster {
            nodes: Vec::new(),
            hooks: Receiver::start().await,
            ses,
            sns: SnsHost::start().await,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            pg: PgServer::start().await,
        };
        for id in ids {
            let config = ConfigBuilder::outbound(
                &c.hooks.url(""),
                Route::ses("us-east-1", ses_addr, "test-secret")
                    .configuration_set("postern-events"),
            )
            .ses_topic(TOPIC)
            .ses_trust_url_prefix(&c.sns.base)
            .set("cluster.database_url", c.pg.url())
            .set("cluster.node_id", *id);
            let dir = tempfile::tempdir().unwrap();
            let started = start_in_process(dir.path(), config).await;
            c.nodes.push(Node {
                id: id.to_string(),
                handle: Some(started.handle),
                api: format!("http://{}", started.http),
                _dir: dir,
            });
            let url = format!("{}/readyz", c.api(id));
            let client = &c.client;
            wait_until(
                &format!("node {id} ready"),
                async || matches!(client.get(&url).send().await, Ok(r) if r.status() == 200),
            )
            .await;
        }
        c
    }

    fn api(&self, id: &str) -> &str {
        &self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .api
    }

    /// `POST /v2/messages` on `node` as `key-a` for `to`, notifying `NOTIFY`, with
    /// `extra` merged in; must be 202. The tid.
    async fn send(&self, node: &str, to: &str, extra: Value) -> String {
        let mut body = json!({
            "channel": "email",
            "from": "news@example.test",
            "to": [{"email": [to], "correlationId": CORRELATION}],
            "content": {"type": "text", "subject": "Hello", "text": "Hi there"},
            "notifyUrl": self.hooks.url(NOTIFY),
            "callbackData": CALLBACK,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .client
            .post(format!("{}/v2/messages", self.api(node)))
            .header("key", "key-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let reply: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "node {node}: {reply}");
        reply["messages"][0]["tid"].as_str().unwrap().to_string()
    }

    /// Posts an SNS message to `node`'s `/ses/events` as SNS does: status and JSON body.
    async fn sns(&self, node: &str, msg: &Value) -> (u16, Value) {
        post_sns(&self.client, self.api(node), msg).await
    }

    /// `sns` on a task of its own.
    fn spawn_sns(&self, node: &str, msg: &Value) -> tokio::task::JoinHandle<(u16, Value)> {
        let (client, api, msg) = (self.client.clone(), self.api(node).to_string(), msg.clone());
        tokio::spawn(async move { post_sns(&client, &api, &msg).await })
    }

    /// `GET /v2/messages/{tid}` on `node` as `key-a`: status and body.
    async fn message(&self, node: &str, tid: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}/v2/messages/{tid}", self.api(node)))
            .header("key", "key-a")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until `node` answers `GET /v2/messages/{tid}` with a body `cond` accepts.
    async fn wait_message(
        &self,
        node: &str,
        tid: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.message(node, tid).await;
            if status == 200 && cond(&body) {
                return body;
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

    /// The notifications with `code` for `tid` at the request's `notifyUrl` so far.
    fn notes_with(&self, tid: &str, code: &str) -> Vec<Value> {
        self.notes(NOTIFY, tid)
            .into_iter()
            .filter(|n| info(n)["code"] == code)
            .collect()
    }

    /// Waits for the notification with `code` for `address` in `tid` at `NOTIFY`.
    async fn wait_note(&self, tid: &str, address: &str, code: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(n) = self
                .notes_with(tid, code)
                .into_iter()
                .find(|n| info(n)["destination"] == address)
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "no {code} for {address} (tid {tid}) at {NOTIFY} within {within:?}; got {:?}",
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

    /// `node`'s `/metrics` text.
    async fn metrics(&self, node: &str) -> String {
        self.client
            .get(format!("{}/metrics", self.api(node)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The suppressions of asset `a_out` listed by `node`: (address, reason), sorted.
    async fn suppressions(&self, node: &str) -> Vec<(String, String)> {
        let v: Value = self
            .client
            .get(format!("{}/admin/suppressions?asset=a_out", self.api(node)))
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

    /// The SES MessageId of the transaction's one `SendEmail`, once the fake returned it.
    async fn wait_ses_message_id(&self) -> String {
        let ses = self.ses.clone();
        wait_until("SES SendEmail called", async || !ses.ids().is_empty()).await;
        let ids = self.ses.ids();
        assert_eq!(ids.len(), 1, "one SendEmail: {ids:?}");
        ids[0].clone()
    }

    async fn stop(mut self) {
        for node in &mut self.nodes {
            if let Some(h) = node.handle.take() {
                h.shutdown().await;
            }
        }
    }
}

async fn post_sns(client: &reqwest::Client, api: &str, msg: &Value) -> (u16, Value) {
    let r = client
        .post(format!("{api}/ses/events"))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", msg["Type"].as_str().unwrap())
        .body(msg.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 3 s for `cond`; whether it held. For steps a test need not see happen.
async fn wait_briefly(mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond().await {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
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

/// The value of the sample `name` (with its labels) in a Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sns_event_posted_to_another_node_reaches_the_transaction() {
    let started = Instant::now();
    let c = Cluster::start(&["a", "b", "c"]).await;
    let to = "gone@example.org";
    let tid = c.send("a", to, json!({})).await;

    // A sends it: SES returned a MessageId, 7501 at the request's notifyUrl.
    let ses_id = c.wait_ses_message_id().await;
    let submitted = c.wait_note(&tid, to, "7501", WAIT).await;
    assert_eq!(
        submitted["deliveryInfoNotification"]["callbackData"],
        CALLBACK
    );
    // The finished transaction reached the database (read on C), route ids with it;
    // `an_sns_event_racing_the_copy_of_its_route_id_...` below is the racing case.
    c.wait_message("c", &tid, "done", |s| s["state"] == "done")
        .await;

    // SES's permanent bounce, delivered by SNS to B.
    let bounce = c
        .sns
        .notification("sns-cluster-1", &permanent_bounce(&ses_id, to));
    let (status, body) = c.sns("b", &bounce).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "recorded", "{body}");
    assert_eq!(body["transid"], tid.as_str(), "{body}");
    assert_eq!(body["recorded"], 1, "{body}");

    // The notification reaches the request's notifyUrl, with its per-request data.
    let n = c.wait_note(&tid, to, "7520", WAIT).await;
    assert_eq!(info(&n)["deliveryStatus"], "Bounce");
    assert_eq!(info(&n)["Description"], "Permanent_NoEmail");
    assert_eq!(
        info(&n)["additionalInfo"],
        "5.1.1|failed|smtp; 550 5.1.1 user unknown"
    );
    let d = &n["deliveryInfoNotification"];
    assert_eq!(d["correlationid"], CORRELATION, "{n}");
    assert_eq!(d["callbackData"], CALLBACK, "{n}");
    assert!(
        c.notes("/dlr", &tid).is_empty(),
        "every notification goes to the request's notifyUrl"
    );

    // C's history shows it; C lists the address as bounced.
    let on_c = c
        .wait_message("c", &tid, "the bounce in the history", |s| {
            !events_with(s, "7520").is_empty()
        })
        .await;
    let event = events_with(&on_c, "7520")[0];
    assert_eq!(event["destination"], to, "{on_c}");
    assert_eq!(event["description"], "Permanent_NoEmail", "{on_c}");
    assert_eq!(
        c.suppressions("c").await,
        [(to.to_string(), "bounced".to_string())]
    );

    // SNS redelivers the same message, to C: acknowledged, recorded nothing.
    let (status, body) = c.sns("c", &bounce).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ignored", "{body}");
    assert_eq!(body["reason"], "already recorded", "{body}");
    // The history is written before the answer: still one bounce.
    let (_, on_c) = c.message("c", &tid).await;
    assert_eq!(events_with(&on_c, "7520").len(), 1, "{on_c}");

    // A later, different event posted to C after the duplicate: once its notification
    // arrived and C's outbox is empty, anything the duplicate had queued on C would have
    // arrived too.
    let open = ses_event(
        "Open",
        &ses_id,
        to,
        r#""open":{"ipAddress":"192.0.2.1","timestamp":"2026-11-23T10:00:05.000Z","userAgent":"ClusterAgent/1.0"}"#,
    );
    let (status, body) = c
        .sns("c", &c.sns.notification("sns-cluster-2", &open))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "recorded", "{body}");
    let read = c.wait_note(&tid, to, "7502", WAIT).await;
    assert_eq!(info(&read)["additionalInfo"], "ClusterAgent/1.0");
    wait_until("C's outbox empty", async || {
        metric(&c.metrics("c").await, "postern_webhook_backlog") == 0
    })
    .await;
    let on_c_metrics = c.metrics("c").await;
    assert_eq!(
        metric(
            &on_c_metrics,
            "postern_webhooks_total{kind=\"status\",result=\"delivered\"}"
        ),
        1,
        "C notified the open only\n{on_c_metrics}"
    );
    assert_eq!(
        metric(
            &on_c_metrics,
            "postern_sns_messages_total{result=\"ignored\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &on_c_metrics,
            "postern_sns_messages_total{result=\"recorded\"}"
        ),
        1
    );
    assert_eq!(
        c.notes_with(&tid, "7520").len(),
        1,
        "one bounce notification: {:?}",
        c.notes(NOTIFY, &tid)
    );
    let (_, on_b) = c.message("b", &tid).await;
    let mut codes: Vec<&str> = on_b["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(codes, ["7501", "7502", "7520"], "{on_b}");
    eprintln!("took {:?}", started.elapsed());
    c.stop().await;
}

/// SPEC 13: feedback (SNS included) arriving at any node reaches the transaction,
/// whichever node sent it. Here SES's event reaches B after A got the MessageId and
/// finished the transaction, but before A's mirror task has copied the finished record
/// and its route ids (held back by a row lock, standing for the milliseconds that copy
/// normally takes, or longer when A's mirror lags). SNS stops at a 2xx and retries
/// anything else, as the test does: B may make SNS retry (5xx) or hold the event, but an
/// event it acknowledges must reach the transaction once the copy lands.
///
/// B answers 503 while no transaction has the MessageId and the SNS message is recent
/// (cluster mode), so SNS delivers it again; clicks and opens in the same window are
/// retried in the background (`tracking`); DSNs name their tid (VERP) and a failed
/// recording is retried by the reports sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sns_event_racing_the_copy_of_its_route_id_is_not_acknowledged_and_lost() {
    let c = Cluster::start(&["a", "b"]).await;
    let to = "early@example.org";
    // Sent two to three seconds from now, so the queued record is in the database first.
    let send_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3;
    let tid = c.send("a", to, json!({ "sendAt": send_at })).await;
    c.wait_message("b", &tid, "the queued transaction", |s| {
        s["state"] != "done"
    })
    .await;
    let lock = pg::RowLock::take(&c.pg.url(), &tid).await;

    let ses_id = c.wait_ses_message_id().await;
    c.wait_note(&tid, to, "7501", WAIT).await;
    c.wait_message("a", &tid, "done on its owner", |s| s["state"] == "done")
        .await;
    let (status, on_b) = c.message("b", &tid).await;
    assert_eq!(status, 200);
    assert_ne!(on_b["state"], "done", "the copy is held back: {on_b}");

    // SNS delivers the bounce to B while the copy is held back.
    let bounce = c
        .sns
        .notification("sns-early-1", &permanent_bounce(&ses_id, to));
    let (first_status, first_body) = c.sns("b", &bounce).await;
    eprintln!("B answered {first_status} {first_body} while the copy was held back");
    lock.release().await;
    c.wait_message("b", &tid, "done on B", |s| s["state"] == "done")
        .await;
    // Not acknowledged: SNS retries (its first retries come at once), until a 2xx.
    let mut answers = vec![(first_status, first_body)];
    while !(200..300).contains(&answers.last().unwrap().0) {
        assert!(answers.len() < 50, "SNS gave up: {answers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        answers.push(c.sns("b", &bounce).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.notes_with(&tid, "7520").is_empty() {
        assert!(
            Instant::now() < deadline,
            "B acknowledged SES's bounce of {to} (SNS stops retrying) but it never reached \
             transaction {tid}: B's answers {answers:?}; notifications {:?}",
            c.notes(NOTIFY, &tid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_b = c
        .wait_message("b", &tid, "the bounce in the history", |s| {
            !events_with(s, "7520").is_empty()
        })
        .await;
    assert_eq!(events_with(&on_b, "7520").len(), 1, "{on_b}");
    assert_eq!(
        c.suppressions("b").await,
        [(to.to_string(), "bounced".to_string())]
    );
    c.stop().await;
}

/// SNS delivers at least once, and a retry may come while the first delivery is still
/// being handled (SNS gave up waiting for it), through the load balancer to another node.
/// Here B is recording the bounce (its write of the transaction held back by a row lock,
/// standing for a slow database) when the same SNS message reaches C: recorded once, one
/// notification, one history entry. B claimed the SNS message id before recording, so C
/// waits for the claim and then answers "already recorded", or (B still busy after two
/// seconds) 503, after which SNS's next delivery finds it recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sns_message_on_two_nodes_at_once_is_recorded_once() {
    let c = Cluster::start(&["a", "b", "c"]).await;
    let to = "twice@example.org";
    let tid = c.send("a", to, json!({})).await;
    let ses_id = c.wait_ses_message_id().await;
    c.wait_note(&tid, to, "7501", WAIT).await;
    c.wait_message("c", &tid, "done", |s| s["state"] == "done")
        .await;
    let lock = pg::RowLock::take(&c.pg.url(), &tid).await;
    let bounce = c
        .sns
        .notification("sns-twice-1", &permanent_bounce(&ses_id, to));

    // B takes it and is writing it (waits for the row) ...
    let on_b = c.spawn_sns("b", &bounce);
    let b_waits = wait_briefly(async || on_b.is_finished() || lock.waiters().await >= 1).await;
    // ... when SNS's retry reaches C, which waits for B's claim and then answers. B's
    // write is then let through.
    let on_c = c.spawn_sns("c", &bounce);
    let c_waits = wait_briefly(async || on_c.is_finished() || lock.waiters().await >= 2).await;
    eprintln!("B seen answering or waiting: {b_waits}; C: {c_waits}");
    lock.release().await;
    let (b, c_answer) = (on_b.await.unwrap(), on_c.await.unwrap());
    eprintln!("B answered {b:?}, C answered {c_answer:?}");
    assert_eq!(b.0, 200, "B recorded it: {b:?}");
    assert_eq!(b.1["status"], "recorded", "{b:?}");
    match c_answer.0 {
        200 => assert_eq!(c_answer.1["reason"], "already recorded", "{c_answer:?}"),
        503 => {
            // SNS delivers it again: now recorded.
            let (status, again) = c.sns("c", &bounce).await;
            assert_eq!(status, 200, "{again}");
            assert_eq!(again["reason"], "already recorded", "{again}");
        }
        _ => panic!("C answered {c_answer:?}"),
    }

    c.wait_note(&tid, to, "7520", WAIT).await;
    for node in ["b", "c"] {
        wait_until(&format!("{node}'s outbox empty"), async || {
            metric(&c.metrics(node).await, "postern_webhook_backlog") == 0
        })
        .await;
    }
    let (_, history) = c.message("c", &tid).await;
    let bounces = c.notes_with(&tid, "7520").len();
    assert_eq!(
        (events_with(&history, "7520").len(), bounces),
        (1, 1),
        "one SNS message (B answered {b:?}, C answered {c_answer:?}) recorded as (history \
         entries, notifications): {history}"
    );
    c.stop().await;
}
