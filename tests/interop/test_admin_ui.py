"""The admin web page (SPEC 14) in a real browser: Debian's Chromium driven by Selenium
through Debian's chromedriver, both launched by path (nothing is downloaded: Selenium
Manager is switched off). One `postern serve` child process with an aiosmtpd smarthost, a
webhook receiver and a DNS server on loopback; the browser signs in, verifies a domain,
imports suppressions, replays a dead letter, finds a sent message by recipient and reads
its timeline, and holds, releases and cancels queued mail. Requests without the session
or with a wrong CSRF token are shown to change nothing.

A screenshot of every page is saved (PNG) under ``$POSTERN_UI_SHOTS`` when set, else under
pytest's temporary directory, and its path printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest
from aiosmtpd.controller import Controller

from conftest import ADMIN_TOKEN, Daemon, WebhookReceiver, free_port, postern_bin, send, text_message, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SERVICE_KEY = "ui-key"
DOMAIN = "example.test"

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - scripts/test installs it
    webdriver = None


# --------------------------------------------------------------------------- peers


class Relay:
    """aiosmtpd smarthost recording (mail_from, rcpts, data)."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"

    def received_by(self, address):
        with self.lock:
            return [m for m in self.messages if address in m[1]]


class DnsServer:
    """An authoritative UDP DNS server on loopback answering TXT and MX from ``zone``
    ({(name, "TXT"|"MX"): [values]}), which the test may change while it runs."""

    def __init__(self):
        self.zone: dict[tuple[str, str], list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _answer(self, query):
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        for q in query.question:
            name = q.name.to_text().rstrip(".").lower()
            kind = dns.rdatatype.to_text(q.rdtype)
            values = self.zone.get((name, kind), [])
            if not values and not any(n == name for n, _ in self.zone):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            for v in values:
                if kind == "TXT":
                    chunks = [v.encode()[i:i + 255] for i in range(0, len(v.encode()), 255)]
                    rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
                else:
                    rdata = dns.rdata.from_text(dns.rdataclass.IN, q.rdtype, v)
                resp.answer.append(dns.rrset.from_rdata(q.name, 60, rdata))
        return resp

    def _serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - not a DNS query: ignore it
                continue
            self.sock.sendto(self._answer(query).to_wire(), peer)

    def stop(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


def config_text(workdir, smtp_port, http_port, hook, relay_port, dns_port):
    return f"""
[server]
hostname = "mx.example.test"
data_dir = "{workdir / 'data'}"
public_url = "http://127.0.0.1:{http_port}"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
[http]
listen = "127.0.0.1:{http_port}"
[admin]
token = "{ADMIN_TOKEN}"
[dns]
resolver = ["127.0.0.1:{dns_port}"]
[queue]
retry_base = 1
[webhooks]
retry_for = 86400
timeout = 10
[[service]]
id = "svc_ui"
key = "{SERVICE_KEY}"
secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
tps = 100
assets = ["a_demo"]
[[asset]]
id = "a_demo"
name = "Demo"
domains = ["{DOMAIN}"]
inbound = true
incoming_webhook = "{hook.base}/mo"
delivery_webhook = "{hook.base}/dlr"
[asset.route]
kind = "smtp"
host = "127.0.0.1"
port = {relay_port}
security = "none"
auth = "none"
[asset.dkim]
selector = "ui1"
algorithm = "ed25519-sha256"
"""


class Env:
    def __init__(self, daemon, hook, relay, dns_server, shots):
        self.daemon = daemon
        self.hook = hook
        self.relay = relay
        self.dns = dns_server
        self.shots = shots
        self.driver = None

    @property
    def base(self):
        return self.daemon.http_base

    def admin(self, method, path):
        return self.daemon.admin(method, path)

    def api_send(self, to, subject, html=None, send_at=None):
        content = {"type": "text", "subject": subject, "text": "Hello from the admin UI test."}
        if html:
            content = {"type": "html", "subject": subject, "html": html, "text": "Hello."}
        body = {"channel": "email", "from": f"news@{DOMAIN}", "to": [{"email": [to]}], "content": content}
        if send_at:
            body["sendAt"] = send_at
        req = urllib.request.Request(
            f"{self.base}/v2/messages", data=json.dumps(body).encode(),
            headers={"key": SERVICE_KEY, "content-type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202
            return json.loads(resp.read())["messages"][0]["tid"]

    def queue_state(self, tid):
        status, body = self.admin("GET", f"/admin/queue/{tid}")
        assert status == 200, (status, body)
        return body["state"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    postern_bin()
    workdir = tmp_path_factory.mktemp("admin-ui")
    shots = Path(os.environ.get("POSTERN_UI_SHOTS") or tmp_path_factory.mktemp("ui-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    hook = WebhookReceiver().start()
    relay = Relay()
    relay.controller.start()
    dns_server = DnsServer()
    smtp_port, http_port = free_port(), free_port()
    text = config_text(workdir, smtp_port, http_port, hook, relay.port, dns_server.port)
    daemon = Daemon(workdir, text, smtp_port, http_port).start()
    e = Env(daemon, hook, relay, dns_server, shots)
    try:
        yield e
    finally:
        if e.driver is not None:
            e.driver.quit()
        daemon.stop()
        dns_server.stop()
        relay.controller.stop()
        hook.stop()


@pytest.fixture
def browser(env):
    """The module's Chromium, signed in."""
    if webdriver is None:
        pytest.skip("selenium is not installed (scripts/test installs it)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} is missing: apt-get install chromium chromium-driver")
    if env.driver is None:
        opts = Options()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
            opts.add_argument(arg)
        if os.geteuid() == 0:
            opts.add_argument("--no-sandbox")
        env.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    d = env.driver
    d.get(env.base + "/admin/ui/")
    if "sign-in" in d.current_url:
        d.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        submit(d, d.find_element(By.CSS_SELECTOR, "form.card button[type=submit]"))
        wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Dashboard"))
    return d


def wait(driver, timeout=20):
    return WebDriverWait(driver, timeout)


def shot(env, name):
    """A full-page PNG of what the browser shows, under the shots directory."""
    d = env.driver
    width = d.get_window_size()["width"]
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(width, max(600, min(int(height) + 120, 6000)))
    d.execute_script("window.scrollTo(0, 0)")
    path = env.shots / f"{name}.png"
    assert d.save_screenshot(str(path)), f"screenshot {path} not saved"
    print(f"screenshot: {path}")
    d.set_window_size(width, 1000)
    return path


def submit(driver, button, confirm=False):
    """Clicks a button that loads a new page and waits until the new page has loaded, so
    nothing is read from the page before it (the old page's window carries a mark the
    new one lacks)."""
    driver.execute_script("window.__posternOld = true")
    button.click()
    if confirm:
        wait(driver).until(EC.alert_is_present()).accept()

    def new_page(drv):
        try:
            return drv.execute_script(
                "return window.__posternOld !== true && document.readyState === 'complete'")
        except WebDriverException:  # between the two pages
            return False

    wait(driver).until(new_page)


def flash(driver):
    return wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, "p.flash"))).text


def check_page(driver):
    """What every page promises: one h1, every field labelled, no inline script."""
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"
    )
    assert unlabelled == [], f"fields without a label: {unlabelled}"
    assert len(driver.find_elements(By.TAG_NAME, "h1")) == 1
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    inline = driver.execute_script("return [...document.scripts].filter(s => !s.src).length")
    assert inline == 0


def session_cookie(driver):
    c = driver.get_cookie("postern_ui")
    assert c is not None, "signed in: the session cookie is set"
    assert c["httpOnly"] is True and c["sameSite"] == "Strict" and c["path"] == "/admin/ui"
    return f"postern_ui={c['value']}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def raw_post(env, path, fields, cookie=None):
    """A form POST outside the browser: (status, headers, body), redirects not followed."""
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["cookie"] = cookie
    req = urllib.request.Request(env.base + path, data=urllib.parse.urlencode(fields).encode(),
                                 headers=headers, method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def raw_get(env, path, cookie):
    req = urllib.request.Request(env.base + path, headers={"cookie": cookie})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def row_of(driver, text):
    """The table row that contains ``text``."""
    return wait(driver).until(EC.presence_of_element_located(
        (By.XPATH, f"//tr[.//*[contains(normalize-space(.), '{text}')]]")))


# --------------------------------------------------------------------------- tests


def test_sign_in_dashboard_and_phone_layout(env, browser):
    d = browser
    session_cookie(d)
    check_page(d)
    for heading in ("Queue", "Outbound since start", "Webhooks", "Recent outcomes", "Health"):
        assert d.find_element(By.XPATH, f"//h2[normalize-space(.)='{heading}']")
    assert "ready" in d.find_element(By.ID, "h-health").find_element(By.XPATH, "..").text
    # The stylesheet and script loaded from this origin under the page's CSP.
    color = d.execute_script("return getComputedStyle(document.querySelector('header.top')).backgroundColor")
    assert color == "rgb(23, 50, 77)", "ui.css applied"
    shot(env, "dashboard")
    d.set_window_size(390, 844)
    d.get(env.base + "/admin/ui/")
    overflow = d.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1")
    assert not overflow, "the dashboard fits a phone's width"
    width = d.get_window_size()["width"]
    path = env.shots / "dashboard-phone.png"
    d.save_screenshot(str(path))
    print(f"screenshot: {path} ({width} px wide)")
    d.set_window_size(1280, 1000)


def test_a_wrong_token_is_refused(env, browser):
    other = raw_post(env, "/admin/ui/sign-in", {"token": "not-the-token"})
    assert other[0] == 401 and "set-cookie" not in other[1]


def test_verify_a_domain_against_the_loopback_dns(env, browser):
    d = browser
    d.get(env.base + "/admin/ui/domains")
    check_page(d)
    # Nothing published yet: not verified, records missing.
    submit(d, d.find_element(By.XPATH, "//form[@action='/admin/ui/domains/verify']//button"))
    assert "is not verified" in flash(d)
    assert d.find_elements(By.XPATH, "//span[contains(@class,'badge') and text()='missing']")
    out = subprocess.run(
        [str(postern_bin()), "domain", "records", DOMAIN, "--format", "json",
         "--config", str(env.daemon.config_path)],
        check=True, capture_output=True, text=True,
    )
    for r in json.loads(out.stdout):
        env.dns.zone.setdefault((r["name"].rstrip(".").lower(), r["type"]), []).append(r["value"])
    submit(d, d.find_element(By.XPATH, "//form[@action='/admin/ui/domains/verify']//button"))
    assert f"{DOMAIN} is verified." in flash(d)
    ok = d.find_elements(By.XPATH, "//td[@data-label='Last check']//span[text()='ok']")
    assert len(ok) >= 3, "verification, DKIM, SPF, DMARC and MX are each ok"
    assert d.find_element(By.XPATH, f"//h2[text()='{DOMAIN}']/..").text.count("verified") >= 1
    assert d.find_elements(By.CSS_SELECTOR, "button.copy:not([hidden])"), "copy buttons shown with the script"
    status, body = env.admin("GET", "/admin/domains")
    assert status == 200 and body["domains"][0]["verified"] is True
    shot(env, "domains")


def test_import_suppressions_from_csv_and_see_them(env, browser, tmp_path):
    d = browser
    tag = uuid.uuid4().hex[:8]
    addresses = [f"imp-{tag}-{i}@example.org" for i in range(3)]
    path = tmp_path / "suppressions.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["asset_id", "address", "reason"])
        for a, reason in zip(addresses, ["bounced", "unsubscribed", "complained"]):
            w.writerow(["a_demo", a, reason])
    d.get(env.base + "/admin/ui/suppressions")
    check_page(d)
    d.find_element(By.ID, "import-file").send_keys(str(path))
    submit(d, d.find_element(By.XPATH, "//form[@action='/admin/ui/suppressions/import']//button"))
    assert "3 suppressions imported." in flash(d)
    for a in addresses:
        assert row_of(d, a)
    # Search narrows the list; the export holds them.
    d.find_element(By.ID, "q").send_keys(addresses[1])
    submit(d, d.find_element(By.XPATH, "//form[@role='search']//button"))
    wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h2"), "1 of"))
    assert addresses[0] not in d.find_element(By.TAG_NAME, "main").text
    shot(env, "suppressions")
    status, headers, csv_body = raw_get(env, "/admin/ui/suppressions/export.csv", session_cookie(d))
    assert status == 200 and "attachment" in headers.get("content-disposition", "")
    assert all(a in csv_body.decode() for a in addresses)
    # Remove one through its row's button.
    submit(d, row_of(d, addresses[1]).find_element(By.XPATH, ".//button[text()='Remove']"))
    assert "is no longer suppressed" in flash(d)
    _, body = env.admin("GET", "/admin/suppressions")
    listed = {e["address"] for e in body["suppressions"]}
    assert addresses[1] not in listed and addresses[0] in listed


def test_replay_a_dead_letter(env, browser):
    d = browser
    subject = f"Dead letter {uuid.uuid4().hex[:8]}"
    env.hook.status = 400
    try:
        send(env.daemon, text_message(subject))
        env.hook.wait_hook(lambda e: e.get("subject") == subject, ok_only=False)

        def dead_id():
            _, body = env.admin("GET", "/admin/dead-letters")
            return next((x["id"] for x in body["deadLetters"] if x["url"].endswith("/mo")), None)

        event = wait_for(dead_id, 15, message="the 4xx MO event is a dead letter")
    finally:
        env.hook.status = 200
    d.get(env.base + "/admin/ui/dead-letters")
    check_page(d)
    shot(env, "dead-letters")
    submit(d, row_of(d, event).find_element(By.XPATH, ".//button[text()='Replay']"))
    assert "1 dead letter replayed." in flash(d)
    env.hook.wait_subject(subject, timeout=15)
    _, body = env.admin("GET", "/admin/dead-letters")
    assert all(x["id"] != event for x in body["deadLetters"])


def test_find_a_sent_message_by_recipient_and_read_its_timeline(env, browser):
    d = browser
    rcpt = f"log-{uuid.uuid4().hex[:8]}@example.org"
    html = "<h1 id='greeting'>Hello from the timeline</h1><img src='http://127.0.0.1:9/pixel.png'>"
    tid = env.api_send(rcpt, "Timeline test", html=html)
    wait_for(lambda: env.relay.received_by(rcpt), 20, message="the smarthost got the message")
    wait_for(lambda: any(h["code"] == "7501" for h in env.admin("GET", f"/admin/queue/{tid}")[1]["history"]),
             20, message="7501 recorded")
    d.get(env.base + "/admin/ui/messages")
    check_page(d)
    d.find_element(By.ID, "m-recipient").send_keys(rcpt.upper())
    submit(d, d.find_element(By.XPATH, "//form[@role='search']//button"))
    row = row_of(d, rcpt)
    assert "7501 Submitted" in row.text
    shot(env, "messages")
    submit(d, row.find_element(By.PARTIAL_LINK_TEXT, "Timeline"))
    wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), tid))
    check_page(d)
    main = d.find_element(By.TAG_NAME, "main").text
    assert "accepted" in main and "7501 Submitted" in main and "Last SMTP reply" in main
    assert "news@example.test" in main and "Timeline test" in main
    frame = d.find_element(By.CSS_SELECTOR, "iframe.preview")
    assert frame.get_attribute("sandbox") == ""
    shot(env, "timeline")
    d.switch_to.frame(frame)
    try:
        assert wait(d).until(EC.presence_of_element_located((By.ID, "greeting"))).text == "Hello from the timeline"
    finally:
        d.switch_to.default_content()
    status, headers, _ = raw_get(env, f"/admin/ui/messages/{tid}/preview", session_cookie(d))
    csp = headers.get("content-security-policy", "")
    assert status == 200 and "sandbox" in csp and "script-src" not in csp and "img-src data:" in csp


def test_hold_release_and_cancel_from_the_queue_page(env, browser):
    d = browser
    later = int(time.time()) + 3600
    held_rcpt = f"hold-{uuid.uuid4().hex[:8]}@example.org"
    cancel_rcpt = f"cancel-{uuid.uuid4().hex[:8]}@example.org"
    held = env.api_send(held_rcpt, "Held", send_at=later)
    cancelled = env.api_send(cancel_rcpt, "Cancelled", send_at=later)
    d.get(env.base + "/admin/ui/queue")
    check_page(d)
    shot(env, "queue")
    submit(d, row_of(d, held).find_element(By.XPATH, ".//button[text()='Hold']"))
    assert "it is now held" in flash(d)
    assert env.queue_state(held) == "held"
    submit(d, row_of(d, held).find_element(By.XPATH, ".//button[text()='Release']"))
    assert "it is now ready" in flash(d)
    wait_for(lambda: env.relay.received_by(held_rcpt), 20, message="released mail is sent at once")
    # Cancel asks first (the script's confirm); then the recipient ends with 7592.
    submit(d, row_of(d, cancelled).find_element(By.XPATH, ".//button[text()='Cancel']"), confirm=True)
    assert "it is now cancelled" in flash(d)
    assert env.queue_state(cancelled) == "cancelled"
    env.hook.wait_hook(lambda e: e["deliveryInfoNotification"]["transid"] == cancelled
                       and e["deliveryInfoNotification"]["deliveryInfo"]["code"] == "7592", path="/dlr")
    assert env.relay.received_by(cancel_rcpt) == []


def test_requests_without_session_or_with_a_wrong_csrf_change_nothing(env, browser):
    d = browser
    cookie = session_cookie(d)
    rcpt = f"guard-{uuid.uuid4().hex[:8]}@example.org"
    tid = env.api_send(rcpt, "Guarded", send_at=int(time.time()) + 3600)
    d.get(env.base + "/admin/ui/queue")
    csrf = d.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    action = {"tid": tid, "action": "cancel", "back": "/admin/ui/queue"}
    # No session: sent to sign-in.
    status, headers, _ = raw_post(env, "/admin/ui/queue/action", {**action, "csrf": csrf})
    assert status == 303 and headers["location"] == "/admin/ui/sign-in"
    # A session but a wrong or missing token: 403.
    for wrong in ("0" * len(csrf), ""):
        status, _, body = raw_post(env, "/admin/ui/queue/action", {**action, "csrf": wrong}, cookie)
        assert status == 403 and "nothing was changed" in body
    assert env.queue_state(tid) == "scheduled"
    fields = {"asset": "a_demo", "address": f"forged-{rcpt}", "reason": "bounced"}
    assert raw_post(env, "/admin/ui/suppressions/add", {**fields, "csrf": "x"}, cookie)[0] == 403
    assert raw_post(env, "/admin/ui/suppressions/add", {**fields, "csrf": csrf})[0] == 303
    _, body = env.admin("GET", "/admin/suppressions")
    assert all(e["address"] != f"forged-{rcpt}" for e in body["suppressions"])
    # The same request with the session's token works: the check is not always failing.
    status, headers, _ = raw_post(env, "/admin/ui/queue/action", {**action, "csrf": csrf}, cookie)
    assert status == 303 and headers["location"] == "/admin/ui/queue"
    assert env.queue_state(tid) == "cancelled"


def test_routes_page_tests_the_connection_and_shows_a_forwarding_confirmation(env, browser):
    d = browser
    link = "https://mail-settings.google.com/mail/vf-%5BANGjdJ9x%5D-Ui7"
    confirmation = text_message(
        "(#612873440) Gmail Forwarding Confirmation - Receive Mail from mary@gmail.com",
        body=("mary@gmail.com has requested to automatically forward mail to your email\n"
              "address a_demo@inbound.example.test.\nConfirmation code: 612873440\n\n"
              f"Please click the link below to confirm the request:\n\n{link}\n"),
        sender="forwarding-noreply@google.com",
        to="a_demo@inbound.example.test",
    )
    send(env.daemon, confirmation, mail_from="forwarding-noreply@google.com",
         rcpts=("a_demo@inbound.example.test",))
    env.hook.wait_hook(lambda e: e.get("subject", "").startswith("(#612873440)"))
    d.get(env.base + "/admin/ui/routes")
    check_page(d)
    main = d.find_element(By.TAG_NAME, "main").text
    assert "a_demo@inbound.example.test" in main
    box = d.find_element(By.XPATH, "//div[contains(@class,'flash')][.//strong[text()='Forwarding confirmation']]")
    assert "612873440" in box.text
    assert box.find_element(By.LINK_TEXT, "Confirm the forwarding").get_attribute("href") == link
    submit(d, d.find_element(By.XPATH, "//form[@action='/admin/ui/routes/test']//button"))
    assert "answered" in flash(d)
    result = d.find_elements(By.XPATH, "//p[contains(@class,'flash') and contains(., 'Test at')]")
    assert result and "connected" in result[0].text
    shot(env, "routes")


def test_sign_out_ends_the_session(env, browser):
    d = browser
    submit(d, d.find_element(By.CSS_SELECTOR, "form.signout button"))
    wait(d).until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Sign in"))
    shot(env, "sign-in")
    d.get(env.base + "/admin/ui/queue")
    assert d.current_url.endswith("/admin/ui/sign-in")
