//! MO rendering under hostile MIME (SPEC 6.2, 6.3 "MIME"): nested multiparts whose
//! boundaries are never closed render in time linear in the message size, and keep the
//! SPEC 6.2 semantics (a missing closing boundary ends the part at the end of the message).

use postern::config::MoAttachments;
use postern::inbound::mo::{render, MoContext};
use postern::store::spool::AuthSummary;
use std::time::Instant;

/// Nested multiparts, none closed: every level has a text part, then opens the next level.
fn nested_unclosed(target: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nTo: support@example.test\r\nSubject: nest\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < target {
        m.extend_from_slice(
            format!(
                "--b{i}\r\nContent-Type: text/plain\r\n\r\nlevel {i} text\r\n--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{}\"\r\n\r\n",
                i + 1
            )
            .as_bytes(),
        );
        i += 1;
    }
    m
}

fn render_json(raw: &[u8]) -> serde_json::Value {
    let auth = AuthSummary::none();
    let rcpts = vec!["support@example.test".to_string()];
    let link = |_: Option<usize>| String::new();
    let ctx = MoContext {
        tid: "t-1",
        received_ms: 0,
        mail_from: "env@example.org",
        recipients: &rcpts,
        auth: &auth,
        attachments: MoAttachments::Inline,
        link: &link,
    };
    let mut out = Vec::new();
    render(raw, &ctx, &mut out).expect("render");
    serde_json::from_slice(&out).expect("json")
}

/// `PROFILE_MB=2 cargo test --test mime_render profile -- --ignored --nocapture`, under
/// `perf record -g`, to see where rendering spends its time.
#[test]
#[ignore]
fn profile() {
    let mb: f64 = std::env::var("PROFILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let raw = nested_unclosed((mb * 1024.0 * 1024.0) as usize);
    let t = Instant::now();
    let v = render_json(&raw);
    eprintln!(
        "{} bytes rendered in {:?} ({} attachments)",
        raw.len(),
        t.elapsed(),
        v["attachments"].as_array().map_or(0, |a| a.len())
    );
}
