"""The SMTP listener as a client sees it (SPEC 6.1): extensions, relaying, limits, the
smuggling-safe DATA scanner, STARTTLS, timeouts and connection caps. smtplib where it can
say what we mean, a raw socket where it cannot."""

import hashlib
import signal
import subprocess
import time

import pytest

from conftest import (
    HOSTNAME,
    RawSMTP,
    client_tls_context,
    nl,
    raw_session,
    send,
    smtp_client,
    text_message,
    unique,
    wait_for,
)

EXTENSIONS = ["pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking"]


def simple_raw(subject: str, body: str = "body line\r\n") -> bytes:
    return (
        f"From: alice@example.org\r\nTo: support@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.example.org>\r\n\r\n{body}"
    ).encode()


def drained(daemon):
    return daemon.metric("postern_webhook_backlog") == 0


# ---------------------------------------------------------------- EHLO / HELO / STARTTLS


def test_ehlo_advertises_extensions_without_starttls(hook, postern):
    d = postern(hook)
    with smtp_client(d) as s:
        code, resp = s.ehlo("client.example.org")
        assert code == 250
        assert resp.decode().splitlines()[0].split()[0] == HOSTNAME
        for ext in EXTENSIONS:
            assert ext in s.esmtp_features, f"{ext} not advertised: {resp!r}"
        assert s.esmtp_features["size"] == "41943040"
        assert "starttls" not in s.esmtp_features, "STARTTLS advertised without a certificate"
        code, msg = s.docmd("STARTTLS")
        assert code >= 500, (code, msg)
        assert s.noop()[0] == 250


def test_helo_has_no_extensions(hook, postern):
    d = postern(hook)
    with RawSMTP(d.smtp_addr) as c:
        assert c.reply().code == 220
        r = c.cmd("HELO client.example.org")
        assert r.code == 250 and len(r.lines) == 1, r
        # HELO is enough to send mail
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<support@example.test>").code == 250


def test_starttls_then_mail(hook, postern, tls_cert):
    cert, key = tls_cert
    d = postern(hook, smtp={"tls_cert": str(cert), "tls_key": str(key)})
    subject = unique("Over TLS")
    with smtp_client(d) as s:
        s.ehlo()
        for ext in EXTENSIONS + ["starttls"]:
            assert ext in s.esmtp_features, f"{ext} not advertised"
        code, _ = s.starttls(context=client_tls_context())
        assert code == 220
        assert s.sock.version() is not None
        code, resp = s.ehlo()
        assert code == 250
        assert "starttls" not in s.esmtp_features, "STARTTLS advertised again after TLS (RFC 3207)"
        for ext in EXTENSIONS:
            assert ext in s.esmtp_features
        code, _ = s.docmd("STARTTLS")
        assert code == 503, f"second STARTTLS answered {code}"
        msg = text_message(subject, body="sent over TLS\n")
        assert s.send_message(msg, to_addrs=["support@example.test"]) == {}
        s.quit()
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == "sent over TLS\n"


@pytest.mark.parametrize("injected", ["RSET", "MAIL FROM:<evil@example.org>"])
def test_starttls_command_injection_is_discarded(hook, postern, tls_cert, injected):
    cert, key = tls_cert
    d = postern(hook, smtp={"tls_cert": str(cert), "tls_key": str(key)})
    with raw_session(d) as c:
        c.send(f"STARTTLS\r\n{injected}\r\n")
        r = c.reply()
        assert r.code == 220, r
        assert c.buf == b"", f"plaintext after the 220: {c.buf!r}"
        c.starttls()
        r = c.cmd("EHLO client.example.org")
        assert r.code == 250, r
        assert len(r.lines) > 1 and r.lines[0].startswith(HOSTNAME), (
            f"first reply over TLS is not the EHLO answer (injected {injected!r} answered?): {r}"
        )
        assert any(line.upper().startswith("PIPELINING") for line in r.lines), r
        # the injected MAIL (if any) is not in effect: RCPT is out of sequence
        r = c.cmd("RCPT TO:<support@example.test>")
        assert r.code == 503, f"RCPT after injected {injected!r}: {r}"
        r = c.cmd("NOOP")
        assert r.code == 250, r


