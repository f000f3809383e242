"""Fixtures for the postern interoperability suite.

Everything here talks to a real `postern serve` child process over loopback sockets:

* ``free_port()``: a free loopback TCP port (bind port 0, read it, close).
* ``hook`` / ``make_receiver``: a threaded HTTP webhook receiver that records every
  request (method, path, headers, raw body, parsed JSON), can be switched to answer 500,
  and can be stopped and started again on the same port.
* ``postern``: a daemon launcher. ``postern(hook, smtp={...}, asset={...})`` writes a
  config into a fresh temp dir, starts the binary, waits for ``GET /readyz`` == 200 and
  stops it (SIGTERM, then SIGKILL) on teardown. Its stderr goes to a file that is shown
  in the report when the test fails.
* ``wait_for(predicate, timeout)``: polls a condition until it holds or the deadline
  passes. Tests never sleep to synchronise.
* ``RawSMTP``: a line-level SMTP client on a raw socket for the dialogues that smtplib
  refuses to produce (bare LF, BDAT, pipelining tricks, STARTTLS injection).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTNAME = "mx.example.test"
ADMIN_TOKEN = "admin-secret"
DEFAULT_MAX_SIZE = 41943040


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Polls ``predicate`` until it returns something truthy; returns that value.

    Raises AssertionError naming ``message`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout:.1f}s" + (f": {message}" if message else "")
            )
        time.sleep(interval)


def postern_bin() -> Path:
    env = os.environ.get("POSTERN_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "postern"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"postern binary not found at {path}: run `cargo build` in {REPO} "
            "or set POSTERN_BIN to the binary",
            pytrace=False,
        )
    return path


# --------------------------------------------------------------------------- webhook receiver


class Hook:
    """One request the webhook receiver got."""

    def __init__(self, method, path, headers, body, status):
        self.method = method
        self.path = path
        self.headers = headers  # dict with lower-cased names
        self.body = body  # raw bytes as received (chunked encoding removed)
        self.status = status  # what the receiver answered
        self.received = time.monotonic()
        self._json = None

    @property
    def json(self):
        if self._json is None:
            self._json = json.loads(self.body)
        return self._json

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"Hook({self.method} {self.path} -> {self.status}, {len(self.body)} bytes)"


class WebhookReceiver:
    """Threaded HTTP server recording every request; answers ``status`` (200 by default).

    Every response carries ``Connection: close`` so that stopping the receiver really
    makes it unreachable (no kept-alive connection survives ``stop()``).
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.status = 200
        self.delay = 0.0  # seconds to hold each request before answering
        self.hooks: list[Hook] = []
        self._released = threading.Event()
        self._cond = threading.Condition()
        self._server = None
        self._thread = None

    # -- lifecycle
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self):
        assert self._server is None, "receiver already running"
        self._released.clear()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _read_body(self) -> bytes:
                te = (self.headers.get("Transfer-Encoding") or "").lower()
                if "chunked" in te:
                    chunks = []
                    while True:
                        line = self.rfile.readline()
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            # trailers until the empty line
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._read_body()
                status = receiver.status
                hook = Hook(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    status,
                )
                with receiver._cond:
                    receiver.hooks.append(hook)
                    receiver._cond.notify_all()
                if receiver.delay:
                    receiver._released.wait(receiver.delay)
                payload = b'{"ok":true}' if status < 300 else b'{"error":"test says no"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True

            do_POST = _handle
            do_PUT = _handle
            do_GET = _handle

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the daemon gave up on a slow answer: expected in timeout tests

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def release(self):
        """Answers the requests held by ``delay`` now."""
        self._released.set()

    def stop(self):
        if self._server is None:
            return
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self._server = None
        self._thread = None

    # -- queries
    def all(self, path: str | None = None, ok_only: bool = False) -> list[Hook]:
        with self._cond:
            hooks = list(self.hooks)
        return [
            h
            for h in hooks
            if (path is None or h.path == path) and (not ok_only or 200 <= h.status < 300)
        ]

    def events(self, path: str = "/mo", ok_only: bool = True) -> list[dict]:
        """Parsed JSON bodies of the successfully answered requests on ``path``."""
        return [h.json for h in self.all(path, ok_only)]

    def wait_hook(self, match, timeout: float = 15.0, path: str = "/mo", ok_only: bool = True):
        """Waits for the first request on ``path`` whose JSON satisfies ``match``."""

        def found():
            for h in self.all(path, ok_only):
                try:
                    if match(h.json):
                        return h
                except (ValueError, KeyError, TypeError):
                    continue
            return None

        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen_count = len(self.hooks)
            h = found()
            if h is not None:
                return h
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [(x.path, x.status, _subject_of(x)) for x in self.all()]
                raise AssertionError(
                    f"no matching webhook on {path} within {timeout:.0f}s; got {seen}"
                )
            with self._cond:
                if len(self.hooks) == seen_count:
                    self._cond.wait(min(left, 1.0))

    def wait_subject(self, subject: str, timeout: float = 15.0, path: str = "/mo") -> Hook:
        return self.wait_hook(lambda e: e.get("subject") == subject, timeout, path)


