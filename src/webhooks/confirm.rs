//! Forwarding-confirmation mails (SPEC 14): when a customer points Gmail's (or Outlook's)
//! forwarding at an asset's address, the provider mails a confirmation code and link to
//! it. The admin page shows them up front instead of making the customer dig them out of
//! logs. Pure: the sender, subject and text of the rendered MO event in, code and link out.

/// The confirmation code and link, when the mail looks like a forwarding confirmation.
pub fn forwarding_confirmation(
    from: &str,
    subject: &str,
    text: &str,
) -> Option<(Option<String>, Option<String>)> {
    let from = from.to_ascii_lowercase();
    let subject_l = subject.to_ascii_lowercase();
    let gmail = from.ends_with("@google.com") && subject_l.contains("forwarding confirmation");
    let generic = [
        "forwarding",
        "verification code",
        "confirmation code",
        "security code",
        "verify",
    ]
    .iter()
    .any(|w| subject_l.contains(w))
        && (from.contains("microsoft")
            || from.contains("outlook")
            || from.ends_with("@google.com"));
    if !gmail && !generic {
        return None;
    }
    // Gmail puts it in the subject as "(#123456789)", and in the text after "code:".
    let code = digits_after(subject, "(#").or_else(|| {
        let lower = text.to_ascii_lowercase();
        [
            "confirmation code:",
            "verification code:",
            "security code:",
            "code:",
        ]
        .iter()
        .find_map(|m| {
            lower
                .find(m)
                .and_then(|i| first_digits(&text[i + m.len()..]))
        })
    });
    let link = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| matches!(c, '<' | '>' | '(' | ')' | '"' | '\'' | ',')))
        .find(|w| {
            w.starts_with("https://")
                && ["vf-", "confirm", "verify", "mail-settings.google.com"]
                    .iter()
                    .any(|k| w.contains(k))
        })
        .map(str::to_string);
    (code.is_some() || link.is_some()).then_some((code, link))
}

fn digits_after(s: &str, marker: &str) -> Option<String> {
    s.find(marker)
        .and_then(|i| first_digits(&s[i + marker.len()..]))
}

/// The first run of 4 to 12 digits near the start of `s`.
fn first_digits(s: &str) -> Option<String> {
    let s = &s[..s.len().min(64)];
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let run: String = s[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (4..=12).contains(&run.len()).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_confirmation_code_and_link_are_found() {
        let text = "mary@gmail.com has requested to automatically forward mail to your email\r\n\
                    address support@in.example.\r\nConfirmation code: 858241123\r\n\r\n\
                    To allow mary@gmail.com to automatically forward mail to your address,\r\n\
                    please click the link below to confirm the request:\r\n\r\n\
                    https://mail-settings.google.com/mail/vf-%5BANGjdJ8%5D-abc123\r\n";
        let got = forwarding_confirmation(
            "forwarding-noreply@google.com",
            "(#858241123) Gmail Forwarding Confirmation - Receive Mail from mary@gmail.com",
            text,
        );
        assert_eq!(
            got,
            Some((
                Some("858241123".into()),
                Some("https://mail-settings.google.com/mail/vf-%5BANGjdJ8%5D-abc123".into())
            ))
        );
    }

    #[test]
    fn outlook_verification_code_is_found() {
        let got = forwarding_confirmation(
            "account-security-noreply@accountprotection.microsoft.com",
            "Microsoft account security code",
            "Please use the following security code for the Microsoft account ma***@outlook.com.\r\n\r\nSecurity code: 4471\r\n",
        );
        assert_eq!(got, Some((Some("4471".into()), None)));
    }

    #[test]
    fn ordinary_mail_is_not_a_confirmation() {
        assert_eq!(
            forwarding_confirmation("ann@example.org", "Invoice 12345", "code: 123456"),
            None
        );
        assert_eq!(
            forwarding_confirmation("news@google.com", "Your weekly digest", "https://x/verify"),
            None
        );
    }
}
