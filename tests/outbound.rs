//! The outbound path end to end: a real HTTP client on the API, the daemon, a scriptable
//! SMTP smarthost, and a real webhook receiver for the delivery notifications.

mod common;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use serde_json::{json, Value};
use smarthost::{Script, Smarthost};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// How a test request authenticates.
type AuthFn = Box<dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder>;
const SECRET: &str = SERVICE_SECRET;

struct Out {
    daemon: Option<postern::Handle>,
    api: String,
    dir: tempfile::TempDir,
    hooks: Receiver,
    client: reqwest::Client,
}

impl Out {
    /// A daemon sending through the smarthost at `relay`.
    async fn start(relay: SocketAddr) -> Out {
        Self::start_with(relay, |c| c).await
    }

    /// A daemon sending through `relay`, its configuration changed by `edit`.
    async fn start_with(
        relay: SocketAddr,
        edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> Out {
        let hooks = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, hooks, relay, edit).await
    }

    /// The daemon again on what a stopped one left: its directory and receiver.
    async fn restart(dir: tempfile::TempDir, hooks: Receiver, relay: SocketAddr) -> Out {
        Self::start_in(dir, hooks, relay, |c| c).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        hooks: Receiver,
        relay: SocketAddr,
        edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> Out {
        let config = ConfigBuilder::outbound(&hooks.url(""), Route::smtp(relay.port()));
        let Started {
            handle: daemon,
            http,
            ..
        } = start_in_process(dir.path(), edit(config)).await;
        Out {
            daemon: Some(daemon),
            api: format!("http://{http}"),
            dir,
            hooks,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, body: Value) -> (u16, Value) {
        self.post_with(body, |r| r.header("key", "key-a")).await
    }

    async fn post_with(
        &self,
        body: Value,
        auth: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let req = self
            .client
            .post(format!("{}/v2/messages", self.api))
            .json(&body);
        let resp = auth(req).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn stop(mut self) -> (tempfile::TempDir, Receiver) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
        (self.dir, self.hooks)
    }

    async fn wait_notes(&self, n: usize) -> Vec<Value> {
        self.hooks
            .wait_for_count(n, WAIT)
            .await
            .iter()
            .map(|h| h.json())
            .collect()
    }
}

fn email(to: &[&str]) -> Value {
    json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": to, "correlationId": "c-1"}],
        "content": {"type": "text", "subject": "Hello $(name)", "text": "Dear $(name)"},
        "substitutions": {"name": "friend"},
        "callbackData": "cb-1"
    })
}

fn info(n: &Value) -> &Value {
    &n["deliveryInfoNotification"]["deliveryInfo"]
}

async fn wait_messages(relay: &Smarthost, n: usize) -> Vec<smarthost::Received> {
    let r = relay.received.clone();
    wait_for(WAIT, || r.lock().unwrap().len() >= n).await;
    relay.messages()
}

