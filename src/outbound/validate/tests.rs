use super::*;
use crate::model::wire::SendRequest;

fn config() -> Config {
    Config::parse(
        &format!(
            "{}{}",
            crate::config::TEST_SERVER,
            r#"
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
"#
        ),
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

#[test]
fn times_that_overflow_are_refused_with_the_field_named() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "sendAt",
            u64::MAX.into(),
            "sendAt: is out of range (before 1970 or after 9999-12-31)",
        ),
        (
            "sendAt",
            "18446744073709551615".into(),
            "sendAt: is out of range",
        ),
        (
            "sendAt",
            "99999999999999999999999".into(),
            "sendAt: is out of range",
        ),
        ("sendAt", (-5).into(), "sendAt: is out of range"),
        (
            "sendAt",
            "tomorrow".into(),
            "sendAt: must be ISO 8601 with a time zone, or epoch seconds",
        ),
        ("expireAt", u64::MAX.into(), "expireAt: is out of range"),
        (
            "expireAt",
            "1960-01-01T00:00:00Z".into(),
            "expireAt: is out of range",
        ),
        ("validity", u64::MAX.into(), "validity: is out of range"),
        (
            "validity",
            (u64::MAX / 1000).into(),
            "validity: is out of range",
        ),
    ];
    for (field, value, text) in cases {
        let (c, d) = err(with(&[field], value));
        assert_eq!(c, "7004", "{d}");
        assert!(d.starts_with(text), "{d:?} should start with {text:?}");
    }
    // The last writable time is accepted.
    let mut b = base();
    b["expireAt"] = "9999-12-31T23:59:59.999Z".into();
    assert_eq!(run(b).unwrap().expire_at_ms, LATEST_MS);
}

#[test]
fn sizes_are_checked_per_destination_after_substitution() {
    // html of 10 placeholders, each 60 KB for to[1] only: 600 KB there, small elsewhere.
    let mut b = base();
    b["content"] = serde_json::json!({"type": "html", "subject": "S", "html": "$(big)".repeat(10)});
    b["to"] = serde_json::json!([
        {"email": ["a@example.org"]},
        {"email": ["b@example.org"], "substitutions": {"big": "x".repeat(60_000)}},
    ]);
    let (c, d) = err(b.clone());
    assert_eq!(c, "7004");
    assert_eq!(
        d,
        "to[1]: content.html is 600000 octets after substitution, over 500 KB"
    );

    // The same html with the value given globally: to[0] is the first over.
    b["to"][1]["substitutions"] = serde_json::json!({});
    b["substitutions"] = serde_json::json!({"big": "x".repeat(60_000)});
    assert!(err(b.clone())
        .1
        .starts_with("to[0]: content.html is 600000"));
    // ... and a destination's own small value overrides the global one.
    b["to"] = serde_json::json!([{"email": ["a@example.org"], "substitutions": {"$(big)": "y"}}]);
    assert_eq!(
        run(b.clone()).unwrap().transactions[0].html.as_deref(),
        Some("yyyyyyyyyy")
    );
    // cc gets the global substitutions only.
    b["cc"] = serde_json::json!(["c@example.org"]);
    assert!(err(b.clone()).1.starts_with("cc[0]: content.html"));

    // Subject: 998 octets after substitution; text: 500 KB.
    let mut s = base();
    s["content"]["subject"] = "$(name)".into();
    s["to"][0]["substitutions"] = serde_json::json!({"name": "n".repeat(999)});
    assert_eq!(
        err(s.clone()).1,
        "to[0]: content.subject is 999 octets after substitution, over 998 octets"
    );
    s["to"][0]["substitutions"] = serde_json::json!({"name": "n".repeat(998)});
    assert_eq!(run(s).unwrap().transactions[0].subject.len(), 998);
    let mut t = base();
    t["content"]["subject"] = "S".into();
    t["content"]["text"] = "$(name)$(name)".into();
    t["substitutions"] = serde_json::json!({"name": "t".repeat(MAX_TEXT / 2 + 1)});
    assert!(err(t).1.starts_with("to[0]: content.text is 512002 octets"));

    // Substitution may shrink: a large html that ends up small is sent.
    let mut shrink = base();
    shrink["content"] = serde_json::json!({"type": "html", "subject": "S", "html": format!("{}$(x)", "$(gone)".repeat(80_000))});
    shrink["substitutions"] = serde_json::json!({"gone": "", "x": "kept"});
    assert_eq!(
        run(shrink).unwrap().transactions[0].html.as_deref(),
        Some("kept")
    );

    // multipleToRecipients: one email, named to[0].
    let mut m = base();
    m["multipleToRecipients"] = true.into();
    m["content"]["subject"] = "$(name)".into();
    m["to"] = serde_json::json!([{"email": ["a@example.org", "b@example.org"], "substitutions": {"name": "n".repeat(1000)}}]);
    assert!(err(m)
        .1
        .starts_with("to[0]: content.subject is 1000 octets"));
}

#[test]
fn a_destination_whose_addresses_are_all_invalid_is_not_sized() {
    let mut b = base();
    b["content"]["subject"] = "$(name)".into();
    b["to"] = serde_json::json!([
        {"email": ["not-an-address"], "substitutions": {"name": "n".repeat(2000)}},
        {"email": ["a@example.org"]},
    ]);
    let s = run(b).unwrap();
    assert_eq!(s.transactions.len(), 2);
    assert!(s.transactions[0].immediate.is_some());
}

#[test]
fn check_counts_destinations_before_any_expansion() {
    let c = config();
    let mut b = base();
    b["to"] = serde_json::json!([{"email": ["a@example.org", "b@example.org"]}]);
    b["cc"] = serde_json::json!(["c@example.org", " "]);
    b["bcc"] = serde_json::json!(["d@example.org"]);
    let req: SendRequest = serde_json::from_value(b).unwrap();
    let checked = check(req, &c.services[0], &c, None, &Policy::default(), 1_000_000).unwrap();
    assert_eq!(checked.destinations, 4);
    assert_eq!(checked.from(), "news@example.test");
}
