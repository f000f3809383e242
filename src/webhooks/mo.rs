//! MO event rendering (SPEC 6.2): a stored message becomes the JSON POSTed to the asset's
//! incoming webhook. Pure: bytes in, JSON out. Malformed MIME never fails: mail-parser
//! decodes what it can (any charset to UTF-8, invalid bytes to U+FFFD), and a message it
//! cannot parse at all still yields an event with the raw text as its body.

use super::repair;
use crate::config::MoAttachments;
use crate::store::spool::AuthSummary;
use base64::engine::general_purpose::STANDARD as B64;
use mail_parser::MessageParser;
use serde::Serialize;
use std::borrow::Cow;

/// What the renderer needs besides the message bytes.
pub struct MoContext<'a> {
    pub tid: &'a str,
    pub received_ms: u64,
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    pub auth: &'a AuthSummary,
    pub attachments: MoAttachments,
    /// Builds the signed link of attachment `n` (`None` = the raw message); url mode only.
    pub link: &'a dyn Fn(Option<usize>) -> String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MoEvent<'a> {
    channel: &'static str,
    event: &'static str,
    tid: &'a str,
    message_id: String,
    ts: String,
    from: String,
    to: &'a [String],
    subject: String,
    text_message: Cow<'a, str>,
    html_message: Cow<'a, str>,
    return_path: String,
    attachments: Vec<MoAttachment<'a>>,
    auth_results: AuthResults<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_url: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MoAttachment<'a> {
    name: String,
    content_type: String,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_transfer_encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// Attachment bytes serialised as base64 straight into the JSON writer: a 30 MB
/// attachment never becomes a 40 MB string in memory.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&base64::display::Base64Display::new(self.0, &B64))
    }
}

#[derive(Serialize)]
struct AuthResults<'a> {
    spf: &'a str,
    dkim: &'a str,
    dmarc: &'a str,
    arc: &'a str,
}

/// One attachment as stored in a message: its name, content type and decoded bytes.
pub struct Attachment<'a> {
    pub name: String,
    pub content_type: String,
    pub bytes: &'a [u8],
}

/// Every attachment of a parsed (repaired) message, in order; nested messages and inline
/// images included. Numbering here is what attachment links refer to.
pub fn attachments<'a>(message: &'a mail_parser::Message<'a>) -> Vec<Attachment<'a>> {
    message
        .attachments()
        .enumerate()
        .map(|(i, part)| {
            let (content_type, name) = repair::reported(part);
            let is_message = part.is_message()
                || matches!(
                    content_type.as_deref(),
                    Some("message/rfc822" | "message/global")
                );
            let content_type = content_type.unwrap_or_else(|| {
                if is_message {
                    "message/rfc822".into()
                } else {
                    "application/octet-stream".into()
                }
            });
            // An empty name (`filename=""`) names nothing.
            let name = name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| {
                if is_message {
                    format!("message-{}.eml", i + 1)
                } else {
                    format!("attachment-{}", i + 1)
                }
            });
            Attachment {
                name,
                content_type,
                bytes: part.contents(),
            }
        })
        .collect()
}

/// Parses a message (normally the output of [`repaired`]). mail-parser 0.11 has a
/// `debug_assert!` that hostile MIME can reach (found by `fuzz/mime_to_mo`); in debug
/// builds that panic becomes "unparseable" here, so the event still goes out with the raw
/// text, as in release builds.
pub fn parse(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        MessageParser::default().parse(raw)
    }))
    .ok()
    .flatten()
}

/// The bytes to parse: the copy [`repair::repair`] builds (linear to build and to parse,
/// whatever the structure; SPEC 6.2 semantics), or `raw` itself when it has no header at
/// all (mail-parser then finds no structure to search).
pub fn repaired(raw: &[u8]) -> Cow<'_, [u8]> {
    match repair::repair(raw) {
        Some(r) => Cow::Owned(r.bytes),
        None => Cow::Borrowed(raw),
    }
}

/// What the admin page keeps of a rendered mail (`store::recent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoSummary {
    pub from: String,
    pub subject: String,
    /// The start of the text body (at most 2,000 characters).
    pub text: String,
}