#[tokio::test]
async fn text_message_is_signed_relayed_with_verp_and_notified() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let (status, body) = out.post(email(&["ann@example.org"])).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["code"], "1001");
    let tid = body["messages"][0]["tid"].as_str().unwrap().to_string();
    assert_eq!(body["messages"][0]["correlationId"], "c-1");

    let msgs = wait_messages(&relay, 1).await;
    let m = &msgs[0];
    assert_eq!(m.rcpts, ["ann@example.org"]);
    assert!(
        m.mail_from.ends_with("@bounces.example.test") && m.mail_from.starts_with("b-"),
        "{}",
        m.mail_from
    );
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.starts_with("DKIM-Signature:"), "signed first");
    assert!(
        text.contains("d=example.test")
            && text.contains("s=sel1")
            && text.contains("a=ed25519-sha256")
    );
    assert!(text.contains("Subject: Hello friend"));
    assert!(text.contains(&format!("Message-ID: <{tid}@mx.example.test>")));

    let notes = out.wait_notes(1).await;
    let n = &notes[0]["deliveryInfoNotification"];
    assert_eq!(n["transid"], tid.as_str());
    assert_eq!(n["correlationid"], "c-1");
    assert_eq!(n["callbackData"], "cb-1");
    assert_eq!(n["subtid"], "");
    assert_eq!(n["deliveryInfo"]["code"], "7501");
    assert_eq!(n["deliveryInfo"]["deliveryStatus"], "Submitted");
    assert_eq!(n["deliveryInfo"]["destination"], "ann@example.org");
    assert_eq!(n["deliveryInfo"]["deliveryChannel"], "email");

    let status: Value = out
        .client
        .get(format!("{}/v2/messages/{tid}", out.api))
        .header("key", "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(status["events"][0]["code"], "7501");
    let other = out
        .client
        .get(format!("{}/v2/messages/{tid}", out.api))
        .header("key", "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "another service's tid is not found");
    out.stop().await;
}

#[tokio::test]
async fn authentication_and_validation_errors_have_their_codes() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let good_jwt = postern::outbound::auth::make_jwt("svc_a", SECRET, now);
    let old_jwt = postern::outbound::auth::make_jwt("svc_a", SECRET, now - 7200);
    let none_jwt = {
        use base64::Engine;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.",
            e(r#"{"alg":"none"}"#),
            e(&format!(r#"{{"iss":"svc_a","iat":{now}}}"#))
        )
    };
    let cases: Vec<(AuthFn, u16, &str)> = vec![
        (Box::new(|r| r), 401, "7002"),
        (Box::new(|r| r.header("key", "wrong")), 401, "7001"),
        (
            Box::new(move |r| r.bearer_auth(old_jwt.clone())),
            401,
            "7001",
        ),
        (
            Box::new(move |r| r.bearer_auth(none_jwt.clone())),
            401,
            "7001",
        ),
    ];
    for (auth, status, code) in cases {
        let (s, b) = out.post_with(email(&["a@example.org"]), auth).await;
        assert_eq!((s, b["code"].as_str().unwrap_or("")), (status, code), "{b}");
    }
    let (s, b) = out
        .post_with(email(&["a@example.org"]), |r| {
            r.bearer_auth(good_jwt.clone())
        })
        .await;
    assert_eq!(s, 202, "{b}");

    let mut sms = email(&["a@example.org"]);
    sms["channel"] = "sms".into();
    let mut missing = email(&["a@example.org"]);
    missing.as_object_mut().unwrap().remove("from");
    let mut crlf = email(&["a@example.org"]);
    crlf["content"]["subject"] = "x\r\nBcc: victim@example.org".into();
    let many: Vec<String> = (0..51).map(|i| format!("u{i}@example.org")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    for (body, code, text) in [
        (sms, "7004", "channel 'sms' is not served by postern"),
        (missing, "7003", "from"),
        (crlf, "7004", "content.subject"),
        (email(&many_refs), "7009", "too many destinations"),
    ] {
        let (s, b) = out.post(body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["code"], code, "{b}");
        assert!(b["description"].as_str().unwrap().contains(text), "{b}");
    }
    let raw = |body: &'static str, ct: &'static str| {
        out.client
            .post(format!("{}/v2/messages", out.api))
            .header("key", "key-a")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = raw("{not json", "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "7000");
    let r = raw("{}", "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);
    let deep: &'static str =
        Box::leak(format!("{}{}", "[".repeat(200), "]".repeat(200)).into_boxed_str());
    let r = raw(deep, "application/json").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "7000");
    let huge: &'static str =
        Box::leak(format!("{{\"x\":\"{}\"}}", "a".repeat(300_000)).into_boxed_str());
    let r = raw(huge, "application/json").await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "7004");
    // Nothing refused was queued: only the one accepted JWT request reached the relay.
    wait_messages(&relay, 1).await;
    assert_eq!(relay.messages().len(), 1);
    out.stop().await;
}

#[tokio::test]
async fn tps_bucket_refuses_with_retry_after_and_queues_nothing() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let forty: Vec<String> = (0..40).map(|i| format!("u{i}@example.org")).collect();
    let refs: Vec<&str> = forty.iter().map(String::as_str).collect();
    // Twenty requests of 40 destinations at once against a bucket of 50 refilled at 50 a
    // second: each is charged before it is expanded or stored, so for all of them to pass
    // they would have to arrive spread over 15 s. Whatever the machine's speed, every 202
    // is 40 messages and every 429 none.
    let answers = futures::future::join_all((0..20).map(|_| {
        out.client
            .post(format!("{}/v2/messages", out.api))
            .header("key", "key-a")
            .json(&email(&refs))
            .send()
    }))
    .await;
    let mut accepted = 0;
    for resp in answers {
        let resp = resp.unwrap();
        match resp.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let wait = resp.headers()["retry-after"].to_str().unwrap().to_string();
                assert!(wait.parse::<u64>().unwrap() >= 1, "Retry-After: {wait}");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["code"], "7005");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..20).contains(&accepted),
        "{accepted} of 20 accepted: the bucket should take some and refuse some"
    );
    wait_messages(&relay, 40 * accepted).await;
    out.stop().await;
    assert_eq!(relay.messages().len(), 40 * accepted);
}

#[tokio::test]
async fn expansion_modes_and_invalid_addresses() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let mut multi = email(&["a@example.org", "b@example.org"]);
    multi["multipleToRecipients"] = true.into();
    multi["cc"] = json!(["c@example.org"]);
    multi["bcc"] = json!(["d@example.org"]);
    let (_, b) = out.post(multi).await;
    assert_eq!(b["messages"].as_array().unwrap().len(), 1);
    let msgs = wait_messages(&relay, 1).await;
    assert_eq!(
        msgs[0].rcpts,
        [
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "d@example.org"
        ]
    );
    let text = String::from_utf8_lossy(&msgs[0].data).to_string();
    assert!(
        text.contains("Cc: <c@example.org>") && !text.contains("d@example.org"),
        "bcc stays hidden"
    );

    let mut single = email(&["e@example.org", "not-an-address"]);
    single["cc"] = json!(["f@example.org"]);
    let (_, b) = out.post(single).await;
    assert_eq!(b["messages"].as_array().unwrap().len(), 3);
    wait_messages(&relay, 3).await;
    // 4 notifications for the multi email + 2 submitted + 1 invalid.
    let notes = out.wait_notes(7).await;
    let invalid: Vec<_> = notes.iter().filter(|n| info(n)["code"] == "7523").collect();
    assert_eq!(invalid.len(), 1);
    assert_eq!(info(invalid[0])["destination"], "not-an-address");
    assert_eq!(info(invalid[0])["deliveryStatus"], "Failed");
    out.stop().await;
}

