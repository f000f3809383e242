#!/usr/bin/env python3
"""HTTP load generator for bench/outbound.sh (standard library only).

Two modes; both POST {"channel":"email",...} to postern's /v2/messages with the
`key` header, over persistent HTTP/1.1 connections (one per worker thread), and
print one JSON object on stdout.

  loadgen.py bulk --url URL --key KEY --requests 200 --per-request 100 \
                  [--concurrency 8] [--text-chars 5000] [--from news@bench.test]
      Sends REQUESTS requests of PER_REQUEST destinations each (addresses
      r<i>-<j>@sink.test, "to":[{"email":[...]}], no multipleToRecipients, so
      every address is its own message and tid) as fast as CONCURRENCY
      connections allow. Output: t_first_sent / t_last_done (time.time()),
      accepted requests, destinations (tids) in the 202s, errors.

  loadgen.py rate --url URL --key KEY --rate 200 --duration 10 [--workers 64]
      Open-loop load: request i is due at t0 + i/RATE (a dispatcher releases it
      at its due time; workers never sleep after a response), one destination
      per request. Latency is measured two ways:
        service  = 202 received - request actually sent
        schedule = 202 received - request due (includes any wait for a free
                   worker, so a slow server cannot hide behind a stalled client)
      Output: p50/p90/p99/max of both in ms, achieved rate, errors, late starts.

--url may be given several times (bench/cluster.sh: one per node): request i then
goes to URL number i mod N (round-robin; in bulk mode over the request index),
every worker keeps one persistent connection per URL, and the output gains
"per_url": [{url, accepted, errors, service_p50_ms, service_p99_ms,
service_max_ms}, ...]. With one --url (the default use) nothing changes.

rate --slow-ms MS (default 0: off) adds "slow": the number of requests whose
sent -> 202 took more than MS (or failed), and "slow_by_second": {"<s>": n}, s
being the second of the schedule (due time - t0) each was due in, to tell a
start-up stall from a periodic one.

The text body is TEXT_CHARS characters of plain ASCII lines (default 5,000, so
each built message is ~5 KB before DKIM and headers).
"""
import argparse
import http.client
import json
import queue
import sys
import threading
import time
import urllib.parse


def make_text(n):
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
             "tempor incididunt ut labore et dolore magna aliqua").split()
    lines, line, total, i = [], [], 0, 0
    while total < n:
        w = words[i % len(words)]
        i += 1
        if sum(len(x) + 1 for x in line) + len(w) > 72:
            s = " ".join(line)
            lines.append(s)
            total += len(s) + 1
            line = []
        line.append(w)
    text = "\n".join(lines)
    return text[:n]


def body_for(sender, addrs, text):
    return json.dumps({
        "channel": "email",
        "from": sender,
        "to": [{"email": addrs}],
        "content": {"type": "text", "subject": "Bench", "text": text},
    }).encode()


class Client:
    """One persistent connection; reconnects once on a dropped keep-alive."""

    def __init__(self, url, key, timeout=60):
        u = urllib.parse.urlsplit(url)
        if u.hostname != "127.0.0.1":
            raise SystemExit("loadgen: loopback (127.0.0.1) only")
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/"
        self.key, self.timeout = key, timeout
        self.conn = None

    def post(self, body):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", self.path, body=body, headers={
                    "key": self.key, "content-type": "application/json"})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, ConnectionError, OSError):
                try:
                    self.conn.close()
                finally:
                    self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run_bulk(a):
    text = make_text(a.text_chars)
    bodies = [body_for(a.sender, [f"r{i}-{j}@sink.test" for j in range(a.per_request)], text)
              for i in range(a.requests)]
    idx = iter(range(a.requests))
    lock = threading.Lock()
    res = {"accepted": 0, "tids": 0, "errors": 0, "statuses": {}, "first_error": None}
    times = {"first": None, "last": None}
    per = [{"url": u, "accepted": 0, "errors": 0} for u in a.url]

    def worker():
        clients = [Client(u, a.key) for u in a.url]
        while True:
            with lock:
                i = next(idx, None)
                if i is None:
                    return
                if times["first"] is None:
                    times["first"] = time.time()
            u = i % len(clients)
            try:
                status, data = clients[u].post(bodies[i])
            except Exception as e:  # noqa: BLE001
                status, data = 0, str(e).encode()
            with lock:
                res["statuses"][str(status)] = res["statuses"].get(str(status), 0) + 1
                per[u]["accepted" if status == 202 else "errors"] += 1
                if status == 202:
                    res["accepted"] += 1
                    try:
                        res["tids"] += len(json.loads(data).get("messages", []))
                    except ValueError:
                        pass
                else:
                    res["errors"] += 1
                    if res["first_error"] is None:
                        res["first_error"] = f"{status} {data[:300]!r}"
                times["last"] = time.time()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res["t_first_sent"] = times["first"]
    res["t_last_done"] = times["last"]
    res["body_bytes"] = len(bodies[0]) if bodies else 0
    if len(a.url) > 1:
        res["per_url"] = per
    print(json.dumps(res))


