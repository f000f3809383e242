"""OAuth accounts for smarthosts (SPEC 15) end to end: a `postern serve` child process
whose asset sends through an ``auth = "oauth2"`` route, a local OAuth 2.0 provider and an
SMTP smarthost that takes only ``AUTH XOAUTH2`` with a bearer token the provider holds
valid (both in ``oauth_provider.py``).

The route starts with an empty store (no ``refresh_token`` in the file): the account is
connected by ``postern route authorize`` (consent URL, or ``--device``), by the admin API
(``POST /admin/routes/{asset}/authorize``) or by the admin page's "Connect account"
button in Chromium; the provider redirects to postern's ``/oauth/callback``. The tests
check PKCE and the single-use ``state`` (forged, replayed, provider error), refresh-token
rotation (also across a restart, and from a ``refresh_token`` in the file), what a
revoked grant does (mail deferred, never bounced; ``/readyz``, the metric, ``route test``,
the routes page and a throttled log line say "needs re-authorization"; mail flows again
after a new authorization), the device-code flow (polling, denial, expiry), one refresh
for concurrent sends, the store watcher leaving this node's own authorization alone, and
an access token the smarthost refuses (refreshed, never bounced).

The smarthost closes the connection after each message, so each message opens a session
and authenticates; with ``expires_in = 1`` every connection needs a refresh.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, postern_bin, wait_for
from oauth_provider import OAuthProvider, XOAuth2Smarthost, http_request, pkce_challenge

ASSET = "a_demo"
SERVICE_KEY = "oauth-key"
USERNAME = "sender@example.test"
SCOPE = "https://mail.example.test/smtp offline_access"
FINAL_CODES = {"7500", "7501", "7520", "7590", "7591", "7592"}
NEEDS = "needs re-authorization"
DKIM = {"selector": "oauth1", "algorithm": "ed25519-sha256"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def provider():
    with OAuthProvider(client_id="postern-test", client_secret="s3cret") as p:
        yield p


@pytest.fixture
def smarthost(provider):
    with XOAuth2Smarthost(provider, username=USERNAME, close_after_data=True) as s:
        yield s


def oauth_route(provider, smarthost) -> dict:
    return {
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": smarthost.port,
        "security": "none",
        "auth": "oauth2",
        "provider": "custom",
        "username": USERNAME,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "auth_url": provider.auth_url,
        "token_url": provider.token_url,
        "device_url": provider.device_url,
        "scope": SCOPE,
    }


class Env:
    """The daemon and its peers, with the calls the tests make on them."""

    def __init__(self, daemon, hook, provider, smarthost):
        self.daemon = daemon
        self.hook = hook
        self.provider = provider
        self.smarthost = smarthost
        self.commands: list[AuthorizeCommand] = []

    @property
    def callback_uri(self) -> str:
        return self.daemon.http_base + "/oauth/callback"

    # -- mail
    def send_mail(self, rcpt: str | None = None, subject: str = "OAuth test") -> tuple[str, str]:
        """One message through the Messaging API: (tid, recipient)."""
        rcpt = rcpt or f"r-{uuid.uuid4().hex[:10]}@example.org"
        body = {
            "channel": "email",
            "from": "news@example.test",
            "to": [{"email": [rcpt]}],
            "content": {"type": "text", "subject": subject, "text": "Hello through XOAUTH2."},
        }
        req = urllib.request.Request(
            f"{self.daemon.http_base}/v2/messages", data=json.dumps(body).encode(),
            headers={"key": SERVICE_KEY, "content-type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202
            return json.loads(resp.read())["messages"][0]["tid"], rcpt

    def delivered(self, rcpt: str, timeout: float = 30.0):
        """Waits until the smarthost accepted a message for ``rcpt``; returns it."""
        return wait_for(lambda: self.smarthost.received_by(rcpt), timeout,
                        message=f"the smarthost got the message for {rcpt}")[0]

    def send_and_deliver(self, timeout: float = 30.0):
        tid, rcpt = self.send_mail()
        return tid, self.delivered(rcpt, timeout)

    def notifications(self, tid: str) -> list[dict]:
        out = []
        for h in self.hook.all(path="/dlr"):
            try:
                note = h.json["deliveryInfoNotification"]
            except (ValueError, KeyError, TypeError):
                continue
            if note.get("transid") == tid:
                out.append(note)
        return out

    # -- admin API and health
    def admin_json(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        status, _, raw = self.daemon.http(method, path, headers, data)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def start_flow(self, device: bool = False) -> dict:
        status, body = self.admin_json("POST", f"/admin/routes/{ASSET}/authorize",
                                       {"device": True} if device else None)
        assert status == 200, (status, body)
        return body

    def flow_status(self, flow: str) -> dict:
        status, body = self.admin_json("GET", f"/admin/routes/{ASSET}/authorize/{flow}")
        assert status == 200, (status, body)
        return body

    def queue_entry(self, tid: str) -> dict:
        status, body = self.admin_json("GET", f"/admin/queue/{tid}")
        assert status == 200, (status, body)
        return body

    def readyz(self) -> tuple[int, str]:
        status, _, body = self.daemon.http_get("/readyz")
        return status, body.decode("utf-8", "replace")

    def wait_readyz(self, status: int, timeout: float = 10.0) -> str:
        """Waits until ``/readyz`` answers ``status``; returns the body."""
        def answered():
            got = self.readyz()
            return got if got[0] == status else None

        return wait_for(answered, timeout, interval=0.1, message=f"/readyz answers {status}")[1]

    def needs_authorization(self) -> float:
        return self.daemon.metric("postern_route_needs_authorization", asset=ASSET)

    def route_test(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(postern_bin()), "--config", str(self.daemon.config_path), "route", "test", ASSET],
            check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def log_lines(self, needle: str) -> list[str]:
        lines = []
        for p in self.daemon.stderr_paths:
            try:
                text = p.read_text("utf-8", "replace")
            except OSError:
                continue
            lines += [line for line in text.splitlines() if needle in line]
        return lines

    # -- authorization
    def callback(self, url: str) -> tuple[int, str]:
        """GETs the provider's redirect on postern (not following any further redirect)."""
        assert url.startswith(self.callback_uri + "?"), f"redirect goes elsewhere: {url}"
        status, _, body = http_request(url)
        return status, body

    def authorize_via_api(self):
        """A complete code flow through the admin API: returns (flow id, the new grant)."""
        before = len(self.provider.grants)
        flow = self.start_flow()
        status, page = self.callback(self.provider.approve(flow["url"]))
        assert status == 200 and "Account connected" in page, (status, page)
        wait_for(lambda: self.flow_status(flow["flow"])["status"] == "authorized", 10,
                 message="the flow is authorized")
        assert len(self.provider.grants) == before + 1
        return flow["flow"], self.provider.grants[-1]

    def authorize_command(self, *extra: str) -> AuthorizeCommand:
        cmd = AuthorizeCommand(self.daemon.config_path, *extra)
        self.commands.append(cmd)
        return cmd

    def grant_of(self, accepted) -> int:
        g = self.provider.grant_of(accepted.bearer)
        assert g is not None, f"bearer {accepted.bearer[:12]}... was not issued by the provider"
        return g.id


