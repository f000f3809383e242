//! The SES route and SES events over SNS, in process: the daemon's SES client against a
//! scriptable SES v2 endpoint on loopback (the interop suite runs the same path against
//! moto), and SNS notifications signed here with a test key whose certificate URL the
//! configuration trusts.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:postern-events";

/// One request the fake SES got.
#[derive(Clone, Debug)]
struct SesCall {
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// A scripted answer: status, error type, message.
type Answer = (u16, &'static str, &'static str);

#[derive(Clone, Default)]
struct FakeSes {
    calls: Arc<Mutex<Vec<SesCall>>>,
    /// Answers to give, in order; then 200 with a fresh MessageId.
    script: Arc<Mutex<VecDeque<Answer>>>,
}

async fn ses_send(
    State(s): State<FakeSes>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let n = {
        let mut calls = s.calls.lock().unwrap();
        calls.push(SesCall {
            path: uri.path().to_string(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        calls.len()
    };
    match s.script.lock().unwrap().pop_front() {
        Some((status, kind, message)) => (
            StatusCode::from_u16(status).unwrap(),
            [(
                "x-amzn-ErrorType",
                format!("{kind}:http://internal.amazon.com/"),
            )],
            json!({ "message": message }).to_string(),
        )
            .into_response(),
        None => axum::Json(json!({ "MessageId": format!("ses-msg-{n}") })).into_response(),
    }
}

impl FakeSes {
    async fn start(script: &[Answer]) -> (FakeSes, SocketAddr) {
        let s = FakeSes::default();
        s.script.lock().unwrap().extend(script.iter().copied());
        let app = Router::new()
            .route("/v2/email/outbound-emails", post(ses_send))
            .route("/v2/email/account", get(ses_send))
            .with_state(s.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (s, addr)
    }

    fn calls(&self) -> Vec<SesCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// Serves the test signing certificate and counts SubscribeURL visits.
struct SnsHost {
    base: String,
    key: rsa::RsaPrivateKey,
    confirmations: Arc<AtomicUsize>,
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
        let confirmations = Arc::new(AtomicUsize::new(0));
        let hits = confirmations.clone();
        let app = Router::new()
            .route("/certs/test.pem", get(move || async move { cert }))
            .route(
                "/confirm",
                get(move || async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    "<ConfirmSubscriptionResponse/>"
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        SnsHost {
            base: format!("http://{addr}/"),
            key,
            confirmations,
        }
    }

    /// A signed SNS message of `kind` carrying `message`.
    fn message(&self, kind: &str, id: &str, message: &str, version: &str) -> Value {
        let mut m = json!({
            "Type": kind,
            "MessageId": id,
            "TopicArn": TOPIC,
            "Message": message,
            "Timestamp": now_stamp(chrono::TimeDelta::zero()),
            "SignatureVersion": version,
            "SigningCertURL": format!("{}certs/test.pem", self.base),
        });
        if kind != "Notification" {
            m["Token"] = "token-1".into();
            m["SubscribeURL"] = format!("{}confirm?Token=token-1", self.base).into();
        }
        self.sign(&mut m);
        m
    }

    fn sign(&self, m: &mut Value) {
        use rsa::pkcs1v15::SigningKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let parsed: postern::feedback::sns::Message = serde_json::from_value(m.clone()).unwrap();
        let text = parsed.string_to_sign().unwrap();
        let sig = match m["SignatureVersion"].as_str().unwrap() {
            "1" => SigningKey::<sha1::Sha1>::new(self.key.clone())
                .sign(text.as_bytes())
                .to_vec(),
            _ => SigningKey::<sha2::Sha256>::new(self.key.clone())
                .sign(text.as_bytes())
                .to_vec(),
        };
        m["Signature"] = base64::engine::general_purpose::STANDARD.encode(sig).into();
    }
}

/// An SNS `Timestamp` `offset` from now (SNS's format: milliseconds, `Z`).
fn now_stamp(offset: chrono::TimeDelta) -> String {
    (chrono::Utc::now() + offset).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

struct Ses {
    daemon: Option<postern::Handle>,
    api: String,
    hooks: Receiver,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Ses {
    async fn start(ses: SocketAddr, trust: &str) -> Ses {
        let hooks = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let Started {
            handle: daemon,
            http,
            ..
        } = start_in_process(
            dir.path(),
            ConfigBuilder::outbound(
                &hooks.url(""),
                Route::ses("us-east-1", ses, "test-secret").configuration_set("postern-events"),
            )
            .ses_topic(TOPIC)
            .ses_trust_url_prefix(trust)
            .services_tps(200),
        )
        .await;
        Ses {
            daemon: Some(daemon),
            api: format!("http://{http}"),
            hooks,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn send(&self, to: &[&str]) -> String {
        let resp = self
            .client
            .post(format!("{}/v2/messages", self.api))
            .header("key", "key-a")
            .json(&json!({
                "channel": "email",
                "from": "news@example.test",
                "to": [{"email": to}],
                "multipleToRecipients": true,
                "content": {"type": "text", "subject": "Hello", "text": "Hi there"},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        body["messages"][0]["tid"].as_str().unwrap().to_string()
    }

    async fn sns(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/ses/events", self.api))
            .header("content-type", "text/plain; charset=UTF-8")
            .header(
                "x-amz-sns-message-type",
                body["Type"].as_str().unwrap_or(""),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn notes(&self, n: usize) -> Vec<Value> {
        self.hooks
            .wait_for_count(n, WAIT)
            .await
            .iter()
            .map(|h| h.json()["deliveryInfoNotification"].clone())
            .collect()
    }

    async fn stop(mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }
}

fn ses_event(kind: &str, message_id: &str, body: &str) -> String {
    format!(
        r#"{{"eventType":"{kind}","mail":{{"timestamp":"2026-11-23T10:00:00.000Z","source":"news@example.test","sourceArn":"arn:aws:ses:us-east-1:123456789012:identity/example.test","sendingAccountId":"123456789012","messageId":"{message_id}","destination":["ann@example.org","bob@example.org"],"headersTruncated":false,"tags":{{"ses:configuration-set":["postern-events"]}}}},{body}}}"#
    )
}

#[tokio::test]
async fn ses_send_is_signed_raw_mime_and_its_message_id_is_kept() {
    let (fake, addr) = FakeSes::start(&[]).await;
    let d = Ses::start(addr, "http://127.0.0.1:1/").await;
    let tid = d.send(&["ann@example.org", "bob@example.org"]).await;
    let notes = d.notes(2).await;
    for n in &notes {
        assert_eq!(n["transid"], tid.as_str());
        assert_eq!(n["deliveryInfo"]["code"], "7501");
    }
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "one SendEmail for the transaction");
    let c = &calls[0];
    assert_eq!(c.path, "/v2/email/outbound-emails");
    let auth = c.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
            && auth.contains("/us-east-1/ses/aws4_request")
            && auth.contains("SignedHeaders=")
            && auth.contains("Signature="),
        "{auth}"
    );
    assert!(c.headers.contains_key("x-amz-date"));
    assert_eq!(c.body["FromEmailAddress"], "news@example.test");
    assert_eq!(
        c.body["Destination"]["ToAddresses"],
        json!(["ann@example.org", "bob@example.org"])
    );
    assert_eq!(c.body["ConfigurationSetName"], "postern-events");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(c.body["Content"]["Raw"]["Data"].as_str().unwrap())
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("DKIM-Signature:") && raw.contains("d=example.test"));
    // SES rewrites Message-ID and Date, so the signature must not cover them.
    // The DKIM-Signature header, unfolded, then its h= tag.
    let mut header = String::new();
    for (n, line) in raw.split("\r\n").enumerate() {
        if n > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        header.push_str(line.trim());
    }
    let signed: String = header
        .split(';')
        .find_map(|t| t.trim().strip_prefix("h="))
        .unwrap_or_else(|| panic!("no h= in {header}"))
        .to_string();
    let signed = signed.to_ascii_lowercase();
    assert!(
        signed.contains("from") && signed.contains("subject"),
        "{signed}"
    );
    assert!(
        !signed.contains("message-id") && !signed.contains("date"),
        "{signed}"
    );
    assert!(raw.contains(&format!("Message-ID: <{tid}@mx.example.test>")));
    let metrics = d
        .client
        .get(format!("{}/metrics", d.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("postern_outbound_messages_total{route=\"ses\",result=\"submitted\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("postern_route_latency_seconds_count{route=\"ses\"} 1"));
    d.stop().await;
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_until_accepted() {
    let (fake, addr) = FakeSes::start(&[
        (
            429,
            "TooManyRequestsException",
            "Maximum sending rate exceeded.",
        ),
        (503, "ServiceUnavailable", "try later"),
    ])
    .await;
    let d = Ses::start(addr, "http://127.0.0.1:1/").await;
    let tid = d.send(&["ann@example.org"]).await;
    let notes = d.notes(1).await;
    assert_eq!(notes[0]["deliveryInfo"]["code"], "7501");
    assert_eq!(notes[0]["transid"], tid.as_str());
    assert_eq!(fake.calls().len(), 3, "two refusals, then the send");
    assert_eq!(d.hooks.delivered().len(), 1, "one notification, no failure");
    d.stop().await;
}

#[tokio::test]
async fn message_rejected_fails_with_ses_message() {
    let (fake, addr) = FakeSes::start(&[(
        400,
        "MessageRejected",
        "Email address is not verified. The following identities failed the check: news@example.test",
    )])
    .await;
    let d = Ses::start(addr, "http://127.0.0.1:1/").await;
    d.send(&["ann@example.org"]).await;
    let n = &d.notes(1).await[0]["deliveryInfo"];
    assert_eq!(n["code"], "7592");
    assert_eq!(n["deliveryStatus"], "Failed");
    assert_eq!(
        n["additionalInfo"],
        "MessageRejected: Email address is not verified. The following identities failed the check: news@example.test"
    );
    assert_eq!(fake.calls().len(), 1, "a permanent refusal is not retried");
    d.stop().await;
}

#[tokio::test]
async fn sns_events_become_notifications_and_forgeries_change_nothing() {
    let (_fake, addr) = FakeSes::start(&[]).await;
    let host = SnsHost::start().await;
    let d = Ses::start(addr, &host.base).await;
    let tid = d.send(&["ann@example.org", "bob@example.org"]).await;
    d.notes(2).await; // 7501 x2
    let id = "ses-msg-1";

    // A subscription is confirmed by visiting SubscribeURL under the trusted prefix.
    let (status, _) = d
        .sns(&host.message("SubscriptionConfirmation", "sub-1", "confirm", "1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(host.confirmations.load(Ordering::SeqCst), 1);

    // Delivery (SignatureVersion 1) and a permanent bounce (version 2).
    let delivery = ses_event(
        "Delivery",
        id,
        r#""delivery":{"timestamp":"2026-11-23T10:00:01.000Z","processingTimeMillis":546,"recipients":["ann@example.org"],"smtpResponse":"250 2.6.0 Message received","reportingMTA":"a8-70.smtp-out.amazonses.com"}"#,
    );
    let (status, body) = d
        .sns(&host.message("Notification", "n-1", &delivery, "1"))
        .await;
    assert_eq!(status, 200, "{body}");
    let bounce = ses_event(
        "Bounce",
        id,
        r#""bounce":{"bounceType":"Permanent","bounceSubType":"NoEmail","bouncedRecipients":[{"emailAddress":"bob@example.org","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}],"timestamp":"2026-11-23T10:00:02.000Z","feedbackId":"f-1","reportingMTA":"dsn; a8-70.smtp-out.amazonses.com"}"#,
    );
    let signed_bounce = host.message("Notification", "n-2", &bounce, "2");
    assert_eq!(d.sns(&signed_bounce).await.0, 200);
    let notes = d.notes(4).await;
    let delivered = &notes[2]["deliveryInfo"];
    assert_eq!(delivered["code"], "7500");
    assert_eq!(delivered["destination"], "ann@example.org");
    assert_eq!(delivered["additionalInfo"], "250 2.6.0 Message received");
    assert_eq!(notes[2]["transid"], tid.as_str());
    let bounced = &notes[3]["deliveryInfo"];
    assert_eq!(bounced["code"], "7520");
    assert_eq!(bounced["destination"], "bob@example.org");
    assert_eq!(bounced["Description"], "Permanent_NoEmail");
    assert_eq!(
        bounced["additionalInfo"],
        "5.1.1|failed|smtp; 550 5.1.1 user unknown"
    );

    // SNS redelivers: the same message id records nothing twice.
    assert_eq!(d.sns(&signed_bounce).await.0, 200);

    // Forgeries: tampered, unsigned, untrusted certificate URL, foreign topic, bad version.
    let mut tampered = host.message("Notification", "n-3", &delivery, "2");
    tampered["Message"] = delivery
        .replace("ann@example.org\"]", "bob@example.org\"]")
        .into();
    let mut unsigned = host.message("Notification", "n-4", &delivery, "1");
    unsigned.as_object_mut().unwrap().remove("Signature");
    let mut elsewhere = host.message("Notification", "n-5", &delivery, "1");
    elsewhere["SigningCertURL"] = "https://evil.example/cert.pem".into();
    let mut topic = host.message("Notification", "n-6", &delivery, "1");
    topic["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:theirs".into();
    host.sign(&mut topic);
    let mut version = host.message("Notification", "n-7", &delivery, "1");
    version["SignatureVersion"] = "3".into();
    for (what, forged) in [
        ("tampered", tampered),
        ("unsigned", unsigned),
        ("untrusted certificate", elsewhere),
        ("foreign topic", topic),
        ("signature version 3", version),
    ] {
        let (status, body) = d.sns(&forged).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["code"], "7004", "{what}");
    }
    let (status, _) = d
        .client
        .post(format!("{}/ses/events", d.api))
        .body("not json")
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 400);
    // A subscription whose SubscribeURL is not trusted is not visited.
    let mut sub = host.message("SubscriptionConfirmation", "sub-2", "confirm", "2");
    sub["SubscribeURL"] = "http://127.0.0.2:9/confirm".into();
    host.sign(&mut sub);
    assert_eq!(d.sns(&sub).await.0, 403);
    assert_eq!(host.confirmations.load(Ordering::SeqCst), 1);

    // Feedback arriving at once for one transaction: every event in its history.
    let complaint = ses_event(
        "Complaint",
        id,
        r#""complaint":{"complainedRecipients":[{"emailAddress":"ann@example.org"}],"timestamp":"2026-11-23T10:00:03.000Z","feedbackId":"f-2","userAgent":"Yahoo!-Mail-Feedback/2.0","complaintFeedbackType":"abuse","arrivalDate":"2026-11-23T10:00:03.000Z"}"#,
    );
    let click = ses_event(
        "Click",
        id,
        r#""click":{"ipAddress":"192.0.2.1","link":"https://example.test/a","linkTags":{},"timestamp":"2026-11-23T10:00:04.000Z","userAgent":"Mozilla/5.0"}"#,
    );
    let (complaint, click) = (
        host.message("Notification", "n-8", &complaint, "2"),
        host.message("Notification", "n-9", &click, "2"),
    );
    let (a, b) = tokio::join!(d.sns(&complaint), d.sns(&click));
    assert_eq!((a.0, b.0), (200, 200));
    let history: Value = d
        .client
        .get(format!("{}/v2/messages/{tid}", d.api))
        .header("key", "key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut codes: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        ["7500", "7501", "7501", "7520", "7521", "7528"],
        "{history}"
    );
    d.notes(6).await;

    // The bounce put bob on the bounce list: a new send to him fails with 7240.
    d.send(&["bob@example.org"]).await;
    let notes = d.notes(7).await;
    assert_eq!(
        notes.len(),
        7,
        "nothing from the duplicate or the forgeries"
    );
    assert_eq!(notes[6]["deliveryInfo"]["code"], "7240");
    assert_eq!(
        notes[6]["deliveryInfo"]["Description"],
        "already bounced : bob@example.org"
    );
    let metrics = d
        .client
        .get(format!("{}/metrics", d.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "postern_sns_messages_total{result=\"recorded\"} 4",
        "postern_sns_messages_total{result=\"ignored\"} 1",
        "postern_sns_messages_total{result=\"confirmed\"} 1",
        "postern_sns_messages_total{result=\"refused\"} 7",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    d.stop().await;
}

#[tokio::test]
async fn stale_replayed_and_foreign_topic_notifications_are_refused() {
    let (_fake, addr) = FakeSes::start(&[]).await;
    let host = SnsHost::start().await;
    let d = Ses::start(addr, &host.base).await;
    let tid = d.send(&["ann@example.org"]).await;
    d.notes(1).await; // 7501
    let delivery = ses_event(
        "Delivery",
        "ses-msg-1",
        r#""delivery":{"timestamp":"2026-11-23T10:00:01.000Z","processingTimeMillis":546,"recipients":["ann@example.org"],"smtpResponse":"250 2.6.0 Message received","reportingMTA":"a8-70.smtp-out.amazonses.com"}"#,
    );
    let signed_at = |id: &str, stamp: String| {
        let mut m = host.message("Notification", id, &delivery, "2");
        m["Timestamp"] = stamp.into();
        host.sign(&mut m);
        m
    };
    let mut foreign = host.message("Notification", "n-4", &delivery, "2");
    foreign["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:theirs".into();
    host.sign(&mut foreign);
    let mut s3 = host.message("Notification", "n-5", &delivery, "2");
    s3["SigningCertURL"] = "https://sns.s3.amazonaws.com/SimpleNotificationService-x.pem".into();
    for (what, forged, reason) in [
        (
            "two hours old",
            signed_at("n-1", now_stamp(chrono::TimeDelta::hours(-2))),
            "minutes old",
        ),
        (
            "an hour ahead",
            signed_at("n-2", now_stamp(chrono::TimeDelta::hours(1))),
            "in the future",
        ),
        (
            "no time",
            signed_at("n-3", "last tuesday".into()),
            "not an ISO 8601 time",
        ),
        ("foreign topic", foreign, "is not in ses.topic_arns"),
        (
            "certificate on S3",
            s3,
            "not a .pem file https on an SNS host",
        ),
    ] {
        let (status, body) = d.sns(&forged).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["code"], "7004", "{what}");
        let description = body["description"].as_str().unwrap_or_default();
        assert!(description.contains(reason), "{what}: {body}");
    }
    // The same event, fresh and from the configured topic, is recorded: nothing above was.
    let (status, body) = d
        .sns(&host.message("Notification", "n-6", &delivery, "2"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "recorded");
    let notes = d.notes(2).await;
    assert_eq!(notes.len(), 2, "one delivery notification, not six");
    assert_eq!(notes[1]["deliveryInfo"]["code"], "7500");
    assert_eq!(notes[1]["transid"], tid.as_str());
    d.stop().await;
}

#[tokio::test]
async fn route_test_calls_get_account_and_reports_refusals() {
    let (fake, addr) = FakeSes::start(&[(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided.",
    )])
    .await;
    let text = ConfigBuilder::new()
        .data_dir(std::path::Path::new("./unused"))
        .ses_topic("arn:aws:sns:eu-west-1:123456789012:postern")
        .add_asset(
            Asset::new("a_ses", "example.test")
                .route(Route::ses("eu-west-1", addr, "wrong").session_token("sts-session-token")),
        )
        .toml();
    let c = postern::config::Config::parse(&text, "t").unwrap();
    let route = postern::outbound::route::Route::new(c.assets[0].route.as_ref().unwrap(), "mx");
    let err = route.test().await.unwrap_err();
    assert!(err.contains("SES 403 SignatureDoesNotMatch"), "{err}");
    // The fake answers a GetAccount with its MessageId JSON: enough to prove the call.
    let ok = route.test().await.unwrap();
    assert!(ok.contains(&format!("http://{addr} (eu-west-1)")), "{ok}");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c.path == "/v2/email/account"));
    let auth = calls[0].headers["authorization"].to_str().unwrap();
    assert!(auth.contains("/eu-west-1/ses/aws4_request"), "{auth}");
    assert_eq!(
        calls[0].headers["x-amz-security-token"], "sts-session-token",
        "temporary credentials carry their session token"
    );
}

#[tokio::test]
async fn more_than_fifty_recipients_go_as_several_ses_messages() {
    let (fake, addr) = FakeSes::start(&[]).await;
    let d = Ses::start(addr, "http://127.0.0.1:1/").await;
    let rcpts: Vec<String> = (0..120).map(|i| format!("r{i}@example.org")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let tid = d.send(&refs).await;
    let notes = d.notes(120).await;
    assert!(notes
        .iter()
        .all(|n| n["deliveryInfo"]["code"] == "7501" && n["transid"] == tid.as_str()));
    let sizes: Vec<usize> = fake
        .calls()
        .iter()
        .map(|c| {
            c.body["Destination"]["ToAddresses"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(
        sizes,
        [50, 50, 20],
        "SES takes at most 50 recipients a message"
    );
    let mut all: Vec<String> = fake
        .calls()
        .iter()
        .flat_map(|c| {
            c.body["Destination"]["ToAddresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort();
    let mut want = rcpts.clone();
    want.sort();
    assert_eq!(all, want, "every recipient exactly once");
    d.stop().await;
}