def _subject_of(hook):
    try:
        return hook.json.get("subject")
    except Exception:  # noqa: BLE001 - diagnostics only
        return None


@pytest.fixture
def make_receiver():
    made = []

    def make(port=None):
        r = WebhookReceiver(port).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def hook(make_receiver):
    """A running webhook receiver; MO events go to ``/mo``, delivery events to ``/dlr``."""
    return make_receiver()


# --------------------------------------------------------------------------- daemon


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_table(header, table):
    lines = [header]
    for k, v in table.items():
        if v is None:
            continue
        lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


class Daemon:
    """A `postern serve` child process with its own ports and data_dir."""

    def __init__(self, workdir: Path, config_text: str, smtp_port: int, http_port: int):
        self.workdir = workdir
        self.config_path = workdir / "postern.toml"
        self.config_path.write_text(config_text)
        self.smtp_port = smtp_port
        self.http_port = http_port
        self.data_dir = workdir / "data"
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.stderr_paths: list[Path] = []

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def smtp_addr(self):
        return ("127.0.0.1", self.smtp_port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 20.0):
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        binary = postern_bin()
        self.runs += 1
        err_path = self.workdir / f"stderr.{self.runs}.log"
        self.stderr_paths.append(err_path)
        err = open(err_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.pop("POSTERN_CONFIG", None)
        try:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                env=env,
            )
        finally:
            err.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"postern exited with {self.proc.returncode} before it was ready:\n"
                    + self.stderr_tail()
                )
            try:
                with urllib.request.urlopen(self.http_base + "/readyz", timeout=1) as r:
                    return r.status == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        try:
            wait_for(ready, timeout, interval=0.05, message="GET /readyz == 200")
        except AssertionError:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 15.0):
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"postern did not exit within {timeout}s of SIGTERM")

    def kill(self):
        """SIGKILL (a crash) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self):
        self.stop()
        return self.start()

    def stderr_tail(self, limit: int = 12000) -> str:
        out = []
        for p in self.stderr_paths:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            text = data[-limit:].decode("utf-8", "replace")
            out.append(f"--- {p.name} ({len(data)} bytes, last {min(limit, len(data))}) ---\n{text}")
        return "\n".join(out)

    # -- HTTP helpers
    def http_get(self, path_or_url: str, timeout: float = 30.0):
        """GET; returns (status, headers, body) also for 4xx/5xx."""
        url = path_or_url if path_or_url.startswith("http") else self.http_base + path_or_url
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def http(self, method: str, path: str, headers=None, body: bytes | None = None,
             timeout: float = 30.0):
        """Any request; returns (status, headers, body) also for 4xx/5xx."""
        req = urllib.request.Request(self.http_base + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def admin(self, method: str, path: str):
        """An admin API call with the admin token; returns (status, parsed JSON or None)."""
        status, _, body = self.http(method, path, {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                                    b"" if method == "POST" else None)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def metrics(self) -> str:
        status, _, body = self.http_get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body.decode()

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        present = False
        pat = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            m = pat.match(line)
            if not m or m.group(1) != name:
                continue
            present = True
            got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(4))
        assert present, f"metric {name} is not exported by /metrics"
        return total

    def peak_rss_kb(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(m.group(1))


def make_config(
    *,
    data_dir,
    smtp_port,
    http_port,
    hook,
    server=None,
    smtp=None,
    webhooks=None,
    asset=None,
    extra_assets=(),
    services=(),
    ses=None,
    queue=None,
):
    """The daemon's TOML. ``asset`` / ``extra_assets`` entries may hold sub-tables as
    dicts (``"route": {...}``, ``"dkim": {...}``), written as ``[asset.route]`` etc.;
    ``services`` are ``[[service]]`` tables, ``ses`` the ``[ses]`` table (SNS events) and
    ``queue`` the ``[queue]`` table. Without them the text is what it always was."""
    srv = {
        "hostname": HOSTNAME,
        "data_dir": str(data_dir),
        "public_url": f"http://127.0.0.1:{http_port}",
        "inbound_domain": "inbound.example.test",
        "bounce_domain": "bounces.example.test",
    }
    srv.update(server or {})
    smtp_t = {
        "listen": [f"127.0.0.1:{smtp_port}"],
        "max_message_size": DEFAULT_MAX_SIZE,
        "max_recipients": 100,
        "max_connections": 1000,
        "max_connections_per_ip": 50,
        "command_timeout": 300,
        "data_timeout": 600,
    }
    smtp_t.update(smtp or {})
    hooks_t = {"retry_for": 86400, "timeout": 10, "concurrency": 32}
    hooks_t.update(webhooks or {})
    asset_t = {
        "id": "a_demo",
        "name": "Demo",
        "domains": ["example.test"],
        "inbound": True,
        "max_inbound_size": min(DEFAULT_MAX_SIZE, smtp_t["max_message_size"]),
        "incoming_webhook": f"{hook.base}/mo",
        "delivery_webhook": f"{hook.base}/dlr",
    }
    asset_t.update(asset or {})
    parts = [
        _toml_table("[server]", srv),
        _toml_table("[smtp]", smtp_t),
        _toml_table("[http]", {"listen": f"127.0.0.1:{http_port}"}),
        _toml_table("[admin]", {"token": ADMIN_TOKEN}),
        _toml_table("[dns]", {"resolver": "off"}),
        _toml_table("[webhooks]", hooks_t),
    ]
    if queue is not None:
        parts.append(_toml_table("[queue]", queue))
    if ses is not None:
        parts.append(_toml_table("[ses]", ses))
    for service in services:
        parts.append(_toml_table("[[service]]", service))
    parts.append(_asset_tables(asset_t))
    for extra in extra_assets:
        parts.append(_asset_tables(extra))
    return "\n".join(parts)


def _asset_tables(asset):
    """``[[asset]]`` with its plain keys, then one ``[asset.<key>]`` per dict value."""
    plain = {k: v for k, v in asset.items() if not isinstance(v, dict)}
    out = [_toml_table("[[asset]]", plain)]
    for k, v in asset.items():
        if isinstance(v, dict):
            out.append(_toml_table(f"[asset.{k}]", v))
    return "\n".join(out)


@pytest.fixture
def postern(request, tmp_path_factory):
    """Factory: ``postern(hook, smtp={...}, asset={...}, start=True) -> Daemon``."""
    daemons: list[Daemon] = []
    request.node._postern_daemons = daemons

    def launch(hook, *, start=True, **sections):
        postern_bin()
        workdir = tmp_path_factory.mktemp("postern")
        smtp_port, http_port = free_port(), free_port()
        while http_port == smtp_port:
            http_port = free_port()
        text = make_config(
            data_dir=workdir / "data",
            smtp_port=smtp_port,
            http_port=http_port,
            hook=hook,
            **sections,
        )
        d = Daemon(workdir, text, smtp_port, http_port)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield launch
    for d in daemons:
        try:
            d.stop()
        except AssertionError:
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, d in enumerate(getattr(item, "_postern_daemons", [])):
            rep.sections.append(
                (f"postern #{i} stderr (config {d.config_path})", d.stderr_tail())
            )


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    """A self-signed certificate for mx.example.test: (cert_path, key_path)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-subj", f"/CN={HOSTNAME}",
                "-addext", f"subjectAltName=DNS:{HOSTNAME}",
                "-keyout", str(key), "-out", str(cert), "-days", "2",
            ],
            check=True,
            capture_output=True,
        )
    except FileNotFoundError:
        pytest.skip("openssl is not on PATH: cannot make a test certificate")
    return cert, key


