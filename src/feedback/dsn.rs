//! Delivery status notifications (RFC 3464) that come back to postern's VERP return path.
//! Pure: the raw message in, one report per failed or delayed recipient out, each with the
//! SPEC's bounce category and `status|action|diagnostic`. The per-recipient fields of the
//! `message/delivery-status` part are header blocks, read with mail-parser.

use mail_parser::{MessageParser, MimeHeaders};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceReport {
    pub recipient: String,
    pub action: String,
    pub status: String,
    pub diagnostic: String,
    /// One of the SPEC 5 bounce Descriptions.
    pub category: &'static str,
    pub permanent: bool,
}

impl BounceReport {
    pub fn additional_info(&self) -> String {
        format!("{}|{}|{}", self.status, self.action, self.diagnostic)
    }
}

/// The SPEC's bounce Description for an enhanced status code (and the diagnostic text).
pub fn classify(status: &str, diagnostic: &str) -> (&'static str, bool) {
    let permanent = status.starts_with('5');
    let mut parts = status.split('.');
    let (_, subject, detail) = (
        parts.next(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let diag = diagnostic.to_ascii_lowercase();
    let category = match (subject, detail) {
        ("1", _) if permanent => "Permanent_NoEmail",
        ("2", "2") => "Transient_MailboxFull",
        ("3", "4") | ("2", "3") => "Transient_MessageTooLarge",
        ("6", _) | ("7", _) if diag.contains("attachment") => "Transient_AttachmentRejected",
        ("6", _) => "Transient_ContentRejected",
        _ if diag.contains("suppress") => "Permanent_Suppressed",
        _ if permanent => "Permanent_General",
        _ => "Transient_General",
    };
    // Only address-level failures and suppressions are "hard": a full mailbox or refused
    // content is worth trying again later, whatever its first digit.
    (category, category.starts_with("Permanent"))
}

fn field<'a>(block: &'a mail_parser::Message<'a>, name: &str) -> Option<String> {
    block
        .header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Strips the `rfc822;` address type of Final-Recipient and friends.
fn address(v: &str) -> String {
    let v = v.split_once(';').map(|(_, a)| a).unwrap_or(v);
    v.trim().trim_matches(['<', '>']).to_ascii_lowercase()
}

/// The failed (or delayed) recipients a DSN reports; empty when it is not a DSN.
pub fn parse(raw: &[u8]) -> Vec<BounceReport> {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    let Some(part) = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("message")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"))
        })
    }) else {
        return Vec::new();
    };
    let body = &raw[part.offset_body as usize..(part.offset_end as usize).min(raw.len())];
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut out = Vec::new();
    // Blocks are separated by blank lines; the first is per-message, the rest per-recipient.
    for block_text in text.split("\n\n").skip(1) {
        let block_text = format!("{}\n\n", block_text.trim_matches('\n'));
        let Some(block) = MessageParser::default().parse_headers(block_text.as_bytes()) else {
            continue;
        };
        let Some(recipient) = field(&block, "Final-Recipient")
            .or_else(|| field(&block, "Original-Recipient"))
            .map(|v| address(&v))
        else {
            continue;
        };
        let action = field(&block, "Action")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !matches!(action.as_str(), "failed" | "delayed") {
            continue;
        }
        let status = field(&block, "Status").unwrap_or_else(|| {
            if action == "failed" {
                "5.0.0".into()
            } else {
                "4.0.0".into()
            }
        });
        let diagnostic = field(&block, "Diagnostic-Code").unwrap_or_default();
        let (category, permanent) = classify(&status, &diagnostic);
        out.push(BounceReport {
            recipient,
            action,
            status,
            diagnostic,
            category,
            permanent,
        });
    }
    out
}

#[cfg(test)]
mod tests;
