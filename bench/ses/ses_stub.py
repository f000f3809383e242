#!/usr/bin/env python3
"""A fast stand-in for the Amazon SES v2 API, for bench/ses.sh (standard library only).

Usage: ses_stub.py PORT

Binds 127.0.0.1 only. `POST /v2/email/outbound-emails` (SendEmail) answers 200 with a
fresh, unique `{"MessageId": "..."}` at once, and remembers the MessageId together with
the first address of `Destination.ToAddresses` (bench/ses.sh later sends one SES Delivery
event per MessageId). Nothing is verified (no SigV4 check, no JSON parse of the body):
the stub only has to be cheaper than what it measures. `GET /v2/email/account`
(GetAccount, for `postern route test`) answers a plausible account.

Bookkeeping, for the benchmark script:
  GET /count.txt  "sends N FIRST LAST" (time.time() of the first and last SendEmail),
                  "other N" (requests that were not a SendEmail) and "connections N"
                  (TCP connections accepted: tells whether the client kept them alive)
  GET /count      the same as JSON
  GET /ids        "MESSAGEID<TAB>RECIPIENT" lines, one per SendEmail answered
  POST /reset     forgets everything

Written on asyncio.Protocol (no streams, no per-request task) with HTTP/1.1 keep-alive
and pipelining, Content-Length bodies only (what reqwest sends): one core serves well
over 10,000 SendEmail calls a second, see bench/ses/README.md.
"""
import asyncio
import json
import os
import sys
import time

PREFIX = "0100019" + os.urandom(4).hex()  # unique per stub process
SENDS = []  # (message_id, recipient)
STATE = {"first": 0.0, "last": 0.0, "other": 0, "connections": 0}
MAX_HEAD = 64 * 1024
TO_KEY = b'"ToAddresses":['

ACCOUNT = json.dumps({
    "DedicatedIpAutoWarmupEnabled": False,
    "EnforcementStatus": "HEALTHY",
    "ProductionAccessEnabled": True,
    "SendQuota": {"Max24HourSend": 1000000.0, "MaxSendRate": 1000.0, "SentLast24Hours": 0.0},
    "SendingEnabled": True,
}).encode()


def reset():
    SENDS.clear()
    STATE.update(first=0.0, last=0.0, other=0, connections=0)


def count_txt():
    return (f"sends {len(SENDS)} {STATE['first']:.6f} {STATE['last']:.6f}\n"
            f"other {STATE['other']}\n"
            f"connections {STATE['connections']}\n").encode()


def response(status, body, ctype=b"application/json", close=False):
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
            + b"\r\nx-amzn-RequestId: 00000000-0000-4000-8000-000000000000"
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)


def recipient_of(body):
    i = body.find(TO_KEY)
    if i < 0:
        return ""
    i = body.find(b'"', i + len(TO_KEY))
    if i < 0:
        return ""
    j = body.find(b'"', i + 1)
    return body[i + 1:j].decode("utf-8", "replace") if j > i else ""


def handle(method, path, body):
    """-> (status, body, content type)"""
    if method == b"POST" and path.startswith(b"/v2/email/outbound-emails"):
        now = time.time()
        if not SENDS:
            STATE["first"] = now
        STATE["last"] = now
        mid = f"{PREFIX}-{len(SENDS) + 1:08x}-bench-0000-{len(SENDS) + 1:012d}-000000"
        SENDS.append((mid, recipient_of(body)))
        return b"200 OK", b'{"MessageId":"' + mid.encode() + b'"}', b"application/json"
    STATE["other"] += 1
    if path.startswith(b"/v2/email/account"):
        return b"200 OK", ACCOUNT, b"application/json"
    if path == b"/count.txt":
        return b"200 OK", count_txt(), b"text/plain"
    if path == b"/count":
        out = dict(STATE, sends=len(SENDS))
        return b"200 OK", json.dumps(out).encode(), b"application/json"
    if path == b"/ids":
        return b"200 OK", "".join(f"{m}\t{r}\n" for m, r in SENDS).encode(), b"text/plain"
    if path == b"/reset":
        reset()
        return b"200 OK", b"ok", b"text/plain"
    return b"404 Not Found", b'{"message":"unknown path"}', b"application/json"


class Http(asyncio.Protocol):
    __slots__ = ("t", "buf", "head_end", "need", "head")

    def connection_made(self, transport):
        STATE["connections"] += 1
        self.t = transport
        self.buf = bytearray()
        self.head_end = -1  # end of the current request's head, once seen
        self.need = 0  # total bytes of the current request (head + body)
        self.head = b""

    def data_received(self, data):
        buf = self.buf
        buf += data
        while True:
            if self.head_end < 0:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > MAX_HEAD:
                        self.t.write(response(b"431 Request Header Fields Too Large", b"", close=True))
                        self.t.close()
                    return
                head = bytes(buf[:i]).lower()
                if b"\r\ntransfer-encoding:" in head:
                    self.t.write(response(b"501 Not Implemented", b"chunked bodies are not supported", close=True))
                    self.t.close()
                    return
                length = 0
                k = head.find(b"\r\ncontent-length:")
                if k >= 0:
                    e = head.find(b"\r\n", k + 2)
                    try:
                        length = int(head[k + 17:e if e >= 0 else len(head)])
                    except ValueError:
                        self.t.write(response(b"400 Bad Request", b"bad content-length", close=True))
                        self.t.close()
                        return
                self.head_end = i
                self.head = head
                self.need = i + 4 + length
            if len(buf) < self.need:
                return
            head = self.head
            body = bytes(buf[self.head_end + 4:self.need])
            del buf[:self.need]
            self.head_end = -1
            line_end = head.find(b"\r\n")
            first = head[:line_end if line_end >= 0 else len(head)].split(b" ")
            method = first[0].upper()
            path = first[1] if len(first) > 1 else b"/"
            close = b"\r\nconnection: close" in head or first[-1] == b"http/1.0"
            status, out, ctype = handle(method, path.split(b"?", 1)[0], body)
            self.t.write(response(status, out, ctype, close))
            if close:
                self.t.close()
                return

    def connection_lost(self, exc):
        self.buf = bytearray()


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: ses_stub.py PORT")
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