def client_tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------- raw SMTP


class Reply:
    def __init__(self, code: int, lines: list[str]):
        self.code = code
        self.lines = lines

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class RawSMTP:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(self, addr, timeout: float = 10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.timeout = timeout
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes | str):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete SMTP reply before the deadline; buffered: %r" % self.buf[:500])
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_line(self, deadline) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout: float | None = None) -> Reply:
        """Reads one (possibly multi-line) reply. Raises EOFError on a closed connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            line = self.read_line(deadline)
            if line is None:
                raise EOFError(f"connection closed; partial reply {lines!r}, rest {self.buf!r}")
            text = line.decode("utf-8", "replace")
            assert re.match(r"^\d{3}[ -]", text + " "), f"not an SMTP reply line: {text!r}"
            lines.append(text[4:])
            if len(text) == 3 or text[3] == " ":
                return Reply(int(text[:3]), lines)

    def cmd(self, line: str, timeout: float | None = None) -> Reply:
        self.send(line.encode() + b"\r\n")
        return self.reply(timeout)

    def read_until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the server still sends until it closes the connection."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def starttls(self):
        self.sock.settimeout(self.timeout)
        self.sock = client_tls_context().wrap_socket(self.sock, server_hostname=HOSTNAME)
        self.buf = b""


def raw_session(daemon, ehlo: str = "client.example.org") -> RawSMTP:
    c = RawSMTP(daemon.smtp_addr)
    banner = c.reply()
    assert banner.code == 220, banner
    r = c.cmd(f"EHLO {ehlo}")
    assert r.code == 250, r
    return c


def b64decode(s: str) -> bytes:
    return base64.b64decode(s, validate=False)


# --------------------------------------------------------------------------- smtplib helpers

def unique(prefix: str) -> str:
    """A subject nobody else uses, so events are matched without ambiguity."""
    return f"{prefix} {uuid.uuid4().hex[:12]}"


def smtp_client(daemon, timeout: float = 60.0) -> smtplib.SMTP:
    s = smtplib.SMTP(timeout=timeout, local_hostname="client.example.org")
    s._host = HOSTNAME  # the name starttls() sends as SNI
    code, msg = s.connect("127.0.0.1", daemon.smtp_port)
    assert code == 220, (code, msg)
    return s


def text_message(subject, body="Hello postern.\n", sender="alice@example.org",
                 to="support@example.test", **headers) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="client.example.org")
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg


def wire(msg) -> bytes:
    """The message as it travels in SMTP: CRLF line endings."""
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def send(daemon, msg, mail_from="alice@example.org", rcpts=("support@example.test",)):
    """Sends ``msg`` (EmailMessage or CRLF bytes) in one session; returns the bytes sent."""
    data = msg if isinstance(msg, bytes) else wire(msg)
    with smtp_client(daemon) as s:
        refused = s.sendmail(mail_from, list(rcpts), data)
        assert refused == {}, refused
        s.quit()
    return data


def nl(text: str) -> str:
    """Line endings normalised to LF (the JSON may carry the message's CRLF)."""
    return text.replace("\r\n", "\n")
