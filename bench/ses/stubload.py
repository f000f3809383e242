#!/usr/bin/env python3
"""Direct load on ses_stub.py, for its own ceiling (standard library only).

Usage: stubload.py --port PORT [--requests 20000] [--connections 32] [--raw-bytes 5600]

Opens CONNECTIONS keep-alive connections to 127.0.0.1:PORT and sends REQUESTS SendEmail
calls shaped like postern's (SigV4-style headers, a JSON body carrying RAW_BYTES of
base64-encoded MIME, ~7.5 KB in all), one request in flight per connection, as postern's
connection pool does. Written on asyncio.Protocol so that the client costs about what
the stub does. Prints one JSON object: requests answered 200, errors, wall seconds,
requests/s, body bytes.

The client shares the machine with the stub, so requests/s is a lower bound of the
stub's ceiling; bench/ses.sh also divides by the stub's own CPU time (/proc) to give the
ceiling of one core.
"""
import argparse
import asyncio
import base64
import json
import sys
import time


def request_bytes(port, i, raw_bytes):
    raw = (("DKIM-Signature: v=1; a=ed25519-sha256; d=bench.test; s=bench1; bh=x; b=y\r\n"
            "From: news@bench.test\r\nTo: r0-0@sink.test\r\nSubject: Bench\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
           + ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod\r\n" * 200))
    raw = raw[:raw_bytes].encode()
    body = json.dumps({
        "FromEmailAddress": "news@bench.test",
        "Destination": {"ToAddresses": [f"r{i}-0@sink.test"]},
        "Content": {"Raw": {"Data": base64.b64encode(raw).decode()}},
        "ConfigurationSetName": "postern-events",
    }, separators=(",", ":")).encode()
    head = (f"POST /v2/email/outbound-emails HTTP/1.1\r\n"
            f"content-type: application/json\r\n"
            f"x-amz-date: 20261123T100000Z\r\n"
            f"authorization: AWS4-HMAC-SHA256 Credential=AKIDBENCH/20261123/us-east-1/ses/aws4_request, "
            f"SignedHeaders=content-type;host;x-amz-date, Signature={'0' * 64}\r\n"
            f"accept: */*\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    return head + body


class Conn(asyncio.Protocol):
    def __init__(self, job):
        self.job = job
        self.buf = bytearray()
        self.done_fut = asyncio.get_running_loop().create_future()

    def connection_made(self, t):
        self.t = t
        self.send_next()

    def send_next(self):
        j = self.job
        if j["left"] <= 0:
            self.t.close()
            return
        j["left"] -= 1
        self.t.write(j["req"])

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i]).lower()
            k = head.find(b"\r\ncontent-length:")
            e = head.find(b"\r\n", k + 2)
            n = int(head[k + 17:e if e >= 0 else len(head)]) if k >= 0 else 0
            if len(self.buf) < i + 4 + n:
                return
            del self.buf[:i + 4 + n]
            if head.startswith(b"http/1.1 200"):
                self.job["ok"] += 1
            else:
                self.job["errors"] += 1
            self.send_next()

    def connection_lost(self, exc):
        if not self.done_fut.done():
            self.done_fut.set_result(None)


async def run(a):
    loop = asyncio.get_running_loop()
    job = {"left": a.requests, "ok": 0, "errors": 0, "req": request_bytes(a.port, 0, a.raw_bytes)}
    t0 = time.time()
    conns = []
    for _ in range(a.connections):
        _, p = await loop.create_connection(lambda: Conn(job), "127.0.0.1", a.port)
        conns.append(p)
    await asyncio.wait_for(asyncio.gather(*(p.done_fut for p in conns)), a.timeout)
    wall = time.time() - t0
    print(json.dumps({
        "requests": a.requests, "ok": job["ok"], "errors": job["errors"],
        "connections": a.connections, "wall_s": round(wall, 3),
        "rps": round(job["ok"] / wall, 1) if wall > 0 else 0,
        "request_bytes": len(job["req"]), "t_start": t0, "t_end": t0 + wall,
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--raw-bytes", type=int, default=5600)
    ap.add_argument("--timeout", type=float, default=300)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
