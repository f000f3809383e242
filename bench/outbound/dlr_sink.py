#!/usr/bin/env python3
"""Delivery-notification sink for bench/outbound.sh: answers 200 to every POST.

Usage: dlr_sink.py PORT

Binds 127.0.0.1 only. A small asyncio HTTP/1.1 server (keep-alive, bodies sent
with Content-Length or chunked) so that counting 20,000 notifications costs as
little CPU as possible on the cores postern also uses. For each POSTed body it
reads deliveryInfoNotification.deliveryInfo.code and counts it, remembering the
wall-clock time (time.time()) of the first and the last notification of each
code. `GET /count` returns JSON such as
  {"total": 20000, "bad": 0, "codes": {"7501": 20000},
   "first": {"7501": 1700000000.1}, "last": {"7501": 1700000030.2}}
`GET /count.txt` gives the same as lines: "total N", "bad N" and
"code CODE N FIRST LAST" per code. `POST /reset` (or GET /reset) zeroes everything. Any other GET answers 200 "ok".
"""
import asyncio
import json
import sys
import time

STATE = {}


def reset():
    STATE.clear()
    STATE.update({"total": 0, "bad": 0, "codes": {}, "first": {}, "last": {}})


reset()


def record(body: bytes):
    now = time.time()
    STATE["total"] += 1
    try:
        code = str(json.loads(body)["deliveryInfoNotification"]["deliveryInfo"]["code"])
    except Exception:  # noqa: BLE001 - anything unexpected is counted as "bad"
        STATE["bad"] += 1
        return
    codes = STATE["codes"]
    codes[code] = codes.get(code, 0) + 1
    STATE["first"].setdefault(code, now)
    STATE["last"][code] = now


def count_txt():
    """The counters as lines a shell can read with awk (no JSON parser needed)."""
    out = [f"total {STATE['total']}", f"bad {STATE['bad']}"]
    for code, n in sorted(STATE["codes"].items()):
        out.append(f"code {code} {n} {STATE['first'][code]:.6f} {STATE['last'][code]:.6f}")
    return "\n".join(out) + "\n"


async def read_chunked(reader):
    parts = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("chunked body ended early")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers up to the empty line
                t = await reader.readline()
                if t in (b"\r\n", b"\n", b""):
                    return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = (lines[0].split(" ") + ["", ""])[:3]
            headers = {}
            for ln in lines[1:]:
                if ":" in ln:
                    k, v = ln.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = await read_chunked(reader)
            else:
                n = int(headers.get("content-length") or 0)
                body = await reader.readexactly(n) if n else b""
            path = target.split("?", 1)[0]
            ctype = b"text/plain"
            if path == "/reset":
                reset()
                out = b"ok"
            elif method == "GET" and path == "/count":
                out = json.dumps(STATE).encode()
                ctype = b"application/json"
            elif method == "GET" and path == "/count.txt":
                out = count_txt().encode()
            elif method == "GET":
                out = b"ok"
            else:
                record(body)
                out = b"ok"
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(out)).encode()
                + (b"\r\nConnection: close" if close else b"")
                + b"\r\n\r\n" + out
            )
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: dlr_sink.py PORT")
    try:
        asyncio.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