def test_command_sequence_errors(hook, postern):
    d = postern(hook)
    with RawSMTP(d.smtp_addr) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.example.org").code == 250
        r = c.cmd("RCPT TO:<support@example.test>")
        assert r.code == 503 and r.lines[0].startswith("5.5.1"), r
        assert c.cmd("DATA").code == 503
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 503
        assert c.cmd("DATA").code in (503, 554)
        r = c.cmd("FOOBAR")
        assert r.code in (500, 502), r
        assert c.cmd("RSET").code == 250
        assert c.cmd("RCPT TO:<support@example.test>").code == 503
        r = c.cmd("QUIT")
        assert r.code == 221, r
        assert c.read_until_closed() == b""


# ---------------------------------------------------------------- relaying


RCPT_CASES = {
    "<support@example.test>": 250,
    "<Support@EXAMPLE.TEST>": 250,
    "<a_demo@inbound.example.test>": 250,
    "<user%example.org@example.test>": 250,
    "<example.org!user@example.test>": 250,
    '<"odd@local"@example.test>': 250,
    "<@relay.example.org:support@example.test>": 250,
    "<someone@example.org>": 550,
    "<user@[192.0.2.1]>": 550,
    "<user@[IPv6:2001:db8::1]>": 550,
    "<user@[127.0.0.1]>": 550,
    "<support%example.test@example.org>": 550,
    "<example.test!support@example.org>": 550,
    '<"support@example.test"@example.org>': 550,
    "<@example.test:user@example.org>": 550,
    "<someone@sub.example.test>": 550,
    "<someone@example.test.example.org>": 550,
    "<nobody@inbound.example.test>": 550,
}


def test_relaying_denied(hook, postern):
    d = postern(hook)
    with smtp_client(d) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        for addr, want in RCPT_CASES.items():
            code, msg = s.docmd("RCPT", f"TO:{addr}")
            assert code == want, f"RCPT TO:{addr} -> {code} {msg!r}, want {want}"
            if want == 550:
                assert msg.decode().lower().startswith("5.7.1 relaying denied"), (addr, msg)
        # no open relay: a transaction whose only recipient was refused cannot send DATA
        s.rset()
        assert s.mail("alice@example.org")[0] == 250
        assert s.docmd("RCPT", "TO:<someone@example.org>")[0] == 550
        code, _ = s.docmd("DATA")
        assert code in (503, 554), code


# ---------------------------------------------------------------- size and recipient limits


def test_declared_size_over_limit(hook, postern):
    d = postern(hook)
    with smtp_client(d) as s:
        s.ehlo()
        code, msg = s.mail("alice@example.org", ["SIZE=41943041"])
        assert code == 552 and msg.startswith(b"5.3.4"), (code, msg)
        code, msg = s.mail("alice@example.org", ["SIZE=41943040"])
        assert code == 250, (code, msg)


def test_undeclared_oversize_then_small_message_on_same_connection(hook, postern):
    d = postern(hook, smtp={"max_message_size": 100000}, asset={"max_inbound_size": 100000})
    big_subject, small_subject = unique("Too big"), unique("Small")
    big = simple_raw(big_subject, ("x" * 78 + "\r\n") * 1600)  # ~128 kB
    with smtp_client(d) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "100000"
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        code, msg = s.data(big)
        assert code == 552, (code, msg)
        assert msg[:1] == b"5", msg
        # the connection stays usable
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        code, msg = s.data(simple_raw(small_subject))
        assert code == 250, (code, msg)
        s.quit()
    hook.wait_subject(small_subject)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert big_subject not in [e["subject"] for e in hook.events()]


def test_asset_limit_below_listener_limit(hook, postern):
    d = postern(hook, asset={"max_inbound_size": 150000})
    big_subject, small_subject = unique("Over asset limit"), unique("Under asset limit")
    with smtp_client(d) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        code, msg = s.data(simple_raw(big_subject, ("y" * 78 + "\r\n") * 2500))  # 200 kB
        assert code == 552, (code, msg)
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        assert s.data(simple_raw(small_subject))[0] == 250
    hook.wait_subject(small_subject)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert big_subject not in [e["subject"] for e in hook.events()]


