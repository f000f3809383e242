#!/usr/bin/env python3
"""Signed SNS notifications carrying SES Delivery events, for bench/ses.sh.

Needs `cryptography` (tests/interop/requirements.txt). Two steps, so that the expensive
signing happens before the benchmark script waits for a quiet machine and starts the
clock:

  sns_events.py sign --ids IDS --events N --cert-url URL --topic ARN --out DIR
      IDS has "MESSAGEID<TAB>RECIPIENT" lines (ses_stub.py's GET /ids). Generates a test
      RSA-2048 key and a self-signed certificate (DIR/cert.pem), and writes N SNS
      Notifications (DIR/notifications.txt, one "SNS-MESSAGE-ID<TAB>JSON" line each),
      SignatureVersion 2 (SHA256withRSA, PKCS#1 v1.5 over AWS's canonical string),
      SigningCertURL = URL, each carrying an SES event-publishing Delivery event for one
      MessageId of IDS (in order; N is capped at the number of ids) with
      `delivery.recipients` = its recipient, shaped like AWS's documented example.
      Signing uses every core (a process pool). Prints one JSON object.

  sns_events.py post --url URL --dir DIR --cert-port PORT [--concurrency 16]
      Serves DIR/cert.pem on 127.0.0.1:PORT (any GET path ending in .pem; fetches
      counted), then POSTs every notification to URL (postern's /ses/events) as SNS does
      (text/plain, x-amz-sns-* headers). The first one is sent alone on its own
      connection and timed separately: it makes postern fetch the certificate. The rest
      go over CONCURRENCY keep-alive connections (opened before the clock starts), each
      sending the next notification as soon as its previous answer is in (closed loop).
      Prints one JSON object: the first request's status and latency, certificate
      fetches, counts of 200s and of postern's answers ("recorded", "ignored" + first
      reason), other statuses, t_first_sent/t_last_done (time.time() of the bulk), rate,
      and p50/p90/p99/max latency (request written -> answer read) in ms. After TIMEOUT
      seconds (--timeout, default 300) it stops and reports what was answered.

Loopback (127.0.0.1) only.
"""
import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REGION = "us-east-1"
ACCOUNT = "123456789012"

# ----------------------------------------------------------------------------- signing

_KEY = None


def _init_worker(key_pem):
    global _KEY
    from cryptography.hazmat.primitives import serialization

    _KEY = serialization.load_pem_private_key(key_pem, password=None)


def string_to_sign(msg):
    out = []
    for k in ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"):
        if k == "Subject" and msg.get("Subject") is None:
            continue
        out.append(f"{k}\n{msg[k]}\n")
    return "".join(out).encode("utf-8")


def _sign_batch(msgs):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    out = []
    for m in msgs:
        sig = _KEY.sign(string_to_sign(m), padding.PKCS1v15(), hashes.SHA256())
        m["Signature"] = base64.b64encode(sig).decode()
        out.append(f"{m['MessageId']}\t{json.dumps(m)}\n")
    return out


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def delivery_event(message_id, recipient, now):
    """An SES event-publishing Delivery event (AWS's documented shape)."""
    source = "news@bench.test"
    sent = now - dt.timedelta(seconds=3)
    return {
        "eventType": "Delivery",
        "mail": {
            "timestamp": iso(sent),
            "source": source,
            "sourceArn": f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/bench.test",
            "sendingAccountId": ACCOUNT,
            "messageId": message_id,
            "destination": [recipient],
            "headersTruncated": False,
            "headers": [
                {"name": "DKIM-Signature", "value": "v=1; a=ed25519-sha256; c=relaxed/relaxed; d=bench.test; s=bench1; h=From:To:Subject:Date:Message-ID; bh=...; b=..."},
                {"name": "From", "value": source},
                {"name": "To", "value": recipient},
                {"name": "Subject", "value": "Bench"},
                {"name": "Message-ID", "value": f"<{uuid.uuid4().hex}@mx.bench.test>"},
                {"name": "MIME-Version", "value": "1.0"},
                {"name": "Content-Type", "value": "text/plain; charset=utf-8"},
            ],
            "commonHeaders": {
                "from": [source],
                "to": [recipient],
                "messageId": message_id,
                "subject": "Bench",
            },
            "tags": {
                "ses:configuration-set": ["postern-events"],
                "ses:source-ip": ["192.0.2.0"],
                "ses:from-domain": ["bench.test"],
                "ses:caller-identity": ["postern"],
                "ses:outgoing-ip": ["198.51.100.7"],
            },
        },
        "delivery": {
            "timestamp": iso(now),
            "processingTimeMillis": 2871,
            "recipients": [recipient],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "a8-70.smtp-out.amazonses.com",
            "remoteMtaIp": "192.0.2.10",
        },
    }


