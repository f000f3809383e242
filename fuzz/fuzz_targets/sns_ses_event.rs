//! Arbitrary bytes -> the `/ses/events` body path before any I/O: the SNS message parser,
//! its string to sign, the URL trust rule, the certificate parser, and the SES event
//! parser on the `Message` (or on the raw input when it is not an SNS message).
//!
//! Checks: nothing panics; a string to sign ends with the Type line; a trusted URL is
//! https on an SNS host; every report of an SES event carries a known code, a bounce one
//! of the SPEC's Descriptions, and only Bounced or Complained suppression.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::store::suppression::Reason;
use postern::model::types::DeliveryCode;

const BOUNCES: [&str; 8] = [
    "Permanent_General",
    "Permanent_NoEmail",
    "Permanent_Suppressed",
    "Transient_General",
    "Transient_MailboxFull",
    "Transient_MessageTooLarge",
    "Transient_ContentRejected",
    "Transient_AttachmentRejected",
];

fn check_event(text: &str) {
    let Ok(event) = postern::feedback::ses_events::parse(text) else {
        return;
    };
    assert!(!event.message_id.is_empty());
    for r in &event.reports {
        match r.code {
            DeliveryCode::Bounce => assert!(BOUNCES.contains(&r.description.as_str())),
            DeliveryCode::Delivered
            | DeliveryCode::Complaint
            | DeliveryCode::Read
            | DeliveryCode::Clicked
            | DeliveryCode::RouteRefused => {}
            other => panic!("unexpected code {other:?}"),
        }
        if let Some((reason, _)) = &r.suppress {
            assert!(matches!(reason, Reason::Bounced | Reason::Complained));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = postern::feedback::sns::certificate_key(data, 1_800_000_000);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match serde_json::from_str::<postern::feedback::sns::Message>(text) {
        Ok(msg) => {
            if let Ok(s) = msg.string_to_sign() {
                assert!(s.ends_with(&format!("Type\n{}\n", msg.kind)));
            }
            for url in [&msg.signing_cert_url, &msg.subscribe_url].into_iter().flatten() {
                if postern::feedback::sns::trusted_url(url, &[]) {
                    let u = url::Url::parse(url).expect("a trusted URL parses");
                    assert_eq!(u.scheme(), "https");
                    assert!(u.host_str().is_some_and(|h| h.starts_with("sns.")));
                }
            }
            check_event(&msg.message);
        }
        Err(_) => check_event(text),
    }
});
