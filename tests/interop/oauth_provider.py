"""A local OAuth 2.0 provider and an XOAUTH2 smarthost for the SPEC 15 tests.

``OAuthProvider`` is a threaded ``http.server`` on a free loopback port whose state lives
in this process, so a test can look at it and change it:

* ``GET /authorize``: checks the request (known client, ``response_type=code``, a
  ``redirect_uri``, a PKCE S256 ``code_challenge``) and answers a consent page: a form
  that POSTs the parameters back to ``/authorize/decide`` with an "Allow" and a "Deny"
  button. Allow redirects (302) to ``redirect_uri?code=...&state=...``, Deny to
  ``redirect_uri?error=access_denied&error_description=...&state=...``.
  ``approve(consent_url)`` / ``deny(consent_url)`` do the same without a browser and
  return the redirect's location without following it.
* ``POST /token`` (client in the form body, or HTTP Basic): ``authorization_code`` (code
  unused and unexpired, same ``redirect_uri`` and client, base64url(sha256(verifier)) ==
  challenge), ``refresh_token`` (rotation: every refresh issues a new refresh token and
  the presented one stops working), and the device-code grant (``authorization_pending``,
  ``slow_down`` when polled faster than the interval, ``expired_token``,
  ``access_denied``). Failures are ``400 {"error": "invalid_grant"}`` and friends.
* ``POST /device``: device authorization; ``approve_device(user_code)`` (or the page at
  ``/device/verify``) grants it.
* ``revoke()``: the grants' refresh and access tokens stop working.

Every token request is recorded (``TokenRequest``), with the most requests in flight at
once. ``expires_in`` is what the token endpoint announces; an access token stays usable
``grace`` seconds longer (default 30): postern refreshes when less than a minute is
left, so ``expires_in = 1`` makes every connection refresh, and the grace keeps a slow
machine from failing an AUTH that follows its refresh by more than a second.

``XOAuth2Smarthost`` is a threaded SMTP server on a raw loopback socket that offers only
``AUTH XOAUTH2`` and accepts a bearer token only when the provider holds it valid for the
configured user; MAIL before AUTH gets 530. It records the messages it accepted together
with the bearer that authenticated their session.

Run this file (``python3 tests/interop/oauth_provider.py``) for a self-test of both.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pkce_challenge(verifier: str) -> str:
    """base64url(sha256(verifier)) without padding (RFC 7636 S256)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http_request(url, data: dict | None = None, headers=None, timeout: float = 10.0):
    """GET (or a form POST when ``data`` is given) without following redirects:
    (status, headers with lower-case names, body text)."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


# --------------------------------------------------------------------------- provider state


@dataclass
class AuthorizeRequest:
    """One ``GET /authorize`` as the client sent it."""

    params: dict
    valid: bool
    error: str | None = None


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str
    expires: float
    used: bool = False


@dataclass
class Grant:
    """What one consent (or one device approval) granted: its refresh token chain."""

    id: int
    scope: str
    via: str  # "code" or "device"
    refresh_tokens: list = field(default_factory=list)  # oldest first; the last one is current
    revoked: bool = False

    @property
    def current_refresh_token(self) -> str | None:
        return self.refresh_tokens[-1] if self.refresh_tokens and not self.revoked else None


@dataclass
class Device:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires: float
    interval: float
    approved: bool = False
    denied: bool = False
    redeemed: bool = False
    polls: list = field(default_factory=list)  # monotonic arrival times


@dataclass
class TokenRequest:
    """One ``POST /token``: what came in and what was answered."""

    grant_type: str
    form: dict
    client_auth: str  # "body", "basic" or "none"
    started: float
    status: int = 0
    error: str | None = None
    refresh_token: str | None = None  # the refresh token presented (refresh grant)
    stale: bool = False  # the presented refresh token was one the provider had replaced
    issued_access_token: str | None = None
    issued_refresh_token: str | None = None
    grant_id: int | None = None
    finished: float = 0.0
    test_side: bool = False  # made by the test (``post_token``), not by the client under test

    @property
    def accepted(self) -> bool:
        return self.status == 200


class OAuthProvider:
    """The provider. ``with OAuthProvider() as p:`` or ``start()`` / ``stop()``."""

    def __init__(self, client_id: str = "postern-test", client_secret: str = "s3cret",
                 expires_in: int = 3600, grace: float = 30.0, interval: int = 1,
                 device_ttl: int = 600, code_ttl: int = 600, rotate: bool = True,
                 poll_tolerance: float = 0.05):
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in  # announced lifetime of an access token (seconds)
        self.grace = grace  # extra seconds an access token is accepted after that
        self.interval = interval  # device-code polling interval announced
        self.device_ttl = device_ttl
        self.code_ttl = code_ttl
        self.rotate = rotate  # a refresh issues a new refresh token (Microsoft does)
        self.poll_tolerance = poll_tolerance  # how much earlier than interval a poll may come
        self.token_delay = 0.0  # seconds each token request is held before it is answered
        self.port = _free_port()
        self.lock = threading.Lock()
        self.authorize_requests: list[AuthorizeRequest] = []
        self.codes: dict[str, Code] = {}
        self.grants: list[Grant] = []
        self.refresh_index: dict[str, Grant] = {}
        self.access_tokens: dict[str, tuple[Grant, float]] = {}  # token -> (grant, valid until)
        self.devices: dict[str, Device] = {}
        self.token_requests: list[TokenRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = None
        self._thread = None

    # -- lifecycle
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return self.base + "/authorize"

    @property
    def token_url(self) -> str:
        return self.base + "/token"

    @property
    def device_url(self) -> str:
        return self.base + "/device"

    def start(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _form(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                return {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}

            def _send(self, status, body, content_type="application/json", headers=()):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
                if url.path == "/authorize":
                    self._send(*provider._authorize_page(query))
                elif url.path == "/device/verify":
                    self._send(*provider._device_page(query.get("user_code", "")))
                else:
                    self._send(404, '{"error":"not_found"}')

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                form = self._form()
                if url.path == "/authorize/decide":
                    self._send(*provider._decide(form))
                elif url.path == "/token":
                    self._send(*provider._token(form, self.headers.get("Authorization"),
                                                bool(self.headers.get("X-Test-Side"))))
                elif url.path == "/device":
                    self._send(*provider._device_authorization(form, self.headers.get("Authorization")))
                elif url.path == "/device/verify":
                    self._send(*provider._device_decide(form))
                else:
                    self._send(404, '{"error":"not_found"}')

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that went away mid-answer

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- authorization endpoint
    def _check_authorize(self, q: dict) -> str | None:
        if q.get("client_id") != self.client_id:
            return "unknown client_id"
        if q.get("response_type") != "code":
            return "response_type must be code"
        if not q.get("redirect_uri"):
            return "redirect_uri is missing"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return "PKCE with code_challenge_method=S256 is required"
        if not q.get("state"):
            return "state is missing"
        return None

    def _authorize_page(self, q: dict):
        error = self._check_authorize(q)
        with self.lock:
            self.authorize_requests.append(AuthorizeRequest(dict(q), error is None, error))
        if error:
            return 400, f"<!doctype html><title>Error</title><p>{html.escape(error)}</p>", "text/html"
        keep = ("client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method")
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(q.get(k, ""), quote=True)}">'
            for k in keep
        )
        page = (
            "<!doctype html><html lang=en><head><title>Test provider: consent</title></head><body>"
            f"<h1>Grant access</h1><p id=client>{html.escape(q['client_id'])} asks for "
            f"<code id=scope>{html.escape(q.get('scope', ''))}</code>.</p>"
            f'<form method="post" action="/authorize/decide">{hidden}'
            '<button type="submit" name="decision" value="allow" id="allow">Allow</button> '
            '<button type="submit" name="decision" value="deny" id="deny">Deny</button>'
            "</form></body></html>"
        )
        return 200, page, "text/html; charset=utf-8"

    def _decide(self, form: dict):
        error = self._check_authorize({**form, "response_type": "code"})
        if error:
            return 400, f"<!doctype html><title>Error</title><p>{html.escape(error)}</p>", "text/html"
        params = {}
        if form.get("decision") == "allow":
            code = "c_" + secrets.token_urlsafe(24)
            with self.lock:
                self.codes[code] = Code(code, form["client_id"], form["redirect_uri"],
                                        form.get("scope", ""), form["code_challenge"],
                                        time.monotonic() + self.code_ttl)
            params["code"] = code
        else:
            params["error"] = "access_denied"
            params["error_description"] = "The user denied the request"
        params["state"] = form["state"]
        uri = form["redirect_uri"]
        location = uri + ("&" if "?" in uri else "?") + urllib.parse.urlencode(params)
        return 302, "", "text/plain", [("Location", location)]

    def _consent_form(self, consent_url: str) -> dict:
        status, _, body = http_request(consent_url)
        assert status == 200, f"consent page answered {status}: {body[:300]}"
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body))
        return {k: html.unescape(v) for k, v in fields.items()}

    def approve(self, consent_url: str) -> str:
        """What "Allow" does: the callback URL the browser would be sent to (not followed)."""
        return self._decide_via_http(consent_url, "allow")

    def deny(self, consent_url: str) -> str:
        """What "Deny" does: the callback URL carrying ``error=access_denied``."""
        return self._decide_via_http(consent_url, "deny")

    def _decide_via_http(self, consent_url, decision):
        fields = self._consent_form(consent_url)
        status, headers, body = http_request(self.base + "/authorize/decide",
                                             {**fields, "decision": decision})
        assert status == 302, f"decide answered {status}: {body[:300]}"
        return headers["location"]

    # -- device authorization
    def _device_authorization(self, form: dict, authorization):
        client_id, _, _ = self._client(form, authorization)
        if client_id != self.client_id:
            return 401, json.dumps({"error": "invalid_client"})
        device_code = "d_" + secrets.token_urlsafe(24)
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "".join(secrets.choice(letters) for _ in range(4)) + "-" + \
            "".join(secrets.choice(letters) for _ in range(4))
        with self.lock:
            self.devices[device_code] = Device(device_code, user_code, client_id,
                                               form.get("scope", ""),
                                               time.monotonic() + self.device_ttl, self.interval)
        return 200, json.dumps({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.base + "/device/verify",
            "expires_in": self.device_ttl,
            "interval": self.interval,
        })

    def _device_by_user_code(self, user_code: str) -> Device | None:
        wanted = user_code.strip().upper()
        for d in self.devices.values():
            if d.user_code == wanted:
                return d
        return None

    def approve_device(self, user_code: str):
        with self.lock:
            d = self._device_by_user_code(user_code)
            assert d is not None, f"no device authorization with user code {user_code!r}"
            d.approved = True

    def deny_device(self, user_code: str):
        with self.lock:
            d = self._device_by_user_code(user_code)
            assert d is not None, f"no device authorization with user code {user_code!r}"
            d.denied = True

    def _device_page(self, user_code: str):
        page = (
            "<!doctype html><html lang=en><head><title>Test provider: device</title></head><body>"
            '<h1>Enter the code</h1><form method="post" action="/device/verify">'
            f'<label>Code <input name="user_code" value="{html.escape(user_code, quote=True)}"></label>'
            '<button type="submit" name="decision" value="allow">Allow</button> '
            '<button type="submit" name="decision" value="deny">Deny</button></form></body></html>'
        )
        return 200, page, "text/html; charset=utf-8"

    def _device_decide(self, form: dict):
        with self.lock:
            d = self._device_by_user_code(form.get("user_code", ""))
            if d is None:
                return 400, "<!doctype html><p>Unknown code</p>", "text/html"
            if form.get("decision") == "allow":
                d.approved = True
            else:
                d.denied = True
        return 200, "<!doctype html><p>Done: you may close this window.</p>", "text/html"

    # -- token endpoint
    def _client(self, form: dict, authorization: str | None):
        if authorization and authorization.lower().startswith("basic "):
            try:
                raw = base64.b64decode(authorization[6:].strip()).decode()
                cid, _, secret = raw.partition(":")
                return urllib.parse.unquote(cid), urllib.parse.unquote(secret), "basic"
            except (ValueError, UnicodeDecodeError):
                return None, None, "basic"
        if "client_id" in form:
            return form.get("client_id"), form.get("client_secret"), "body"
        return None, None, "none"

    def _issue(self, grant: Grant, req: TokenRequest) -> dict:
        """New access token (and refresh token when due) for ``grant``; caller holds the lock."""
        access = "at_" + secrets.token_urlsafe(24)
        self.access_tokens[access] = (grant, time.monotonic() + self.expires_in + self.grace)
        answer = {"access_token": access, "token_type": "Bearer",
                  "expires_in": self.expires_in, "scope": grant.scope}
        if self.rotate or not grant.refresh_tokens:
            refresh = "rt_" + secrets.token_urlsafe(24)
            grant.refresh_tokens.append(refresh)
            self.refresh_index[refresh] = grant
            answer["refresh_token"] = refresh
            req.issued_refresh_token = refresh
        req.issued_access_token = access
        req.grant_id = grant.id
        return answer

    def _new_grant(self, scope: str, via: str) -> Grant:
        g = Grant(len(self.grants) + 1, scope, via)
        self.grants.append(g)
        return g

    def _token(self, form: dict, authorization, test_side: bool = False):
        grant_type = form.get("grant_type", "")
        client_id, secret, how = self._client(form, authorization)
        req = TokenRequest(grant_type, dict(form), how, time.monotonic(), test_side=test_side)
        with self.lock:
            self.token_requests.append(req)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.token_delay:
                time.sleep(self.token_delay)  # the test widens the window concurrency shows in
            with self.lock:
                status, answer = self._token_locked(req, form, client_id, secret)
            req.status = status
            req.error = answer.get("error")
            return status, json.dumps(answer)
        finally:
            with self.lock:
                self.in_flight -= 1
                req.finished = time.monotonic()

    def _token_locked(self, req: TokenRequest, form: dict, client_id, secret):
        if client_id != self.client_id or secret != self.client_secret:
            return 401, {"error": "invalid_client"}
        now = time.monotonic()
        if req.grant_type == "authorization_code":
            code = self.codes.get(form.get("code", ""))
            if code is None or code.used or code.expires < now:
                return 400, {"error": "invalid_grant", "error_description": "unknown, used or expired code"}
            code.used = True
            if code.client_id != client_id or code.redirect_uri != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant", "error_description": "redirect_uri or client differs"}
            verifier = form.get("code_verifier", "")
            if not verifier or pkce_challenge(verifier) != code.challenge:
                return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
            return 200, self._issue(self._new_grant(code.scope, "code"), req)
        if req.grant_type == "refresh_token":
            presented = form.get("refresh_token", "")
            req.refresh_token = presented
            grant = self.refresh_index.get(presented)
            if grant is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            if presented != grant.refresh_tokens[-1]:
                req.stale = True
                return 400, {"error": "invalid_grant", "error_description": "refresh token was replaced"}
            if grant.revoked:
                return 400, {"error": "invalid_grant", "error_description": "the grant was revoked"}
            wanted = set(form.get("scope", "").split())
            if wanted - set(grant.scope.split()):
                return 400, {"error": "invalid_scope"}
            return 200, self._issue(grant, req)
        if req.grant_type == DEVICE_GRANT:
            d = self.devices.get(form.get("device_code", ""))
            if d is None or d.redeemed:
                return 400, {"error": "invalid_grant"}
            last = d.polls[-1] if d.polls else None
            d.polls.append(now)
            if d.expires < now:
                return 400, {"error": "expired_token"}
            if last is not None and now - last < d.interval - self.poll_tolerance:
                d.interval += 5  # RFC 8628 3.5
                return 400, {"error": "slow_down"}
            if d.denied:
                return 400, {"error": "access_denied"}
            if not d.approved:
                return 400, {"error": "authorization_pending"}
            d.redeemed = True
            return 200, self._issue(self._new_grant(d.scope, "device"), req)
        return 400, {"error": "unsupported_grant_type"}

    # -- test-side controls and queries
    def revoke(self, grant: Grant | None = None):
        """Revokes ``grant`` (default: every grant): its refresh and access tokens stop working."""
        with self.lock:
            for g in [grant] if grant else self.grants:
                g.revoked = True
            self.access_tokens = {t: v for t, v in self.access_tokens.items() if not v[0].revoked}

    def expire_access_tokens(self):
        """Every access token issued so far stops working (the grants' refresh tokens still
        work): what a server does when a token dies before its announced expiry."""
        with self.lock:
            self.access_tokens = {}

    def access_token_valid(self, token: str) -> bool:
        with self.lock:
            entry = self.access_tokens.get(token)
            return entry is not None and not entry[0].revoked and entry[1] > time.monotonic()

    def valid_access_tokens(self) -> list[str]:
        now = time.monotonic()
        with self.lock:
            return [t for t, (g, until) in self.access_tokens.items() if not g.revoked and until > now]

    def grant_of(self, access_token: str) -> Grant | None:
        with self.lock:
            entry = self.access_tokens.get(access_token)
            return entry[0] if entry else None

    def requests(self, grant_type: str | None = None, test_side: bool = False) -> list[TokenRequest]:
        """The token requests of ``grant_type`` (all when None) the client made (or with
        ``test_side``, those the test made through ``post_token``)."""
        with self.lock:
            return [r for r in self.token_requests
                    if (grant_type is None or r.grant_type == grant_type) and r.test_side == test_side]

    def refreshes(self) -> list[TokenRequest]:
        return self.requests("refresh_token")

    def device_polls(self) -> list[TokenRequest]:
        return self.requests(DEVICE_GRANT)

    def post_token(self, form: dict) -> tuple[int, dict]:
        """A token request made by the test itself (e.g. replaying an old refresh token)."""
        status, _, body = http_request(self.token_url, {
            "client_id": self.client_id, "client_secret": self.client_secret, **form},
            {"X-Test-Side": "1"})
        return status, json.loads(body)


# --------------------------------------------------------------------------- XOAUTH2 smarthost


@dataclass
class Accepted:
    mail_from: str
    rcpts: list
    data: bytes
    user: str
    bearer: str
    received: float = field(default_factory=time.monotonic)


@dataclass
class AuthAttempt:
    user: str | None
    bearer: str | None
    ok: bool
    reason: str


def xoauth2_decode(b64: str) -> tuple[str | None, str | None]:
    """``user=<u>\\x01auth=Bearer <t>\\x01\\x01`` -> (u, t); (None, None) when malformed."""
    try:
        raw = base64.b64decode(b64, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not raw.endswith("\x01\x01"):
        return None, None
    parts = dict(p.split("=", 1) for p in raw[:-2].split("\x01") if "=" in p)
    auth = parts.get("auth", "")
    if not auth.startswith("Bearer "):
        return parts.get("user"), None
    return parts.get("user"), auth[len("Bearer "):]


def xoauth2_encode(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


class XOAuth2Smarthost:
    """SMTP on loopback that takes mail only after a valid ``AUTH XOAUTH2``.

    ``close_after_data``: the server closes the connection after answering a message's
    DATA, so the client must connect (and authenticate, hence refresh) for every message.
    ``gmail_errors``: a refused token gets ``334 <base64 JSON>`` first, and ``535`` after
    the client's empty line (what Gmail does); otherwise ``535 5.7.8`` at once.
    """

    def __init__(self, provider: OAuthProvider, username: str = "sender@example.test",
                 close_after_data: bool = True, gmail_errors: bool = False):
        self.provider = provider
        self.username = username
        self.close_after_data = close_after_data
        self.gmail_errors = gmail_errors
        self.messages: list[Accepted] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.connections = 0
        self.max_sessions = 0  # the most connections open at once
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.running = False
        self._open: set[socket.socket] = set()
        self._thread = None

    def start(self):
        self.running = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.running = False
        try:
            self.sock.close()
        except OSError:
            pass
        self.drop_sessions()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def drop_sessions(self):
        """Closes every open client connection (authenticated sessions end)."""
        with self.lock:
            conns, self._open = list(self._open), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._open.add(conn)
                self.max_sessions = max(self.max_sessions, len(self._open))
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def received_by(self, address: str) -> list[Accepted]:
        with self.lock:
            return [m for m in self.messages if address in m.rcpts]

    def _check(self, b64: str) -> tuple[bool, str, str | None, str | None]:
        user, bearer = xoauth2_decode(b64)
        if user is None and bearer is None:
            ok, reason = False, "malformed XOAUTH2 response"
        elif user != self.username:
            ok, reason = False, f"user {user!r} is not {self.username!r}"
        elif bearer is None or not self.provider.access_token_valid(bearer):
            ok, reason = False, "the bearer token is not valid"
        else:
            ok, reason = True, "ok"
        with self.lock:
            self.auth_attempts.append(AuthAttempt(user, bearer, ok, reason))
        return ok, reason, user, bearer

    def _session(self, conn: socket.socket):
        f = conn.makefile("rb")

        def say(line: str):
            conn.sendall(line.encode() + b"\r\n")

        def read() -> str | None:
            line = f.readline(65536)
            if not line:
                return None
            return line.rstrip(b"\r\n").decode("utf-8", "replace")

        authed: tuple[str, str] | None = None
        mail_from, rcpts = None, []
        try:
            say("220 smarthost.example.test ESMTP test XOAUTH2 smarthost")
            while True:
                line = read()
                if line is None:
                    return
                verb = line.split(" ", 1)[0].upper()
                arg = line[len(verb):].strip()
                if verb in ("EHLO", "HELO"):
                    if verb == "HELO":
                        say("250 smarthost.example.test")
                    else:
                        say("250-smarthost.example.test\r\n250-SIZE 52428800\r\n"
                            "250-8BITMIME\r\n250-AUTH XOAUTH2\r\n250 ENHANCEDSTATUSCODES")
                elif verb == "AUTH":
                    mech, _, initial = arg.partition(" ")
                    if mech.upper() != "XOAUTH2":
                        say("504 5.5.4 Unrecognized authentication type")
                        continue
                    if authed:
                        say("503 5.5.1 Already authenticated")
                        continue
                    if not initial:
                        say("334 ")
                        initial = read() or ""
                    ok, reason, user, bearer = self._check(initial.strip())
                    if ok:
                        authed = (user, bearer)
                        say("235 2.7.0 Accepted")
                    else:
                        if self.gmail_errors:
                            err = json.dumps({"status": "400", "schemes": "Bearer",
                                              "scope": "https://mail.example.test/smtp"})
                            say("334 " + base64.b64encode(err.encode()).decode())
                            read()
                        say(f"535 5.7.8 Username and Password not accepted ({reason})")
                elif verb == "MAIL":
                    if not authed:
                        say("530 5.7.0 Authentication required")
                        continue
                    m = re.match(r"FROM:\s*<([^>]*)>", arg, re.IGNORECASE)
                    if not m:
                        say("501 5.5.4 Syntax: MAIL FROM:<address>")
                        continue
                    mail_from, rcpts = m.group(1), []
                    say("250 2.1.0 OK")
                elif verb == "RCPT":
                    m = re.match(r"TO:\s*<([^>]*)>", arg, re.IGNORECASE)
                    if mail_from is None or not m:
                        say("503 5.5.1 MAIL first")
                        continue
                    rcpts.append(m.group(1))
                    say("250 2.1.5 OK")
                elif verb == "DATA":
                    if mail_from is None or not rcpts:
                        say("503 5.5.1 RCPT first")
                        continue
                    say("354 Go ahead")
                    chunks = []
                    while True:
                        raw = f.readline(1 << 20)
                        if not raw:
                            return
                        if raw in (b".\r\n", b".\n"):
                            break
                        chunks.append(raw[1:] if raw.startswith(b"..") else raw)
                    with self.lock:
                        self.messages.append(Accepted(mail_from, rcpts, b"".join(chunks),
                                                      authed[0], authed[1]))
                    say("250 2.0.0 OK queued")
                    mail_from, rcpts = None, []
                    if self.close_after_data:
                        return
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    say("250 2.0.0 OK")
                elif verb == "NOOP":
                    say("250 2.0.0 OK")
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    return
                else:
                    say("502 5.5.2 Command not recognized")
        except OSError:
            return
        finally:
            with self.lock:
                self._open.discard(conn)
            try:
                f.close()
                conn.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- self-test


def _self_test():  # pragma: no cover - run by hand
    import smtplib

    with OAuthProvider(expires_in=1) as p, XOAuth2Smarthost(p) as smarthost:
        verifier = secrets.token_urlsafe(48)
        redirect = "http://127.0.0.1:9/oauth/callback"
        consent = p.auth_url + "?" + urllib.parse.urlencode({
            "response_type": "code", "client_id": p.client_id, "redirect_uri": redirect,
            "scope": "s offline_access", "state": "st1",
            "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"})
        assert http_request(consent.replace("S256", "plain"))[0] == 400
        location = p.approve(consent)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        assert location.startswith(redirect + "?") and q["state"] == "st1"
        bad = p.post_token({"grant_type": "authorization_code", "code": q["code"],
                            "redirect_uri": redirect, "code_verifier": "wrong" * 10})
        assert bad == (400, {"error": "invalid_grant",
                             "error_description": "PKCE verification failed"}), bad
        location = p.approve(consent)
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]
        status, tok = p.post_token({"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": redirect, "code_verifier": verifier})
        assert status == 200 and tok["expires_in"] == 1, tok
        assert p.post_token({"grant_type": "authorization_code", "code": code,
                             "redirect_uri": redirect, "code_verifier": verifier})[0] == 400
        # Rotation: the new one works once, the old one never again.
        status, tok2 = p.post_token({"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
        assert status == 200 and tok2["refresh_token"] != tok["refresh_token"]
        status, err = p.post_token({"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
        assert (status, err["error"]) == (400, "invalid_grant")
        assert p.requests("refresh_token", test_side=True)[-1].stale
        # HTTP Basic client authentication works as well.
        basic = base64.b64encode(f"{p.client_id}:{p.client_secret}".encode()).decode()
        status, _, body = http_request(p.token_url, {"grant_type": "refresh_token",
                                                     "refresh_token": tok2["refresh_token"]},
                                       {"Authorization": f"Basic {basic}"})
        tok3 = json.loads(body)
        assert status == 200 and p.refreshes()[-1].client_auth == "basic"
        assert len(p.refreshes()) == 1 and len(p.requests(test_side=True)) == 5
        # SMTP: only a valid bearer for the right user, MAIL before AUTH refused.
        with smtplib.SMTP("127.0.0.1", smarthost.port) as s:
            s.ehlo("client.test")
            assert s.mail("a@example.test")[0] == 530
            code_, _ = s.docmd("AUTH", "XOAUTH2 " + xoauth2_encode("sender@example.test", "nope"))
            assert code_ == 535
            code_, _ = s.docmd("AUTH", "XOAUTH2 " + xoauth2_encode("other@example.test", tok3["access_token"]))
            assert code_ == 535
            assert s.docmd("AUTH", "XOAUTH2")[0] == 334
            assert s.docmd(xoauth2_encode("sender@example.test", tok3["access_token"]))[0] == 235
            s.sendmail("a@example.test", ["b@example.org"], b"Subject: hi\r\n\r\n.dot\r\n")
        assert smarthost.messages[0].bearer == tok3["access_token"]
        assert smarthost.messages[0].data == b"Subject: hi\r\n\r\n.dot\r\n"
        p.revoke()
        assert not p.access_token_valid(tok3["access_token"])
        assert p.post_token({"grant_type": "refresh_token", "refresh_token": tok3["refresh_token"]})[0] == 400
        # Device flow: pending, slow_down when too fast, then the grant.
        status, _, body = http_request(p.device_url, {"client_id": p.client_id, "scope": "s"})
        dev = json.loads(body)
        form = {"grant_type": DEVICE_GRANT, "device_code": dev["device_code"]}
        assert p.post_token(form)[1]["error"] == "authorization_pending"
        assert p.post_token(form)[1]["error"] == "slow_down"
        p.approve_device(dev["user_code"])
        p.devices[dev["device_code"]].polls.clear()
        status, tok4 = p.post_token(form)
        assert status == 200 and p.access_token_valid(tok4["access_token"])
        assert p.max_in_flight == 1
    print("oauth_provider self-test: ok")


if __name__ == "__main__":
    _self_test()