class AuthorizeCommand:
    """``postern route authorize`` as a child process; its output is read as it comes."""

    def __init__(self, config_path: Path, *extra: str):
        self.proc = subprocess.Popen(
            [str(postern_bin()), "--config", str(config_path), "route", "authorize", ASSET, *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={k: v for k, v in os.environ.items() if k != "POSTERN_CONFIG"},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "stdout:\n" + "\n".join(self.out) + "\nstderr:\n" + "\n".join(self.err)

    def wait_line(self, pattern: str, timeout: float = 20.0) -> re.Match:
        rx = re.compile(pattern)

        def found():
            for line in list(self.out):
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                raise AssertionError(f"the command exited ({self.proc.returncode}) first:\n{self.output()}")
            return None

        return wait_for(found, timeout, message=f"a line matching {pattern!r}")

    def consent_url(self, timeout: float = 20.0) -> str:
        """The URL printed, indented by two spaces, on the line after the instruction."""
        self.wait_line(r"^Open this address in a browser and grant access \(it expires in 10 minutes\):$",
                       timeout)
        i = next(i for i, line in enumerate(self.out) if line.startswith("Open this address"))
        wait_for(lambda: len(self.out) > i + 1, timeout, message="the URL line")
        line = self.out[i + 1]
        assert line.startswith("  ") and not line.startswith("   "), repr(line)
        return line.strip()

    def device_code(self, timeout: float = 20.0) -> tuple[str, str]:
        m = self.wait_line(r"^On any device, open (\S+) and enter the code (\S+)$", timeout)
        return m.group(1), m.group(2)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the command did not exit within {timeout}s:\n{self.output()}")
        for t in self._threads:
            t.join(5)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def service(asset: str = ASSET) -> dict:
    return {"id": "svc_oauth", "key": SERVICE_KEY, "secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQ=",
            "tps": 100, "assets": [asset]}


@pytest.fixture
def start(postern, hook, provider, smarthost):
    """Factory: ``start(queue={...})`` -> Env with a running daemon on the oauth2 route."""
    envs: list[Env] = []

    def launch(**sections) -> Env:
        daemon = postern(
            hook,
            # The test machines share a busy disk; nothing here is about free space.
            server={"min_free_space": 64 << 20},
            # ed25519: the key made on the first send takes no time (an RSA key takes
            # seconds in a debug build, which would shift every test's timing).
            asset={"route": oauth_route(provider, smarthost), "dkim": DKIM},
            services=[service()],
            **sections,
        )
        env = Env(daemon, hook, provider, smarthost)
        envs.append(env)
        return env

    yield launch
    for env in envs:
        for cmd in env.commands:
            cmd.kill()


# --------------------------------------------------------------------------- tests


def test_authorize_command_and_callback_store_the_grant_and_mail_goes_out(start, provider, smarthost):
    """`postern route authorize` prints a consent URL with PKCE S256, the provider's
    redirect to `/oauth/callback` answers "Account connected", the command exits 0, the
    code is exchanged once with the matching verifier, and mail is then delivered with a
    bearer token from that grant (the refresh token is kept in the store, not the file)."""
    env = start()
    config_before = env.daemon.config_path.read_text()
    cmd = env.authorize_command()
    url = cmd.consent_url()
    assert url.startswith(provider.auth_url + "?"), url
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert q["response_type"] == "code"
    assert q["client_id"] == "postern-test"
    assert q["redirect_uri"] == env.callback_uri
    assert q["scope"] == SCOPE
    assert q["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"]), q["code_challenge"]
    assert len(q["state"]) >= 16, "the state is not guessable"

    location = provider.approve(url)
    status, page = env.callback(location)
    assert status == 200, page
    assert "Account connected" in page
    assert cmd.wait(30) == 0, cmd.output()
    assert any(line.startswith("Authorized") for line in cmd.out), cmd.output()

    exchanges = provider.requests("authorization_code")
    assert len(exchanges) == 1 and exchanges[0].accepted, exchanges
    ex = exchanges[0]
    assert ex.form["redirect_uri"] == env.callback_uri
    assert pkce_challenge(ex.form["code_verifier"]) == q["code_challenge"]
    assert 43 <= len(ex.form["code_verifier"]) <= 128
    grant = provider.grants[0]

    tid, accepted = env.send_and_deliver()
    assert accepted.user == USERNAME
    assert env.grant_of(accepted) == grant.id
    env.hook.wait_hook(lambda e: e["deliveryInfoNotification"]["transid"] == tid
                       and e["deliveryInfoNotification"]["deliveryInfo"]["code"] == "7501", path="/dlr")
    assert env.needs_authorization() == 0
    assert env.readyz()[0] == 200
    assert env.daemon.config_path.read_text() == config_before, "the config file is not written"
    logs = "\n".join(env.log_lines(""))
    for secret in grant.refresh_tokens + [provider.client_secret, ex.form["code_verifier"]]:
        assert secret not in logs, "a secret appears in the daemon's log"


def test_refresh_tokens_rotate_and_the_newest_survives_a_restart(start, provider, smarthost):
    """With `expires_in = 1` every connection refreshes. Each refresh presents the refresh
    token the previous answer rotated to (the provider never sees a replaced one from
    postern); an old token replayed by the test is refused with `invalid_grant`; after a
    restart the daemon goes on from the newest token in its store."""
    provider.expires_in = 1
    env = start()
    _, grant = env.authorize_via_api()
    for _ in range(4):
        _, accepted = env.send_and_deliver()
        assert env.grant_of(accepted) == grant.id

    refreshes = provider.refreshes()
    assert len(refreshes) >= 4, f"one refresh per connection, got {len(refreshes)}"
    assert not any(r.stale for r in refreshes), "postern presented a replaced refresh token"
    assert all(r.accepted for r in refreshes), [(r.status, r.error) for r in refreshes]
    assert [r.refresh_token for r in refreshes] == grant.refresh_tokens[:len(refreshes)], \
        "each refresh presents the token the previous answer issued"
    assert all(r.form.get("client_id") == "postern-test" or r.client_auth == "basic" for r in refreshes)

    status, answer = provider.post_token({"grant_type": "refresh_token",
                                          "refresh_token": grant.refresh_tokens[0]})
    assert (status, answer["error"]) == (400, "invalid_grant")
    status, answer = provider.post_token({"grant_type": "refresh_token",
                                          "refresh_token": grant.refresh_tokens[-2]})
    assert (status, answer["error"]) == (400, "invalid_grant")

    newest = grant.refresh_tokens[-1]
    env.daemon.restart()
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == grant.id
    after = provider.refreshes()[len(refreshes):]
    assert after, "the daemon refreshed after the restart"
    assert after[0].refresh_token == newest and after[0].accepted, \
        (after[0].refresh_token == newest, after[0].error)
    assert not any(r.stale for r in provider.refreshes())


def test_a_refresh_token_in_the_file_is_only_the_first_value(postern, hook, provider, smarthost):
    """A `refresh_token` in the config file starts the chain; from then on the store's
    newest token is used, after a restart as well, and after a new authorization the
    store's grant wins over the file's token."""
    provider.expires_in = 1
    verifier = "file-token-" + "v" * 50
    redirect = "http://127.0.0.1:9/elsewhere"
    consent = provider.auth_url + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": provider.client_id, "redirect_uri": redirect,
        "scope": SCOPE, "state": "operator", "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256"})
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(provider.approve(consent)).query))["code"]
    status, answer = provider.post_token({"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": redirect, "code_verifier": verifier})
    assert status == 200, answer
    in_file = answer["refresh_token"]
    route = {**oauth_route(provider, smarthost), "refresh_token": in_file}
    daemon = postern(hook, server={"min_free_space": 64 << 20}, asset={"route": route, "dkim": DKIM},
                     services=[service()])
    env = Env(daemon, hook, provider, smarthost)
    first = provider.grants[0]
    for _ in range(2):
        _, accepted = env.send_and_deliver()
        assert env.grant_of(accepted) == first.id
    refreshes = provider.refreshes()
    assert refreshes[0].refresh_token == in_file
    assert [r.refresh_token for r in refreshes] == first.refresh_tokens[:len(refreshes)]

    daemon.restart()
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == first.id
    assert not any(r.stale for r in provider.refreshes()), "the file's token was used again"

    _, second = env.authorize_via_api()
    daemon.restart()
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == second.id
    assert not any(r.stale for r in provider.refreshes())
    assert all(r.accepted for r in provider.refreshes())


