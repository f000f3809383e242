use super::*;

/// A bounce as Postfix writes it.
pub const POSTFIX: &str = "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\nSubject: Undelivered Mail Returned to Sender\r\nTo: b-TID@bounces.example.test\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"ABC.1700000000/mx.example.org\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--ABC.1700000000/mx.example.org\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n<nobody@example.org>: host mx.example.org[192.0.2.10] said: 550 5.1.1\r\n    <nobody@example.org>: Recipient address rejected: User unknown in local\r\n    recipient table (in reply to RCPT TO command)\r\n\r\n--ABC.1700000000/mx.example.org\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\nX-Postfix-Queue-ID: 4XyZ1234\r\nArrival-Date: Wed, 22 Nov 2026 10:00:00 +0000 (UTC)\r\n\r\nFinal-Recipient: rfc822; nobody@example.org\r\nOriginal-Recipient: rfc822;nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: Recipient address\r\n    rejected: User unknown in local recipient table\r\n\r\n--ABC.1700000000/mx.example.org\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: news@example.test\r\nTo: nobody@example.org\r\nSubject: Hello\r\nMessage-ID: <TID@mx.example.test>\r\n\r\n--ABC.1700000000/mx.example.org--\r\n";

/// Gmail's mailbox-full DSN (Google's MTAs keep the diagnostic on several lines).
pub const GMAIL_FULL: &str = "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\nTo: b-TID@bounces.example.test\r\nSubject: Delivery Status Notification (Delay)\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; boundary=\"000000000000aa\"; report-type=delivery-status\r\n\r\n--000000000000aa\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\nThe recipient's inbox is full and can't accept messages now.\r\n\r\n--000000000000aa\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; googlemail.com\r\nReceived-From-MTA: dns; mail-sor-f41.google.com\r\nArrival-Date: Wed, 22 Nov 2026 02:03:04 -0800 (PST)\r\nX-Original-Message-ID: <TID@mx.example.test>\r\n\r\nFinal-Recipient: rfc822; full@gmail.com\r\nAction: delayed\r\nStatus: 4.2.2\r\nDiagnostic-Code: smtp; 452-4.2.2 The recipient's inbox is out of storage space.\r\n 452 4.2.2 Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp\r\nLast-Attempt-Date: Wed, 22 Nov 2026 02:03:05 -0800 (PST)\r\nWill-Retry-Until: Sat, 25 Nov 2026 02:03:05 -0800 (PST)\r\n\r\n--000000000000aa--\r\n";

/// Exchange Online / Outlook NDR, two recipients: one unknown, one blocked as spam.
pub const OUTLOOK: &str = "From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.onmicrosoft.com>\r\nTo: <b-TID@bounces.example.test>\r\nSubject: Undeliverable: Hello\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"_000_NDR_\"\r\nMIME-Version: 1.0\r\n\r\n--_000_NDR_\r\nContent-Type: text/html; charset=\"us-ascii\"\r\n\r\n<html><body><b>Your message to gone@contoso.com couldn't be delivered.</b></body></html>\r\n\r\n--_000_NDR_\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com\r\nReceived-From-MTA: dns;mx.example.test\r\nArrival-Date: Wed, 22 Nov 2026 10:00:00 +0000\r\n\r\nFinal-Recipient: rfc822;gone@contoso.com\r\nAction: failed\r\nStatus: 5.1.10\r\nDiagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup\r\n\r\nFinal-Recipient: rfc822;guarded@contoso.com\r\nAction: failed\r\nStatus: 5.7.1\r\nDiagnostic-Code: smtp;550 5.7.1 Service unavailable, message content rejected as spam\r\n\r\n--_000_NDR_\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@example.test\r\nTo: gone@contoso.com\r\nSubject: Hello\r\nMessage-ID: <TID@mx.example.test>\r\n\r\nHi\r\n\r\n--_000_NDR_--\r\n";

#[test]
fn postfix_hard_bounce() {
    let r = parse(POSTFIX.as_bytes());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].recipient, "nobody@example.org");
    assert_eq!(r[0].category, "Permanent_NoEmail");
    assert!(r[0].permanent);
    assert_eq!(
        r[0].additional_info(),
        "5.1.1|failed|smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local recipient table"
    );
}

#[test]
fn gmail_mailbox_full_is_transient() {
    let r = parse(GMAIL_FULL.as_bytes());
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].recipient, "full@gmail.com");
    assert_eq!(r[0].action, "delayed");
    assert_eq!(r[0].category, "Transient_MailboxFull");
    assert!(!r[0].permanent);
    assert!(r[0].diagnostic.contains("out of storage space") && r[0].diagnostic.contains("gsmtp"));
}

#[test]
fn outlook_ndr_with_two_recipients() {
    let r = parse(OUTLOOK.as_bytes());
    assert_eq!(
        r.iter()
            .map(|x| (x.recipient.as_str(), x.category))
            .collect::<Vec<_>>(),
        [
            ("gone@contoso.com", "Permanent_NoEmail"),
            ("guarded@contoso.com", "Permanent_General"),
        ]
    );
}

#[test]
fn ordinary_mail_is_not_a_dsn() {
    assert!(parse(b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n").is_empty());
}
