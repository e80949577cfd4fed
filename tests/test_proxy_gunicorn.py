"""The attacks on the BFF proxy and on request bodies (issue 17: 1-4, 14, 15), repeated against a BFF gateway under
gunicorn on the real Keycloak, requests written byte for byte on sockets: two users' sessions through one gateway
process, whose upstream connections they share, in front of an upstream that leaves the bodies it does not expect
unread on the connection (tests/upstreams.py). Every attack must find nothing."""

import http.client
import json
import re
import socket

import pytest

from tests.bff import BffGateway, EchoUpstream, LoopbackBrowser, bff_login
from tests.upstreams import KeepAliveUpstream

CSRF = {"X-CSRF": "1"}
# A request in a body: an upstream that leaves the body unread reads it next, and waits for `length` bytes of the
# following request (another user's, on the shared pool) to keep them as a note that its sender can read back.
SMUGGLED = "POST /base/notes HTTP/1.1\r\nHost: upstream\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n"


@pytest.fixture(scope="module")
def upstream():
    server = KeepAliveUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo():
    server = EchoUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream, echo, keycloak_realm):
    """One worker process, so that every request shares its upstream pool."""
    gateway = BffGateway(upstreams=f"up={upstream.url}/base,echo={echo.url}/base", GATEWAY_WORKERS="1")
    yield gateway
    log = gateway.stop()
    assert "Traceback" not in log


def logged_in(gateway, kc):
    """A new user's session cookie on the gateway."""
    browser = LoopbackBrowser()
    assert bff_login(browser, gateway.url, kc.create_user()).status_code == 302
    return browser.cookie("__Host-edm-session")


def call(gateway, method, path, cookie=None, body=None, headers=None):
    """One request on its own connection; (status, headers, body) of the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=15)
    headers = {**CSRF, **(headers or {})}
    if cookie:
        headers["Cookie"] = f"__Host-edm-session={cookie}"
    connection.request(method, path, body=body, headers=headers)
    answer = connection.getresponse()
    data = answer.read()
    connection.close()
    return answer.status, answer.headers, data


def raw(gateway, request):
    """Raw bytes to the gateway, on a connection closed after the answer; (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(re.match(r"HTTP/1\.[01] (\d{3})", lines[0]).group(1)), headers, body


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
def test_one_user_never_reads_another_users_request_through_the_shared_pool(gateway, upstream, kc, method):
    attacker, victim = logged_in(gateway, kc), logged_in(gateway, kc)
    upstream.notes.clear()
    assert call(gateway, "GET", "/bff/api/up/victim", victim)[0] == 200
    victims = upstream.received[-1]
    bearer = victims["headers"]["Authorization"]
    # Sized to swallow the victim's whole next request but its last empty line (the attacker's own requests tell
    # how long a request of the gateway is; here the victim's own is measured).
    smuggled = SMUGGLED.format(length=victims["head_length"] - 2).encode()
    before = len(upstream.received)
    attack = call(gateway, method, "/bff/api/up/attack", attacker, body=smuggled)
    sent = upstream.received[before:]
    victims_answer = call(gateway, "GET", "/bff/api/up/victim", victim)
    assert upstream.idle()
    status, _, notes = call(gateway, "GET", "/bff/api/up/notes", attacker)
    notes = json.loads(notes)["notes"]

    assert not [note for note in notes if bearer in note], "the attacker read the victim's Authorization"
    assert (status, notes) == (200, [])
    assert (victims_answer[0], json.loads(victims_answer[2])["path"]) == (200, "/base/victim")
    if method in ("GET", "HEAD"):
        assert (attack[0], attack[2]) == (400, b"" if method == "HEAD" else b'"code=400, message=body not allowed"\n')
        assert sent == []  # refused before anything was sent
    else:
        assert attack[0] == 200
        assert [(r["method"], r["headers"]["Content-Length"], r["headers"]["Connection"]) for r in sent] == [
            (method, str(len(smuggled)), "close")]
        # The connection that carried the body served nobody after: the victim's request came on another one.
        assert upstream.received[-2]["connection"] != sent[0]["connection"]


def chunked(method, path, body, cookie, content_type="application/octet-stream"):
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF: 1\r\nCookie: __Host-edm-session={cookie}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096]) for i in range(0, len(body), 4096))
    return head + chunks + b"0\r\n\r\n"


