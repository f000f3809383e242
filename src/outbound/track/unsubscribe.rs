//! Unsubscribe (SPEC 7.2, 8, 6.3; RFC 8058). A per-recipient token `asset|tid|recipient|sender`
//! signed as kind `unsub` becomes `<public_url>/u/<token>`: `$(unsubscribe)` in the body,
//! and the `List-Unsubscribe` header with `List-Unsubscribe-Post: List-Unsubscribe=One-Click`;
//! the header's mailto carries the same token as the last word of its subject, so mail to
//! the unsubscribe address speaks for the token's recipient, not for an unauthenticated
//! From. A message that went to several recipients (multipleToRecipients) cannot say
//! which one clicked: its token names no recipient, it gets no one-click header and no
//! mailto token, and its page asks for the address (one of that message's recipients).
//! `GET /u/` shows a page that asks for confirmation (link scanners fetch GETs, so a GET
//! never unsubscribes); `POST /u/` with `List-Unsubscribe=One-Click` or the page's button
//! unsubscribes; the page then offers to resubscribe. The changes themselves, and their
//! Unsubscribe / Subscribe events, are `feedback::unsubscribe`'s.

use crate::config::Config;
use crate::model::links::Link;
pub use crate::model::links::Unsubscribe;
use crate::model::tokens::{Signer, TokenKind};
use crate::store::messages::MessageRecord;

/// The token of an unsubscribe link.
pub fn token(signer: &Signer, s: &Unsubscribe) -> String {
    Link::Unsubscribe(s.clone()).token(signer)
}

/// Who an unsubscribe token speaks for, when it verifies.
pub fn verify(signer: &Signer, token: &str) -> Option<Unsubscribe> {
    match Link::verify(signer, TokenKind::Unsubscribe, token)? {
        Link::Unsubscribe(s) => Some(s),
        _ => None,
    }
}

/// The `Unsubscribe` a message's unsubscribe links speak for: its only recipient, or nobody
/// (empty recipient) when it went to several, since then any of them could click.
pub fn subject_of(record: &MessageRecord) -> Unsubscribe {
    Unsubscribe {
        asset_id: record.asset_id.clone(),
        tid: record.tid.clone(),
        recipient: match record.recipients.as_slice() {
            [only] => only.address.clone(),
            _ => String::new(),
        },
        sender: record.from.clone(),
    }
}

/// An unsubscribe token found in mail to the unsubscribe address: in the subject (any
/// whitespace-separated word) or in an address tag (`unsub+<token>@...`).
pub fn token_in_mail(signer: &Signer, asset_id: &str, words: &[&str]) -> Option<Unsubscribe> {
    words
        .iter()
        .flat_map(|w| w.split_whitespace())
        .map(|w| w.trim_matches(|c: char| "<>[]()\"'.,;:".contains(c)))
        .filter_map(|w| verify(signer, w))
        .find(|s| s.asset_id == asset_id && !s.recipient.is_empty())
}

/// The `List-Unsubscribe` value for one message, if it gets one, and whether the RFC 8058
/// one-click header goes with it (never for a message to several recipients). `token`
/// goes into the mailto subject; `None` for a message to several recipients.
pub fn headers(
    config: &Config,
    record: &MessageRecord,
    url: &str,
    token: Option<&str>,
) -> Option<(String, bool)> {
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
        let subject = match token {
            Some(t) => format!("{subject} {t}"),
            None => subject,
        };
        let encoded: String = url::form_urlencoded::byte_serialize(subject.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        value.push_str(&format!(", <mailto:{m}?subject={encoded}>"));
    }
    Some((value, record.recipients.len() <= 1))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for a message to several recipients: it asks which address to unsubscribe.
/// `error` explains why a previous answer was refused.
pub fn ask_page(asset_name: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p role=\"alert\"><strong>{}</strong></p>", escape(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Unsubscribe</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
button,input{{font:inherit;padding:.5rem}}</style></head><body><main><h1>Unsubscribe</h1>{error}\
<p>This email went to several people. Which address should stop receiving emails from {}?</p>\
<form method=\"post\"><input type=\"hidden\" name=\"action\" value=\"unsubscribe\">\
<label>Your address <input type=\"email\" name=\"address\" required autocomplete=\"email\"></label> \
<button type=\"submit\">Unsubscribe</button></form></main></body></html>\n",
        escape(asset_name)
    )
}

/// The small, plain page: `state` is "confirm", "unsubscribed" or "resubscribed". With
/// `address_field`, the form repeats the address (pages of several-recipient messages).
pub fn page(asset_name: &str, recipient: &str, state: &str) -> String {
    page_for(asset_name, recipient, state, false)
}

pub fn page_for(asset_name: &str, recipient: &str, state: &str, address_field: bool) -> String {
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
    let address = if address_field {
        format!(
            "<input type=\"hidden\" name=\"address\" value=\"{}\">",
            escape(recipient)
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
button{{font:inherit;padding:.5rem 1rem}}</style></head><body><main><h1>{title}</h1><p>{text}</p>\
<form method=\"post\"><input type=\"hidden\" name=\"action\" value=\"{action}\">{address}<button type=\"submit\">{button}</button></form>\
</main></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_kinds() {
        let signer = Signer::new([9; 32]);
        let s = Unsubscribe {
            asset_id: "a_1".into(),
            tid: "t-1".into(),
            recipient: "ann@example.org".into(),
            sender: "news@example.test".into(),
        };
        let t = token(&signer, &s);
        assert_eq!(verify(&signer, &t), Some(s));
        assert_eq!(
            verify(
                &signer,
                &signer.sign(TokenKind::InboundAttachment, "a_1|t-1|x|y")
            ),
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
