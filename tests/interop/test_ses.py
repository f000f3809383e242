"""The Amazon SES route and SES events over SNS (SPEC 5, 7.3, 8).

Outbound: postern's Messaging API -> queue -> DKIM -> SES v2 SendEmail, against moto's SES
in server mode, through a recording proxy that lets the tests read (and SigV4-verify) the
very request postern made, and inject throttling or server errors. dkimpy verifies the
signature of what moto received against the record `postern domain records` prints.

Inbound events: the tests play SNS. They sign their own HTTP(S) messages (SignatureVersion
1 and 2) with an RSA key whose self-signed certificate a local HTTP server publishes under
a prefix listed in `[ses] trust_url_prefixes`, and POST them to `/ses/events`: Delivery,
Bounce (every subtype), Complaint, Open and Click, in both the event-publishing
(`eventType`) and identity-notification (`notificationType`) forms; subscription
confirmations; and forged, tampered or untrusted messages that must change nothing.

Nothing waits by sleeping: every wait polls a condition with a deadline. "Nothing
happened" is proven by waiting until the daemon's webhook outbox is empty
(`postern_webhook_backlog` == 0), since an accepted SNS message enqueues its events before
it is answered, and, where it matters, by a positive control afterwards.
"""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
import uuid

import dkim
import pytest

from conftest import Daemon, WebhookReceiver, free_port, make_config, postern_bin, unique, wait_for
from ses_support import (
    ACCESS_KEY,
    OTHER_TOPIC_ARN,
    REGION,
    SECRET_KEY,
    TOPIC_ARN,
    FileServer,
    MotoServer,
    RecordingProxy,
    SnsSigner,
    bounce_event,
    click_event,
    complaint_event,
    delivery_event,
    iso_now,
    open_event,
    post_sns,
    ses_mail,
    sigv4_signature_ok,
    sns_confirmation,
    sns_notification,
)

SERVICE_KEY = "ses-interop-key"
SERVICE_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
SENDER = "news@example.test"  # verified in moto
UNVERIFIED_SENDER = "nobody@example.test"  # an asset domain, but not an SES identity
SELECTOR = "ses1"
CERT_PATH = "/SimpleNotificationService-0000000000000000000000.pem"
CONFIG_SET = "postern-events"


def addr(tag: str) -> str:
    """A recipient nobody else uses (suppression is per address)."""
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.org"


# --------------------------------------------------------------------------- environment