#[tokio::test]
async fn rcpt_550_is_7520_data_554_is_7592_and_4xx_is_retried_once() {
    let relay = Smarthost::start(Script {
        tempfail_times: 1,
        ..Default::default()
    })
    .await;
    let out = Out::start(relay.addr).await;
    out.post(email(&["reject-me@example.org"])).await;
    out.post(email(&["tempfail@example.org"])).await;
    let mut bad = email(&["ok@example.org"]);
    bad["content"]["text"] = "this has datafail in it".into();
    out.post(bad).await;
    let notes = out.wait_notes(3).await;
    let by = |addr: &str| {
        notes
            .iter()
            .find(|n| info(n)["destination"] == addr)
            .cloned()
            .unwrap()
    };
    let bounce = by("reject-me@example.org");
    assert_eq!(info(&bounce)["code"], "7520");
    assert_eq!(info(&bounce)["Description"], "Permanent_NoEmail");
    assert_eq!(
        info(&bounce)["additionalInfo"],
        "5.1.1|failed|smtp; 550 5.1.1 <recipient> no such user here"
    );
    let refused = by("ok@example.org");
    assert_eq!(info(&refused)["code"], "7592");
    assert!(info(&refused)["additionalInfo"]
        .as_str()
        .unwrap()
        .contains("554 5.6.0"));
    let retried = by("tempfail@example.org");
    assert_eq!(info(&retried)["code"], "7501");
    let msgs = relay.messages();
    assert_eq!(
        msgs.iter()
            .filter(|m| m.rcpts == ["tempfail@example.org"])
            .count(),
        1,
        "delivered exactly once"
    );
    out.stop().await;
}

#[tokio::test]
async fn expiry_fails_with_7590() {
    let relay = Smarthost::start(Script {
        tempfail_times: 1000,
        ..Default::default()
    })
    .await;
    let out = Out::start(relay.addr).await;
    let mut b = email(&["tempfail@example.org"]);
    b["validity"] = 2.into();
    out.post(b).await;
    let notes = out.wait_notes(1).await;
    assert_eq!(info(&notes[0])["code"], "7590");
    assert!(relay.messages().is_empty());
    out.stop().await;
}

#[tokio::test]
async fn send_at_is_not_delivered_early_and_survives_a_restart() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let send_at = std::time::SystemTime::now() + Duration::from_secs(3);
    let iso = chrono::DateTime::<chrono::Utc>::from(send_at).to_rfc3339();
    let mut b = email(&["later@example.org"]);
    b["sendAt"] = iso.into();
    let (s, body) = out.post(b).await;
    assert_eq!(s, 202);
    let tid = body["messages"][0]["tid"].as_str().unwrap().to_string();
    // Restart before it is due: the scheduled entry must come back and go out once.
    let (dir, hooks) = out.stop().await;
    let out = Out::restart(dir, hooks, relay.addr).await;
    let status: Value = out
        .client
        .get(format!("{}/v2/messages/{tid}", out.api))
        .header("key", "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "scheduled");
    let msgs = wait_messages(&relay, 1).await;
    assert!(msgs[0].at >= send_at, "delivered before sendAt");
    out.wait_notes(1).await;
    out.stop().await;
    assert_eq!(relay.messages().len(), 1);
}

