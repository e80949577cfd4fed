"""BFF fixtures: an echo upstream for the proxy, a requests session that plays the browser on Keycloak's login page,
a relay to Keycloak that counts the grants, a client of the realm with short access tokens, and BFF gateways under
gunicorn (the private redis-server is conftest.py's). Loaded by `pytest_plugins` in conftest.py."""

import collections
import html
import http.server
import json
import re
import secrets
import socket
import tempfile
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.browser import hermetic
from tests.conftest import SUITE_SECRETS, Gunicorn, free_port, live_config

BFF_SECRET = f"bff-suite-session-secret-{secrets.token_hex(12)}"
SUITE_SECRETS.add(BFF_SECRET)
KEYCLOAK = ("127.0.0.1", 8180)


def bff_config(**overrides):
    """The variables of a BFF gateway on the real Keycloak (GATEWAY_PUBLIC_URL and the upstreams to add)."""
    return live_config(GATEWAY_BFF="true", GATEWAY_SESSION_SECRET=BFF_SECRET, **overrides)


class EchoUpstream:
    """An API upstream: answers every request with what it received, as JSON, and keeps a copy of each.
    A path ending in `/slow` is answered after 3 s, one ending in `/stream` in two parts a second apart, and
    `?status=N` answers N."""

    def __init__(self):
        self.received = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                        "body": body.decode("utf-8", "replace")}
                upstream.received.append(seen)
                last = urlsplit(self.path).path.rsplit("/", 1)[-1]
                if last == "slow":
                    time.sleep(3)
                if last == "stream":
                    return self._stream()
                out = json.dumps(seen).encode()
                self.send_response(int(parse_qs(urlsplit(self.path).query).get("status", ["200"])[0]))
                self.send_header("Content-Type", "application/json")
                self.send_header("Set-Cookie", "upstream=planted; Path=/")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("X-Upstream", "echo")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            def _stream(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"first part\n", b"second part\n"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.flush()
                    time.sleep(1)
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def echo_upstream():
    upstream = EchoUpstream()
    yield upstream
    upstream.stop()


class GarbageServer:
    """A socket that answers any request with something that is not HTTP."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(65536)
                    connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.socket.close()


@pytest.fixture
def garbage_server():
    server = GarbageServer()
    yield server
    server.close()


def remember_secrets(response):
    """The cookie values, states and codes of an answer join the secrets no log line of the suite may hold."""
    for cookie in response.raw.headers.getlist("Set-Cookie") if response.raw is not None else ():
        name, _, rest = cookie.partition("=")
        value = rest.split(";", 1)[0]
        if name.startswith("__Host-") and value:
            SUITE_SECRETS.add(value)
    query = parse_qs(urlsplit(response.headers.get("Location", "")).query)
    for name in ("state", "code", "nonce", "code_challenge"):
        SUITE_SECRETS.update(query.get(name, []))


class LoopbackBrowser(requests.Session):
    """A requests session that keeps `Secure` cookies over plain http, as Chromium does on localhost and loopback
    addresses, so that it can play the browser on Keycloak's login page and on a BFF gateway; it follows no
    redirect by itself."""

    def send(self, request, **kwargs):
        kwargs["allow_redirects"] = False
        response = super().send(request, **kwargs)
        for cookie in self.cookies:
            cookie.secure = False  # http.cookiejar would send a Secure cookie over https only
        remember_secrets(response)
        return response

    def cookie(self, name, host="127.0.0.1"):
        return next((c.value for c in self.cookies if c.name == name and c.domain == host), None)


def keycloak_login_page(browser, authorization_url):
    """Keycloak's login page for an authorization URL: (its text, the form's action)."""
    page = browser.get(authorization_url)
    assert page.status_code == 200, page.text[:300]
    action = re.search(r'<form[^>]+action="([^"]+)"', page.text)
    assert action, page.text[:500]
    return page.text, html.unescape(action.group(1))


def keycloak_login(browser, authorization_url, username, password):
    """Log in on Keycloak's page as a browser would; the URL Keycloak sends the browser back to (not followed). A
    browser still logged in at Keycloak (single sign-on) is sent back at once."""
    page = browser.get(authorization_url)
    if page.status_code == 302:
        return page.headers["Location"]
    _, action = keycloak_login_page(browser, authorization_url)
    answer = browser.post(action, data={"username": username, "password": password, "credentialId": ""})
    assert answer.status_code == 302, answer.text[:500]
    return answer.headers["Location"]


def bff_login(browser, gateway_url, user, return_url="/"):
    """The whole login of a BFF gateway: /bff/login, Keycloak's page, the callback; the callback's answer."""
    start = browser.get(f"{gateway_url}/bff/login", params={"returnUrl": return_url})
    assert start.status_code == 302, start.text
    callback = keycloak_login(browser, start.headers["Location"], user.username, user.password)
    assert callback.startswith(f"{gateway_url}/bff/callback?"), callback
    return browser.get(callback)


class CountingKeycloak:
    """An HTTP relay to the real Keycloak that counts the token-endpoint grants it passes on, by grant type."""

    def __init__(self):
        self.grants = collections.Counter()
        lock = threading.Lock()
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if body and self.path.endswith("/protocol/openid-connect/token"):
                    with lock:
                        relay.grants[parse_qs(body.decode()).get("grant_type", ["?"])[0]] += 1
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "content-length", "accept-encoding")}
                answer = requests.request(self.command, f"http://{KEYCLOAK[0]}:{KEYCLOAK[1]}{self.path}", data=body,
                                          headers=headers, allow_redirects=False, timeout=10)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length",
                                            "content-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _relay

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_keycloak():
    relay = CountingKeycloak()
    yield relay
    relay.stop()


@pytest.fixture
def short_lived_client(kc):
    """A confidential client of the realm like `edmportal` in BFF mode, whose access tokens live `LIFESPAN`
    seconds: (client id, secret). The realm's own clients stay as they are for the other tests."""
    client_id, secret = f"bfftest{secrets.token_hex(4)}", secrets.token_hex(16)
    SUITE_SECRETS.add(secret)
    internal_id = kc.admin.create_client({
        "clientId": client_id, "secret": secret, "publicClient": False, "protocol": "openid-connect",
        "standardFlowEnabled": True, "directAccessGrantsEnabled": False, "serviceAccountsEnabled": False,
        "redirectUris": ["http://127.0.0.1/bff/callback"],  # any loopback port (RFC 8252, as Keycloak does it)
        "attributes": {"pkce.code.challenge.method": "S256", "access.token.lifespan": str(LIFESPAN)},
    })
    yield client_id, secret
    kc.admin.delete_client(internal_id)


LIFESPAN = 10  # seconds an access token of `short_lived_client` lives


class BffGateway(Gunicorn):
    """A BFF gateway under gunicorn on the real Keycloak, its public URL its own loopback address."""

    def __init__(self, upstreams="", runtime_dir=None, **overrides):
        port = free_port()
        self.runtime_dir = runtime_dir or tempfile.mkdtemp(prefix="edm-bff-")
        env = hermetic(**bff_config(GATEWAY_PUBLIC_URL=f"http://127.0.0.1:{port}", GATEWAY_BFF_UPSTREAMS=upstreams,
                                    TMPDIR=self.runtime_dir, **overrides))
        super().__init__(env, port=port)
        self.wait_ready()


@pytest.fixture
def bff_gateways():
    """Start BFF gateways: `bff_gateways(upstreams=..., **variables)`; all stopped after the test."""
    started = []

    def start(**kwargs):
        started.append(BffGateway(**kwargs))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


def audit_events(lines, event):
    """The audit events of one kind among JSON log lines."""
    events = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("logger") == "gateway.audit" and record.get("event") == event:
            events.append(record)
    return events

