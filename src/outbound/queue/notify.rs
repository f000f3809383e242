//! Delivery notifications (SPEC 5): the exact JSON, the receipt filter, the target URL
//! (request notifyUrl, else the service's, else the asset's delivery_webhook), and the
//! history entry that `GET /v2/messages/{tid}` shows. Pure apart from the clock passed in.

use crate::config::Config;
use crate::model::time::timestamp;
use crate::model::types::DeliveryCode;
use crate::store::messages::{HistoryEntry, MessageRecord};
use crate::store::outbox::EventKind;
use crate::store::{OutboxEntry, Payload};

/// The notification body.
pub fn body(
    record: &MessageRecord,
    destination: &str,
    code: DeliveryCode,
    description: &str,
    additional: &str,
    at_ms: u64,
) -> String {
    serde_json::json!({
        "deliveryInfoNotification": {
            "deliveryInfo": {
                "deliveryChannel": "email",
                "destinationType": "email",
                "destination": destination,
                "deliveryStatus": code.status(),
                "code": code.code(),
                "Description": description,
                "timeStamp": timestamp(at_ms),
                "additionalInfo": additional,
            },
            "correlationid": record.correlation_id.clone().unwrap_or_default(),
            "callbackData": record.callback_data,
            "transid": record.tid,
            "subtid": "",
        }
    })
    .to_string()
}

/// Records `code` for `destination` in the history and returns the webhook event, unless
/// the request's receipts filter it out or no URL is configured.
pub fn notify(
    config: &Config,
    record: &mut MessageRecord,
    destination: &str,
    code: DeliveryCode,
    description: &str,
    additional: &str,
    at_ms: u64,
) -> Option<OutboxEntry> {
    record.history.push(HistoryEntry {
        at_ms,
        destination: destination.to_string(),
        code: code.code().to_string(),
        status: code.status().to_string(),
        description: description.to_string(),
        additional_info: additional.to_string(),
    });
    if !record.receipts.contains(code.receipt()) {
        return None;
    }
    let (url, guarded) = match &record.notify_url {
        Some(u) => (u.clone(), true),
        None => {
            let service = config
                .services
                .iter()
                .find(|s| s.id == record.service_id)
                .and_then(|s| s.notify_url.clone());
            let asset = config
                .asset(&record.asset_id)
                .and_then(|a| a.delivery_webhook.clone());
            (service.or(asset)?, false)
        }
    };
    let mut entry = OutboxEntry::new(
        EventKind::Status,
        url,
        record.asset_id.clone(),
        Payload::Json(body(
            record,
            destination,
            code,
            description,
            additional,
            at_ms,
        )),
    );
    entry.guarded = guarded;
    Some(entry)
}

/// `Permanent_NoEmail` for unknown-mailbox replies (5.1.x), `Permanent_General` otherwise.
pub fn bounce_description(reply: &str) -> &'static str {
    if enhanced_status(reply).is_some_and(|s| s.starts_with("5.1.")) {
        "Permanent_NoEmail"
    } else {
        "Permanent_General"
    }
}

/// The enhanced status code (`5.1.1`) in an SMTP reply, if any.
pub fn enhanced_status(reply: &str) -> Option<&str> {
    reply.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            && matches!(parts[0], "2" | "4" | "5")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_replies_are_classified() {
        assert_eq!(
            bounce_description("550 5.1.1 no such user"),
            "Permanent_NoEmail"
        );
        assert_eq!(bounce_description("550 5.7.1 policy"), "Permanent_General");
        assert_eq!(bounce_description("550 go away"), "Permanent_General");
        assert_eq!(enhanced_status("550 5.1.1 <x>: unknown"), Some("5.1.1"));
    }
}