def cmd_sign(a):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    t0 = time.time()
    ids = []
    with open(a.ids, encoding="utf-8") as f:
        for line in f:
            mid, _, rcpt = line.rstrip("\n").partition("\t")
            if mid:
                ids.append((mid, rcpt))
    n = min(a.events, len(ids))
    os.makedirs(a.out, exist_ok=True)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("sns.amazonaws.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with open(os.path.join(a.out, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())

    msgs = []
    for mid, rcpt in ids[:n]:
        msgs.append({
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": a.topic,
            "Message": json.dumps(delivery_event(mid, rcpt, now), separators=(",", ":")),
            "Timestamp": iso(now),
            "SignatureVersion": "2",
            "SigningCertURL": a.cert_url,
            "UnsubscribeURL": (f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe"
                               f"&SubscriptionArn={a.topic}:1e0a7c0c-bench"),
        })
    workers = max(1, os.cpu_count() or 1)
    batch = max(1, (len(msgs) + workers * 4 - 1) // (workers * 4))
    batches = [msgs[i:i + batch] for i in range(0, len(msgs), batch)]
    lines = []
    if batches:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(key_pem,)) as pool:
            for out in pool.map(_sign_batch, batches):
                lines.extend(out)
    with open(os.path.join(a.out, "notifications.txt"), "w", encoding="utf-8") as f:
        f.writelines(lines)
    sizes = [len(x) for x in lines]
    print(json.dumps({
        "ids": len(ids), "events": len(lines), "capped": n < a.events,
        "sign_s": round(time.time() - t0, 3), "workers": workers,
        "avg_body_bytes": round(sum(sizes) / len(sizes)) if sizes else 0,
    }))


# ----------------------------------------------------------------------------- posting


class CertServer:
    """Serves the certificate (any path ending in .pem) and counts the fetches."""

    def __init__(self, port, pem):
        self.fetches = 0
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                ok = self.path.split("?", 1)[0].endswith(".pem")
                if ok:
                    with srv.lock:
                        srv.fetches += 1
                body = pem if ok else b"not found"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-pem-file" if ok else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def pct(vals, p):
    if not vals:
        return None
    k = min(len(vals) - 1, max(0, int(round(p / 100.0 * len(vals) + 0.5)) - 1))
    return vals[k]


async def read_response(reader):
    """-> (status, body) of one HTTP/1.1 response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        return status, b"".join(parts)
    n = int(headers.get("content-length") or 0)
    return status, (await reader.readexactly(n) if n else b"")


async def cmd_post_async(a, requests, cert):
    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port or 80
    res = {"events": len(requests), "ok": 0, "recorded": 0, "ignored": 0, "first_ignored": None,
           "statuses": {}, "errors": 0, "first_error": None}
    lat = []

    def account(status, body, dt_s):
        res["statuses"][str(status)] = res["statuses"].get(str(status), 0) + 1
        if status == 200:
            res["ok"] += 1
            lat.append(dt_s)
            if b'"status":"recorded"' in body:
                res["recorded"] += 1
            else:
                res["ignored"] += 1
                if res["first_ignored"] is None:
                    res["first_ignored"] = body[:300].decode("utf-8", "replace")
        else:
            res["errors"] += 1
            if res["first_error"] is None:
                res["first_error"] = f"{status} {body[:300].decode('utf-8', 'replace')}"

    # The first notification alone, on its own connection: postern fetches the certificate.
    first = None
    if requests and a.first_alone:
        reader, writer = await asyncio.open_connection(host, port)
        t = time.perf_counter()
        writer.write(requests[0])
        status, body = await read_response(reader)
        d = time.perf_counter() - t
        writer.close()
        first = {"status": status, "ms": round(d * 1000, 3), "body": body[:300].decode("utf-8", "replace"),
                 "cert_fetches_after": cert.fetches}
        if status == 200 and b'"status":"recorded"' in body:
            res["recorded"] += 1
        res["first_request"] = first
        requests = requests[1:]

    conns = []
    for _ in range(a.concurrency):
        conns.append(await asyncio.open_connection(host, port))
    it = iter(range(len(requests)))
    t_first = time.time()
    t_last = [t_first]

    async def worker(reader, writer):
        for i in it:
            t = time.perf_counter()
            try:
                writer.write(requests[i])
                status, body = await read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                res["errors"] += 1
                res["statuses"]["0"] = res["statuses"].get("0", 0) + 1
                if res["first_error"] is None:
                    res["first_error"] = f"connection: {e!r}"
                reader, writer = await asyncio.open_connection(host, port)
                continue
            account(status, body, time.perf_counter() - t)
            t_last[0] = time.time()
        writer.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(r, w) for r, w in conns)), a.timeout)
    except asyncio.TimeoutError:
        res["timed_out"] = True
        res["errors"] += len(requests) - res["ok"] - res["errors"]
        if res["first_error"] is None:
            res["first_error"] = f"not all answered within {a.timeout} s"
    wall = t_last[0] - t_first
    lat.sort()
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    res.update({
        "bulk": len(requests), "concurrency": a.concurrency,
        "t_first_sent": t_first, "t_last_done": t_last[0], "wall_s": round(wall, 3),
        "rps": round(res["ok"] / wall, 1) if wall > 0 else 0,
        "p50_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(pct(lat, 99)),
        "max_ms": ms(lat[-1] if lat else None), "cert_fetches": cert.fetches,
        "accepted_total": res["ok"] + (1 if first and first["status"] == 200 else 0),
    })
    return res


def cmd_post(a):
    u = urllib.parse.urlsplit(a.url)
    if u.hostname != "127.0.0.1":
        sys.exit("sns_events: loopback (127.0.0.1) only")
    with open(os.path.join(a.dir, "cert.pem"), "rb") as f:
        pem = f.read()
    hostport = f"{u.hostname}:{u.port or 80}"
    path = u.path or "/"
    requests = []
    with open(os.path.join(a.dir, "notifications.txt"), encoding="utf-8") as f:
        for line in f:
            sns_id, _, body = line.rstrip("\n").partition("\t")
            b = body.encode()
            head = (f"POST {path} HTTP/1.1\r\nHost: {hostport}\r\n"
                    f"x-amz-sns-message-type: Notification\r\n"
                    f"x-amz-sns-message-id: {sns_id}\r\n"
                    f"x-amz-sns-topic-arn: {a.topic}\r\n"
                    f"x-amz-sns-subscription-arn: {a.topic}:1e0a7c0c-bench\r\n"
                    f"Content-Type: text/plain; charset=UTF-8\r\n"
                    f"User-Agent: Amazon Simple Notification Service Agent\r\n"
                    f"Content-Length: {len(b)}\r\n\r\n").encode()
            requests.append(head + b)
    cert = CertServer(a.cert_port, pem)
    try:
        res = asyncio.run(cmd_post_async(a, requests, cert))
    finally:
        cert.stop()
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sign")
    s.add_argument("--ids", required=True)
    s.add_argument("--events", type=int, required=True)
    s.add_argument("--cert-url", required=True)
    s.add_argument("--topic", required=True)
    s.add_argument("--out", required=True)
    p = sub.add_parser("post")
    p.add_argument("--url", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--cert-port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=300, help="seconds for the whole bulk (then report what was answered)")
    p.add_argument("--no-first-alone", dest="first_alone", action="store_false")
    a = ap.parse_args()
    if a.cmd == "sign":
        cmd_sign(a)
    else:
        cmd_post(a)


if __name__ == "__main__":
    sys.exit(main())
