"""swaks, the Swiss Army Knife for SMTP, against the inbound listener."""

import os
import shutil
import subprocess

import pytest

from conftest import b64decode, nl, unique

pytestmark = pytest.mark.skipif(
    shutil.which("swaks") is None,
    reason="swaks is not on PATH (apt-get install -y swaks; .ci/run installs it)",
)


def swaks(daemon, *args, timeout=60):
    cmd = [
        "swaks",
        "--server", f"127.0.0.1:{daemon.smtp_port}",
        "--helo", "client.example.org",
        "--to", "support@example.test",
        "--from", "a@example.org",
        "--timeout", "30",
        *args,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"swaks exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_swaks_plain(hook, postern):
    d = postern(hook)
    subject = unique("swaks")
    out = swaks(d, "--header", f"Subject: {subject}", "--body", "hi")
    assert "<-  250" in out and "<-  221" in out, out
    e = hook.wait_subject(subject).json
    assert e["from"] == "a@example.org"
    assert e["to"] == ["support@example.test"]
    assert nl(e["textMessage"]).strip() == "hi"


def test_swaks_pipeline(hook, postern):
    d = postern(hook)
    subject = unique("swaks pipelined")
    out = swaks(d, "--pipeline", "--header", f"Subject: {subject}", "--body", "pipelined hi")
    assert "PIPELINING" in out, out
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]).strip() == "pipelined hi"


def test_swaks_attach(hook, postern, tmp_path):
    d = postern(hook)
    subject = unique("swaks attach")
    blob = b"%PDF-1.4\n" + os.urandom(20000) + b"\n%%EOF\n"
    path = tmp_path / "report.pdf"
    path.write_bytes(blob)
    swaks(
        d,
        "--header", f"Subject: {subject}",
        "--body", "see the attachment",
        "--attach-type", "application/pdf",
        "--attach", f"@{path}",
    )
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]).strip() == "see the attachment"
    assert [(a["name"], a["contentType"]) for a in e["attachments"]] == [
        ("report.pdf", "application/pdf")]
    assert b64decode(e["attachments"][0]["content"]) == blob


def test_swaks_starttls(hook, postern, tls_cert):
    cert, key = tls_cert
    d = postern(hook, smtp={"tls_cert": str(cert), "tls_key": str(key)})
    subject = unique("swaks tls")
    out = swaks(d, "--tls", "--header", f"Subject: {subject}", "--body", "over tls")
    assert "TLS started" in out, out
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]).strip() == "over tls"


def test_swaks_relay_refused(hook, postern):
    d = postern(hook)
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{d.smtp_port}", "--to", "victim@example.org",
         "--from", "a@example.org", "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode != 0
    assert "550 5.7.1" in p.stdout, p.stdout
