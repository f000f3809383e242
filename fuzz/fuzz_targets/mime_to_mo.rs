//! Arbitrary bytes as a received message -> the MO event JSON (`inbound::mo::render`).
//!
//! Input: byte 0 picks the attachment mode (bit 0: url links instead of inline base64)
//! and whether 8 bytes of receive time follow (bit 1); the rest is the raw message.
//! Checks: render never panics nor fails, its output is JSON with the fixed fields the
//! SPEC promises, and attachments are links or base64 of exactly `size` bytes.
//! (The boundary repair has its own target, `mime_repair`.)

#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use postern::config::MoAttachments;
use postern::webhooks::mo::{render, MoContext};
use postern::store::spool::AuthSummary;

fn link(n: Option<usize>) -> String {
    match n {
        None => "https://mx.example.test/in/raw".to_string(),
        Some(n) => format!("https://mx.example.test/in/att/{n}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut raw)) = data.split_first() else {
        return;
    };
    let attachments = if mode & 1 == 1 {
        MoAttachments::Url
    } else {
        MoAttachments::Inline
    };
    let mut received_ms = 1_700_000_000_000u64;
    if mode & 2 == 2 && raw.len() >= 8 {
        received_ms = u64::from_le_bytes(raw[..8].try_into().unwrap());
        raw = &raw[8..];
    }

    let auth = AuthSummary {
        spf: "pass".into(),
        dkim: "none".into(),
        dmarc: "fail".into(),
        arc: "none".into(),
    };
    let rcpts = vec!["support@example.test".to_string(), "b@example.test".to_string()];
    let ctx = MoContext {
        tid: "tid-1",
        received_ms,
        mail_from: "env@example.org",
        recipients: &rcpts,
        auth: &auth,
        attachments,
        link: &link,
    };
    let mut out = Vec::new();
    render(raw, &ctx, &mut out).expect("render into a Vec never fails");

    let v: serde_json::Value = serde_json::from_slice(&out).expect("render wrote invalid JSON");
    assert_eq!(v["event"], "MO");
    assert_eq!(v["channel"], "email");
    assert_eq!(v["tid"], "tid-1");
    assert_eq!(v["to"], serde_json::json!(rcpts));
    assert_eq!(v["authResults"]["spf"], "pass");
    assert_eq!(v["authResults"]["dmarc"], "fail");
    for key in [
        "messageId",
        "ts",
        "from",
        "subject",
        "textMessage",
        "htmlMessage",
        "returnPath",
    ] {
        assert!(v[key].is_string(), "{key} is not a string: {}", v[key]);
    }
    let ts = v["ts"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "odd ts {ts:?}");
    let atts = v["attachments"].as_array().expect("attachments is an array");
    match attachments {
        MoAttachments::Url => {
            assert_eq!(v["rawUrl"], link(None));
            for (n, a) in atts.iter().enumerate() {
                assert_eq!(a["url"], link(Some(n)));
                assert!(a.get("content").is_none(), "url mode carries content");
                assert!(a["size"].is_u64());
            }
        }
        MoAttachments::Inline => {
            assert!(v.get("rawUrl").is_none(), "inline mode carries rawUrl");
            for a in atts {
                assert!(a.get("url").is_none(), "inline mode carries a url");
                assert_eq!(a["contentTransferEncoding"], "base64");
                let content = a["content"].as_str().expect("inline content is a string");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .expect("inline content is base64");
                assert_eq!(
                    Some(bytes.len() as u64),
                    a["size"].as_u64(),
                    "size differs from the content"
                );
            }
        }
    }
    for a in atts {
        assert!(a["name"].is_string() && a["contentType"].is_string());
        let ct = a["contentType"].as_str().unwrap();
        assert_eq!(ct, ct.to_ascii_lowercase(), "content type not lower-cased");
    }
});