def test_a_revoked_grant_defers_mail_until_a_new_authorization(start, provider, smarthost):
    """The provider answers `invalid_grant` after a revocation: mail stays queued (no final
    notification, nothing at the smarthost), `/readyz` answers 503 naming the asset and
    "needs re-authorization", the metric is 1, `postern route test` exits 1 saying so, and
    the log says it once however many attempts fail. A new authorization (the command)
    sends the deferred mail within 30 s (the queue's own retry is 10 minutes away) with
    the new grant; the metric goes back to 0 and `/readyz` to 200."""
    provider.expires_in = 1
    env = start(queue={"retry_base": 600})
    _, first = env.authorize_via_api()
    env.send_and_deliver()
    assert env.readyz()[0] == 200 and env.needs_authorization() == 0

    provider.revoke()
    smarthost.drop_sessions()
    refreshes_before = len(provider.refreshes())
    # The refused refresh takes half a second, so the messages are in flight together when
    # the grant is refused (as a busy queue's would be).
    provider.token_delay = 0.5
    sent = [env.send_mail(subject=f"Deferred {i}") for i in range(4)]
    tids = [tid for tid, _ in sent]

    def all_deferred():
        return all(env.queue_entry(t)["attempts"] >= 1 and env.queue_entry(t)["state"] == "retry"
                   for t in tids)

    wait_for(all_deferred, 30, interval=0.2, message="every message was tried and deferred")
    provider.token_delay = 0
    # More failed attempts right away: each asks the token endpoint again (or not at all).
    for tid in tids:
        status, body = env.admin_json("POST", f"/admin/queue/{tid}/retry")
        assert status == 200, (status, body)
    wait_for(lambda: all(env.queue_entry(t)["attempts"] >= 2 for t in tids), 30, interval=0.2,
             message="the retried messages were tried again")

    status, listing = env.admin_json("GET", f"/admin/queue?asset={ASSET}")
    assert status == 200
    queued = {e["tid"]: e for e in listing["entries"]}
    assert set(tids) <= set(queued), "the deferred mail is in the queue"
    for tid in tids:
        assert queued[tid]["state"] == "retry"
        assert not any(n["deliveryInfo"]["code"] in FINAL_CODES for n in env.notifications(tid)), \
            env.notifications(tid)
    assert all(not smarthost.received_by(rcpt) for _, rcpt in sent)
    failed = provider.refreshes()[refreshes_before:]
    assert failed and all(r.error == "invalid_grant" for r in failed), [(r.status, r.error) for r in failed]
    # Counted now (after 2 x 4 failed attempts), asserted at the end so that the rest of
    # the behaviour is checked even when the log is too talkative.
    logged = env.log_lines(NEEDS)

    body = env.wait_readyz(503)
    assert ASSET in body and NEEDS in body, body
    assert env.needs_authorization() == 1
    test = env.route_test()
    assert test.returncode == 1, (test.stdout, test.stderr)
    assert NEEDS in test.stdout + test.stderr, (test.stdout, test.stderr)

    cmd = env.authorize_command()
    status, page = env.callback(provider.approve(cmd.consent_url()))
    assert status == 200 and "Account connected" in page, page
    assert cmd.wait(30) == 0, cmd.output()
    authorized = time.monotonic()
    second = provider.grants[-1]
    assert second.id != first.id
    for _, rcpt in sent:
        accepted = env.delivered(rcpt, timeout=max(1.0, 30 - (time.monotonic() - authorized)))
        assert env.grant_of(accepted) == second.id
    for tid in tids:
        env.hook.wait_hook(lambda e, tid=tid: e["deliveryInfoNotification"]["transid"] == tid
                           and e["deliveryInfoNotification"]["deliveryInfo"]["code"] == "7501",
                           path="/dlr")
    wait_for(lambda: env.needs_authorization() == 0, 10, message="the metric is back to 0")
    env.wait_readyz(200)
    test = env.route_test()
    assert test.returncode == 0, (test.stdout, test.stderr)
    assert not any(n["deliveryInfo"]["code"] in {"7520", "7592"}
                   for tid in tids for n in env.notifications(tid))
    assert 1 <= len(logged) <= 2, (
        f"{len(tids)} messages deferred twice within seconds: the log says \"{NEEDS}\" at most "
        f"once a minute, not per message; {len(logged)} lines:\n" + "\n".join(logged))