def test_too_many_recipients(hook, postern):
    d = postern(hook, smtp={"max_recipients": 3})
    subject = unique("Three recipients")
    with smtp_client(d) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        for i in range(3):
            assert s.rcpt(f"user{i}@example.test")[0] == 250
        code, msg = s.rcpt("user3@example.test")
        assert code == 452 and msg.startswith(b"4.5.3"), (code, msg)
        code, msg = s.data(simple_raw(subject))
        assert code == 250, (code, msg)
    e = hook.wait_subject(subject).json
    assert sorted(e["to"]) == [f"user{i}@example.test" for i in range(3)]


def test_transaction_state_is_reset(hook, postern):
    """RSET, a new EHLO and a finished transaction each start from nothing: recipients
    never leak into the next message, and the recipient cap counts per transaction."""
    d = postern(hook, smtp={"max_recipients": 3})
    first, second = unique("First"), unique("Second")
    with smtp_client(d) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        for i in range(3):
            assert s.rcpt(f"old{i}@example.test")[0] == 250
        assert s.rset()[0] == 250
        assert s.mail("alice@example.org")[0] == 250
        for i in range(3):
            assert s.rcpt(f"new{i}@example.test")[0] == 250
        assert s.data(simple_raw(first))[0] == 250
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("sales@example.test")[0] == 250
        assert s.data(simple_raw(second))[0] == 250
        # EHLO in the middle of a transaction aborts it
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        assert s.ehlo()[0] == 250
        code, _ = s.docmd("DATA")
        assert code == 503, f"DATA after a new EHLO answered {code}"
    assert sorted(hook.wait_subject(first).json["to"]) == [f"new{i}@example.test" for i in range(3)]
    assert hook.wait_subject(second).json["to"] == ["sales@example.test"]


# ---------------------------------------------------------------- line limits


def test_overlong_command_line(hook, postern):
    d = postern(hook)
    with smtp_client(d) as s:
        s.ehlo()
        code, msg = s.docmd("MAIL", "FROM:<" + "a" * 600 + "@example.org>")
        assert code == 500 and msg.startswith(b"5.5.2"), (code, msg)
        assert s.noop()[0] == 250
        # nothing of the long line is in effect
        assert s.docmd("RCPT", "TO:<support@example.test>")[0] == 503


def test_command_line_of_exactly_512_octets(hook, postern):
    d = postern(hook)
    with raw_session(d) as c:
        r = c.cmd("NOOP " + "x" * 505)  # 512 octets with the CRLF (RFC 5321 4.5.3.1.4)
        assert r.code == 250, r
        r = c.cmd("NOOP " + "x" * 506)  # 513
        assert r.code == 500 and r.lines[0].startswith("5.5.2"), r
        assert c.cmd("NOOP").code == 250


def test_parameter_errors(hook, postern):
    d = postern(hook)
    with raw_session(d) as c:
        r = c.cmd("MAIL FROM:<alice@example.org> FOO=bar")
        assert 500 <= r.code < 600, r
        r = c.cmd("MAIL FROM:<alice@example.org> SIZE=abc")
        assert 500 <= r.code < 600, r
        r = c.cmd("EHLO")
        assert r.code == 501, r
        assert c.cmd("MAIL FROM:<alice@example.org> BODY=8BITMIME SIZE=10").code == 250


def test_nul_in_command(hook, postern):
    d = postern(hook)
    with raw_session(d) as c:
        r = c.cmd("NOOP \x00")
        assert r.code == 500 and r.lines[0].startswith("5.5.2"), r
        assert c.cmd("NOOP").code == 250


