//! Unsubscribe (SPEC 7.2, 8; RFC 8058). A per-recipient token `asset|tid|recipient|sender`
//! signed as kind `unsub` becomes `<public_url>/u/<token>`: `$(unsubscribe)` in the body,
//! and the `List-Unsubscribe` header with `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
//! `GET /u/` shows a page that asks for confirmation (link scanners fetch GETs, so a GET
//! never unsubscribes); `POST /u/` with `List-Unsubscribe=One-Click` or the page's button
//! unsubscribes; the page then offers to resubscribe. Each change emits the reference's
//! Unsubscribe / Subscribe event to the asset's incoming webhook.

use crate::config::Config;
use crate::store::messages::MessageRecord;
use crate::store::outbox::EventKind;
use crate::store::suppression::{Reason, Suppression};
use crate::store::{now_ms, OutboxEntry, Payload};
use crate::tokens::Signer;

/// Who an unsubscribe token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub asset_id: String,
    pub tid: String,
    pub recipient: String,
    pub sender: String,
}

pub fn token(signer: &Signer, s: &Subject) -> String {
    signer.sign(
        "unsub",
        &format!("{}|{}|{}|{}", s.asset_id, s.tid, s.recipient, s.sender),
    )
}

pub fn verify(signer: &Signer, token: &str) -> Option<Subject> {
    let payload = signer.verify("unsub", token)?;
    let mut f = payload.splitn(4, '|');
    Some(Subject {
        asset_id: f.next()?.to_string(),
        tid: f.next()?.to_string(),
        recipient: f.next()?.to_string(),
        sender: f.next()?.to_string(),
    })
}

/// The headers to add to one message, if any: (`List-Unsubscribe`, one-click header wanted).
pub fn headers(config: &Config, record: &MessageRecord, url: &str) -> Option<String> {
    let asset = config.asset(&record.asset_id)?;
    let settings = asset.unsubscribe.as_ref();
    let requested = record.list_unsubscribe_url.is_some() || record.unsubscribe_email.is_some();
    let by_asset = settings.is_some_and(|u| {
        u.enabled
            && u.headers
            && !u
                .skip_sender_ids
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&record.from))
    });
    if !requested && !by_asset {
        return None;
    }
    let https = record
        .list_unsubscribe_url
        .clone()
        .unwrap_or_else(|| url.to_string());
    let mailto = record
        .unsubscribe_email
        .clone()
        .or_else(|| settings.and_then(|u| u.mailto.clone()));
    let mut value = format!("<{https}>");
    if let Some(m) = mailto {
        let subject = record
            .unsubscribe_subject
            .clone()
            .unwrap_or_else(|| "unsubscribe".into());
        let encoded: String = url::form_urlencoded::byte_serialize(subject.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        value.push_str(&format!(", <mailto:{m}?subject={encoded}>"));
    }
    Some(value)
}

/// The Unsubscribe / Subscribe event for the asset's incoming webhook, in the reference's
/// format.
pub fn event(
    config: &Config,
    s: &Subject,
    subscribe: bool,
    correlation_id: Option<&str>,
) -> Option<OutboxEntry> {
    let url = config.asset(&s.asset_id)?.incoming_webhook.clone()?;
    let body = serde_json::json!({
        "channel": "Email",
        "from": s.recipient,
        "appId": s.asset_id,
        "event": if subscribe { "Subscribe" } else { "Unsubscribe" },
        "senderId": s.sender,
        "correlationId": correlation_id.unwrap_or(""),
        "ts": crate::events::timestamp(now_ms()),
        "tid": s.tid,
    });
    Some(OutboxEntry::new(
        EventKind::Unsubscribe,
        url,
        s.asset_id.clone(),
        Payload::Json(body.to_string()),
    ))
}

pub fn suppression(s: &Subject, source: &str) -> Suppression {
    Suppression {
        asset_id: s.asset_id.clone(),
        address: s.recipient.to_ascii_lowercase(),
        reason: Reason::Unsubscribed,
        since_ms: now_ms(),
        expires_ms: None,
        source: source.into(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The small, plain page: `state` is "confirm", "unsubscribed" or "resubscribed".
pub fn page(asset_name: &str, recipient: &str, state: &str) -> String {
    let (title, text, action, button) = match state {
        "unsubscribed" => (
            "You are unsubscribed",
            format!(
                "{} will no longer receive these emails from {}.",
                escape(recipient),
                escape(asset_name)
            ),
            "resubscribe",
            "Subscribe again",
        ),
        "resubscribed" => (
            "You are subscribed again",
            format!(
                "{} will receive these emails from {} again.",
                escape(recipient),
                escape(asset_name)
            ),
            "unsubscribe",
            "Unsubscribe",
        ),
        _ => (
            "Unsubscribe",
            format!(
                "Stop emails from {} to {}?",
                escape(asset_name),
                escape(recipient)
            ),
            "unsubscribe",
            "Unsubscribe",
        ),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
button{{font:inherit;padding:.5rem 1rem}}</style></head><body><main><h1>{title}</h1><p>{text}</p>\
<form method=\"post\"><input type=\"hidden\" name=\"action\" value=\"{action}\"><button type=\"submit\">{button}</button></form>\
</main></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_kinds() {
        let signer = Signer::new([9; 32]);
        let s = Subject {
            asset_id: "a_1".into(),
            tid: "t-1".into(),
            recipient: "ann@example.org".into(),
            sender: "news@example.test".into(),
        };
        let t = token(&signer, &s);
        assert_eq!(verify(&signer, &t), Some(s));
        assert_eq!(
            verify(&signer, &signer.sign("inbound", "a_1|t-1|x|y")),
            None
        );
        assert_eq!(verify(&signer, &t[..t.len() - 3]), None);
    }

    #[test]
    fn page_escapes_what_it_shows() {
        let p = page("<Shop>", "a\"b@example.org", "confirm");
        assert!(p.contains("&lt;Shop&gt;") && p.contains("a&quot;b@example.org"));
        assert!(p.contains("method=\"post\""));
    }
}