def test_a_refusal_soon_after_an_authorization_stays_until_the_next_one(start, provider, smarthost):
    """A grant refused within seconds of its authorization: the daemon's periodic look at
    the store (for grants other nodes made) must not take that earlier authorization for a
    new one. For 8 s (past that look) the provider is not asked again, the metric stays 1,
    `/readyz` 503, the message deferred, and the log has said "needs re-authorization"
    once."""
    provider.expires_in = 1
    env = start(queue={"retry_base": 600})
    env.authorize_via_api()
    provider.revoke()
    tid, _ = env.send_mail(subject="Refused early")
    wait_for(lambda: env.queue_entry(tid)["attempts"] >= 1 and env.queue_entry(tid)["state"] == "retry",
             30, interval=0.1, message="the message was tried and deferred")
    assert env.needs_authorization() == 1
    refreshes = len(provider.refreshes())

    # An invariant over a window, not a synchronisation: polled until the window ends.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert env.needs_authorization() == 1, "the flag was cleared without a new authorization"
        assert env.readyz()[0] == 503
        assert len(provider.refreshes()) == refreshes, "the refused grant was presented again"
        time.sleep(0.1)
    entry = env.queue_entry(tid)
    assert entry["state"] == "retry" and not smarthost.received_by(entry["recipients"][0])
    logged = env.log_lines(NEEDS)
    assert len(logged) <= 2, "\n".join(logged)


