"""Outbound interoperability: postern's Messaging API -> queue -> DKIM -> a real aiosmtpd
smarthost, with dkimpy (an independent implementation) verifying the signature against
the DNS record that `postern domain records` prints, and the delivery notifications
arriving at a real HTTP receiver."""

import json
import subprocess
import threading
import urllib.request

import dkim
import pytest
from aiosmtpd.controller import Controller

from conftest import Daemon, free_port, postern_bin, wait_for

SERVICE_KEY = "interop-key"


class Relay:
    """aiosmtpd smarthost: records envelopes; `reject*` recipients get 550 5.1.1."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"


@pytest.fixture
def relay():
    r = Relay()
    r.controller.start()
    yield r
    r.controller.stop()


def outbound_config(workdir, smtp_port, http_port, hook, relay_port, algorithm):
    return f"""
[server]
hostname = "mx.example.test"
data_dir = "{workdir / 'data'}"
public_url = "http://127.0.0.1:{http_port}"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[http]
listen = "127.0.0.1:{http_port}"
[admin]
token = "admin"
[dns]
resolver = "off"
[[service]]
id = "svc_interop"
key = "{SERVICE_KEY}"
secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
tps = 100
assets = ["a_out"]
[[asset]]
id = "a_out"
domains = ["example.test"]
delivery_webhook = "{hook.base}/dlr"
[asset.route]
kind = "smtp"
host = "127.0.0.1"
port = {relay_port}
security = "none"
auth = "none"
[asset.dkim]
selector = "interop1"
algorithm = "{algorithm}"
"""


def published_records(config_path):
    out = subprocess.run(
        [str(postern_bin()), "domain", "records", "example.test", "--format", "json", "--config", str(config_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return {r["purpose"]: r for r in json.loads(out.stdout)}


def send(daemon, body):
    req = urllib.request.Request(
        f"{daemon.http_base}/v2/messages",
        data=json.dumps(body).encode(),
        headers={"key": SERVICE_KEY, "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_dkimpy_verifies_what_the_smarthost_received(tmp_path, make_receiver, relay, algorithm):
    hook = make_receiver()
    smtp_port, http_port = free_port(), free_port()
    text = outbound_config(tmp_path, smtp_port, http_port, hook, relay.port, algorithm)
    daemon = Daemon(tmp_path, text, smtp_port, http_port)
    # The record is printed before the daemon ever ran: the key is made on first use.
    records = published_records(daemon.config_path)
    dkim_record = records["dkim"]
    assert dkim_record["name"] == "interop1._domainkey.example.test"
    daemon.start()
    try:
        status, body = send(
            daemon,
            {
                "channel": "email",
                "from": "news@example.test",
                "to": [{"email": ["ann@example.org"], "correlationId": "c-1"}],
                "options": {"fromName": "Zoë's News"},
                "content": {
                    "type": "html",
                    "subject": "Grüße $(name)",
                    "text": "Hallo $(name)",
                    "html": "<p>Hallo <b>$(name)</b></p>",
                },
                "substitutions": {"name": "Ann"},
                "callbackData": "cb",
            },
        )
        assert status == 202 and body["code"] == "1001"
        tid = body["messages"][0]["tid"]
        wait_for(lambda: relay.messages, 30, message="smarthost received nothing")
        mail_from, rcpts, content = relay.messages[0]
        assert rcpts == ["ann@example.org"]
        assert mail_from.startswith("b-") and mail_from.endswith("@bounces.example.test")

        def dnsfunc(name, timeout=5):
            wanted = (dkim_record["name"] + ".").encode()
            return dkim_record["value"].encode() if name == wanted else b""

        assert dkim.verify(content, dnsfunc=dnsfunc), "dkimpy refused the signature"
        # A changed body must fail: the verifier really checks.
        tampered = content.replace(b"Hallo", b"Hullo", 1)
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)
        assert b"=?utf-8?" in content.lower() or b"=?UTF-8?" in content, "non-ASCII headers are RFC 2047 encoded"

        wait_for(lambda: hook.all(path="/dlr", ok_only=True), 30, message="no notification")
        note = hook.all(path="/dlr", ok_only=True)[0].json["deliveryInfoNotification"]
        assert note["transid"] == tid
        assert note["deliveryInfo"]["code"] == "7501"
        assert note["correlationid"] == "c-1"
    finally:
        daemon.stop()


def test_smarthost_rcpt_550_becomes_7520(tmp_path, make_receiver, relay):
    hook = make_receiver()
    smtp_port, http_port = free_port(), free_port()
    daemon = Daemon(tmp_path, outbound_config(tmp_path, smtp_port, http_port, hook, relay.port, "ed25519-sha256"), smtp_port, http_port)
    daemon.start()
    try:
        status, _ = send(
            daemon,
            {
                "channel": "email",
                "from": "news@example.test",
                "to": [{"email": ["reject-me@example.org"]}],
                "content": {"type": "text", "subject": "x", "text": "y"},
            },
        )
        assert status == 202
        wait_for(lambda: hook.all(path="/dlr", ok_only=True), 30, message="no notification")
        info = hook.all(path="/dlr", ok_only=True)[0].json["deliveryInfoNotification"]["deliveryInfo"]
        assert info["code"] == "7520"
        assert info["deliveryStatus"] == "Bounce"
        assert info["Description"] == "Permanent_NoEmail"
        assert info["additionalInfo"].startswith("5.1.1|failed|smtp; 550 5.1.1")
        assert relay.messages == []
    finally:
        daemon.stop()