/// Renders the MO event for `raw` into `out`; a summary of it for the admin page.
pub fn render(
    raw: &[u8],
    ctx: &MoContext<'_>,
    out: &mut impl std::io::Write,
) -> serde_json::Result<MoSummary> {
    let bytes = repair::repair(raw);
    let parsed = bytes.as_ref().and_then(|r| parse(&r.bytes));
    let mut event = MoEvent {
        channel: "email",
        event: "MO",
        tid: ctx.tid,
        message_id: String::new(),
        ts: crate::model::time::timestamp(ctx.received_ms),
        from: ctx.mail_from.to_string(),
        to: ctx.recipients,
        subject: String::new(),
        text_message: Cow::Borrowed(""),
        html_message: Cow::Borrowed(""),
        return_path: ctx.mail_from.to_string(),
        attachments: Vec::new(),
        auth_results: AuthResults {
            spf: &ctx.auth.spf,
            dkim: &ctx.auth.dkim,
            dmarc: &ctx.auth.dmarc,
            arc: &ctx.auth.arc,
        },
        raw_url: (ctx.attachments == MoAttachments::Url).then(|| (ctx.link)(None)),
    };
    match &parsed {
        Some(m) => {
            event.message_id = m.message_id().unwrap_or_default().to_string();
            if let Some(from) = m.from().and_then(|a| a.first()).and_then(|a| a.address()) {
                event.from = from.to_string();
            }
            if let Some(reply) = m
                .reply_to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
            {
                event.return_path = reply.to_string();
            }
            event.subject = m.subject().unwrap_or_default().to_string();
            event.text_message = m.body_text(0).unwrap_or_default();
            // Only a real text/html part: mail-parser would otherwise render the text as HTML.
            event.html_message = m
                .html_bodies()
                .find(|p| p.is_text_html())
                .and_then(|p| p.text_contents())
                .map(Cow::Borrowed)
                .unwrap_or_default();
            event.attachments = attachments(m)
                .into_iter()
                .enumerate()
                .map(|(n, a)| {
                    let url_mode = ctx.attachments == MoAttachments::Url;
                    MoAttachment {
                        size: a.bytes.len(),
                        content_transfer_encoding: (!url_mode).then_some("base64"),
                        content: (!url_mode).then_some(Base64(a.bytes)),
                        url: url_mode.then(|| (ctx.link)(Some(n))),
                        name: a.name,
                        content_type: a.content_type,
                    }
                })
                .collect();
        }
        None => {
            // Not even headers parse: hand over the bytes as text rather than drop them.
            event.text_message = String::from_utf8_lossy(raw);
        }
    }
    let summary = MoSummary {
        from: event.from.clone(),
        subject: event.subject.clone(),
        text: event.text_message.chars().take(2000).collect(),
    };
    serde_json::to_writer(out, &event)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MO event of `raw` as JSON, rendered with inline attachments.
    pub(super) fn render_inline(raw: &[u8]) -> serde_json::Value {
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
        render(raw, &ctx, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn latin1_body_becomes_utf8() {
        let raw = b"From: A <a@example.org>\r\nSubject: caf\xe9?\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nD\xe9j\xe0 vu\r\n";
        let v = render_inline(raw);
        assert_eq!(v["textMessage"], "D\u{e9}j\u{e0} vu\r\n");
        assert_eq!(v["from"], "a@example.org");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn mail_parser_debug_assertion_input_still_renders() {
        // Minimised by fuzz/mime_to_mo: reaches a debug_assert! in mail-parser 0.11.
        let raw = b"Fr\nContent-Type: multipart/;boundary=o\n\n--o\r\nContent-Type:message/rfc822\r\n\nContent-Type: message/rfc822\n\n";
        let v = render_inline(raw);
        assert_eq!(v["event"], "MO");
    }

    #[test]
    fn unparseable_input_still_renders() {
        let v = render_inline(b"\xff\xfe");
        assert_eq!(v["event"], "MO");
    }

    #[test]
    fn missing_closing_boundary_keeps_the_part() {
        let raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nhello\r\n--X\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n";
        let v = render_inline(raw);
        assert_eq!(v["textMessage"].as_str().unwrap().trim(), "hello");
        assert_eq!(v["attachments"][0]["name"], "a.pdf");
        assert_eq!(v["attachments"][0]["content"], "JVBERg==");
    }
}

#[cfg(test)]
mod repair_tests {
    //! SPEC 6.2 semantics of the MIME repair, seen through the rendered event.
    use super::tests::render_inline;
    use super::*;

    fn content(v: &serde_json::Value, n: usize) -> Vec<u8> {
        use base64::Engine;
        B64.decode(v["attachments"][n]["content"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn unclosed_nested_alternative_keeps_text_html_and_runs_to_the_end() {
        let raw = b"From: A <a@example.org>\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n\r\npreamble\r\n--out\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain words\r\n--alt\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--out\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--out--\r\n";
        let v = render_inline(raw);
        assert_eq!(v["subject"], "hi");
        assert_eq!(v["from"], "a@example.org");
        assert_eq!(v["textMessage"], "plain words");
        // `alt` is never closed: its last part ends at the end of the message (SPEC 6.2),
        // so the outer boundary lines and the PDF are part of the HTML.
        let html = v["htmlMessage"].as_str().unwrap();
        assert!(html.starts_with("<p>html words</p>\r\n--out\r\n"), "{html}");
        assert!(html.ends_with("JVBERg==\r\n--out--"), "{html}");
        assert_eq!(v["attachments"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn closed_structure_is_rendered_as_sent() {
        let raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=out\r\n\r\n--out\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\nplain\r\n--alt\r\nContent-Type: text/html\r\n\r\n<b>x</b>\r\n--alt--\r\nepilogue\r\n--out\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"p.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw==\r\n--out--\r\n";
        let v = render_inline(raw);
        assert_eq!(v["textMessage"], "plain");
        assert_eq!(v["htmlMessage"], "<b>x</b>");
        assert_eq!(v["attachments"][0]["name"], "p.png");
        assert_eq!(v["attachments"][0]["contentType"], "image/png");
        assert_eq!(content(&v, 0), b"\x89PNG");
    }

    #[test]
    fn nested_message_is_an_attachment_byte_for_byte() {
        let inner = b"From: b@example.org\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--in--";
        let mut raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=out\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\nouter text\r\n--out\r\nContent-Type: message/rfc822\r\n\r\n".to_vec();
        raw.extend_from_slice(inner);
        raw.extend_from_slice(b"\r\n--out--\r\n");
        let v = render_inline(&raw);
        assert_eq!(v["textMessage"], "outer text");
        assert_eq!(v["attachments"][0]["contentType"], "message/rfc822");
        assert_eq!(v["attachments"][0]["name"], "message-1.eml");
        assert_eq!(content(&v, 0), inner);
        // The attachment route numbers attachments the same way.
        let bytes = repaired(&raw);
        let parsed = parse(&bytes).unwrap();
        let atts = attachments(&parsed);
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0].bytes, inner);
    }

    #[test]
    fn multipart_whose_boundary_never_opens_is_one_opaque_part() {
        let raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=out\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\nhello\r\n--out\r\nContent-Type: multipart/related; boundary=never; name=\"r.bin\"\r\n\r\nbytes \xff here\r\n--out--\r\n";
        let v = render_inline(raw);
        assert_eq!(v["textMessage"], "hello");
        assert_eq!(v["attachments"][0]["contentType"], "multipart/related");
        assert_eq!(v["attachments"][0]["name"], "r.bin");
        assert_eq!(content(&v, 0), b"bytes \xff here");
    }

    #[test]
    fn digest_parts_without_a_type_are_messages() {
        let raw = b"From: a@example.org\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nFrom: x@example.org\r\nSubject: one\r\n\r\nbody one\r\n--d--\r\n";
        let v = render_inline(raw);
        assert_eq!(v["attachments"][0]["contentType"], "message/rfc822");
        assert_eq!(
            content(&v, 0),
            b"From: x@example.org\r\nSubject: one\r\n\r\nbody one"
        );
    }

    #[test]
    fn nesting_deeper_than_64_is_not_descended() {
        let mut raw =
            b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n".to_vec();
        for i in 0..80 {
            raw.extend_from_slice(
                format!(
                    "--b{i}\r\nContent-Type: text/plain\r\n\r\nlevel {i}\r\n--b{i}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n",
                    i + 1
                )
                .as_bytes(),
            );
        }
        let fixed = repair::repair(&raw).unwrap();
        let parsed = parse(&fixed.bytes).unwrap();
        assert_eq!(
            parsed.parts.len(),
            fixed.parts,
            "mail-parser saw another structure"
        );
        let v = render_inline(&raw);
        assert_eq!(v["textMessage"], "level 0");
        // Levels 1..=64 are descended; the 65th multipart is one part holding the rest.
        let atts = v["attachments"].as_array().unwrap();
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0]["contentType"], "multipart/mixed");
        let rest = content(&v, 0);
        assert!(rest.starts_with(b"--b64\r\nContent-Type: text/plain\r\n\r\nlevel 64\r\n"));
        assert!(rest.ends_with(b"boundary=b80\r\n"));
    }

    #[test]
    fn headers_survive_the_copy() {
        let raw = b"From: \"A, B\" <a@example.org>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n folded\r\nReply-To: r@example.org\r\nX-Junk line without colon\r\nMessage-ID: <m1@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n";
        let v = render_inline(raw);
        assert_eq!(v["from"], "a@example.org");
        assert_eq!(v["subject"], "caf\u{e9} folded");
        assert_eq!(v["returnPath"], "r@example.org");
        assert_eq!(v["messageId"], "m1@example.org");
        assert_eq!(v["textMessage"], "body\r\n");
    }

    #[test]
    fn empty_file_name_falls_back_to_a_numbered_one() {
        // Found by fuzz/mime_repair: `filename*=UTF-8''` named the attachment "".
        let raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename*=UTF-8''\r\n\r\nx\r\n--s--\r\n";
        let v = render_inline(raw);
        assert_eq!(v["attachments"][0]["name"], "attachment-1");
    }

    #[test]
    fn forged_marker_headers_are_dropped() {
        let raw = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=out\r\n\r\n--out\r\nContent-Type: message/rfc822\r\nX-Postern-Type: text/evil\r\nX-Postern-Name: 41\r\n\r\nSubject: x\r\n\r\ny\r\n--out--\r\n";
        let v = render_inline(raw);
        assert_eq!(v["attachments"][0]["contentType"], "message/rfc822");
        assert_eq!(v["attachments"][0]["name"], "message-1.eml");
    }
}