def test_a_forged_state_is_refused_and_changes_nothing(start, provider, smarthost):
    """A callback with a state postern never issued (carrying a code the provider really
    issued to someone else) answers 400 naming the state, is never exchanged at the
    provider, leaves the pending flow pending and the stored grant in use; the genuine
    callback for that flow still works afterwards."""
    env = start()
    _, first = env.authorize_via_api()
    flow = env.start_flow()

    # The attacker's own consent at the same provider, for postern's redirect URI.
    verifier = "attacker-" + "v" * 50
    attacker_url = provider.auth_url + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": provider.client_id,
        "redirect_uri": env.callback_uri, "scope": SCOPE, "state": "attacker-state",
        "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"})
    attacker = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(provider.approve(attacker_url)).query))
    exchanges = len(provider.requests("authorization_code"))

    for query in ({"code": attacker["code"], "state": "forged-" + uuid.uuid4().hex},
                  {"code": attacker["code"], "state": attacker["state"]},
                  {"code": attacker["code"]}):
        status, page = env.callback(env.callback_uri + "?" + urllib.parse.urlencode(query))
        assert status == 400, (query, status, page)
        assert "unknown state" in page.lower(), page
        assert "Account connected" not in page
    assert len(provider.requests("authorization_code")) == exchanges, "a forged callback was exchanged"
    assert env.flow_status(flow["flow"])["status"] == "pending"
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == first.id

    status, page = env.callback(provider.approve(flow["url"]))
    assert status == 200 and "Account connected" in page, page
    wait_for(lambda: env.flow_status(flow["flow"])["status"] == "authorized", 10)
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == provider.grants[-1].id != first.id


