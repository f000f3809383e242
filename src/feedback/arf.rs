//! Complaint reports (ARF, RFC 5965) parsed by mail-auth. Pure: the raw report in; the
//! feedback type, and the tid and recipient of the complained-about message (from the
//! VERP address it came back to, else the original's `Message-ID: <tid@host>`) out.

use mail_auth::report::{Feedback, FeedbackType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// The SPEC's Description: abuse, auth-failure, fraud, not-spam, other, virus.
    pub feedback_type: &'static str,
    /// From the original message's Message-ID, when it is one of ours.
    pub tid: Option<String>,
    /// Original-Rcpt-To, else the original message's To.
    pub recipient: Option<String>,
}

fn label(t: FeedbackType) -> &'static str {
    match t {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Other => "other",
        FeedbackType::Virus => "virus",
    }
}

/// `None` when the message is not an ARF report.
pub fn parse(raw: &[u8], hostname: &str) -> Option<Complaint> {
    let feedback = Feedback::parse_rfc5322(raw).ok()?;
    let original = feedback.message().or(feedback.headers()).unwrap_or("");
    let headers = mail_parser::MessageParser::default().parse_headers(original.as_bytes());
    let tid = headers
        .as_ref()
        .and_then(|h| h.message_id())
        .and_then(|id| id.strip_suffix(&format!("@{hostname}")))
        .and_then(|t| uuid::Uuid::parse_str(t).ok())
        .map(|u| u.to_string());
    let recipient = feedback
        .original_rcpt_to()
        .map(|r| r.trim().trim_matches(['<', '>']).to_ascii_lowercase())
        .or_else(|| {
            headers
                .as_ref()
                .and_then(|h| h.to())
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_ascii_lowercase)
        });
    Some(Complaint {
        feedback_type: label(feedback.feedback_type()),
        tid,
        recipient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feedback-loop report as Yahoo/AOL-style FBLs send it.
    const ARF: &str = "From: feedback@fbl.example.net\r\nTo: fbl@bounces.example.test\r\nSubject: FW: Hello\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"part1\"\r\n\r\n--part1\r\nContent-Type: text/plain; charset=\"US-ASCII\"\r\n\r\nThis is an email abuse report for an email message received from IP 192.0.2.1.\r\n\r\n--part1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\nOriginal-Mail-From: <b-x@bounces.example.test>\r\nOriginal-Rcpt-To: <Ann@Example.org>\r\nArrival-Date: Wed, 22 Nov 2026 10:00:00 +0000\r\nSource-IP: 192.0.2.1\r\nReported-Domain: example.test\r\n\r\n--part1\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\nFrom: news@example.test\r\nTo: ann@example.org\r\nSubject: Hello\r\nMessage-ID: <4b72d8a2-290d-49e2-993e-3bd8edf31c81@mx.example.test>\r\n\r\nHi\r\n\r\n--part1--\r\n";

    #[test]
    fn arf_report_yields_type_tid_and_recipient() {
        let c = parse(ARF.as_bytes(), "mx.example.test").expect("an ARF report");
        assert_eq!(c.feedback_type, "abuse");
        assert_eq!(
            c.tid.as_deref(),
            Some("4b72d8a2-290d-49e2-993e-3bd8edf31c81")
        );
        assert_eq!(c.recipient.as_deref(), Some("ann@example.org"));
        assert_eq!(
            parse(ARF.as_bytes(), "other.host").unwrap().tid,
            None,
            "not our Message-ID"
        );
    }

    #[test]
    fn plain_mail_is_not_a_report() {
        assert_eq!(
            parse(
                b"From: a@b.org\r\nSubject: x\r\n\r\nhi\r\n",
                "mx.example.test"
            ),
            None
        );
    }
}