def test_text_line_limits_in_data(hook, postern):
    d = postern(hook)
    long_subject, ok_subject, after_subject = unique("1000"), unique("998"), unique("After")
    line998 = "b" * 998
    with smtp_client(d) as s:
        s.ehlo()
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        code, msg = s.data(simple_raw(long_subject, "short\r\n" + "a" * 1000 + "\r\nend\r\n"))
        assert code == 554 and msg.startswith(b"5.5.2"), (code, msg)
        # connection stays usable; 998 octets is still fine
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        code, msg = s.data(simple_raw(ok_subject, line998 + "\r\n"))
        assert code == 250, (code, msg)
        assert s.mail("alice@example.org")[0] == 250
        assert s.rcpt("support@example.test")[0] == 250
        assert s.data(simple_raw(after_subject))[0] == 250
    assert nl(hook.wait_subject(ok_subject).json["textMessage"]) == line998 + "\n"
    hook.wait_subject(after_subject)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert long_subject not in [e["subject"] for e in hook.events()]


# ---------------------------------------------------------------- raw-socket smuggling tests


def test_bare_lf_in_command(hook, postern):
    d = postern(hook)
    with raw_session(d) as c:
        c.send(b"MAIL FROM:<alice@example.org>\nNOOP\r\n")
        r = c.reply()
        assert r.code == 500 and r.lines[0].startswith("5.5.2"), r
        c.send(b"RCPT TO:<support@example.test>\r\n")
        r = c.reply()
        if r.code == 250:  # the server split at the bare LF and answered the NOOP
            r = c.reply()
        assert r.code == 503, f"MAIL with a bare LF was taken: RCPT answered {r}"


def _open_data(c, rcpt="support@example.test"):
    c.send(f"MAIL FROM:<alice@example.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n")
    assert c.reply().code == 250
    assert c.reply().code == 250
    r = c.reply()
    assert r.code == 354, r


@pytest.mark.parametrize("bad", [b"\n", b"\r"], ids=["bare-LF", "bare-CR"])
def test_bare_line_ending_in_data_rejected(hook, postern, bad):
    d = postern(hook)
    subject, after = unique("Bare"), unique("After bare")
    with raw_session(d) as c:
        _open_data(c)
        c.send(simple_raw(subject, "line one" + bad.decode() + "line two\r\n") + b".\r\n")
        r = c.reply()
        assert r.code == 554 and r.lines[0].startswith("5.5.2"), r
        assert c.cmd("RSET").code == 250
        _open_data(c)
        c.send(simple_raw(after) + b".\r\n")
        assert c.reply().code == 250
    hook.wait_subject(after)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert subject not in [e["subject"] for e in hook.events()]


FAKE_TERMINATORS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"]


@pytest.mark.parametrize("fake", FAKE_TERMINATORS, ids=lambda b: repr(b)[2:-1])
def test_fake_end_of_data_does_not_end_data(hook, postern, fake):
    """SMTP smuggling: only <CRLF>.<CRLF> ends DATA. Everything after a fake terminator
    stays message content, so the smuggled transaction is never executed. SPEC 6.1 also
    rejects the bare CR/LF in it: the one reply to the whole DATA is 554 5.5.2."""
    d = postern(hook)
    outer, smuggled, after = unique("Outer"), unique("Smuggled"), unique("After smuggling")
    payload = (
        simple_raw(outer, "before the fake terminator")
        + fake
        + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n"
        + simple_raw(smuggled, "smuggled body\r\n")
        + b".\r\n"
    )
    with raw_session(d) as c:
        _open_data(c)
        c.send(payload)
        r = c.reply()
        assert r.code == 554 and r.lines[0].startswith("5.5.2"), (
            f"reply to DATA containing {fake!r}: {r}"
        )
        c.send(b"QUIT\r\n")
        rest = c.read_until_closed()
        assert rest.startswith(b"221") and rest.count(b"\r\n") == 1, (
            f"replies after the DATA reply (smuggled commands answered?): {rest!r}"
        )
    send(d, text_message(after))
    hook.wait_subject(after)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    subjects = [e["subject"] for e in hook.events()]
    assert smuggled not in subjects and outer not in subjects, subjects


def test_dot_stuffed_lines_do_not_end_data(hook, postern):
    """Lines that begin with a dot are stuffed by the client and unstuffed by the server;
    the text after them is part of the message."""
    d = postern(hook)
    subject = unique("Dots")
    body = ".\n.leading dot\n..\n. \nafter the dots\n"
    send(d, text_message(subject, body=body))
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == body