def test_a_replayed_callback_is_refused_and_the_first_result_stands(start, provider, smarthost):
    """The same callback URL a second time answers 400 saying the state was already used;
    the code is not exchanged again, the flow stays authorized and mail uses the grant
    of the first callback."""
    env = start()
    flow = env.start_flow()
    location = provider.approve(flow["url"])
    status, page = env.callback(location)
    assert status == 200 and "Account connected" in page, page
    wait_for(lambda: env.flow_status(flow["flow"])["status"] == "authorized", 10)
    grant = provider.grants[-1]

    status, page = env.callback(location)
    assert status == 400, page
    assert "already used" in page.lower(), page
    assert len(provider.requests("authorization_code")) == 1, "the code was exchanged again"
    assert env.flow_status(flow["flow"])["status"] == "authorized"
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == grant.id
    assert env.needs_authorization() == 0


def test_a_provider_error_fails_the_flow_and_stores_nothing(start, provider, smarthost):
    """"Deny" at the provider: postern's callback answers 400 naming `access_denied`,
    exchanges nothing, the command exits 1 with `postern: authorization failed: ...`,
    and the grant stored before keeps sending mail. The same through the admin API:
    the flow's status is `failed` with the provider's error."""
    env = start()
    _, first = env.authorize_via_api()

    cmd = env.authorize_command()
    location = provider.deny(cmd.consent_url())
    assert "error=access_denied" in location
    status, page = env.callback(location)
    assert status == 400, page
    assert "access_denied" in page and "Account connected" not in page
    assert cmd.wait(30) == 1, cmd.output()
    assert any(line.startswith("postern: authorization failed: ") for line in cmd.err), cmd.output()
    assert len(provider.requests("authorization_code")) == 1, "only the first flow's code"

    flow = env.start_flow()
    status, _ = env.callback(provider.deny(flow["url"]))
    assert status == 400
    def ended():
        got = env.flow_status(flow["flow"])
        return got if got["status"] != "pending" else None

    result = wait_for(ended, 10, message="the flow ended")
    assert result["status"] == "failed" and "access_denied" in result.get("error", ""), result

    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == first.id
    assert env.needs_authorization() == 0


def test_device_flow_polls_at_the_interval_and_connects_the_account(start, provider, smarthost):
    """`postern route authorize --device` prints the verification URI and user code, polls
    the token endpoint no faster than the interval (the provider never had to answer
    `slow_down`), exits 0 once the code is approved, and mail goes out with the device
    grant."""
    provider.interval = 1
    env = start()
    cmd = env.authorize_command("--device")
    uri, user_code = cmd.device_code()
    assert uri == provider.base + "/device/verify"
    device = next(d for d in provider.devices.values() if d.user_code == user_code)
    assert device.client_id == "postern-test" and device.scope == SCOPE
    wait_for(lambda: len(provider.device_polls()) >= 3, 15, message="postern polls while pending")
    assert all(r.error == "authorization_pending" for r in provider.device_polls())
    provider.approve_device(user_code)
    assert cmd.wait(30) == 0, cmd.output()
    assert any(line.startswith("Authorized") for line in cmd.out), cmd.output()

    polls = provider.device_polls()
    assert polls[-1].accepted and polls[-1].grant_id is not None
    assert not any(r.error == "slow_down" for r in polls), [r.error for r in polls]
    gaps = [b - a for a, b in zip(device.polls, device.polls[1:])]
    assert min(gaps) >= provider.interval - provider.poll_tolerance, gaps
    assert provider.grants[-1].via == "device"

    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == provider.grants[-1].id

    # The same flow through the admin API.
    flow = env.start_flow(device=True)
    assert flow["verificationUri"] == uri and flow["interval"] == provider.interval
    assert env.flow_status(flow["flow"])["status"] == "pending"
    provider.approve_device(flow["userCode"])
    wait_for(lambda: env.flow_status(flow["flow"])["status"] == "authorized", 15,
             message="the API's device flow is authorized")
    assert provider.grants[-1].via == "device"
    assert not any(r.error == "slow_down" for r in provider.device_polls())