def run_rate(a):
    text = make_text(a.text_chars)
    n = int(round(a.rate * a.duration))
    bodies = [body_for(a.sender, [f"lat{i}@sink.test"], text) for i in range(n)]
    q = queue.Queue()
    lock = threading.Lock()
    service, sched, late = [], [], [0]
    res = {"sent": n, "accepted": 0, "errors": 0, "statuses": {}, "first_error": None}
    per = [{"url": u, "accepted": 0, "errors": 0, "service": []} for u in a.url]
    slow_at = []  # due offsets (s) of requests slower than --slow-ms

    def worker():
        clients = [Client(u, a.key) for u in a.url]
        for c in clients:
            c.conn = http.client.HTTPConnection(c.host, c.port, timeout=c.timeout)
            c.conn.connect()  # connect before the clock starts
        while True:
            item = q.get()
            if item is None:
                return
            i, due = item
            t_send = time.perf_counter()
            if t_send - due > 0.002:
                with lock:
                    late[0] += 1
            u = i % len(clients)
            try:
                status, data = clients[u].post(bodies[i])
            except Exception as e:  # noqa: BLE001
                status, data = 0, str(e).encode()
            t_done = time.perf_counter()
            with lock:
                res["statuses"][str(status)] = res["statuses"].get(str(status), 0) + 1
                if a.slow_ms > 0 and (status != 202 or (t_done - t_send) * 1000 > a.slow_ms):
                    slow_at.append(i / a.rate)
                if status == 202:
                    res["accepted"] += 1
                    per[u]["accepted"] += 1
                    per[u]["service"].append(t_done - t_send)
                    service.append(t_done - t_send)
                    sched.append(t_done - due)
                else:
                    res["errors"] += 1
                    per[u]["errors"] += 1
                    if res["first_error"] is None:
                        res["first_error"] = f"{status} {data[:300]!r}"

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.workers)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let every worker connect (one-off, before the schedule starts)
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        due = t0 + i / a.rate
        d = due - time.perf_counter()
        if d > 0:
            time.sleep(d)
        q.put((i, due))
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    service.sort()
    sched.sort()
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    for name, vals in (("service", service), ("schedule", sched)):
        for p in (50, 90, 99):
            res[f"{name}_p{p}_ms"] = ms(pct(vals, p))
        res[f"{name}_max_ms"] = ms(vals[-1] if vals else None)
    res["late_starts"] = late[0]
    res["wall_s"] = round(wall, 3)
    res["achieved_rps"] = round(res["accepted"] / wall, 1) if wall > 0 else 0
    if a.slow_ms > 0:
        res["slow"] = len(slow_at)
        by = {}
        for t in slow_at:
            by[str(int(t))] = by.get(str(int(t)), 0) + 1
        res["slow_by_second"] = dict(sorted(by.items(), key=lambda kv: int(kv[0])))
    if len(a.url) > 1:
        for p in per:
            vals = sorted(p.pop("service"))
            p["service_p50_ms"] = ms(pct(vals, 50))
            p["service_p99_ms"] = ms(pct(vals, 99))
            p["service_max_ms"] = ms(vals[-1] if vals else None)
        res["per_url"] = per
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["bulk", "rate"])
    ap.add_argument("--url", required=True, action="append",
                    help="repeatable: several URLs are used round-robin")
    ap.add_argument("--key", required=True)
    ap.add_argument("--from", dest="sender", default="news@bench.test")
    ap.add_argument("--text-chars", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--per-request", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--slow-ms", type=float, default=0)
    a = ap.parse_args()
    if a.mode == "bulk":
        run_bulk(a)
    else:
        run_rate(a)


if __name__ == "__main__":
    sys.exit(main())