#[tokio::test]
async fn queued_mail_waits_for_a_dead_smarthost_across_a_restart_and_goes_once() {
    let port = free_port();
    let out = Out::start(port).await;
    out.post(email(&["queued@example.org"])).await;
    let (dir, hooks) = out.stop().await;
    let relay = Smarthost::start_on(port, Script::default()).await;
    let out = Out::restart(dir, hooks, relay.addr).await;
    let msgs = wait_messages(&relay, 1).await;
    assert_eq!(msgs[0].rcpts, ["queued@example.org"]);
    let notes = out.wait_notes(1).await;
    assert_eq!(info(&notes[0])["code"], "7501");
    out.stop().await;
    assert_eq!(relay.messages().len(), 1);
}

#[tokio::test]
async fn attachments_are_fetched_and_oversize_or_missing_ones_are_7591() {
    use axum::routing::get;
    let pdf: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let served = pdf.clone();
    let app = axum::Router::new()
        .route(
            "/a.pdf",
            get(move || {
                let b = served.clone();
                async move { b }
            }),
        )
        .route("/huge", get(|| async { vec![b'x'; 10_500_000] }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let files = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let with = |url: String, to: &str| {
        let mut b = email(&[to]);
        b["content"]["attachments"] =
            json!([{"mimetype": "application/pdf", "name": "a.pdf", "mediaUrl": url}]);
        b
    };
    out.post(with(format!("http://{files}/a.pdf"), "att@example.org"))
        .await;
    out.post(with(format!("http://{files}/huge"), "huge@example.org"))
        .await;
    out.post(with(
        format!("http://{files}/missing"),
        "missing@example.org",
    ))
    .await;
    let msgs = wait_messages(&relay, 1).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&msgs[0].data)
        .unwrap();
    let att = parsed.attachments().next().unwrap();
    assert_eq!(att.contents(), pdf.as_slice());
    let notes = out.wait_notes(3).await;
    for addr in ["huge@example.org", "missing@example.org"] {
        let n = notes
            .iter()
            .find(|n| info(n)["destination"] == addr)
            .unwrap();
        assert_eq!(info(n)["code"], "7591", "{n}");
    }
    out.stop().await;
    assert_eq!(relay.messages().len(), 1);
}

#[tokio::test]
async fn template_send_uses_the_stored_template() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let t = json!({"id": "welcome", "name": "Welcome", "subject": "Welcome $(name)", "text": "Hi $(name)", "html": "<b>Hi $(name)</b>"});
    let r = out
        .client
        .post(format!("{}/v2/templates", out.api))
        .header("key", "key-a")
        .json(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = out
        .client
        .post(format!("{}/v2/templates", out.api))
        .header("key", "key-a")
        .json(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let listed: Value = out
        .client
        .get(format!("{}/v2/templates", out.api))
        .header("key", "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], "welcome");
    let other = out
        .client
        .get(format!("{}/v2/templates/welcome", out.api))
        .header("key", "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "templates are per service");
    let mut b = email(&["t@example.org"]);
    b.as_object_mut().unwrap().remove("content");
    b["template"] = json!({"id": "welcome"});
    b["to"][0]["substitutions"] = json!({"{{name}}": "Tess"});
    assert_eq!(out.post(b).await.0, 202);
    let msgs = wait_messages(&relay, 1).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&msgs[0].data)
        .unwrap();
    assert_eq!(parsed.subject(), Some("Welcome Tess"));
    assert_eq!(parsed.body_html(0).unwrap(), "<b>Hi Tess</b>");
    let r = out
        .client
        .delete(format!("{}/v2/templates/welcome", out.api))
        .header("key", "key-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    out.stop().await;
}

#[tokio::test]
async fn xoauth2_refreshes_the_token_at_the_token_endpoint() {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/token",
        post(|body: String| async move {
            if body.contains("grant_type=refresh_token") && body.contains("refresh_token=r-123") {
                axum::Json(
                    json!({"access_token": "at-456", "expires_in": 3600, "token_type": "Bearer"}),
                )
            } else {
                axum::Json(json!({"error": "invalid_grant"}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let relay = Smarthost::start(Script {
        xoauth2_token: Some("at-456".into()),
        ..Default::default()
    })
    .await;
    let route =
        Route::smtp(relay.addr.port()).oauth2(&format!("http://{token_addr}/token"), "r-123");
    let out = Out::start_with(relay.addr, |c| c.asset(|a| a.route(route))).await;
    out.post(email(&["oauth@example.org"])).await;
    let msgs = wait_messages(&relay, 1).await;
    let auth = msgs[0].auth.clone().unwrap();
    assert!(
        auth.starts_with("user=me@example.test\x01auth=Bearer at-456"),
        "{auth:?}"
    );
    out.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_repository() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let served = out
        .client
        .get(format!("{}/openapi.json", out.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &served).unwrap();
    }
    let kept = std::fs::read_to_string(path)
        .expect("openapi.json is in the repository (UPDATE_OPENAPI=1 cargo test writes it)");
    assert_eq!(
        served, kept,
        "openapi.json is stale: run UPDATE_OPENAPI=1 cargo test --test outbound openapi"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["paths"]["/v2/messages"]["post"].is_object());
    out.stop().await;
}

#[tokio::test]
async fn suppressed_recipients_end_with_7240_or_7241_and_are_never_relayed() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth("admin-secret");
    for (address, reason) in [
        ("gone@example.org", "unsubscribed"),
        ("Bounced@Example.org", "bounced"),
    ] {
        let r = admin(out.client.post(format!("{}/admin/suppressions", out.api)))
            .json(&json!({"assetId": "a_out", "address": address, "reason": reason}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = out
        .client
        .get(format!("{}/admin/suppressions", out.api))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let mut b = email(&["gone@example.org", "bounced@example.org"]);
    b["multipleToRecipients"] = true.into();
    b["bcc"] = json!(["fine@example.org"]);
    assert_eq!(out.post(b).await.0, 202);
    let notes = out.wait_notes(3).await;
    let by = |addr: &str| {
        notes
            .iter()
            .find(|n| info(n)["destination"] == addr)
            .cloned()
            .unwrap()
    };
    assert_eq!(info(&by("gone@example.org"))["code"], "7241");
    assert_eq!(
        info(&by("gone@example.org"))["Description"],
        "unsubscribed : gone@example.org"
    );
    assert_eq!(info(&by("bounced@example.org"))["code"], "7240");
    assert_eq!(
        info(&by("bounced@example.org"))["Description"],
        "already bounced : bounced@example.org"
    );
    assert_eq!(info(&by("fine@example.org"))["code"], "7501");
    let msgs = relay.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].rcpts,
        ["fine@example.org"],
        "suppressed addresses never reach the relay"
    );
    out.stop().await;
}

#[tokio::test]
async fn suppression_csv_import_is_all_or_nothing_and_round_trips_through_the_cli() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let import = |body: &'static str| {
        out.client
            .post(format!("{}/admin/suppressions/import", out.api))
            .bearer_auth("admin-secret")
            .header("content-type", "text/csv")
            .body(body)
            .send()
    };
    let r = import(
        "asset_id,address,reason\na_out,one@example.org,unsubscribed\na_out,broken,bounced\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["description"]
            .as_str()
            .unwrap()
            .starts_with("line 3: address 'broken'"),
        "{err}"
    );
    let listed: Value = admin_json(&out.client, format!("{}/admin/suppressions", out.api)).await;
    assert_eq!(listed["count"], 0, "nothing half-imported");
    let r = import("asset_id,address,reason\na_out,one@example.org,unsubscribed\na_out,two@example.org,complained\n").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["imported"], 2);

    // The CLI talks to the running daemon's admin API.
    let config = out.dir.path().join("postern.toml");
    let cli = move |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cli_out = tokio::task::spawn_blocking(move || {
        let added = cli(&[
            "suppression",
            "add",
            "a_out",
            "three@example.org",
            "bounced",
        ]);
        let exported = cli(&["suppression", "export"]);
        let bad = cli(&["suppression", "add", "a_out", "three@example.org", "maybe"]);
        let removed = cli(&["suppression", "remove", "a_out", "one@example.org"]);
        (added, exported, bad, removed)
    })
    .await
    .unwrap();
    assert_eq!(cli_out.0 .0, Some(0), "{:?}", cli_out.0);
    let (code, csv_text, _) = cli_out.1;
    assert_eq!(code, Some(0));
    assert!(
        csv_text.starts_with("asset_id,address,reason,since,expires\n"),
        "{csv_text}"
    );
    for a in [
        "one@example.org,unsubscribed",
        "two@example.org,complained",
        "three@example.org,bounced",
    ] {
        assert!(csv_text.contains(a), "{a} missing from {csv_text}");
    }
    assert_eq!(cli_out.2 .0, Some(1));
    assert!(
        cli_out
            .2
             .2
            .contains("reason: must be unsubscribed, bounced or complained"),
        "{}",
        cli_out.2 .2
    );
    assert_eq!(cli_out.3 .0, Some(0));
    let listed: Value = admin_json(&out.client, format!("{}/admin/suppressions", out.api)).await;
    assert_eq!(listed["count"], 2);
    out.stop().await;
}

fn header_of(data: &[u8], name: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse(data)?;
    parsed
        .header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[tokio::test]
async fn unsubscribe_headers_one_click_events_and_resubscribe() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start_with(relay.addr, |c| {
        c.asset(|a| a.unsubscribe("unsub@example.test", &["otp@example.test"]))
    })
    .await;
    let mut b = email(&["ann@example.org"]);
    b["content"]["text"] = "Bye: $(unsubscribe)".into();
    out.post(b).await;
    let mut otp = email(&["ann@example.org"]);
    otp["from"] = "otp@example.test".into();
    out.post(otp).await;
    let msgs = wait_messages(&relay, 2).await;
    let news = msgs
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains("From: <news@"))
        .unwrap();
    let otp_msg = msgs
        .iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains("From: <otp@"))
        .unwrap();
    assert_eq!(
        header_of(&otp_msg.data, "List-Unsubscribe"),
        None,
        "skip_sender_ids get no header"
    );
    let list = header_of(&news.data, "List-Unsubscribe").expect("List-Unsubscribe");
    let url = list
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    assert!(url.starts_with(&format!("{}/u/", out.api)), "{list}");
    // The mailto's subject carries the recipient's token (the link's), so mail to it
    // speaks for that recipient, not for whoever writes the From.
    let token = url.rsplit('/').next().unwrap();
    assert!(
        list.contains(&format!(
            "<mailto:unsub@example.test?subject=unsubscribe%20{token}>"
        )),
        "{list}"
    );
    assert_eq!(
        header_of(&news.data, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(&news.data)
        .unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap().trim(),
        format!("Bye: {url}"),
        "the body link is the header link"
    );
    let dkim_h = header_of(&news.data, "DKIM-Signature").unwrap();
    assert!(
        dkim_h.contains("List-Unsubscribe"),
        "covered by DKIM: {dkim_h}"
    );

    // GET only asks; a tampered token changes nothing.
    let page = out.client.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<form method=\"post\">"));
    let bad = format!("{}x", url);
    assert_eq!(
        out.client
            .post(&bad)
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(out.client.get(&bad).send().await.unwrap().status(), 400);
    let listed: Value = admin_json(&out.client, format!("{}/admin/suppressions", out.api)).await;
    assert_eq!(listed["count"], 0);

    // RFC 8058 one-click from a real HTTP client.
    let r = out
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hooks = out.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks.lock().unwrap().iter().any(|h| h.path == "/mo")
    })
    .await;
    let ev = out
        .hooks
        .delivered()
        .into_iter()
        .find(|h| h.path == "/mo")
        .unwrap()
        .json();
    assert_eq!(ev["event"], "Unsubscribe");
    assert_eq!(ev["from"], "ann@example.org");
    assert_eq!(ev["senderId"], "news@example.test");
    assert_eq!(ev["appId"], "a_out");
    assert_eq!(ev["correlationId"], "c-1");

    // The next send is refused with 7241 and never reaches the relay.
    out.post(email(&["ann@example.org"])).await;
    let hooks = out.hooks.clone_hooks();
    wait_for(WAIT, || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.path == "/dlr" && String::from_utf8_lossy(&h.body).contains("\"7241\""))
    })
    .await;
    assert_eq!(relay.messages().len(), 2);

    // Resubscribe from the page: a Subscribe event, and mail flows again.
    let r = out
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=resubscribe")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("subscribed again"));
    let hooks = out.hooks.clone_hooks();
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
    let events: Vec<Value> = out
        .hooks
        .delivered()
        .into_iter()
        .filter(|h| h.path == "/mo")
        .map(|h| h.json())
        .collect();
    assert_eq!(events[1]["event"], "Subscribe");
    out.post(email(&["ann@example.org"])).await;
    wait_messages(&relay, 3).await;
    out.stop().await;
}

