//! SES events (the `Message` of an SNS notification) turned into feedback reports
//! (SPEC 5, 7.3). Both forms SES writes are read: configuration-set event publishing
//! (`eventType`) and identity notifications (`notificationType`). Pure: no I/O.
//!
//! | SES event | notification |
//! |---|---|
//! | Delivery | 7500 per `delivery.recipients`, additionalInfo the smtpResponse |
//! | Bounce | 7520 per bounced recipient, `<bounceType>_<subType>` in the SPEC's names; Permanent -> bounce list |
//! | Complaint | 7521 per complained recipient, the feedback type; complaint list |
//! | Open | 7502 "Read", additionalInfo the User-Agent |
//! | Click | 7528 `link|ip`, additionalInfo the User-Agent |
//! | Reject | 7592 with SES's reason |
//!
//! Send, DeliveryDelay, Rendering Failure and Subscription events carry nothing a
//! notification reports: they are accepted and ignored.

use crate::feedback::Report;
use crate::model::types::DeliveryCode;
use crate::store::suppression::Reason;
use serde_json::Value;

/// What one SES event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SesEvent {
    /// `eventType` or `notificationType`.
    pub kind: String,
    /// `mail.messageId`: SES's id of the message, as `SendEmail` returned it.
    pub message_id: String,
    pub reports: Vec<Report>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SesEventError {
    #[error("SES event is not JSON: {0}")]
    Json(String),
    #[error("SES event has no {0}")]
    Missing(&'static str),
}

/// The SPEC's bounce Description for an SES bounce type and subtype.
pub fn bounce_description(bounce_type: &str, sub_type: &str) -> &'static str {
    match (bounce_type, sub_type) {
        ("Permanent", "NoEmail") => "Permanent_NoEmail",
        ("Permanent", "Suppressed" | "OnAccountSuppressionList") => "Permanent_Suppressed",
        ("Permanent", _) => "Permanent_General",
        ("Transient", "MailboxFull") => "Transient_MailboxFull",
        ("Transient", "MessageTooLarge") => "Transient_MessageTooLarge",
        ("Transient", "ContentRejected") => "Transient_ContentRejected",
        ("Transient", "AttachmentRejected") => "Transient_AttachmentRejected",
        // Transient/General and Undetermined: SES could not tell more.
        _ => "Transient_General",
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Reads an SES event.
pub fn parse(message: &str) -> Result<SesEvent, SesEventError> {
    let v: Value = serde_json::from_str(message).map_err(|e| SesEventError::Json(e.to_string()))?;
    let kind = v
        .get("eventType")
        .or_else(|| v.get("notificationType"))
        .and_then(Value::as_str)
        .ok_or(SesEventError::Missing("eventType or notificationType"))?
        .to_string();
    let mail = v.get("mail").ok_or(SesEventError::Missing("mail"))?;
    let message_id = text(mail, "messageId");
    if message_id.is_empty() {
        return Err(SesEventError::Missing("mail.messageId"));
    }
    let first_destination = mail
        .get("destination")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(Value::as_str)
        .map(str::to_string);
    let list = |object: &str, key: &str| -> Vec<Value> {
        v.get(object)
            .and_then(|o| o.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let empty = Value::Null;
    let reports = match kind.as_str() {
        "Delivery" => {
            let smtp = text(v.get("delivery").unwrap_or(&empty), "smtpResponse");
            list("delivery", "recipients")
                .iter()
                .filter_map(Value::as_str)
                .map(|r| {
                    Report::new(Some(r.to_string()), DeliveryCode::Delivered, "Delivered")
                        .additional(smtp)
                })
                .collect()
        }
        "Bounce" => {
            let bounce = v.get("bounce").ok_or(SesEventError::Missing("bounce"))?;
            let bounce_type = text(bounce, "bounceType");
            let description = bounce_description(bounce_type, text(bounce, "bounceSubType"));
            let permanent = bounce_type == "Permanent";
            list("bounce", "bouncedRecipients")
                .iter()
                .filter_map(|r| {
                    let addr = r.get("emailAddress")?.as_str()?;
                    let status = match text(r, "status") {
                        "" if permanent => "5.0.0",
                        "" => "4.0.0",
                        s => s,
                    };
                    let action = match text(r, "action") {
                        "" => "failed",
                        a => a,
                    };
                    let report =
                        Report::new(Some(addr.to_string()), DeliveryCode::Bounce, description)
                            .additional(&format!(
                                "{status}|{action}|{}",
                                text(r, "diagnosticCode")
                            ));
                    Some(if permanent {
                        report.suppress(Reason::Bounced, format!("ses {description}"))
                    } else {
                        report
                    })
                })
                .collect()
        }
        "Complaint" => {
            let complaint = v.get("complaint").unwrap_or(&empty);
            let feedback = match text(complaint, "complaintFeedbackType") {
                "" => "other",
                f => f,
            };
            list("complaint", "complainedRecipients")
                .iter()
                .filter_map(|r| r.get("emailAddress")?.as_str())
                .map(|addr| {
                    Report::new(Some(addr.to_string()), DeliveryCode::Complaint, feedback)
                        .suppress(Reason::Complained, format!("ses complaint {feedback}"))
                })
                .collect()
        }
        // Opens and clicks name no recipient: they are the message's, bound to its first
        // destination (as postern's own tracking binds a multi-recipient email's links).
        "Open" => {
            let open = v.get("open").unwrap_or(&empty);
            vec![Report::new(first_destination, DeliveryCode::Read, "Read")
                .additional(text(open, "userAgent"))]
        }
        "Click" => {
            let click = v.get("click").unwrap_or(&empty);
            vec![Report::new(
                first_destination,
                DeliveryCode::Clicked,
                &format!("{}|{}", text(click, "link"), text(click, "ipAddress")),
            )
            .additional(text(click, "userAgent"))]
        }
        "Reject" => {
            let reason = text(v.get("reject").unwrap_or(&empty), "reason");
            mail.get("destination")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|r| {
                    Report::new(
                        Some(r.to_string()),
                        DeliveryCode::RouteRefused,
                        "Rejected by SES",
                    )
                    .additional(reason)
                })
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(SesEvent {
        kind,
        message_id: message_id.to_string(),
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &str = r#""mail":{"timestamp":"2026-11-23T10:00:00.000Z","source":"Sender <sender@example.test>","sourceArn":"arn:aws:ses:us-east-1:123456789012:identity/example.test","sendingAccountId":"123456789012","messageId":"0100018f-ses-id-000000","destination":["first@example.org","second@example.org"],"headersTruncated":false,"headers":[{"name":"From","value":"sender@example.test"}],"commonHeaders":{"from":["sender@example.test"],"to":["first@example.org"],"messageId":"0100018f-ses-id-000000","subject":"Hi"},"tags":{"ses:configuration-set":["postern"]}}"#;

    fn event(kind_key: &str, kind: &str, body: &str) -> SesEvent {
        parse(&format!(r#"{{"{kind_key}":"{kind}",{MAIL},{body}}}"#)).unwrap()
    }

    #[test]
    fn bounces_map_to_the_spec_names_and_permanent_ones_suppress() {
        for (t, s, want) in [
            ("Permanent", "General", "Permanent_General"),
            ("Permanent", "NoEmail", "Permanent_NoEmail"),
            ("Permanent", "Suppressed", "Permanent_Suppressed"),
            (
                "Permanent",
                "OnAccountSuppressionList",
                "Permanent_Suppressed",
            ),
            ("Transient", "General", "Transient_General"),
            ("Transient", "MailboxFull", "Transient_MailboxFull"),
            ("Transient", "MessageTooLarge", "Transient_MessageTooLarge"),
            ("Transient", "ContentRejected", "Transient_ContentRejected"),
            (
                "Transient",
                "AttachmentRejected",
                "Transient_AttachmentRejected",
            ),
            ("Undetermined", "Undetermined", "Transient_General"),
        ] {
            let e = event(
                "eventType",
                "Bounce",
                &format!(
                    r#""bounce":{{"bounceType":"{t}","bounceSubType":"{s}","bouncedRecipients":[{{"emailAddress":"first@example.org","action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 user unknown"}}],"timestamp":"2026-11-23T10:00:01.000Z","feedbackId":"f-1","reportingMTA":"dsn; a1.amazonses.com"}}"#
                ),
            );
            assert_eq!(e.message_id, "0100018f-ses-id-000000");
            assert_eq!(e.reports.len(), 1);
            let r = &e.reports[0];
            assert_eq!(r.description, want);
            assert_eq!(r.code, DeliveryCode::Bounce);
            assert_eq!(r.additional, "5.1.1|failed|smtp; 550 5.1.1 user unknown");
            assert_eq!(
                r.suppress.is_some(),
                t == "Permanent",
                "{t}/{s}: only permanent bounces suppress"
            );
        }
    }

    #[test]
    fn bounce_without_status_gets_a_class_default() {
        let e = event(
            "notificationType",
            "Bounce",
            r#""bounce":{"bounceType":"Transient","bounceSubType":"MailboxFull","bouncedRecipients":[{"emailAddress":"second@example.org"}]}"#,
        );
        assert_eq!(e.reports[0].additional, "4.0.0|failed|");
        assert_eq!(
            e.reports[0].recipient.as_deref(),
            Some("second@example.org")
        );
    }

    #[test]
    fn delivery_complaint_open_click_reject() {
        let d = event(
            "eventType",
            "Delivery",
            r#""delivery":{"timestamp":"2026-11-23T10:00:01.000Z","processingTimeMillis":546,"recipients":["first@example.org","second@example.org"],"smtpResponse":"250 2.6.0 Message received","reportingMTA":"a8-70.smtp-out.amazonses.com"}"#,
        );
        assert_eq!(d.reports.len(), 2);
        assert!(d.reports.iter().all(|r| r.code == DeliveryCode::Delivered
            && r.description == "Delivered"
            && r.additional == "250 2.6.0 Message received"
            && r.suppress.is_none()));

        let c = event(
            "eventType",
            "Complaint",
            r#""complaint":{"complainedRecipients":[{"emailAddress":"second@example.org"}],"timestamp":"2026-11-23T10:00:01.000Z","feedbackId":"f-2","userAgent":"Mozilla/5.0","complaintFeedbackType":"abuse","arrivalDate":"2026-11-23T10:00:00.000Z"}"#,
        );
        assert_eq!(c.reports[0].description, "abuse");
        assert_eq!(c.reports[0].code, DeliveryCode::Complaint);
        assert_eq!(
            c.reports[0].suppress.as_ref().map(|s| s.0),
            Some(Reason::Complained)
        );
        let c = event(
            "notificationType",
            "Complaint",
            r#""complaint":{"complainedRecipients":[{"emailAddress":"first@example.org"}]}"#,
        );
        assert_eq!(c.reports[0].description, "other");

        let o = event(
            "eventType",
            "Open",
            r#""open":{"ipAddress":"192.0.2.1","timestamp":"2026-11-23T10:00:02.000Z","userAgent":"Mozilla/5.0 (iPhone)"}"#,
        );
        assert_eq!(o.reports.len(), 1);
        assert_eq!(o.reports[0].recipient.as_deref(), Some("first@example.org"));
        assert_eq!(o.reports[0].code, DeliveryCode::Read);
        assert_eq!(o.reports[0].additional, "Mozilla/5.0 (iPhone)");

        let k = event(
            "eventType",
            "Click",
            r#""click":{"ipAddress":"192.0.2.1","link":"https://example.test/a?b=c","linkTags":{"x":["y"]},"timestamp":"2026-11-23T10:00:03.000Z","userAgent":"Mozilla/5.0"}"#,
        );
        assert_eq!(k.reports[0].code, DeliveryCode::Clicked);
        assert_eq!(
            k.reports[0].description,
            "https://example.test/a?b=c|192.0.2.1"
        );

        let r = event(
            "eventType",
            "Reject",
            r#""reject":{"reason":"Bad content"}"#,
        );
        assert_eq!(r.reports.len(), 2);
        assert_eq!(r.reports[0].code, DeliveryCode::RouteRefused);
        assert_eq!(r.reports[0].additional, "Bad content");

        let s = event("eventType", "Send", r#""send":{}"#);
        assert!(s.reports.is_empty());
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        assert!(matches!(parse("nope"), Err(SesEventError::Json(_))));
        assert_eq!(
            parse(r#"{"mail":{"messageId":"x"}}"#),
            Err(SesEventError::Missing("eventType or notificationType"))
        );
        assert_eq!(
            parse(r#"{"eventType":"Bounce","mail":{}}"#),
            Err(SesEventError::Missing("mail.messageId"))
        );
        assert_eq!(
            parse(r#"{"eventType":"Bounce","mail":{"messageId":"x"}}"#),
            Err(SesEventError::Missing("bounce"))
        );
        let odd = parse(
            r#"{"eventType":"Bounce","mail":{"messageId":"x"},"bounce":{"bouncedRecipients":[1,{"emailAddress":2},{}]}}"#,
        )
        .unwrap();
        assert!(odd.reports.is_empty());
    }
}
