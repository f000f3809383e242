use super::*;
use crate::api::wire::SendRequest;

fn config() -> Config {
    Config::parse(
        r#"
[server]
hostname = "mx.example.test"
data_dir = "./data"
public_url = "http://127.0.0.1:8080"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
[[service]]
id = "svc_a"
key = "key-a"
secret = "c2VjcmV0"
tps = 5
assets = ["a_1"]
[[asset]]
id = "a_1"
domains = ["example.test"]
[[asset]]
id = "a_2"
domains = ["other.test"]
"#,
        "t",
    )
    .unwrap()
}

fn run(body: serde_json::Value) -> Result<Submission, Invalid> {
    let c = config();
    let req: SendRequest = serde_json::from_value(body).expect("request shape");
    let mut n = 0;
    let mut tid = || {
        n += 1;
        format!("tid-{n}")
    };
    validate(
        req,
        &c.services[0],
        &c,
        None,
        &Policy::default(),
        1_000_000,
        &mut tid,
    )
}

fn base() -> serde_json::Value {
    serde_json::json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": ["a@example.org"]}],
        "content": {"type": "text", "subject": "Hi $(name)", "text": "Hello $(name), $(unknown)"}
    })
}

fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let mut b = base();
    let mut cur = &mut b;
    for p in &path[..path.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    cur[path[path.len() - 1]] = value;
    b
}

fn err(body: serde_json::Value) -> (String, String) {
    let e = run(body).unwrap_err();
    (e.code.to_string(), e.description)
}

#[test]
fn refusals_name_the_field_and_the_rule() {
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            with(&["channel"], "sms".into()),
            "7004",
            "channel 'sms' is not served by postern",
        ),
        (
            with(&["from"], "x@other.test".into()),
            "7004",
            "from: domain 'other.test'",
        ),
        (with(&["from"], "x@nowhere.test".into()), "7004", "from:"),
        (
            with(&["content", "subject"], "a\r\nBcc: x@y.org".into()),
            "7004",
            "content.subject: must not contain CR",
        ),
        (
            with(&["content", "type"], "html".into()),
            "7003",
            "content.html",
        ),
        (
            with(&["content", "type"], "rtf".into()),
            "7004",
            "content.type",
        ),
        (
            with(&["callbackData"], "x".repeat(2001).into()),
            "7004",
            "callbackData",
        ),
        (
            with(&["notifyUrl"], "http://127.1:9/x".into()),
            "7004",
            "notifyUrl",
        ),
        (
            with(&["notifyUrl"], "gopher://example.org/".into()),
            "7004",
            "notifyUrl: scheme",
        ),
        (
            with(&["requestedReceipts"], serde_json::json!(["opened"])),
            "7004",
            "requestedReceipts",
        ),
        (with(&["sendAt"], "2030-01-01".into()), "7004", "sendAt"),
        (
            with(&["sendAt"], (1_000 + 8 * 86_400).into()),
            "7004",
            "sendAt: is more than 7 days ahead",
        ),
        (
            with(&["options"], serde_json::json!({"fromName": "A\nB"})),
            "7004",
            "options.fromName",
        ),
        (
            with(&["to"], serde_json::json!([{"email": []}])),
            "7003",
            "to[].email",
        ),
        (
            with(
                &["to"],
                serde_json::json!([{"email": ["a@x.org", "b@x.org", "c@x.org", "d@x.org", "e@x.org", "f@x.org"]}]),
            ),
            "7009",
            "too many destinations: 6",
        ),
    ];
    for (body, code, text) in cases {
        let (c, d) = err(body);
        assert_eq!(c, code, "{d}");
        assert!(d.contains(text), "{d:?} should contain {text:?}");
    }
    let mut both = base();
    both["expireAt"] = 2_000_000.into();
    both["validity"] = 60.into();
    assert!(err(both).1.contains("not both"));
    let mut both = base();
    both["template"] = serde_json::json!({"id": "t1"});
    assert!(err(both).1.contains("either content or template"));
    let mut att = base();
    att["content"]["attachments"] = serde_json::json!([{"mimetype": "application/pdf", "name": "a\r\n.pdf", "mediaUrl": "https://example.org/a"}]);
    assert!(err(att).1.starts_with("content.attachments[0].name"));
}

