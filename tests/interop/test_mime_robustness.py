"""Malformed and international mail never refuses or drops a message (SPEC 6.2), and
SMTPUTF8 / 8BITMIME work as advertised (SPEC 6.1)."""

import base64
import os
from email.message import EmailMessage
from email.utils import make_msgid
import email.policy

import pytest

from conftest import b64decode, nl, send, smtp_client, text_message, unique, wire

BLOB = os.urandom(3000)


def _b64_lines(data: bytes) -> bytes:
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def _send_8bit(d, raw: bytes, mail_from="alice@example.org"):
    with smtp_client(d) as s:
        s.ehlo()
        assert s.sendmail(mail_from, ["support@example.test"], raw,
                          mail_options=["BODY=8BITMIME"]) == {}


def test_missing_closing_boundary(hook, postern):
    d = postern(hook)
    subject = unique("No closing boundary")
    raw = (
        f"From: alice@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n"
        "--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ntext part\r\n"
        "--BOUND\r\nContent-Type: application/octet-stream; name=\"tail.bin\"\r\n"
        "Content-Disposition: attachment; filename=\"tail.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + _b64_lines(BLOB) + b"\r\n"
    send(d, raw)
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]).strip() == "text part"
    assert [a["name"] for a in e["attachments"]] == ["tail.bin"]
    assert b64decode(e["attachments"][0]["content"]) == BLOB


def test_non_utf8_header_bytes_become_replacement_chars(hook, postern):
    d = postern(hook)
    subject = unique("Raw header")
    raw = (
        b"From: alice@example.org\r\nTo: support@example.test\r\n"
        b"Subject: " + subject.encode() + b" caf\xe9 \xff end\r\n\r\nbody\r\n"
    )
    _send_8bit(d, raw)
    e = hook.wait_hook(lambda x: x["subject"].startswith(subject)).json
    assert e["subject"] == f"{subject} caf\ufffd \ufffd end", e["subject"]
    assert nl(e["textMessage"]) == "body\n"


def test_unknown_transfer_encoding_is_binary(hook, postern):
    d = postern(hook)
    subject = unique("Unknown CTE")
    raw = (
        f"From: alice@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nintro\r\n"
        "--B\r\nContent-Type: application/octet-stream\r\n"
        "Content-Disposition: attachment; filename=\"weird.bin\"\r\n"
        "Content-Transfer-Encoding: x-martian\r\n\r\n"
        "=41 not quoted-printable, not base64==\r\n"
        "--B--\r\n"
    ).encode()
    send(d, raw)
    e = hook.wait_subject(subject).json
    assert [a["name"] for a in e["attachments"]] == ["weird.bin"]
    assert b64decode(e["attachments"][0]["content"]) == b"=41 not quoted-printable, not base64=="


