"""What an accepted message becomes: the MO event JSON (SPEC 6.2), built with Python's
`email` package and sent with smtplib."""

import hashlib
import hmac
import json
import os
import re
import time
import uuid
from email.message import EmailMessage
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from conftest import b64decode, nl, send, smtp_client, text_message, unique, wait_for

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + os.urandom(4096) + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(2048) + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def drained(daemon):
    """The outbox has nothing left to deliver."""
    return daemon.metric("postern_webhook_backlog") == 0


def test_plain_text_event(hook, postern):
    d = postern(hook)
    subject = unique("Plain text")
    msg = text_message(subject, body="Hello postern,\nsecond line.\n",
                       sender="Alice Example <alice@example.org>")
    send(d, msg, mail_from="bounce+1@example.org",
         rcpts=["support@example.test", "sales@example.test"])

    h = hook.wait_subject(subject)
    e = h.json
    assert h.method == "POST"
    assert h.header("content-type").startswith("application/json")
    assert h.header("x-postern-event-id"), "X-Postern-Event-Id missing"
    assert h.header("x-postern-signature") is None, "signed although no webhook_secret"
    assert e["channel"] == "email"
    assert e["event"] == "MO"
    uuid.UUID(e["tid"])
    assert TS_RE.match(e["ts"]), e["ts"]
    assert e["messageId"] == msg["Message-ID"].strip("<>")
    assert e["from"] == "alice@example.org"
    assert sorted(e["to"]) == ["sales@example.test", "support@example.test"]
    assert e["subject"] == subject
    assert nl(e["textMessage"]) == "Hello postern,\nsecond line.\n"
    assert e["htmlMessage"] == ""
    assert e["returnPath"] == "bounce+1@example.org"
    assert e["attachments"] == []
    assert e["authResults"] == {"spf": "none", "dkim": "none", "dmarc": "none", "arc": "none"}

    # one event per asset, not per recipient
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert [x["subject"] for x in hook.events()].count(subject) == 1
    assert d.metric("postern_inbound_messages_total", result="accepted") >= 1


def test_reply_to_is_return_path(hook, postern):
    d = postern(hook)
    subject = unique("Reply-To")
    msg = text_message(subject, Reply_To="Helpdesk <replies@example.org>")
    send(d, msg, mail_from="envelope@example.org")
    e = hook.wait_subject(subject).json
    assert e["returnPath"] == "replies@example.org"


def test_one_event_per_asset_with_its_own_recipients(hook, make_receiver, postern):
    other = make_receiver()
    d = postern(hook, extra_assets=[{
        "id": "a_two",
        "name": "Two",
        "domains": ["two.example.test"],
        "inbound": True,
        "max_inbound_size": 41943040,
        "incoming_webhook": f"{other.base}/mo",
        "delivery_webhook": f"{other.base}/dlr",
    }])
    subject = unique("Two assets")
    send(d, text_message(subject), rcpts=[
        "support@example.test", "info@two.example.test", "a_two@inbound.example.test"])
    one = hook.wait_subject(subject).json
    two = other.wait_subject(subject).json
    assert one["to"] == ["support@example.test"]
    assert sorted(two["to"]) == ["a_two@inbound.example.test", "info@two.example.test"]
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert [x["subject"] for x in hook.events()].count(subject) == 1
    assert [x["subject"] for x in other.events()].count(subject) == 1


def test_forwarding_address_of_asset(hook, postern):
    d = postern(hook)
    subject = unique("Forwarded")
    send(d, text_message(subject, to="someone@gmail.example"),
         mail_from="someone@gmail.example", rcpts=["a_demo@inbound.example.test"])
    e = hook.wait_subject(subject).json
    assert e["to"] == ["a_demo@inbound.example.test"]


def test_html_and_text_alternative(hook, postern):
    d = postern(hook)
    subject = unique("Alternative")
    msg = text_message(subject, body="Plain version\nline two\n")
    html = "<html><body><p>HTML <b>version</b> &amp; more</p></body></html>\n"
    msg.add_alternative(html, subtype="html")
    send(d, msg)
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == "Plain version\nline two\n"
    assert nl(e["htmlMessage"]) == html
    assert e["attachments"] == []


