"""Helpers for the Amazon SES interop tests (test_ses.py): a moto server standing in for
SES, a recording proxy between postern and moto, a small HTTP server for SNS signing
certificates and SubscribeURLs, SNS message signing, SigV4 verification with botocore
and SES event JSON in the shapes of AWS's documented examples.

Nothing here talks to anything but 127.0.0.x.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import free_port, wait_for

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:postern-events"
OTHER_TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:someone-elses-topic"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def iso_now(offset_s: float = 0.0) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- moto


class MotoServer:
    """`python3 -m moto.server` on a free loopback port (standing in for SES v2 and IAM)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log_path = workdir / "moto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("AWS_") or k.startswith("MOTO_") or k == "INITIAL_NO_AUTH_ACTION_COUNT":
                env.pop(k)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        finally:
            log.close()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"moto exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base + "/moto-api/", timeout=1) as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_for(up, 30, interval=0.05, message="moto server answers GET /moto-api/")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, limit: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def client(self, service: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.base,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )

    def data(self) -> dict:
        with urllib.request.urlopen(self.base + "/moto-api/data.json", timeout=10) as r:
            return json.loads(r.read())

    def raw_messages(self) -> list[dict]:
        """Every raw message moto's SES accepted: {id, source, destinations, raw_data}."""
        return self.data().get("ses", {}).get("RawMessage", [])

    def raw_messages_with(self, needle: str) -> list[dict]:
        return [m for m in self.raw_messages() if needle in m.get("raw_data", "")]

    def set_auth(self, initial_no_auth_action_count: str):
        """"0": every later AWS request is authenticated and authorised against moto's IAM;
        "inf": none is (moto's default). Returns the previous value."""
        req = urllib.request.Request(
            self.base + "/moto-api/reset-auth",
            data=initial_no_auth_action_count.encode(),
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]


# --------------------------------------------------------------------------- recording proxy


class Exchange:
    """One request postern made to "SES" and what it was answered."""

    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = headers  # lower-cased names
        self.body = body
        self.status = None
        self.response_headers: dict = {}
        self.response_body = b""
        self.injected = False

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def response_json(self):
        try:
            return json.loads(self.response_body)
        except ValueError:
            return None

    def __repr__(self):
        return f"Exchange({self.method} {self.path} -> {self.status}{' injected' if self.injected else ''})"


class RecordingProxy:
    """An HTTP server that postern uses as its SES endpoint: it records every request and
    forwards it unchanged (Host header included, so SigV4 still verifies upstream) to
    moto, or answers with the next canned reply of ``inject``."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.exchanges: list[Exchange] = []
        self.canned: list[tuple[int, dict, bytes]] = []
        self.lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, status: int, error_type: str, message: str):
        """The next request gets this AWS REST-JSON error instead of reaching moto."""
        body = json.dumps({"message": message}).encode()
        headers = {"x-amzn-ErrorType": error_type, "Content-Type": "application/json"}
        with self.lock:
            self.canned.append((status, headers, body))

    def all(self, path_prefix: str = "/v2/email/outbound-emails") -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.path.startswith(path_prefix) and e.status is not None]

    def sends_with(self, needle: str) -> list[Exchange]:
        """Answered SendEmail calls whose raw MIME contains ``needle``."""
        out = []
        for e in self.all():
            try:
                raw = base64.b64decode(e.json["Content"]["Raw"]["Data"])
            except (ValueError, KeyError, TypeError):
                continue
            if needle.encode() in raw:
                out.append(e)
        return out

    def start(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                ex = Exchange(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with proxy.lock:
                    canned = proxy.canned.pop(0) if proxy.canned else None
                if canned is not None:
                    status, headers, rbody = canned
                    ex.injected = True
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                    try:
                        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                        for k, v in self.headers.items():
                            if k.lower() in ("connection", "keep-alive", "proxy-connection", "transfer-encoding"):
                                continue
                            conn.putheader(k, v)
                        conn.endheaders(body if body else None)
                        resp = conn.getresponse()
                        status = resp.status
                        rbody = resp.read()
                        headers = {
                            k: v
                            for k, v in resp.getheaders()
                            if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive")
                        }
                    finally:
                        conn.close()
                ex.status = status
                ex.response_headers = {k.lower(): v for k, v in headers.items()}
                ex.response_body = rbody
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() in ("server", "date"):
                        continue
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(rbody)))
                self.end_headers()
                self.wfile.write(rbody)
                with proxy.lock:
                    proxy.exchanges.append(ex)

            do_POST = _handle
            do_GET = _handle
            do_PUT = _handle
            do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None


def sigv4_signature_ok(ex: Exchange, access_key: str, secret_key: str, region: str = REGION,
                       service: str = "ses") -> bool:
    """Recomputes the SigV4 signature of a recorded request with botocore (as AWS and moto
    do: only the headers named in SignedHeaders) and compares it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = ex.headers["authorization"]

    def between(first, second):
        return auth.partition(first)[2].partition(second)[0]

    signed = between("SignedHeaders=", ",").split(";")
    given = between("Signature=", ",").strip()
    headers = {k: v for k, v in ex.headers.items() if k in signed}
    req = AWSRequest(method=ex.method, url=f"http://{ex.headers['host']}{ex.path}", data=ex.body, headers=headers)
    req.context["timestamp"] = ex.headers["x-amz-date"]
    signer = SigV4Auth(Credentials(access_key, secret_key), service, region)
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    return expected == given


