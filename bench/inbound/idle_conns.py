#!/usr/bin/env python3
"""Open N idle SMTP connections to 127.0.0.1:PORT and hold them.

Usage: idle_conns.py PORT N [MAX_SECONDS]

Each connection reads the server's banner and then stays silent. When all
are open, prints one line
  READY ok=<220 banners> other=<other banners> failed=<connect/read errors>
and holds the connections until it is killed (SIGTERM) or MAX_SECONDS
(default 120) pass, so it can never linger. Connects to 127.0.0.1 only.
"""
import signal
import socket
import sys
import time


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2])
    max_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    socks = []
    ok = other = failed = 0
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=15)
            socks.append(s)
        except OSError:
            failed += 1
    for s in socks:
        try:
            banner = b""
            while not banner.endswith(b"\n"):
                got = s.recv(512)
                if not got:
                    break
                banner += got
            if banner.startswith(b"220"):
                ok += 1
            else:
                other += 1
        except OSError:
            failed += 1
    print(f"READY ok={ok} other={other} failed={failed}", flush=True)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