def test_binary_attachments_roundtrip(hook, postern):
    d = postern(hook)
    subject = unique("Attachments")
    msg = text_message(subject, body="See attached.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="chart.png")
    send(d, msg)
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == "See attached.\n"
    atts = e["attachments"]
    assert [(a["name"], a["contentType"]) for a in atts] == [
        ("report.pdf", "application/pdf"),
        ("chart.png", "image/png"),
    ]
    for a, blob in zip(atts, [PDF, PNG]):
        assert a["contentTransferEncoding"] == "base64"
        assert "url" not in a
        assert b64decode(a["content"]) == blob
        assert a["size"] == len(blob)


def test_inline_image_is_an_attachment(hook, postern):
    d = postern(hook)
    subject = unique("Inline image")
    msg = text_message(subject, body="text part\n")
    msg.add_alternative('<p>logo: <img src="cid:logo@x"></p>\n', subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@x>",
                          filename="logo.png")
    send(d, msg)
    e = hook.wait_subject(subject).json
    assert "cid:logo@x" in e["htmlMessage"]
    assert [(a["name"], a["contentType"]) for a in e["attachments"]] == [("logo.png", "image/png")]
    assert b64decode(e["attachments"][0]["content"]) == PNG


LATIN1_TEXT = "Grüße aus Köln: café, naïve, ½, ¤ and ÿ.\nZweite Zeile: Ærø.\n"


def _latin1_message(subject, cte):
    body = LATIN1_TEXT.replace("\n", "\r\n").encode("iso-8859-1")
    if cte == "quoted-printable":
        import quopri
        body = quopri.encodestring(body.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    headers = (
        f"From: =?iso-8859-1?q?J=FCrgen?= <juergen@example.org>\r\n"
        f"To: support@example.test\r\n"
        f"Subject: {subject} =?iso-8859-1?q?Gr=FC=DFe?=\r\n"
        f"Date: {formatdate()}\r\n"
        f"Message-ID: {make_msgid(domain='client.example.org')}\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=iso-8859-1\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode("ascii")
    return headers + body


def test_iso_8859_1_8bit(hook, postern):
    d = postern(hook)
    subject = unique("Latin1 8bit")
    raw = _latin1_message(subject, "8bit")
    with smtp_client(d) as s:
        s.ehlo()
        refused = s.sendmail("juergen@example.org", ["support@example.test"], raw,
                             mail_options=["BODY=8BITMIME"])
        assert refused == {}
    e = hook.wait_hook(lambda x: x["subject"].startswith(subject)).json
    assert e["subject"] == f"{subject} Grüße"
    assert nl(e["textMessage"]) == LATIN1_TEXT


def test_iso_8859_1_quoted_printable(hook, postern):
    d = postern(hook)
    subject = unique("Latin1 QP")
    send(d, _latin1_message(subject, "quoted-printable"), mail_from="juergen@example.org")
    e = hook.wait_hook(lambda x: x["subject"].startswith(subject)).json
    assert e["subject"] == f"{subject} Grüße"
    assert nl(e["textMessage"]) == LATIN1_TEXT


def test_nested_message_rfc822(hook, postern):
    d = postern(hook)
    subject = unique("Outer")
    inner = EmailMessage()
    inner["From"] = "carol@example.net"
    inner["To"] = "alice@example.org"
    inner["Subject"] = "Inner subject 4711"
    inner["Date"] = formatdate()
    inner.set_content("inner body text\n")

    outer = MIMEMultipart("mixed")
    outer["From"] = "alice@example.org"
    outer["To"] = "support@example.test"
    outer["Subject"] = subject
    outer["Date"] = formatdate()
    outer["Message-ID"] = make_msgid(domain="client.example.org")
    outer.attach(MIMEText("Forwarding the message below.\n", "plain"))
    outer.attach(MIMEMessage(inner))
    send(d, outer.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]).startswith("Forwarding the message below.\n")
    assert len(e["attachments"]) == 1, e["attachments"]
    a = e["attachments"][0]
    assert a["contentType"] == "message/rfc822"
    content = b64decode(a["content"])
    assert b"Subject: Inner subject 4711" in content
    assert b"inner body text" in content


def test_sender_equals_recipient_is_not_posted(hook, postern):
    d = postern(hook)
    loop_subject = unique("Loop")
    msg = text_message(loop_subject, sender="support@example.test", to="support@example.test")
    send(d, msg, mail_from="support@example.test", rcpts=["support@example.test"])

    normal = unique("Normal after loop")
    send(d, text_message(normal))
    hook.wait_subject(normal)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    subjects = [h.json.get("subject") for h in hook.all("/mo", ok_only=False)]
    assert loop_subject not in subjects, "an MO event was POSTed for sender == recipient"


def test_webhook_signature(hook, postern):
    secret = "s3cret-for-tests"
    d = postern(hook, asset={"webhook_secret": secret})
    subject = unique("Signed")
    send(d, text_message(subject))
    h = hook.wait_subject(subject)
    sig = h.header("x-postern-signature")
    assert sig, "X-Postern-Signature missing"
    parts = dict(p.split("=", 1) for p in sig.split(","))
    assert set(parts) == {"t", "v1"}, sig
    t = parts["t"]
    assert re.fullmatch(r"\d+", t), sig
    assert abs(int(t) - time.time()) < 300
    expected = hmac.new(secret.encode(), t.encode() + b"." + h.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), (sig, expected)
    wrong = hmac.new(b"other", t.encode() + b"." + h.body, hashlib.sha256).hexdigest()
    assert parts["v1"] != wrong


def _with_token(url, token):
    u = urlparse(url)
    q = parse_qs(u.query)
    q["token"] = [token]
    return urlunparse(u._replace(query=urlencode(q, doseq=True)))


def test_mo_attachments_as_urls(hook, postern):
    d = postern(hook, asset={"mo_attachments": "url"})
    subject = unique("Attachment links")
    msg = text_message(subject, body="links please\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="chart.png")
    sent = send(d, msg)

    e = hook.wait_subject(subject).json
    atts = e["attachments"]
    assert [(a["name"], a["contentType"]) for a in atts] == [
        ("report.pdf", "application/pdf"), ("chart.png", "image/png")]
    for n, (a, blob) in enumerate(zip(atts, [PDF, PNG])):
        assert "content" not in a, "url mode must not inline content"
        assert a["url"].startswith(d.http_base + f"/v2/inbound/{e['tid']}/attachments/"), a["url"]
        status, headers, body = d.http_get(a["url"])
        assert status == 200, (a["url"], status, body[:200])
        assert body == blob, f"attachment {n} bytes differ"

    assert e["rawUrl"].startswith(d.http_base + f"/v2/inbound/{e['tid']}/raw"), e["rawUrl"]
    status, _, raw = d.http_get(e["rawUrl"])
    assert status == 200, (status, raw[:200])
    assert sent in raw, "rawUrl does not return the message as received"
    header = raw.split(b"\r\n\r\n", 1)[0]
    assert b"Authentication-Results: mx.example.test" in header, header

    # altered, truncated, missing and misplaced tokens are refused
    url0 = atts[0]["url"]
    token0 = parse_qs(urlparse(url0).query)["token"][0]
    flipped = token0[:-1] + ("A" if token0[-1] != "A" else "B")
    bad = {
        "altered": _with_token(url0, flipped),
        "truncated": _with_token(url0, token0[: len(token0) // 2]),
        "missing": url0.split("?")[0],
        "other attachment": atts[1]["url"].split("?")[0] + "?token=" + token0,
        "raw with attachment token": e["rawUrl"].split("?")[0] + "?token=" + token0,
        "other tid": url0.replace(e["tid"], str(uuid.uuid4())),
    }
    for what, url in bad.items():
        status, _, body = d.http_get(url)
        assert 400 <= status < 500, f"{what}: {url} answered {status}"
        err = json.loads(body)
        assert set(err) >= {"code", "description"}, f"{what}: error body {body!r}"


def test_forged_authentication_results_are_not_trusted(hook, postern):
    d = postern(hook)
    subject = unique("Forged A-R")
    msg = text_message(subject)
    msg["Authentication-Results"] = (
        "mx.example.test; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org; "
        "dmarc=pass header.from=example.org; arc=pass"
    )
    send(d, msg)
    e = hook.wait_subject(subject).json
    assert e["authResults"] == {"spf": "none", "dkim": "none", "dmarc": "none", "arc": "none"}


def test_asset_without_inbound_refuses_mail(hook, postern):
    d = postern(hook, extra_assets=[{
        "id": "a_out",
        "name": "Outbound only",
        "domains": ["out.example.test"],
        "inbound": False,
        "max_inbound_size": 41943040,
        "incoming_webhook": f"{hook.base}/mo",
        "delivery_webhook": f"{hook.base}/dlr",
    }])
    with smtp_client(d) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        code, msg = s.rcpt("info@out.example.test")
        assert code == 550 and msg.lower().startswith(b"5.7.1 relaying denied"), (code, msg)
        code, msg = s.rcpt("a_out@inbound.example.test")
        assert code == 550, (code, msg)
        assert s.rcpt("support@example.test")[0] == 250