def test_pipelined_transaction(hook, postern):
    d = postern(hook)
    subject = unique("Pipelined")
    with raw_session(d) as c:
        c.send(
            "MAIL FROM:<alice@example.org>\r\nRCPT TO:<support@example.test>\r\n"
            "RCPT TO:<nobody@example.org>\r\nRCPT TO:<sales@example.test>\r\nDATA\r\n"
        )
        codes = [c.reply().code for _ in range(5)]
        assert codes == [250, 250, 550, 250, 354], codes
        c.send(simple_raw(subject) + b".\r\nNOOP\r\nQUIT\r\n")
        assert c.reply().code == 250
        assert c.reply().code == 250
        assert c.reply().code == 221
    e = hook.wait_subject(subject).json
    assert sorted(e["to"]) == ["sales@example.test", "support@example.test"]


# ---------------------------------------------------------------- BDAT


def test_bdat_chunks_are_concatenated(hook, postern):
    d = postern(hook)
    subject = unique("BDAT")
    chunk1 = simple_raw(subject, "first chunk, a lone dot follows\r\n.\r\nand the ")
    chunk2 = b"second chunk.\r\n"
    with raw_session(d) as c:
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<support@example.test>").code == 250
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        r = c.reply()
        assert r.code == 250, r
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        r = c.reply()
        assert r.code == 250, r
        assert c.cmd("NOOP").code == 250
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == "first chunk, a lone dot follows\n.\nand the second chunk.\n"


def test_bdat_pipelined_with_empty_last(hook, postern):
    d = postern(hook)
    subject = unique("BDAT pipelined")
    msg = simple_raw(subject, "all in one write\r\n")
    half = len(msg) // 2
    with raw_session(d) as c:
        c.send(
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<support@example.test>\r\n"
            + b"BDAT %d\r\n" % half + msg[:half]
            + b"BDAT %d\r\n" % (len(msg) - half) + msg[half:]
            + b"BDAT 0 LAST\r\n"
        )
        codes = [c.reply().code for _ in range(5)]
        assert codes == [250] * 5, codes
    e = hook.wait_subject(subject).json
    assert nl(e["textMessage"]) == "all in one write\n"


def test_bdat_without_mail_skips_its_chunk(hook, postern):
    """The octets of a refused BDAT chunk are data, never commands."""
    d = postern(hook)
    with raw_session(d) as c:
        chunk = b"NOOP\r\nNOOP\r\nNOOP\r\n"
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk + b"QUIT\r\n")
        r = c.reply()
        assert r.code == 503, r
        rest = c.read_until_closed()
        assert rest.startswith(b"221") and rest.count(b"\r\n") == 1, (
            f"chunk bytes were executed as commands: {rest!r}"
        )


def test_bdat_over_size_limit_then_usable(hook, postern):
    d = postern(hook, smtp={"max_message_size": 100000}, asset={"max_inbound_size": 100000})
    big, small = unique("BDAT too big"), unique("BDAT small")
    chunk = simple_raw(big, ("z" * 78 + "\r\n") * 800)  # ~64 kB, twice = 128 kB
    with raw_session(d) as c:
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<support@example.test>").code == 250
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        first = c.reply()
        assert first.code == 250, first
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        assert r.code == 552, r
        assert c.cmd("RSET").code == 250
        msg = simple_raw(small)
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<support@example.test>").code == 250
        c.send(b"BDAT %d LAST\r\n" % len(msg) + msg)
        assert c.reply().code == 250
    hook.wait_subject(small)
    wait_for(lambda: drained(d), 15, message="webhook backlog drained")
    assert big not in [e["subject"] for e in hook.events()]
    assert d.metric("postern_inbound_messages_total", result="rejected") >= 1


def test_bdat_data_timeout(hook, postern):
    d = postern(hook, smtp={"command_timeout": 30, "data_timeout": 2})
    with raw_session(d) as c:
        assert c.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert c.cmd("RCPT TO:<support@example.test>").code == 250
        c.send(b"BDAT 1000 LAST\r\nonly a few octets")
        r = c.reply(timeout=15)
        assert r.code == 421 and r.lines[0] == f"4.4.2 {HOSTNAME} timeout", r
        assert c.read_until_closed(10) == b""


