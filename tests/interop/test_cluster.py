"""Several nodes (SPEC 13) from the outside: two `postern serve` nodes sharing a private
PostgreSQL, mail sent through the Messaging API of one node to a real aiosmtpd smarthost,
and dkimpy (an independent implementation) verifying the DKIM signatures against the
records `postern domain records` prints.

The PostgreSQL server is started here the way tests/common/pg.rs starts it for the Rust
tests: `initdb` into a temporary directory (trust authentication, superuser `postgres`),
`pg_ctl start -w` on a free loopback port, database `postern`; as root (CI), the server
tools run as the OS user `postgres` through `runuser`. Server binaries:
`$POSTERN_TEST_PG_BIN`, else `initdb` on PATH, else the newest
`/usr/lib/postgresql/<version>/bin`; without any, the test is skipped (CI installs
Debian's `postgresql` package, so it runs there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email import policy as email_policy
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller

from conftest import Daemon, _toml_table, free_port, make_config, postern_bin, wait_for

DOMAIN = "example.test"
SERVICE_KEY = "cluster-interop-key"
# SPEC 13: "a rotated DKIM key is used by every node within 5 s of its grace ending".
PROMISE = 5.0
GRACE = 5


# --------------------------------------------------------------------------- PostgreSQL


def _pg_server_bin() -> Path | None:
    """The directory of initdb, pg_ctl and postgres, or None (see the module docstring)."""

    def has_server(d: Path) -> bool:
        return all((d / b).is_file() for b in ("initdb", "pg_ctl", "postgres"))

    env = os.environ.get("POSTERN_TEST_PG_BIN")
    if env:
        d = Path(env)
        assert has_server(d), f"POSTERN_TEST_PG_BIN={d} lacks initdb/pg_ctl/postgres"
        return d
    found = shutil.which("initdb")
    if found:
        d = Path(os.path.realpath(found)).parent
        if has_server(d):
            return d
    versions = []
    for entry in Path("/usr/lib/postgresql").glob("*"):
        try:
            version = tuple(int(p) for p in entry.name.split("."))
        except ValueError:
            continue
        if has_server(entry / "bin"):
            versions.append((version, entry / "bin"))
    return max(versions)[1] if versions else None


def _ensure_os_user(name: str) -> str:
    """As root, PostgreSQL runs as ``name``; created as a system user when missing."""
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
        )
    assert subprocess.run(["id", "-u", name], capture_output=True).returncode == 0, (
        f"running as root: PostgreSQL needs the OS user {name}, and useradd could not create it"
    )
    return name


class PgServer:
    """A private PostgreSQL: cluster in ``dir/data``, log in ``dir/postgres.log``."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.run_as = _ensure_os_user("postgres") if os.geteuid() == 0 else None
        # As root, somewhere the postgres user can reach (TMPDIR may be under /root).
        base = "/tmp" if self.run_as else None
        self.dir = Path(tempfile.mkdtemp(prefix="postern-pg-", dir=base))
        if self.run_as:
            shutil.chown(self.dir, self.run_as, self.run_as)
        self.port = 0

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postern"

    def log(self) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def _server_tool(self, name: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / name), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd] if shutil.which("runuser") else [
                "su", "-s", "/bin/sh", self.run_as, "-c", " ".join(_sh_quote(c) for c in cmd)
            ]
        return subprocess.run(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def _client_tool(self, name: str) -> str:
        beside = self.bin / name
        return str(beside) if beside.is_file() else name

    def start(self) -> "PgServer":
        out = self._server_tool(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )
        assert out.returncode == 0, f"initdb failed:\n{out.stdout}{out.stderr}"
        # A port free when we looked may be taken before postgres binds it: try another.
        for attempt in range(1, 6):
            self.port = free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB "
                "-c max_connections=200"
            )
            out = self._server_tool(
                "pg_ctl", "-D", str(self.data), "-w", "-t", "60", "start",
                "-l", str(self.dir / "postgres.log"), "-o", options,
            )
            if out.returncode == 0:
                break
            log = self.log()
            if attempt < 5 and "could not bind" in log:
                continue
            raise AssertionError(f"PostgreSQL did not start:\n{out.stdout}{out.stderr}\n{log}")

        def ready():
            r = subprocess.run(
                [self._client_tool("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", "postgres", "-d", "postgres", "-t", "1"],
                capture_output=True,
            )
            return r.returncode == 0

        wait_for(ready, 60, interval=0.05, message=f"PostgreSQL ready on port {self.port}")
        out = subprocess.run(
            [self._client_tool("psql"), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-c", "CREATE DATABASE postern"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, f"create database postern: {out.stdout}{out.stderr}"
        return self

    def close(self):
        """Stops the server (immediate) and removes its directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._server_tool("pg_ctl", "-D", str(self.data), "-w", "-t", "60",
                                  "stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


@pytest.fixture
def pg():
    bin_dir = _pg_server_bin()
    if bin_dir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres): install Debian's "
            "`postgresql` package, put initdb on PATH or set POSTERN_TEST_PG_BIN"
        )
    server = PgServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- smarthost


class Relay:
    """aiosmtpd smarthost recording (mail_from, rcpts, raw content) per message."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(
                (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 Ok: queued"

    def for_rcpt(self, rcpt: str):
        with self.lock:
            return [m for m in self.messages if rcpt in m[1]]


@pytest.fixture
def cluster_relay():
    r = Relay()
    r.controller.start()
    try:
        yield r
    finally:
        r.controller.stop()


# --------------------------------------------------------------------------- nodes


@pytest.fixture
def cluster_nodes(request, pg, make_receiver):
    """Factory ``node(node_id) -> Daemon`` (not started): the same asset, domain, service
    and relay route on every node, each with its own data_dir and ports and ``[cluster]``
    on the ``pg`` database. Stopped (then the directory removed) before ``pg`` stops."""
    made: list[Daemon] = []
    request.node._postern_daemons = made  # conftest attaches their stderr to a failure
    base = Path(tempfile.mkdtemp(prefix="postern-cluster-"))
    hook = make_receiver()

    def node(node_id: str, relay_port: int) -> Daemon:
        postern_bin()
        workdir = base / node_id
        workdir.mkdir()
        smtp_port, http_port = free_port(), free_port()
        while http_port == smtp_port:
            http_port = free_port()
        text = make_config(
            data_dir=workdir / "data",
            smtp_port=smtp_port,
            http_port=http_port,
            hook=hook,
            asset={
                "id": "a_cluster",
                "domains": [DOMAIN],
                "route": {"kind": "smtp", "host": "127.0.0.1", "port": relay_port,
                          "security": "none", "auth": "none"},
                # Named, so every node makes or takes the key at its start (lib.rs
                # dkim_keys); the default key (no [asset.dkim]) is only made on first use.
                # Ed25519: made at once, where a 2048-bit RSA key can take seconds on a
                # loaded machine, eating the 5 s grace (rotate-dkim counts it from
                # before it makes the key).
                "dkim": {"selector": "postern1", "algorithm": "ed25519-sha256"},
            },
            services=[{
                "id": "svc_cluster",
                "key": SERVICE_KEY,
                "secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
                "tps": 100,
                "assets": ["a_cluster"],
            }],
        )
        text += "\n" + _toml_table("[cluster]", {"database_url": pg.url, "node_id": node_id})
        d = Daemon(workdir, text, smtp_port, http_port)
        made.append(d)
        return d

    try:
        yield node
    finally:
        for d in made:
            try:
                d.stop()
            except AssertionError:
                d.kill()
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def cli(config_path: Path, *args: str) -> str:
    out = subprocess.run(
        [str(postern_bin()), *args, "--config", str(config_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, f"postern {' '.join(args)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
    return out.stdout


def dkim_records(config_path: Path) -> dict[str, tuple[str, str]]:
    """purpose -> (name, value) of the DKIM records `domain records --format json` prints."""
    records = json.loads(cli(config_path, "domain", "records", DOMAIN, "--format", "json"))
    return {
        r["purpose"]: (r["name"], r["value"])
        for r in records
        if r["purpose"].startswith("dkim")
    }


def by_name(records: dict[str, tuple[str, str]]) -> dict[str, str]:
    """record name -> TXT value."""
    return dict(records.values())


def dnsfunc_for(records):
    """A dkimpy dnsfunc answering exactly ``records`` ((name, TXT value) pairs)."""
    table = {(name.rstrip(".") + ".").lower().encode(): value.encode() for name, value in records}

    def dnsfunc(name, timeout=5):
        return table.get(name.lower(), b"")

    return dnsfunc


def signature_tags(content: bytes) -> dict[str, str]:
    """The tags of the message's (only) DKIM-Signature header, unfolded."""
    headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(content)
    sigs = headers.get_all("DKIM-Signature") or []
    assert len(sigs) == 1, f"expected one DKIM-Signature, got {len(sigs)}"
    raw = re.sub(r"\s+", "", str(sigs[0]))
    return dict(t.split("=", 1) for t in raw.split(";") if "=" in t)


def send_one(daemon: Daemon, rcpt: str, subject: str):
    body = {
        "channel": "email",
        "from": f"news@{DOMAIN}",
        "to": [{"email": [rcpt]}],
        "content": {"type": "text", "subject": subject, "text": f"Hello from {subject}"},
    }
    req = urllib.request.Request(
        f"{daemon.http_base}/v2/messages",
        data=json.dumps(body).encode(),
        headers={"key": SERVICE_KEY, "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        status, answer = resp.status, json.loads(resp.read())
    assert status == 202 and answer["code"] == "1001", (status, answer)


def deliver(daemon: Daemon, relay: Relay, rcpt: str, subject: str) -> bytes:
    """Sends one message through ``daemon``'s API; the raw message the relay received."""
    send_one(daemon, rcpt, subject)
    got = wait_for(lambda: relay.for_rcpt(rcpt), 30, interval=0.05,
                   message=f"the smarthost never received the mail to {rcpt}")
    assert len(got) == 1, f"{rcpt} received {len(got)} times"
    return got[0][2]


def parse_signing_from(rotate_output: str) -> tuple[str, float]:
    """(new selector, signing_from as unix seconds) from `domain rotate-dkim`'s first line:
    "<domain>: new selector <sel> signs from <RFC 3339> (after <n>s); publish ..."."""
    m = re.search(r"new selector (\S+) signs from (\S+) \(after", rotate_output)
    assert m, f"unexpected rotate-dkim output:\n{rotate_output}"
    when = datetime.strptime(m.group(2), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return m.group(1), when.timestamp()


# --------------------------------------------------------------------------- the test


def test_rotate_dkim_on_one_node_signs_on_another_after_the_grace(cluster_nodes, cluster_relay):
    started = time.monotonic()
    relay = cluster_relay
    # One after the other: B takes the key A made at its start from the database (SPEC 13:
    # a key made by one node is copied to the others), so both hold the same key.
    a = cluster_nodes("a", relay.port).start()
    b = cluster_nodes("b", relay.port).start()

    before = dkim_records(a.config_path)
    assert set(before) == {"dkim"}, f"one DKIM record before any rotation: {before}"
    old_name, old_value = before["dkim"]
    old_selector = old_name.split("._domainkey.")[0]
    assert old_name == f"{old_selector}._domainkey.{DOMAIN}", old_name
    assert by_name(dkim_records(b.config_path)) == by_name(before), "B publishes another key than A"

    # 1. Through B, before any rotation: signed by the original selector.
    first = deliver(b, relay, "first@example.org", "before the rotation")
    tags = signature_tags(first)
    assert (tags["d"], tags["s"]) == (DOMAIN, old_selector), tags
    assert dkim.verify(first, dnsfunc=dnsfunc_for([(old_name, old_value)])), (
        "dkimpy refused B's signature with the original selector"
    )
    assert not dkim.verify(first.replace(b"Hello from", b"Hullo from", 1),
                           dnsfunc=dnsfunc_for([(old_name, old_value)])), "the verifier really checks"

    # 2. Rotate on A (its config; A is running), grace 5 s.
    cli_started = time.time()
    out = cli(a.config_path, "domain", "rotate-dkim", DOMAIN, "--grace", f"{GRACE}s")
    cli_ended = time.time()
    new_selector, signing_from = parse_signing_from(out)
    assert new_selector != old_selector, out
    # signing_from is whole seconds: now (rounded down) + grace.
    assert cli_started - 1 <= signing_from - GRACE <= cli_ended, (
        f"signing_from {signing_from} is not {GRACE}s after the rotation "
        f"({cli_started:.3f}..{cli_ended:.3f}): {out}"
    )
    asked = time.time()
    after = dkim_records(a.config_path)
    answered = time.time()
    published = by_name(after)
    new_name = f"{new_selector}._domainkey.{DOMAIN}"
    assert published.get(old_name) == old_value, f"the old key stays published: {after}"
    assert new_name in published, f"the new key is published at once: {after}"
    new_value = published[new_name]
    assert new_value != old_value
    if answered < signing_from:  # still in the grace: the old key signs, the new is next
        assert after == {"dkim": (old_name, old_value), "dkim-next": (new_name, new_value)}, after
    elif asked >= signing_from:  # the grace had ended already (a slow machine)
        assert after == {"dkim-retiring": (old_name, old_value), "dkim": (new_name, new_value)}, after
    new_pem = a.data_dir / "dkim" / f"{DOMAIN}.{new_selector}.pem"
    assert new_pem.is_file(), f"rotate-dkim wrote no {new_pem}"

    # 3. B's data_dir receives the new key and the rotation state through the database
    #    (every 2 s on each node), well before the grace ends.
    b_dkim = b.data_dir / "dkim"

    def b_has_the_rotation():
        pem = b_dkim / new_pem.name
        state = b_dkim / f"{DOMAIN}.json"
        return (
            pem.is_file()
            and pem.read_bytes() == new_pem.read_bytes()
            and state.is_file()
            and new_selector in state.read_text()
        )

    wait_for(b_has_the_rotation, GRACE + 10, interval=0.1,
             message=f"B's {b_dkim} never got {new_pem.name} and the rotation state from A")
    assert by_name(dkim_records(b.config_path)) == published, (
        "B publishes other DKIM records than A after the rotation"
    )
    both = dnsfunc_for([(old_name, old_value), (new_name, new_value)])

    # During the grace B still signs with the original key (the new one is only published).
    if time.time() < signing_from - 1:
        during = deliver(b, relay, "during@example.org", "during the grace")
        tags = signature_tags(during)
        if int(tags.get("t", 0)) < int(signing_from):
            assert tags["s"] == old_selector, f"B signed with {tags['s']} before the grace ended"
        assert dkim.verify(during, dnsfunc=both)
        print(f"during the grace B signed with {tags['s']}, {float(tags.get('t', 0)) - signing_from:+.1f}s "
              "from signing_from")

    # 4. Once the grace has passed, B signs with the new key: within PROMISE seconds of
    #    signing_from (SPEC 13). A message signed before signing_from must still carry
    #    the old selector. Judged by the signature's own t= (signing time).
    wait_for(lambda: time.time() >= signing_from, GRACE + 5, interval=0.05,
             message="the grace never ended")
    deadline = signing_from + PROMISE + 10  # 10 s slack for queue and delivery
    n = 0
    while True:
        n += 1
        content = deliver(b, relay, f"after-{n}@example.org", f"after the grace {n}")
        tags = signature_tags(content)
        signed_at = float(tags["t"]) if "t" in tags else time.time()
        assert tags["d"] == DOMAIN, tags
        assert dkim.verify(content, dnsfunc=both), f"dkimpy refused B's signature (s={tags['s']})"
        if tags["s"] == new_selector:
            break
        assert tags["s"] == old_selector, tags
        assert signed_at < signing_from + PROMISE, (
            f"B still signed with {old_selector} {signed_at - signing_from:.1f}s after the "
            f"grace ended (SPEC 13: within {PROMISE:.0f}s)"
        )
        assert time.time() < deadline, "B never signed with the new selector"
        time.sleep(0.2)

    print(f"B signed with {new_selector} at t={signed_at:.0f}, {signed_at - signing_from:+.1f}s "
          f"from signing_from, after {n} message(s) past the grace")
    assert signed_at >= int(signing_from), (
        f"B signed with {new_selector} {signing_from - signed_at:.1f}s before its grace ended"
    )
    # The new key alone verifies it; the old one alone does not.
    assert dkim.verify(content, dnsfunc=dnsfunc_for([(new_name, new_value)]))
    assert not dkim.verify(content, dnsfunc=dnsfunc_for([(old_name, old_value)]))
    # And A, where the rotation was made, signs with the new key too.
    from_a = deliver(a, relay, "from-a@example.org", "from A after the grace")
    assert signature_tags(from_a)["s"] == new_selector
    assert dkim.verify(from_a, dnsfunc=both)

    assert time.monotonic() - started < 60, "the test took too long"