#[test]
fn one_tid_per_address_by_default_with_cc_and_bcc() {
    let mut b = base();
    b["to"] =
        serde_json::json!([{"email": ["a@example.org", "b@example.org"], "correlationId": "c-1"}]);
    b["cc"] = serde_json::json!(["c@example.org"]);
    b["bcc"] = serde_json::json!(["d@example.org"]);
    let s = run(b).unwrap();
    let rcpts: Vec<_> = s
        .transactions
        .iter()
        .map(|t| t.recipients.join(","))
        .collect();
    assert_eq!(
        rcpts,
        [
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "d@example.org"
        ]
    );
    assert_eq!(s.transactions[0].correlation_id.as_deref(), Some("c-1"));
    assert_eq!(
        s.transactions
            .iter()
            .map(|t| &t.tid)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        4
    );
}

#[test]
fn multiple_to_recipients_is_one_email_one_tid() {
    let mut b = base();
    b["multipleToRecipients"] = true.into();
    b["to"] = serde_json::json!([{"email": ["a@example.org", "b@example.org"]}]);
    b["cc"] = serde_json::json!(["c@example.org"]);
    b["bcc"] = serde_json::json!(["d@example.org"]);
    let s = run(b).unwrap();
    assert_eq!(s.transactions.len(), 1);
    let t = &s.transactions[0];
    assert_eq!(
        t.recipients,
        [
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "d@example.org"
        ]
    );
    assert_eq!(t.to, ["a@example.org", "b@example.org"]);
    assert_eq!(t.cc, ["c@example.org"]);
}

#[test]
fn invalid_and_too_long_addresses_get_their_own_failed_tid() {
    let mut b = base();
    let long = format!("{}@example.org", "x".repeat(70));
    b["to"] = serde_json::json!([{"email": ["good@example.org", "not-an-address", long]}]);
    let s = run(b).unwrap();
    let codes: Vec<_> = s.transactions.iter().map(|t| t.immediate).collect();
    assert_eq!(
        codes,
        [
            None,
            Some(DeliveryCode::Invalid),
            Some(DeliveryCode::TooLong)
        ]
    );
}

#[test]
fn substitutions_per_destination_win_and_keys_may_be_wrapped() {
    let mut b = base();
    b["substitutions"] = serde_json::json!({"$(name)": "Global", "{{extra}}": "E"});
    b["to"] = serde_json::json!([
        {"email": ["a@example.org"], "substitutions": {"name": "Ann\r\nBcc: evil@x.org"}},
        {"email": ["b@example.org"]}
    ]);
    b["content"]["text"] = "Hello $(name) $(extra) $(unknown) $(unsubscribe)".into();
    let s = run(b).unwrap();
    assert_eq!(
        s.transactions[0].subject, "Hi Ann  Bcc: evil@x.org",
        "CR/LF become spaces in the subject"
    );
    assert_eq!(
        s.transactions[0].text.as_deref(),
        Some("Hello Ann\r\nBcc: evil@x.org E $(unknown) $(unsubscribe)")
    );
    assert_eq!(
        s.transactions[1].text.as_deref(),
        Some("Hello Global E $(unknown) $(unsubscribe)")
    );
}

#[test]
fn send_at_and_validity_are_counted_as_specified() {
    let mut b = base();
    b["sendAt"] = "1970-01-01T00:20:00+00:00".into();
    b["validity"] = 60.into();
    let s = run(b).unwrap();
    assert_eq!(s.send_at_ms, 1_200_000);
    assert_eq!(s.expire_at_ms, 1_260_000);
    let mut b = base();
    b["sendAt"] = 1500.into();
    assert_eq!(run(b).unwrap().send_at_ms, 1_500_000);
    let s = run(base()).unwrap();
    assert_eq!(s.send_at_ms, 1_000_000);
    assert_eq!(s.expire_at_ms, 1_000_000 + DEFAULT_EXPIRY_MS);
}