# --------------------------------------------------------------------------- static HTTP server


class Fetch:
    def __init__(self, method, path, headers):
        self.method = method
        self.path = path
        self.headers = headers

    def __repr__(self):
        return f"Fetch({self.method} {self.path})"


class FileServer:
    """Serves SNS signing certificates and plays SNS's ConfirmSubscription endpoint on
    ``host`` (127.0.0.1, or 127.0.0.2 for an untrusted origin); records every request."""

    CONFIRM = (
        b'<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        b"<ConfirmSubscriptionResult><SubscriptionArn>" + TOPIC_ARN.encode() + b":1e0a7c0c"
        b"</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
    )

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port()
        self.files: dict[str, tuple[str, bytes]] = {}
        self.fetches: list[Fetch] = []
        self.connections = 0  # TCP connections accepted, HTTP or not (a TLS hello counts)
        self.lock = threading.Lock()
        self._server = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def serve(self, path: str, content_type: str, body: bytes) -> str:
        self.files[path] = (content_type, body)
        return self.base + path.lstrip("/")

    def fetched(self, path_prefix: str = "") -> list[Fetch]:
        with self.lock:
            return [f for f in self.fetches if f.path.startswith(path_prefix)]

    def start(self):
        fs = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with fs.lock:
                    fs.fetches.append(Fetch("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = self.path.split("?", 1)[0]
                if path in fs.files:
                    ctype, body = fs.files[path]
                else:
                    ctype, body = "text/xml", FileServer.CONFIRM
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def get_request(self):
                conn = super().get_request()
                with fs.lock:
                    fs.connections += 1
                return conn

            def handle_error(self, request, client_address):
                pass

        self._server = Server((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --------------------------------------------------------------------------- SNS signing


class SnsSigner:
    """An RSA-2048 key with a self-signed certificate, signing SNS messages as SNS does
    (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA; PKCS#1 v1.5 over the canonical
    string)."""

    def __init__(self, common_name: str = "sns.amazonaws.com"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def string_to_sign(msg: dict) -> bytes:
        if msg["Type"] == "Notification":
            keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        out = []
        for k in keys:
            if k == "Subject" and msg.get("Subject") is None:
                continue
            out.append(f"{k}\n{msg[k]}\n")
        return "".join(out).encode("utf-8")

    def sign(self, msg: dict, version: str = "2") -> dict:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        algo = hashes.SHA1() if version == "1" else hashes.SHA256()
        sig = self.key.sign(self.string_to_sign(msg), padding.PKCS1v15(), algo)
        msg["SignatureVersion"] = version
        msg["Signature"] = base64.b64encode(sig).decode()
        return msg


def sns_notification(message, signer: SnsSigner | None, cert_url: str, version: str = "2",
                     topic: str = TOPIC_ARN, subject: str | None = None, message_id: str | None = None) -> dict:
    """An SNS HTTP(S) Notification carrying ``message`` (a dict is JSON-encoded)."""
    msg = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": message if isinstance(message, str) else json.dumps(message, separators=(",", ":")),
        "Timestamp": iso_now(),
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
        "UnsubscribeURL": (
            f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic}:1e0a7c0c"
        ),
    }
    if subject is not None:
        msg["Subject"] = subject
    if signer is not None:
        signer.sign(msg, version)
    return msg


def sns_confirmation(kind: str, subscribe_url: str, token: str, signer: SnsSigner | None, cert_url: str,
                     version: str = "2", topic: str = TOPIC_ARN) -> dict:
    """A SubscriptionConfirmation or UnsubscribeConfirmation."""
    verb = "subscribe" if kind == "SubscriptionConfirmation" else "unsubscribe"
    msg = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic,
        "Message": (
            f"You have chosen to {verb} the topic {topic}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": subscribe_url,
        "Timestamp": iso_now(),
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
    }
    if signer is not None:
        signer.sign(msg, version)
    return msg


def post_sns(daemon, msg, message_type: str | None = None, path: str = "/ses/events"):
    """POSTs an SNS message as SNS does (text/plain, x-amz-sns-* headers); returns
    (status, parsed JSON or None, raw body)."""
    if isinstance(msg, dict):
        body = json.dumps(msg).encode()
        message_type = message_type or msg.get("Type")
        headers = {
            "x-amz-sns-message-type": message_type or "Notification",
            "x-amz-sns-message-id": str(msg.get("MessageId", "")),
            "x-amz-sns-topic-arn": str(msg.get("TopicArn", "")),
        }
    else:
        body = msg
        headers = {"x-amz-sns-message-type": message_type or "Notification"}
    headers["Content-Type"] = "text/plain; charset=UTF-8"
    headers["User-Agent"] = "Amazon Simple Notification Service Agent"
    status, _, raw = daemon.http("POST", path, headers, body)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return status, parsed, raw


# --------------------------------------------------------------------------- SES events


def ses_mail(message_id: str, destination: list[str], subject: str, source: str = "news@example.test",
             form: str = "event") -> dict:
    """The ``mail`` object of an SES event (event publishing, or identity notification)."""
    headers = [
        {"name": "Received", "value": "from mx.example.test by smtp.amazonses.com with SMTP id x"},
        {"name": "From", "value": source},
        {"name": "To", "value": ", ".join(destination)},
        {"name": "Subject", "value": subject},
        {"name": "MIME-Version", "value": "1.0"},
        {"name": "Content-Type", "value": 'multipart/alternative; boundary="----=_Part_7307378_1629847660.1516840721503"'},
    ]
    mail = {
        "timestamp": iso_now(-5),
        "source": source,
        "sourceArn": f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/example.test",
        "sendingAccountId": ACCOUNT,
        "messageId": message_id,
        "destination": list(destination),
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": {
            "from": [source],
            "to": list(destination),
            "messageId": message_id,
            "subject": subject,
        },
    }
    if form == "event":
        mail["tags"] = {
            "ses:configuration-set": ["postern-events"],
            "ses:source-ip": ["192.0.2.0"],
            "ses:from-domain": ["example.test"],
            "ses:caller-identity": ["postern"],
        }
    else:
        mail["sourceIp"] = "192.0.2.0"
        mail["callerIdentity"] = "postern"
    return mail


def _wrap(kind: str, mail: dict, body_key: str, body: dict, form: str) -> dict:
    if form == "event":
        return {"eventType": kind, "mail": mail, body_key: body}
    return {"notificationType": kind, "mail": mail, body_key: body}


def delivery_event(mail: dict, recipients: list[str], smtp_response: str = "250 2.6.0 Message received",
                   form: str = "event") -> dict:
    return _wrap("Delivery", mail, "delivery", {
        "timestamp": iso_now(),
        "processingTimeMillis": 11893,
        "recipients": list(recipients),
        "smtpResponse": smtp_response,
        "reportingMTA": "a8-70.smtp-out.amazonses.com",
        "remoteMtaIp": "192.0.2.10",
    }, form)


def bounce_event(mail: dict, bounce_type: str, sub_type: str, recipients: list[dict],
                 form: str = "event") -> dict:
    """``recipients``: [{emailAddress, action, status, diagnosticCode}] as SES writes them."""
    return _wrap("Bounce", mail, "bounce", {
        "bounceType": bounce_type,
        "bounceSubType": sub_type,
        "bouncedRecipients": recipients,
        "timestamp": iso_now(),
        "feedbackId": f"0100015fb1c2d3e4-{uuid.uuid4()}-000000",
        "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        "remoteMtaIp": "192.0.2.10",
    }, form)


def complaint_event(mail: dict, recipients: list[str], feedback_type: str | None = "abuse",
                    form: str = "event") -> dict:
    body = {
        "complainedRecipients": [{"emailAddress": r} for r in recipients],
        "timestamp": iso_now(),
        "feedbackId": f"0100015fb1c2d3e4-{uuid.uuid4()}-000000",
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
        "arrivalDate": iso_now(-1),
    }
    if feedback_type is not None:
        body["complaintFeedbackType"] = feedback_type
    return _wrap("Complaint", mail, "complaint", body, form)


def open_event(mail: dict, user_agent: str, ip: str = "192.0.2.1") -> dict:
    return {"eventType": "Open", "mail": mail,
            "open": {"ipAddress": ip, "timestamp": iso_now(), "userAgent": user_agent}}


def click_event(mail: dict, link: str, ip: str, user_agent: str) -> dict:
    return {"eventType": "Click", "mail": mail, "click": {
        "ipAddress": ip,
        "link": link,
        "linkTags": {"samplekey0": ["samplevalue0"], "samplekey1": ["samplevalue1"]},
        "timestamp": iso_now(),
        "userAgent": user_agent,
    }}