# ---------------------------------------------------------------- timeouts and caps


def test_idle_command_timeout(hook, postern):
    d = postern(hook, smtp={"command_timeout": 2})
    with RawSMTP(d.smtp_addr) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.example.org").code == 250
        started = time.monotonic()
        r = c.reply(timeout=15)
        waited = time.monotonic() - started
        assert r.code == 421 and r.lines[0] == f"4.4.2 {HOSTNAME} timeout", r
        assert waited >= 1.5, f"timed out after {waited:.1f}s with command_timeout = 2"
        assert c.read_until_closed(10) == b"", "connection not closed after 421"


def test_data_timeout(hook, postern):
    d = postern(hook, smtp={"command_timeout": 30, "data_timeout": 2})
    subject = unique("Never finished")
    with raw_session(d) as c:
        _open_data(c)
        c.send(simple_raw(subject, "half a message"))
        r = c.reply(timeout=15)
        assert r.code == 421 and r.lines[0] == f"4.4.2 {HOSTNAME} timeout", r
        assert c.read_until_closed(10) == b""
    after = unique("After data timeout")
    send(d, text_message(after))
    hook.wait_subject(after)
    assert subject not in [e["subject"] for e in hook.events()]


def _third_connection_refused(d):
    c1, c2 = RawSMTP(d.smtp_addr), RawSMTP(d.smtp_addr)
    try:
        assert c1.reply().code == 220
        assert c2.reply().code == 220
        wait_for(lambda: d.metric("postern_smtp_connections") == 2, 5,
                 message="postern_smtp_connections == 2")
        with RawSMTP(d.smtp_addr) as c3:
            r = c3.reply()
            assert r.code == 421 and r.lines[0].startswith("4.7.0"), r
            assert c3.read_until_closed(10) == b"", "not closed after 421"
    finally:
        c1.close()

    def banner_again():
        with RawSMTP(d.smtp_addr) as c:
            return c.reply().code == 220

    wait_for(banner_again, 10, interval=0.1, message="a slot frees up after a client leaves")
    c2.close()


def test_per_ip_connection_cap(hook, postern):
    d = postern(hook, smtp={"max_connections_per_ip": 2})
    _third_connection_refused(d)


def test_global_connection_cap(hook, postern):
    d = postern(hook, smtp={"max_connections": 2})
    _third_connection_refused(d)


def test_tls_handshake_garbage_does_not_hurt(hook, postern, tls_cert):
    cert, key = tls_cert
    d = postern(hook, smtp={"tls_cert": str(cert), "tls_key": str(key)})
    with raw_session(d) as c:
        assert c.cmd("STARTTLS").code == 220
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        try:
            c.read_until_closed(10)
        except (ConnectionResetError, TimeoutError):
            pass
    subject = unique("After garbage")
    send(d, text_message(subject))
    hook.wait_subject(subject)


def _peer_cert(d):
    with RawSMTP(d.smtp_addr) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.example.org").code == 250
        assert c.cmd("STARTTLS").code == 220
        c.starttls()
        der = c.sock.getpeercert(binary_form=True)
    return der


def test_sighup_reloads_certificate(hook, postern, tmp_path):
    def make(cn):
        cert, key = tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert),
                        "-days", "2"], check=True, capture_output=True)
        return cert.read_bytes(), key.read_bytes()

    cert_path, key_path = tmp_path / "live.crt", tmp_path / "live.key"
    a, b = make("first.example.test"), make("second.example.test")
    cert_path.write_bytes(a[0])
    key_path.write_bytes(a[1])
    d = postern(hook, smtp={"tls_cert": str(cert_path), "tls_key": str(key_path)})
    first = hashlib.sha256(_peer_cert(d)).hexdigest()
    cert_path.write_bytes(b[0])
    key_path.write_bytes(b[1])
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: hashlib.sha256(_peer_cert(d)).hexdigest() != first, 10, interval=0.2,
             message="new certificate served after SIGHUP")
    assert d.proc.poll() is None
