//! SPF, DKIM and DMARC verification of inbound mail against DNS answers the test serves
//! on loopback: results land in the MO event and the Authentication-Results header.

mod common;

#[path = "common/dns.rs"]
mod dns;

use base64::Engine;
use common::*;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn spf_dkim_dmarc_pass_and_a_tampered_body_fails_dkim() {
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
    let mut zone = HashMap::new();
    zone.insert(
        "example.org".to_string(),
        "v=spf1 ip4:127.0.0.1 -all".to_string(),
    );
    zone.insert(
        "sel._domainkey.example.org".to_string(),
        format!("v=DKIM1; k=ed25519; p={public}"),
    );
    zone.insert(
        "_dmarc.example.org".to_string(),
        "v=DMARC1; p=reject".to_string(),
    );
    let dns = dns::serve(zone).await;

    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url("")).dns(dns)).await;

    let body = "From: Alice <alice@example.org>\r\nTo: support@example.test\r\nSubject: signed\r\n\r\nHello, signed world.\r\n";
    let sig = DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&pkcs8).unwrap())
        .domain("example.org")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .sign(body.as_bytes())
        .unwrap()
        .to_header();
    let signed = format!("{sig}{body}");
    let tampered = format!("{sig}{}", body.replace("signed world", "forged world"));

    for msg in [&signed, &tampered] {
        let (mut raw, _) = Raw::connect(d.smtp).await;
        raw.cmd("EHLO mail.example.org").await;
        raw.cmd("MAIL FROM:<alice@example.org>").await;
        raw.cmd("RCPT TO:<support@example.test>").await;
        raw.cmd("DATA").await;
        let r = raw.cmd(&format!("{msg}.")).await;
        assert!(
            r.starts_with("250"),
            "authentication never rejects by default: {r}"
        );
    }
    let hooks = rx.wait_for_count(2, Duration::from_secs(30)).await;
    let events: Vec<_> = hooks.iter().map(|h| h.json()).collect();
    let good = events
        .iter()
        .find(|e| e["textMessage"].as_str().unwrap().contains("signed world"))
        .unwrap();
    let bad = events
        .iter()
        .find(|e| e["textMessage"].as_str().unwrap().contains("forged world"))
        .unwrap();
    assert_eq!(good["authResults"]["spf"], "pass");
    assert_eq!(good["authResults"]["dkim"], "pass");
    assert_eq!(good["authResults"]["dmarc"], "pass");
    // mail-auth reports a body-hash mismatch as `neutral` (RFC 6376 6.1.3 leaves it open).
    assert!(
        matches!(
            bad["authResults"]["dkim"].as_str(),
            Some("fail" | "neutral")
        ),
        "{bad}"
    );
    assert_eq!(bad["authResults"]["spf"], "pass");
    // DMARC still passes on aligned SPF even though DKIM failed.
    assert_eq!(bad["authResults"]["dmarc"], "pass");
    d.stop().await;
}

#[tokio::test]
async fn spf_fail_is_reported_not_rejected() {
    let mut zone = HashMap::new();
    zone.insert(
        "example.org".to_string(),
        "v=spf1 ip4:192.0.2.1 -all".to_string(),
    );
    let dns = dns::serve(zone).await;
    let rx = Receiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url("")).dns(dns)).await;
    let (mut raw, _) = Raw::connect(d.smtp).await;
    raw.cmd("EHLO mail.example.org").await;
    raw.cmd("MAIL FROM:<alice@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    assert!(raw
        .cmd("From: alice@example.org\r\nSubject: spoof\r\n\r\nx\r\n.")
        .await
        .starts_with("250"));
    let ev = rx.wait_for_count(1, Duration::from_secs(30)).await[0].json();
    assert_eq!(ev["authResults"]["spf"], "fail");
    assert_eq!(ev["authResults"]["dkim"], "none");
    d.stop().await;
}
