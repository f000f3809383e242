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
    text_message: String,
    html_message: String,
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
            let name = name.unwrap_or_else(|| {
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

/// Renders the MO event for `raw` into `out`.
pub fn render(
    raw: &[u8],
    ctx: &MoContext<'_>,
    out: &mut impl std::io::Write,
) -> serde_json::Result<()> {
    let bytes = repair::repair(raw);
    let parsed = bytes.as_ref().and_then(|r| parse(&r.bytes));
    let mut event = MoEvent {
        channel: "email",
        event: "MO",
        tid: ctx.tid,
        message_id: String::new(),
        ts: crate::events::timestamp(ctx.received_ms),
        from: ctx.mail_from.to_string(),
        to: ctx.recipients,
        subject: String::new(),
        text_message: String::new(),
        html_message: String::new(),
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
            event.text_message = m.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
            // Only a real text/html part: mail-parser would otherwise render the text as HTML.
            event.html_message = m
                .html_bodies()
                .find(|p| p.is_text_html())
                .and_then(|p| p.text_contents())
                .unwrap_or_default()
                .to_string();
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
            event.text_message = String::from_utf8_lossy(raw).into_owned();
        }
    }
    serde_json::to_writer(out, &event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_inline(raw: &[u8]) -> serde_json::Value {
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