def test_this_nodes_own_authorization_is_not_taken_for_another_nodes(start, provider, smarthost):
    """The daemon looks at the store every few seconds for grants other nodes made; an
    authorization made on this node must not look new to that look: the access token
    refreshed after it (valid for an hour) keeps serving mail, with no further refresh,
    for 8 s of sending (past the look)."""
    env = start()
    env.authorize_via_api()
    env.send_and_deliver()
    refreshes = len(provider.refreshes())
    assert refreshes <= 1
    deadline = time.monotonic() + 8
    sent = 0
    while time.monotonic() < deadline:
        env.send_and_deliver()
        sent += 1
        assert len(provider.refreshes()) == refreshes, (
            f"message {sent} after the authorization needed a new refresh although the access "
            "token had an hour left")
    assert sent >= 3


def test_a_denied_or_expired_device_code_fails_the_command(start, provider, smarthost):
    """`--device` when the user denies the code: the command exits 1 naming
    `access_denied`; when nobody enters the code before it expires (the provider gives it
    2 s here): exit 1 as well. No grant is made either way."""
    env = start()
    cmd = env.authorize_command("--device")
    _, user_code = cmd.device_code()
    provider.deny_device(user_code)
    assert cmd.wait(30) == 1, cmd.output()
    assert any(line.startswith("postern: authorization failed: ") and "access_denied" in line
               for line in cmd.err), cmd.output()

    provider.device_ttl = 2
    cmd = env.authorize_command("--device")
    cmd.device_code()
    assert cmd.wait(30) == 1, cmd.output()
    assert any(line.startswith("postern: authorization failed: ") for line in cmd.err), cmd.output()
    assert provider.grants == []
    assert not any(r.error == "slow_down" for r in provider.device_polls())


def test_concurrent_sends_make_one_refresh(start, provider, smarthost):
    """Several messages handed to the route at once while the access token needs
    refreshing: one token request (none in parallel), and every message is delivered
    with that token."""
    provider.expires_in = 1  # the token from the code exchange is stale at once
    env = start()
    env.authorize_via_api()
    provider.expires_in = 3600
    provider.token_delay = 1.0  # a refresh takes a second: parallel ones would overlap
    smarthost.close_after_data = False
    before = len(provider.refreshes())
    sent = [env.send_mail(subject=f"Burst {i}") for i in range(6)]
    accepted = [env.delivered(rcpt) for _, rcpt in sent]
    refreshes = provider.refreshes()[before:]
    assert len(refreshes) == 1, f"{len(refreshes)} refreshes for one burst: " + ", ".join(
        f"[{r.started - refreshes[0].started:.3f}s..{r.finished - refreshes[0].started:.3f}s "
        f"{r.status} {r.error or ''}]" for r in refreshes)
    assert provider.max_in_flight == 1
    assert len({a.bearer for a in accepted}) == 1, "one access token served the burst"
    assert smarthost.max_sessions >= 2, "the messages were sent in parallel"


@pytest.mark.parametrize("gmail_errors", [False, True], ids=["535", "334-json-then-535"])
def test_an_access_token_the_smarthost_refuses_is_refreshed_not_bounced(start, provider, smarthost,
                                                                         gmail_errors):
    """The smarthost refuses a cached access token that died early (535 5.7.8, or Gmail's
    334 with a base64 JSON error first): postern drops it, refreshes, authenticates with
    the new token and delivers; nothing bounces."""
    smarthost.gmail_errors = gmail_errors
    env = start()
    _, grant = env.authorize_via_api()
    env.send_and_deliver()
    refreshes = len(provider.refreshes())
    provider.expire_access_tokens()
    tid, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == grant.id
    assert len(provider.refreshes()) == refreshes + 1 and provider.refreshes()[-1].accepted
    refused = [a for a in smarthost.auth_attempts if not a.ok]
    assert len(refused) == 1 and refused[0].reason == "the bearer token is not valid", refused
    env.hook.wait_hook(lambda e: e["deliveryInfoNotification"]["transid"] == tid
                       and e["deliveryInfoNotification"]["deliveryInfo"]["code"] == "7501", path="/dlr")
    assert not any(n["deliveryInfo"]["code"] in {"7520", "7592"} for n in env.notifications(tid))
    assert env.needs_authorization() == 0