#[tokio::test]
async fn click_and_open_tracking_rewrites_html_redirects_and_notifies() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let mut b = email(&["ann@example.org"]);
    b["options"] = json!({"trackClicks": true, "trackOpens": true});
    b["content"] = json!({
        "type": "html", "subject": "Links", "text": "see https://shop.example/text",
        "html": "<html><body><a href=\"https://shop.example/a?x=1&amp;y=2\">A</a> <a no-track-connect href=\"https://keep.example/\">B</a> <a href=\"/rel\">C</a></body></html>"
    });
    out.post(b).await;
    let msgs = wait_messages(&relay, 1).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&msgs[0].data)
        .unwrap();
    let html = parsed.body_html(0).unwrap().to_string();
    let text = parsed.body_text(0).unwrap().to_string();
    assert_eq!(
        text.trim(),
        "see https://shop.example/text",
        "text bodies are never tracked"
    );
    assert!(
        html.contains("href=\"https://keep.example/\"") && !html.contains("no-track-connect"),
        "{html}"
    );
    assert!(html.contains("href=\"/rel\""), "{html}");
    let click_url = html
        .split("href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert!(
        click_url.starts_with(&format!("{}/t/c/", out.api)),
        "{html}"
    );
    let pixel_url = html
        .split("<img src=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert!(pixel_url.starts_with(&format!("{}/t/o/", out.api)));

    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(&click_url)
        .header("user-agent", "TestAgent/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://shop.example/a?x=1&y=2");
    let forged = no_redirect
        .get(format!("{}/t/c/{}", out.api, "eyJ4IjoxfQ.AAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert!(
        !forged.headers().contains_key("location"),
        "no open redirect"
    );
    let pixel = out.client.get(&pixel_url).send().await.unwrap();
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    assert_eq!(&pixel.bytes().await.unwrap()[..3], b"GIF");

    let notes = out.wait_notes(3).await;
    let clicked = notes
        .iter()
        .find(|n| info(n)["code"] == "7528")
        .expect("7528");
    assert_eq!(
        info(clicked)["Description"],
        "https://shop.example/a?x=1&y=2|127.0.0.1"
    );
    assert_eq!(info(clicked)["additionalInfo"], "TestAgent/1.0");
    assert_eq!(info(clicked)["deliveryStatus"], "Clicked");
    let read = notes
        .iter()
        .find(|n| info(n)["code"] == "7502")
        .expect("7502");
    assert_eq!(info(read)["deliveryStatus"], "Read");
    out.stop().await;
}

#[tokio::test]
async fn sandbox_assets_only_mail_verified_recipients() {
    let relay = Smarthost::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = Receiver::start().await;
    let Started {
        handle: h, http, ..
    } = start_in_process(
        dir.path(),
        ConfigBuilder::outbound(&hooks.url(""), Route::smtp(relay.addr.port()))
            .asset(|a| a.sandbox(&["QA@example.org"])),
    )
    .await;
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/v2/messages"))
        .header("key", "key-a")
        .json(&email(&["qa@example.org", "stranger@example.org"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let notes: Vec<Value> = hooks
        .wait_for_count(2, WAIT)
        .await
        .iter()
        .map(|h| h.json())
        .collect();
    let stranger = notes
        .iter()
        .find(|n| info(n)["destination"] == "stranger@example.org")
        .unwrap();
    assert_eq!(info(stranger)["code"], "7522");
    assert_eq!(info(stranger)["deliveryStatus"], "Not Verified");
    let msgs = relay.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["qa@example.org"]);
    h.shutdown().await;
}

#[tokio::test]
async fn dsn_to_the_verp_address_is_a_7520_and_hard_bounces_are_suppressed() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    out.post(email(&["nobody@example.org"])).await;
    let msgs = wait_messages(&relay, 1).await;
    let verp = msgs[0].mail_from.clone();
    out.wait_notes(1).await;
    let smtp = out.daemon.as_ref().unwrap().smtp_addrs[0];
    let dsn = |to: &str| {
        format!(
            "From: MAILER-DAEMON@mx.example.org\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: User unknown\r\n\r\n--B--\r\n"
        )
    };
    let deliver = |to: String| async move {
        let (mut raw, _) = Raw::connect(smtp).await;
        raw.cmd("EHLO mx.example.org").await;
        raw.cmd("MAIL FROM:<>").await;
        assert!(raw.cmd(&format!("RCPT TO:<{to}>")).await.starts_with("250"));
        raw.cmd("DATA").await;
        let r = raw.cmd(&format!("{}.", dsn(&to))).await;
        assert!(r.starts_with("250"), "{r}");
    };
    // A forged VERP address changes nothing.
    let forged = format!("b-{}-{}@bounces.example.test", &verp[2..34], "forgedmac000");
    deliver(forged).await;
    deliver(verp.clone()).await;
    let notes = out.wait_notes(2).await;
    let bounce = &notes[1];
    assert_eq!(info(bounce)["code"], "7520");
    assert_eq!(info(bounce)["Description"], "Permanent_NoEmail");
    assert_eq!(
        info(bounce)["additionalInfo"],
        "5.1.1|failed|smtp; 550 5.1.1 <nobody@example.org>: User unknown"
    );
    assert_eq!(
        bounce["deliveryInfoNotification"]["transid"],
        notes[0]["deliveryInfoNotification"]["transid"]
    );
    // Now on the bounce list: the next send ends with 7240 and never reaches the relay.
    out.post(email(&["nobody@example.org"])).await;
    let notes = out.wait_notes(3).await;
    assert_eq!(info(&notes[2])["code"], "7240");
    assert_eq!(relay.messages().len(), 1);
    out.stop().await;
}

#[tokio::test]
async fn arf_complaint_is_a_7521_and_suppresses_the_recipient() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start(relay.addr).await;
    let (_, body) = out.post(email(&["ann@example.org"])).await;
    let tid = body["messages"][0]["tid"].as_str().unwrap().to_string();
    wait_messages(&relay, 1).await;
    out.wait_notes(1).await;
    let smtp = out.daemon.as_ref().unwrap().smtp_addrs[0];
    let arf = format!(
        "From: feedback@fbl.example.net\r\nTo: fbl@bounces.example.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"p\"\r\n\r\n--p\r\nContent-Type: text/plain\r\n\r\nAbuse report.\r\n\r\n--p\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: <ann@example.org>\r\n\r\n--p\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@example.test\r\nTo: ann@example.org\r\nSubject: Hello\r\nMessage-ID: <{tid}@mx.example.test>\r\n\r\nHi\r\n\r\n--p--\r\n"
    );
    let (mut raw, _) = Raw::connect(smtp).await;
    raw.cmd("EHLO fbl.example.net").await;
    raw.cmd("MAIL FROM:<feedback@fbl.example.net>").await;
    assert!(raw
        .cmd("RCPT TO:<fbl@bounces.example.test>")
        .await
        .starts_with("250"));
    raw.cmd("DATA").await;
    assert!(raw.cmd(&format!("{arf}.")).await.starts_with("250"));
    let notes = out.wait_notes(2).await;
    assert_eq!(info(&notes[1])["code"], "7521");
    assert_eq!(info(&notes[1])["deliveryStatus"], "Complaint");
    assert_eq!(info(&notes[1])["Description"], "abuse");
    out.post(email(&["ann@example.org"])).await;
    let notes = out.wait_notes(3).await;
    assert_eq!(info(&notes[2])["code"], "7241");
    assert_eq!(relay.messages().len(), 1);
    out.stop().await;
}

#[tokio::test]
async fn contact_policy_consent_and_frequency_cap() {
    let relay = Smarthost::start(Script::default()).await;
    let out = Out::start_with(relay.addr, |c| c.contact_policy("promo", 1, 3600)).await;
    let granted = out
        .client
        .put(format!("{}/admin/consent/promo/yes@example.org", out.api))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 204);
    let with_policy = |to: &str, consent: bool, cap: bool| {
        let mut b = email(&[to]);
        b["contactPolicy"] = json!({"contactPolicyGroup": "promo", "channelCheckConsent": consent, "channelApplyFrequencyCap": cap});
        b
    };
    let mut unknown = email(&["x@example.org"]);
    unknown["contactPolicy"] = json!({"contactPolicyGroup": "nope", "channelCheckConsent": true});
    let (s, b) = out.post(unknown).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "7004"));

    out.post(with_policy("no@example.org", true, false)).await;
    out.post(with_policy("yes@example.org", true, true)).await;
    let notes = out.wait_notes(2).await;
    assert!(notes
        .iter()
        .any(|n| info(n)["destination"] == "no@example.org" && info(n)["code"] == "7593"));
    assert!(notes
        .iter()
        .any(|n| info(n)["destination"] == "yes@example.org" && info(n)["code"] == "7501"));
    // The cap is one per hour: the second send is refused.
    out.post(with_policy("yes@example.org", true, true)).await;
    let notes = out.wait_notes(3).await;
    assert_eq!(info(&notes[2])["code"], "7594");
    assert_eq!(relay.messages().len(), 1);
    out.stop().await;
}