def test_deep_nesting_is_accepted(hook, postern):
    d = postern(hook)
    subject = unique("Deep")
    depth = 80
    head = (
        f"From: alice@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\n"
    )
    opens, closes = [], []
    for i in range(depth):
        opens.append(f"Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
        closes.append(f"\r\n--b{i}--\r\n")
    raw = (head + "".join(opens) + "Content-Type: text/plain\r\n\r\ndeep text"
           + "".join(reversed(closes))).encode()
    send(d, raw)
    e = hook.wait_subject(subject).json
    assert e["event"] == "MO"


def test_garbage_without_headers(hook, postern):
    d = postern(hook)
    marker = unique("garbage")
    send(d, f"this is not a MIME message at all {marker}\r\n\x01\x02 binary-ish\r\n".encode())
    e = hook.wait_hook(lambda x: marker in (x.get("textMessage") or "")
                       or marker in (x.get("subject") or "")).json
    assert e["event"] == "MO"
    assert e["to"] == ["support@example.test"]


def test_utf8_8bit_body(hook, postern):
    d = postern(hook)
    subject = unique("UTF-8 8bit")
    text = "Zürich → 東京, emoji 🎉\n"
    raw = (
        f"From: alice@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + text.replace("\n", "\r\n").encode()
    _send_8bit(d, raw)
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == text


def test_smtputf8_addresses(hook, postern):
    d = postern(hook)
    subject = unique("Grüße 📬")
    msg = EmailMessage(policy=email.policy.SMTPUTF8)
    msg["From"] = "Jörg <jörg@exämple.org>"
    msg["To"] = "kundendienst-ü@example.test"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="client.example.org")
    msg.set_content("Schöne Grüße\n")
    with smtp_client(d) as s:
        s.ehlo()
        assert "smtputf8" in s.esmtp_features
        refused = s.send_message(msg)  # smtplib adds SMTPUTF8 for non-ASCII addresses
        assert refused == {}
    e = hook.wait_subject(subject).json
    assert e["from"] == "jörg@exämple.org"
    assert e["to"] == ["kundendienst-ü@example.test"]
    assert nl(e["textMessage"]) == "Schöne Grüße\n"


def test_non_ascii_attachment_name(hook, postern):
    d = postern(hook)
    subject = unique("RFC 2231 name")
    msg = text_message(subject, body="see file\n")
    msg.add_attachment(BLOB, maintype="application", subtype="pdf",
                       filename="Übersicht März.pdf")
    send(d, msg)
    e = hook.wait_subject(subject).json
    assert [(a["name"], a["contentType"]) for a in e["attachments"]] == [
        ("Übersicht März.pdf", "application/pdf")]
    assert b64decode(e["attachments"][0]["content"]) == BLOB


def test_null_reverse_path_accepted(hook, postern):
    d = postern(hook)
    subject = unique("Null sender")
    msg = text_message(subject, sender="MAILER-DAEMON@example.org")
    with smtp_client(d) as s:
        s.ehlo()
        assert s.docmd("MAIL", "FROM:<>")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        assert s.data(wire(msg))[0] == 250
    e = hook.wait_subject(subject).json
    assert e["from"] == "MAILER-DAEMON@example.org"


CHARSET_TEXTS = {
    "windows-1252": "Preis: 10 € – „Zitat“ … fertig\n",
    "koi8-r": "Привет, мир! Съешь же ещё этих мягких булок.\n",
    "iso-2022-jp": "日本語のテキストです。\n",
    "shift_jis": "こんにちは、世界。カタカナ。\n",
    "gb2312": "你好，世界。\n",
    "big5": "繁體中文測試。\n",
    "euc-kr": "안녕하세요 세계.\n",
    "iso-8859-15": "Prix : 10 € œuvre\n",
    "utf-16": "UTF-16 text ☃\n",
}


@pytest.mark.parametrize("charset", list(CHARSET_TEXTS))
def test_body_charsets_decode_to_utf8(hook, postern, charset):
    d = postern(hook)
    subject = unique(f"Charset {charset}")
    text = CHARSET_TEXTS[charset]
    body = base64.encodebytes(text.replace("\n", "\r\n").encode(charset)).replace(b"\n", b"\r\n")
    raw = (
        f"From: alice@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + body
    send(d, raw)
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == text, f"{charset}: {e['textMessage']!r}"


def test_folded_encoded_subject(hook, postern):
    d = postern(hook)
    tag = unique("Folded")
    subject = tag + " " + "Ünïcödé wörds that must be folded across lines " * 4
    subject = subject.strip()
    send(d, text_message(subject))
    raw_header = wire(text_message(subject)).split(b"\r\n\r\n")[0]
    assert b"=?utf-8?" in raw_header and b"\r\n " in raw_header  # really encoded and folded
    e = hook.wait_hook(lambda x: x["subject"].startswith(tag)).json
    assert e["subject"] == subject


def test_text_attachment_is_not_the_body(hook, postern):
    d = postern(hook)
    subject = unique("Text attachment")
    msg = text_message(subject, body="the real body\n")
    msg.add_attachment("notes in a file\n", subtype="plain", filename="notes.txt")
    send(d, msg)
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == "the real body\n"
    assert [(a["name"], a["contentType"]) for a in e["attachments"]] == [("notes.txt", "text/plain")]
    assert nl(b64decode(e["attachments"][0]["content"]).decode()) == "notes in a file\n"