class Browser:
    """Chromium driven by Selenium as ``test_admin_ui`` does (by path, headless), signed in
    to the admin page of ``env``; screenshots go to ``shots``."""

    def __init__(self, ui, env: Env, shots: Path):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        self.ui = ui
        self.env = env
        self.shots = shots
        opts = ui.Options()
        opts.binary_location = ui.CHROMIUM
        for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
            opts.add_argument(arg)
        if os.geteuid() == 0:
            opts.add_argument("--no-sandbox")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = ui.webdriver.Chrome(service=ui.Service(executable_path=ui.CHROMEDRIVER),
                                          options=opts)
        d = self.driver
        d.get(env.daemon.http_base + "/admin/ui/")
        if "sign-in" in d.current_url:
            d.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
            ui.submit(d, d.find_element(By.CSS_SELECTOR, "form.card button[type=submit]"))
            ui.wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Dashboard"))

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), f"screenshot {path} not saved"
        print(f"screenshot: {path}")
        return path

    def console(self) -> list[str]:
        """What the browser logged at level SEVERE (a CSP refusal, for one)."""
        try:
            return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        except Exception:  # noqa: BLE001 - diagnostics only
            return []

    def connect_buttons(self):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.XPATH, "//form//button[normalize-space(.)='Connect account']")


@pytest.fixture
def browser(start, tmp_path):
    """Factory: ``browser(env)`` -> a signed-in Browser, quit on teardown."""
    ui = pytest.importorskip("test_admin_ui")
    if ui.webdriver is None:
        pytest.skip("selenium is not installed (scripts/test installs it)")
    for path in (ui.CHROMIUM, ui.CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing: apt-get install chromium chromium-driver")
    made: list[Browser] = []

    def make(env: Env) -> Browser:
        b = Browser(ui, env, tmp_path)
        made.append(b)
        return b

    yield make
    for b in made:
        b.driver.quit()


def test_connect_account_in_the_browser(start, provider, smarthost, browser):
    """The admin page in Chromium: Routes shows the oauth2 route with "Connect account"
    (a form POST carrying the CSRF token); the button sends the browser to the provider's
    consent page; "Allow" leads to postern's "Account connected" page with a link back to
    the admin page; then mail goes out with the new grant. Screenshots go to the test's
    tmp dir."""
    from selenium.webdriver.common.by import By

    env = start()
    b = browser(env)
    d = b.driver
    d.get(env.daemon.http_base + "/admin/ui/routes")
    b.shot("routes-before")
    assert "no account connected yet" in d.find_element(By.TAG_NAME, "main").text.lower()
    buttons = b.connect_buttons()
    assert len(buttons) == 1, "one Connect account button for the one oauth2 route"
    form = buttons[0].find_element(By.XPATH, "./ancestor::form")
    assert form.get_attribute("method").lower() == "post"
    assert form.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    buttons[0].click()
    try:
        b.ui.wait(d, 15).until(lambda drv: drv.current_url.startswith(provider.auth_url + "?"))
    except Exception as e:
        b.shot("connect-refused")
        raise AssertionError(
            f"the browser stayed on {d.current_url}; its console: {b.console()}") from e
    b.ui.wait(d).until(lambda drv: drv.find_elements(By.ID, "allow"))
    assert d.find_element(By.TAG_NAME, "h1").text == "Grant access"
    b.shot("consent")
    b.ui.submit(d, d.find_element(By.ID, "allow"))
    assert d.current_url.startswith(env.callback_uri + "?"), d.current_url
    assert "Account connected" in d.find_element(By.TAG_NAME, "h1").text
    b.shot("connected")
    back = [a for a in d.find_elements(By.TAG_NAME, "a")
            if a.get_attribute("href") == env.daemon.http_base + "/admin/ui/routes"]
    assert back, "a link back to the admin page's routes"
    b.ui.submit(d, back[0])
    main = d.find_element(By.TAG_NAME, "main").text.lower()
    assert "no account connected yet" not in main and NEEDS not in main, main
    b.shot("routes-after")

    grant = provider.grants[-1]
    _, accepted = env.send_and_deliver()
    assert env.grant_of(accepted) == grant.id


def test_routes_page_says_a_revoked_grant_needs_re_authorization(start, provider, smarthost, browser):
    """After the provider refused the grant, the admin page's Routes shows "needs
    re-authorization" for the route, still with its "Connect account" button."""
    provider.expires_in = 1
    env = start()
    env.authorize_via_api()
    env.send_and_deliver()
    b = browser(env)
    b.driver.get(env.daemon.http_base + "/admin/ui/routes")
    assert NEEDS not in b.driver.find_element("tag name", "main").text.lower()
    provider.revoke()
    env.send_mail(subject="After revocation")
    wait_for(lambda: env.needs_authorization() == 1, 30, interval=0.2,
             message="the route needs re-authorization")
    b.driver.get(env.daemon.http_base + "/admin/ui/routes")
    main = b.driver.find_element("tag name", "main").text
    assert NEEDS in main.lower(), main
    assert b.connect_buttons()
    b.shot("routes-needs-reauthorization")