def test_a_chunked_body_over_the_limit_is_413_and_one_of_the_limit_arrives_whole(gateway, echo, kc):
    cookie = logged_in(gateway, kc)
    before = len(echo.received)
    for size in (16385, 40000):
        status, headers, body = raw(gateway, chunked("POST", "/bff/api/echo/upload", b"a" * size, cookie))
        assert (status, headers["content-type"], body) == (
            413, "application/json", b'"code=413, message=payload too large"\n')
    assert len(echo.received) == before
    status, _, body = raw(gateway, chunked("PUT", "/bff/api/echo/upload", b"a" * 16384, cookie))
    seen = json.loads(body)
    assert (status, len(seen["body"]), seen["headers"]["Content-Length"]) == (200, 16384, "16384")


@pytest.mark.parametrize("body", [b"", b"x"])
def test_a_chunked_get_is_refused(gateway, echo, kc, body):
    cookie = logged_in(gateway, kc)
    before = len(echo.received)
    assert raw(gateway, chunked("GET", "/bff/api/echo/x", body, cookie))[::2] == (
        400, b'"code=400, message=body not allowed"\n')
    assert len(echo.received) == before


@pytest.mark.parametrize("path", [
    "/bff/api/echo/..;/admin", "/bff/api/echo/%2e%2e;/admin", "/bff/api/echo/.;/x", "/bff/api/echo/%2E%2E%3B/x",
    "/bff/api/echo/a/..;/..;/x", "/bff/api/echo/.%2e;x/y", "/bff/api/echo/;/evil.example",
    "/bff/api/echo/%c0%ae%c0%ae/x", "/bff/api/echo/%ef%bc%8e%ef%bc%8e/x",
])
def test_dot_segments_before_a_semicolon_are_refused(gateway, echo, kc, path):
    cookie = logged_in(gateway, kc)
    before = len(echo.received)
    status, _, body = call(gateway, "GET", path, cookie)
    assert (status, body) == (400, b'"code=400, message=invalid upstream path"\n')
    assert len(echo.received) == before


def test_an_upstreams_401_leaves_the_session_alone(gateway, echo, kc):
    cookie = logged_in(gateway, kc)
    status, headers, body = call(gateway, "GET", "/bff/api/echo/admin?status=401", cookie)
    assert (status, json.loads(body)["path"], headers.get("Set-Cookie")) == (401, "/base/admin?status=401", None)
    status, _, body = call(gateway, "GET", "/bff/user", cookie)
    assert status == 200


@pytest.mark.parametrize("request_line, location", [
    ("GET /bff//user?x=1", "/bff/user?x=1"), ("GET //api//me", "/api/me"), ("POST /api//login", "/api/login"),
    ("POST /users//login//", "/users/login/"),
])
def test_redirects_name_no_host_the_client_sent(gateway, request_line, location):
    status, headers, body = raw(gateway, f"{request_line} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n"
                                         f"Connection: close\r\n\r\n".encode())
    assert (status, headers["location"], body) == (308, location, b"")


@pytest.mark.parametrize("charset", ["rot13", "base64", "zlib", "bz2", "hex", "uu"])
def test_a_charset_that_is_no_text_encoding_is_a_400(gateway, charset):
    status, _, body = call(gateway, "POST", "/users/login/", body=b'{"username": "a", "password": "b"}',
                           headers={"Content-Type": f"application/json; charset={charset}"})
    assert (status, json.loads(body)) == (
        400, {"detail": f'Unsupported charset "{charset}" in request Content-Type header.'})
