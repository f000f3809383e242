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
use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;

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

/// A field as SES writes it, or `T::default()` when a malformed event gives it another
/// JSON type: a field of the wrong type reads as an absent one, so an odd event loses
/// that field, not the whole event.
#[derive(Debug, Default)]
struct Lenient<T>(T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Typed(T),
            Other(IgnoredAny),
        }
        Ok(Lenient(match Either::deserialize(d)? {
            Either::Typed(t) => t,
            Either::Other(IgnoredAny) => T::default(),
        }))
    }
}

/// An object field, read like [`Lenient`]; a JSON array reads as absent too (serde would
/// otherwise take its items as the struct's fields in order).
#[derive(Debug, Default)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            // Matched for its shape only.
            Array(#[allow(dead_code)] Vec<IgnoredAny>),
            Typed(T),
            Other(IgnoredAny),
        }
        Ok(Object(match Either::deserialize(d)? {
            Either::Typed(t) => t,
            Either::Array(_) | Either::Other(IgnoredAny) => T::default(),
        }))
    }
}

impl<T> std::ops::Deref for Lenient<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::Deref for Object<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// `Some` for a field that is there, whatever its value (`null` included): for the fields
/// whose mere presence matters.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A list of strings in which an entry of another type is `None`.
type Strings = Lenient<Vec<Lenient<Option<String>>>>;

/// The parts of an SES event read here; the rest (headers, tags, timestamps) is skipped.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Envelope {
    /// The kind in configuration-set event publishing; when present (even `null`), it is
    /// the only one read.
    #[serde(deserialize_with = "present")]
    event_type: Option<Lenient<Option<String>>>,
    /// The kind in identity notifications.
    notification_type: Lenient<Option<String>>,
    #[serde(deserialize_with = "present")]
    mail: Option<Object<Mail>>,
    delivery: Object<Delivery>,
    #[serde(deserialize_with = "present")]
    bounce: Option<Object<Bounce>>,
    complaint: Object<Complaint>,
    open: Object<Open>,
    click: Object<Click>,
    reject: Object<Reject>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Mail {
    message_id: Lenient<String>,
    destination: Strings,
}

impl Mail {
    /// The first destination, if it is a string: opens and clicks name no recipient.
    fn first_destination(&self) -> Option<String> {
        self.destination.first().and_then(|d| d.0.clone())
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Delivery {
    recipients: Strings,
    smtp_response: Lenient<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Bounce {
    bounce_type: Lenient<String>,
    bounce_sub_type: Lenient<String>,
    bounced_recipients: Lenient<Vec<Object<Recipient>>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Complaint {
    complaint_feedback_type: Lenient<String>,
    complained_recipients: Lenient<Vec<Object<Recipient>>>,
}

/// One of `bouncedRecipients` or `complainedRecipients` (a complaint names only the
/// address); one without an address is skipped.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Recipient {
    email_address: Lenient<Option<String>>,
    status: Lenient<String>,
    action: Lenient<String>,
    diagnostic_code: Lenient<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Open {
    user_agent: Lenient<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Click {
    link: Lenient<String>,
    ip_address: Lenient<String>,
    user_agent: Lenient<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Reject {
    reason: Lenient<String>,
}

/// Reads an SES event.
pub fn parse(message: &str) -> Result<SesEvent, SesEventError> {
    let Object(event): Object<Envelope> =
        serde_json::from_str(message).map_err(|e| SesEventError::Json(e.to_string()))?;
    let kind = match event.event_type {
        Some(Lenient(kind)) => kind,
        None => event.notification_type.0,
    }
    .ok_or(SesEventError::Missing("eventType or notificationType"))?;
    let Object(mail) = event.mail.ok_or(SesEventError::Missing("mail"))?;
    if mail.message_id.is_empty() {
        return Err(SesEventError::Missing("mail.messageId"));
    }
    let reports = match kind.as_str() {
        "Delivery" => delivered(&event.delivery),
        "Bounce" => bounced(&event.bounce.ok_or(SesEventError::Missing("bounce"))?.0),
        "Complaint" => complained(&event.complaint),
        // Opens and clicks name no recipient: they are the message's, bound to its first
        // destination (as postern's own tracking binds a multi-recipient email's links).
        "Open" => vec![
            Report::new(mail.first_destination(), DeliveryCode::Read, "Read")
                .additional(&event.open.user_agent),
        ],
        "Click" => vec![clicked(mail.first_destination(), &event.click)],
        "Reject" => rejected(&mail, &event.reject),
        _ => Vec::new(),
    };
    Ok(SesEvent {
        kind,
        message_id: mail.message_id.0,
        reports,
    })
}

/// 7500 for each recipient, with SES's SMTP response.
fn delivered(delivery: &Delivery) -> Vec<Report> {
    delivery
        .recipients
        .iter()
        .filter_map(|r| r.as_deref())
        .map(|r| {
            Report::new(Some(r.to_string()), DeliveryCode::Delivered, "Delivered")
                .additional(&delivery.smtp_response)
        })
        .collect()
}

/// 7520 for each bounced recipient, `status|action|diagnosticCode` (the status defaulting
/// to the bounce's class); a permanent bounce also suppresses.
fn bounced(bounce: &Bounce) -> Vec<Report> {
    let description = bounce_description(&bounce.bounce_type, &bounce.bounce_sub_type);
    let permanent = bounce.bounce_type.as_str() == "Permanent";
    bounce
        .bounced_recipients
        .iter()
        .filter_map(|r| {
            let addr = r.email_address.as_deref()?;
            let status = match r.status.as_str() {
                "" if permanent => "5.0.0",
                "" => "4.0.0",
                s => s,
            };
            let action = match r.action.as_str() {
                "" => "failed",
                a => a,
            };
            let report = Report::new(Some(addr.to_string()), DeliveryCode::Bounce, description)
                .additional(&format!("{status}|{action}|{}", r.diagnostic_code.as_str()));
            Some(if permanent {
                report.suppress(Reason::Bounced, format!("ses {description}"))
            } else {
                report
            })
        })
        .collect()
}

/// 7521 for each complained recipient, described by the feedback type; always suppresses.
fn complained(complaint: &Complaint) -> Vec<Report> {
    let feedback = match complaint.complaint_feedback_type.as_str() {
        "" => "other",
        f => f,
    };
    complaint
        .complained_recipients
        .iter()
        .filter_map(|r| r.email_address.as_deref())
        .map(|addr| {
            Report::new(Some(addr.to_string()), DeliveryCode::Complaint, feedback)
                .suppress(Reason::Complained, format!("ses complaint {feedback}"))
        })
        .collect()
}

/// 7528 `link|ip`, with the User-Agent.
fn clicked(recipient: Option<String>, click: &Click) -> Report {
    Report::new(
        recipient,
        DeliveryCode::Clicked,
        &format!("{}|{}", click.link.as_str(), click.ip_address.as_str()),
    )
    .additional(&click.user_agent)
}

/// 7592 for each destination, with SES's reason.
fn rejected(mail: &Mail, reject: &Reject) -> Vec<Report> {
    mail.destination
        .iter()
        .filter_map(|r| r.as_deref())
        .map(|r| {
            Report::new(
                Some(r.to_string()),
                DeliveryCode::RouteRefused,
                "Rejected by SES",
            )
            .additional(&reject.reason)
        })
        .collect()
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
