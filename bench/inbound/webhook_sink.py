#!/usr/bin/env python3
"""Tiny HTTP sink for the inbound benchmark: answers 200 to every POST.

Usage: webhook_sink.py PORT

Binds 127.0.0.1 only. Reads (and discards) request bodies sent with
Content-Length or chunked transfer encoding, keeps connections alive
(HTTP/1.1), and counts requests per path. `GET /count` returns the counts
as JSON, e.g. {"/mo": 20000, "total": 20000, "bytes": 123456}; the benchmark
uses it to see when postern's MO webhook backlog has drained.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNTS = {"total": 0, "bytes": 0}
CHUNK = 1 << 20


def discard(rfile, n):
    while n > 0:
        got = rfile.read(min(n, CHUNK))
        if not got:
            raise ConnectionError("body ended early")
        n -= len(got)


def discard_chunked(rfile):
    total = 0
    while True:
        line = rfile.readline(1024)
        if not line:
            raise ConnectionError("chunked body ended early")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # trailers, up to the empty line
            while True:
                t = rfile.readline(8192)
                if t in (b"\r\n", b"\n", b""):
                    return total
        discard(rfile, size)
        total += size
        rfile.readline(8)  # CRLF after the chunk


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bench-sink"
    # The reply goes out as two writes (headers, then body): with Nagle on, the body waits
    # for the client's delayed ACK, about 40 ms per request on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code, body=b"ok", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            n = discard_chunked(self.rfile)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            discard(self.rfile, n)
        path = self.path.split("?", 1)[0]
        with LOCK:
            COUNTS[path] = COUNTS.get(path, 0) + 1
            COUNTS["total"] += 1
            COUNTS["bytes"] += n
        self._reply(200)

    do_PUT = do_POST

    def do_GET(self):
        if self.path.startswith("/count"):
            with LOCK:
                body = json.dumps(COUNTS).encode()
            self._reply(200, body, "application/json")
        else:
            self._reply(200)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    port = int(sys.argv[1])
    srv = Server(("127.0.0.1", port), Handler)
    print(f"webhook sink listening on 127.0.0.1:{port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