class SesEnv:
    """A running postern whose asset routes through ``proxy`` to moto's SES."""

    def __init__(self, daemon: Daemon, hook: WebhookReceiver, proxy: RecordingProxy, moto: MotoServer,
                 signer: SnsSigner, cert_url: str):
        self.daemon = daemon
        self.hook = hook
        self.proxy = proxy
        self.moto = moto
        self.signer = signer
        self.cert_url = cert_url

    # -- outbound
    def api_send(self, body: dict):
        req = urllib.request.Request(
            f"{self.daemon.http_base}/v2/messages",
            data=json.dumps(body).encode(),
            headers={"key": SERVICE_KEY, "content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def send(self, to: list[str], subject: str, sender: str = SENDER, **extra) -> str:
        """One email (multipleToRecipients) to ``to``; returns its tid."""
        body = {
            "channel": "email",
            "from": sender,
            "to": [{"email": list(to), "correlationId": "c-ses"}],
            "multipleToRecipients": True,
            "content": {"type": "text", "subject": subject, "text": "Hello from postern via SES.\n"},
            "callbackData": "cb-ses",
        }
        body.update(extra)
        status, answer = self.api_send(body)
        assert status == 202, (status, answer)
        assert answer["code"] == "1001", answer
        assert len(answer["messages"]) == 1, answer
        return answer["messages"][0]["tid"]

    def submitted(self, to: list[str]) -> "Sent":
        """Sends, waits for 7501 for every recipient, returns the tid and SES's MessageId."""
        subject = unique("SES")
        tid = self.send(to, subject)
        self.wait_notes(tid, "7501", len(to))
        msgs = self.moto.raw_messages_with(subject)
        assert len(msgs) == 1, f"moto holds {len(msgs)} messages with subject {subject!r}"
        return Sent(tid, msgs[0]["id"], subject, list(to))

    # -- notifications
    def notes(self, tid: str | None = None, code: str | None = None, destination: str | None = None) -> list[dict]:
        out = []
        for h in self.hook.all(path="/dlr", ok_only=True):
            n = h.json["deliveryInfoNotification"]
            info = dict(n["deliveryInfo"])
            info.update(transid=n.get("transid"), correlationid=n.get("correlationid"),
                        callbackData=n.get("callbackData"), event_id=h.header("x-postern-event-id"))
            if tid is not None and info["transid"] != tid:
                continue
            if code is not None and info["code"] != code:
                continue
            if destination is not None and info["destination"] != destination:
                continue
            out.append(info)
        return out

    def wait_notes(self, tid: str, code: str, n: int = 1, timeout: float = 30.0) -> list[dict]:
        def enough():
            got = self.notes(tid, code)
            return got if len(got) >= n else None

        try:
            return wait_for(enough, timeout, message=f"{n} x {code} for tid {tid}")
        except AssertionError as e:
            raise AssertionError(f"{e}; notifications of this tid: {self.notes(tid)}") from None

    def settle(self, timeout: float = 20.0):
        """Waits until every webhook event the daemon has enqueued has been delivered."""
        wait_for(lambda: self.daemon.metric("postern_webhook_backlog") == 0, timeout,
                 message="webhook outbox drained")

    def suppressions(self) -> dict[str, dict]:
        status, body = self.daemon.admin("GET", "/admin/suppressions?asset=a_demo")
        assert status == 200, (status, body)
        return {e["address"]: e for e in body["suppressions"]}

    # -- SNS
    def notification(self, event: dict, version: str = "2", **kw) -> dict:
        return sns_notification(event, self.signer, self.cert_url, version, **kw)

    def post_event(self, event: dict, version: str = "2", **kw):
        status, body, raw = post_sns(self.daemon, self.notification(event, version, **kw))
        return status, raw


class Sent:
    def __init__(self, tid, message_id, subject, to):
        self.tid = tid
        self.message_id = message_id
        self.subject = subject
        self.to = to

    def mail(self, form: str = "event") -> dict:
        return ses_mail(self.message_id, self.to, self.subject, form=form)


def ses_sections(hook, proxy, trust_prefixes, *, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                 configuration_set=None, queue=None, topic_arns=(TOPIC_ARN,)):
    """What `make_config` needs for an asset on the SES route and the `[ses]` table."""
    return dict(
        asset={
            "route": {
                "kind": "ses",
                "region": REGION,
                "access_key_id": access_key,
                "secret_access_key": secret_key,
                "endpoint": proxy.base,
                "configuration_set": configuration_set,
            },
            "dkim": {"selector": SELECTOR, "algorithm": "rsa-sha256"},
        },
        services=[{"id": "svc_ses", "key": SERVICE_KEY, "secret": SERVICE_SECRET, "tps": 100,
                   "assets": ["a_demo"]}],
        ses={"topic_arns": list(topic_arns), "trust_url_prefixes": list(trust_prefixes)},
        queue=queue,
    )


def published_records(config_path):
    out = subprocess.run(
        [str(postern_bin()), "domain", "records", "example.test", "--format", "json", "--config", str(config_path)],
        check=True, capture_output=True, text=True,
    )
    return {r["purpose"]: r for r in json.loads(out.stdout)}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    m = MotoServer(tmp_path_factory.mktemp("moto"))
    m.start()
    try:
        # moto refuses a sender that is not a verified identity (MessageRejected).
        m.client("sesv2").create_email_identity(EmailIdentity=SENDER)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def sns():
    """The tests' SNS: a signing key and the trusted server that publishes its certificate
    (and answers SubscribeURLs)."""
    signer = SnsSigner()
    files = FileServer("127.0.0.1").start()
    cert_url = files.serve(CERT_PATH, "application/x-x509-ca-cert", signer.cert_pem)
    yield signer, files, cert_url
    files.stop()


@pytest.fixture(scope="module")
def untrusted():
    """An HTTP server on 127.0.0.2, outside trust_url_prefixes, publishing the same
    (valid) certificate: only the trust policy can refuse it."""
    files = FileServer("127.0.0.2").start()
    yield files
    files.stop()


@pytest.fixture(scope="module")
def module_env(moto, sns, tmp_path_factory):
    signer, files, cert_url = sns
    hook = WebhookReceiver().start()
    proxy = RecordingProxy(moto.port).start()
    workdir = tmp_path_factory.mktemp("postern-ses")
    smtp_port, http_port = free_port(), free_port()
    text = make_config(data_dir=workdir / "data", smtp_port=smtp_port, http_port=http_port, hook=hook,
                       **ses_sections(hook, proxy, [files.base]))
    daemon = Daemon(workdir, text, smtp_port, http_port)
    daemon.start()
    try:
        yield SesEnv(daemon, hook, proxy, moto, signer, cert_url)
    finally:
        try:
            daemon.stop()
        finally:
            proxy.stop()
            hook.stop()


@pytest.fixture
def env(module_env, request):
    """The shared SES daemon; its stderr is attached to the report of a failed test."""
    request.node._postern_daemons = [module_env.daemon]
    return module_env


@pytest.fixture
def make_env(postern, make_receiver, moto, sns):
    """A daemon of the test's own on the SES route (for config variants and restarts)."""
    signer, files, cert_url = sns
    proxies = []

    def make(**kw):
        hook = make_receiver()
        proxy = RecordingProxy(moto.port).start()
        proxies.append(proxy)
        daemon = postern(hook, **ses_sections(hook, proxy, [files.base], **kw))
        return SesEnv(daemon, hook, proxy, moto, signer, cert_url)

    yield make
    for p in proxies:
        p.stop()


# --------------------------------------------------------------------------- outbound


def test_send_reaches_ses_dkim_signed_with_every_recipient_and_7501(env):
    to, cc, bcc = [addr("ann"), addr("bob")], addr("carol"), addr("dave")
    everyone = sorted(to + [cc, bcc])
    subject = unique("SES outbound")
    tid = env.send(to, subject, cc=[cc], bcc=[bcc], options={"fromName": "Postern News"},
                   content={"type": "html", "subject": subject, "text": "Hallo Ann",
                            "html": "<p>Hallo <b>Ann</b></p>"})

    notes = env.wait_notes(tid, "7501", 4)
    assert sorted(n["destination"] for n in notes) == everyone, "one 7501 per recipient, cc and bcc included"
    for n in notes:
        assert n["deliveryStatus"] == "Submitted"
        assert n["deliveryChannel"] == "email"
        assert n["correlationid"] == "c-ses"
        assert n["callbackData"] == "cb-ses"

    # The request postern made, as the proxy saw it.
    sends = env.proxy.sends_with(subject)
    assert len(sends) == 1, f"one SendEmail call for one tid, got {sends}"
    ex = sends[0]
    assert (ex.method, ex.path, ex.status) == ("POST", "/v2/email/outbound-emails", 200)
    auth = ex.headers["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"), auth
    assert f"/{REGION}/ses/aws4_request" in auth, auth
    assert sigv4_signature_ok(ex, ACCESS_KEY, SECRET_KEY), "botocore does not reproduce the SigV4 signature"
    assert not sigv4_signature_ok(ex, ACCESS_KEY, "not-the-secret"), "the SigV4 check really checks"
    req = ex.json
    assert req["FromEmailAddress"] == SENDER
    assert sorted(req["Destination"]["ToAddresses"]) == everyone
    assert "ConfigurationSetName" not in req, "no configuration_set configured"
    raw = base64.b64decode(req["Content"]["Raw"]["Data"])

    # What moto's SES stored.
    msgs = env.moto.raw_messages_with(subject)
    assert len(msgs) == 1
    stored = msgs[0]
    assert stored["id"] == ex.response_json["MessageId"]
    assert stored["source"] == SENDER
    assert set(everyone) <= set(stored["destinations"])
    assert stored["raw_data"].encode() == raw

    head = raw.split(b"\r\n\r\n", 1)[0]
    assert bcc.encode() not in raw, "a Bcc recipient must not appear in the message"
    assert b"Postern News" in head and SENDER.encode() in head
    assert b"DKIM-Signature:" in head

    records = published_records(env.daemon.config_path)
    dkim_record = records["dkim"]
    assert dkim_record["name"] == f"{SELECTOR}._domainkey.example.test"

    def dnsfunc(name, timeout=5):
        return dkim_record["value"].encode() if name == (dkim_record["name"] + ".").encode() else b""

    assert dkim.verify(raw, dnsfunc=dnsfunc), "dkimpy refused the signature of what SES received"
    assert not dkim.verify(raw.replace(b"Hallo", b"Hullo", 1), dnsfunc=dnsfunc)


def test_configuration_set_is_passed_to_ses(make_env):
    e = make_env(configuration_set=CONFIG_SET)
    subject = unique("SES config set")
    tid = e.send([addr("cs")], subject)
    e.wait_notes(tid, "7501")
    (ex,) = e.proxy.sends_with(subject)
    assert ex.json["ConfigurationSetName"] == CONFIG_SET


def test_unverified_sender_is_refused_with_7592_carrying_ses_text(env):
    rcpt = addr("unverified")
    subject = unique("SES unverified")
    tid = env.send([rcpt], subject, sender=UNVERIFIED_SENDER)
    (note,) = env.wait_notes(tid, "7592")
    assert note["deliveryStatus"] == "Failed"
    assert note["destination"] == rcpt
    text = f"{note.get('Description', '')} {note.get('additionalInfo', '')}"
    assert f"Did not have authority to send from email {UNVERIFIED_SENDER}" in text, note
    env.settle()
    assert [n["code"] for n in env.notes(tid)] == ["7592"], "no 7501 for a refused message"
    calls = env.proxy.sends_with(subject)
    assert [c.status for c in calls] == [400], f"MessageRejected is permanent: not retried ({calls})"
    assert calls[0].json["FromEmailAddress"] == UNVERIFIED_SENDER
    assert env.moto.raw_messages_with(subject) == []


def test_other_permanent_ses_error_gives_7592(make_env):
    e = make_env(queue={"retry_base": 1})
    text = "Mail-From domain example.test is not verified."
    e.proxy.inject(400, "MailFromDomainNotVerifiedException", text)
    rcpt = addr("mailfrom")
    subject = unique("SES permanent")
    tid = e.send([rcpt], subject)
    (note,) = e.wait_notes(tid, "7592")
    assert note["deliveryStatus"] == "Failed" and note["destination"] == rcpt
    assert text in f"{note.get('Description', '')} {note.get('additionalInfo', '')}", note
    e.settle()
    assert [c.status for c in e.proxy.sends_with(subject)] == [400], "a permanent error is not retried"
    assert [n["code"] for n in e.notes(tid)] == ["7592"]
    assert e.moto.raw_messages_with(subject) == []


def test_throttling_and_server_errors_are_retried_then_submitted(make_env):
    e = make_env(queue={"retry_base": 1})
    e.proxy.inject(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
    e.proxy.inject(503, "ServiceUnavailable", "Service is unavailable. Please try again later.")
    rcpt = addr("throttled")
    subject = unique("SES throttled")
    tid = e.send([rcpt], subject)
    e.wait_notes(tid, "7501", timeout=30)
    calls = e.proxy.sends_with(subject)
    assert [(c.status, c.injected) for c in calls] == [(429, True), (503, True), (200, False)], calls
    e.settle()
    assert [n["code"] for n in e.notes(tid)] == ["7501"], "no notification for the deferred attempts"
    assert len(e.moto.raw_messages_with(subject)) == 1


def test_sigv4_credentials_are_checked_by_moto_iam(make_env, moto):
    """moto in IAM mode: the right key is accepted (7501), a wrong secret gets 403
    SignatureDoesNotMatch, which postern retries without any notification."""
    iam = moto.client("iam")
    user = f"postern-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="send", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["ses:SendEmail", "ses:SendRawEmail"], "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    wrong = ("X" if secret[0] != "X" else "Y") + secret[1:]
    good = make_env(access_key=key_id, secret_key=secret)
    bad = make_env(access_key=key_id, secret_key=wrong, queue={"retry_base": 1})

    previous = moto.set_auth("0")
    try:
        subject = unique("SES iam ok")
        tid = good.send([addr("iam")], subject)
        good.wait_notes(tid, "7501")
        (ex,) = good.proxy.sends_with(subject)
        assert ex.status == 200 and sigv4_signature_ok(ex, key_id, secret)
        assert len(moto.raw_messages_with(subject)) == 1

        subject = unique("SES iam wrong secret")
        tid = bad.send([addr("iam-bad")], subject)
        wait_for(lambda: len(bad.proxy.sends_with(subject)) >= 2, 20,
                 message="a SendEmail refused with 403 is tried again")
        calls = bad.proxy.sends_with(subject)
        assert all(c.status == 403 for c in calls), calls
        assert b"SignatureDoesNotMatch" in calls[0].response_body
        assert sigv4_signature_ok(calls[0], key_id, wrong), "signed with the configured (wrong) secret"
        bad.settle()
        assert bad.notes(tid) == [], "403 is transient: no 7501 and no 7592"
        assert moto.raw_messages_with(subject) == []
    finally:
        moto.set_auth(previous)


# --------------------------------------------------------------------------- SES events


@pytest.mark.parametrize("version", ["1", "2"])
def test_delivery_event_gives_7500_per_recipient(env, version):
    s = env.submitted([addr("dl1"), addr("dl2")])
    status, raw = env.post_event(delivery_event(s.mail(), s.to, "250 2.6.0 Message received"), version)
    assert status == 200, raw
    notes = env.wait_notes(s.tid, "7500", 2)
    assert sorted(n["destination"] for n in notes) == sorted(s.to)
    for n in notes:
        assert n["deliveryStatus"] == "Delivered"
        assert n["Description"] == "Delivered"
        assert n["additionalInfo"] == "250 2.6.0 Message received"
        assert n["correlationid"] == "c-ses" and n["callbackData"] == "cb-ses"


BOUNCES = [
    # bounceType, bounceSubType, Description, status, diagnosticCode, on the bounce list
    ("Permanent", "General", "Permanent_General", "5.1.1", "smtp; 550 5.1.1 user unknown", True),
    ("Permanent", "NoEmail", "Permanent_NoEmail", "5.1.1",
     "smtp; 550 5.1.1 <jane@example.org>... No such user", True),
    ("Permanent", "Suppressed", "Permanent_Suppressed", "5.1.1",
     "Amazon SES has suppressed sending to this address because it has a recent history of bouncing "
     "as an invalid address.", True),
    ("Permanent", "OnAccountSuppressionList", "Permanent_Suppressed", "5.1.1",
     "Amazon SES did not send the message to this address because it is on the suppression list "
     "for your account.", True),
    ("Transient", "General", "Transient_General", "4.4.7", "smtp; 421 4.4.7 Message expired", False),
    ("Undetermined", "Undetermined", "Transient_General", "5.0.0", "smtp; 554 5.0.0 Service unavailable", False),
    ("Transient", "MailboxFull", "Transient_MailboxFull", "5.2.2", "smtp; 552 5.2.2 Mailbox full", False),
    ("Transient", "MessageTooLarge", "Transient_MessageTooLarge", "5.3.4",
     "smtp; 552 5.3.4 Message size exceeds fixed limit", False),
    ("Transient", "ContentRejected", "Transient_ContentRejected", "5.7.1",
     "smtp; 550 5.7.1 Message rejected because of its content", False),
    ("Transient", "AttachmentRejected", "Transient_AttachmentRejected", "5.7.1",
     "smtp; 550 5.7.1 Attachment type not allowed", False),
]


@pytest.mark.parametrize("btype,subtype,description,status,diag,listed", BOUNCES,
                         ids=[f"{b[0]}-{b[1]}" for b in BOUNCES])
def test_bounce_event_mapping_and_bounce_list(env, btype, subtype, description, status, diag, listed):
    rcpt = addr("bounce")
    s = env.submitted([rcpt])
    event = bounce_event(s.mail(), btype, subtype,
                         [{"emailAddress": rcpt, "action": "failed", "status": status, "diagnosticCode": diag}])
    code, raw = env.post_event(event)
    assert code == 200, raw
    (note,) = env.wait_notes(s.tid, "7520")
    assert note["destination"] == rcpt
    assert note["deliveryStatus"] == "Bounce"
    assert note["Description"] == description
    assert note["additionalInfo"] == f"{status}|failed|{diag}"

    subject = unique("SES after bounce")
    tid = env.send([rcpt], subject)
    if listed:
        entry = env.suppressions().get(rcpt)
        assert entry is not None, "a Permanent bounce puts the address on the bounce list"
        assert entry["reason"] == "bounced" and entry["assetId"] == "a_demo"
        assert entry["expires"], "bounce-list entries expire (retention_days)"
        (again,) = env.wait_notes(tid, "7240")
        assert again["Description"] == f"already bounced : {rcpt}"
        assert again["deliveryStatus"] == "Failed"
        assert env.proxy.sends_with(subject) == [], "a suppressed recipient never reaches SES"
    else:
        assert rcpt not in env.suppressions(), f"a {btype} bounce does not suppress"
        env.wait_notes(tid, "7501")


def test_bounce_event_with_several_recipients(env):
    first, second, spared = addr("multi1"), addr("multi2"), addr("spared")
    s = env.submitted([first, second, spared])
    recipients = [
        {"emailAddress": first, "action": "failed", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 no such user"},
        {"emailAddress": second, "action": "failed", "status": "5.1.2", "diagnosticCode": "smtp; 550 5.1.2 bad domain"},
    ]
    code, raw = env.post_event(bounce_event(s.mail(), "Permanent", "NoEmail", recipients), version="1")
    assert code == 200, raw
    notes = env.wait_notes(s.tid, "7520", 2)
    by = {n["destination"]: n for n in notes}
    assert set(by) == {first, second}
    assert by[first]["additionalInfo"] == "5.1.1|failed|smtp; 550 5.1.1 no such user"
    assert by[second]["additionalInfo"] == "5.1.2|failed|smtp; 550 5.1.2 bad domain"
    assert {n["Description"] for n in notes} == {"Permanent_NoEmail"}
    listed = env.suppressions()
    assert listed[first]["reason"] == listed[second]["reason"] == "bounced"
    assert spared not in listed
    env.settle()
    assert len(env.notes(s.tid, "7520")) == 2


@pytest.mark.parametrize("feedback,description", [("abuse", "abuse"), (None, "other")])
def test_complaint_event_gives_7521_and_suppresses(env, feedback, description):
    complainer, other = addr("complainer"), addr("quiet")
    s = env.submitted([complainer, other])
    code, raw = env.post_event(complaint_event(s.mail(), [complainer], feedback))
    assert code == 200, raw
    (note,) = env.wait_notes(s.tid, "7521")
    assert note["destination"] == complainer
    assert note["deliveryStatus"] == "Complaint"
    assert note["Description"] == description
    entry = env.suppressions().get(complainer)
    assert entry is not None and entry["reason"] == "complained"
    assert entry["expires"] is None, "complaints are kept until removed"
    assert other not in env.suppressions()

    subject = unique("SES after complaint")
    tid = env.send([complainer], subject)
    (again,) = env.wait_notes(tid, "7241")
    assert again["Description"] == f"unsubscribed : {complainer}"
    assert env.proxy.sends_with(subject) == []
    env.settle()
    assert [n["destination"] for n in env.notes(s.tid, "7521")] == [complainer], "only the complainer"


def test_open_event_gives_7502_for_the_first_destination(env):
    s = env.submitted([addr("reader"), addr("second")])
    ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60"
    code, raw = env.post_event(open_event(s.mail(), ua))
    assert code == 200, raw
    (note,) = env.wait_notes(s.tid, "7502")
    assert note["destination"] == s.to[0]
    assert note["deliveryStatus"] == "Read"
    assert note["Description"] == "Read"
    assert note["additionalInfo"] == ua
    env.settle()
    assert len(env.notes(s.tid, "7502")) == 1


def test_click_event_gives_7528(env):
    s = env.submitted([addr("clicker")])
    link = "https://example.org/pricing?plan=pro&utm_source=ses"
    ua = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/60.0.3112.90 Safari/537.36")
    code, raw = env.post_event(click_event(s.mail(), link, "198.51.100.7", ua), version="1")
    assert code == 200, raw
    (note,) = env.wait_notes(s.tid, "7528")
    assert note["destination"] == s.to[0]
    assert note["deliveryStatus"] == "Clicked"
    assert note["Description"] == f"{link}|198.51.100.7"
    assert note["additionalInfo"] == ua


def test_identity_notification_form_is_accepted(env):
    """SES's older identity notifications: `notificationType`, a Subject in the SNS
    message (part of the string to sign), SignatureVersion 1."""
    delivered, bounced, complained = addr("id-dl"), addr("id-bo"), addr("id-co")
    s = env.submitted([delivered, bounced, complained])
    mail = s.mail(form="notification")
    events = [
        delivery_event(mail, [delivered], "250 ok:  Message 64111812 accepted", form="notification"),
        bounce_event(mail, "Permanent", "General", [{
            "emailAddress": bounced, "action": "failed", "status": "5.1.1",
            "diagnosticCode": f"smtp; 550 5.1.1 <{bounced}>... User unknown"}], form="notification"),
        complaint_event(mail, [complained], None, form="notification"),
    ]
    for ev in events:
        code, raw = env.post_event(ev, version="1", subject="Amazon SES Email Event Notification")
        assert code == 200, raw
    assert [n["destination"] for n in env.wait_notes(s.tid, "7500")] == [delivered]
    (b,) = env.wait_notes(s.tid, "7520")
    assert (b["destination"], b["Description"]) == (bounced, "Permanent_General")
    assert b["additionalInfo"] == f"5.1.1|failed|smtp; 550 5.1.1 <{bounced}>... User unknown"
    (c,) = env.wait_notes(s.tid, "7521")
    assert (c["destination"], c["Description"]) == (complained, "other")
    wait_for(lambda: env.suppressions().get(bounced), 10, message="bounced address listed")
    assert env.suppressions()[bounced]["reason"] == "bounced"


def test_event_for_an_unknown_message_id_is_acknowledged_without_webhook(env):
    rcpt = addr("stranger")
    mail = ses_mail("010001812345abcd-deadbeef-0000-4000-8000-000000000000-000000", [rcpt], "not ours")
    for ev in (delivery_event(mail, [rcpt]),
               bounce_event(mail, "Permanent", "General", [{
                   "emailAddress": rcpt, "action": "failed", "status": "5.1.1",
                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}])):
        code, raw = env.post_event(ev)
        assert code == 200, raw
    env.settle()
    assert [n for n in env.notes() if n["destination"] == rcpt] == []


def test_the_same_sns_message_twice_is_processed_once(env):
    s = env.submitted([addr("dup")])
    msg = env.notification(delivery_event(s.mail(), s.to))
    first = post_sns(env.daemon, msg)
    second = post_sns(env.daemon, msg)
    assert (first[0], second[0]) == (200, 200), (first, second)
    env.wait_notes(s.tid, "7500")
    env.settle()
    assert len(env.notes(s.tid, "7500")) == 1, "an SNS retry of one MessageId is one event"


def test_other_ses_event_types_are_acknowledged_and_ignored(env):
    """SES also publishes Send and DeliveryDelay events; SNS retries anything but 2xx."""
    s = env.submitted([addr("other-types")])
    send_ev = {"eventType": "Send", "mail": s.mail(), "send": {}}
    delay_ev = {"eventType": "DeliveryDelay", "mail": s.mail(), "deliveryDelay": {
        "timestamp": s.mail()["timestamp"], "delayType": "TransientCommunicationFailure",
        "expirationTime": s.mail()["timestamp"], "delayedRecipients": [{
            "emailAddress": s.to[0], "status": "4.4.1", "diagnosticCode": "smtp; 421 4.4.1 Unable to connect"}]}}
    for ev in (send_ev, delay_ev):
        code, raw = env.post_event(ev)
        assert code == 200, raw
    env.settle()
    assert [n["code"] for n in env.notes(s.tid)] == ["7501"]


def test_an_ses_route_with_an_empty_topic_list_is_refused_at_start(postern, make_receiver, sns):
    """With no topic listed, any topic's subscription would be confirmed: the configuration
    is refused (check-config and serve), naming the key, instead of accepting every topic."""
    signer, files, cert_url = sns

    class NoProxy:
        base = "http://127.0.0.1:9/"

    hook = make_receiver()
    daemon = postern(hook, start=False, **ses_sections(hook, NoProxy, [files.base], topic_arns=()))
    for command in ("check-config", "serve"):
        out = subprocess.run([str(postern_bin()), command, "--config", str(daemon.config_path)],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert out.returncode != 0, f"{command} accepted an SES route without ses.topic_arns"
        assert "ses.topic_arns" in out.stderr, f"{command}: {out.stderr}"


# --------------------------------------------------------------------------- subscriptions


def confirm_url(files: FileServer, token: str, topic: str = TOPIC_ARN) -> str:
    # As SNS writes it: the ARN's colons are not percent-encoded.
    return f"{files.base}?Action=ConfirmSubscription&TopicArn={topic}&Token={token}"


@pytest.mark.parametrize("version", ["1", "2"])
def test_subscription_confirmation_fetches_subscribe_url_once(env, sns, version):
    signer, files, cert_url = sns
    token = uuid.uuid4().hex * 4
    url = confirm_url(files, token)
    msg = sns_confirmation("SubscriptionConfirmation", url, token, signer, cert_url, version)
    status, _, raw = post_sns(env.daemon, msg)
    assert status == 200, raw
    fetched = files.fetched(f"/?Action=ConfirmSubscription&TopicArn={TOPIC_ARN}&Token={token}")
    assert len(fetched) == 1, f"SubscribeURL fetched {len(fetched)} times before the answer"
    assert fetched[0].path == url[len(files.base) - 1:]


SUBSCRIBE_REFUSALS = ["untrusted-host", "userinfo-trick", "signed-by-another-key", "url-changed-after-signing"]


@pytest.mark.parametrize("case", SUBSCRIBE_REFUSALS)
def test_subscription_confirmation_that_must_not_be_fetched(env, sns, untrusted, case):
    signer, files, cert_url = sns
    token = uuid.uuid4().hex * 4
    url = confirm_url(files, token)
    if case == "untrusted-host":
        url = confirm_url(untrusted, token)
    elif case == "userinfo-trick":
        url = f"{files.base[:-1]}@127.0.0.2:{untrusted.port}/?Action=ConfirmSubscription&TopicArn={TOPIC_ARN}&Token={token}"
    msg = sns_confirmation("SubscriptionConfirmation", url, token,
                           SnsSigner() if case == "signed-by-another-key" else signer, cert_url)
    if case == "url-changed-after-signing":
        msg["SubscribeURL"] = confirm_url(files, token + "0")
    connections = untrusted.connections
    status, body, raw = post_sns(env.daemon, msg)
    if case in ("signed-by-another-key", "url-changed-after-signing"):
        assert status == 403, (status, raw)
    else:
        assert 400 <= status < 500, (status, raw)
    assert body is not None and set(body) >= {"code", "description"}, raw
    assert untrusted.connections == connections, "the daemon connected to an untrusted host"
    assert [f for f in files.fetched() if token in f.path] == [], "a refused SubscribeURL was fetched"


def test_subscription_to_an_unlisted_topic_is_refused(env, sns):
    signer, files, cert_url = sns
    token = uuid.uuid4().hex * 4
    msg = sns_confirmation("SubscriptionConfirmation", confirm_url(files, token, OTHER_TOPIC_ARN), token,
                           signer, cert_url, topic=OTHER_TOPIC_ARN)
    status, _, raw = post_sns(env.daemon, msg)
    assert status == 403, (status, raw)
    assert files.fetched(f"/?Action=ConfirmSubscription&TopicArn={OTHER_TOPIC_ARN}") == []


def test_unsubscribe_confirmation_is_acknowledged_and_not_fetched(env, sns):
    signer, files, cert_url = sns
    token = uuid.uuid4().hex * 4
    msg = sns_confirmation("UnsubscribeConfirmation", confirm_url(files, token), token, signer, cert_url)
    status, _, raw = post_sns(env.daemon, msg)
    assert status == 200, raw
    assert [f for f in files.fetched() if token in f.path] == []


# --------------------------------------------------------------------------- forgeries


def _tampered(env, msg, ctx):
    msg["Message"] = msg["Message"].replace("Permanent", "Transient", 1)
    return msg


def _unsigned(env, msg, ctx):
    del msg["Signature"]
    return msg


def _untrusted_cert(env, msg, ctx):
    msg["SigningCertURL"] = ctx["untrusted"].serve(CERT_PATH, "application/x-x509-ca-cert", env.signer.cert_pem)
    return env.signer.sign(msg, "2")


def _cert_url_userinfo_sns(env, msg, ctx):
    # A check that only looks at how the URL starts would take this for an SNS host.
    msg["SigningCertURL"] = f"https://sns.{REGION}.amazonaws.com@127.0.0.2:{ctx['untrusted'].port}{CERT_PATH}"
    return env.signer.sign(msg, "2")


def _cert_url_userinfo_prefix(env, msg, ctx):
    trusted = env.cert_url.split(CERT_PATH)[0]  # http://127.0.0.1:<port>
    msg["SigningCertURL"] = f"{trusted}@127.0.0.2:{ctx['untrusted'].port}{CERT_PATH}"
    return env.signer.sign(msg, "2")


def _other_key(env, msg, ctx):
    return SnsSigner().sign(msg, "2")  # certificate URL still names the trusted certificate


def _version_3(env, msg, ctx):
    msg["SignatureVersion"] = "3"
    return msg


def _unlisted_topic(env, msg, ctx):
    msg["TopicArn"] = OTHER_TOPIC_ARN
    return env.signer.sign(msg, "2")


def _stale_timestamp(env, msg, ctx):
    # A genuine message replayed two hours later: the signature still verifies.
    msg["Timestamp"] = iso_now(-2 * 3600)
    return env.signer.sign(msg, "2")


def _future_timestamp(env, msg, ctx):
    msg["Timestamp"] = iso_now(3600)
    return env.signer.sign(msg, "2")


def _cert_url_not_a_region(env, msg, ctx):
    # sns.<something>.amazonaws.com where <something> is no region: S3 serves anyone's files.
    msg["SigningCertURL"] = f"https://sns.s3.amazonaws.com{CERT_PATH}"
    return env.signer.sign(msg, "2")


def _missing_message_id(env, msg, ctx):
    del msg["MessageId"]
    return msg


def _not_json(env, msg, ctx):
    return ("Type=Notification&Message=" + msg["Message"]).encode()


REFUSALS = [
    # name, mutation, acceptable statuses
    ("tampered-message", _tampered, {403}),
    ("unsigned", _unsigned, {403}),
    ("untrusted-cert-url", _untrusted_cert, {403}),
    ("cert-url-userinfo-sns-host", _cert_url_userinfo_sns, {403}),
    ("cert-url-userinfo-trusted-prefix", _cert_url_userinfo_prefix, {403}),
    ("signed-by-another-key", _other_key, {403}),
    ("signature-version-3", _version_3, {403}),
    ("topic-not-allowed", _unlisted_topic, {403}),
    ("timestamp-two-hours-old", _stale_timestamp, {403}),
    ("timestamp-an-hour-ahead", _future_timestamp, {403}),
    ("cert-url-host-not-a-region", _cert_url_not_a_region, {403}),
    ("missing-message-id", _missing_message_id, {400}),
    ("body-not-json", _not_json, {400}),
]


@pytest.mark.parametrize("name,mutate,statuses", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_sns_message_changes_nothing(env, untrusted, name, mutate, statuses):
    rcpt = addr("forged")
    s = env.submitted([rcpt])
    event = bounce_event(s.mail(), "Permanent", "General", [{
        "emailAddress": rcpt, "action": "failed", "status": "5.1.1",
        "diagnosticCode": "smtp; 550 5.1.1 user unknown"}])
    connections = untrusted.connections
    msg = mutate(env, env.notification(event, "2"), {"untrusted": untrusted})
    status, body, raw = post_sns(env.daemon, msg, "Notification")
    assert status in statuses, f"{name}: answered {status} {raw[:300]!r}, expected one of {sorted(statuses)}"
    if body is not None:
        assert set(body) >= {"code", "description"}, f"errors are JSON {{code, description}}: {raw!r}"
    assert untrusted.connections == connections, f"{name}: the daemon connected to an untrusted host"
    env.settle()
    assert [n["code"] for n in env.notes(s.tid)] == ["7501"], f"{name}: a refused message made an event"
    assert rcpt not in env.suppressions(), f"{name}: a refused message suppressed the address"

    # Positive control: the same event, genuinely signed, does act.
    code, raw = env.post_event(event)
    assert code == 200, raw
    (note,) = env.wait_notes(s.tid, "7520")
    assert note["Description"] == "Permanent_General"


# --------------------------------------------------------------------------- durability


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_message_id_mapping_survives_a_restart(make_env, how):
    e = make_env()
    s = e.submitted([addr("restart")])
    if how == "sigterm":
        e.daemon.restart()
    else:
        e.daemon.kill()
        e.daemon.start()
    code, raw = e.post_event(delivery_event(s.mail(), s.to, "250 2.0.0 OK 1700000000 x"))
    assert code == 200, raw
    (note,) = e.wait_notes(s.tid, "7500")
    assert note["additionalInfo"] == "250 2.0.0 OK 1700000000 x"
    e.settle()
    # Webhooks are at-least-once: after kill -9 the 7501 may be POSTed again, but as the
    # same event (same X-Postern-Event-Id); the message itself is not submitted again.
    assert len({n["event_id"] for n in e.notes(s.tid, "7501")}) == 1, "one Submitted event"
    assert len(e.proxy.sends_with(s.subject)) == 1, "the restart did not submit the message again"
